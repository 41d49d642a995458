"""The rate-distortion codec's networks: a KLT-initialised transform with a learned entropy cost.

Analysis: a linear 16x16 patch transform (initialised from a KLT of photographs, channels in
decreasing variance) plus a small zero-initialised CNN correction, to ``C`` channels at H/16.
Quantization: ``u = y / (q * step_c)``, rounded; ``q`` is the one rate knob (rate control picks
it per frame), ``step_c`` a learned per-channel multiplier.  Channels are grouped into ``K``
importance levels (contiguous channel ranges: level 0 holds the DCs).

Synthesis (erasure-aware): the decoder gets the dequantized latent with every erased element
set to 0 (the coefficient's mean) and the mask of what arrived, one channel per level
(paper 000's placeholder + mask; with signed zero-mean coefficients the placeholder is 0, and
the mask, not the value, marks the erasure).  A latent-domain CNN conditioned on the mask
and on ``log2 q`` (MCA, paper 001) fills and refines the latent; an overlapping (3x3-tap)
linear synthesis paints pixels; a CNN at H/4 refines them.  Expensive layers stay at low
resolution so a 640x480 frame decodes in tens of milliseconds on one CPU core.

``forward`` is the training path (noise proxy for the rate, straight-through rounding for the
distortion, erasures applied); ``analyse`` / ``synthesise`` are the inference path used by
:mod:`.packet_codec`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .entropy import laplace_bits

__all__ = ["RDConfig", "RDCodec", "RDOutput", "q_of_index", "Q_INDEXES", "DEADZONE", "STRIDE"]

STRIDE = 16
DEADZONE = 0.12  # rounding threshold 0.5 + DEADZONE: small values go to zero (cheaper)
Q_INDEXES = 128  # q = Q0 * 2 ** (index / 16): 16 steps per octave (~4 % in rate) over 8 octaves
Q0 = 0.01


def q_of_index(index: int | Tensor) -> float | Tensor:
    """Quantizer step of rate index ``index`` (0 = finest)."""
    return Q0 * 2.0 ** (index / 16.0)


def _synthesis_order() -> Tensor:
    """Synthesis output channel k -> index of the pixel (colour, row, column) in a 16x16 patch.

    Channel ``k = ((c*4 + ii)*4 + jj)*16 + di*4 + dj`` paints colour ``c`` at row
    ``4*di + ii``, column ``4*dj + jj``; a depth-to-space by 4 then yields 48 channels
    ``(c, ii, jj)`` at H/4 (``pixel_unshuffle(image, 4)``'s layout)."""
    c, ii, jj, di, dj = torch.meshgrid(*(torch.arange(n) for n in (3, 4, 4, 4, 4)), indexing="ij")
    return (c * 256 + (4 * di + ii) * 16 + (4 * dj + jj)).reshape(-1)


def fill_erased(y: Tensor, received: Tensor, passes: int = 2) -> Tensor:
    """Erased coefficients (received 0) filled with the weighted mean of their received neighbours
    (normalised convolution, 3x3 binomial kernel, ``passes`` times for wider holes); where no
    neighbour arrived they stay 0.  The CNN refines from there: it starts from a smooth guess
    instead of a grey hole, which the measured single-payload losses showed it could not learn
    to fill quickly (level-0 loss: -13 to -17 dB at 4,000 steps)."""
    y = y * received
    lossy = (received < 1).flatten(2).any(2).any(0).nonzero().flatten()  # only channels with holes
    if len(lossy) == 0:
        return y
    full = y
    y, received = y[:, lossy], received[:, lossy]
    c = y.shape[1]
    k = torch.tensor([1.0, 2.0, 1.0], dtype=y.dtype, device=y.device)
    kernel = (k[:, None] * k[None, :]).expand(c, 1, 3, 3)
    for _ in range(passes):
        num = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)
        den = F.conv2d(F.pad(received, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)
        have = den > 0.5
        y = torch.where(received > 0, y, torch.where(have, num / den.clamp_min(0.5), y))
        received = torch.where(have, torch.ones_like(received), received)
    full = full.clone()
    full[:, lossy] = y
    return full


@dataclass(frozen=True)
class RDConfig:
    """Architecture hyper-parameters; stored in every model card."""

    channels: int = 192
    # channels per importance level, in order; must sum to ``channels``
    levels: tuple[int, ...] = (4, 8, 12, 20, 36, 48, 64)
    latent_width: int = 96  # hidden channels of the latent-domain CNN
    pixel_width: int = 32  # hidden channels of the H/4 refinement CNN (0 = none)
    analysis_width: int = 0  # hidden channels of the analysis correction CNN (0 = linear only)
    # linear synthesis kernel in latent positions: 1 = each coefficient paints its own 16x16
    # patch (cheap); 3 = overlapping, also its 8 neighbours' (smoother, ~9x the multiplies)
    synthesis_taps: int = 1
    # channels of side information the H/4 refinement CNN also reads: 48 for a predicted
    # frame's residual model, which then sees the prediction (its 4x4 space-to-depth) and
    # codes the frame conditionally on it rather than as a plain residual; 0 for intra
    context: int = 0
    arch: str = "rd-klt-v2"

    def __post_init__(self) -> None:
        if sum(self.levels) != self.channels or any(n <= 0 for n in self.levels):
            raise ValueError(f"levels {self.levels} must be positive and sum to channels={self.channels}")
        if self.pixel_width and not self.latent_width:
            raise ValueError("the pixel refinement CNN reads the latent CNN's features: pixel_width needs latent_width")

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    def level_slices(self) -> list[slice]:
        out, start = [], 0
        for n in self.levels:
            out.append(slice(start, start + n))
            start += n
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RDConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown codec config keys: {sorted(unknown)}")
        d = dict(d)
        if "levels" in d:
            d["levels"] = tuple(d["levels"])
        return cls(**d)


@dataclass
class RDOutput:
    x_hat: Tensor  # reconstruction (N, 3, H, W)
    bits: Tensor  # estimated bits per image (N,)


class RDCodec(nn.Module):
    """Images are float tensors ``(N, 3, H, W)`` in [0, 1], H and W multiples of 16 inside
    (callers pad; :mod:`.packet_codec` does)."""

    def __init__(self, cfg: RDConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or RDConfig()
        c, k = cfg.channels, cfg.n_levels
        self.analysis = nn.Conv2d(3, c, STRIDE, stride=STRIDE)
        self.analysis_cnn: nn.Module | None = None
        if cfg.analysis_width:
            w = cfg.analysis_width
            self.analysis_cnn = nn.Sequential(
                nn.PixelUnshuffle(4), nn.Conv2d(48, w, 3, padding=1), nn.GELU(),
                nn.Conv2d(w, w, 4, stride=4), nn.GELU(), nn.Conv2d(w, c, 1))
            nn.init.zeros_(self.analysis_cnn[-1].weight)
            nn.init.zeros_(self.analysis_cnn[-1].bias)
        # per-channel scale (std of the KLT coefficient) to normalise the decoder's inputs
        self.register_buffer("coef_std", torch.ones(c))
        self.log_step = nn.Parameter(torch.zeros(c))
        # latent-domain CNN: fills erased coefficients and refines kept ones (MCA-style input);
        # latent_width 0: none (a P-frame residual model gains nothing from it, see docs/codec.md)
        lw = cfg.latent_width
        self.latent_cnn = lw > 0
        if lw:
            self.latent_in = nn.Conv2d(c + k + 1, lw, 3, padding=1, padding_mode="replicate")
            self.latent_mid = nn.Conv2d(lw, lw, 3, padding=1, padding_mode="replicate")
            self.latent_out = nn.Conv2d(lw, c, 1)
            nn.init.zeros_(self.latent_out.weight)
            nn.init.zeros_(self.latent_out.bias)
        # linear synthesis; its 768 outputs per position are ordered (colour, sub-pixel row and
        # column at H/4) x (4x4 offset), so one depth-to-space by 4 gives the image at H/4 as
        # 48 channels, the layout the refinement CNN reads: no shuffle by 16 and back (those
        # two copies took a third of the decode time)
        t = cfg.synthesis_taps
        self.synthesis = nn.Conv2d(c, 3 * STRIDE * STRIDE, t, padding=t // 2, padding_mode="replicate")
        self.pixel: nn.Module | None = None
        if cfg.pixel_width:
            pw = cfg.pixel_width
            self.feat_up = nn.Conv2d(lw, 16 * 16, 1)  # latent features -> 16 ch at H/4
            self.pixel = nn.Sequential(
                nn.Conv2d(48 + 16 + cfg.context, pw, 3, padding=1), nn.GELU(),
                nn.Conv2d(pw, pw, 3, padding=1), nn.GELU(),
                nn.Conv2d(pw, 48, 3, padding=1))
            nn.init.zeros_(self.pixel[-1].weight)
            nn.init.zeros_(self.pixel[-1].bias)

    # --- initialisation -------------------------------------------------------------------
    @torch.no_grad()
    def init_from_klt(self, patches: Tensor) -> None:
        """Set the linear analysis/synthesis to the KLT of ``patches`` ``(n, 3*16*16)`` (RGB,
        channel-major like a conv weight), channels in decreasing variance."""
        c = self.cfg.channels
        mean = patches.mean(0)
        centred = patches - mean
        cov = centred.T @ centred / len(patches)
        evals, evecs = torch.linalg.eigh(cov.double())
        order = torch.argsort(evals, descending=True)[:c]
        basis = evecs[:, order].float().T  # (c, 768), orthonormal rows
        basis *= torch.sign(basis.sum(1, keepdim=True) + 1e-12)  # DC-like rows positive
        self.analysis.weight.copy_(basis.reshape(c, 3, STRIDE, STRIDE))
        self.analysis.bias.copy_(-(basis @ mean))
        self.coef_std.copy_(evals[order].clamp_min(1e-8).sqrt().float())
        w = torch.zeros_like(self.synthesis.weight)  # (768, c, t, t)
        t = self.cfg.synthesis_taps
        order = _synthesis_order()
        w[:, :, t // 2, t // 2] = basis.T[order]
        self.synthesis.weight.copy_(w)
        self.synthesis.bias.copy_(mean[order])

    @torch.no_grad()
    def load_widened(self, state: dict[str, Tensor]) -> None:
        """Load a model's weights into this one where this one reads more context channels:
        the extra input channels of the first refinement layer start at zero (the same output)."""
        own = self.state_dict()
        for k, v in state.items():
            if k in own and own[k].shape != v.shape and own[k].dim() == 4 and own[k].shape[1] > v.shape[1]:
                w = torch.zeros_like(own[k])
                w[:, :v.shape[1]] = v
                state = {**state, k: w}
        self.load_state_dict(state)

    # --- pieces ---------------------------------------------------------------------------
    def steps(self, q: Tensor | float) -> Tensor:
        """Quantizer step per channel, ``(N or 1, C, 1, 1)``."""
        q = torch.as_tensor(q, dtype=torch.float32, device=self.log_step.device).reshape(-1, 1, 1, 1)
        return q * torch.exp(self.log_step).reshape(1, -1, 1, 1)

    def analyse(self, x: Tensor) -> Tensor:
        y = self.analysis(x)
        if self.analysis_cnn is not None:
            y = y + self.analysis_cnn(x) * self.coef_std.reshape(1, -1, 1, 1)
        return y

    def level_mask(self, received_levels: Tensor) -> Tensor:
        """``(N, K, h, w)`` per-level mask -> ``(N, C, h, w)`` per-channel mask."""
        reps = torch.tensor(self.cfg.levels, device=received_levels.device)
        return torch.repeat_interleave(received_levels, reps, dim=1)

    def synthesise_s2d(self, y_hat: Tensor, received_levels: Tensor, q: Tensor | float,
                       context: Tensor | None = None) -> Tensor:
        """Dequantized latent (erased elements already 0) + per-level mask -> image at H/4
        as ``(N, 48, H/4, W/4)``, channels (colour, row, column) of each 4x4 pixel block;
        ``context`` ``(N, cfg.context, H/4, W/4)`` when the model reads one."""
        n, _, h, w = y_hat.shape
        std = self.coef_std.reshape(1, -1, 1, 1)
        y_hat = fill_erased(y_hat, self.level_mask(received_levels.to(y_hat.dtype)))
        if not self.latent_cnn:  # the linear synthesis of the (filled-in) latent alone
            return F.pixel_shuffle(self.synthesis(y_hat), 4)
        logq = torch.log2(torch.as_tensor(q, dtype=y_hat.dtype, device=y_hat.device) / 0.1)
        logq = logq.reshape(-1, 1, 1, 1).expand(n, 1, h, w)
        z = torch.cat([y_hat / std, received_levels.to(y_hat.dtype), logq], dim=1)
        feat = F.gelu(self.latent_in(z))
        feat = F.gelu(self.latent_mid(feat)) + feat
        y_ref = y_hat + self.latent_out(feat) * std
        x4 = F.pixel_shuffle(self.synthesis(y_ref), 4)  # (N, 48, H/4, W/4): 4x4 pixels per channel
        if self.pixel is not None:
            up = F.pixel_shuffle(self.feat_up(feat), 4)
            side = [] if not self.cfg.context else [context.to(x4.dtype) if context is not None else
                                                     x4.new_zeros(n, self.cfg.context, *x4.shape[2:])]
            x4 = x4 + self.pixel(torch.cat([x4, up, *side], 1))
        return x4

    def synthesise(self, y_hat: Tensor, received_levels: Tensor, q: Tensor | float,
                   context: Tensor | None = None) -> Tensor:
        """Dequantized latent (erased elements already 0) + per-level mask -> image."""
        return F.pixel_shuffle(self.synthesise_s2d(y_hat, received_levels, q, context), 4)

    # --- training -------------------------------------------------------------------------
    def rate_bits(self, u: Tensor, u_hat: Tensor) -> Tensor:
        """Estimated bits per image as :func:`.entropy.encode_group` codes a level: a skip flag
        per position and level, Laplace-coded symbols at the non-skipped positions with a
        scale fitted per image and channel (noise proxy ``u`` + U(-1/2, 1/2) for the rate)."""
        u_noisy = u + torch.empty_like(u).uniform_(-0.5, 0.5)
        reps = torch.tensor(self.cfg.levels, device=u.device)
        level_of = torch.repeat_interleave(torch.arange(self.cfg.n_levels, device=u.device), reps)
        nz_levels = torch.zeros(u.shape[0], self.cfg.n_levels, *u.shape[2:], device=u.device)
        nz_levels.index_add_(1, level_of, (u_hat.detach() != 0).float())
        nz_levels = (nz_levels > 0).float()  # (N, K, h, w): some symbol of the level is nonzero
        nz = nz_levels[:, level_of]  # (N, C, h, w)
        count = nz.sum(dim=(2, 3), keepdim=True).clamp_min(1)
        scale = ((u_hat.detach().abs() * nz).sum(dim=(2, 3), keepdim=True) / count).clamp_min(0.06)
        data = (laplace_bits(u_noisy, scale) * nz).sum(dim=(1, 2, 3))
        p = nz_levels.mean(dim=(2, 3), keepdim=True).clamp(1 / 32, 31 / 32)
        flags = -(nz_levels * torch.log2(p) + (1 - nz_levels) * torch.log2(1 - p)).sum(dim=(1, 2, 3))
        return data + flags

    def forward(self, x: Tensor, q: Tensor, received_levels: Tensor | None = None,
                context: Tensor | None = None) -> RDOutput:
        """Training pass: ``q`` ``(N,)`` steps, ``received_levels`` ``(N, K, h, w)`` (1 = arrived),
        ``context`` an image ``(N, cfg.context // 16, H, W)`` (the prediction) or None."""
        y = self.analyse(x)
        step = self.steps(q)
        u = y / step
        # dead-zone rounding as the packet codec does, straight through for the gradient
        k = torch.sign(u) * torch.floor(u.abs() + 0.5 - DEADZONE)
        u_hat = u + (k - u).detach()
        bits = self.rate_bits(u, k)
        y_hat = u_hat * step
        if received_levels is None:
            received_levels = torch.ones(x.shape[0], self.cfg.n_levels, *y.shape[2:], device=x.device)
        y_hat = y_hat * self.level_mask(received_levels)
        ctx = F.pixel_unshuffle(context, 4) if context is not None else None
        return RDOutput(self.synthesise(y_hat, received_levels, q, ctx), bits)
