"""Picture quality and timing statistics: PSNR (images and tensor batches) and percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["psnr", "psnr_batch", "percentile", "PSNR_IDENTICAL_DB"]

#: What ``psnr`` reports for two identical images (the MSE is 0, the PSNR infinite).
PSNR_IDENTICAL_DB = 99.0


def _db(peak: float, mse: float) -> float:
    return 10.0 * math.log10(peak * peak / mse)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0, identical_db: float = PSNR_IDENTICAL_DB) -> float:
    """PSNR in dB of two images of one shape (8-bit range by default); ``identical_db`` when equal."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return identical_db if mse == 0 else _db(peak, mse)


def psnr_batch(x: Any, y: Any, round_to_8bit: bool = False, min_mse: float = 1e-10) -> Any:
    """Per-image PSNR (dB) of torch batches ``(N, C, H, W)`` in [0, 1] -> tensor ``(N,)``.

    ``x`` is clamped to [0, 1] (and rounded to 8-bit levels with ``round_to_8bit``, as a
    displayed frame would be); the MSE is floored at ``min_mse``."""
    x = x.clamp(0, 1)
    if round_to_8bit:
        x = (x * 255).round() / 255
    mse = ((x - y) ** 2).flatten(1).mean(1)
    return -10 * mse.clamp_min(min_mse).log10()


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile ``p`` (0..100) of ``values``; None when there are none."""
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))]
