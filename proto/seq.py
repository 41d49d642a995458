"""Serial-number arithmetic that survives the wrap: 16-bit RTP sequence numbers (aiortc's NACK
helper does not) and 32-bit frame ids."""

from __future__ import annotations

__all__ = ["seq_diff", "frame_diff", "SeqUnwrapper"]

_MOD = 1 << 16
_HALF = 1 << 15


def seq_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` on the 16-bit circle, in [-32768, 32767]."""
    return ((a - b + _HALF) % _MOD) - _HALF


def frame_diff(a: int, b: int) -> int:
    """Signed 32-bit serial distance between frame ids ``a - b``."""
    return ((a - b + (1 << 31)) % (1 << 32)) - (1 << 31)


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
