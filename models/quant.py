"""Uniform quantization of the [0, 1] latent (paper 000, Remark III.3: inference only)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["quantize", "dequantize", "check_bits"]


def check_bits(bits: int) -> int:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"quantization bits must be an integer in 2..8, got {bits!r}")
    return bits


def quantize(latent: torch.Tensor, bits: int = 8) -> np.ndarray:
    """[0, 1] float latent -> uint8 levels 0..2^bits-1 (one element per byte)."""
    levels = (1 << check_bits(bits)) - 1
    q = torch.round(latent.detach().clamp(0, 1) * levels)
    return q.to(torch.uint8).cpu().numpy()


def dequantize(codes: np.ndarray, bits: int = 8) -> np.ndarray:
    """uint8 levels -> float32 values in [0, 1]."""
    levels = (1 << check_bits(bits)) - 1
    if codes.dtype != np.uint8:
        raise TypeError(f"codes must be uint8, got {codes.dtype}")
    if codes.size and int(codes.max()) > levels:
        raise ValueError(f"code {int(codes.max())} exceeds {levels} for {bits}-bit quantization")
    return codes.astype(np.float32) / levels
