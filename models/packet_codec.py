"""The packet API of the rate-distortion codec: BGR frame <-> self-contained payloads.

``encode(frame_bgr, max_bytes)`` returns payloads in importance order (level 0 first), each at
most :data:`MAX_PAYLOAD` bytes and each decodable alone; ``decode(payloads, width, height)``
takes the same list with ``None`` for every payload that was lost (or any subset, in any
order: a payload names its own place) and returns the frame.

A payload holds one importance level's coefficients at one group of latent positions.  The
positions of a level are dealt into ``n = a * b`` groups on a lattice (:func:`lattice`): group
``(gx, gy)`` holds the positions with ``x % a == gx`` and ``y % b == gy``.  A lost payload then
erases a regular sub-grid whose every position has received neighbours (all four of them for
a 2x2 lattice), which the decoder interpolates; never a whole region.  Layout::

    0  version (high 4 bits) | level (low 4 bits)
    1  levels sent (high 4 bits) | levels kept (low 4 bits)
    2  group index            3  group count
    4  rate index (quantizer step; bit 7: a region map opens the body, :mod:`.roi`)
    5  CRC-16 of the whole payload (this field zeroed)
    7  the group's body (:func:`.entropy.encode_group`: skip flags, scales, symbols);
       empty when every coefficient of the group is zero

Levels below "levels sent" have payloads; levels from there to "levels kept" are all zero at
this rate (known, not erased: nothing is sent for them); levels from "levels kept" on were
left out by rate control and decode as erased.

Rate control picks one rate index per frame from the entropy model's ideal code length (no
network re-run), then checks the real size; levels that do not fit the budget even at the
coarsest step are left out, least important first.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .bitlayers import LAYERED_VERSION, LayerPlanes, layer_byte, read_layer_byte, split_layers
from .entropy import MAX_SYMBOL, decode_group, encode_group, levels_bits
from .precision import resolve_precision
from .roi import ROI_FLAG, RoiMap, priority, split_body
from .transform import DEADZONE, Q_INDEXES, STRIDE, RDCodec, q_of_index

__all__ = ["MAX_PAYLOAD", "PayloadError", "PayloadHeader", "PacketCodec", "group_positions", "s2d_to_bgr"]

MAX_PAYLOAD = 876  # 900-byte datagram - 12 (RTP) - 12 (JSCC packet header)
VERSION = 2
HEADER = struct.Struct("<BBBBBH")
MAX_GROUPS = 255
# the first levels go out in at least this many payloads: one loss then costs a quarter (a
# half) of their positions, which the decoder interpolates from the received neighbours
MIN_GROUPS = (4, 2)


class PayloadError(ValueError):
    """A payload that cannot be used (truncated, corrupted, or of another layout)."""


@dataclass(frozen=True)
class PayloadHeader:
    level: int
    levels_sent: int
    levels_kept: int
    group: int
    groups: int
    rate_index: int
    roi: bool = False  # the body opens with a region map (:mod:`.roi`)

    def pack(self, crc: int = 0, version: int = VERSION) -> bytes:
        return HEADER.pack((version << 4) | self.level, (self.levels_sent << 4) | self.levels_kept,
                           self.group, self.groups, self.rate_index | (ROI_FLAG if self.roi else 0), crc)


def _crc16(data: bytes) -> int:
    return binascii.crc_hqx(data, 0xFFFF)


def parse_payload(payload: bytes, n_levels: int, version: int = VERSION) -> tuple[PayloadHeader, bytes]:
    """Header and body of ``payload``; :class:`PayloadError` if it is not a valid payload of
    layout ``version``."""
    if len(payload) < HEADER.size:
        raise PayloadError(f"payload of {len(payload)} bytes is shorter than its header")
    vl, sk, group, groups, rate, crc = HEADER.unpack_from(payload)
    if _crc16(payload[:5] + b"\0\0" + payload[7:]) != crc:
        raise PayloadError("payload checksum mismatch")
    if vl >> 4 != version:
        raise PayloadError(f"payload version {vl >> 4}, expected {version}")
    head = PayloadHeader(vl & 15, sk >> 4, sk & 15, group, groups, rate & ~ROI_FLAG, bool(rate & ROI_FLAG))
    if (not head.level < head.levels_sent <= head.levels_kept <= n_levels
            or not 0 <= head.group < head.groups or head.rate_index >= Q_INDEXES):
        raise PayloadError(f"payload header out of range: {head}")
    return head, payload[HEADER.size:]


def s2d_to_bgr(x4: np.ndarray, width: int, height: int) -> np.ndarray:
    """The synthesis output ``(48, H'/4, W'/4)`` (channels: colour, row, column of each 4x4
    pixel block; RGB) -> a ``height x width`` BGR view: depth-to-space straight into BGR order,
    one reshape and transpose (on bytes for an intra frame, floats for a residual)."""
    h4, w4 = x4.shape[1:]
    bgr = x4.reshape(3, 4, 4, h4, w4)[::-1].transpose(3, 1, 4, 2, 0).reshape(h4 * 4, w4 * 4, 3)
    return bgr[:height, :width]


@lru_cache(maxsize=1024)
def lattice(groups: int, h: int, w: int) -> tuple[int, int] | None:
    """``(a, b)`` with ``a * b == groups``, ``a <= w``, ``b <= h``, as square as possible
    (columns first); None when ``groups`` cannot tile an ``h x w`` grid that way."""
    best = None
    for b in range(1, groups + 1):
        if groups % b == 0:
            a = groups // b
            if a <= w and b <= h and a >= b:
                best = (a, b)  # the last one found is the squarest with a >= b
    if best is None:
        for b in range(1, groups + 1):
            if groups % b == 0 and groups // b <= w and b <= h:
                return groups // b, b
    return best


def group_positions(h: int, w: int, group: int, groups: int) -> np.ndarray:
    """Raster indexes of the latent positions in ``group`` of ``groups`` (see :func:`lattice`)."""
    ab = lattice(groups, h, w)
    if ab is None or not 0 <= group < groups:
        raise PayloadError(f"{groups} groups do not tile a {h}x{w} latent grid")
    a, b = ab
    ys = np.arange(group // a, h, b)
    xs = np.arange(group % a, w, a)
    return (ys[:, None] * w + xs[None, :]).ravel()


def _region_part(head: PayloadHeader, body: bytes, prefix_len: int, h: int,
                 w: int) -> tuple[RoiMap | None, np.ndarray, bytes]:
    """(the payload's region map or None, its group's positions, the group's coded body)."""
    pos = group_positions(h, w, head.group, head.groups)
    if not head.roi:
        return None, pos, body[prefix_len:]
    roi, part, rest = split_body(body, prefix_len, h, w)
    return roi, pos[part[pos]], rest


class PacketCodec:
    """Wraps an :class:`RDCodec` with padding, rate control, packetization and entropy coding."""

    def __init__(self, model: RDCodec, card: dict[str, Any] | None = None,
                 device: str | torch.device = "cpu", precision: str = "auto",
                 max_payload: int = MAX_PAYLOAD, version: int = VERSION) -> None:
        self.device = torch.device(device) if isinstance(device, str) else device
        self.amp_dtype = resolve_precision(precision, self.device)
        # channels-last (NHWC): oneDNN's fast layout on CPU (640x480 decode 31.7 -> 22.9 ms)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.card = card or {}
        self.name = self.card.get("name", "unnamed")
        self.max_payload = max_payload
        self.version = version  # payload layout: intra frames and P-frame residuals differ
        self.bit_layers = 1  # 2..4: each index split by significance, a payload per layer (.bitlayers)
        self.levels = model.cfg.level_slices()
        self._rate_hint = Q_INDEXES // 2
        self._level_starts = np.array([sl.start for sl in self.levels])
        with torch.no_grad():
            self._steps = torch.exp(model.log_step).double().cpu().numpy()
        self._inv_steps = (1.0 / self._steps[:, None]).astype(np.float32)

    @classmethod
    def load(cls, name_or_path: str | Path = "uniform", device: str = "auto",
             precision: str = "auto") -> "PacketCodec":
        from .frame_codec import pick_device
        from .zoo import CodecLoadError, load_codec

        dev = pick_device(device)
        model, card = load_codec(name_or_path, device=dev)
        if not isinstance(model, RDCodec):
            raise CodecLoadError(f"codec {name_or_path!r} is a fixed-rate JSCC codec, not an "
                                 f"entropy-coded one (architecture {card['config'].get('arch')})")
        if card.get("role") == "inter":
            raise CodecLoadError(f"codec {name_or_path!r} is a video codec (predicted frames): load it with "
                                 "stream_codec.load_stream_codec")
        return cls(model, card, dev, precision)

    # --- what the daemons ask -------------------------------------------------------------
    entropy_coded = True

    @property
    def sha256(self) -> str:
        return self.card.get("sha256", "")

    def layout(self, width: int, height: int):
        """The stream description's view: one block per importance level, 1 channel each."""
        from jscc_stream.proto.description import LatentLayout

        if width <= 0 or height <= 0:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        h, w = self.latent_hw(width, height)
        return LatentLayout(width, height, len(self.levels), 1, h, w, 8, False)

    def max_frame_payloads(self, width: int, height: int) -> int:
        h, w = self.latent_hw(width, height)
        return len(self.levels) * min(h * w, MAX_GROUPS)

    def _groups_at_least(self, n: int, h: int, w: int) -> int:
        """The smallest group count >= ``n`` that tiles the grid."""
        while n < min(h * w, MAX_GROUPS) and lattice(n, h, w) is None:
            n += 1
        return n

    prefix_len = 0  # body bytes before a region map (a P-frame's reference: video_codec sets it)

    def payload_levels(self, payloads: Sequence[bytes]) -> list[int]:
        """Importance level of each payload (its first byte; a region's payloads ranked up)."""
        return [priority(p, self.prefix_len) for p in payloads]

    def payload_layers(self, payloads: Sequence[bytes]) -> list[int]:
        """Bit layer of each payload (0: the coarse index, or not layered; :mod:`.bitlayers`)."""
        return [p[HEADER.size] >> 4 if p[0] >> 4 in LAYERED_VERSION.values() and len(p) > HEADER.size else 0
                for p in payloads]

    # --- helpers --------------------------------------------------------------------------
    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    @staticmethod
    def latent_hw(width: int, height: int) -> tuple[int, int]:
        return -(-height // STRIDE), -(-width // STRIDE)

    def _analyse(self, frame_bgr: np.ndarray) -> np.ndarray:
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected a BGR uint8 frame HxWx3, got {frame_bgr.shape} {frame_bgr.dtype}")
        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        return self.analyse_rgb(torch.from_numpy(rgb).to(self.device).permute(2, 0, 1)[None].float().div_(255))

    def analyse_rgb(self, x: torch.Tensor) -> np.ndarray:
        """``(1, 3, H, W)`` float image (any range: P-frames give residuals) -> latent
        ``(C, h*w)``, edges padded to whole patches."""
        height, width = x.shape[2:]
        h, w = self.latent_hw(width, height)
        x = F.pad(x, (0, w * STRIDE - width, 0, h * STRIDE - height), mode="replicate")
        with torch.inference_mode():
            # the analysis is linear and cheap: fp32 keeps the symbols exact at fine steps
            y = self.model.analyse(x)[0]
        return y.reshape(y.shape[0], -1).cpu().numpy()

    def _symbols(self, y: np.ndarray, rate_index: int) -> np.ndarray:
        # rounding with a small dead zone: values just above a half step cost more bits than
        # the distortion they save (+0.3 dB at the same bytes on the evaluation photographs)
        u = y * (self._inv_steps * np.float32(1.0 / q_of_index(rate_index)))
        k = np.minimum(np.floor(np.abs(u) + np.float32(0.5 - DEADZONE)), MAX_SYMBOL)
        return np.copysign(k, u).astype(np.int32)

    @property
    def _room(self) -> int:
        """Body bytes a payload may hold (header and a margin for side information off)."""
        return self.max_payload - HEADER.size - 16

    def _level_bytes(self, sym: np.ndarray) -> np.ndarray:
        """Estimated bytes per level (one group each; side information included)."""
        bits = levels_bits(sym, self._level_starts)
        return np.where(bits > 0, bits / 8 + HEADER.size + 2, 0.0)

    # --- encode ---------------------------------------------------------------------------
    def choose_rate(self, y: np.ndarray, max_bytes: int) -> tuple[int, int, np.ndarray, np.ndarray]:
        """(rate index, levels kept, its symbols, their estimated bytes per level): the finest
        step whose estimated size fits ``max_bytes``.

        The search starts at the previous frame's index (a stream's frames need similar
        steps) and gallops outwards before it bisects: two to four size estimates a frame."""
        fits = lambda i: self._estimate(y, i) <= max_bytes  # noqa: E731
        start = min(max(self._rate_hint, 0), Q_INDEXES - 1)
        if fits(start):  # finest fitting index is <= start
            hi, step = start, 1
            lo = start - step
            while lo >= 0 and fits(lo):
                hi, step = lo, step * 2
                lo = hi - step
            lo = max(lo + 1, 0)
        else:  # finest fitting index is > start
            lo, step = start + 1, 1
            hi = start + step
            while hi < Q_INDEXES - 1 and not fits(hi):
                lo, step = hi + 1, step * 2
                hi = min(Q_INDEXES - 1, hi + step)
            hi = min(hi, Q_INDEXES - 1)
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(mid):
                hi = mid
            else:
                lo = mid + 1
        lo = min(lo, Q_INDEXES - 1)  # nothing fits: the coarsest step (a start at the coarsest overshoots by one)
        self._rate_hint = lo
        levels = len(self.levels)
        sym = self._symbols(y, lo)
        per_level = self._level_bytes(sym)
        while levels > 1 and self._packet_total(per_level[:levels]) > max_bytes:
            levels -= 1
        return lo, levels, sym, per_level

    def _packet_total(self, per_level: np.ndarray) -> float:
        groups = np.where(per_level > 0, np.maximum(1, np.ceil(per_level / self._room)), 0)
        # each extra group repeats header and side information; 2 bytes of word padding each
        return float(per_level.sum() + (groups - 1).sum() * 24 + groups.sum() * 2)

    def _estimate(self, y: np.ndarray, rate_index: int) -> float:
        return self._packet_total(self._level_bytes(self._symbols(y, rate_index)))

    def _encode_level(self, sym: np.ndarray, grid: tuple[int, int], level: int, sent: int, kept: int,
                      rate_index: int, est: float, min_groups: int, prefix: bytes,
                      version: int | None = None, part: np.ndarray | None = None) -> list[bytes]:
        """One level's payloads; ``part`` (a region map's inside or outside, its map in
        ``prefix``): only the positions of each lattice group that lie in it."""
        h, w = grid
        version = self.version if version is None else version
        n_pos = sym.shape[1] if part is None else int(part.sum())
        groups = self._groups_at_least(int(min(n_pos, MAX_GROUPS, max(min_groups, np.ceil(est / self._room)))), h, w)
        while True:
            out = []
            for g in range(groups):
                pos = group_positions(h, w, g, groups)
                body = prefix + encode_group(sym[:, pos if part is None else pos[part[pos]]])
                head = PayloadHeader(level, sent, kept, g, groups, rate_index, part is not None)
                out.append(head.pack(_crc16(head.pack(0, version) + body), version) + body)
            if all(len(p) <= self.max_payload for p in out) or groups >= min(n_pos, MAX_GROUPS):
                return out
            groups = self._groups_at_least(groups + 1, h, w)

    def encode(self, frame_bgr: np.ndarray, max_bytes: int, roi: RoiMap | None = None) -> list[bytes]:
        """BGR frame -> payloads in importance order, together at most ``max_bytes`` (when the
        budget allows level 0 at the coarsest step at all); ``roi``: a finer step there."""
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        y = self._analyse(frame_bgr)
        return self.encode_latent(y, self.latent_hw(frame_bgr.shape[1], frame_bgr.shape[0]), max_bytes, roi=roi)

    def encode_latent(self, y: np.ndarray, grid: tuple[int, int], max_bytes: int, prefix: bytes = b"",
                      roi: RoiMap | None = None) -> list[bytes]:
        """Latent ``(C, h*w)`` -> payloads of at most ``max_bytes`` together; ``prefix`` opens
        every payload's body (a P-frame's reference); ``roi``: see :meth:`_encode_roi`."""
        if roi is not None and self.bit_layers > 1:
            raise ValueError("region maps and bit layers cannot be combined yet")
        if self.bit_layers > 1:
            return self._encode_latent_layered(y, grid, max_bytes, prefix)
        if roi is not None:
            return self._encode_roi(y, grid, max_bytes, prefix, roi)
        rate, levels, sym, est = self.choose_rate(y, max_bytes - len(prefix) * 8)
        while True:
            payloads = self._encode_levels(sym, est, grid, rate, levels, prefix)
            if sum(map(len, payloads)) <= max_bytes or rate >= Q_INDEXES - 1:
                return payloads
            rate += 1  # the estimate was short: one step coarser
            sym = self._symbols(y, rate)
            est = self._level_bytes(sym)

    def _encode_levels(self, sym: np.ndarray, est: np.ndarray, grid: tuple[int, int], rate: int,
                       levels: int, prefix: bytes = b"") -> list[bytes]:
        nonzero = [lv for lv in range(levels) if est[lv] > 0]
        sent = max(nonzero, default=0) + 1  # level 0 is always sent: it carries the frame's header
        payloads: list[bytes] = []
        for lv in range(sent):
            # the first levels go out in MIN_GROUPS payloads or more (see there)
            payloads += self._encode_level(sym[self.levels[lv]], grid, lv, sent, levels, rate, est[lv],
                                           MIN_GROUPS[lv] if lv < len(MIN_GROUPS) else 1, prefix)
        return payloads

    # --- encode in bit layers (.bitlayers) ------------------------------------------------
    def _encode_latent_layered(self, y: np.ndarray, grid: tuple[int, int], max_bytes: int,
                               prefix: bytes) -> list[bytes]:
        """:meth:`encode_latent` in ``bit_layers`` layers: the finest step whose layered
        payloads fit ``max_bytes`` together (the coarsest when none does).  The search starts
        where the plain payloads would fit ~15 % less (the layers' extra side information and
        the refinement planes' signs) and walks one step at a time."""
        rate, levels, sym, _ = self.choose_rate(y, max(1, int(max_bytes / 1.15) - len(prefix) * 8))
        payloads = self._encode_layers(sym, grid, rate, levels, prefix)
        step = 1 if sum(map(len, payloads)) > max_bytes else -1  # coarser until it fits, or finer while it does
        while 0 <= rate + step < Q_INDEXES:
            trial = self._encode_layers(self._symbols(y, rate + step), grid, rate + step, levels, prefix)
            fits = sum(map(len, trial)) <= max_bytes
            if step < 0 and not fits:
                break
            rate, payloads = rate + step, trial
            if step > 0 and fits:
                break
        return payloads

    def _encode_layers(self, sym: np.ndarray, grid: tuple[int, int], rate: int, levels: int,
                       prefix: bytes) -> list[bytes]:
        """Symbols -> every layer's payloads, layer 0 (all levels) first.  The coarse index is
        spread over lattice groups as plain symbols are; a lost refinement only coarsens its
        positions, so a refinement goes in as few payloads as fit."""
        version = LAYERED_VERSION[self.version]
        out: list[bytes] = []
        for layer, plane in enumerate(split_layers(sym, self.bit_layers)):
            est = self._level_bytes(plane)
            # "levels sent" per layer; level 0 always, as it carries the layer's header
            sent = max([lv for lv in range(levels) if est[lv] > 0], default=0) + 1
            lead = layer_byte(layer, self.bit_layers) + prefix
            for lv in range(sent):
                groups = (MIN_GROUPS[lv] if lv < len(MIN_GROUPS) else 1) if layer == 0 else 1
                out += self._encode_level(plane[self.levels[lv]], grid, lv, sent, levels, rate, est[lv], groups,
                                          lead, version)
        return out

    def _encode_roi(self, y: np.ndarray, grid: tuple[int, int], max_bytes: int, prefix: bytes,
                    roi: RoiMap) -> list[bytes]:
        """As :meth:`encode_latent` with the latent scaled up inside the region (its step
        ``roi.gain`` times finer; rate control then coarsens the rest to keep ``max_bytes``),
        each level's inside and outside positions in payloads of their own, inside first."""
        if any(x1 > grid[1] or y1 > grid[0] for _, _, x1, y1 in roi.rects):
            raise ValueError(f"region map {roi.rects} is off the {grid[1]}x{grid[0]} latent grid")
        inside = roi.cells(*grid)
        y = y.copy()
        y[:, inside] *= np.float32(roi.gain)
        heads = (prefix + roi.pack(True), prefix + roi.pack(False))
        # the map rides in every payload: about this many of them (a region adds a few per level)
        n_payloads = max_bytes / self._room + 2 * len(self.levels)
        rate, levels, _, _ = self.choose_rate(y, int(max_bytes - len(heads[0]) * n_payloads))
        encode = lambda r: self._encode_levels_roi(self._symbols(y, r), grid, r, levels, heads, inside)  # noqa: E731
        payloads = encode(rate)
        if sum(map(len, payloads)) > max_bytes:  # the estimate was short: coarser until it fits
            while sum(map(len, payloads)) > max_bytes and rate < Q_INDEXES - 1:
                rate += 1
                payloads = encode(rate)
            return payloads
        # ... or long (by up to ~10 %): finer while it fits, first by the index the shortfall
        # predicts (the size goes about as 1/q, 16 indexes an octave), then one at a time
        used = sum(map(len, payloads))
        step = max(1, round(16 * np.log2(max_bytes / max(used, 1))))
        for _ in range(3):
            finer = encode(max(rate - step, 0)) if rate > 0 else None
            if finer is None or sum(map(len, finer)) > max_bytes:
                if step == 1:
                    break
                step = 1
                continue
            rate, payloads, step = max(rate - step, 0), finer, 1
        return payloads

    def _encode_levels_roi(self, sym: np.ndarray, grid: tuple[int, int], rate: int, levels: int,
                           heads: tuple[bytes, bytes], inside: np.ndarray) -> list[bytes]:
        parts = [(inside, heads[0]), (~inside, heads[1])]
        est = [self._level_bytes(sym[:, part]) for part, _ in parts]
        sent = max([lv for lv in range(levels) if est[0][lv] > 0 or est[1][lv] > 0], default=0) + 1
        payloads: list[bytes] = []
        for lv in range(sent):
            for (part, prefix), e in zip(parts, est):
                if part.any():  # an all-zero part still goes out (one payload): it is known, not erased
                    min_groups = (MIN_GROUPS[lv] if lv < len(MIN_GROUPS) else 1) if e[lv] > 0 else 1
                    payloads += self._encode_level(sym[self.levels[lv]], grid, lv, sent, levels, rate, e[lv],
                                                   min_groups, prefix, part=part)
        return payloads

    # --- decode ---------------------------------------------------------------------------
    def decode(self, payloads: Sequence[bytes | None], width: int, height: int) -> np.ndarray:
        """Payloads (``None`` or damaged ones are erasures) -> BGR uint8 frame."""
        with torch.inference_mode():
            x4 = self.decode_s2d(payloads, width, height)
            x4 = (x4.float().clamp_(0, 1) * 255).round_().byte().cpu().numpy()
        return np.ascontiguousarray(s2d_to_bgr(x4, width, height))

    def decode_s2d(self, payloads: Sequence[bytes | None], width: int, height: int,
                   prefix_len: int = 0, context: torch.Tensor | None = None) -> torch.Tensor:
        """Payloads -> the synthesis output ``(48, H'/4, W'/4)`` (padded size, not clamped),
        each payload's first ``prefix_len`` body bytes skipped; ``context`` ``(1, 3, H, W)``:
        the picture a conditional model's decoder reads (a P-frame's prediction)."""
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        h, w = self.latent_hw(width, height)
        if self._layered_frame(payloads):
            coef, received, q = self._dequantize_layered(payloads, h, w, prefix_len)
        else:
            coef, received, q = self._dequantize(payloads, h, w, prefix_len)
        c = self.model.cfg.channels
        y = torch.from_numpy(coef.reshape(1, c, h, w)).to(self.device).contiguous(memory_format=torch.channels_last)
        m = torch.from_numpy(received.reshape(1, -1, h, w)).to(self.device).contiguous(memory_format=torch.channels_last)
        ctx = None
        if context is not None and self.model.cfg.context:
            ctx = F.pad(context.to(self.device), (0, w * STRIDE - width, 0, h * STRIDE - height), mode="replicate")
            ctx = F.pixel_unshuffle(ctx, 4).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            return self.model.synthesise_s2d(y, m, q, ctx)[0]

    def _dequantize(self, payloads: Sequence[bytes | None], h: int, w: int,
                    prefix_len: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Plain payloads -> (dequantized latent ``(C, h*w)``, per-level mask ``(K, h*w)``, step q)."""
        n_pos = h * w
        c = self.model.cfg.channels
        coef = np.zeros((c, n_pos), dtype=np.float32)
        received = np.zeros((len(self.levels), n_pos), dtype=np.float32)
        rates: list[int] = []
        known_zero: tuple[int, int] | None = None
        region: RoiMap | None = None
        for p in payloads:
            if p is None:
                continue
            try:
                head, body = parse_payload(bytes(p), len(self.levels), self.version)
                sl = self.levels[head.level]
                roi, pos, body = _region_part(head, body, prefix_len, h, w)
                sym = decode_group(body, sl.stop - sl.start, len(pos))
            except (PayloadError, ValueError, RuntimeError):
                continue  # an unusable payload is an erasure
            region = region or roi
            known_zero = known_zero or (head.levels_sent, head.levels_kept)
            step = q_of_index(head.rate_index) * self._steps[sl]
            coef[sl][:, pos] = sym * step[:, None].astype(np.float32)
            received[head.level, pos] = 1.0
            rates.append(head.rate_index)
        if known_zero:
            received[known_zero[0]:known_zero[1]] = 1.0
        if region is not None:  # the encoder scaled the region's latent up (:mod:`.roi`)
            coef[:, region.cells(h, w)] /= np.float32(region.gain)
        return coef, received, q_of_index(int(np.median(rates))) if rates else q_of_index(64)

    def _layered_frame(self, payloads: Sequence[bytes | None]) -> bool:
        """Whether the frame was coded in bit layers: some intact payload says so (a damaged
        one whose first byte happens to read as a layered layout must not decide it)."""
        layered = LAYERED_VERSION[self.version]
        for p in payloads:
            if p is not None and len(p) and p[0] >> 4 == layered:
                try:
                    parse_payload(bytes(p), len(self.levels), layered)
                    return True
                except PayloadError:
                    continue
        return False

    def _dequantize_layered(self, payloads: Sequence[bytes | None], h: int, w: int,
                            prefix_len: int) -> tuple[np.ndarray, np.ndarray, float]:
        """:meth:`_dequantize` of bit-layered payloads (:mod:`.bitlayers`); the synthesis is told
        the step the coefficients were reconstructed at, on average."""
        acc = LayerPlanes([sl.stop - sl.start for sl in self.levels], h * w)
        rates: list[int] = []
        for p in payloads:
            if p is None:
                continue
            try:
                head, body = parse_payload(bytes(p), len(self.levels), LAYERED_VERSION[self.version])
                layer, layers = read_layer_byte(body[0] if body else 255)
                sl = self.levels[head.level]
                pos = group_positions(h, w, head.group, head.groups)
                sym = decode_group(body[1 + prefix_len:], sl.stop - sl.start, len(pos))
            except (PayloadError, ValueError, RuntimeError):
                continue  # an unusable payload is an erasure
            acc.add(layer, layers, head.level, sl, pos, sym, head.levels_sent, head.levels_kept)
            rates.append(head.rate_index)
        index, received, missing = acc.dequantize()
        rate = int(np.median(rates)) if rates else 64
        return index * (q_of_index(rate) * self._steps).astype(np.float32)[:, None], received, \
            q_of_index(rate + 16 * missing)
