"""Datagrams -> per-frame (K, L) wire arrays + received masks, released at the playout deadline.

Pure and clock-free: every call takes ``now`` (seconds, any monotonic clock), so the playout
logic is tested without sleeping.  A frame is released when the first of these happens:

* all its bytes arrived (``reason="complete"``);
* a newer frame of the same stream completed: older frames go out first, with what they have,
  so frames leave in order without waiting (``"superseded"``);
* its deadline passed: ``first packet arrival + latency`` (``"deadline"``), shortened to
  ``now + reorder grace`` once the frame's last (marker) packet arrived, or a newer frame's
  packet at least as unimportant as every block still missing (the sender sends frames in
  order and blocks by importance; a priority network may hold back only less important ones);
* too many frames are pending (memory bound, ``"evicted"``).

Packets for a frame already released are counted late and dropped.  Garbage is counted,
never raised.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from .description import StreamInfo, parse_description
from .packet import CLOCK_RATE, DescriptionPacket, MediaPacket, WireError, parse_datagram
from .seq import frame_diff

__all__ = ["ReassemblyCounters", "FrameSlot", "Reassembler"]


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
    ssrc_changes: int = 0
    frames_released: int = 0
    frames_complete: int = 0


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
    bytes_received: int = 0
    packets: int = 0
    reason: str = ""
    released_at: float = 0.0

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

    def max_missing_level(self) -> int:
        """Least important level (largest number) among blocks not yet complete; -1 if none."""
        missing = [_level(self.info, b) for b in range(self.received.shape[0])
                   if not self.received[b].all()]
        return max(missing, default=-1)

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
                 max_streams: int = 4) -> None:
        if latency <= 0:
            raise ValueError("latency must be positive")
        self.latency = latency
        self.reorder_grace = reorder_grace
        self.max_frames = max_frames
        self.max_streams = max_streams
        self.counters = ReassemblyCounters()
        self.streams: OrderedDict[int, _Stream] = OrderedDict()
        self.slots: dict[tuple[int, int], FrameSlot] = {}
        self._undescribed: OrderedDict[tuple[int, int], None] = OrderedDict()
        self.current_ssrc: int | None = None
        #: (ssrc, seq, timestamp) of the last datagram that parsed as RTP, for RTCP statistics.
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
        self.last_rtp = (pkt.ssrc, pkt.seq, pkt.timestamp)
        if isinstance(pkt, DescriptionPacket):
            return self._on_description(pkt, now)
        return self._on_media(pkt, now, dscp)

    def _on_description(self, pkt: DescriptionPacket, now: float) -> list[FrameSlot]:
        try:
            info = parse_description(pkt.body)
        except WireError:
            self.counters.invalid += 1
            return []
        if info.ssrc != pkt.ssrc:
            self.counters.invalid += 1
            return []
        self.counters.descriptions += 1
        stream = self.streams.get(pkt.ssrc)
        if stream is None:
            if self.current_ssrc is not None:
                self.counters.ssrc_changes += 1
            self.streams[pkt.ssrc] = _Stream(info)
            while len(self.streams) > self.max_streams:
                old, _ = self.streams.popitem(last=False)
                for key in [k for k in self.slots if k[0] == old]:
                    del self.slots[key]
        else:
            stream.info = info
            self.streams.move_to_end(pkt.ssrc)
        self.current_ssrc = pkt.ssrc
        return []

    def _on_media(self, pkt: MediaPacket, now: float, dscp: int | None) -> list[FrameSlot]:
        h = pkt.header
        stream = self.streams.get(pkt.ssrc)
        if stream is None or (stream.info.revision & 0xFF) != h.revision:
            self.counters.no_description += 1
            key = (pkt.ssrc, h.frame_id)
            if key not in self._undescribed:
                self._undescribed[key] = None
                self.counters.undecodable_frames += 1
                while len(self._undescribed) > 256:
                    self._undescribed.popitem(last=False)
            return []
        info = stream.info
        if h.block >= info.layout.blocks or h.offset + len(pkt.data) > info.layout.block_bytes or not pkt.data:
            self.counters.invalid += 1
            return []
        key = (pkt.ssrc, h.frame_id)
        slot = self.slots.get(key)
        if slot is None:
            if h.frame_id in stream.released_set or (
                    stream.newest_released is not None and frame_diff(h.frame_id, stream.newest_released) < 0):
                self.counters.late += 1
                return []
            slot = FrameSlot(info, h.frame_id, pkt.timestamp, now, now + self.latency,
                             np.zeros((info.layout.blocks, info.layout.block_bytes), np.uint8),
                             np.zeros((info.layout.blocks, info.layout.block_bytes), bool), [-1] * info.layout.blocks)
            self.slots[key] = slot
        # The sender sends frames in order and, inside a frame, the most important block first; a
        # priority network serves each importance class in order.  So a newer frame's packet of
        # importance L means the older frames' packets of importance <= L are through (or lost):
        # an older frame missing only such blocks waits just for reordering.  Its less important
        # blocks may still sit behind this packet in a priority queue, so they keep the deadline.
        level = _level(info, h.block)
        for (sc, fid), other in self.slots.items():
            if (sc == pkt.ssrc and frame_diff(fid, h.frame_id) < 0 and other.deadline > now + self.reorder_grace
                    and other.max_missing_level() <= level):
                other.deadline = now + self.reorder_grace
        span = slice(h.offset, h.offset + len(pkt.data))
        if slot.received[h.block, span].all():
            self.counters.duplicates += 1
            return []
        slot.wire[h.block, span] = np.frombuffer(pkt.data, np.uint8)
        newly = int((~slot.received[h.block, span]).sum())
        slot.received[h.block, span] = True
        slot.bytes_received += newly
        slot.packets += 1
        if dscp is not None:
            slot.dscp[h.block] = dscp
        if pkt.marker:
            slot.deadline = min(slot.deadline, now + self.reorder_grace)
        out: list[FrameSlot] = []
        if slot.complete:
            out = self._release_through(pkt.ssrc, h.frame_id, now)
        if len(self.slots) > self.max_frames:
            oldest = min(self.slots.values(), key=lambda s: s.deadline)
            out += self._release([oldest], now, "evicted")
        return out

    # -- output --------------------------------------------------------------------------
    def _release(self, slots: list[FrameSlot], now: float, reason: str) -> list[FrameSlot]:
        for s in slots:
            del self.slots[(s.ssrc, s.frame_id)]
            s.reason = "complete" if s.complete else "deadline" if s.deadline <= now else reason
            s.released_at = now
            self.counters.frames_released += 1
            self.counters.frames_complete += s.complete
            stream = self.streams.get(s.ssrc)
            if stream is not None:
                stream.mark_released(s.frame_id)
        return slots

    def _release_through(self, ssrc: int, frame_id: int, now: float) -> list[FrameSlot]:
        """Release ``frame_id`` and every older pending frame of the same stream, oldest first."""
        older = [s for (sc, fid), s in self.slots.items() if sc == ssrc and frame_diff(fid, frame_id) <= 0]
        older.sort(key=lambda s: frame_diff(s.frame_id, frame_id))
        return self._release(older, now, "superseded")

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
            newest = max((s.frame_id for s in due if s.ssrc == first.ssrc),
                         key=lambda f: frame_diff(f, first.frame_id))
            out += self._release_through(first.ssrc, newest, now)
