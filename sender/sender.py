"""The send loop: capture on a clock, encode off the event loop, packetize, pace, mark DSCP, fan out;
and what comes back: RTCP reports (round trip from LSR/DLSR, DLRR answers to the receiver's
RRTR), arrival reports into congestion control (``congestion.py``; each frame's codec budget from
its target, ``transport.py``), NACKs answered from a short history of the protected payloads,
parity over them sized to the reported loss (``proto/protection.py``), receipts for the video
codec's references.

When the encoder is still busy at a capture tick the frame waits for it (its capture time
stays the tick's); when a frame is already waiting, the new one is dropped (counted), so
latency never builds up behind a slow encoder, and a single slow frame freezes nothing.

DSCP: one UDP socket per address family (so a flow keeps one source port, which RTCP and
shims rely on); ``IP_TOS``/``IPV6_TCLASS`` is set only when the class changes, at most 4 times
per frame since blocks go out in importance order.  Measured on loopback: sendto of a 624-byte
datagram ~5-6 us, an extra setsockopt per datagram < 0.5 us (within noise), so marking costs
nothing that matters at ~240 datagrams/s.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from jscc_stream.models.roi import RoiMap
from jscc_stream.netem.dscp import tos_of_dscp
from jscc_stream.proto.description import make_description
from jscc_stream.proto.packet import CLOCK_RATE
from jscc_stream.proto.packetizer import Datagram, Packetizer
from jscc_stream.proto.arrivals import decode_arrivals
from jscc_stream.proto.protection import RetransmitHistory, loss_runs, parity_for, protected_prefix
from jscc_stream.proto.receipts import unpack_bitmap
from jscc_stream.proto.references import Receipt, ReferenceState
from jscc_stream.proto.rtcp import build_bye, build_dlrr, build_sender_report, compact, ntp_now, parse_rtcp, rtt_from
from jscc_stream.regions import RegionSource
from jscc_stream.errors import UserError
from jscc_stream.sources import Source
from jscc_stream.udp import TosSetter, parse_hostport, resolve, udp_socket

from .dscp import dscp_for
from .transport import IP_UDP_BYTES, FrameBudget, LowPriorityDelay, PriorityLoss, SendLog

__all__ = ["SenderConfig", "SenderStats", "Sender", "resolve_dest", "rate_bounds"]

log = logging.getLogger("jscc.send")

STANDING_QUEUE_S = 0.1  # least important packets waiting longer than this in the path: back off


def rate_bounds(kbps: float, min_kbps: float | None, max_kbps: float | None) -> tuple[float, float]:
    """Congestion control's bounds (kbit/s): the given ones, else ``kbps`` / 8 and ``kbps``;
    ValueError unless 0 < min <= kbps <= max."""
    lo = min_kbps if min_kbps is not None else kbps / 8
    hi = max_kbps if max_kbps is not None else kbps
    if not 0 < lo <= kbps <= hi:
        raise ValueError(f"need 0 < --min-kbps ({lo:g}) <= --kbps ({kbps:g}) <= --max-kbps ({hi:g})")
    return lo, hi


def resolve_dest(spec: str) -> tuple[int, tuple]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (family, sockaddr)."""
    try:
        return resolve(*parse_hostport(spec, default_host=None))
    except ValueError as exc:
        raise ValueError(f"destination must be HOST:PORT or [IPv6]:PORT: {exc}") from None


