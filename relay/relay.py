"""The relay daemon: one jscc-stream in (from ``jscc-send``), each receiver gets its levels.

Downstream, every media, parity and fragment packet goes unchanged (same SSRC, sequence
numbers, DSCP) to the receivers whose subscription covers its importance level; a parity
packet only to those that get every level it covers (without them its shares repair nothing).
Stream descriptions (PT 97) go to everyone, with ``reference_levels`` set (below).  The
sender's SR and BYE go to everyone too.

Upstream the sender sees one receiver, the relay:

* congestion control: the relay's own receiver reports and per-packet arrival reports of what
  reaches *it*; the receivers' own reports count the levels they did not ask for as lost and
  never go up.  The legs behind the relay are each receiver's: ``--adapt`` fits them by levels.
* reference sync of predicted frames (the video codec): the sender's references follow one
  receiver's receipts, so the relay forwards those of the receiver with the fewest levels only
  (the *reference receiver*) and tells every receiver, in the description, to keep as its
  reference the picture decoded from those levels (``StreamInfo.reference_levels``): everyone
  then holds the picture the sender predicts from, and a receiver with more levels shows a
  better picture without drifting.  When the reference levels change (a join, a leave, a new
  subscription), or another receiver's receipt says it lacks a reference level's payload, the
  relay sends up a "not decoded" receipt, which makes the sender code its next frame intra (at
  most once per ``intra_interval``).  ``reference="most"`` follows the receiver with the most
  levels instead: it gets the better prediction, and receivers with fewer levels drift until
  the intra frame their receipts ask for, one per ``intra_interval`` at most
  (``docs/papers.md`` has both measured).
* NACKs: forwarded, less the payloads of levels the receiver did not subscribe to; the resend
  reaches every receiver of that level.
* RRTR: answered by the relay (receivers learn their round trip to it).  Other feedback
  (statistics, receivers' arrival reports) stops here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass, field

from jscc_stream.proto.description import parse_description, with_reference_levels
from jscc_stream.proto.packet import DescriptionPacket, ParityPacket, PayloadPacket, WireError, parse_datagram
from jscc_stream.proto.receipts import pack_bitmap, unpack_bitmap
from jscc_stream.proto.rtcp import ReceptionStats, build_dlrr, build_report, compact, parse_rtcp
from jscc_stream.proto.arrivals import ArrivalLog
from jscc_stream.udp import ANCILLARY_SIZE, MAX_DATAGRAM, TosSetter, read_tos

from .frames import FrameLevels
from .subscriptions import Subscriber, SubscriptionTable

__all__ = ["RelayConfig", "RelayStats", "Relay"]

log = logging.getLogger("jscc.relay")


@dataclass
class RelayConfig:
    timeout: float = 1.0  # a receiver silent this long has left (s)
    max_receivers: int = 32
    adapt: bool = False  # cap each receiver's levels by the loss it reports
    report_interval: float = 1.0  # the relay's receiver reports to the sender (s)
    arrival_interval: float = 0.05  # its per-packet arrival reports (s; 0: none)
    intra_interval: float = 1.0  # at most one intra request to the sender this often (s)
    reference: str = "least"  # whose receipts the sender's references follow: least | most levels
    duration: float | None = None


@dataclass
class RelayStats:
    upstream_packets: int = 0
    upstream_bytes: int = 0
    upstream_invalid: int = 0  # datagrams from the sender side that are not jscc-stream packets
    descriptions: int = 0
    forwarded_packets: int = 0
    forwarded_bytes: int = 0
    filtered_packets: int = 0  # (packet, receiver) pairs not sent: a level it did not ask for
    downstream_invalid: int = 0  # datagrams from receivers that are not RTCP
    malformed_feedback: int = 0  # RTCP or Feedback that did not parse
    unknown_feedback: int = 0  # feedback without a subscription from an address that never joined
    receipts_forwarded: int = 0
    receipts_kept: int = 0  # other receivers' receipts (checked, not forwarded)
    nacks_forwarded: int = 0
    nack_payloads_dropped: int = 0  # asked for a level the receiver did not subscribe to
    intra_requests: int = 0
    reports_sent: int = 0
    arrival_reports: int = 0
    send_errors: int = 0
    departed: list[dict] = field(default_factory=list)  # receivers that left, with their counts


class Relay:
    def __init__(self, upstream: socket.socket, downstream: socket.socket, cfg: RelayConfig) -> None:
        self.up, self.down, self.cfg = upstream, downstream, cfg
        self.table = SubscriptionTable(timeout=cfg.timeout, max_receivers=cfg.max_receivers, adapt=cfg.adapt)
        self.stats = RelayStats()
        self.frames = FrameLevels()
        self.ssrc = int.from_bytes(os.urandom(4), "big")
        self.stop_event = asyncio.Event()
        self.sender: tuple | None = None  # where the stream comes from (and its RTCP goes)
        self.stream_ssrc: int | None = None
        self._rx: ReceptionStats | None = None
        self._arrivals = ArrivalLog()
        self._description: bytes | None = None  # the sender's last PT 97 datagram
        self._ref: tuple[tuple | None, int] = (None, 0)  # (reference receiver, reference levels)
        self._last_intra = -1e9
        self._tos = TosSetter(downstream, current=0)

    # -- from the sender -------------------------------------------------------------------
    def _drain(self, sock: socket.socket, handle) -> None:
        now = time.monotonic()
        for _ in range(256):
            try:
                data, anc, _, addr = sock.recvmsg(MAX_DATAGRAM, ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error queued on the socket
                log.debug("recvmsg: %s", exc)
                return
            handle(data, (read_tos(anc) or 0) & 0xFC, addr, now)

    def _from_sender(self, data: bytes, tos: int, addr: tuple, now: float) -> None:
        if len(data) >= 2 and 192 <= data[1] <= 223:
            if addr == self.sender:
                self._sender_rtcp(data, now)
            else:
                self.stats.upstream_invalid += 1
            return
        try:
            pkt = parse_datagram(data)
        except WireError:
            self.stats.upstream_invalid += 1
            return
        if pkt.ssrc != self.stream_ssrc:
            self.stream_ssrc, self._rx, self._arrivals = pkt.ssrc, ReceptionStats(pkt.ssrc), ArrivalLog()
        self.sender = addr
        self.stats.upstream_packets += 1
        self.stats.upstream_bytes += len(data)
        self._rx.update(pkt.seq, pkt.timestamp, now)
        self._arrivals.add(pkt.seq, now)
        if isinstance(pkt, DescriptionPacket):
            self._on_description(data, pkt)
            return
        if isinstance(pkt, PayloadPacket):
            self.frames.record(pkt.header.frame_id, pkt.header.index, pkt.header.count, pkt.header.level)
        self._forward(data, tos, pkt.header.level)

    def _sender_rtcp(self, data: bytes, now: float) -> None:
        """The sender's SR (also for our receiver reports' LSR/DLSR) and BYE go on to every
        receiver; the rest (DLRR) was for us."""
        try:
            msgs = parse_rtcp(data)
        except (ValueError, IndexError):
            self.stats.upstream_invalid += 1
            return
        for sr in msgs.srs:
            if self._rx is not None and sr.ssrc == self.stream_ssrc:
                self._rx.on_sender_report(sr.sender_info.ntp_timestamp, now)
        if msgs.srs or msgs.byes:
            self._forward(data, 0, None)

    def _on_description(self, data: bytes, pkt: DescriptionPacket) -> None:
        try:
            info = parse_description(pkt.body)
        except WireError:
            self.stats.upstream_invalid += 1
            return
        self.stats.descriptions += 1
        self._description = data
        if self.table.stream_levels != info.layout.blocks:
            self.table.set_stream_levels(info.layout.blocks)
            log.info("stream %08x: %d importance levels", pkt.ssrc, info.layout.blocks)
            self._check_reference(time.monotonic())
        self._describe()

    def _describe(self) -> None:
        """The last description, with the reference levels, to every receiver."""
        if self._description is None:
            return
        head = self._description[:12]
        body = with_reference_levels(self._description[12:], self._ref[1])
        self._forward(head + body, 0, None)

    def _forward(self, data: bytes, tos: int, level: int | None) -> None:
        """To every receiver whose subscription covers ``level`` (None: to all)."""
        for sub in list(self.table.receivers.values()):
            if level is not None and level >= self.table.effective(sub):
                self.stats.filtered_packets += 1
                continue
            self._send_down(sub, data, tos)

    def _send_down(self, sub: Subscriber, data: bytes, tos: int) -> None:
        try:
            self._tos.set(tos)
            self.down.sendto(data, sub.addr)
        except OSError as exc:
            self.stats.send_errors += 1
            log.debug("send to %s failed: %s", sub.addr, exc)
            return
        sub.packets += 1
        sub.bytes += len(data)
        self.stats.forwarded_packets += 1
        self.stats.forwarded_bytes += len(data)

    def _send_up(self, data: bytes) -> None:
        if self.sender is None:
            return
        try:
            self.up.sendto(data, self.sender)
        except OSError as exc:
            self.stats.send_errors += 1
            log.debug("RTCP to the sender failed: %s", exc)

    def _feedback_up(self, fb) -> None:
        self._send_up(build_report(self.ssrc, [], fb.SerializeToString()))

    # -- from the receivers ----------------------------------------------------------------
    def _from_receiver(self, data: bytes, tos: int, addr: tuple, now: float) -> None:
        from google.protobuf.message import DecodeError

        from jscc_stream.proto.stream_pb2 import Feedback

        if len(data) < 2 or not 192 <= data[1] <= 223:
            self.stats.downstream_invalid += 1
            return
        try:
            msgs = parse_rtcp(data)
        except (ValueError, IndexError, TypeError):
            self.stats.malformed_feedback += 1
            return
        sub = self.table.heard(addr, now)
        for body in msgs.apps:
            fb = Feedback()
            try:
                fb.ParseFromString(body)
            except (DecodeError, RuntimeError, ValueError):
                self.stats.malformed_feedback += 1
                continue
            if fb.HasField("subscription"):
                sub = self._subscribe(addr, fb.subscription, now) or sub
            if sub is None:
                self.stats.unknown_feedback += 1
                continue
            self._on_feedback(sub, fb, now)
        if sub is not None and msgs.rrtr:
            self._reply(build_dlrr(self.ssrc, [(s, compact(ntp), 0) for s, ntp in msgs.rrtr]), addr)
        if msgs.byes and self.table.bye(addr) is not None:
            log.info("receiver %s:%d said goodbye", *addr[:2])
            self._departed(sub)
        self._check_reference(now)

    def _subscribe(self, addr: tuple, subscription, now: float) -> Subscriber | None:
        known = addr in self.table.receivers
        before = self.table.receivers[addr].levels if known else None
        sub = self.table.subscribe(addr, subscription.levels, subscription.layers, now)
        if sub is None:
            log.debug("subscription from %s:%d refused (levels %d)", addr[0], addr[1], subscription.levels)
        elif not known:
            log.info("receiver %s:%d joined: levels %s", addr[0], addr[1], sub.levels or "all")
        elif sub.levels != before:
            log.info("receiver %s:%d now subscribes to levels %s", addr[0], addr[1], sub.levels or "all")
        return sub

    def _reply(self, data: bytes, addr: tuple) -> None:
        try:
            self.down.sendto(data, addr)
        except OSError as exc:
            log.debug("RTCP to %s failed: %s", addr, exc)

    def _on_feedback(self, sub: Subscriber, fb, now: float) -> None:
        if fb.receipts:
            self._on_receipts(sub, fb)
        if fb.nacks:
            self._on_nacks(sub, fb)
        if fb.block_loss:
            self.table.on_loss(sub, list(fb.block_loss), now)

    def _on_receipts(self, sub: Subscriber, fb) -> None:
        """The reference receiver's receipts go up; another's only say whether it holds the
        reference: a missing reference-level payload asks the sender for an intra frame."""
        from jscc_stream.proto.stream_pb2 import Feedback

        if self._ref[0] == sub.addr:
            self.stats.receipts_forwarded += len(fb.receipts)
            self._feedback_up(Feedback(ssrc=fb.ssrc, receipts=fb.receipts))
            return
        self.stats.receipts_kept += len(fb.receipts)
        levels = self._ref[1] or self.table.stream_levels or 0
        for r in fb.receipts:
            try:
                used = unpack_bitmap(r.received, r.payloads)
            except ValueError:
                self.stats.malformed_feedback += 1
                continue
            if self.frames.count(r.frame_id) != len(used):
                continue  # a frame the relay no longer knows (or a wrong count): nothing to check
            missing = [i for i, ok in enumerate(used) if not ok and self.frames.level(r.frame_id, i) < levels]
            if not r.decoded or missing:
                self._request_intra(time.monotonic())

    def _on_nacks(self, sub: Subscriber, fb) -> None:
        from jscc_stream.proto.stream_pb2 import Feedback, Nack

        levels, kept = self.table.effective(sub), []
        for nack in fb.nacks:
            want = [i for i in nack.payloads if (lv := self.frames.level(nack.frame_id, i)) is not None and lv < levels]
            self.stats.nack_payloads_dropped += len(nack.payloads) - len(want)
            if want:
                kept.append(Nack(frame_id=nack.frame_id, payloads=want))
        if kept:
            self.stats.nacks_forwarded += len(kept)
            self._feedback_up(Feedback(ssrc=fb.ssrc, nacks=kept))

    def _request_intra(self, now: float) -> None:
        """A "not decoded" receipt for the newest frame: the sender's references start over
        from an intra frame (``ReferenceState.on_receipt``)."""
        from jscc_stream.proto.stream_pb2 import Feedback, FrameReceipt

        fid = self.frames.last
        count = self.frames.count(fid) if fid is not None else None
        if count is None or self.stream_ssrc is None or now - self._last_intra < self.cfg.intra_interval:
            return
        self._last_intra = now
        self.stats.intra_requests += 1
        receipt = FrameReceipt(frame_id=fid, payloads=count, received=pack_bitmap([False] * count), decoded=False)
        self._feedback_up(Feedback(ssrc=self.stream_ssrc, receipts=[receipt]))

    def _check_reference(self, now: float) -> None:
        """A new reference receiver or reference levels: tell the receivers, restart references."""
        most = self.cfg.reference == "most"
        ref = self.table.reference(most)
        current = (ref.addr if ref else None, self.table.reference_levels(most))
        if current == self._ref:
            return
        self._ref = current
        log.info("reference levels %s (receiver %s)", current[1] or "all", current[0])
        self._describe()
        self._last_intra = -1e9
        self._request_intra(now)

    def _departed(self, sub: Subscriber | None) -> None:
        if sub is not None:
            self.stats.departed.append(sub.summary())

    # -- timers ----------------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            for sub in self.table.expire(now):
                log.info("receiver %s:%d timed out", *sub.addr[:2])
                self._departed(sub)
            self._check_reference(now)

    async def _reporter(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.report_interval)
            if self._rx is not None and self.sender is not None:
                self._send_up(build_report(self.ssrc, [self._rx.report(time.monotonic())]))
                self.stats.reports_sent += 1

    async def _arrival_reporter(self) -> None:
        from jscc_stream.proto.stream_pb2 import Feedback

        while True:
            await asyncio.sleep(self.cfg.arrival_interval)
            msg = self._arrivals.take()
            if msg is not None and self.stream_ssrc is not None:
                self._feedback_up(Feedback(ssrc=self.stream_ssrc, arrivals=msg))
                self.stats.arrival_reports += 1

    def summary(self) -> dict:
        d = {k: v for k, v in self.stats.__dict__.items()}
        d["subscriptions"] = dict(self.table.counters.__dict__)
        d["receivers"] = [s.summary() for s in self.table.receivers.values()]
        d["reference_levels"] = self._ref[1]
        return d

    async def run(self) -> RelayStats:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.up.fileno(), self._drain, self.up, self._from_sender)
        loop.add_reader(self.down.fileno(), self._drain, self.down, self._from_receiver)
        tasks = [asyncio.create_task(self._housekeeping()), asyncio.create_task(self._reporter())]
        if self.cfg.arrival_interval > 0:
            tasks.append(asyncio.create_task(self._arrival_reporter()))
        try:
            await asyncio.wait_for(self.stop_event.wait(), self.cfg.duration)
        except asyncio.TimeoutError:
            pass
        finally:
            loop.remove_reader(self.up.fileno())
            loop.remove_reader(self.down.fileno())
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.stats
