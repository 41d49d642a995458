"""Bit layers (paper 003, ``jscc-send --bit-layers``): the split of quantized indexes by
significance, its payloads, the wire's layer byte and each layer's DSCP."""

from __future__ import annotations

import asyncio
import itertools
import socket

import cv2
import numpy as np
import pytest

from jscc_stream.models.bitlayers import (LAYERED_VERSION, MAX_BIT_LAYERS, layer_byte, merge_layers,
                                          read_layer_byte, split_layers)
from jscc_stream.models.entropy import MAX_SYMBOL
from jscc_stream.models.packet_codec import PacketCodec
from jscc_stream.proto.packet import PayloadHeader, PayloadPacket, parse_datagram
from jscc_stream.proto.packetizer import Packetizer
from jscc_stream.sender.dscp import LAYERED_LEVEL_CLASSES, default_layer_dscp, dscp_for, parse_layer_dscp

W, H = 320, 240


@pytest.fixture(scope="module")
def codec(tiny_rd_codec) -> PacketCodec:
    return PacketCodec(tiny_rd_codec.model, {"name": "tiny-rd"}, precision="fp32")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from jscc_stream.models.data import builtin_eval_images

    return cv2.cvtColor(builtin_eval_images(W, H)["astronaut"], cv2.COLOR_RGB2BGR)


@pytest.mark.parametrize("layers", range(1, MAX_BIT_LAYERS + 1))
def test_split_and_merge_are_exact_and_fewer_layers_give_the_coarser_bin_centre(layers):
    q = np.arange(-MAX_SYMBOL, MAX_SYMBOL + 1, dtype=np.int32)
    planes = split_layers(q, layers)
    assert all(np.abs(p).max() <= 1 for p in planes[1:])  # one signed bit-plane per refinement
    np.testing.assert_array_equal(merge_layers(planes, layers), q)
    for m in range(1, layers):
        s = layers - m
        est = merge_layers(planes[:m], layers)
        coarse = np.sign(q) * (np.abs(q) >> s)
        # the bin of |q| >> s: [c * 2^s, (c + 1) * 2^s - 1], its centre; 0 in the zero bin
        want = np.where(coarse != 0, np.sign(q) * (np.abs(coarse) * 2 ** s + (2 ** s - 1) / 2), 0)
        np.testing.assert_array_equal(est, want)
        assert np.abs(est - q).max() <= 2 ** s - 1  # never outside the bin it narrowed q to
    # per element: known layers may differ from element to element
    known = np.arange(len(q)) % layers + 1
    per = merge_layers(planes, layers, known)
    for m in range(1, layers + 1):
        np.testing.assert_array_equal(per[known == m], merge_layers(planes[:m], layers)[known == m])


def test_layer_byte_round_trips_and_rejects_out_of_range():
    assert [read_layer_byte(layer_byte(j, 3)[0]) for j in range(3)] == [(0, 3), (1, 3), (2, 3)]
    for bad in (0x00, 0x11, 0x05, 0xFF):
        with pytest.raises(ValueError):
            read_layer_byte(bad)
    with pytest.raises(ValueError):
        split_layers(np.zeros(3, np.int32), MAX_BIT_LAYERS + 1)


@pytest.mark.parametrize("layers", [2, 3])
def test_all_layers_decode_the_quantized_indexes_bit_exactly(codec, photo, layers):
    """Layered payloads at one step dequantize to exactly the plain payloads' latent."""
    y = codec.analyse_rgb(_rgb_tensor(photo))
    grid = codec.latent_hw(W, H)
    rate, levels, sym, est = codec.choose_rate(y, 4800)
    codec.bit_layers = layers
    try:
        layered = codec._encode_layers(sym, grid, rate, levels, b"")
    finally:
        codec.bit_layers = 1
    plain = codec._encode_levels(sym, est, grid, rate, levels)
    coef, received, q = codec._dequantize_layered(layered, *grid, 0)
    coef0, received0, q0 = codec._dequantize(plain, *grid, 0)
    np.testing.assert_array_equal(coef, coef0)
    np.testing.assert_array_equal(received, received0)
    assert q == q0
    assert {p[0] >> 4 for p in layered} == {LAYERED_VERSION[2]}
    assert sorted(set(codec.payload_layers(layered))) == list(range(layers))
    assert codec.payload_layers(layered) == sorted(codec.payload_layers(layered))  # layer 0 first
    np.testing.assert_array_equal(codec.decode(layered, W, H), codec.decode(plain, W, H))


