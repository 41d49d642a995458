"""Predicted frames: motion-compensated residual coding in the same self-contained payloads.

A frame is either *intra* (the still-image codec, :class:`.packet_codec.PacketCodec`, payload
layout 2) or *predicted* from a reference frame that both ends hold, named by how many frames
back it is (``ref_back``, 1..255).  A predicted frame is

* **motion payloads** (layout 4, level 0, the most important): the frame's affine camera model
  (six integers, in every motion payload) and, on a lattice of patch positions, each patch's
  deviation from it (:mod:`.motion`);
* **residual payloads** (layout 3): the difference between the frame and the motion-compensated
  reference, coded by a second rate-distortion model (trained on such residuals) exactly as
  intra frames are coded: importance levels, lattice groups, skip flags.

Every payload decodes alone: a lost motion payload's patches take the mean of their received
neighbours' vectors (the affine model's where none arrived); a lost residual payload is an
erasure the residual model's decoder fills (where nothing of the residual arrives the picture
is the motion-compensated reference, which is what concealment would show anyway).

Decoding is deterministic for the same payloads, reference and machine: the sender decodes its
own payloads (or, after feedback, exactly the ones that arrived) to hold the receiver's
reference bit for bit (:mod:`jscc_stream.sender.references`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from . import motion
from .bitlayers import LAYERED_VERSION
from .entropy import decode_group, encode_group
from .roi import RoiMap, priority
from .packet_codec import (HEADER, PacketCodec, PayloadError, PayloadHeader, _crc16, group_positions, lattice,
                           parse_payload, s2d_to_bgr)

__all__ = ["VideoCodec", "FrameInfo", "INTRA_VERSION", "RESIDUAL_VERSION", "MOTION_VERSION"]

INTRA_VERSION, RESIDUAL_VERSION, MOTION_VERSION = 2, 3, 4
# bit-layered intra and residual payloads (.bitlayers): a layer byte before the body
LAYERED_INTRA, LAYERED_RESIDUAL = LAYERED_VERSION[INTRA_VERSION], LAYERED_VERSION[RESIDUAL_VERSION]
MOTION_GROUPS = 4  # motion payloads per predicted frame (a lattice, as level 0's residual)
# a prediction this poor (PSNR, dB) is a scene cut: the frame is coded intra.  Measured at
# 320x240 on the comparison's sources: cuts predict at 6-13 dB, everything else at 20 dB or more
SCENE_CUT_DB = 16.0
_REF = struct.Struct("<B")
_AFFINE = struct.Struct("<6h")


@dataclass(frozen=True)
class FrameInfo:
    """What a payload says of its frame: predicted or not, and from how far back."""

    predicted: bool
    ref_back: int  # 0 for an intra frame


def frame_info(payload: bytes) -> FrameInfo:
    """The frame type a payload belongs to (from its first bytes; not checksummed here)."""
    version = payload[0] >> 4 if payload else 0
    at = HEADER.size + (version == LAYERED_RESIDUAL)
    if version in (RESIDUAL_VERSION, MOTION_VERSION, LAYERED_RESIDUAL) and len(payload) > at:
        return FrameInfo(True, payload[at])
    return FrameInfo(False, 0)


class VideoCodec:
    """Intra frames with one :class:`PacketCodec`, predicted frames' residuals with another."""

    entropy_coded = True
    predicted_frames = True

    def __init__(self, intra: PacketCodec, inter: PacketCodec, card: dict[str, Any] | None = None) -> None:
        if intra.levels != inter.levels:
            raise ValueError("intra and inter models must have the same importance levels")
        self.intra, self.inter = intra, inter
        inter.version = RESIDUAL_VERSION
        inter.prefix_len = _REF.size
        self.card = card or inter.card
        self.name = self.card.get("name", inter.name)
        self.levels = intra.levels
        self.device = intra.device

    # --- what the daemons ask (as PacketCodec) -------------------------------------------
    @property
    def sha256(self) -> str:
        return self.card.get("sha256", "")

    def layout(self, width: int, height: int):
        return self.intra.layout(width, height)

    def max_frame_payloads(self, width: int, height: int) -> int:
        return self.intra.max_frame_payloads(width, height) + MOTION_GROUPS

    def payload_levels(self, payloads: Sequence[bytes]) -> list[int]:
        return [priority(p, _REF.size if p[0] >> 4 == RESIDUAL_VERSION else 0) for p in payloads]

    def payload_layers(self, payloads: Sequence[bytes]) -> list[int]:
        return self.intra.payload_layers(payloads)

    @property
    def bit_layers(self) -> int:
        """Bit layers of intra frames and residuals alike (:mod:`.bitlayers`; motion is never split)."""
        return self.intra.bit_layers

    @bit_layers.setter
    def bit_layers(self, layers: int) -> None:
        self.intra.bit_layers = self.inter.bit_layers = layers

    latent_hw = staticmethod(PacketCodec.latent_hw)

    def payload_ok(self, payload: bytes) -> bool:
        """Whether a payload is intact (its checksum holds): damaged ones are erasures, and a
        receipt must not count them as used."""
        version = payload[0] >> 4 if payload else 0
        levels = 1 if version == MOTION_VERSION else len(self.levels)
        try:
            parse_payload(bytes(payload), levels, version if version in (RESIDUAL_VERSION, MOTION_VERSION,
                                                                         LAYERED_INTRA, LAYERED_RESIDUAL)
                          else INTRA_VERSION)
        except PayloadError:
            return False
        return True

    def frame_info(self, payloads: Sequence[bytes | None]) -> FrameInfo:
        """Intra or predicted (and from how far back), from the frame's intact payloads."""
        for p in payloads:
            if p is not None and self.payload_ok(p):
                return frame_info(p)
        return FrameInfo(False, 0)

    # --- encode ---------------------------------------------------------------------------
    def encode(self, frame_bgr: np.ndarray, max_bytes: int, ref: np.ndarray | None = None,
               ref_back: int = 0, roi: RoiMap | None = None) -> list[bytes]:
        """An intra frame when ``ref`` is None or the prediction fails (a scene cut), else a
        frame predicted from ``ref`` (the decoded frame ``ref_back`` frames back, exactly as the
        receiver holds it); :meth:`frame_info` of the payloads says which.  ``roi``: a finer
        step there, in the intra frame or the residual (:mod:`.roi`)."""
        if ref is None:
            return self.intra.encode(frame_bgr, max_bytes, roi)
        if not 1 <= ref_back <= 255:
            raise ValueError(f"ref_back must be 1..255, got {ref_back}")
        if ref.shape != frame_bgr.shape:
            raise ValueError(f"reference {ref.shape} and frame {frame_bgr.shape} differ in size")
        height, width = frame_bgr.shape[:2]
        grid = self.latent_hw(width, height)
        params, vectors, pred = motion.choose_vectors(frame_bgr, ref, grid)
        motion_payloads = self._encode_motion(params, vectors, grid, ref_back)
        diff = frame_bgr.astype(np.float32) - pred
        mse = float(np.mean(diff * diff))
        if 10 * np.log10(255.0 ** 2 / max(mse, 1e-6)) < SCENE_CUT_DB:
            return self.intra.encode(frame_bgr, max_bytes, roi)
        y = self.inter.analyse_rgb(self._residual_tensor(diff))
        room = max(1, max_bytes - sum(map(len, motion_payloads)))
        return motion_payloads + self.inter.encode_latent(y, grid, room, _REF.pack(ref_back), roi)

    def _residual_tensor(self, diff_bgr: np.ndarray) -> torch.Tensor:
        """0.5 + (frame - prediction) / 255, RGB ``(1, 3, H, W)``: the residual model's input."""
        rgb = np.ascontiguousarray(diff_bgr[..., ::-1].transpose(2, 0, 1))
        return torch.from_numpy(rgb)[None].to(self.device).mul_(1 / 255).add_(0.5)

    def _encode_motion(self, params: np.ndarray, vectors: np.ndarray, grid: tuple[int, int],
                       ref_back: int) -> list[bytes]:
        h, w = grid
        dev = (vectors - motion.affine_vectors(params, grid)).reshape(2, -1)
        groups = MOTION_GROUPS
        while groups > 1 and (groups > h * w or lattice(groups, h, w) is None):
            groups -= 1
        head_extra = _REF.pack(ref_back) + _AFFINE.pack(*(int(p) for p in params))
        out = []
        for g in range(groups):
            body = head_extra + encode_group(dev[:, group_positions(h, w, g, groups)])
            head = PayloadHeader(0, 1, 1, g, groups, 0)
            out.append(head.pack(_crc16(head.pack(0, MOTION_VERSION) + body), MOTION_VERSION) + body)
        return out

    # --- decode ---------------------------------------------------------------------------
    def decode(self, payloads: Sequence[bytes | None], width: int, height: int,
               ref: np.ndarray | None = None) -> np.ndarray:
        """Payloads (``None`` = lost) -> BGR uint8 frame; a predicted frame needs ``ref``, the
        frame its payloads name (:class:`PayloadError` without it)."""
        got = [p for p in payloads if p is not None]
        if not any(frame_info(p).predicted for p in got):
            return self.intra.decode(payloads, width, height)
        if ref is None:
            raise PayloadError("a predicted frame needs its reference frame")
        if ref.shape != (height, width, 3):
            raise PayloadError(f"reference {ref.shape} does not match a {width}x{height} frame")
        grid = self.latent_hw(width, height)
        vectors = self._decode_motion([p for p in got if p[0] >> 4 == MOTION_VERSION], grid)
        pred = motion.predict(ref, vectors)
        residual = [p for p in got if p[0] >> 4 in (RESIDUAL_VERSION, LAYERED_RESIDUAL)]
        with torch.inference_mode():
            context = None
            if self.inter.model.cfg.context:  # a conditional model reads the prediction too
                context = torch.from_numpy(np.ascontiguousarray(pred[..., ::-1].transpose(2, 0, 1)))[None].div_(255)
            x4 = self.inter.decode_s2d(residual, width, height, prefix_len=_REF.size, context=context)
            res = s2d_to_bgr(x4.float().cpu().numpy(), width, height)
        out = cv2.scaleAdd(res, 255.0, pred - 127.5)  # pred + (res - 0.5) * 255
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def _decode_motion(self, payloads: list[bytes], grid: tuple[int, int]) -> np.ndarray:
        h, w = grid
        dev = np.zeros((2, h * w), dtype=np.int32)
        known = np.zeros(h * w, dtype=bool)
        params = None
        for p in payloads:
            try:
                head, body = parse_payload(bytes(p), 1, MOTION_VERSION)
                if len(body) < _REF.size + _AFFINE.size:
                    raise PayloadError("motion payload too short")
                pos = group_positions(h, w, head.group, head.groups)
                dev[:, pos] = decode_group(body[_REF.size + _AFFINE.size:], 2, len(pos))
            except (PayloadError, ValueError, RuntimeError):
                continue
            params = params if params is not None else np.array(_AFFINE.unpack_from(body, _REF.size))
            known[pos] = True
        if params is None:
            return np.zeros((2, h, w), dtype=np.int32)  # no motion arrived: assume none
        model = motion.affine_vectors(params, grid)
        vectors = model + dev.reshape(2, h, w)
        return motion.conceal_vectors(vectors, known.reshape(h, w), model)

