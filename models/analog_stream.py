"""The analog codec (paper 002) as a stream codec: BGR frames <-> ``(K, L)`` wire bytes that are
float16 latent values, so a noisy radio link (``jscc-netem --awgn-snr-db``) can perturb them.

Same interface as :class:`.frame_codec.FrameCodec` (``layout``, ``encode``, ``decode``), so the
sender, packetizer, reassembly and receiver carry it unchanged.  The layout reuses
:class:`LatentLayout` with one latent channel per block and ``alpha`` = 2 bytes per element;
the stream description says ``codec_kind = "analog-f16"`` so receivers and the shim know.
Lost bytes decode as 0 (the latent's mean); there is no erasure mask inside this model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from jscc_stream.proto.description import ANALOG_F16, LatentLayout

from .analog import AnalogCodec, gaussian_like
from .frame_codec import bgr_tensor, check_wire, to_bgr

__all__ = ["AnalogFrameCodec", "ANALOG_KIND", "WIRE_DTYPE"]

ANALOG_KIND = ANALOG_F16
WIRE_DTYPE = np.dtype("<f2")


class AnalogFrameCodec:
    """Wraps an :class:`AnalogCodec` for the streaming path."""

    kind = ANALOG_KIND

    def __init__(self, model: AnalogCodec, card: dict[str, Any] | None = None,
                 device: str | torch.device = "cpu", seed: int | None = None) -> None:
        self.device = torch.device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.card = card or {}
        self.name = self.card.get("name", "unnamed")
        self.sha256 = self.card.get("sha256", "")
        self._gen = torch.Generator().manual_seed(seed if seed is not None else 0)

    def layout(self, width: int, height: int) -> LatentLayout:
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        h, w = self.model.latent_hw(height, width)
        return LatentLayout(width, height, self.model.cfg.channels, WIRE_DTYPE.itemsize, h, w, 8, False)

    @torch.inference_mode()
    def encode(self, frame_bgr: np.ndarray) -> np.ndarray:
        """BGR frame -> ``(K, L)`` uint8: channel k's unit-power means as little-endian float16."""
        mu, _ = self.model.encode(bgr_tensor(frame_bgr, self.device))
        values = mu[0].float().cpu().numpy().astype(WIRE_DTYPE)
        return np.ascontiguousarray(values.reshape(values.shape[0], -1)).view(np.uint8)

    @torch.inference_mode()
    def decode(self, wire: np.ndarray, received: np.ndarray | None, width: int, height: int) -> np.ndarray:
        """``(K, L)`` wire bytes (+ which arrived) -> BGR frame; VAE/VSCC models resample first."""
        lay = self.layout(width, height)
        check_wire(lay, wire)
        values = np.ascontiguousarray(wire, dtype=np.uint8).view(WIRE_DTYPE).astype(np.float32)
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)  # a corrupted value is no signal
        if received is not None:
            got = np.asarray(received, dtype=bool).reshape(lay.blocks, -1, 2).all(-1)
            values = np.where(got, values, 0.0)
        z = torch.from_numpy(values.reshape(1, lay.blocks, lay.h, lay.w)).to(self.device)
        if self.model.variational:
            z = z + gaussian_like(z, self._gen) * self.model.kb_var.view(1, -1, 1, 1).sqrt()
        return to_bgr(self.model.decode(z, (height, width))[0])
