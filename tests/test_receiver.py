"""jscc-recv: garbage never kills it, RTCP goes back, the CLI writes per-frame stats."""

from __future__ import annotations

import asyncio
import json
import socket
import sys

import numpy as np
import pytest

from jscc_stream.proto.description import make_description
from jscc_stream.proto.packet import FragmentHeader, build_media
from jscc_stream.proto.packetizer import Packetizer
from jscc_stream.proto.rtcp import parse_rtcp
from jscc_stream.receiver.cli import main as recv_main
from jscc_stream.receiver.outputs import Outputs
from jscc_stream.receiver.receiver import Receiver, ReceiverConfig, open_listen_socket


def _desc(codec, ssrc, w=320, h=240):
    lay = codec.layout(w, h)
    return lay, make_description(ssrc=ssrc, revision=0, codec_name="tiny", codec_sha256="", layout=lay, fps=30,
                                 block_levels=list(range(lay.blocks)), dscp_map=None, clock_epoch_unix_us=0, mtu=900)


async def test_random_and_malformed_datagrams_never_crash(tiny_codec, tmp_path):
    sock = open_listen_socket("127.0.0.1:0")
    addr = sock.getsockname()
    got = []
    stats_file = tmp_path / "s.jsonl"
    receiver = Receiver(sock, lambda info: tiny_codec, Outputs(stats_json=str(stats_file)),
                        ReceiverConfig(latency=0.03, report_interval=0.2),
                        on_frame=lambda r, f: got.append((r, f)))
    task = asyncio.create_task(receiver.run())
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    tx.setblocking(False)
    rng = np.random.default_rng(7)
    lay, body = _desc(tiny_codec, 42)
    pk = Packetizer(42, list(range(lay.blocks)))
    sent = 0
    for i in range(600):  # junk, RTP-looking junk, lying headers, RTCP, empty
        n = int(rng.integers(0, 1500))
        d = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        if n > 12 and i % 3 == 0:
            d[0], d[1] = 0x80, int(rng.choice([96, 97, 200, 201, 0x80 | 96]))
        if i % 50 == 0:
            d = bytearray(build_media(42, i, 0, True, FragmentHeader(i, 200, 0, 0, 1, 0, 0), b"x" * 10))
        if i % 61 == 0:
            d = bytearray(pk.description(0, b"\x08\x05garbage").data)
        tx.sendto(bytes(d), addr)
        sent += 1
        if i % 100 == 0:
            await asyncio.sleep(0)
    tx.sendto(pk.description(0, body).data, addr)
    wire = tiny_codec.encode(np.full((240, 320, 3), 128, np.uint8))
    for g in pk.packetize(3, 0, wire):
        tx.sendto(g.data, addr)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(_until(lambda: got), 10)
        # a receiver report comes back to the sender's address
        # (arrival reports, with an empty RR in front, come every 50 ms; the full report each second)
        for _ in range(100):
            m = parse_rtcp(await asyncio.wait_for(loop.sock_recv(tx, 2048), 5))
            rrs, apps = m.rrs, m.apps
            if rrs and rrs[0].reports:
                break
        assert rrs[0].reports[0].ssrc == 42 and apps
    finally:
        receiver.stop_event.set()
        await task
        sock.close()
        tx.close()
    assert not task.exception()
    (rec, frame), = got
    assert rec.frame_id == 3 and rec.decoded and rec.reason == "complete" and frame.shape == (240, 320, 3)
    c = receiver.reasm.counters
    assert c.invalid + c.no_description + c.descriptions >= sent * 0.9
    line = json.loads(stats_file.read_text().splitlines()[0])
    assert line["frame_id"] == 3 and line["bytes_received"] == line["bytes_expected"] == wire.size


async def _until(cond):
    while not cond():
        await asyncio.sleep(0.01)


