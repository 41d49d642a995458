"""Per-packet arrival times, receiver -> sender (transport-wide feedback in the spirit of RFC
8888), the input of the sender's delay-based congestion control.

The receiver notes (sequence number, arrival) of every RTP packet of a stream and, every ~50 ms,
sends what it learnt since its previous report as a ``PacketArrivals`` message: a sequence range,
a bitmap of the packets that newly arrived in it, and their arrival times as microsecond deltas.
A packet that arrives after a report already covered it (reordered, e.g. a less important packet
a priority queue held back) is reported in the next one, whose range reaches back for it: the
sender first counted it lost, then learns it arrived.  Packets a report marks as not arrived
that an earlier one reported as arrived are not news (the sender keeps the first word).
"""

from __future__ import annotations

from collections import deque

from .receipts import pack_bitmap, unpack_bitmap
from .seq import SeqUnwrapper

__all__ = ["ArrivalLog", "decode_arrivals", "MAX_COVERED"]

MAX_COVERED = 4096  # packets one report may cover (a longer gap restarts the range)


class ArrivalLog:
    """The receiver's record of one stream's arrivals since the last report."""

    def __init__(self, late_window: int = 1024) -> None:
        self.late_window = late_window  # how far back a late packet is still reported
        self._unwrap = SeqUnwrapper()
        self._next: int | None = None  # first extended seq no report has covered yet
        self._got: dict[int, float] = {}
        self._reported: deque[int] = deque(maxlen=late_window)  # recently reported as arrived
        self._reported_set: set[int] = set()

    def add(self, seq: int, arrival: float) -> None:
        ext = self._unwrap.unwrap(seq)
        if self._next is None:
            self._next = ext
        if ext in self._got or ext in self._reported_set or ext < self._next - self.late_window:
            return  # duplicate, or too late to matter
        self._got[ext] = arrival
        if ext - self._next >= MAX_COVERED:  # a long gap: start the range again
            self._next = min(self._got)

    def take(self):
        """A ``PacketArrivals`` message for everything learnt since the last call, or None."""
        from .stream_pb2 import PacketArrivals

        if not self._got or self._next is None:
            return None
        end = max(max(self._got) + 1, self._next)
        begin = max(min(self._got), end - MAX_COVERED)
        covered = range(begin, end)
        got = [s in self._got for s in covered]
        times = [self._got[s] for s in covered if s in self._got]
        base = round(times[0] * 1e6)
        deltas, prev = [], base
        for t in times:
            us = round(t * 1e6)
            deltas.append(us - prev)
            prev = us
        for s in covered:
            if s in self._got:
                if len(self._reported) == self._reported.maxlen:
                    self._reported_set.discard(self._reported[0])
                self._reported.append(s)
                self._reported_set.add(s)
        self._got.clear()
        self._next = end
        return PacketArrivals(begin_seq=begin & 0xFFFF, count=len(got), received=pack_bitmap(got), base_us=base,
                              delta_us=deltas)


def decode_arrivals(msg) -> list[tuple[int, float | None]]:
    """``PacketArrivals`` -> [(16-bit seq, arrival s or None = lost)] in sequence order; raises
    ValueError when the message is inconsistent (wrong bitmap size, delta count)."""
    if not 0 < msg.count <= MAX_COVERED:
        raise ValueError(f"arrival report covers {msg.count} packets")
    got = unpack_bitmap(msg.received, msg.count)
    if sum(got) != len(msg.delta_us):
        raise ValueError(f"{sum(got)} packets arrived but {len(msg.delta_us)} times")
    out: list[tuple[int, float | None]] = []
    t = msg.base_us
    deltas = iter(msg.delta_us)
    for i, g in enumerate(got):
        arrival = None
        if g:
            t += next(deltas)
            arrival = t / 1e6
        out.append(((msg.begin_seq + i) & 0xFFFF, arrival))
    return out
