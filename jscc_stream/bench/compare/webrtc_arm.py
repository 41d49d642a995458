"""WebRTC as the yardstick: two aiortc ``RTCPeerConnection`` s streaming the source frames through
the ``jscc-netem`` shim (arms ``webrtc-vp8`` and ``webrtc-h264``).

Both peers live in the harness process (one clock: capture-to-display latency needs no sync). The
sender's track serves the source frames in real time at the media rate, pts = frame index in
90 kHz; aiortc encodes them (VP8 or H.264, forced with ``setCodecPreferences``) and adapts its
bitrate to the receiver's REMB, repairs with NACK/RTX and asks for keyframes with PLI — aiortc's
own machinery, untouched: that is the point of a yardstick.

Routing (everything, media, RTCP, ICE and DTLS, crosses the shim)::

    sender peer S ──▶ shim listen A ──(loss, delay, rate)──▶ receiver peer R (its host candidate B)
                 ◀── (reverse delay) ◀── shim's upstream socket U ◀──

- ICE uses loopback only: aioice's host-address lookup is pinned to ``127.0.0.1`` while the arm
  runs (it leaves loopback out by default), so each peer has one host candidate.
- The offer reaches R with its candidates (and end-of-candidates) removed: R knows no address of S
  and keeps waiting; S's checks arrive from the shim's upstream socket U, which R learns as a
  peer-reflexive candidate (RFC 8445 7.3.1.3) and answers with a triggered check back to U (the
  shim relays it to S). The answer reaches S with its one candidate replaced by A, so S only ever
  sends to the shim. S is the controlling agent and nominates (S, A) = (U, B) on R's side.
- Losses of ICE checks and DTLS flights are repaired by aioice's STUN retransmissions and the DTLS
  timer; a ``trace:`` loss keeps its clean prefix of 20 datagrams anyway.

Frame identity comes from the RTP timestamp, not pixels. aiortc's sender adds a random 32-bit
origin to the track's pts; its receiver gives a decoded frame the pts RTP timestamp minus the
first received frame's timestamp (``TimestampMapper``), whatever frame that was. So: the sender's
origin is read from the first RTP packet it puts on the wire (frame 0's: the track serves frame 0
first, pts 0), seen by a wrapper around the sender's ICE transport ``_send`` (which also counts
every datagram's bytes, SRTP leaves the RTP header readable, per source frame and over time); the
receiver's is read from its ``TimestampMapper`` (a private attribute: checked, a clear error if
aiortc changes it). Frame = (receiver origin + pts - sender origin) / 3000 mod 2^32.

Per source frame: decoded (a picture with that frame's timestamp came out of the receiver's track)
or frozen (the last decoded picture stays on screen), capture-to-display latency = the receiver
track's ``recv()`` return minus the frame's capture instant (its slot in the real-time schedule,
also for a frame the sender skipped because the encoder fell behind: a camera does not wait).

Bitrate: aiortc's encoders clamp their target to module constants (VP8 250 k..1.5 M, start 500 k;
H.264 500 k..3 M, start 1 M). While an arm runs they are set to ``min_bitrate``..``max_bitrate``,
start ``start_bitrate`` (default 100 k..2 M, start 1 M) for both codecs, so neither is held above a
500 kbit/s link by its floor nor capped below a 2 Mbit/s one; restored afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from jscc_stream.procs import free_port

from .stream import ArmRun

__all__ = ["WEBRTC_ARMS", "WebRtcConfig", "run_webrtc", "h264_available", "munge_offer", "munge_answer",
           "host_candidate"]

log = logging.getLogger(__name__)

WEBRTC_ARMS = ("webrtc-vp8", "webrtc-h264")
_MIME = {"webrtc-vp8": "video/VP8", "webrtc-h264": "video/H264"}
CLOCK = 90000
TIME_BASE = fractions.Fraction(1, CLOCK)


@dataclass
class WebRtcConfig:
    arm: str
    width: int
    height: int
    fps: float = 30.0
    min_bitrate: int = 100_000
    start_bitrate: int = 1_000_000
    max_bitrate: int = 2_000_000
    connect_timeout_s: float = 20.0
    drain_s: float = 1.0  # after the last frame is served, wait this long (plus the path's delay) for it
    series_interval_s: float = 0.5  # bins of the sent-bytes time series


def h264_available() -> bool:
    """aiortc's H.264 needs PyAV built with libx264 (encoder) and an h264 decoder."""
    try:
        import av

        av.codec.Codec("libx264", "w")
        av.codec.Codec("h264", "r")
        return True
    except Exception:  # noqa: BLE001 - any failure means not available
        return False


