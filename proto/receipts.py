"""Frame receipts (predicted-frame streams): what a receiver decoded, in the Feedback message.

Built by the receiver after each decoded frame and read by the sender's reference state: the
payloads used as a bitmap (bit i, LSB first, = payload i) and a CRC-32 of the decoded picture,
which both ends compute the same way.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

__all__ = ["picture_crc", "pack_bitmap", "unpack_bitmap", "MAX_RECEIPT_PAYLOADS"]

MAX_RECEIPT_PAYLOADS = 4096  # more than any frame has (the description bounds it far lower)


def picture_crc(picture: np.ndarray) -> int:
    """CRC-32 of a decoded picture's bytes."""
    return zlib.crc32(np.ascontiguousarray(picture).data) & 0xFFFFFFFF


def pack_bitmap(used: Sequence[bool]) -> bytes:
    return np.packbits(np.asarray(used, dtype=np.uint8), bitorder="little").tobytes()


def unpack_bitmap(data: bytes, count: int) -> tuple[bool, ...]:
    """Inverse of :func:`pack_bitmap`; ValueError when ``data`` cannot hold ``count`` flags."""
    if not 0 <= count <= MAX_RECEIPT_PAYLOADS or len(data) != (count + 7) // 8:
        raise ValueError(f"a bitmap of {len(data)} bytes does not hold {count} payload flags")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[:count]
    return tuple(bool(b) for b in bits)