@dataclass
class SenderConfig:
    width: int = 320
    height: int = 240
    fps: float = 30.0
    mtu: int = 900
    dests: list[str] = field(default_factory=lambda: ["127.0.0.1:5004"])
    dscp_map: dict[int, int] | None = None  # level -> DSCP; None: no marking
    # refinement bit layer -> DSCP (codecs with bit layers); None: refinements marked by level
    layer_dscp: dict[int, int] | None = None
    kbps: float | None = None  # entropy-coded codecs: the (starting) bitrate, kbit/s on the wire
    min_kbps: float | None = None  # congestion control's bounds (None: kbps / 8 and kbps)
    max_kbps: float | None = None
    congestion_control: bool = True  # follow the path's capacity (one destination with feedback)
    protect_levels: int = 2  # importance levels below this are repaired (parity, NACK)
    fec: bool = True  # parity packets over the protected payloads, as many as the reported loss needs
    nack: bool = True  # resend protected payloads a receiver asks for
    frames: int | None = None  # stop after this many frames sent
    duration: float | None = None  # ... or this many seconds
    pace_fraction: float = 0.5  # spread a frame's packets over this share of the frame interval
    description_interval: float = 1.0
    ssrc: int | None = None
    adapt: bool = True  # lower the frame rate to what the slowest receiver decodes (from its feedback)
    references: str = "feedback"  # predicted-frame codecs: feedback | oneway | intra (proto/references.py)
    intra_period: int = 30  # oneway references: an intra frame every this many frames
    roi_boost: int = 24  # with regions: rate indexes finer inside them (models/roi.py)


@dataclass
class SenderStats:
    ticks: int = 0
    frames_sent: int = 0
    frames_dropped: int = 0  # the encoder busy and a frame already waiting for it at the capture tick
    frames_rate_limited: int = 0  # skipped to match the receivers' decode rate
    target_fps: float = 0.0
    packets_sent: int = 0
    bytes_sent: int = 0
    send_errors: int = 0
    tos_changes: int = 0
    descriptions_sent: int = 0
    reports: int = 0
    sender_reports: int = 0
    last_fraction_lost: float | None = None
    last_jitter_ms: float | None = None
    rtt_ms: float | None = None  # from the receivers' RR (LSR/DLSR)
    target_kbps: float | None = None  # congestion control's current target
    loss_estimate: float = 0.0  # packet loss the arrival reports show (smoothed)
    loss_burst: float = 1.0  # mean length of their loss runs, packets (smoothed)
    priority_drop_reports: int = 0  # arrival reports whose loss fell on the least important packets only
    standing_queue_reports: int = 0  # ... whose least important packets waited > STANDING_QUEUE_S
    arrival_reports: int = 0
    nacks: int = 0  # NACK messages received
    retransmissions: int = 0  # payloads sent again
    encode_error: str | None = None  # why the stream ended early, if the encoder failed
    parity_packets: int = 0
    parity_bytes: int = 0
    byes: int = 0  # receivers that said goodbye
    rtcp_foreign: int = 0  # RTCP from an address this sender does not send to: ignored
    new_receivers: int = 0  # receiver SSRCs first heard at an address (a receiver started or restarted)
    rate_log: list = field(default_factory=list)  # every 0.5 s: t, target/sent kbit/s, loss, rtt
    encode_ms: list[float] = field(default_factory=list)
    roi_frames: int = 0  # frames coded with a region map (--roi)
    references: object | None = None  # ReferenceStats of a predicted-frame stream

    def summary(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("encode_ms", "references", "congestion")}
        if self.references is not None:
            d["references"] = self.references.summary()
        d["encode_ms_median"] = statistics.median(self.encode_ms) if self.encode_ms else None
        return d


@dataclass
class _ReceiverFeedback:
    """What one receiver last reported, and the frame rate the sender allows it."""

    at: float  # monotonic time of the report
    decoded: int  # frames decoded (cumulative)
    skipped: int  # frames its decoder skipped (cumulative)
    target_fps: float


