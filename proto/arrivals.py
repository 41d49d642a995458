"""Per-packet arrival times, receiver -> sender (transport-wide feedback in the spirit of RFC
8888), the input of the sender's delay-based congestion control.

The receiver notes (sequence number, arrival) of every RTP packet of a stream and, every ~50 ms,
sends the run since its previous report as a ``PacketArrivals`` message: the covered sequence
range, a bitmap of what arrived, and arrival times as microsecond deltas.  A packet that arrives
after the report that covered it (reordered by more than one report interval) is counted lost:
the controller then sees a little more loss than there was, never a wrong delay.
"""

from __future__ import annotations

from .receipts import pack_bitmap, unpack_bitmap
from .seq import SeqUnwrapper

__all__ = ["ArrivalLog", "decode_arrivals", "MAX_COVERED"]

MAX_COVERED = 4096  # packets one report may cover (a longer gap restarts the range)


class ArrivalLog:
    """The receiver's record of one stream's arrivals since the last report."""

    def __init__(self) -> None:
        self._unwrap = SeqUnwrapper()
        self._next: int | None = None  # first extended seq the next report covers
        self._got: dict[int, float] = {}

    def add(self, seq: int, arrival: float) -> None:
        ext = self._unwrap.unwrap(seq)
        if self._next is None:
            self._next = ext
        if ext < self._next or ext in self._got:
            return  # already reported (late) or duplicate
        self._got[ext] = arrival
        if ext - self._next >= MAX_COVERED:  # a long gap: start the range again
            self._next = min(self._got)

    def take(self):
        """A ``PacketArrivals`` message for everything since the last call, or None."""
        from .stream_pb2 import PacketArrivals

        if not self._got or self._next is None:
            return None
        end = max(self._got) + 1
        begin = max(self._next, end - MAX_COVERED)
        covered = range(begin, end)
        got = [s in self._got for s in covered]
        times = [self._got[s] for s in covered if s in self._got]
        base = round(times[0] * 1e6)
        deltas, prev = [], base
        for t in times:
            us = round(t * 1e6)
            deltas.append(us - prev)
            prev = us
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
