"""The erasure-aware JSCC codec (paper 000) with mask-conditional aggregation (paper 001).

The encoder maps an RGB frame to ``K*alpha`` channels at ``H/s x W/s`` with values in [0, 1];
channels ``[i*alpha, (i+1)*alpha)`` form block ``i`` (block 0 most important).  The decoder gets
the latent with every erased element set to -1 (paper 000, eq. 1 / Remark III.2) together with
the element-wise erasure mask ``received`` (1 = arrived), which the MCA module turns into features.

Following CompressAI, ``forward`` is the training path (erasures applied inside, differentiable),
``encode``/``decode`` are the inference path.  Frames of any size are padded to the latent
stride inside and cropped back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CodecConfig", "JSCCCodec", "ERASED", "checkerboard_swap"]

ERASED = -1.0  # placeholder value of an erased latent element


@dataclass(frozen=True)
class CodecConfig:
    """Architecture hyper-parameters; stored in every model card."""

    blocks: int = 8  # K
    alpha: int = 2  # channels per block
    widths: tuple[int, ...] = (32, 64, 96, 128)  # features at s/8, s/4, s/2, s (stride 16)
    enc_res: tuple[int, ...] = (0, 0, 1, 1)  # residual blocks per encoder stage
    dec_res: tuple[int, ...] = (0, 1, 1, 2)  # residual blocks per decoder stage
    mca: bool = True  # mask conditional aggregation (else the mask is ignored)
    mca_width: int = 32
    # SCR byte order of block bytes (scr.py).  Off by default: the ablation (docs/codec.md) found
    # the natural order 0.6-1.0 dB better at 640x480, where blocks span several packets.
    scr: bool = False
    linear_path: bool = True  # a learnable linear transform (PCA-initialised) beside the CNN
    # kernel (in latent elements) of the decoder's linear synthesis: 1 = each latent position
    # paints its own s x s patch (block PCA); 3 = overlapping synthesis that also reads the eight
    # neighbours, so it can interpolate across patch borders (what a frame missing most of its
    # blocks needs: 2 values per patch painted as flat tiles is blocky)
    linear_taps: int = 1
    # pairs of latent channels that trade elements at odd checkerboard positions (see
    # checkerboard_swap); ((1, 2),) gives the first block half of each chroma DC channel
    checker_swap: tuple[tuple[int, int], ...] = ()
    arch: str = "jscc-res-ps-lin"

    def __post_init__(self) -> None:
        if self.linear_taps < 1 or self.linear_taps % 2 == 0:
            raise ValueError(f"linear_taps must be an odd number >= 1, got {self.linear_taps}")
        used = [c for pair in self.checker_swap for c in pair]
        if (any(len(pair) != 2 for pair in self.checker_swap) or len(set(used)) != len(used)
                or any(not 0 <= c < self.latent_channels for c in used)):
            raise ValueError(f"checker_swap must be disjoint pairs of channels in 0..{self.latent_channels - 1}, "
                             f"got {self.checker_swap}")

    @property
    def latent_channels(self) -> int:
        return self.blocks * self.alpha

    @property
    def stride(self) -> int:
        return 2 ** len(self.widths)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CodecConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown codec config keys: {sorted(unknown)}")
        d = dict(d)
        for key in ("widths", "enc_res", "dec_res"):
            if key in d:
                d[key] = tuple(d[key])
        if "checker_swap" in d:
            d["checker_swap"] = tuple(tuple(pair) for pair in d["checker_swap"])
        return cls(**d)


def checkerboard_swap(t: Tensor, pairs: tuple[tuple[int, int], ...]) -> Tensor:
    """Swap each pair of channels of ``t`` ``(N, C, h, w)`` where row + column is odd.

    A fixed, lossless multiplex (its own inverse) between the model's channels and the
    transmitted ones.  Why: the first two principal components after the luma DC are the two
    chroma DCs, so a block of two channels carries luma and one chroma only; swapped in a
    checkerboard, the first block carries both chromas at half density, which interpolate
    well, and the second block the other half."""
    if not pairs:
        return t
    h, w = t.shape[-2:]
    odd = (torch.arange(h, device=t.device)[:, None] + torch.arange(w, device=t.device)) % 2 == 1
    out = t.clone()
    for a, b in pairs:
        out[:, a] = torch.where(odd, t[:, b], t[:, a])
        out[:, b] = torch.where(odd, t[:, a], t[:, b])
    return out


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a skip: the cheapest capacity a CPU convolution buys."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.c2(F.leaky_relu(self.c1(x), 0.1))


def _act() -> nn.Module:
    return nn.LeakyReLU(0.1)


class Encoder(nn.Module):
    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        w = cfg.widths
        layers: list[nn.Module] = [nn.PixelUnshuffle(2), nn.Conv2d(12, w[0], 3, padding=1), _act()]
        for _ in range(cfg.enc_res[0]):
            layers.append(ResBlock(w[0]))
        for i in range(1, len(w)):
            layers += [nn.Conv2d(w[i - 1], w[i], 3, stride=2, padding=1), _act()]
            layers += [ResBlock(w[i]) for _ in range(cfg.enc_res[i])]
        layers.append(nn.Conv2d(w[-1], cfg.latent_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.linear: nn.Conv2d | None = None
        if cfg.linear_path:
            s = cfg.stride
            self.linear = nn.Conv2d(3, cfg.latent_channels, s, stride=s)
            nn.init.zeros_(layers[-1].weight)  # start as the linear transform alone
            nn.init.zeros_(layers[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.linear is None:
            return torch.sigmoid(self.net(x))
        # sigmoid(4(z - 1/2)) has slope 1 at the centre: near-linear over the PCA range, so the
        # decoder's linear path inverts it at initialisation, yet bounded and smooth (a hard
        # clamp lets the latent drift out of range and training collapses)
        return torch.sigmoid(4.0 * (self.linear(x) + self.net(x) - 0.5))


class MaskConditionalAggregation(nn.Module):
    """Paper 001, section 3.3: two conv+GELU layers model the mask, concatenated with the
    latent, one more conv+GELU fuses them into the decoder's first features."""

    def __init__(self, latent_ch: int, hidden: int, out_ch: int) -> None:
        super().__init__()
        self.mask_net = nn.Sequential(
            nn.Conv2d(latent_ch, hidden, 3, padding=1), nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU(),
        )
        self.fuse = nn.Sequential(nn.Conv2d(latent_ch + hidden, out_ch, 3, padding=1), nn.GELU())

    def forward(self, y: Tensor, received: Tensor) -> Tensor:
        return self.fuse(torch.cat([y, self.mask_net(received)], dim=1))


