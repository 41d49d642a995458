"""Regions of interest (paper 003's segment-level importance) for the entropy-coded codec.

A region map is a few rectangles on the latent grid (one unit = one 16x16 pixel patch) and a
*boost*: how many rate indexes finer (``16`` = half the step, about +6 dB there) the quantizer
is inside.  The encoder scales the latent inside the region by ``2 ** (boost / 16)`` before
quantizing, so rate control, the entropy coder and the payload size check stay as they are,
and the frame still meets its byte budget (the rest of the frame gets a coarser step); the
decoder divides the same coefficients back.

Every payload of a frame with a region carries the whole map (flag bit 7 of the header's rate
byte, the map at the start of the body after the P-frame prefix): 2 + 4 bytes per rectangle,
so each payload stays decodable alone, with no map payload whose loss would spoil the others.
A level's positions inside the region travel in their own payloads (the map's ``inside``
bit), which the sender ranks one importance level higher (:func:`priority`): better DSCP
class, parity and NACK from one level further down.

Wire form of the map: ``inside << 7 | n`` (n rectangles, at most :data:`MAX_RECTS`), the
boost, then ``x0 y0 x1 y1`` per rectangle (latent units, the ends exclusive, 1..255).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["RoiMap", "RoiError", "MAX_RECTS", "DEFAULT_BOOST", "ROI_FLAG", "priority", "split_body"]

MAX_RECTS = 32  # larger maps fall back to component bounding boxes, then one box
DEFAULT_BOOST = 24  # rate indexes finer inside: the quantizer step divided by 2.8
PROMOTE = 1  # importance levels an inside payload is ranked above its channel level
ROI_FLAG = 0x80  # bit 7 of the header's rate byte (rate indexes need 7 bits)
_RECT = struct.Struct("<4B")
_HEADER_SIZE = 7  # packet_codec.HEADER.size (not imported: packet_codec imports this module)


class RoiError(ValueError):
    """A region map that cannot be decoded or does not fit the frame."""


@dataclass(frozen=True)
class RoiMap:
    """Rectangles ``(x0, y0, x1, y1)`` on the latent grid (ends exclusive) and the boost."""

    rects: tuple[tuple[int, int, int, int], ...]
    boost: int = DEFAULT_BOOST

    def __post_init__(self) -> None:
        if not 1 <= len(self.rects) <= MAX_RECTS:
            raise RoiError(f"a region map holds 1..{MAX_RECTS} rectangles, got {len(self.rects)}")
        if not 1 <= self.boost <= 64:
            raise RoiError(f"region boost must be 1..64 rate indexes, got {self.boost}")
        for x0, y0, x1, y1 in self.rects:
            if not (0 <= x0 < x1 <= 255 and 0 <= y0 < y1 <= 255):
                raise RoiError(f"rectangle {(x0, y0, x1, y1)} is empty or off a 255-unit grid")

    @property
    def gain(self) -> float:
        """Factor the latent is scaled by inside the region (the step divided by it)."""
        return 2.0 ** (self.boost / 16.0)

    def pack(self, inside: bool) -> bytes:
        """Wire form; ``inside``: the payload carries positions inside the region."""
        head = bytes([(int(inside) << 7) | len(self.rects), self.boost])
        return head + b"".join(_RECT.pack(*r) for r in self.rects)

    @classmethod
    def unpack(cls, data: bytes) -> tuple["RoiMap", bool, int]:
        """``(map, inside, bytes used)`` from the start of ``data``; :class:`RoiError` if none."""
        if len(data) < 2:
            raise RoiError("region map truncated")
        n = data[0] & 0x7F
        end = 2 + n * _RECT.size
        if len(data) < end:
            raise RoiError("region map truncated")
        rects = tuple(_RECT.unpack_from(data, 2 + i * _RECT.size) for i in range(n))
        return cls(rects, data[1]), bool(data[0] >> 7), end

    def cells(self, h: int, w: int) -> np.ndarray:
        """Boolean ``h * w`` raster of the latent positions inside the region."""
        m = np.zeros((h, w), dtype=bool)
        for x0, y0, x1, y1 in self.rects:
            m[y0:y1, x0:x1] = True
        return m.ravel()

    @classmethod
    def from_pixels(cls, pixels: np.ndarray, boost: int = DEFAULT_BOOST, stride: int = 16) -> "RoiMap | None":
        """A pixel mask (nonzero = important) -> the map of every latent patch it touches;
        None when the mask is empty."""
        h, w = -(-pixels.shape[0] // stride), -(-pixels.shape[1] // stride)
        pad = np.zeros((h * stride, w * stride), dtype=bool)
        pad[:pixels.shape[0], :pixels.shape[1]] = pixels.astype(bool)
        grid = pad.reshape(h, stride, w, stride).any(axis=(1, 3))
        rects = _rects_of(grid)
        return cls(tuple(rects), boost) if rects else None

    @classmethod
    def from_boxes(cls, boxes, width: int, height: int, boost: int = DEFAULT_BOOST) -> "RoiMap | None":
        """Pixel boxes ``(x, y, w, h)`` on a ``width x height`` frame -> their map."""
        pixels = np.zeros((height, width), dtype=bool)
        for x, y, bw, bh in boxes:
            pixels[max(0, y):max(0, y + bh), max(0, x):max(0, x + bw)] = True
        return cls.from_pixels(pixels, boost)


def _rects_of(grid: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Cover the True cells of ``grid`` exactly with rectangles (row runs merged downwards);
    more than :data:`MAX_RECTS` of them: the bounding boxes of its components, then one box."""
    done: list[tuple[int, int, int, int]] = []
    open_: dict[tuple[int, int], int] = {}  # (x0, x1) -> first row of a run still growing
    for y in range(grid.shape[0] + 1):
        row = grid[y] if y < grid.shape[0] else np.zeros(grid.shape[1], dtype=bool)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(np.int8), [0]])))
        runs = set(zip(edges[::2].tolist(), edges[1::2].tolist()))
        for run in [r for r in open_ if r not in runs]:
            done.append((run[0], open_.pop(run), run[1], y))
        for run in runs - set(open_):
            open_[run] = y
    if len(done) <= MAX_RECTS:
        return sorted(done, key=lambda r: (r[1], r[0]))
    n, _, stats, _ = cv2.connectedComponentsWithStats(grid.astype(np.uint8), connectivity=8)
    boxes = [(int(x), int(y), int(x + bw), int(y + bh)) for x, y, bw, bh, _ in stats[1:]]
    if len(boxes) <= MAX_RECTS:
        return boxes
    ys, xs = np.nonzero(grid)
    return [(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)]


def split_body(body: bytes, prefix_len: int, h: int, w: int) -> tuple[RoiMap, np.ndarray, bytes]:
    """A flagged payload's body -> (its map, the mask of the positions its group covers
    (inside or outside the region), the group's coded body)."""
    roi, inside, n = RoiMap.unpack(body[prefix_len:])
    if any(x1 > w or y1 > h for _, _, x1, y1 in roi.rects):
        raise RoiError(f"region map {roi.rects} is off the {w}x{h} latent grid")
    mask = roi.cells(h, w)
    return roi, mask if inside else ~mask, body[prefix_len + n:]


def priority(payload: bytes, prefix_len: int = 0) -> int:
    """Importance level the sender gives ``payload``: its channel level, :data:`PROMOTE`
    levels better when it carries positions inside the region (not checksummed here)."""
    level = payload[0] & 15
    if len(payload) > _HEADER_SIZE + prefix_len and payload[4] & ROI_FLAG and payload[_HEADER_SIZE + prefix_len] >> 7:
        return max(0, level - PROMOTE)
    return level
