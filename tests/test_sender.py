"""jscc-send: sources, dropping frames behind a slow encoder, fan-out over IPv4 and IPv6, CLI errors."""

from __future__ import annotations

import asyncio
import socket
import threading

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jscc_stream.errors import UserError
from jscc_stream.proto.description import LatentLayout
from jscc_stream.proto.packet import DescriptionPacket, MediaPacket, parse_datagram
from jscc_stream.proto.rtcp import parse_rtcp
from jscc_stream.sender.cli import main as send_main
from jscc_stream.sender.sender import Sender, SenderConfig
from jscc_stream.sources import SlideshowSource, SyntheticSource, open_source


def test_synthetic_is_deterministic_textured_and_moving():
    a, b = SyntheticSource(320, 240, 30, seed=2), SyntheticSource(320, 240, 30, seed=2)
    f0, f1, f30 = a.read(0), a.read(1), a.read(30)
    assert f0.shape == (240, 320, 3) and f0.dtype == np.uint8
    assert (b.read(30) == f30).all()
    assert f0.std() > 20  # real texture, not a flat field
    assert 0 < np.abs(f0.astype(int) - f1).mean() < np.abs(f0.astype(int) - f30).mean()


def test_slideshow_folder_and_glob(tmp_path):
    for i, color in enumerate([(0, 0, 255), (0, 255, 0)]):
        img = np.zeros((300, 400, 3), np.uint8)
        img[:] = color
        cv2.rectangle(img, (50, 50), (200, 150), (255, 255, 255), -1)
        cv2.imwrite(str(tmp_path / f"{i}.png"), img)
    (tmp_path / "notes.txt").write_text("not an image")
    src = open_source(str(tmp_path), 160, 128, fps=10)
    assert isinstance(src, SlideshowSource) and len(src.files) == 2
    first, second = src.read(0), src.read(src.per_slide)
    assert first.shape == (128, 160, 3) and first[..., 2].mean() > first[..., 1].mean()
    assert second[..., 1].mean() > second[..., 2].mean()
    assert len(open_source(str(tmp_path / "*.png"), 160, 128, fps=10).files) == 2


@pytest.mark.parametrize("spec", ["nothing/here.mp4", "synthetic:x", "webcam:z", "/tmp/*.nothing-matches"])
def test_bad_sources_are_user_errors(spec):
    with pytest.raises(UserError):
        open_source(spec, 64, 48, fps=10)


class _SlowCodec:
    """Encodes in 'frame intervals' we control, to show the sender drops instead of queueing."""

    name, sha256, bits = "slow", "", 8

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.calls = 0

    def layout(self, w, h):
        return LatentLayout(w, h, 2, 1, 2, 5, 8, False)

    def encode(self, frame):
        self.calls += 1
        if self.calls == 1:
            self.release.wait(5)  # the first frame takes "forever"
        return np.full((2, 10), self.calls, np.uint8)


def _udp(fam, host):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s


async def _drain(sock, until):
    loop = asyncio.get_running_loop()
    got = []
    while not until():
        try:
            got.append(await asyncio.wait_for(loop.sock_recv(sock, 2048), 2.0))
        except asyncio.TimeoutError:
            break
    return got


async def test_busy_encoder_holds_one_frame_drops_the_rest_and_fans_out_v4_v6():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    r4, r6 = _udp(socket.AF_INET, "127.0.0.1"), _udp(socket.AF_INET6, "::1")
    release = threading.Event()
    codec = _SlowCodec(release)
    cfg = SenderConfig(width=64, height=48, fps=100, dests=[f"127.0.0.1:{r4.getsockname()[1]}",
                                                           f"[::1]:{r6.getsockname()[1]}"], frames=4)
    sender = Sender(codec, SyntheticSource(64, 48, 100), cfg)
    task = asyncio.create_task(sender.run())
    while sender.stats.frames_dropped < 5:  # ticks go by while the encoder is stuck
        await asyncio.sleep(0.01)
    release.set()
    stats = await asyncio.wait_for(task, 10)
    assert stats.frames_sent == 4 and stats.frames_dropped >= 5
    for sock in (r4, r6):
        grams = await _drain(sock, lambda: False)
        rtcp = [parse_rtcp(d) for d in grams if 192 <= d[1] <= 223]  # RTCP shares the port (RFC 5761)
        assert any(m.srs for m in rtcp) and rtcp[-1].byes == [sender.ssrc]  # reports, then goodbye
        pkts = [parse_datagram(d) for d in grams if not 192 <= d[1] <= 223]
        media = [p for p in pkts if isinstance(p, MediaPacket)]
        assert any(isinstance(p, DescriptionPacket) for p in pkts)
        fids = sorted({p.header.frame_id for p in media})
        # tick 1's frame waited for the stuck encoder; the ticks after it were dropped (gaps in ids)
        assert len(fids) == 4 and fids[:2] == [0, 1] and fids[2] > 2
        assert all(p.header.block in (0, 1) for p in media)
        sock.close()


