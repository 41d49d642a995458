"""The receive loop: datagrams (with their DSCP) -> reassembly -> decode at the playout deadline.

Network I/O stays on the event loop (a raw non-blocking socket read with ``recvmsg`` so the
TOS/traffic-class byte comes along as ancillary data).  Frames are decoded on
``decode_workers`` threads in parallel (frame-level parallelism: with one torch thread each,
two workers use two idle cores without OpenMP barriers, which stall badly on a shared machine;
default one, since on a loaded machine parallel frames only add latency) and shown in frame
order by one output thread.  If decoding falls behind, the oldest waiting frames
are skipped (counted) instead of building latency.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from jscc_stream.proto.description import StreamInfo
from jscc_stream.proto.reassembly import FrameSlot, Reassembler
from jscc_stream.metrics import percentile
from jscc_stream.proto.arrivals import ArrivalLog
from jscc_stream.proto.protection import NackPolicy
from jscc_stream.proto.receipts import pack_bitmap
from jscc_stream.proto.references import Receipt, ReferenceStore
from jscc_stream.proto.rtcp import ReceptionStats, build_bye, build_report, compact, ntp_now, parse_rtcp, rtt_from
from jscc_stream.udp import ANCILLARY_SIZE, MAX_DATAGRAM, parse_hostport, read_tos, resolve, udp_socket

from .outputs import FrameRecord, Outputs

__all__ = ["ReceiverConfig", "ReceiverStats", "Receiver", "open_listen_socket", "pending_bound"]

log = logging.getLogger("jscc.recv")

CodecProvider = Callable[[StreamInfo], object | None]
BATCH_LIMIT = 8  # frames released at once that all go to the decoder (see Receiver._enqueue)
ASK_INTERVAL = 0.2  # s between requests for a stream description (media without one)


def pending_bound(max_size: tuple[int, int] | None, latency: float, reorder_grace: float) -> int | None:
    """Bytes pending frames may hold: one byte per pixel of the largest frame a description may
    announce (16 times the default rate; 8 times what the fixed-rate codec's wire and mask
    take), for every frame of a 60 fps stream inside the playout window, and at least 8."""
    if max_size is None:
        return None
    frames = max(8, math.ceil(60 * (latency + reorder_grace)) + 2)
    return frames * max_size[0] * max_size[1]


def open_listen_socket(spec: str) -> socket.socket:
    """``HOST:PORT`` / ``[V6]:PORT`` -> non-blocking UDP socket that reports each datagram's TOS."""
    try:
        family, addr = resolve(*parse_hostport(spec))
    except ValueError as exc:
        raise ValueError(f"--listen must be HOST:PORT or [IPv6]:PORT: {exc}") from None
    try:
        return udp_socket(family, addr, rcvbuf=4 << 20, recv_tos=True)
    except OSError as exc:
        raise ValueError(f"cannot listen on {spec}: {exc.strerror}") from None


@dataclass
class ReceiverConfig:
    latency: float = 0.05  # playout deadline after a frame's first packet (s)
    reorder_grace: float = 0.01  # wait after a frame's last (marker) packet for reordered ones (s)
    gap: float | None = None  # release an entropy-coded frame after this silence (s; proto/reassembly.py)
    frames: int | None = None
    duration: float | None = None
    report_interval: float = 1.0
    max_decode_queue: int = 2  # frame intervals a frame may wait for the decoder before it is skipped
    decode_workers: int = 1  # frames decoded in parallel (each on its own thread), shown in order
    arrival_interval: float = 0.05  # per-packet arrival reports for congestion control (s; 0: none)
    nack: bool = True  # ask for missing protected payloads while the round trip fits the deadline
    max_size: tuple[int, int] | None = (1920, 1080)  # largest frame a stream description may announce
    levels: int = 0  # subscription through a relay: importance levels 0..levels-1 (0: all)
    join: tuple | None = None  # a relay's address (sockaddr) to subscribe at, every join_interval
    join_interval: float = 0.5  # s; a relay drops a receiver silent for longer than its timeout
    max_pending_bytes: int | None = None  # bound on pending frames' memory (None: pending_bound of the above)
    ssrc: int | None = None  # the only stream accepted (None: the first one described)
    handover: float = 0.3  # silence of the locked stream (s) after which another may take over