async def test_cli_receives_and_writes_stats(tiny_codec, tmp_path):
    from jscc_stream.models.zoo import save_codec

    weights = save_codec(tiny_codec.model, tmp_path, "tiny", {})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stats = tmp_path / "frames.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jscc_stream.receiver.cli", "--listen", f"127.0.0.1:{port}", "--codec", str(weights),
        "--frames", "3", "--duration", "30", "--stats-json", str(stats), "--save-frames", str(tmp_path / "png"),
        "--record", str(tmp_path / "out.mp4"), "--threads", "1", stderr=asyncio.subprocess.PIPE)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lay, body = _desc(tiny_codec, 9)
    pk = Packetizer(9, list(range(lay.blocks)))
    wire = tiny_codec.encode(np.full((240, 320, 3), 90, np.uint8))
    fid = 0
    try:
        while proc.returncode is None and fid < 2000:  # until it has its 3 frames (it may start late)
            tx.sendto(pk.description(0, body).data, ("127.0.0.1", port))
            for g in pk.packetize(fid, fid * 3000, wire):
                tx.sendto(g.data, ("127.0.0.1", port))
            fid += 1
            try:
                await asyncio.wait_for(proc.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
    finally:
        tx.close()
        if proc.returncode is None:
            proc.kill()
    assert await proc.wait() == 0, (await proc.stderr.read()).decode()
    recs = [json.loads(x) for x in stats.read_text().splitlines()]
    assert len(recs) >= 3 and all(r["decoded"] for r in recs)
    assert len(list((tmp_path / "png").glob("*.png"))) >= 3 and (tmp_path / "out.mp4").stat().st_size > 0


@pytest.mark.parametrize("argv, msg", [(["--listen", "nope"], "HOST:PORT"), (["--latency-ms", "0"], "latency"),
                                       (["--gap-ms", "0"], "--gap-ms must be positive"),
                                       (["--decode-queue", "0"], "--decode-queue must be >= 1"),
                                       (["--max-size", "big"], "--max-size: size must be WxH"),
                                       (["--arrival-ms", "-1"], "--arrival-ms must be in"),
                                       (["--ssrc", "-5"], "--ssrc must be in"),
                                       (["--max-pending-mb", "0"], "--max-pending-mb must be positive"),
                                       (["--handover-ms", "-1"], "--handover-ms not negative"),
                                       (["--display", "--listen", "127.0.0.1:0"], "no display here")])
@pytest.mark.parametrize("display", [None, ":4242"])  # not set; set but nothing listens there
def test_cli_user_errors(argv, msg, display, capsys, monkeypatch):
    if display is None:
        monkeypatch.delenv("DISPLAY", raising=False)
    else:
        monkeypatch.setenv("DISPLAY", display)
    assert recv_main(argv) == 2  # one line, and the process is still here (Qt would abort it)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_dscp_is_read_per_datagram(family, host):
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")
    from jscc_stream.netem.dscp import tos_of_dscp
    from jscc_stream.udp import read_tos

    rx = open_listen_socket(f"[{host}]:0" if family == socket.AF_INET6 else f"{host}:0")
    rx.setblocking(True)
    rx.settimeout(5)
    tx = socket.socket(family, socket.SOCK_DGRAM)
    seen = []
    for dscp in (34, 36, 38, 1, 0):
        if family == socket.AF_INET6:
            tx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos_of_dscp(dscp))
        else:
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos_of_dscp(dscp))
        tx.sendto(b"x", rx.getsockname()[:2])
        _, anc, _, _ = rx.recvmsg(64, 64)
        seen.append(read_tos(anc) >> 2)
    tx.close()
    rx.close()
    assert seen == [34, 36, 38, 1, 0]


async def test_parallel_decode_workers_show_frames_in_order(tiny_codec):
    import threading
    import time as _time

    class Uneven:
        """Slow on even frames (marked in byte 0), fast on odd ones; records concurrency."""

        def __init__(self):
            self.active = 0
            self.peak = 0
            self.lock = threading.Lock()

        def decode(self, wire, received, w, h):
            with self.lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            _time.sleep(0.08 if wire[0, 0] % 2 == 0 else 0.0)
            with self.lock:
                self.active -= 1
            return np.full((h, w, 3), wire[0, 0], np.uint8)

    codec = Uneven()
    sock = open_listen_socket("127.0.0.1:0")
    got = []
    receiver = Receiver(sock, lambda info: codec, Outputs(), ReceiverConfig(decode_workers=2, max_decode_queue=50),
                        on_frame=lambda r, f: got.append((r.frame_id, int(f[0, 0, 0]))))
    task = asyncio.create_task(receiver.run())
    lay, body = _desc(tiny_codec, 5)
    pk = Packetizer(5, list(range(lay.blocks)))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.sendto(pk.description(0, body).data, sock.getsockname())
    for fid in range(8):
        for g in pk.packetize(fid, 0, np.full((lay.blocks, lay.block_bytes), fid, np.uint8)):
            tx.sendto(g.data, sock.getsockname())
    try:
        await asyncio.wait_for(_until(lambda: len(got) == 8), 10)
    finally:
        receiver.stop_event.set()
        await task
        sock.close()
        tx.close()
    assert got == [(i, i) for i in range(8)] and codec.peak == 2