@pytest.mark.parametrize("argv, msg", [
    (["--size", "100x100"], "multiples of 16"),
    (["--size", "big"], "WxH"),
    (["--dest", "nohostport"], "HOST:PORT"),
    (["--mtu", "10"], "--mtu"),
    (["--codec", "/nonexistent/x.safetensors"], "does not exist"),
    (["--fps", "0"], "--fps"),
    (["--pace", "1.5"], "--pace must be in [0, 1]"),
    (["--codec", "video", "--kbps", "500", "--intra-period", "0"], "intra period"),
    (["--ssrc", "0x1ffffffff"], "--ssrc must be in [0, 0xffffffff]"),
    (["--ssrc", "twelve"], "--ssrc must be a number"),
])
def test_cli_user_errors_are_one_line(argv, msg, capsys):
    assert send_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0] and err[0].startswith("jscc-send: error:")


def test_cli_bad_dscp_map(tmp_path, tiny_codec, capsys):
    from jscc_stream.models.zoo import save_codec

    path = save_codec(tiny_codec.model, tmp_path, "tiny", {})
    assert send_main(["--codec", str(path), "--dscp-map", "0-3:AF41", "--frames", "1"]) == 2
    assert "does not cover" in capsys.readouterr().err


def test_rate_adapts_to_the_slowest_receivers_decode_rate(monkeypatch):
    import jscc_stream.sender.sender as mod

    clock = [100.0]
    monkeypatch.setattr(mod.time, "monotonic", lambda: clock[0])
    codec = _SlowCodec(threading.Event())
    sender = Sender(codec, SyntheticSource(64, 48, 30), SenderConfig(width=64, height=48, fps=30))
    a, b = ("10.0.0.1", 1), ("10.0.0.2", 1)
    sender._adapt(a, 0, 0)
    sender._adapt(b, 0, 0)
    clock[0] += 1
    sender._adapt(a, 12, 15)  # decoded 12 fps, skipping
    sender._adapt(b, 30, 0)
    assert 12 < sender.stats.target_fps < 15
    for _ in range(10):  # a no longer skips: the rate climbs back to --fps
        clock[0] += 1
        sender._adapt(a, 12 + 20 * (_ + 1), 15)
        sender._adapt(b, 30 * (_ + 2), 0)
    assert sender.stats.target_fps == 30
    off = Sender(codec, SyntheticSource(64, 48, 30), SenderConfig(width=64, height=48, fps=30, adapt=False))
    off._adapt(a, 0, 0)
    clock[0] += 1
    off._adapt(a, 5, 20)
    assert off.stats.target_fps == 30


def _forged_feedback(draw_bytes: bytes, seed: int) -> list[bytes]:
    """Feedback bodies a hostile or broken receiver might send: random bytes, and well-formed
    messages full of lies (arrival times out of order or absurd, bitmaps that disagree, NACKs)."""
    from jscc_stream.proto.stream_pb2 import Feedback, Nack, PacketArrivals

    rng = np.random.default_rng(seed)
    out = [draw_bytes]
    for _ in range(4):
        count = int(rng.integers(1, 300))
        got = rng.random(count) < rng.random()
        arr = PacketArrivals(begin_seq=int(rng.integers(0, 65536)), count=count,
                             received=np.packbits(got.astype(np.uint8), bitorder="little").tobytes(),
                             base_us=int(rng.integers(-2 ** 62, 2 ** 62)),
                             delta_us=rng.integers(-2 ** 31, 2 ** 31, int(got.sum())).tolist())
        nack = Nack(frame_id=int(rng.integers(0, 2 ** 32)), payloads=rng.integers(0, 2 ** 32, 5).tolist())
        out.append(Feedback(ssrc=1234, arrivals=arr, nacks=[nack]).SerializeToString())
    return out


