"""An additive white Gaussian noise channel on power-normalised real values (analog JSCC, paper 002).

A radio PHY carrying analog JSCC symbols has an average power constraint, so a latent vector is
scaled to unit average power per real value before it is sent; the channel then adds
independent N(0, sigma^2) noise with ``sigma^2 = 10^(-SNR/10)``, which makes the SNR exactly the
ratio of signal power to noise power.  The same spec and numbers serve the shim
(``jscc-netem --awgn-snr-db``, numpy) and training/evaluation (``models/analog.py``, torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .loss import LossSpecError

__all__ = ["AwgnChannel", "parse_channel_spec", "normalize_power", "MIN_SNR_DB", "MAX_SNR_DB"]

#: The SNRs a spec may name: below -30 dB the noise is 1000x the signal, above 60 dB it is
#: below float16's resolution of a unit-power value (what the stream carries).
MIN_SNR_DB, MAX_SNR_DB = -30.0, 60.0


@dataclass(frozen=True)
class AwgnChannel:
    """AWGN at ``snr_db`` for unit-power inputs."""

    snr_db: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.snr_db) and MIN_SNR_DB <= self.snr_db <= MAX_SNR_DB):
            raise LossSpecError(f"AWGN SNR must be a number of dB in [{MIN_SNR_DB:g}, {MAX_SNR_DB:g}], "
                                f"got {self.snr_db}")

    @property
    def noise_var(self) -> float:
        """sigma^2 = 10^(-SNR/10): the noise power against a unit signal power."""
        return 10.0 ** (-self.snr_db / 10.0)

    @property
    def noise_std(self) -> float:
        return math.sqrt(self.noise_var)

    def add_noise(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``x`` (already unit power) plus N(0, sigma^2) noise, float32."""
        x = np.asarray(x, dtype=np.float32)
        return x + rng.normal(0.0, self.noise_std, size=x.shape).astype(np.float32)

    def __str__(self) -> str:
        return f"awgn:{self.snr_db:g}"


def parse_channel_spec(spec: str) -> AwgnChannel:
    """``awgn:SNR_DB`` (e.g. ``awgn:5``, ``awgn:-5``) -> :class:`AwgnChannel`."""
    kind, sep, arg = spec.strip().partition(":")
    if kind.lower() != "awgn" or not sep:
        raise LossSpecError(f"channel must be awgn:SNR_DB (e.g. awgn:5), got {spec!r}")
    try:
        snr = float(arg.strip().removesuffix("dB").removesuffix("db"))
    except ValueError:
        raise LossSpecError(f"channel awgn:SNR_DB needs a number of dB, got {arg!r}") from None
    return AwgnChannel(snr)


def normalize_power(x: np.ndarray) -> tuple[np.ndarray, float]:
    """(``x`` scaled to unit average power per real value, the scale applied).  An all-zero
    vector is returned as is (scale 1): there is no direction to scale."""
    x = np.asarray(x, dtype=np.float64)
    power = float(np.mean(x * x)) if x.size else 0.0
    scale = 1.0 / math.sqrt(power) if power > 0 else 1.0
    return x * scale, scale