async def test_frames_released_together_are_all_decoded_stale_waiting_ones_are_skipped():
    """A frame held for a retransmission releases the newer ones with it: that batch goes to the
    decoder whole (up to 8); a frame still waiting after 2 frame intervals means the decoder is
    behind, and it is skipped when the next one comes."""
    from types import SimpleNamespace

    from jscc_stream.receiver.receiver import BATCH_LIMIT

    sock = open_listen_socket("127.0.0.1:0")
    now = asyncio.get_running_loop().time()
    slot = lambda fid, age=0.0: SimpleNamespace(ssrc=1, frame_id=fid, released_at=now - age,  # noqa: E731
                                                info=SimpleNamespace(fps=30.0))
    try:
        receiver = Receiver(sock, lambda info: None, Outputs(), ReceiverConfig(max_decode_queue=2))
        receiver._enqueue([slot(1, age=0.1)])  # released 100 ms ago, still not decoded
        receiver._enqueue([slot(2), slot(3), slot(4)])
        receiver._enqueue([slot(5)])
        queued = [receiver._queue.get_nowait().frame_id for _ in range(receiver._queue.qsize())]
        assert queued == [2, 3, 4, 5] and receiver.stats.frames_skipped == 1
        receiver._enqueue([slot(i) for i in range(10, 20)])
        queued = [receiver._queue.get_nowait().frame_id for _ in range(receiver._queue.qsize())]
        assert queued == list(range(20 - BATCH_LIMIT, 20)) and receiver.stats.frames_skipped == 3
    finally:
        sock.close()


def test_a_description_can_name_only_shipped_codecs(monkeypatch):
    """The codec name in a stream description (any UDP source can send one) is never opened as a
    path or a file pattern, and made-up names do not grow the cache; --codec on the command line
    may still name a file."""
    from types import SimpleNamespace

    import jscc_stream.models.stream_codec as stream_codec
    from jscc_stream.receiver.cli import CodecCache

    loaded = []
    monkeypatch.setattr(stream_codec, "load_stream_codec", lambda key, **kw: loaded.append(key) or None)
    cache = CodecCache(None, "cpu")
    info = lambda name: SimpleNamespace(codec_name=name, ssrc=1, codec_sha256="",  # noqa: E731
                                        layout=SimpleNamespace(bits=8))
    for name in ["/etc/passwd", "../../weights/x.safetensors", "*", "uniform-*", "video?"] + [f"x{i}" for i in range(500)]:
        assert cache(info(name)) is None
    assert loaded == [] and cache.refused == 505 and not cache._cache
    cache(info("uniform"))
    assert loaded == ["uniform"]
    forced = CodecCache("/tmp/my-own.safetensors", "cpu")
    forced(info("/etc/passwd"))
    assert loaded == ["uniform", "/tmp/my-own.safetensors"]


async def _run_receiver(codec, cfg: ReceiverConfig, send, until=lambda got: False, timeout: float = 10.0,
                        setup=lambda receiver: None):
    """A Receiver on loopback (``setup`` sees it first); ``send(tx, addr)`` is awaited with a
    UDP socket; returns (receiver, frames got) once ``until(got)`` or after ``timeout``."""
    sock = open_listen_socket("127.0.0.1:0")
    got = []
    receiver = Receiver(sock, lambda info: codec, Outputs(), cfg, on_frame=lambda r, f: got.append(r))
    setup(receiver)
    task = asyncio.create_task(receiver.run())
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    try:
        await send(tx, sock.getsockname())
        try:
            await asyncio.wait_for(_until(lambda: until(got)), timeout)
        except asyncio.TimeoutError:
            pass
    finally:
        receiver.stop_event.set()
        await task
        sock.close()
        tx.close()
    return receiver, got