@settings(max_examples=40, deadline=None)
@given(junk=st.binary(max_size=200), seed=st.integers(0, 2 ** 32 - 1), lost=st.integers(0, 255),
       lsr=st.integers(0, 2 ** 32 - 1), dlsr=st.integers(0, 2 ** 32 - 1))
def test_forged_feedback_never_moves_the_rate_outside_its_bounds(tiny_rd_codec, junk, seed, lost, lsr, dlsr):
    from aiortc.rtp import RtcpReceiverInfo

    cfg = SenderConfig(width=64, height=48, kbps=800, min_kbps=200, max_kbps=1000, ssrc=1234)
    sender = Sender(tiny_rd_codec, SyntheticSource(64, 48, 30), cfg)
    for i in range(400):  # packets it sent: what forged reports may name
        sender.send_log.record((60000 + i) & 0xFFFF, i * 0.001, 900)
    now = 1.0
    for body in _forged_feedback(junk, seed):
        now += 0.05
        sender._on_feedback(body, ("127.0.0.1", 9), now)
        sender._on_report_block(RtcpReceiverInfo(ssrc=1234, fraction_lost=lost, packets_lost=0, highest_sequence=0,
                                                 jitter=0, lsr=lsr, dlsr=dlsr), ("127.0.0.1", 9), now)
        sender._set_target(sender.cc.on_timeout(now + 5))
        assert 200_000 <= sender.target_bps() <= 1_000_000
        assert 64 <= sender.frame_budget()
    assert sender.stats.retransmissions == 0  # nothing was sent, so nothing can be resent


def test_a_video_file_plays_in_real_time_frames_skipped_by_the_sender_are_skipped_in_the_file(tmp_path):
    """Frame ``index`` is the file's frame ``index`` whatever ticks were skipped, so a busy
    encoder never puts frame ids and pictures out of step."""
    path = tmp_path / "clip.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    for i in range(40):
        out.write(np.full((48, 64, 3), 6 * i, np.uint8))  # frame i is grey level 6 i
    out.release()
    src = open_source(str(path), 64, 48, 25)
    levels = {i: int(np.median(src.read(i))) for i in (0, 1, 5, 6, 30, 12, 39)}  # forward, jumps, back
    assert all(abs(v - 6 * i) <= 3 for i, v in levels.items()), levels
    assert src.read(40) is None
    src.close()


@pytest.mark.parametrize("target", [30, 25, 16, 15, 10, 7, 1])
def test_frame_budget_follows_the_rate_frames_are_really_sent_at(tiny_rd_codec, target):
    """A receiver asking for 25 fps gets every tick of a 30 fps capture (the limit lets frames
    through on whole ticks): the byte budget is the bitrate over what the limit of the send loop
    lets through (simulated here with its rule), not over the target, or the sender overspends."""
    sender = Sender(tiny_rd_codec, SyntheticSource(64, 48, 30), SenderConfig(width=64, height=48, kbps=900,
                                                                             congestion_control=False))
    sender.stats.target_fps = target
    period, last, sent = 1 / 30, -1e9, 0
    for tick in range(300):
        now = tick * period
        if not now - last < 1.0 / target - period / 2:  # the send loop's rate limit
            last, sent = now, sent + 1
    assert sender.sent_fps() == pytest.approx(sent / 10, rel=0.05)
    assert sender.frame_budget() == sender.budget.codec_bytes(900e3, sender.sent_fps(), 0.0)


def test_feedback_is_taken_only_from_the_addresses_the_sender_sends_to(tiny_rd_codec):
    """A forged report from anywhere else (another port on the same host included) changes nothing."""
    from jscc_stream.proto.rtcp import build_bye

    receiver, stranger = _udp(socket.AF_INET, "127.0.0.1"), _udp(socket.AF_INET, "127.0.0.1")
    cfg = SenderConfig(width=64, height=48, kbps=800, dests=[f"127.0.0.1:{receiver.getsockname()[1]}"])
    sender = Sender(tiny_rd_codec, SyntheticSource(64, 48, 30), cfg)
    sender._open_sockets()
    sock = sender._socks[socket.AF_INET]
    try:
        here = sock.getsockname()
        stranger.sendto(build_bye(7), here)
        receiver.sendto(build_bye(8), here)
        for _ in range(50):
            sender._on_rtcp(sock)
            if sender.stats.rtcp_foreign + sender.stats.byes == 2:
                break
            threading.Event().wait(0.01)
        assert sender.stats.rtcp_foreign == 1 and sender.stats.byes == 1
    finally:
        sock.close()
        receiver.close()
        stranger.close()