def test_every_subset_of_layers_decodes_and_more_layers_are_better(codec, photo):
    codec.bit_layers = 3
    try:
        payloads = codec.encode(photo, 4800)
    finally:
        codec.bit_layers = 1
    assert sum(map(len, payloads)) <= 4800
    layers = codec.payload_layers(payloads)
    quality = {}
    for subset in itertools.chain.from_iterable(itertools.combinations(range(3), n) for n in range(4)):
        out = codec.decode([p if lay in subset else None for p, lay in zip(payloads, layers)], W, H)
        assert out.shape == (H, W, 3)
        quality[subset] = -np.mean((out.astype(float) - photo) ** 2)
    assert quality[(0, 1, 2)] > quality[(0, 1)] > quality[(0,)] > quality[()]
    # a refinement without the layers above it adds nothing
    assert quality[(0, 2)] == quality[(0,)] and quality[(1, 2)] == quality[()]
    # any single payload lost, and payloads in any order, still decode
    rng = np.random.default_rng(0)
    for i in rng.choice(len(payloads), 5, replace=False):
        assert codec.decode([None if j == i else p for j, p in enumerate(payloads)], W, H).shape == (H, W, 3)
    assert np.array_equal(codec.decode(payloads[::-1], W, H), codec.decode(payloads, W, H))


def test_layered_residuals_of_a_video_codec_round_trip(tiny_rd_codec):
    from jscc_stream.models.video_codec import LAYERED_RESIDUAL, VideoCodec, frame_info
    from jscc_stream.sources import SyntheticSource

    video = VideoCodec(PacketCodec(tiny_rd_codec.model, {"name": "i"}, precision="fp32"),
                       PacketCodec(tiny_rd_codec.model, {"name": "p"}, precision="fp32"))
    src = SyntheticSource(W, H, 30.0, seed=1)
    ref, frame = src.read(0), src.read(1)
    video.bit_layers = 2
    payloads = video.encode(frame, 4800, ref=ref, ref_back=1)
    residual = [p for p in payloads if p[0] >> 4 == LAYERED_RESIDUAL]
    assert residual and all(frame_info(p).ref_back == 1 for p in payloads)
    assert all(video.payload_ok(p) for p in payloads)
    assert set(video.payload_layers(payloads)) == {0, 1}
    full = video.decode(payloads, W, H, ref=ref)
    coarse = video.decode([p if lay == 0 else None for p, lay in zip(payloads, video.payload_layers(payloads))],
                          W, H, ref=ref)
    assert np.mean((full.astype(float) - frame) ** 2) < np.mean((coarse.astype(float) - frame) ** 2)


def test_the_wire_header_carries_the_layer():
    pk = Packetizer(9, list(range(4)))
    grams = pk.packetize_payloads(5, 0, [b"a", b"b", b"c"], [0, 1, 0], layers=[0, 0, 1])
    for g, layer in zip(grams, [0, 0, 1]):
        pkt = parse_datagram(g.data)
        assert isinstance(pkt, PayloadPacket) and pkt.header.layer == layer == g.layer
        assert g.data[12 + 11] == layer  # byte 11 of the payload header: a relay reads it as is
    assert PayloadHeader.unpack(PayloadHeader(1, 2, 0, 1, 0).pack()).layer == 0
    assert pk.resend(0, grams[2].header, b"c").layer == 1


def test_each_layer_gets_its_dscp():
    assert default_layer_dscp(2) == {1: 1} and default_layer_dscp(4) == {1: 0, 2: 1, 3: 1}
    assert parse_layer_dscp("1:BE,2-3:LE", 4) == {1: 0, 2: 1, 3: 1}
    from jscc_stream.sender.dscp import DscpMapError, default_dscp_map

    with pytest.raises(DscpMapError, match="bit layers \\[2\\]"):
        parse_layer_dscp("1:BE", 3)
    levels = default_dscp_map(7, LAYERED_LEVEL_CLASSES)
    assert set(levels.values()) == {34, 36, 38}  # coarse indexes: AF41..AF43, never LE
    layer_map = default_layer_dscp(2)
    assert [dscp_for(levels, layer_map, lv, 0) for lv in (0, 6)] == [34, 38]
    assert [dscp_for(levels, layer_map, lv, 1) for lv in (0, 6)] == [1, 1]  # refinements: LE
    assert dscp_for(levels, None, 0, 1) == 34  # refinements marked by their level