# --- SDP munging -------------------------------------------------------------------------------
_CANDIDATE = re.compile(r"^a=candidate:(\S+) (\d+) (udp) (\d+) (\S+) (\d+) typ host", re.IGNORECASE)


def host_candidate(sdp: str) -> tuple[str, int]:
    """The (host, port) of the first UDP host candidate of a session description."""
    for line in sdp.splitlines():
        m = _CANDIDATE.match(line)
        if m and m.group(2) == "1":
            return m.group(5), int(m.group(6))
    raise RuntimeError("no UDP host candidate in the session description (ICE gathering found no address)")


def munge_offer(sdp: str) -> str:
    """The offer without candidates and without end-of-candidates: the answerer learns the offerer
    only as a peer-reflexive candidate, from the checks that come through the shim."""
    lines = [ln for ln in sdp.splitlines() if not ln.startswith(("a=candidate:", "a=end-of-candidates"))]
    return "\r\n".join(lines) + "\r\n"


def munge_answer(sdp: str, host: str, port: int) -> str:
    """The answer with its candidates replaced by one host candidate at the shim's listen address."""
    out, done = [], False
    for ln in sdp.splitlines():
        m = _CANDIDATE.match(ln)
        if ln.startswith("a=candidate:"):
            if m and not done and m.group(2) == "1":
                out.append(f"a=candidate:{m.group(1)} 1 udp {m.group(4)} {host} {port} typ host")
                done = True
            continue
        out.append(ln)
    if not done:
        raise RuntimeError("the answer has no UDP host candidate to replace")
    return "\r\n".join(out) + "\r\n"


@contextlib.contextmanager
def _aiortc_settings(cfg: WebRtcConfig) -> Iterator[None]:
    """Loopback-only ICE and the bitrate range, for the duration of one arm (restored after)."""
    import aioice.ice
    from aiortc.codecs import h264, vpx

    quiet = [logging.getLogger(name) for name in ("aioice", "aiortc")]
    levels = [lg.level for lg in quiet]
    saved = [(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)]
    saved += [(mod, name, getattr(mod, name)) for mod in (vpx, h264)
              for name in ("MIN_BITRATE", "DEFAULT_BITRATE", "MAX_BITRATE")]
    try:
        for lg in quiet:  # their INFO is a line per ICE check
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
        for mod in (vpx, h264):
            mod.MIN_BITRATE, mod.DEFAULT_BITRATE, mod.MAX_BITRATE = (cfg.min_bitrate, cfg.start_bitrate,
                                                                     cfg.max_bitrate)
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)


# --- the source track --------------------------------------------------------------------------
def _source_track(frames: list[np.ndarray], fps: float, capture: dict[int, float], served: list[int]):
    import av
    from aiortc import MediaStreamTrack

    class SourceTrack(MediaStreamTrack):
        """The source frames in real time from the first ``recv()``; the newest frame that is due
        (a frame whose slot passed while the encoder was busy is skipped, as a camera would)."""

        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.t0: float | None = None
            self.next = 0

        async def recv(self):
            now = time.monotonic()
            if self.t0 is None:
                self.t0 = now
            i = max(self.next, int((now - self.t0) * fps))
            due = self.t0 + i / fps
            if due > now:
                await asyncio.sleep(due - now)
            self.next = i + 1
            if i < len(frames):
                capture[i] = due
                served.append(i)
            # past the end: copies of the last frame (not scored), because aiortc's jitter buffer
            # hands a frame on only when a packet of the next one arrives
            frame = av.VideoFrame.from_ndarray(frames[min(i, len(frames) - 1)], format="bgr24")
            frame.pts, frame.time_base = round(i * CLOCK / fps), TIME_BASE
            return frame

    return SourceTrack()


def _receiver_origin(pc) -> int:
    """The RTP timestamp that the receiver's frame pts count from: aiortc's ``TimestampMapper``
    (private to ``RTCRtpReceiver``) takes the first frame's timestamp as pts 0."""
    for receiver in pc.getReceivers():
        mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)
        if mapper is not None and getattr(mapper, "_origin", None) is not None:
            return mapper._origin
    raise RuntimeError("cannot read the receiver's RTP timestamp origin (aiortc's RTCRtpReceiver changed?)")


