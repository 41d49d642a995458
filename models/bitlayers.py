"""Bit layers (paper 003's bit-level importance): each quantized index split by significance.

A coefficient's quantized index ``q`` (dead-zone rounding at step ``q_step``) becomes ``L``
layers: layer 0 holds the coarse index ``sign(q) * (|q| >> (L-1))``, the index of the same value
at step ``2**(L-1) * q_step``; refinement layer ``j`` holds ``sign(q) * bit (L-1-j) of |q|``,
one signed bit-plane (its sign matters where the layers above are all zero: there the plane
says where the coefficient becomes significant).  :class:`.packet_codec.PacketCodec` codes each
layer exactly as it codes plain symbols (importance levels, lattice groups, skip flags, Laplace
scales), in its own payloads, so the network can treat a refinement as less important than
every coarse index and drop it first (``jscc-send --bit-layers``).

The decoder merges, at every latent position, the layers that arrived there without a gap from
layer 0 (:class:`LayerPlanes`): all of them give ``q`` exactly; fewer give the centre of the
coarser bin they narrow it to (0 in the zero bin).  A refinement without its coarse index is
useless and ignored.

Layered payloads have their own layout versions (:data:`LAYERED_VERSION`: 5 for intra frames,
6 for predicted frames' residuals) and one byte after the 7-byte payload header,
``layer << 4 | layers``; the rest is the plain layout's body (prefix, then the group).  The
header's "levels sent" is per layer: a level from there on is all zero in that layer.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["LAYERED_VERSION", "MAX_BIT_LAYERS", "split_layers", "merge_layers", "layer_byte", "read_layer_byte",
           "LayerPlanes"]

#: plain payload layout -> the layout of its bit-layered payloads
LAYERED_VERSION = {2: 5, 3: 6}
MAX_BIT_LAYERS = 4  # a coarse index and up to three refinement bit-planes


def split_layers(q: np.ndarray, layers: int) -> list[np.ndarray]:
    """Integer indexes -> ``layers`` arrays: the coarse index, then one signed bit-plane each."""
    if not 1 <= layers <= MAX_BIT_LAYERS:
        raise ValueError(f"bit layers must be 1..{MAX_BIT_LAYERS}, got {layers}")
    a, s = np.abs(q).astype(np.int32), np.sign(q).astype(np.int32)
    return [s * (a >> (layers - 1))] + [s * ((a >> (layers - 1 - j)) & 1) for j in range(1, layers)]


def merge_layers(planes: Sequence[np.ndarray], layers: int, known: np.ndarray | int | None = None) -> np.ndarray:
    """Inverse of :func:`split_layers` from the first ``known`` planes (per element, or all of
    ``planes``): exact (integers, as float) where every layer is known, else the centre of the
    coarser bin (0 in the zero bin)."""
    m = np.full(planes[0].shape, len(planes)) if known is None else np.broadcast_to(known, planes[0].shape)
    q = planes[0].astype(np.int64)
    for j, d in enumerate(planes[1:], start=1):
        q = np.where(m > j, 2 * q + d, q)  # a plane past the known ones is ignored
    shift = np.clip(layers - m, 0, None)
    mag = np.abs(q) * (1 << shift) + ((1 << shift) - 1) / 2.0
    return np.where(q != 0, np.sign(q) * mag, 0.0).astype(np.float32)


def layer_byte(layer: int, layers: int) -> bytes:
    """The byte after a layered payload's header."""
    if not 0 <= layer < layers <= MAX_BIT_LAYERS:
        raise ValueError(f"layer {layer} of {layers}")
    return bytes([layer << 4 | layers])


def read_layer_byte(value: int) -> tuple[int, int]:
    """``(layer, layers)`` from :func:`layer_byte`'s byte; ``ValueError`` if out of range."""
    layer, layers = value >> 4, value & 15
    if not 0 <= layer < layers <= MAX_BIT_LAYERS:
        raise ValueError(f"bit layer {layer} of {layers} out of range")
    return layer, layers


class LayerPlanes:
    """What a frame's layered payloads said, gathered for :meth:`dequantize`."""

    def __init__(self, level_sizes: Sequence[int], n_pos: int) -> None:
        self.level_sizes = list(level_sizes)
        self.planes = np.zeros((MAX_BIT_LAYERS, sum(level_sizes), n_pos), dtype=np.int32)
        self.known = np.zeros((MAX_BIT_LAYERS, len(level_sizes), n_pos), dtype=bool)
        self.zero: dict[int, tuple[int, int]] = {}  # layer -> (levels sent, levels kept) in that layer
        self.layers = 1

    def add(self, layer: int, layers: int, level: int, channels: slice, pos: np.ndarray, sym: np.ndarray,
            levels_sent: int, levels_kept: int) -> None:
        """One payload's symbols: layer ``layer`` of level ``level`` at positions ``pos``."""
        self.planes[layer][channels][:, pos] = sym
        self.known[layer, level, pos] = True
        self.zero.setdefault(layer, (levels_sent, levels_kept))
        self.layers = layers

    def dequantize(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(index estimates ``(C, P)`` as float, per-level mask ``(K, P)`` of the positions whose
        coarse index arrived, the mean number of layers missing there)."""
        known = self.known[:self.layers].copy()
        for layer, (sent, kept) in self.zero.items():
            known[layer, sent:kept] = True  # all zero in that layer: known without a payload
        depth = np.cumprod(known, axis=0).sum(axis=0)  # consecutive layers from 0, (K, P)
        index = merge_layers(list(self.planes[:self.layers]), self.layers,
                             np.repeat(depth, self.level_sizes, axis=0))
        got = depth > 0
        missing = float(self.layers - depth[got].mean()) if got.any() else 0.0
        return index, got.astype(np.float32), missing