async def test_the_sender_marks_each_layer_with_its_dscp(tiny_rd_codec):
    """jscc-send's send path: refinement payloads leave with LE, coarse indexes with AF4x."""
    from jscc_stream.netem.dscp import dscp_of_tos
    from jscc_stream.sender.sender import Sender, SenderConfig
    from jscc_stream.sources import SyntheticSource
    from jscc_stream.udp import ANCILLARY_SIZE, read_tos, udp_socket

    codec = PacketCodec(tiny_rd_codec.model, {"name": "tiny-rd"}, precision="fp32")
    codec.bit_layers = 2
    sock = udp_socket(socket.AF_INET, ("127.0.0.1", 0), recv_tos=True, blocking=True)
    sock.settimeout(2.0)
    port = sock.getsockname()[1]
    cfg = SenderConfig(width=W, height=H, fps=30, dests=[f"127.0.0.1:{port}"], frames=2, kbps=1152.0,
                       dscp_map={lv: 34 for lv in range(4)}, layer_dscp={1: 1}, fec=False, nack=False)
    await Sender(codec, SyntheticSource(W, H, 30, seed=1), cfg).run()
    seen = set()
    try:
        while True:
            data, anc, _, _ = await asyncio.to_thread(sock.recvmsg, 65535, ANCILLARY_SIZE)
            pkt = parse_datagram(data) if not 192 <= data[1] <= 223 else None
            if isinstance(pkt, PayloadPacket):
                tos = read_tos(anc)
                assert tos is not None and pkt.header.layer == codec.payload_layers([pkt.data])[0]
                seen.add((pkt.header.layer, dscp_of_tos(tos)))
    except (socket.timeout, TimeoutError):
        pass
    finally:
        sock.close()
    assert seen == {(0, 34), (1, 1)}


def _rgb_tensor(bgr: np.ndarray):
    import torch

    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255)


def test_the_experiment_measures_layers_and_the_bottleneck(codec, tmp_path):
    """jscc-eval's bitlayers experiment, on two small photos: quality grows with the layers
    received, and every arm offers the bottleneck no more wire bytes than the plain one."""
    from jscc_stream.models import bitlayers_eval as ev
    from jscc_stream.models.data import builtin_eval_images

    images = dict(list(builtin_eval_images(128, 96).items())[:2])
    layers = ev.layer_rows(codec, images, 1200, layer_counts=(3,))
    for name in images:
        q = [r["psnr"] for r in sorted(layers, key=lambda r: r["received"]) if r["image"] == name and r["layers"] == 3]
        assert len(q) == 3 and q[0] < q[1] < q[2]
    rows = ev.bottleneck_rows(codec, images, 1200, shares=(0.3,), rounds=3)
    assert {r["arm"] for r in rows} == set(ev.ARMS) and len(rows) == 6 * len(ev.ARMS)
    plain = {r["image"]: r["offered_bytes"] for r in rows if r["arm"] == ev.ARMS[0]}
    assert all(r["offered_bytes"] <= plain[r["image"]] and r["delivered"] <= r["payloads"] for r in rows)
    assert any(r["delivered"] < r["payloads"] for r in rows)  # the bottleneck did drop packets
    ev.plot(tmp_path / "p.png", layers, rows, 128 * 96)
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_the_receiver_reports_a_levels_dscp_from_its_coarse_index(codec, photo):
    from jscc_stream.proto.description import make_description
    from jscc_stream.proto.reassembly import Reassembler

    lay = codec.layout(W, H)
    levels = list(range(lay.blocks))
    pk = Packetizer(7, levels)
    body = make_description(ssrc=7, revision=0, codec_name="tiny-rd", codec_sha256="", layout=lay, fps=30,
                            block_levels=levels, dscp_map=None, clock_epoch_unix_us=0, mtu=900,
                            max_frame_payloads=codec.max_frame_payloads(W, H))
    codec.bit_layers = 2
    try:
        payloads = codec.encode(photo, 4800)
    finally:
        codec.bit_layers = 1
    grams = pk.packetize_payloads(1, 3000, payloads, codec.payload_levels(payloads),
                                  layers=codec.payload_layers(payloads))
    r = Reassembler(latency=0.05)
    r.push(pk.description(0, body).data, 0.0)
    out = []
    for g in grams:
        out += r.push(g.data, 0.001, 1 if g.layer else 34)
    (slot,) = out
    assert slot.reason == "complete" and slot.payload_list() == payloads
    assert set(slot.dscp) == {34}  # refinements (LE) arrived after each level's coarse index