@dataclass
class ReceiverStats:
    frames_out: int = 0
    frames_decoded: int = 0
    frames_undecodable: int = 0  # released but no codec for their stream (or no reference for a predicted frame)
    frames_predicted: int = 0  # decoded from a reference frame
    frames_no_reference: int = 0  # predicted from a frame this receiver does not hold
    frames_skipped: int = 0  # decoder behind: dropped before decoding
    reports_sent: int = 0
    arrival_reports: int = 0
    nacks_sent: int = 0  # NACK messages
    payloads_nacked: int = 0
    byes: int = 0  # senders that said goodbye
    rtt_ms: float | None = None  # from XR RRTR/DLRR with the last sender heard
    latencies_ms: list[float] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)

    def summary(self, counters) -> dict:
        lat = self.latencies_ms
        d = {k: v for k, v in self.__dict__.items() if k not in ("latencies_ms", "decode_ms")}
        d.update(latency_p50_ms=percentile(lat, 50), latency_p95_ms=percentile(lat, 95),
                 latency_p99_ms=percentile(lat, 99),
                 decode_ms_median=statistics.median(self.decode_ms) if self.decode_ms else None)
        d["reassembly"] = dict(counters.__dict__)
        return d


class Receiver:
    def __init__(self, sock: socket.socket, codec_provider: CodecProvider, outputs: Outputs,
                 cfg: ReceiverConfig, on_frame: Callable[[FrameRecord, np.ndarray | None], None] | None = None) -> None:
        self.sock = sock
        self.codec_provider = codec_provider
        self.outputs = outputs
        self.cfg = cfg
        self.on_frame = on_frame
        max_bytes = cfg.max_pending_bytes or pending_bound(cfg.max_size, cfg.latency, cfg.reorder_grace)
        self.reasm = Reassembler(latency=cfg.latency, reorder_grace=cfg.reorder_grace, gap=cfg.gap,
                                 max_size=cfg.max_size, ssrc=cfg.ssrc, handover=cfg.handover, max_bytes=max_bytes,
                                 levels=cfg.levels)
        self.stats = ReceiverStats()
        self.stop_event = asyncio.Event()
        self.ssrc = int.from_bytes(os.urandom(4), "big")
        self._rx: dict[int, ReceptionStats] = {}
        self._addr: dict[int, tuple] = {}
        self._queue: asyncio.Queue[FrameSlot] = asyncio.Queue()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._lat_window: list[float] = []
        self._block_missing = None
        self._reported = 0
        self.refs = ReferenceStore()  # decoded pictures predicted frames refer to
        self._refs_session = 0  # the reassembly session whose pictures refs holds (decode thread)
        self._session = 0  # the reassembly session the per-stream state below belongs to
        self._asked = -math.inf  # when a stream description was last asked for
        self._kinds: dict[int, dict] = {}  # frame id -> its type, for the record (decode -> output thread)
        self._arrivals: dict[int, ArrivalLog] = {}  # ssrc -> arrivals not yet reported
        self._rtt: dict[tuple, float] = {}  # sender address -> round trip (s)
        self.nack_policy = NackPolicy()

    # -- network -------------------------------------------------------------------------
    def _on_readable(self) -> None:
        loop = asyncio.get_running_loop()
        released: list[FrameSlot] = []
        for _ in range(256):
            try:
                data, anc, _, addr = self.sock.recvmsg(MAX_DATAGRAM, ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP errors surfacing on the socket
                log.debug("recvmsg: %s", exc)
                break
            now = loop.time()
            if len(data) >= 2 and 192 <= data[1] <= 223:  # RTCP on the media port (RFC 5761)
                self._on_rtcp(data, addr, now)
                continue
            tos = read_tos(anc)
            undescribed = self.reasm.counters.no_description
            released += self.reasm.push(data, now, None if tos is None else tos >> 2)
            if self.reasm.session != self._session:
                self._on_session()
            rtp = self.reasm.last_rtp
            if rtp is not None:
                self._on_rtp(*rtp, addr, now)
            elif self.reasm.counters.no_description != undescribed:
                self._ask_description(addr, now)
        if released:
            self._enqueue(released)
        self._ask_again(loop.time())
        self._arm_timer()

    def _on_session(self) -> None:
        """A new stream took over (or the locked one's sender restarted): its reception
        statistics, arrivals and NACKs start afresh (the reference pictures are reset by the
        decode worker, in frame order)."""
        self._session = self.reasm.session
        log.info("receiving stream %08x (session %d)", self.reasm.locked, self._session)
        self._rx.clear()
        self._arrivals.clear()
        self._addr.clear()
        self.nack_policy = NackPolicy()

    def _ask_description(self, addr, now: float) -> None:
        """Media without its description (this receiver just started, or the description was
        lost): an empty receiver report tells the sender a new receiver listens, and it
        describes its stream at once instead of at its next interval.  At most one each
        ``ASK_INTERVAL``, and smaller than the datagram that caused it."""
        if now - self._asked < ASK_INTERVAL:
            return
        self._asked = now
        try:
            self.sock.sendto(build_report(self.ssrc, []), addr)
        except OSError as exc:
            log.debug("asking %s for a description failed: %s", addr, exc)

    def _on_rtp(self, ssrc: int, seq: int, ts: int, addr, now: float) -> None:
        rx = self._rx.get(ssrc)
        if rx is None:
            if len(self._rx) >= 8:
                old = next(iter(self._rx))
                self._rx.pop(old)
                self._arrivals.pop(old, None)
            rx = self._rx[ssrc] = ReceptionStats(ssrc)
            self._arrivals[ssrc] = ArrivalLog()
            # an early report (with its RRTR) so that both ends know the round trip within a
            # fraction of a second of a new stream, not after the first report interval
            asyncio.get_running_loop().call_later(0.1, self._send_reports)
        rx.update(seq, ts, now)
        self._arrivals[ssrc].add(seq, now)
        self._addr[ssrc] = addr
        if len(self._addr) > 8:
            self._addr.pop(next(iter(self._addr)))

    def _on_rtcp(self, data: bytes, addr, now: float) -> None:
        """A sender's RTCP: its SR (for LSR/DLSR), the DLRR answering our RRTR (round trip), BYE."""
        try:
            msgs = parse_rtcp(data)
        except (ValueError, IndexError):
            self.reasm.counters.invalid += 1
            return
        for sr in msgs.srs:
            if sr.ssrc in self._rx:
                self._rx[sr.ssrc].on_sender_report(sr.sender_info.ntp_timestamp, now)
        for ssrc, lrr, dlrr in msgs.dlrr:
            known = ssrc == self.ssrc and addr in self._addr.values()  # only from the stream's source
            rtt = rtt_from(compact(ntp_now()), lrr, dlrr) if known else None
            if rtt is not None:
                self._rtt[addr] = rtt
                self.stats.rtt_ms = round(rtt * 1000, 2)
        for ssrc in msgs.byes:
            self.stats.byes += 1
            log.info("sender %08x (%s) said goodbye", ssrc, addr[0])

    def _ask_again(self, now: float) -> None:
        """NACK the protected payloads still missing whose answer can arrive before the frame's
        playout deadline (:class:`NackPolicy`), and hold those frames for it."""
        if not self.cfg.nack:
            return
        from jscc_stream.proto.stream_pb2 import Feedback, Nack

        for (ssrc, fid), slot in list(self.reasm.slots.items()):
            if slot.payloads is None or not slot.protected or slot.complete:
                continue
            rtt = self._rtt.get(self._addr.get(ssrc))
            indices = self.nack_policy.due((ssrc, fid), slot.protected, slot.received[:, 0], bool(slot.parity), now,
                                           slot.first_arrival + self.reasm.latency, rtt)
            if not indices:
                continue
            if self._send_feedback(Feedback(ssrc=ssrc, nacks=[Nack(frame_id=fid, payloads=indices)])):
                self.stats.nacks_sent += 1
                self.stats.payloads_nacked += len(indices)
                self.reasm.hold(ssrc, fid, now + 1.5 * rtt + 0.005)

    def _arm_timer(self) -> None:
        due = self.reasm.next_deadline()
        if due == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = None if due is None else asyncio.get_running_loop().call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        released = self.reasm.pop_due(asyncio.get_running_loop().time())
        if released:
            self._enqueue(released)
        self._arm_timer()

    def _enqueue(self, slots: list[FrameSlot]) -> None:
        """Hand released frames to the decoder.  A frame still waiting for it after
        ``max_decode_queue`` frame intervals is skipped: the decoder is behind, and waiting
        would only add latency.  Frames released together (a frame held for a retransmission
        lets the newer ones go with it) all wait their turn, up to ``BATCH_LIMIT`` of them."""
        now = asyncio.get_running_loop().time()
        for old in slots[:-BATCH_LIMIT]:
            self._skip(old)
        waiting = self._queue._queue  # asyncio.Queue's deque, oldest first (peeked, never changed here)
        while waiting and (len(waiting) + len(slots) > BATCH_LIMIT or
                           now - waiting[0].released_at > self.cfg.max_decode_queue / max(1.0, waiting[0].info.fps)):
            self._skip(self._queue.get_nowait())
        for slot in slots[-BATCH_LIMIT:]:
            self.nack_policy.forget((slot.ssrc, slot.frame_id))
            self._queue.put_nowait(slot)

    def _skip(self, slot: FrameSlot) -> None:
        self.nack_policy.forget((slot.ssrc, slot.frame_id))
        self.stats.frames_skipped += 1
        log.debug("decoder behind: skipping frame %d", slot.frame_id)

    # -- decode --------------------------------------------------------------------------
    def _decode(self, slot: FrameSlot) -> tuple[np.ndarray | None, float]:
        """Runs on a decode worker: whatever arrived -> frame (None: no codec for the stream)."""
        codec = self.codec_provider(slot.info)
        if codec is None:
            return None, 0.0
        t = time.perf_counter()
        if getattr(codec, "predicted_frames", False):
            frame = self._decode_predicted(codec, slot)
        elif slot.payloads is not None:
            frame = codec.decode(slot.payload_list(), slot.info.layout.width, slot.info.layout.height)
        else:
            frame = codec.decode(slot.wire, slot.received, slot.info.layout.width, slot.info.layout.height)
        return frame, (time.perf_counter() - t) * 1000

    def _decode_predicted(self, codec, slot: FrameSlot) -> np.ndarray | None:
        """A video codec's frame from its reference (:meth:`ReferenceStore.decode`); the receipt
        goes back to the sender.  Frames must decode in order (one decode worker) for a
        reference to be there when needed; a new session's first frame drops the old one's
        pictures (a restarted sender numbers its frames from 0 again)."""
        if slot.session != self._refs_session:
            self.refs.clear()
            self._refs_session = slot.session
        frame, receipt, kind = self.refs.decode(codec, slot.frame_id, slot.payload_list(),
                                                slot.info.layout.width, slot.info.layout.height,
                                                slot.info.reference_levels)
        self._kinds[slot.frame_id] = ({"frame_type": "P", "ref_back": kind.ref_back} if kind.predicted
                                      else {"frame_type": "I"})
        if kind.predicted:
            if frame is None:
                self.stats.frames_no_reference += 1
            else:
                self.stats.frames_predicted += 1
        self._receipt(slot.ssrc, receipt)
        return frame

    def _receipt(self, ssrc: int, receipt: Receipt) -> None:
        """Tell the sender what this frame's decode used (from a decode worker: sent on the loop)."""
        from jscc_stream.proto.stream_pb2 import Feedback, FrameReceipt

        msg = FrameReceipt(frame_id=receipt.frame_id, payloads=len(receipt.received),
                           received=pack_bitmap(receipt.received), decoded=receipt.decoded, crc32=receipt.crc32)
        self._loop.call_soon_threadsafe(self._send_feedback, Feedback(ssrc=ssrc, receipts=[msg]))

    def _send_feedback(self, fb) -> bool:
        """A Feedback message on its own (behind an empty RR) to the sender of ``fb.ssrc``."""
        return self._send_rtcp(fb.ssrc, build_report(self.ssrc, [], fb.SerializeToString()))

    def _send_rtcp(self, ssrc: int, data: bytes) -> bool:
        """An RTCP packet to the source of stream ``ssrc``; whether it went out."""
        addr = self._addr.get(ssrc)
        if addr is None:
            return False
        try:
            self.sock.sendto(data, addr)
        except OSError as exc:
            log.debug("RTCP to %s failed: %s", addr, exc)
            return False
        return True

    def _send_to(self, addr, data: bytes) -> None:
        try:
            self.sock.sendto(data, addr)
        except OSError as exc:
            log.debug("RTCP to %s failed: %s", addr, exc)

    def _present(self, slot: FrameSlot, frame: np.ndarray | None, decode_ms: float,
                 units: tuple[np.ndarray, np.ndarray]) -> FrameRecord:
        """Runs on the output thread, in frame order: display/record/save, then the stats line."""
        info = slot.info
        expected, got = units  # slot.level_units(), counted once per frame by the caller
        rec = FrameRecord(
            frame_id=slot.frame_id, ssrc=slot.ssrc, reason=slot.reason, decoded=frame is not None,
            # a level is received when everything the sender sent of it arrived; a level it sent
            # nothing of (rate control left it out: a lower rate) does not count
            blocks_expected=info.layout.blocks, blocks_received=int(((got == expected) & (expected > 0)).sum()),
            blocks_partial=int(((got > 0) & (got < expected)).sum()), bytes_expected=int(expected.sum()),
            bytes_received=slot.bytes_received, missing=[list(m) for m in slot.missing_ranges()],
            dscp=list(slot.dscp), wait_ms=round((slot.released_at - slot.first_arrival) * 1000, 2),
            decode_ms=round(decode_ms, 2), capture_to_display_ms=None, extra=self._kinds.pop(slot.frame_id, {}))
        self.outputs.show(frame, rec)
        rec.display_unix = time.time()
        if info.clock_epoch_unix_us:
            rec.capture_to_display_ms = round((rec.display_unix - slot.capture_unix()) * 1000, 2)
        self.outputs.store(frame, rec)
        self.outputs.log(rec)
        return rec

    async def _decoder(self, executor: ThreadPoolExecutor, order: asyncio.Queue) -> None:
        """Hands frames to the decode workers, never more than there are workers in flight, so
        frames wait in the (size-bounded, skip-oldest) release queue instead."""
        loop = asyncio.get_running_loop()
        free = asyncio.Semaphore(self.cfg.decode_workers)
        while True:
            await free.acquire()
            slot = await self._queue.get()
            fut = loop.run_in_executor(executor, self._decode, slot)
            fut.add_done_callback(lambda _: free.release())
            order.put_nowait((slot, fut))

    async def _presenter(self, order: asyncio.Queue, out_executor: ThreadPoolExecutor, done: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while True:
            slot, fut = await order.get()
            try:
                frame, decode_ms = await fut
            except Exception as exc:  # a codec failure must not stop the stream
                log.error("decoding frame %d failed: %s", slot.frame_id, exc)
                frame, decode_ms = None, 0.0
            units = slot.level_units()
            rec = await loop.run_in_executor(out_executor, self._present, slot, frame, decode_ms, units)
            self.stats.frames_out += 1
            if rec.decoded:
                self.stats.frames_decoded += 1
                self.stats.decode_ms.append(rec.decode_ms)
            else:
                self.stats.frames_undecodable += 1
            if rec.capture_to_display_ms is not None:
                self.stats.latencies_ms.append(rec.capture_to_display_ms)
                self._lat_window.append(rec.capture_to_display_ms)
            if self._block_missing is None or len(self._block_missing) != rec.blocks_expected:
                self._block_missing = np.zeros((rec.blocks_expected, 2))
            expected, got = units
            self._block_missing[:, 0] += expected - got
            self._block_missing[:, 1] += expected
            if self.on_frame is not None:
                self.on_frame(rec, frame)
            if self.cfg.frames is not None and self.stats.frames_out >= self.cfg.frames:
                done.set()

    # -- feedback ------------------------------------------------------------------------
    def _send_reports(self) -> None:
        from jscc_stream.proto.stream_pb2 import Feedback

        lat = self._lat_window
        self._lat_window = []
        for ssrc, rx in list(self._rx.items()):
            if ssrc not in self._addr or rx.received == 0:
                continue
            fb = Feedback(ssrc=ssrc, frames_decoded=self.stats.frames_decoded,
                          frames_incomplete=self.reasm.counters.frames_released - self.reasm.counters.frames_complete,
                          packets_late=self.reasm.counters.late, packets_invalid=self.reasm.counters.invalid,
                          frames_skipped=self.stats.frames_skipped)
            if lat:
                fb.latency_p50_ms = percentile(lat, 50)
                fb.latency_p95_ms = percentile(lat, 95)
            if self.cfg.join is not None or self.cfg.levels:
                fb.subscription.levels = self.cfg.levels
            if self._block_missing is not None:
                fb.block_loss.extend((self._block_missing[:, 0] / np.maximum(1, self._block_missing[:, 1])).tolist())
            report = build_report(self.ssrc, [rx.report(self._loop.time())], fb.SerializeToString(), ntp_now())
            if self._send_rtcp(ssrc, report):
                self.stats.reports_sent += 1
        self._block_missing = None

    async def _arrival_reporter(self) -> None:
        """Every ``arrival_interval``: each stream's packet arrivals since the last report."""
        from jscc_stream.proto.stream_pb2 import Feedback

        while True:
            await asyncio.sleep(self.cfg.arrival_interval)
            for ssrc, arrivals in list(self._arrivals.items()):
                msg = arrivals.take()
                if msg is not None and self._send_feedback(Feedback(ssrc=ssrc, arrivals=msg)):
                    self.stats.arrival_reports += 1

    async def _subscriber(self) -> None:
        """Joins a relay and stays joined: a Feedback with this receiver's subscription every
        ``join_interval`` (the relay learns the address from it; silence makes it forget)."""
        from jscc_stream.proto.stream_pb2 import Feedback, Subscription

        while True:
            fb = Feedback(ssrc=next(reversed(self._rx), 0), subscription=Subscription(levels=self.cfg.levels))
            self._send_to(self.cfg.join, build_report(self.ssrc, [], fb.SerializeToString()))
            await asyncio.sleep(self.cfg.join_interval)

    async def _reporter(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.report_interval)
            self._send_reports()

    async def run(self) -> ReceiverStats:
        loop = self._loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=self.cfg.decode_workers, thread_name_prefix="jscc-decode")
        out_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jscc-output")
        done = asyncio.Event()
        order: asyncio.Queue = asyncio.Queue()
        loop.add_reader(self.sock.fileno(), self._on_readable)
        tasks = [asyncio.create_task(self._decoder(executor, order)),
                 asyncio.create_task(self._presenter(order, out_executor, done)),
                 asyncio.create_task(self._reporter())]
        if self.cfg.arrival_interval > 0:
            tasks.append(asyncio.create_task(self._arrival_reporter()))
        if self.cfg.join is not None:
            tasks.append(asyncio.create_task(self._subscriber()))
        waiters = [asyncio.create_task(self.stop_event.wait()), asyncio.create_task(done.wait())]
        try:
            await asyncio.wait(waiters, timeout=self.cfg.duration, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for ssrc in list(self._addr):
                self._send_rtcp(ssrc, build_bye(self.ssrc))
            if self.cfg.join is not None and self.cfg.join not in self._addr.values():
                self._send_to(self.cfg.join, build_bye(self.ssrc))
            loop.remove_reader(self.sock.fileno())
            if self._timer is not None:
                self._timer.cancel()
            for t in tasks + waiters:
                t.cancel()
            await asyncio.gather(*tasks, *waiters, return_exceptions=True)
            executor.shutdown(wait=True)
            out_executor.shutdown(wait=True)
            self.outputs.close()
            self.stop_event.set()
        return self.stats