def _is_rtcp(data: bytes) -> bool:
    return len(data) >= 2 and 192 <= data[1] <= 223


def _is_rtp(data: bytes) -> bool:
    return len(data) >= 12 and data[0] >> 6 == 2 and not _is_rtcp(data)


def _counting_send(send, run: ArmRun, origin: list, sent_bytes: list, series: dict, frame_of, n: int,
                   t0: float, interval: float, rtp_pts: dict):
    """A wrapper of the sender's ICE ``_send``: frame 0's RTP timestamp, bytes per frame and over time."""
    async def counting_send(data: bytes) -> None:
        now = time.monotonic()
        if _is_rtp(data):
            ts = int.from_bytes(data[4:8], "big")
            if not origin:
                origin.append(ts)
            i = frame_of(ts)
            if i >= n:  # the padding after the end
                await send(data)
                return
            sent_bytes[i] += len(data)
            pt = data[1] & 0x7F
            rtp_pts[str(pt)] = rtp_pts.get(str(pt), 0) + 1
            run.packets_sent += 1
        run.wire_bytes += len(data)
        b = int((now - t0) / interval)
        series[b] = series.get(b, 0) + len(data)
        await send(data)

    return counting_send


def _finish(cfg: WebRtcConfig, run: ArmRun, images: dict, capture: dict, served: list, rtp_pts: dict,
            series: dict, sent_bytes: list, connect_s: float, shim_t0: float, shim) -> None:
    """What is on screen per frame, and the run's counters and time series."""
    n = len(run.decoded)
    shown = None
    for i in range(n):
        if run.decoded[i]:
            shown = images[i]
        run.shown[i] = shown
    t_first = min(capture.values()) if capture else shim_t0
    # retransmissions: RTX packets (aiortc's rtx payload type is the media's + 1 in its defaults;
    # count the packets of every payload type but the most frequent one, the media's)
    counts = sorted(rtp_pts.values(), reverse=True)
    run.retransmissions = sum(counts[1:])
    run.duration_s = n / cfg.fps
    nbins = max(series, default=-1) + 1
    run.extra.update({
        "codec": _MIME[cfg.arm].split("/")[1],
        "connect_s": round(connect_s, 3),
        "frames_skipped_by_sender": n - len(set(served)),
        "sent_bytes": sent_bytes,
        # the capture instant of frame 0 and of each frame, seconds on the shim's clock
        "media_start_s": round(t_first - shim_t0, 4),
        "capture_s": [round(capture[i] - shim_t0, 4) if i in capture else None for i in range(n)],
        "series_interval_s": cfg.series_interval_s,
        "sent_series_bytes": [series.get(b, 0) for b in range(nbins)],
        "rtp_packets_by_pt": rtp_pts,
        "shim_started_unix": getattr(shim, "started_unix", None),
    })


async def _stream_to_end(cfg: WebRtcConfig, pc_s, pc_r, capture: dict, run: ArmRun, t_start: float) -> float:
    """Wait for the connection (seconds from ``t_start`` returned), the whole source and its tail."""
    n = len(run.decoded)
    # the connection, then the whole source
    end = time.monotonic() + cfg.connect_timeout_s
    while not capture and time.monotonic() < end:
        await asyncio.sleep(0.05)
    if not capture:
        raise RuntimeError(f"{cfg.arm}: no connection within {cfg.connect_timeout_s:g} s "
                           f"(ICE {pc_s.iceConnectionState}/{pc_r.iceConnectionState})")
    connect_s = time.monotonic() - t_start
    while n - 1 not in capture:
        await asyncio.sleep(0.05)
    end = time.monotonic() + 3 * cfg.drain_s
    await asyncio.sleep(cfg.drain_s)
    while not run.decoded[n - 1] and time.monotonic() < end:  # the tail may be behind a queue
        await asyncio.sleep(0.05)
    return connect_s