@pytest.mark.parametrize("argv, msg", [
    (["--codec", "uniform", "--kbps", "500", "--bit-layers", "5"], "--bit-layers must be in [1, 4]"),
    (["--codec", "uniform", "--kbps", "500", "--layer-dscp", "1:LE"], "--layer-dscp needs --bit-layers"),
    (["--codec", "fixed-uniform", "--bit-layers", "2"], "needs an entropy-coded codec"),
    (["--codec", "uniform", "--kbps", "500", "--bit-layers", "3", "--layer-dscp", "1:LE"], "bit layers [2]"),
])
def test_cli_bit_layer_errors_are_one_line(argv, msg, capsys):
    from jscc_stream.sender.cli import main as send_main

    assert send_main(argv + ["--frames", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0] and err[0].startswith("jscc-send: error:")


@pytest.mark.parametrize("extra, levels, layers", [
    (["--priority-dscp"], {34, 36, 38}, {1: 1}),
    (["--layer-dscp", "1:BE"], {34, 36, 38}, {1: 0}),
    (["--priority-dscp", "--layer-dscp", "level"], {34, 36, 38, 1}, None),
    (["--dscp-map", "0-6:AF41"], {34}, {1: 1}),
])
def test_cli_marks_refinements_below_the_coarse_indexes(extra, levels, layers):
    from jscc_stream.sender.cli import _dscp_maps, build_parser

    level_map, layer_map = _dscp_maps(build_parser().parse_args(["--bit-layers", "2", *extra]), 7)
    assert set(level_map.values()) == levels and layer_map == layers
    assert _dscp_maps(build_parser().parse_args(["--bit-layers", "2"]), 7) == (None, None)  # no marking asked


async def test_a_layered_video_stream_decodes_end_to_end_with_references_in_sync(tiny_rd_codec):
    """jscc-send's path with --bit-layers 2 on the video codec: the receiver decodes every frame,
    predicted ones included, and its receipts match the sender's own decodes bit for bit."""
    import torch

    from jscc_stream.models.video_codec import VideoCodec
    from test_stream_e2e import stream

    torch.set_num_threads(1)
    video = VideoCodec(PacketCodec(tiny_rd_codec.model, {"name": "i"}, precision="fp32"),
                       PacketCodec(tiny_rd_codec.model, {"name": "p"}, precision="fp32"))
    video.bit_layers = 2
    frames = 20
    sstats, receiver, got = await stream(video, "direct", frames, {"kbps": 1152.0, "adapt": False,
                                                                   "dscp_map": {lv: 34 for lv in range(4)},
                                                                   "layer_dscp": {1: 1}})
    refs = sstats.references
    assert sstats.frames_sent >= frames and all(r.decoded for r, _ in got) and len(got) >= frames - 2
    assert refs.predicted > 0 and refs.mismatches == 0 and receiver.stats.frames_no_reference == 0


def test_a_damaged_payload_reading_as_layered_does_not_switch_a_plain_frame(codec, photo):
    payloads = codec.encode(photo, 4800)
    one_lost = codec.decode([None] + payloads[1:], W, H)
    fake = bytes([LAYERED_VERSION[2] << 4]) + payloads[0][1:]  # the layered version, checksum now wrong
    np.testing.assert_array_equal(codec.decode([fake] + payloads[1:], W, H), one_lost)