class Sender:
    def __init__(self, codec, source: Source, cfg: SenderConfig, regions: RegionSource | None = None) -> None:
        self.codec = codec
        self.source = source
        self.cfg = cfg
        self.regions = regions  # where frames matter more (jscc_stream/regions.py): a finer step there
        self.layout = codec.layout(cfg.width, cfg.height)
        self.ssrc = cfg.ssrc if cfg.ssrc is not None else int.from_bytes(os.urandom(4), "big")
        self.levels = list(range(self.layout.blocks))  # block i has importance level i
        self.entropy_coded = bool(getattr(codec, "entropy_coded", False))
        if self.entropy_coded and not cfg.kbps:
            raise ValueError("an entropy-coded codec needs a bitrate (kbps)")
        self.refs: ReferenceState | None = None
        if getattr(codec, "predicted_frames", False):
            mode = cfg.references
            if mode == "feedback" and len(cfg.dests) > 1:
                # receivers that lose different packets hold different pictures: no common reference
                log.info("%d destinations: oneway references (intra every %d frames)", len(cfg.dests),
                         cfg.intra_period)
                mode = "oneway"
            self.refs = ReferenceState(codec, cfg.width, cfg.height, mode, cfg.intra_period)
        self.packetizer = Packetizer(self.ssrc, self.levels, cfg.mtu, first_seq=int.from_bytes(os.urandom(2), "big"))
        self.stats = SenderStats()
        self.stats.references = self.refs.stats if self.refs else None
        self.stop_event = asyncio.Event()
        self._dests = [resolve_dest(d) for d in cfg.dests]
        self._peers = {tuple(addr[:2]) for _, addr in self._dests}
        self._socks: dict[int, socket.socket] = {}
        self._tos: dict[int, TosSetter] = {}
        self._revision = 0
        self._desc_key: bytes | None = None
        self._mono0 = time.monotonic()
        self._fb: dict[tuple, _ReceiverFeedback] = {}  # receiver address -> its last feedback
        self._receivers: dict[tuple, int] = {}  # receiver address -> its RTCP SSRC
        self.stats.target_fps = cfg.fps
        self._epoch_us = time.time_ns() // 1000
        self.send_log = SendLog()
        self.low_delay = LowPriorityDelay()
        self.priority_loss = PriorityLoss()
        self.budget = FrameBudget()
        self.history = RetransmitHistory()
        self.cc = self._controller() if self.entropy_coded else None
        self.stats.target_kbps = cfg.kbps
        self._feedback_seen = False
        self._bytes_mark = (time.monotonic(), 0)

    def _controller(self):
        """Congestion control for one destination; a fixed rate otherwise (several receivers'
        reports would mix, and a sender without a return path must not back off)."""
        cfg = self.cfg
        lo, hi = rate_bounds(cfg.kbps, cfg.min_kbps, cfg.max_kbps)
        if not cfg.congestion_control or len(cfg.dests) > 1:
            return None
        from .congestion import RateController, RateControllerConfig

        return RateController(RateControllerConfig(start_bps=cfg.kbps * 1000, min_bps=lo * 1000, max_bps=hi * 1000))

    # -- sockets -------------------------------------------------------------------------
    def _open_sockets(self) -> None:
        for fam, _ in self._dests:
            if fam not in self._socks:
                self._socks[fam] = udp_socket(fam)
                self._tos[fam] = TosSetter(self._socks[fam], current=0)

    def _send(self, gram: Datagram) -> None:
        if self.cfg.dscp_map is not None:
            level = gram.level if gram.level >= 0 else self.levels[0]
            tos = tos_of_dscp(dscp_for(self.cfg.dscp_map, self.cfg.layer_dscp, level, gram.layer))
        else:
            tos = 0
        if not 192 <= gram.data[1] <= 223:  # RTP (not RTCP): remembered for the arrival reports
            # a refinement bit layer ranks below every level's coarse index (priority-loss detection)
            rank = gram.level + gram.layer * len(self.levels) if gram.level >= 0 else gram.level
            self.send_log.record(int.from_bytes(gram.data[2:4], "big"), time.monotonic(),
                                 len(gram.data) + IP_UDP_BYTES, rank)
        for fam, addr in self._dests:
            try:
                self._tos[fam].set(tos)
                self._socks[fam].sendto(gram.data, addr)
                self.stats.packets_sent += 1
                self.stats.bytes_sent += len(gram.data)
            except OSError as exc:  # ECONNREFUSED from an earlier ICMP, a full buffer, ...
                self.stats.send_errors += 1
                log.debug("send to %s failed: %s", addr, exc)

    def _reply(self, sock: socket.socket, data: bytes, addr) -> None:
        try:
            sock.sendto(data, addr)
        except OSError as exc:
            log.debug("RTCP reply to %s failed: %s", addr, exc)

    def _on_rtcp(self, sock: socket.socket) -> None:
        while True:
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if tuple(addr[:2]) not in self._peers:  # feedback only from the receivers sent to
                self.stats.rtcp_foreign += 1
                continue
            try:
                msgs = parse_rtcp(data)
            except (ValueError, IndexError) as exc:
                log.debug("ignoring a bad RTCP datagram from %s: %s", addr, exc)
                continue
            now = time.monotonic()
            if msgs.rrtr:  # a receiver's clock: answer at once, so its round trip is exact
                self._reply(sock, build_dlrr(self.ssrc, [(ssrc, compact(ntp), 0) for ssrc, ntp in msgs.rrtr]), addr)
            for rr in msgs.rrs:
                self._on_receiver(rr.ssrc, addr)
                for rep in rr.reports:
                    if rep.ssrc == self.ssrc:
                        self._on_report_block(rep, addr, now)
            for body in msgs.apps:
                self._on_feedback(body, addr, now)
            for ssrc in msgs.byes:
                self.stats.byes += 1
                self._fb.pop(addr, None)
                log.info("receiver %s (ssrc %08x) said goodbye", addr[0], ssrc)

    def _on_receiver(self, ssrc: int, addr) -> None:
        """A receiver not heard before at this address (it started, or restarted) lacks the
        stream's description: describe the stream now, not at the next interval.  One that
        replaced another there (a restart) holds no picture to predict from either: the next
        frame is intra (a first receiver held the stream from its first frame, or its receipts
        will say what it lacks)."""
        key = tuple(addr[:2])
        known = self._receivers.get(key)
        if known == ssrc:
            return
        self._receivers[key] = ssrc
        self.stats.new_receivers += 1
        self._send(self._description())
        self.stats.descriptions_sent += 1
        if known is not None and self.refs is not None:
            self.refs.forget()

    def _on_report_block(self, rep, addr, now: float) -> None:
        self.stats.reports += 1
        self.stats.last_fraction_lost = rep.fraction_lost / 256
        self.stats.last_jitter_ms = rep.jitter / CLOCK_RATE * 1000
        rtt = rtt_from(compact(ntp_now()), rep.lsr, rep.dlsr)
        if rtt is not None:
            self.stats.rtt_ms = round(rtt * 1000, 2)
            if self.cc is not None:
                self.cc.on_rtt(rtt, now)
        if self.cc is not None:
            self._set_target(self.cc.on_loss_report(rep.fraction_lost / 256, now))
        log.info("RTCP RR from %s: fraction lost %.1f%%, cumulative lost %d, jitter %.1f ms, rtt %s ms",
                 addr[0], 100 * rep.fraction_lost / 256, rep.packets_lost, self.stats.last_jitter_ms,
                 self.stats.rtt_ms)

    def _on_feedback(self, body: bytes, addr, now: float) -> None:
        from google.protobuf.message import DecodeError

        from jscc_stream.proto.stream_pb2 import Feedback

        fb = Feedback()
        try:
            fb.ParseFromString(body)
        except DecodeError:
            return
        if fb.ssrc != self.ssrc:
            return
        if fb.receipts:  # a video receiver's per-frame receipts: 30 a second, not logged
            self._on_receipts(fb.receipts)
        if fb.HasField("arrivals"):
            self._on_arrivals(fb.arrivals, now)
        for nack in fb.nacks:
            self._on_nack(nack, now)
        if fb.receipts or fb.HasField("arrivals") or fb.nacks:
            return
        log.info("feedback from %s: decoded %d (incomplete %d, skipped %d), late packets %d, latency p50 "
                 "%.0f ms p95 %.0f ms", addr[0], fb.frames_decoded, fb.frames_incomplete, fb.frames_skipped,
                 fb.packets_late, fb.latency_p50_ms, fb.latency_p95_ms)
        self._adapt(addr, fb.frames_decoded, fb.frames_skipped)

    def _on_arrivals(self, msg, now: float) -> None:
        try:
            arrivals = decode_arrivals(msg)
        except ValueError as exc:
            log.debug("ignoring an arrival report: %s", exc)
            return
        results, levels = self.send_log.results(arrivals)
        if not results:
            return
        self.stats.arrival_reports += 1
        self._feedback_seen = True
        lost = sum(r.arrival is None for r in results) / len(results)
        self.stats.loss_estimate += 0.05 * (lost - self.stats.loss_estimate)
        for run in loss_runs(results):
            self.stats.loss_burst += 0.1 * (run - self.stats.loss_burst)
        if self.cc is not None:
            top = max(1, self.cfg.protect_levels)
            skewed = self.priority_loss.update(results, levels, top, now)
            self.stats.priority_drop_reports += skewed
            self._set_target(self.cc.on_feedback(results, now, skewed))
            waited = self.low_delay.update(results, levels, top, now)
            if waited is not None and waited > STANDING_QUEUE_S:
                self.stats.standing_queue_reports += 1
                self._set_target(self.cc.on_standing_queue(now))

    def _on_nack(self, nack, now: float) -> None:
        """Resend the protected payloads a receiver asks for (the history refuses others)."""
        self.stats.nacks += 1
        if not self.cfg.nack:
            return
        ts, items = self.history.take(nack.frame_id, list(nack.payloads)[:64], now)
        for header, data in items:
            gram = self.packetizer.resend(ts, header, data)
            self._send(gram)
            self.budget.on_resend(now, len(gram.data) + IP_UDP_BYTES)
            self.stats.retransmissions += 1

    def _set_target(self, bps: float) -> None:
        self.stats.target_kbps = round(bps / 1000, 1)

    def _on_receipts(self, receipts) -> None:
        if self.refs is None:
            return
        for r in receipts:
            try:
                used = unpack_bitmap(r.received, r.payloads)
            except ValueError as exc:
                log.debug("ignoring a receipt for frame %d: %s", r.frame_id, exc)
                continue
            self.refs.on_receipt(Receipt(r.frame_id, used, r.decoded, r.crc32))

    # -- rate adaptation -----------------------------------------------------------------
    def _adapt(self, addr, decoded: int, skipped: int) -> None:
        """Match the capture rate to what each receiver manages to decode.

        A receiver that skips frames (decoder behind) gets the rate it decoded in the last
        interval, plus a little; one that skips none lets the rate climb back by 20 % a report.
        Encoding frames nobody can decode only steals CPU from the decoder on a shared machine.
        """
        now = time.monotonic()
        prev = self._fb.get(addr)
        self._fb[addr] = _ReceiverFeedback(now, decoded, skipped, prev.target_fps if prev else self.cfg.fps)
        if prev is None or not self.cfg.adapt:
            return
        dt = now - prev.at
        if dt <= 0.2 or decoded < prev.decoded:  # too soon, or the receiver restarted
            return
        rate = (decoded - prev.decoded) / dt
        target = prev.target_fps
        if skipped > prev.skipped:
            target = max(1.0, min(target, rate * 1.1 + 0.5))
        else:
            target = min(self.cfg.fps, target * 1.2)
        self._fb[addr].target_fps = target
        live = [v.target_fps for v in self._fb.values() if now - v.at < 5]
        self.stats.target_fps = min(live) if live else self.cfg.fps

    # -- stream description --------------------------------------------------------------
    def _description(self) -> Datagram:
        max_payloads = self.codec.max_frame_payloads(self.cfg.width, self.cfg.height) if self.entropy_coded else 0
        kw = dict(ssrc=self.ssrc, codec_name=self.codec.name, codec_sha256=self.codec.sha256,
                  layout=self.layout, fps=self.cfg.fps, block_levels=self.levels, dscp_map=self.cfg.dscp_map,
                  clock_epoch_unix_us=self._epoch_us, mtu=self.cfg.mtu, max_frame_payloads=max_payloads,
                  codec_kind=getattr(self.codec, "kind", ""))
        key = make_description(revision=0, **kw)
        if self._desc_key is not None and key != self._desc_key:
            self._revision += 1
        self._desc_key = key
        body = make_description(revision=self._revision, **kw)
        return self.packetizer.description(self._timestamp(time.monotonic()), body)

    def _timestamp(self, mono: float) -> int:
        return int(round((mono - self._mono0) * CLOCK_RATE)) & 0xFFFFFFFF

    async def _describe_loop(self) -> None:
        while not self.stop_event.is_set():
            self._send(self._description())
            self.stats.descriptions_sent += 1
            try:
                await asyncio.wait_for(self.stop_event.wait(), self.cfg.description_interval)
            except asyncio.TimeoutError:
                pass

    # -- capture / encode / pace ---------------------------------------------------------
    def target_bps(self) -> float:
        return self.cc.target_bps if self.cc is not None else self.cfg.kbps * 1000

    def sent_fps(self) -> float:
        """The rate frames are encoded at: every k-th capture tick, the k the rate limit in
        :meth:`run` lets through for the receivers' ``target_fps``."""
        k = max(1, math.ceil(self.cfg.fps / self.stats.target_fps - 0.5))
        return self.cfg.fps / k

    def frame_budget(self) -> int:
        """Codec bytes an entropy-coded frame may take: the target bitrate over the frame rate,
        less headers, parity and retransmissions (:class:`FrameBudget`)."""
        return self.budget.codec_bytes(self.target_bps(), self.sent_fps(), time.monotonic())

    def _capture_encode(self, index: int, tick: float) -> tuple[int, float, np.ndarray | list[bytes]] | None:
        """Read and encode frame ``index`` of the capture tick at monotonic time ``tick`` (its
        capture time, also when the frame waited for the encoder)."""
        frame = self.source.read(index)
        if frame is None:
            return None
        mono = tick
        t = time.perf_counter()
        roi = self._region(index, frame)
        if self.refs is not None:
            ref_id, ref = self.refs.choose(index)
            budget = self.frame_budget()
            wire = self.codec.encode(frame, budget, ref, 0 if ref_id is None else index - ref_id, **roi)
            self.refs.sent(index, wire, ref_id, ref)
            log.debug("frame %d: budget %d bytes, ref %s", index, budget, ref_id)
        elif self.entropy_coded:
            wire = self.codec.encode(frame, self.frame_budget(), **roi)
        else:
            wire = self.codec.encode(frame)
        self.stats.encode_ms.append((time.perf_counter() - t) * 1000)
        return index, mono, wire

    def _region(self, index: int, frame: np.ndarray) -> dict:
        """The ``roi`` keyword for the codec: this frame's region map, if it has one."""
        pixels = self.regions.region(index, frame) if self.regions is not None else None
        roi = RoiMap.from_pixels(pixels, self.cfg.roi_boost) if pixels is not None else None
        if roi is None:
            return {}
        self.stats.roi_frames += 1
        return {"roi": roi}

    async def _pacer(self, queue: asyncio.Queue) -> None:
        window = self.cfg.pace_fraction / self.cfg.fps
        while True:
            grams = await queue.get()
            if grams is None:
                return
            gap = window / max(1, len(grams) - 1)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for j, g in enumerate(grams):
                if j and queue.empty():  # a newer frame waiting: flush without pacing
                    delay = t0 + j * gap - loop.time()
                    if delay > 0.0005:
                        await asyncio.sleep(delay)
                self._send(g)

    def _on_encoded(self, fut: asyncio.Future, queue: asyncio.Queue, executor: ThreadPoolExecutor,
                    ended: asyncio.Event) -> None:
        """An encode finished (on the event loop): packetize, queue for the pacer, and let the
        encoder thread make the next reference's decodes after the frame went out."""
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:  # a source's UserError (no image left to show) is one line, not a bug
            log.error("encoding failed: %s", exc, exc_info=None if isinstance(exc, UserError) else exc)
            self.stats.encode_error = f"{type(exc).__name__}: {exc}"
            ended.set()
            return
        res = fut.result()
        if res is None:
            ended.set()
            return
        if self.cfg.frames is not None and self.stats.frames_sent >= self.cfg.frames:
            return  # a second frame was already encoding when the last one was sent: --frames is a count
        index, mono, wire = res
        if self.entropy_coded:
            grams = self._packetize_protected(index, self._timestamp(mono), wire)
        else:
            grams = self.packetizer.packetize(index, self._timestamp(mono), wire, self._revision)
        if self.stats.frames_sent < 3:  # repeat the description with the first frames: it may be lost
            grams.insert(0, self._description())
            self.stats.descriptions_sent += 1
        queue.put_nowait(grams)
        if self.refs is not None:
            asyncio.get_running_loop().run_in_executor(executor, self.refs.confirm)
        self.stats.frames_sent += 1
        if self.cfg.frames is not None and self.stats.frames_sent >= self.cfg.frames:
            ended.set()

    def _packetize_protected(self, index: int, timestamp: int, wire: list[bytes]) -> list[Datagram]:
        """Payloads -> datagrams, with parity over the top levels after them (as many as the
        reported loss needs) and the top levels kept for NACKs."""
        cfg = self.cfg
        levels = self.codec.payload_levels(wire)
        k = 0
        if cfg.fec or cfg.nack:
            k = protected_prefix(levels, [len(p) for p in wire], cfg.protect_levels, cfg.mtu)
        parity = parity_for(wire, k, self.stats.loss_estimate, self.stats.loss_burst) if cfg.fec else []
        # receivers ask again only for what this sender answers (the header's protected count)
        layers = self.codec.payload_layers(wire) if hasattr(self.codec, "payload_layers") else None
        grams = self.packetizer.packetize_payloads(index, timestamp, wire, levels, self._revision,
                                                   k if cfg.nack else 0, parity, k, layers)
        if k and cfg.nack:
            self.history.add(index, timestamp, time.monotonic(), [g.header for g in grams if g.header], wire)
        parity_bytes = sum(len(g.data) + IP_UDP_BYTES for g in grams if g.header is None)
        self.stats.parity_packets += len(parity)
        self.stats.parity_bytes += parity_bytes
        self.budget.on_frame(len(grams) - len(parity), parity_bytes)
        log.debug("frame %d: %d codec bytes in %d payloads (%d protected), %d parity packets of %d bytes",
                  index, sum(map(len, wire)), len(wire), k, len(parity), parity_bytes)
        return grams

    async def _control_loop(self) -> None:
        """Sender reports every second; congestion control's timeout and the rate log."""
        loop = asyncio.get_running_loop()
        next_log = loop.time()
        next_sr = next_log + 0.1  # the first after the first frames, once the receiver knows the stream
        while not self.stop_event.is_set():
            now = loop.time()
            if now >= next_sr:
                next_sr = now + self.cfg.description_interval
                self._send(Datagram(self._sender_report(), -1, -1))
                self.stats.sender_reports += 1
            if self.cc is not None and self._feedback_seen:
                self._set_target(self.cc.on_timeout(time.monotonic()))
            if now >= next_log:
                next_log = now + 0.5
                self._log_rate()
            try:
                await asyncio.wait_for(self.stop_event.wait(), 0.1)
            except asyncio.TimeoutError:
                pass

    def _log_rate(self) -> None:
        mono = time.monotonic()
        t0, b0 = self._bytes_mark
        sent = self.stats.bytes_sent + IP_UDP_BYTES * self.stats.packets_sent
        self._bytes_mark = (mono, sent)
        self.stats.rate_log.append({
            "t": round(mono - self._mono0, 3), "target_kbps": round(self.target_bps() / 1000, 1) if self.entropy_coded
            else None, "sent_kbps": round((sent - b0) * 8 / max(1e-3, mono - t0) / 1000, 1),
            "loss": round(self.stats.loss_estimate, 4), "rtt_ms": self.stats.rtt_ms,
            "cc": self.cc.snapshot() if self.cc is not None else None})

    def _sender_report(self) -> bytes:
        return build_sender_report(self.ssrc, ntp_now(), self._timestamp(time.monotonic()), self.stats.packets_sent,
                                   self.stats.bytes_sent)

    def _say_goodbye(self) -> None:
        """RFC 3550 6.6: BYE in a compound packet behind a sender report."""
        try:
            self._send(Datagram(self._sender_report() + build_bye(self.ssrc), -1, -1))
        except OSError:
            pass

    async def run(self) -> SenderStats:
        loop = asyncio.get_running_loop()
        self._open_sockets()
        for s in self._socks.values():
            loop.add_reader(s.fileno(), self._on_rtcp, s)
        queue: asyncio.Queue = asyncio.Queue()
        pacer = asyncio.create_task(self._pacer(queue))
        self._send(self._description())
        self.stats.descriptions_sent += 1
        describer = asyncio.create_task(self._describe_after_first())
        controller = asyncio.create_task(self._control_loop())
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jscc-encode")
        period = 1.0 / self.cfg.fps
        start = loop.time()
        ended = asyncio.Event()

        done = functools.partial(self._on_encoded, queue=queue, executor=executor, ended=ended)

        last_encode = -1e9
        inflight: list[asyncio.Future] = []
        try:
            index = 0
            while not (self.stop_event.is_set() or ended.is_set()):
                now = loop.time()
                if self.cfg.duration is not None and now - start >= self.cfg.duration:
                    break
                inflight = [f for f in inflight if not f.done()]
                # one frame may wait for a busy encoder (a slow frame now and then costs a few ms
                # of latency, not a frozen frame); a second is dropped, so latency cannot build up
                if len(inflight) >= 2:
                    self.stats.frames_dropped += 1
                elif self.cfg.frames is not None and self.stats.frames_sent + len(inflight) >= self.cfg.frames:
                    pass  # the last of --frames is being encoded: never one more
                elif now - last_encode < 1.0 / self.stats.target_fps - period / 2:
                    self.stats.frames_rate_limited += 1
                else:
                    last_encode = now
                    fut = loop.run_in_executor(executor, self._capture_encode, index, time.monotonic())
                    fut.add_done_callback(done)
                    inflight.append(fut)
                self.stats.ticks += 1
                index += 1
                target = start + index * period
                wait = max(0.0, target - loop.time())
                waiters = [asyncio.ensure_future(self.stop_event.wait()), asyncio.ensure_future(ended.wait())]
                await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
            if any(not f.done() for f in inflight):
                await asyncio.wait(inflight, timeout=5)
        finally:
            self.stop_event.set()
            await queue.put(None)
            await pacer
            describer.cancel()
            controller.cancel()
            self._say_goodbye()
            executor.shutdown(wait=False)
            for s in self._socks.values():
                loop.remove_reader(s.fileno())
                s.close()
            self.stats.tos_changes = sum(t.changes for t in self._tos.values())
            self.source.close()
        return self.stats

    async def _describe_after_first(self) -> None:
        try:
            await asyncio.wait_for(self.stop_event.wait(), self.cfg.description_interval)
        except asyncio.TimeoutError:
            await self._describe_loop()
