"""The analog stream format (paper 002): float16 latent values in the packets, the codec kind in
the description, and jscc-netem --awgn-snr-db adding channel noise to them and nothing else."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jscc_stream.models.analog import AnalogCodec, AnalogConfig
from jscc_stream.models.analog_stream import AnalogFrameCodec
from jscc_stream.netem.analog_noise import AnalogNoise
from jscc_stream.netem.awgn import AwgnChannel
from jscc_stream.proto.description import ANALOG_F16, make_description, parse_description
from jscc_stream.proto.packet import MediaPacket, parse_datagram
from jscc_stream.proto.packetizer import Packetizer
from test_stream_e2e import H as EH, W as EW, _free_port, _start_shim, one_thread  # noqa: F401 (a fixture)

W, H = 64, 48


@pytest.fixture(scope="module")
def analog_codec() -> AnalogFrameCodec:
    torch.manual_seed(0)
    return AnalogFrameCodec(AnalogCodec(AnalogConfig(channels=4, width=8, objective="ae")), {"name": "t"})


def _frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def _datagrams(codec, kind: str, ssrc: int = 7) -> list[bytes]:
    lay = codec.layout(W, H)
    pk = Packetizer(ssrc, list(range(lay.blocks)), mtu=301)  # odd fragment sizes: values cut in two
    body = make_description(ssrc=ssrc, revision=0, codec_name="t", codec_sha256="", layout=lay, fps=30.0,
                            block_levels=list(range(lay.blocks)), dscp_map=None, clock_epoch_unix_us=0, mtu=301,
                            codec_kind=kind)
    return [pk.description(0, body).data] + [d.data for d in pk.packetize(0, 0, codec.encode(_frame()))]


def test_wire_is_unit_power_float16_and_decodes(analog_codec: AnalogFrameCodec) -> None:
    lay = analog_codec.layout(W, H)
    assert (lay.blocks, lay.alpha, lay.h, lay.w) == (4, 2, H // 4, W // 4)
    wire = analog_codec.encode(_frame())
    assert wire.shape == (lay.blocks, lay.block_bytes) and wire.dtype == np.uint8
    values = wire.view("<f2").astype(np.float64)
    assert np.mean(values ** 2) == pytest.approx(1.0, rel=2e-3)
    out = analog_codec.decode(wire, None, W, H)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    lost = np.zeros_like(wire, dtype=bool)
    assert analog_codec.decode(wire, lost, W, H).shape == (H, W, 3)  # nothing arrived: still a frame


def test_description_carries_the_codec_kind(analog_codec: AnalogFrameCodec) -> None:
    info = parse_description(parse_datagram(_datagrams(analog_codec, ANALOG_F16)[0]).body)
    assert info.codec_kind == ANALOG_F16 and info.layout.alpha == 2
    assert parse_description(parse_datagram(_datagrams(analog_codec, "")[0]).body).codec_kind == ""


def test_shim_noise_touches_only_analog_values_at_the_asked_snr(analog_codec: AnalogFrameCodec) -> None:
    noise = AnalogNoise(AwgnChannel(5.0), np.random.default_rng(0))
    plain = _datagrams(analog_codec, "", ssrc=1)
    assert [noise.apply(d) for d in plain] == plain  # a non-analog stream passes byte for byte
    assert noise.apply(b"\x80\xc8garbage-rtcp") == b"\x80\xc8garbage-rtcp"
    sent = _datagrams(analog_codec, ANALOG_F16, ssrc=2)
    got = [noise.apply(d) for d in sent]
    assert got[0] == sent[0] and noise.analog_ssrcs == {2}
    clean, noisy = [], []
    for a, b in zip(sent[1:], got[1:]):
        pa, pb = parse_datagram(a), parse_datagram(b)
        assert isinstance(pb, MediaPacket) and pa.header == pb.header and len(pa.data) == len(pb.data)
        first = pa.header.offset & 1
        n = (len(pa.data) - first) // 2
        clean.append(np.frombuffer(pa.data[first:first + 2 * n], "<f2").astype(np.float64))
        noisy.append(np.frombuffer(pb.data[first:first + 2 * n], "<f2").astype(np.float64))
    c, z = np.concatenate(clean), np.concatenate(noisy)
    snr = 10 * math.log10(np.mean(c ** 2) / np.mean((z - c) ** 2))
    assert snr == pytest.approx(5.0, abs=0.3) and noise.values_noised == c.size


def test_decoded_quality_falls_with_the_snr(analog_codec: AnalogFrameCodec) -> None:
    """Through packetizer, shim noise and reassembly-shaped bytes: more noise, further from the clean decode."""
    clean = analog_codec.decode(analog_codec.encode(_frame()), None, W, H).astype(np.float64)
    lay = analog_codec.layout(W, H)
    errors = []
    for snr in (30.0, 10.0, -5.0):
        noise = AnalogNoise(AwgnChannel(snr), np.random.default_rng(1))
        wire = np.zeros((lay.blocks, lay.block_bytes), np.uint8)
        for d in _datagrams(analog_codec, ANALOG_F16):
            p = parse_datagram(noise.apply(d))
            if isinstance(p, MediaPacket):
                wire[p.header.block, p.header.offset:p.header.offset + len(p.data)] = np.frombuffer(p.data, np.uint8)
        errors.append(np.mean((analog_codec.decode(wire, None, W, H) - clean) ** 2))
    assert errors[0] < errors[1] < errors[2]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * math.log10(255 ** 2 / mse)


async def test_sender_noisy_shim_receiver_psnr_falls_with_snr(analog_codec: AnalogFrameCodec, one_thread) -> None:
    """jscc-send's Sender -> jscc-netem --awgn-snr-db (subprocess) -> Receiver: the frames shown
    drift further from what a noiseless link shows (PSNR against it falls) as the SNR falls."""
    from jscc_stream.sources import SyntheticSource

    src = SyntheticSource(EW, EH, 2.0, seed=1)
    mean_psnr = {}
    for snr in (25.0, 5.0):
        got = await _through_shim(analog_codec, 3, ["--loss", "none", "--awgn-snr-db", f"{snr:g}"])
        assert len(got) >= 2
        noiseless = {r.frame_id: analog_codec.decode(analog_codec.encode(src.read(r.frame_id)), None, EW, EH)
                     for r, _ in got}
        mean_psnr[snr] = np.mean([_psnr(f, noiseless[r.frame_id]) for r, f in got])
    assert mean_psnr[25.0] > mean_psnr[5.0] + 3.0, mean_psnr


async def _through_shim(codec, frames: int, shim_args: list[str]) -> list:
    """Sender -> jscc-netem subprocess -> Receiver; the decoded (record, frame) pairs once all
    ``frames`` played out (the shim's relay can lag the sender: waits for it, 20 s at most)."""
    import asyncio

    from jscc_stream.receiver.outputs import Outputs
    from jscc_stream.receiver.receiver import Receiver, ReceiverConfig, open_listen_socket
    from jscc_stream.sender.sender import Sender, SenderConfig
    from jscc_stream.sources import SyntheticSource

    sock = open_listen_socket("127.0.0.1:0")
    got: list = []
    receiver = Receiver(sock, lambda info: codec, Outputs(), ReceiverConfig(latency=1.0, duration=30,
                                                                            max_decode_queue=frames),
                        on_frame=lambda r, f: got.append((r, f)))
    rtask = asyncio.create_task(receiver.run())
    dest = _free_port()
    shim = await _start_shim(dest, sock.getsockname()[1], receiver, shim_args)
    try:
        # 2 fps: the shim relays each frame's ~45 packets before the next (a loaded machine's socket buffers)
        await Sender(codec, SyntheticSource(EW, EH, 2.0, seed=1),
                     SenderConfig(width=EW, height=EH, fps=2.0, dests=[f"127.0.0.1:{dest}"], frames=frames)).run()
        for _ in range(1000):
            if len(got) >= frames:
                break
            await asyncio.sleep(0.02)
    finally:
        receiver.stop_event.set()
        await rtask
        sock.close()
        shim.terminate()
        await shim.wait()
    return got


def test_receiver_decodes_only_with_a_codec_of_the_described_kind(analog_codec, monkeypatch) -> None:
    """A description saying quantized codes must not be decoded as float16 values, nor the reverse."""
    from types import SimpleNamespace

    import jscc_stream.models.stream_codec as stream_codec
    from jscc_stream.receiver.cli import CodecCache

    monkeypatch.setattr(stream_codec, "load_stream_codec", lambda key, **kw: analog_codec)
    lay = analog_codec.layout(W, H)
    info = lambda kind: SimpleNamespace(codec_name="t", ssrc=1, codec_sha256="", layout=lay,  # noqa: E731
                                        entropy_coded=False, codec_kind=kind)
    cache = CodecCache("forced.safetensors", "cpu")
    assert cache(info(ANALOG_F16)) is analog_codec
    assert cache(info("")) is None
