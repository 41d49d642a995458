"""Datagrams -> per-frame (K, L) wire arrays + received masks (fixed-rate codecs) or lists of
whole payloads (entropy-coded codecs), released at the playout deadline.

Pure and clock-free: every call takes ``now`` (seconds, any monotonic clock), so the playout
logic is tested without sleeping.  A frame is released when the first of these happens:

* all its bytes arrived (``reason="complete"``);
* a newer frame of the same stream completed: older frames go out first, with what they have,
  so frames leave in order without waiting (``"superseded"``);
* its deadline passed: ``first packet arrival + latency`` (``"deadline"``), with the optional
  ``gap`` rule for entropy-coded frames at most ``last arrival + gap``, shortened to
  ``now + reorder grace`` once the frame's last (marker) packet arrived, or a newer frame's
  packet at least as unimportant as every block still missing (the sender sends frames in
  order and blocks by importance; a priority network may hold back only less important ones);
* too many frames are pending, or their bytes would pass ``max_bytes`` (memory bound: the
  frame with the earliest deadline goes first, ``"evicted"``).

One stream at a time: the reassembler locks onto the SSRC it is given, or else the first one
that sends a valid description; packets of any other SSRC are counted (``foreign``) and
dropped, so injected streams can never evict it.  A new stream may take over only once the
locked one has been silent for ``handover`` seconds: another SSRC (a restarted sender), or the
same SSRC with a new clock epoch in its description or, after the silence, frame ids that jump
back (a sender restarted with the same SSRC).  Each take-over starts a new ``session``, which
the receiver uses to reset what it keeps per stream (the video codec's reference pictures).

A frame held for a retransmission (:meth:`Reassembler.hold`, after a NACK) is released early by
none of the shortening rules before its hold ends (never past its deadline), and newer frames
wait behind it.  Parity packets (``proto.protection``) are stored with their frame; as soon as
enough shares arrived, the missing protected payloads are recovered into the frame.

Packets for a frame already released are counted late and dropped.  Garbage is counted,
never raised.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .description import StreamInfo, parse_description
from .fec import FecError, recover
from .packet import CLOCK_RATE, DescriptionPacket, MediaPacket, ParityPacket, PayloadPacket, WireError, parse_datagram
from .seq import frame_diff

__all__ = ["ReassemblyCounters", "FrameSlot", "Reassembler", "playout_count"]


def playout_count(ready: Sequence[bool], arrived: Sequence[bool] | None = None) -> int:
    """The playout rule: how many of the oldest pending frames leave now.

    ``ready`` holds, oldest frame first, whether each pending frame may be played (complete, or
    past its deadline).  Frames leave in order, so a ready frame takes every older one out with
    it.  With ``arrived`` (a receiver that waits for retransmissions) an older frame of which
    something arrived waits for its own turn; only frames with nothing are passed over.
    ``jscc-recv`` and every arm of ``jscc-bench compare`` release frames by this one function.
    """
    last = max((i for i, r in enumerate(ready) if r), default=-1)
    if arrived is None:
        return last + 1
    n = 0
    while n <= last and (ready[n] or not arrived[n]):
        n += 1
    return n


@dataclass
class ReassemblyCounters:
    datagrams: int = 0
    bytes: int = 0
    invalid: int = 0  # not a jscc-stream packet, or inconsistent with its description
    duplicates: int = 0
    late: int = 0  # arrived after its frame was released
    no_description: int = 0  # media packets before their stream description
    undecodable_frames: int = 0  # distinct frames seen without a description
    descriptions: int = 0
    ssrc_changes: int = 0  # another SSRC took over (after the locked one fell silent)
    restarts: int = 0  # the locked SSRC's sender restarted (new clock epoch, or frame ids back)
    foreign: int = 0  # packets of an SSRC other than the locked one (or of a restart too soon): dropped
    frames_evicted: int = 0  # released early to bound memory (frame count or bytes)
    memory_drops: int = 0  # packets dropped: their frame alone would pass the byte bound
    frames_released: int = 0
    frames_complete: int = 0
    parity: int = 0  # parity packets stored
    parity_unused: int = 0  # parity packets for a frame already released (complete, or too late)
    recovered: int = 0  # payloads recovered from parity
    frames_recovered: int = 0  # frames with at least one recovered payload


def _level(info: StreamInfo, block: int) -> int:
    """Importance level of ``block`` (0 = most important); a description without levels ranks
    blocks by index, as the sender sends them."""
    return info.block_levels[block] if block < len(info.block_levels) else block


@dataclass
class FrameSlot:
    """One frame being collected (and, once released, what arrived of it)."""

    info: StreamInfo
    frame_id: int
    timestamp: int
    first_arrival: float
    deadline: float
    wire: np.ndarray
    received: np.ndarray
    dscp: list[int]  # DSCP seen per block (-1: none seen / not reported)
    bytes_received: int = 0  # payloads received, for an entropy-coded stream
    packets: int = 0
    reason: str = ""
    released_at: float = 0.0
    #: entropy-coded stream: payloads by index (``received`` is then ``(count, 1)``, one unit each)
    payloads: dict[int, bytes] | None = None
    payload_levels: dict[int, int] = field(default_factory=dict)
    protected: int = 0  # leading payloads the sender protects (NACK, parity)
    parity: dict[int, bytes] = field(default_factory=dict)  # share index -> symbol
    parity_code: tuple[int, int, tuple[int, ...]] | None = None  # (k, n, levels of the k payloads)
    recovered: int = 0  # payloads recovered from parity
    hold_until: float = 0.0  # waiting for a retransmission until then (see Reassembler.hold)
    session: int = 0  # the reassembler's session it belongs to (a new one after each take-over)
    nbytes: int = 0  # memory it holds: wire and mask arrays, payloads, parity


    def payload_list(self) -> list[bytes | None]:
        """All payloads in frame order, ``None`` for each that did not arrive."""
        return [self.payloads.get(i) if self.payloads else None for i in range(self.received.shape[0])]

    @property
    def ssrc(self) -> int:
        return self.info.ssrc

    @property
    def complete(self) -> bool:
        return self.bytes_received == self.received.size

    def capture_unix(self, ts_unwrapped: int | None = None) -> float:
        """Wall-clock capture time (s) from the description's clock epoch and the RTP timestamp."""
        ts = self.timestamp if ts_unwrapped is None else ts_unwrapped
        return self.info.clock_epoch_unix_us / 1e6 + ts / CLOCK_RATE

    def max_missing_level(self, below: int = 0) -> int:
        """Least important level (largest number) among blocks not yet complete; -1 if none.
        ``below`` > 0 (a subscription to fewer levels): only levels below it count as missing."""
        if self.payloads is not None:
            return self._max_missing_payload_level(below)
        levels = [_level(self.info, b) for b in range(self.received.shape[0]) if not self.received[b].all()]
        missing = [lv for lv in levels if below <= 0 or lv < below]
        return max(missing, default=-1)

    def payload_levels_filled(self) -> np.ndarray:
        """Importance level of every payload of the frame: the one it carries when it arrived;
        for a missing one, the level of the next payload that arrived (payloads go out in level
        order, so it is at most that), the least important level if none did."""
        levels = np.full(self.received.shape[0], self.info.layout.blocks - 1)
        for i in range(len(levels) - 1, -1, -1):
            if i in self.payload_levels:
                levels[i] = self.payload_levels[i]
            elif i + 1 < len(levels):
                levels[i] = levels[i + 1]
        return levels

    def level_units(self) -> tuple[np.ndarray, np.ndarray]:
        """Per block (fixed-rate) or importance level (entropy-coded): units expected and
        received, bytes or payloads (a missing payload at its :meth:`payload_levels_filled`)."""
        if self.payloads is None:
            return np.full(self.received.shape[0], self.received.shape[1]), self.received.sum(axis=1)
        levels, n = self.payload_levels_filled(), self.info.layout.blocks
        return (np.bincount(levels, minlength=n)[:n],
                np.bincount(levels[self.received[:, 0]], minlength=n)[:n])

    def _max_missing_payload_level(self, below: int = 0) -> int:
        levels = self.payload_levels_filled()[~self.received[:, 0]]
        if below > 0:
            levels = levels[levels < below]
        return int(levels.max()) if levels.size else -1

    def missing_ranges(self) -> list[tuple[int, int, int]]:
        """``(block, offset, length)`` runs of bytes that did not arrive."""
        out: list[tuple[int, int, int]] = []
        for b in range(self.received.shape[0]):
            row = self.received[b]
            if row.all():
                continue
            edges = np.flatnonzero(np.diff(np.concatenate(([1], row.view(np.uint8), [1])).astype(np.int8)))
            for start, stop in zip(edges[::2], edges[1::2]):
                out.append((b, int(start), int(stop - start)))
        return out