async def _run(cfg: WebRtcConfig, frames: list[np.ndarray], shim_factory: Callable[[int, int], object]) -> ArmRun:
    from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    n = len(frames)
    run = ArmRun(arm=cfg.arm, shown=[None] * n, decoded=[False] * n, latency_ms=[None] * n)
    capture: dict[int, float] = {}
    served: list[int] = []
    images: dict[int, np.ndarray] = {}
    sent_bytes = [0] * n
    series: dict[int, int] = {}  # bin -> bytes the sender put on the wire (all datagrams but STUN)
    origin: list[int] = []  # RTP timestamp of frame 0 (pts 0) as the sender sent it
    recv_origin: list[int] = []  # RTP timestamp of the receiver's first frame (its pts 0)
    rtp_pts: dict[str, int] = {}
    t_start = time.monotonic()

    pc_s, pc_r = RTCPeerConnection(), RTCPeerConnection()
    track = _source_track(frames, cfg.fps, capture, served)
    tr = pc_s.addTransceiver(track, direction="sendonly")
    caps = RTCRtpSender.getCapabilities("video").codecs
    prefs = [c for c in caps if c.mimeType.lower() == _MIME[cfg.arm].lower()]
    if not prefs:
        raise RuntimeError(f"aiortc offers no {_MIME[cfg.arm]} codec")
    tr.setCodecPreferences(prefs + [c for c in caps if c.mimeType.lower() == "video/rtx"])

    got_track: asyncio.Future = asyncio.get_running_loop().create_future()
    pc_r.on("track", lambda t: got_track.done() or got_track.set_result(t))

    def frame_of(ts: int) -> int:
        return round(((ts - origin[0]) & 0xFFFFFFFF) * cfg.fps / CLOCK)

    async def consume(remote) -> None:
        while True:
            try:
                frame = await remote.recv()
            except MediaStreamError:
                return
            t = time.monotonic()
            if not origin or frame.pts is None:
                continue
            if not recv_origin:
                recv_origin.append(_receiver_origin(pc_r))
            i = frame_of(recv_origin[0] + frame.pts)
            if 0 <= i < n and not run.decoded[i]:
                run.decoded[i] = True
                images[i] = frame.to_ndarray(format="bgr24")
                if i in capture:
                    run.latency_ms[i] = (t - capture[i]) * 1000

    shim = None
    consumer = None
    try:
        await pc_s.setLocalDescription(await pc_s.createOffer())
        await pc_r.setRemoteDescription(RTCSessionDescription(munge_offer(pc_s.localDescription.sdp), "offer"))
        await pc_r.setLocalDescription(await pc_r.createAnswer())
        r_host, r_port = host_candidate(pc_r.localDescription.sdp)
        listen = free_port()
        shim = shim_factory(listen, r_port)
        await asyncio.to_thread(shim.__enter__)
        shim_t0 = time.monotonic()
        answer = munge_answer(pc_r.localDescription.sdp, "127.0.0.1", listen)

        # count what the sender puts on the wire: wrap its ICE transport's send
        ice = tr.sender.transport.transport
        ice._send = _counting_send(ice._send, run, origin, sent_bytes, series, frame_of, n, shim_t0,
                                   cfg.series_interval_s, rtp_pts)
        await pc_s.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        remote = await asyncio.wait_for(got_track, cfg.connect_timeout_s)
        consumer = asyncio.create_task(consume(remote))
        connect_s = await _stream_to_end(cfg, pc_s, pc_r, capture, run, t_start)
    finally:
        if consumer is not None:
            consumer.cancel()
        await pc_s.close()
        await pc_r.close()
        if shim is not None:
            await asyncio.to_thread(shim.__exit__, None, None, None)
    _finish(cfg, run, images, capture, served, rtp_pts, series, sent_bytes, connect_s, shim_t0, shim)
    return run


def run_webrtc(cfg: WebRtcConfig, frames: list[np.ndarray], shim_factory: Callable[[int, int], object]) -> ArmRun:
    """Stream ``frames`` peer to peer through a shim made by ``shim_factory(listen_port,
    forward_port)`` (a context manager, e.g. :class:`~.channel.Shim`; entered once the receiver's
    port is known)."""
    if cfg.arm not in WEBRTC_ARMS:
        raise ValueError(f"unknown WebRTC arm {cfg.arm!r}; choose from {', '.join(WEBRTC_ARMS)}")
    if cfg.arm == "webrtc-h264" and not h264_available():
        raise RuntimeError("webrtc-h264 needs PyAV with libx264 and an H.264 decoder")
    with _aiortc_settings(cfg):
        return asyncio.run(_run(cfg, frames, shim_factory))
