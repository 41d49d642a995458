"""Analog JSCC over an AWGN channel (paper 002): a small conv autoencoder whose latent is sent as
real values, and the paper's three training objectives.

* ``ae``   the latent is power-normalised, sent, and the noisy values decoded (MSE only, eq. 12);
* ``vae``  the encoder also gives a log-variance; the receiver resamples around what it got with
           that variance (reparameterised) and the loss adds KL(N(mu, s^2) || N(0, 1)) (eq. 11);
* ``vscc`` as vae, but the KL is the paper's channel-matching term (eq. 9/10):
           KL(N(mu, s^2 + sigma_n^2) || N(0, sigma_n^2 + d)) with the channel matching constant d.

What changes from the paper to fit a power-constrained PHY: the means are scaled to unit average
power per image before the channel (so the channel's SNR is the real SNR), and the mean and
log-variance are those of the transmitted, normalised symbol.  Only the means travel (the paper's
"fixed variance" test, Fig. 6c): the receiver resamples with the training set's average variance
per channel (``kb_var``, the paper's knowledge base) when it is not training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["OBJECTIVES", "AnalogConfig", "AnalogCodec", "kl_gauss", "kl_terms", "objective_loss",
           "normalize_power", "awgn", "gaussian_like"]

OBJECTIVES = ("ae", "vae", "vscc")
LOGVAR_RANGE = (-12.0, 6.0)  # keeps exp() finite in the first steps


@dataclass(frozen=True)
class AnalogConfig:
    """A conv autoencoder with stride 4: ``channels`` real values per 4x4x3 pixels, i.e. a
    bandwidth ratio k/n = channels / 48."""

    channels: int = 4
    width: int = 64
    objective: str = "ae"
    arch: str = "analog-conv4"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not 1 <= self.channels <= 64 or not 4 <= self.width <= 512:
            raise ValueError(f"channels must be in 1..64 and width in 4..512, got {self.channels}, {self.width}")

    @property
    def stride(self) -> int:
        return 4

    @property
    def bandwidth_ratio(self) -> float:
        return self.channels / (3 * self.stride ** 2)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AnalogConfig":
        return cls(**{k: d[k] for k in ("channels", "width", "objective", "arch") if k in d})


def normalize_power(mu: torch.Tensor) -> torch.Tensor:
    """Each image's latent scaled to unit average power per real value (batch ``(N, ...)``)."""
    power = mu.pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return mu / power.sqrt().view(-1, *([1] * (mu.dim() - 1)))


