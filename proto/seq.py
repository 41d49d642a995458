"""16-bit RTP sequence arithmetic that survives the wrap (aiortc's NACK helper does not)."""

from __future__ import annotations

__all__ = ["seq_diff", "seq_newer", "SeqUnwrapper"]

_MOD = 1 << 16
_HALF = 1 << 15


def seq_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` on the 16-bit circle, in [-32768, 32767]."""
    return ((a - b + _HALF) % _MOD) - _HALF


def seq_newer(a: int, b: int) -> bool:
    """True when ``a`` comes after ``b`` (RFC 1982 serial-number order)."""
    return seq_diff(a, b) > 0


class SeqUnwrapper:
    """Maps 16-bit sequence numbers to a monotonic 64-bit count (RFC 3550 extended sequence).

    Each number is placed at the unwrapped value nearest to the highest one seen so far, so
    reordered and duplicated packets unwrap consistently across the wrap.
    """

    def __init__(self) -> None:
        self.highest: int | None = None

    def unwrap(self, seq: int) -> int:
        seq &= 0xFFFF
        if self.highest is None:
            self.highest = seq
            return seq
        ext = self.highest + seq_diff(seq, self.highest & 0xFFFF)
        if ext > self.highest:
            self.highest = ext
        return ext
