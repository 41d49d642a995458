"""Spatial-Channel Rearrangement (paper 001, section 3.2) for one latent block.

A block of ``alpha x h x w`` elements travels as a byte string that may be cut into several
packets.  Without rearrangement the bytes follow the natural ``(channel, row, column)`` order,
so one lost packet wipes out a contiguous strip of one channel.  SCR is a fixed, lossless
permutation of that byte order: the alpha channels of one position sit next to each other
(paper 001 puts co-located points of a channel group together) and positions are visited with
a golden-ratio stride, so consecutive bytes land far apart in the frame.  A lost packet then
removes scattered points whose neighbours survive, which the decoder can fill in.

``wire_order(alpha, h, w)[i]`` is the element (flat ``c*h*w + y*w + x`` index) carried at byte
``i`` of the block.  The permutation depends only on the block shape, so sender and receiver
agree without signalling anything beyond the SCR flag.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["wire_order", "to_wire", "from_wire", "golden_stride"]


def golden_stride(n: int) -> int:
    """A step coprime with n near n/phi: a full-cycle, well-spread visiting order."""
    if n <= 2:
        return 1
    step = max(1, round(n / ((1 + 5**0.5) / 2)))
    for delta in range(n):
        for cand in (step + delta, step - delta):
            if 0 < cand < n and math.gcd(cand, n) == 1:
                return cand
    return 1


@lru_cache(maxsize=64)
def _wire_order_cached(alpha: int, h: int, w: int, scr: bool) -> np.ndarray:
    n_pos = h * w
    if not scr:
        order = np.arange(alpha * n_pos, dtype=np.int64)
    else:
        pos = (np.arange(n_pos, dtype=np.int64) * golden_stride(n_pos)) % n_pos
        # byte i -> position pos[i // alpha], channel i % alpha
        chan = np.arange(alpha, dtype=np.int64)
        order = (chan[None, :] * n_pos + pos[:, None]).reshape(-1)
    order.setflags(write=False)
    return order


def wire_order(alpha: int, h: int, w: int, scr: bool = True) -> np.ndarray:
    """Permutation: wire byte index -> element index within a block (read-only array)."""
    if min(alpha, h, w) <= 0:
        raise ValueError(f"block shape must be positive, got {(alpha, h, w)}")
    return _wire_order_cached(int(alpha), int(h), int(w), bool(scr))


def to_wire(block: np.ndarray, scr: bool = True) -> np.ndarray:
    """Block ``(..., alpha, h, w)`` -> wire bytes ``(..., alpha*h*w)`` in SCR order."""
    alpha, h, w = block.shape[-3:]
    flat = block.reshape(*block.shape[:-3], alpha * h * w)
    return flat[..., wire_order(alpha, h, w, scr)]


def from_wire(wire: np.ndarray, alpha: int, h: int, w: int, scr: bool = True) -> np.ndarray:
    """Exact inverse of :func:`to_wire`."""
    order = wire_order(alpha, h, w, scr)
    if wire.shape[-1] != order.size:
        raise ValueError(f"expected {order.size} wire elements, got {wire.shape[-1]}")
    flat = np.empty_like(wire)
    flat[..., order] = wire
    return flat.reshape(*wire.shape[:-1], alpha, h, w)
