"""Entropy model and coder of the rate-distortion codec: discretised Laplace, forward-adapted.

Every packet carries, for each latent channel it holds, a 5-bit index into :data:`SCALES`
(the Laplace scale ``b`` of that channel's quantized symbols within the packet, fitted by the
encoder).  Index 0 means "every symbol is zero": nothing else is sent for that channel.  The
decoder needs nothing outside the packet, so every packet decodes alone (no hyperprior, no
context from other packets).  The arithmetic is `constriction`'s range coder; the same model
gives the differentiable bit estimate used in training (:func:`laplace_bits`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import constriction
import numpy as np
import torch
from torch import Tensor

__all__ = ["SCALES", "SCALE_BITS", "MAX_SYMBOL", "laplace_bits", "fit_scale_index",
           "ideal_bits", "encode_symbols", "decode_symbols"]

SCALE_BITS = 5
# index 0 = all zero; 1..31 = Laplace scales from 0.06 to ~60, a factor 2**(1/3) apart
SCALES = np.array([0.0] + [0.06 * 2.0 ** (i / 3.0) for i in range(31)], dtype=np.float64)
MAX_SYMBOL = 1023  # symbols are clipped to +-MAX_SYMBOL (a value that far out is never optimal)
_MIN_SCALE = 0.04


def laplace_bits(u: Tensor, scale: Tensor) -> Tensor:
    """Bits of each value of ``u`` under a unit-bin discretised zero-mean Laplace(scale).

    Differentiable in ``u`` and ``scale``; ``u`` is the noisy (training) or rounded symbol."""
    b = scale.clamp_min(_MIN_SCALE)
    a = u.abs()
    # P(|u| bin) = F(a + 1/2) - F(a - 1/2); for a >= 1/2 this is sinh(1/(2b)) * exp(-a/b);
    # inside the zero bin it is 1 - exp(-1/(2b)) (for the rounded centre) blended smoothly
    upper = torch.exp(-(a + 0.5) / b)
    lower = torch.where(a >= 0.5, torch.exp(-(a - 0.5) / b), 2.0 - torch.exp((a - 0.5) / b))
    p = 0.5 * (lower - upper)
    return -torch.log2(p.clamp_min(1e-9))


def fit_scale_index(symbols: np.ndarray) -> np.ndarray:
    """Per row of ``symbols`` (rows = channels), the index of the best Laplace scale.

    The maximum-likelihood scale of a Laplace is the mean absolute value; the nearest table
    entry (in log) is close enough (the exact search costs more time than it saves bits)."""
    s = np.abs(symbols).astype(np.float64)
    nonzero = s.max(axis=1) > 0
    mean_abs = np.maximum(s.mean(axis=1), SCALES[1])
    idx = np.clip(np.round(np.log2(mean_abs / SCALES[1]) * 3.0) + 1, 1, len(SCALES) - 1).astype(np.int64)
    return np.where(nonzero, idx, 0)


def ideal_bits(symbols: np.ndarray, scale_idx: np.ndarray) -> float:
    """Ideal code length (bits) of ``symbols`` (channels x n) under their scale indexes."""
    used = scale_idx > 0
    if not used.any():
        return 0.0
    s = symbols[used].astype(np.float64)
    b = SCALES[scale_idx[used]][:, None]
    a = np.abs(s)
    p = np.where(a >= 0.5, np.sinh(0.5 / b) * np.exp(-a / b), 1.0 - np.exp(-0.5 / b))
    return float(-np.log2(np.maximum(p, 1e-12)).sum())


@lru_cache(maxsize=None)
def _model(scale_index: int) -> constriction.stream.model.Categorical:
    """Lookup-table model of scale ``scale_index`` over symbols -MAX_SYMBOL..MAX_SYMBOL (shifted
    to 0..2*MAX_SYMBOL).  A table is ~8x faster to code than constriction's parametric
    Laplace, which evaluates the CDF per symbol; the probabilities are the same."""
    a = np.abs(np.arange(-MAX_SYMBOL, MAX_SYMBOL + 1, dtype=np.float64))
    b = SCALES[scale_index]
    p = np.where(a >= 0.5, np.sinh(0.5 / b) * np.exp(-a / b), 1.0 - np.exp(-0.5 / b))
    return constriction.stream.model.Categorical(p / p.sum(), perfect=False)


def _runs(scale_idx: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Channels that share a scale, coded as one run each, in increasing scale order."""
    return [(int(s), np.flatnonzero(scale_idx == s)) for s in np.unique(scale_idx) if s > 0]


def encode_symbols(symbols: np.ndarray, scale_idx: np.ndarray) -> bytes:
    """Range-code ``symbols`` (channels x n int) with per-channel scale indexes.

    Channels with index 0 are not coded (they must be all zero)."""
    enc = constriction.stream.queue.RangeEncoder()
    for s, chans in _runs(scale_idx):
        sym = np.clip(symbols[chans], -MAX_SYMBOL, MAX_SYMBOL).astype(np.int32).ravel() + MAX_SYMBOL
        enc.encode(sym, _model(s))
    return enc.get_compressed().tobytes() if scale_idx.any() else b""


def decode_symbols(data: bytes, scale_idx: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`encode_symbols`: ``(channels, n)`` int32 symbols.

    Raises ``ValueError`` on data that is not a whole number of 32-bit words; garbage of the
    right length decodes to some symbols (the payload's checksum is the guard against it)."""
    out = np.zeros((len(scale_idx), n), dtype=np.int32)
    if not scale_idx.any():
        return out
    if len(data) % 4 or not data:
        raise ValueError(f"range-coded data must be whole 32-bit words, got {len(data)} bytes")
    dec = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype=np.uint32).copy())
    for s, chans in _runs(scale_idx):
        out[chans] = dec.decode(_model(s), len(chans) * n).reshape(len(chans), n) - MAX_SYMBOL
    return out


def bits_to_bytes(bits: float) -> int:
    """Bytes a range coder of 32-bit words needs for ``bits`` (rounded up to whole words)."""
    return 4 * math.ceil(bits / 32.0) if bits > 0 else 0