def awgn(x: torch.Tensor, noise_var: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` plus N(0, noise_var) noise (the channel of :class:`jscc_stream.netem.awgn.AwgnChannel`)."""
    return x + gaussian_like(x, generator) * noise_var ** 0.5


def gaussian_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """N(0, 1) of ``x``'s shape on ``x``'s device, drawn from ``generator`` (any device) when given."""
    dev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)


def kl_gauss(mu: torch.Tensor, var_p: torch.Tensor, var_q: torch.Tensor | float) -> torch.Tensor:
    """Element-wise KL(N(mu, var_p) || N(0, var_q)) in closed form (nats)."""
    var_q = torch.as_tensor(var_q, dtype=var_p.dtype, device=var_p.device)
    return 0.5 * (torch.log(var_q / var_p) + (mu * mu + var_p) / var_q - 1.0)


def kl_terms(objective: str, mu: torch.Tensor, logvar: torch.Tensor | None, noise_var: float,
             cmc: float) -> torch.Tensor | None:
    """The objective's KL per latent element: None for ``ae``; eq. 11 for ``vae``; eq. 9 (prior
    variance ``noise_var + cmc``, posterior variance ``s^2 + noise_var``) for ``vscc``."""
    if objective == "ae":
        return None
    if logvar is None:
        raise ValueError(f"objective {objective} needs the encoder's log-variance")
    var = logvar.exp()
    if objective == "vae":
        return kl_gauss(mu, var, 1.0)
    if objective == "vscc":
        if cmc <= 0:
            raise ValueError(f"the channel matching constant d must be positive, got {cmc}")
        return kl_gauss(mu, var + noise_var, noise_var + cmc)
    raise ValueError(f"unknown objective {objective!r}")


def objective_loss(x: torch.Tensor, x_hat: torch.Tensor, kl: torch.Tensor | None,
                   kl_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """MSE plus ``kl_weight`` times the mean KL per latent element; and its parts for the log."""
    mse = torch.mean((x_hat.float() - x) ** 2)
    if kl is None:
        return mse, {"mse": mse.item(), "kl": 0.0}
    kl_mean = kl.float().mean()
    return mse + kl_weight * kl_mean, {"mse": mse.item(), "kl": kl_mean.item()}


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, k // 2)


def _up(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 5, 2, 2, output_padding=1)


class AnalogCodec(nn.Module):
    """Encoder -> (mean, log-variance) -> unit power -> channel -> resampling -> decoder."""

    def __init__(self, cfg: AnalogConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, c = cfg.width, cfg.channels
        out = c if cfg.objective == "ae" else 2 * c
        self.encoder = nn.Sequential(_conv(3, w // 2, 5, 2), nn.PReLU(w // 2), _conv(w // 2, w, 5, 2), nn.PReLU(w),
                                     _conv(w, w, 3), nn.PReLU(w), _conv(w, out, 3))
        self.decoder = nn.Sequential(_conv(c, w, 3), nn.PReLU(w), _conv(w, w, 3), nn.PReLU(w),
                                     _up(w, w // 2), nn.PReLU(w // 2), _up(w // 2, 3), nn.Sigmoid())
        if self.variational:  # start near the AE (small resampling noise); the KL raises it as it must
            nn.init.constant_(self.encoder[-1].bias[c:], -4.0)
        # the knowledge base's variance per channel: the training set's average s^2 (set after training)
        self.register_buffer("kb_var", torch.zeros(c))

    @property
    def variational(self) -> bool:
        return self.cfg.objective != "ae"

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def latent_hw(self, height: int, width: int) -> tuple[int, int]:
        s = self.cfg.stride
        return -(-height // s), -(-width // s)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.latent_hw(*x.shape[-2:])
        s = self.cfg.stride
        return nn.functional.pad(x, (0, w * s - x.shape[-1], 0, h * s - x.shape[-2]), mode="replicate")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (N, 3, H, W) in [0, 1] -> (unit-power means, log-variances or None)."""
        y = self.encoder(self._pad(x) * 2 - 1)
        c = self.cfg.channels
        logvar = y[:, c:].clamp(*LOGVAR_RANGE) if self.variational else None
        return normalize_power(y[:, :c]), logvar

    def resample(self, z: torch.Tensor, logvar: torch.Tensor | None) -> torch.Tensor:
        """The receiver's reparameterised sample around the received ``z``: with the sender's
        variance in training, with the knowledge base's per-channel variance otherwise."""
        if not self.variational:
            return z
        var = logvar.exp() if logvar is not None else self.kb_var.view(1, -1, 1, 1).to(z.dtype)
        return z + torch.randn_like(z) * var.sqrt()

    def decode(self, z: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Received (resampled) latent -> images, cropped to ``size`` (H, W)."""
        out = self.decoder(z)
        return out if size is None else out[..., : size[0], : size[1]]

    def forward(self, x: torch.Tensor, noise_var: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Training pass: (reconstruction, unit-power means, log-variances)."""
        mu, logvar = self.encode(x)
        z = awgn(mu, noise_var)
        return self.decode(self.resample(z, logvar), x.shape[-2:]), mu, logvar

    @torch.no_grad()
    def transmit(self, x: torch.Tensor, noise_var: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Test pass (only means sent, knowledge-base resampling): reconstruction."""
        mu, _ = self.encode(x)
        z = awgn(mu, noise_var, generator)
        if self.variational:
            z = z + gaussian_like(z, generator) * self.kb_var.view(1, -1, 1, 1).sqrt()
        return self.decode(z, x.shape[-2:])