class _FailingCodec(_SlowCodec):
    """Fails on its third frame, as a codec hitting a bad frame or a broken device would."""

    def encode(self, frame):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("device lost")
        return np.full((2, 10), self.calls, np.uint8)


async def test_encoder_failure_ends_the_stream_and_is_reported():
    """A dead encoder stops the stream and says why (jscc-send then exits 1), instead of
    ending like a finished run (the soak found a sender that had died exit with 0)."""
    sink = _udp(socket.AF_INET, "127.0.0.1")
    cfg = SenderConfig(width=64, height=48, fps=100, dests=[f"127.0.0.1:{sink.getsockname()[1]}"], frames=50)
    sender = Sender(_FailingCodec(threading.Event()), SyntheticSource(64, 48, 100), cfg)
    stats = await asyncio.wait_for(sender.run(), 10)
    sink.close()
    assert stats.frames_sent == 2 and stats.encode_error == "RuntimeError: device lost"


def _pump(sender: Sender, sock: socket.socket) -> None:
    """Let the sender read the RTCP waiting on its socket (up to 2 s for it to arrive)."""
    import select

    select.select([sock], [], [], 2.0)
    sender._on_rtcp(sock)


def test_forged_rate_feedback_from_another_address_changes_nothing(tiny_rd_codec, monkeypatch):
    """Issue 16: anyone who knows the SSRC could forge reports of skipped frames that lower the
    frame rate.  Only the addresses the sender sends to are heard; the same reports from the
    receiver's address do lower it."""
    import jscc_stream.sender.sender as mod
    from jscc_stream.proto.rtcp import build_report
    from jscc_stream.proto.stream_pb2 import Feedback

    clock = [100.0]
    monkeypatch.setattr(mod.time, "monotonic", lambda: clock[0])
    receiver, stranger = _udp(socket.AF_INET, "127.0.0.1"), _udp(socket.AF_INET, "127.0.0.1")
    cfg = SenderConfig(width=64, height=48, fps=30, kbps=800, dests=[f"127.0.0.1:{receiver.getsockname()[1]}"])
    sender = Sender(tiny_rd_codec, SyntheticSource(64, 48, 30), cfg)
    sender._open_sockets()
    sock = sender._socks[socket.AF_INET]

    def report(src: socket.socket, decoded: int, skipped: int) -> None:
        fb = Feedback(ssrc=sender.ssrc, frames_decoded=decoded, frames_skipped=skipped)
        src.sendto(build_report(4321, [], fb.SerializeToString()), sock.getsockname())
        clock[0] += 1
        _pump(sender, sock)

    try:
        for src in (stranger, receiver):
            report(src, 0, 0)
            report(src, 5, 20)  # decoded 5 frames a second, skipped 20
        assert sender.stats.rtcp_foreign == 2
        assert 1 <= sender.stats.target_fps < 10  # heard from the receiver only
    finally:
        for s in (sock, receiver, stranger):
            s.close()


def test_a_new_receiver_gets_the_description_at_once(tiny_rd_codec):
    """A receiver that (re)started sends an empty report when media arrive without their
    description; the sender describes the stream at once instead of at its next interval
    (1 s), once per receiver SSRC at an address, and never for a stranger."""
    from jscc_stream.proto.rtcp import build_report

    receiver, stranger = _udp(socket.AF_INET, "127.0.0.1"), _udp(socket.AF_INET, "127.0.0.1")
    cfg = SenderConfig(width=64, height=48, kbps=800, dests=[f"127.0.0.1:{receiver.getsockname()[1]}"])
    sender = Sender(tiny_rd_codec, SyntheticSource(64, 48, 30), cfg)
    sender._open_sockets()
    sock = sender._socks[socket.AF_INET]
    got = []
    try:
        for src, rssrc in ((receiver, 1), (receiver, 1), (stranger, 2), (receiver, 3)):
            src.sendto(build_report(rssrc, []), sock.getsockname())
            _pump(sender, sock)
            try:
                got.append(parse_datagram(receiver.recv(2048)))
            except BlockingIOError:
                got.append(None)
        assert [type(p).__name__ for p in got] == ["DescriptionPacket", "NoneType", "NoneType", "DescriptionPacket"]
        assert got[0].ssrc == sender.ssrc and sender.stats.new_receivers == 2
    finally:
        for s in (sock, receiver, stranger):
            s.close()