class Decoder(nn.Module):
    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        w = cfg.widths[::-1]
        res = cfg.dec_res[::-1]
        if cfg.mca:
            self.head: nn.Module = MaskConditionalAggregation(cfg.latent_channels, cfg.mca_width, w[0])
        else:
            self.head = nn.Sequential(nn.Conv2d(cfg.latent_channels, w[0], 3, padding=1), _act())
        self.use_mask = cfg.mca
        layers: list[nn.Module] = [ResBlock(w[0]) for _ in range(res[0])]
        for i in range(1, len(w)):
            layers += [nn.Conv2d(w[i - 1], w[i] * 4, 3, padding=1), nn.PixelShuffle(2), _act()]
            layers += [ResBlock(w[i]) for _ in range(res[i])]
        layers += [nn.Conv2d(w[-1], 12, 3, padding=1), nn.PixelShuffle(2)]
        self.body = nn.Sequential(*layers)
        self.linear: nn.Module | None = None
        if cfg.linear_path:
            s, k = cfg.stride, cfg.linear_taps
            self.linear = nn.Sequential(
                nn.Conv2d(cfg.latent_channels, 3 * s * s, k, padding=k // 2, padding_mode="replicate"),
                nn.PixelShuffle(s))
            nn.init.zeros_(layers[-2].weight)  # start as the linear transform alone
            nn.init.zeros_(layers[-2].bias)

    def forward(self, y: Tensor, received: Tensor) -> Tensor:
        h = self.head(y, received) if self.use_mask else self.head(y)
        out = self.body(h)
        if self.linear is not None:
            # erased coefficients contribute their mean (0.5 -> 0) to the linear reconstruction
            out = out + self.linear((y - 0.5) * received)
        return out


class JSCCCodec(nn.Module):
    """Encoder + decoder.  Images are float tensors ``(N, 3, H, W)`` in [0, 1]."""

    def __init__(self, cfg: CodecConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or CodecConfig()
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)
        # NHWC convolutions are about 2.5x faster than NCHW on CPU (oneDNN), no slower on CUDA.
        self.to(memory_format=torch.channels_last)

    # -- shapes ---------------------------------------------------------------------------
    def latent_hw(self, height: int, width: int) -> tuple[int, int]:
        s = self.cfg.stride
        return -(-height // s), -(-width // s)

    def _pad(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        lh, lw = self.latent_hw(h, w)
        s = self.cfg.stride
        ph, pw = lh * s - h, lw * s - w
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    # -- inference ------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Frames -> latent ``(N, K*alpha, ceil(H/s), ceil(W/s))`` in [0, 1], channels in
        transmission order (block i = channels ``i*alpha .. i*alpha+alpha-1``)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected frames shaped (N, 3, H, W), got {tuple(x.shape)}")
        y = self.encoder(self._pad(x).contiguous(memory_format=torch.channels_last))
        return checkerboard_swap(y, self.cfg.checker_swap)

    def decode(self, latent: Tensor, received: Tensor | None, size: tuple[int, int]) -> Tensor:
        """Latent (erased elements anywhere) + ``received`` mask (1 = arrived) -> frames cropped
        to size.

        Elements not received are replaced by the -1 placeholder here, so callers may pass
        any value there."""
        if latent.dim() != 4 or latent.shape[1] != self.cfg.latent_channels:
            raise ValueError(
                f"expected latent (N, {self.cfg.latent_channels}, h, w), got {tuple(latent.shape)}")
        if received is None:
            received = torch.ones_like(latent)
        if received.shape != latent.shape:
            raise ValueError(f"mask shape {tuple(received.shape)} != latent shape {tuple(latent.shape)}")
        received = received.to(latent.dtype)
        y = received * latent + (1 - received) * ERASED
        return self._decode(y, received)[..., : size[0], : size[1]]

    def _decode(self, y_tilde: Tensor, received: Tensor) -> Tensor:
        """Placeholder-filled latent and its received mask, both in transmission order -> frames."""
        swap = self.cfg.checker_swap
        y_tilde = checkerboard_swap(y_tilde, swap).contiguous(memory_format=torch.channels_last)
        received = checkerboard_swap(received, swap).contiguous(memory_format=torch.channels_last)
        return self.decoder(y_tilde, received)

    # -- training -------------------------------------------------------------------------
    def forward(self, x: Tensor, received: Tensor | None = None, noise: float = 0.0) -> Tensor:
        """Training path.  ``received`` is the element-wise mask (1 = arrived) over the latent;
        erasure is ``r*(B+1)-1`` (Remark III.2).  ``noise`` adds uniform quantization noise of
        that step size (0 = the paper's real-valued training)."""
        y = self.encode(x)
        if noise > 0:
            y = (y + (torch.rand_like(y) - 0.5) * noise).clamp(0, 1)
        if received is None:
            received = torch.ones_like(y)
        y_tilde = received * (y + 1) - 1
        return self._decode(y_tilde, received)[..., : x.shape[-2], : x.shape[-1]]

    @torch.no_grad()
    def init_linear_from_pca(self, patches: Tensor, spread: float = 3.0) -> None:
        """Set the linear paths to the top ``K*alpha`` principal components of ``patches``
        ``(N, 3, s, s)``: coefficient i is mapped to 0.5 +- ``spread`` standard deviations
        in [0, 1].  Components come out in decreasing variance, so block 0 carries the
        coarse picture: the importance order the ladder codecs want."""
        if self.encoder.linear is None or self.decoder.linear is None:
            raise ValueError("this codec has no linear path")
        c, s = self.cfg.latent_channels, self.cfg.stride
        flat = patches.reshape(len(patches), -1).double()
        mean = flat.mean(0)
        _, sv, vt = torch.linalg.svd(flat - mean, full_matrices=False)
        basis = vt[:c]  # (C, 3*s*s)
        sigma = sv[:c] / (len(flat) - 1) ** 0.5
        scale = 1.0 / (2 * spread * sigma)  # coefficient -> latent units
        enc_w = basis * scale[:, None]
        self.encoder.linear.weight.copy_(enc_w.reshape(c, 3, s, s).float())
        self.encoder.linear.bias.copy_((0.5 - enc_w @ mean).float())
        conv = self.decoder.linear[0]
        # PixelShuffle(s) reads channel k*s*s + i*s + j as pixel (k, i, j): the patch layout;
        # only the centre tap is set, so an overlapping synthesis starts as block PCA
        k = self.cfg.linear_taps
        conv.weight.zero_()
        conv.weight[:, :, k // 2, k // 2] = (basis.T / scale[None, :]).float()
        conv.bias.copy_(mean.float())

    def with_linear_taps(self, taps: int) -> "JSCCCodec":
        """A copy whose decoder synthesis kernel is ``taps`` wide, the old kernel at its centre
        (same outputs until trained): how a shipped codec is fine-tuned into the wider one."""
        old = self.cfg.linear_taps
        if taps < old:
            raise ValueError(f"cannot shrink the linear synthesis kernel from {old} to {taps}")
        wider = JSCCCodec(replace(self.cfg, linear_taps=taps))
        state = self.state_dict()
        key = "decoder.linear.0.weight"
        w = torch.zeros_like(wider.state_dict()[key])
        off = (taps - old) // 2
        w[:, :, off:off + old, off:off + old] = state[key]
        wider.load_state_dict({**state, key: w})
        return wider

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