async def test_injected_streams_are_dropped_and_never_evict_the_real_one(tiny_codec):
    """Issue 16: four SSRCs injected by anyone who can send UDP evicted the real stream (and
    its reception statistics).  The receiver locks onto the first described stream."""
    lay, body = _desc(tiny_codec, 42)
    pk = Packetizer(42, list(range(lay.blocks)))
    wire = tiny_codec.encode(np.full((240, 320, 3), 128, np.uint8))

    async def send(tx, addr):
        tx.sendto(pk.description(0, body).data, addr)
        for fid in range(6):
            for ssrc in (1, 2, 3, 4):  # each frame, every intruder describes itself and sends a frame
                pki = Packetizer(ssrc, list(range(lay.blocks)))
                tx.sendto(pki.description(0, _desc(tiny_codec, ssrc)[1]).data, addr)
                for g in pki.packetize(fid, 0, wire):
                    tx.sendto(g.data, addr)
            for g in pk.packetize(fid, fid * 3000, wire):
                tx.sendto(g.data, addr)
            await asyncio.sleep(0.02)

    receiver, got = await _run_receiver(tiny_codec, ReceiverConfig(latency=0.05), send, lambda got: len(got) >= 6)
    assert [(r.ssrc, r.frame_id, r.decoded) for r in got] == [(42, f, True) for f in range(6)]
    assert list(receiver._rx) == [42] and receiver.reasm.counters.foreign >= 4 * 6 * 2


async def test_a_flood_of_partial_frames_stays_under_the_memory_bound(tiny_codec):
    """Issue 16: a stream (forged or real) whose frames never complete kept 32 frames of the
    layout it announced pending (~1 GiB at 1920x1080).  Pending bytes stay under the bound
    derived from --max-size and the playout window; the frames that had to go early are counted."""
    from jscc_stream.proto.description import LatentLayout

    lay = LatentLayout(320, 240, 8, 16, 25, 50, 8, True)  # 20000 bytes a block: 320 kB a frame with its mask
    body = make_description(ssrc=9, revision=0, codec_name="tiny", codec_sha256="", layout=lay, fps=30,
                            block_levels=list(range(8)), dscp_map=None, clock_epoch_unix_us=0, mtu=900)
    pk = Packetizer(9, list(range(8)))
    wire = np.zeros((lay.blocks, lay.block_bytes), np.uint8)
    cfg = ReceiverConfig(latency=0.5, max_size=(320, 240))
    peak = [0]

    async def send(tx, addr):
        tx.sendto(pk.description(0, body).data, addr)
        for fid in range(100):  # one packet of each frame
            tx.sendto(pk.packetize(fid, 0, wire)[0].data, addr)
            if fid % 10 == 0:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)

    def watch(receiver):  # the bytes pending frames hold after each datagram, counted here
        push = receiver.reasm.push

        def counted(*args):
            out = push(*args)
            slots = receiver.reasm.slots.values()
            peak[0] = max(peak[0], sum(s.wire.nbytes + s.received.nbytes for s in slots))
            return out
        receiver.reasm.push = counted

    receiver, _ = await _run_receiver(tiny_codec, cfg, send, timeout=0.5, setup=watch)
    bound = 33 * 320 * 240  # 60 fps x (0.5 s + 10 ms), + 2, frames of 320x240 bytes
    assert 0 < peak[0] <= bound
    from jscc_stream.receiver.receiver import pending_bound

    assert receiver.reasm.max_bytes == bound == pending_bound((320, 240), 0.5, cfg.reorder_grace)
    assert receiver.reasm.counters.frames_evicted > 50


async def test_datagrams_with_new_ssrcs_get_almost_nothing_back(tiny_codec):
    """Issue 16 (found by the fuzz benchmark): every datagram with a new SSRC made the receiver
    report to every source it tracked (x8 in packets, x19.6 in bytes back: a reflection
    amplifier for spoofed sources).  Now 1000 such datagrams get at most a rate-limited
    handful of small requests for a description, fewer bytes than came in."""
    rng = np.random.default_rng(7)
    grams = [bytes([0x80, 96]) + rng.integers(0, 256, 30, dtype=np.uint8).tobytes() for _ in range(1000)]
    back: list[bytes] = []

    async def send(tx, addr):
        tx.setblocking(False)
        for i, g in enumerate(grams):
            tx.sendto(g, addr)
            if i % 50 == 49:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        while True:
            try:
                back.append(tx.recv(2048))
            except BlockingIOError:
                break

    await _run_receiver(tiny_codec, ReceiverConfig(latency=0.05), send, timeout=0.5)
    sent_bytes = sum(map(len, grams))
    assert len(back) <= 10 and sum(map(len, back)) < sent_bytes / 50, (len(back), sum(map(len, back)))