@dataclass
class _Stream:
    info: StreamInfo
    released: deque = field(default_factory=lambda: deque(maxlen=512))
    released_set: set = field(default_factory=set)
    newest_released: int | None = None
    adopt_description: bool = False  # restarted on frame ids alone: the next description is its own

    def mark_released(self, fid: int) -> None:
        if len(self.released) == self.released.maxlen:
            self.released_set.discard(self.released[0])
        self.released.append(fid)
        self.released_set.add(fid)
        if self.newest_released is None or frame_diff(fid, self.newest_released) > 0:
            self.newest_released = fid


class Reassembler:
    """Collects packets of every stream it hears; see the module docstring for release rules."""

    def __init__(self, latency: float = 0.05, reorder_grace: float = 0.01, max_frames: int = 32,
                 gap: float | None = None, max_size: tuple[int, int] | None = None, ssrc: int | None = None,
                 handover: float = 0.3, max_bytes: int | None = None, levels: int = 0) -> None:
        """``gap``: release an entropy-coded frame once none of its packets arrived for this
        long (its sender sends a frame's packets together: a silence means the rest is lost,
        most often its last, marker packet); None: only the rules above.  ``max_size``: the
        largest frame (width, height, either orientation) a description may announce; a larger
        one is refused (decoding it would cost CPU and memory out of proportion).  ``ssrc``:
        the only stream accepted (None: the first described one, see the module docstring);
        ``handover``: the silence (s) after which another stream may take over.  ``max_bytes``:
        bound on the memory pending frames hold (None: only ``max_frames``).  ``levels`` > 0:
        the receiver subscribed (through a relay) to the levels below it only, so the others
        never come and do not hold a frame back when a newer frame's packet arrives."""
        if latency <= 0:
            raise ValueError("latency must be positive")
        if gap is not None and gap <= 0:
            raise ValueError("gap must be positive")
        if handover < 0 or (max_bytes is not None and max_bytes <= 0):
            raise ValueError("handover must not be negative and max_bytes must be positive")
        self.gap = gap
        self.levels = levels
        self.max_size = max_size
        self.latency = latency
        self.reorder_grace = reorder_grace
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.fixed_ssrc = ssrc
        self.handover = handover
        self.counters = ReassemblyCounters()
        self.streams: dict[int, _Stream] = {}  # the locked stream's (at most one)
        self.slots: dict[tuple[int, int], FrameSlot] = {}
        self._undescribed: OrderedDict[tuple[int, int], None] = OrderedDict()
        self.locked: int | None = ssrc
        self.session = 0
        self.pending_bytes = 0  # sum of the pending slots' nbytes
        self._heard = -math.inf  # when the locked stream was last heard (a packet stored, or its session began)
        self._evicted: list[FrameSlot] = []  # released to make room while handling one packet
        #: (ssrc, seq, timestamp) of the last datagram of the locked stream, for RTCP statistics.
        self.last_rtp: tuple[int, int, int] | None = None

    # -- input ---------------------------------------------------------------------------
    def push(self, data: bytes, now: float, dscp: int | None = None) -> list[FrameSlot]:
        """Take one datagram; returns frames released because of it (in frame order)."""
        self.counters.datagrams += 1
        self.counters.bytes += len(data)
        self.last_rtp = None
        try:
            pkt = parse_datagram(data)
        except WireError:
            self.counters.invalid += 1
            return []
        if isinstance(pkt, DescriptionPacket):
            out = self._on_description(pkt, now)
        elif self.locked is not None and pkt.ssrc != self.locked:
            self.counters.foreign += 1
            return []
        elif isinstance(pkt, PayloadPacket):
            out = self._on_payload(pkt, now, dscp)
        elif isinstance(pkt, ParityPacket):
            out = self._on_parity(pkt, now)
        else:
            out = self._on_media(pkt, now, dscp)
        if pkt.ssrc == self.locked:
            self.last_rtp = (pkt.ssrc, pkt.seq, pkt.timestamp)
        if self._evicted:
            out, self._evicted = self._evicted + out, []
        return out

    def _on_description(self, pkt: DescriptionPacket, now: float) -> list[FrameSlot]:
        try:
            info = parse_description(pkt.body)
        except WireError:
            self.counters.invalid += 1
            return []
        if info.ssrc != pkt.ssrc or not self._size_allowed(info.layout.width, info.layout.height):
            self.counters.invalid += 1
            return []
        stream = self.streams.get(pkt.ssrc)
        if stream is not None and (stream.adopt_description
                                   or stream.info.clock_epoch_unix_us == info.clock_epoch_unix_us):
            stream.info, stream.adopt_description = info, False  # the locked stream's (a new revision, maybe)
        elif self._may_take_over(pkt.ssrc, now):
            self._new_session(pkt.ssrc, info)
            self._heard = now  # (only media keeps a stream alive: a sender restarted with the same
            # description, clock epoch included, is then still seen by its frame ids jumping back)
        else:
            self.counters.foreign += 1
            return []
        self.counters.descriptions += 1
        return []

    def _may_take_over(self, ssrc: int, now: float) -> bool:
        """Whether a new stream (``ssrc``, or the locked SSRC restarted) may replace the locked one."""
        if self.fixed_ssrc is not None and ssrc != self.fixed_ssrc:
            return False
        return not self.streams or now - self._heard >= self.handover

    def _new_session(self, ssrc: int, info: StreamInfo) -> None:
        """Lock onto ``ssrc`` afresh: what was pending of the old stream is dropped."""
        if self.streams:
            if ssrc in self.streams:
                self.counters.restarts += 1
            else:
                self.counters.ssrc_changes += 1
        self.slots.clear()
        self.pending_bytes = 0
        self.streams = {ssrc: _Stream(info)}
        self.locked = ssrc
        self.session += 1

    def _size_allowed(self, width: int, height: int) -> bool:
        if self.max_size is None:
            return True
        w, h = self.max_size
        return width * height <= w * h and max(width, height) <= max(w, h)

    def _described(self, pkt: MediaPacket | PayloadPacket | ParityPacket, entropy_coded: bool) -> _Stream | None:
        """The packet's stream if its description (at the packet's revision) is known."""
        h = pkt.header
        stream = self.streams.get(pkt.ssrc)
        if stream is not None and (stream.info.revision & 0xFF) == h.revision:
            if stream.info.entropy_coded != entropy_coded:
                self.counters.invalid += 1
                return None
            return stream
        self.counters.no_description += 1
        key = (pkt.ssrc, h.frame_id)
        if key not in self._undescribed:
            self._undescribed[key] = None
            self.counters.undecodable_frames += 1
            while len(self._undescribed) > 256:
                self._undescribed.popitem(last=False)
        return None

    def _slot(self, stream: _Stream, pkt: MediaPacket | PayloadPacket | ParityPacket, now: float, units: int,
              unit_bytes: int) -> FrameSlot | None:
        """The frame's slot, made on its first packet; None if the frame was already released
        (a late packet; parity after its frame went out complete is just not needed) or its
        arrays alone would pass the memory bound."""
        fid = pkt.header.frame_id
        slot = self.slots.get((pkt.ssrc, fid))
        if slot is None:
            if (fid in stream.released_set or (stream.newest_released is not None
                                               and frame_diff(fid, stream.newest_released) < 0)) \
                    and not self._jumped_back(stream, now):
                if isinstance(pkt, ParityPacket):
                    self.counters.parity_unused += 1
                else:
                    self.counters.late += 1
                return None
            info = stream.info
            wire, received = np.zeros((units, unit_bytes), np.uint8), np.zeros((units, max(unit_bytes, 1)), bool)
            size = wire.nbytes + received.nbytes
            if not self._reserve(size, None, now):
                return None
            slot = FrameSlot(info, fid, pkt.timestamp, now, now + self.latency, wire, received,
                             [-1] * info.layout.blocks, payloads={} if info.entropy_coded else None,
                             session=self.session, nbytes=size)
            self.slots[(pkt.ssrc, fid)] = slot
            self.pending_bytes += size
        return slot

    def _jumped_back(self, stream: _Stream, now: float) -> bool:
        """A packet of a frame older than those released, after a silence of ``handover`` with
        nothing pending: the sender restarted with the same SSRC (frame ids from 0 again)
        and its new description has not arrived (yet).  Starts a new session."""
        if now - self._heard < self.handover or self.slots:
            return False
        self.counters.restarts += 1
        self.session += 1
        stream.released.clear()
        stream.released_set.clear()
        stream.newest_released = None
        stream.adopt_description = True
        return True

    def _reserve(self, nbytes: int, growing: FrameSlot | None, now: float) -> bool:
        """Room for ``nbytes`` more pending bytes (for ``growing``, or a new frame): the frames
        with the earliest deadline are released first (never ``growing``); False, counted, when
        ``growing`` alone would pass the bound."""
        if self.max_bytes is None:
            return True
        if nbytes + (growing.nbytes if growing is not None else 0) > self.max_bytes:
            self.counters.memory_drops += 1
            return False
        while self.pending_bytes + nbytes > self.max_bytes:
            self._evicted += self._evict_earliest(now, spare=growing)
        return True

    def _evict_earliest(self, now: float, spare: FrameSlot | None = None) -> list[FrameSlot]:
        """Release the pending frame with the earliest deadline (never ``spare``) to make room,
        counted as evicted: the one rule of both bounds, frame count and bytes."""
        oldest = min((s for s in self.slots.values() if s is not spare), key=lambda s: s.deadline)
        released = self._release([oldest], now, "evicted")
        self.counters.frames_evicted += 1
        return released

    def _add_bytes(self, slot: FrameSlot, nbytes: int, now: float) -> bool:
        """Account a payload or parity symbol about to be stored in ``slot``; False: dropped."""
        if not self._reserve(nbytes, slot, now):
            return False
        slot.nbytes += nbytes
        self.pending_bytes += nbytes
        return True

    def _shorten_older(self, ssrc: int, frame_id: int, level: int, now: float) -> None:
        # The sender sends frames in order and, inside a frame, the most important block first; a
        # priority network serves each importance class in order.  So a newer frame's packet of
        # importance L means the older frames' packets of importance <= L are through (or lost):
        # an older frame missing only such blocks waits just for reordering.  Its less important
        # blocks may still sit behind this packet in a priority queue, so they keep the deadline.
        for (sc, fid), other in self.slots.items():
            if (sc == ssrc and frame_diff(fid, frame_id) < 0 and other.deadline > now + self.reorder_grace
                    and other.max_missing_level(self.levels) <= level):
                self._shorten(other, now + self.reorder_grace)

    def _shorten(self, slot: FrameSlot, t: float) -> None:
        """Bring the frame's release forward to ``t``, but not before a hold on it or on an older
        frame of its stream ends (frames leave in order), and never past its deadline."""
        floor = max([slot.hold_until] + [o.hold_until for (sc, fid), o in self.slots.items()
                                         if sc == slot.ssrc and frame_diff(fid, slot.frame_id) < 0])
        slot.deadline = min(slot.deadline, max(t, min(floor, slot.first_arrival + self.latency)))

    def hold(self, ssrc: int, frame_id: int, until: float) -> None:
        """Keep frame ``frame_id`` (and newer ones of the stream) until ``until`` or complete,
        never past its deadline: a retransmission it asked for is on its way."""
        slot = self.slots.get((ssrc, frame_id))
        if slot is None:
            return
        slot.hold_until = max(slot.hold_until, min(until, slot.first_arrival + self.latency))
        for (sc, fid), other in self.slots.items():
            if sc == ssrc and frame_diff(fid, frame_id) >= 0:
                other.deadline = max(other.deadline, min(slot.hold_until, other.first_arrival + self.latency))

    def _stored(self, slot: FrameSlot, pkt: MediaPacket | PayloadPacket | ParityPacket, now: float) -> list[FrameSlot]:
        """After a packet's bytes went into its slot: deadline, completion, memory bound."""
        slot.packets += 1
        self._heard = now
        if self.gap is not None and slot.payloads is not None:
            slot.deadline = max(slot.deadline, min(slot.first_arrival + self.latency, now + self.gap))
            self._shorten(slot, now + self.gap)
        if getattr(pkt, "marker", False):
            self._shorten(slot, now + self.reorder_grace)
        out: list[FrameSlot] = []
        if slot.complete:
            out = self._release_ready(pkt.ssrc, lambda s: s.complete, now)
        if len(self.slots) > self.max_frames:
            out += self._evict_earliest(now)
        return out

    def _on_media(self, pkt: MediaPacket, now: float, dscp: int | None) -> list[FrameSlot]:
        h = pkt.header
        stream = self._described(pkt, entropy_coded=False)
        if stream is None:
            return []
        info = stream.info
        if h.block >= info.layout.blocks or h.offset + len(pkt.data) > info.layout.block_bytes or not pkt.data:
            self.counters.invalid += 1
            return []
        slot = self._slot(stream, pkt, now, info.layout.blocks, info.layout.block_bytes)
        if slot is None:
            return []
        self._shorten_older(pkt.ssrc, h.frame_id, _level(info, h.block), now)
        span = slice(h.offset, h.offset + len(pkt.data))
        if slot.received[h.block, span].all():
            self.counters.duplicates += 1
            return []
        slot.wire[h.block, span] = np.frombuffer(pkt.data, np.uint8)
        newly = int((~slot.received[h.block, span]).sum())
        slot.received[h.block, span] = True
        slot.bytes_received += newly
        if dscp is not None:
            slot.dscp[h.block] = dscp
        return self._stored(slot, pkt, now)

    def _on_payload(self, pkt: PayloadPacket, now: float, dscp: int | None) -> list[FrameSlot]:
        h = pkt.header
        stream = self._described(pkt, entropy_coded=True)
        if stream is None:
            return []
        info = stream.info
        if (h.level >= info.layout.blocks or h.count > info.max_frame_payloads or not pkt.data
                or len(pkt.data) > info.mtu):
            self.counters.invalid += 1
            return []
        slot = self._slot(stream, pkt, now, h.count, 0)
        if slot is None:
            return []
        if slot.received.shape[0] != h.count:  # another count for the same frame: forged or broken
            self.counters.invalid += 1
            return []
        self._shorten_older(pkt.ssrc, h.frame_id, h.level, now)
        if slot.received[h.index, 0]:
            self.counters.duplicates += 1
            return []
        if not self._add_bytes(slot, len(pkt.data), now):
            return []
        slot.payloads[h.index] = pkt.data
        slot.payload_levels[h.index] = h.level
        slot.received[h.index, 0] = True
        slot.bytes_received += 1
        slot.protected = max(slot.protected, h.protected)
        if dscp is not None and h.layer == 0:  # a level's DSCP: its coarse index's, not a refinement's
            slot.dscp[h.level] = dscp
        self._recover(slot)
        return self._stored(slot, pkt, now)

    def _on_parity(self, pkt: ParityPacket, now: float) -> list[FrameSlot]:
        h = pkt.header
        stream = self._described(pkt, entropy_coded=True)
        if stream is None:
            return []
        info = stream.info
        if (h.count > info.max_frame_payloads or not pkt.symbol or len(pkt.symbol) > info.mtu
                or max(h.levels) >= info.layout.blocks):
            self.counters.invalid += 1
            return []
        slot = self._slot(stream, pkt, now, h.count, 0)
        if slot is None:
            return []
        code = (h.k, h.n, h.levels)
        if slot.received.shape[0] != h.count or slot.parity_code not in (None, code):
            self.counters.invalid += 1
            return []
        if h.index in slot.parity:
            self.counters.duplicates += 1
            return []
        if not self._add_bytes(slot, len(pkt.symbol), now):
            return []
        slot.parity_code = code
        slot.parity[h.index] = pkt.symbol
        self.counters.parity += 1
        self._recover(slot)
        return self._stored(slot, pkt, now)

    def _recover(self, slot: FrameSlot) -> None:
        """Missing protected payloads back from parity, once any k of the block's shares are in."""
        if slot.parity_code is None or not slot.parity:
            return
        k, n, levels = slot.parity_code
        missing = [i for i in range(k) if not slot.received[i, 0]]
        shares = {i: slot.payloads[i] for i in range(k) if slot.received[i, 0]}
        if not missing or len(shares) + len(slot.parity) < k:
            return
        shares.update(slot.parity)
        try:
            payloads = recover(k, n, shares)
        except FecError:
            self.counters.invalid += 1
            slot.parity.clear()
            return
        for i in missing:
            slot.payloads[i] = payloads[i]
            slot.payload_levels[i] = levels[i]
            slot.received[i, 0] = True
            slot.bytes_received += 1
        slot.recovered += len(missing)
        self.counters.recovered += len(missing)
        self.counters.frames_recovered += 1

    # -- output --------------------------------------------------------------------------
    def _release(self, slots: list[FrameSlot], now: float, reason: str) -> list[FrameSlot]:
        for s in slots:
            del self.slots[(s.ssrc, s.frame_id)]
            self.pending_bytes -= s.nbytes
            s.reason = "complete" if s.complete else "deadline" if s.deadline <= now else reason
            s.released_at = now
            self.counters.frames_released += 1
            self.counters.frames_complete += s.complete
            stream = self.streams.get(s.ssrc)
            if stream is not None:
                stream.mark_released(s.frame_id)
        return slots

    def _release_ready(self, ssrc: int, ready: Callable[[FrameSlot], bool], now: float) -> list[FrameSlot]:
        """Release the stream's pending frames that :func:`playout_count` lets go, oldest first."""
        pending = [s for (sc, _), s in self.slots.items() if sc == ssrc]
        if not pending:
            return []
        ref = pending[0].frame_id
        pending.sort(key=lambda s: frame_diff(s.frame_id, ref))
        n = playout_count([ready(s) for s in pending])
        held = [i for i, s in enumerate(pending[:n]) if s.hold_until > now and not ready(s)]
        return self._release(pending[:held[0] if held else n], now, "superseded")

    def next_deadline(self) -> float | None:
        return min((s.deadline for s in self.slots.values()), default=None)

    def pop_due(self, now: float) -> list[FrameSlot]:
        """Frames whose deadline has passed (and older frames of their stream), in frame order."""
        out: list[FrameSlot] = []
        while True:
            due = [s for s in self.slots.values() if s.deadline <= now]
            if not due:
                return out
            first = min(due, key=lambda s: s.deadline)
            released = self._release_ready(first.ssrc, lambda s: s.deadline <= now, now)
            if not released:  # behind a held frame (cannot happen: holds push newer deadlines)
                return out
            out += released
