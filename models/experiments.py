"""The experiments of ``jscc-eval`` (the papers' image experiments on the shipped codecs).

Every frame is encoded once per codec (:class:`Evaluator`); losses are drawn per packet from the
shared loss processes (seeded) and decoded in batches.  Each ``exp_*`` returns table rows;
``report.py`` turns them into CSV, plots and markdown, ``evaluate.py`` is the command.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from jscc_stream.metrics import psnr_batch
from jscc_stream.netem.loss import GE_10, GE_15, ErasureVector, LossProcess, parse_loss_spec
from jscc_stream.proto.packet import MEDIA_PAYLOAD_BYTES

from .codec import JSCCCodec
from .data import to_tensor
from .erasure import packet_losses, received_mask
from .quant import dequantize, quantize
from .zoo import load_codec

log = logging.getLogger("jscc.eval")

# Payload bytes one 900-byte datagram carries: the RTP header (12) and the jscc payload header
# (12, docs/wire-format.md) come off the MTU.  Blocks larger than this travel as fragments.
PACKET_PAYLOAD = MEDIA_PAYLOAD_BYTES
EXPERIMENTS = ("blocks", "mismatch", "ladder", "uep", "loss", "bits", "scr")


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of 8-bit-rounded reconstructions, batch ``(N, 3, H, W)``."""
    return psnr_batch(a, b, round_to_8bit=True, min_mse=1e-12)


def ms_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from pytorch_msssim import ms_ssim as _ms_ssim

    if min(a.shape[-2:]) <= 160:  # five scales need > 160 pixels
        from pytorch_msssim import ssim

        return ssim(a.clamp(0, 1), b, data_range=1.0, size_average=False)
    return _ms_ssim(a.clamp(0, 1), b, data_range=1.0, size_average=False)


@dataclass
class Encoded:
    """One codec's quantized latents for the whole image set."""

    model: JSCCCodec
    card: dict
    values: torch.Tensor  # dequantized latents (N, C, h, w)
    images: torch.Tensor  # originals (N, 3, H, W)

    @property
    def blocks(self) -> int:
        return self.model.cfg.blocks

    def fragments(self) -> int:
        c = self.model.cfg
        h, w = self.values.shape[-2:]
        return max(1, math.ceil(c.alpha * h * w / PACKET_PAYLOAD))


class Evaluator:
    def __init__(self, images: dict[str, np.ndarray], bits: int, batch: int, seed: int,
                 amp_dtype: torch.dtype | None = None) -> None:
        self.names = list(images)
        self.amp_dtype = amp_dtype
        self.x = torch.cat([to_tensor(img) for img in images.values()])
        self.bits, self.batch, self.seed = bits, batch, seed
        self._cache: dict[str, Encoded] = {}
        self._coded: dict[tuple[str, int, int], object] = {}

    def autocast(self) -> torch.autocast:
        """The arithmetic the daemons use (bf16 on capable CPUs), or float32."""
        return torch.autocast("cpu", dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None)

    def coded(self, codec: str, index: int, max_bytes: int):
        """JPEG / JPEG 2000 coding of image ``index`` at the highest quality within max_bytes."""
        from jscc_stream.baselines import image as baselines

        key = (codec, index, max_bytes)
        if key not in self._coded:
            img = (self.x[index].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            fn = baselines.encode_jpeg if codec == "jpeg" else baselines.encode_jpeg2000
            self._coded[key] = fn(img, max_bytes, PACKET_PAYLOAD)
        return self._coded[key]

    def encoded(self, name: str) -> Encoded:
        if name not in self._cache:
            model, card = load_codec(name)
            with torch.inference_mode(), self.autocast():
                y = torch.cat([model.encode(self.x[i : i + 1]) for i in range(len(self.x))]).float()
            values = torch.from_numpy(dequantize(quantize(y, self.bits), self.bits))
            self._cache[name] = Encoded(model, card, values, self.x)
        return self._cache[name]

    @torch.inference_mode()
    def decode(self, enc: Encoded, received: torch.Tensor, repeats: int, metrics: bool = False
               ) -> dict[str, np.ndarray]:
        """Decode every image ``repeats`` times with ``received`` masks ``(N*repeats, C, h, w)``
        (image-major) -> per-decode PSNR (and MS-SSIM), shaped ``(N, repeats)``."""
        n = len(self.x)
        vals = enc.values.repeat_interleave(repeats, 0)
        refs = enc.images.repeat_interleave(repeats, 0)
        size = tuple(enc.images.shape[-2:])
        out_p, out_s = [], []
        for i in range(0, len(vals), self.batch):
            with self.autocast():
                rec = enc.model.decode(vals[i : i + self.batch], received[i : i + self.batch], size).float()
            out_p.append(psnr(rec, refs[i : i + self.batch]))
            if metrics:
                out_s.append(ms_ssim(rec, refs[i : i + self.batch]))
        res = {"psnr": torch.cat(out_p).numpy().reshape(n, repeats)}
        if metrics:
            res["ms_ssim"] = torch.cat(out_s).numpy().reshape(n, repeats)
        return res

    def received_from_losses(self, enc: Encoded, lost: np.ndarray) -> torch.Tensor:
        c = enc.model.cfg
        h, w = enc.values.shape[-2:]
        return received_mask(lost, c.alpha, h, w, c.scr)

    def under_process(self, name: str, process: LossProcess, trials: int, seed_offset: int = 0,
                      metrics: bool = False) -> dict[str, np.ndarray]:
        enc = self.encoded(name)
        rng = np.random.default_rng([self.seed, seed_offset])
        lost = packet_losses(process, len(self.x) * trials, enc.blocks, enc.fragments(), rng)
        return self.decode(enc, self.received_from_losses(enc, lost), trials, metrics)

    def with_blocks(self, name: str, received: np.ndarray, metrics: bool = False) -> dict[str, np.ndarray]:
        """``received`` bool ``(R, K)`` patterns applied to every image (whole blocks)."""
        enc = self.encoded(name)
        r = len(received)
        lost = np.repeat((~received)[None], len(self.x), 0).reshape(-1, enc.blocks, 1)
        return self.decode(enc, self.received_from_losses(enc, lost), r, metrics)


def training_eps(card: dict) -> list[float] | None:
    spec = card.get("training_loss", "")
    try:
        proc = parse_loss_spec(spec)
    except Exception:  # noqa: BLE001 - cards from other tools may hold anything
        return None
    if isinstance(proc, ErasureVector):
        return list(proc.eps)
    if spec == "none":
        return [0.0]
    return None


# ---- experiments ---------------------------------------------------------------------------

def exp_blocks(ev: Evaluator, models: list[str], trials: int, random_patterns: bool = True) -> list[dict]:
    rows = []
    for name in models:
        k = ev.encoded(name).blocks
        leading = np.array([[i < n for i in range(k)] for n in range(1, k + 1)])
        res = ev.with_blocks(name, leading, metrics=True)
        for j, n in enumerate(range(1, k + 1)):
            rows.append({"model": name, "pattern": "leading", "blocks": n,
                         "psnr": float(res["psnr"][:, j].mean()), "ms_ssim": float(res["ms_ssim"][:, j].mean())})
        rng = np.random.default_rng([ev.seed, 11])
        for n in range(1, k + 1) if random_patterns else ():
            pats = np.zeros((trials, k), bool)
            for t in range(trials):
                pats[t, rng.choice(k, n, replace=False)] = True
            res = ev.with_blocks(name, pats, metrics=True)
            rows.append({"model": name, "pattern": "random", "blocks": n,
                         "psnr": float(res["psnr"].mean()), "ms_ssim": float(res["ms_ssim"].mean())})
    return rows


def exp_mismatch(ev: Evaluator, models: list[str], trials: int) -> list[dict]:
    rows = []
    for name in models:
        eps = training_eps(ev.encoded(name).card)
        if eps is None or len(set(eps)) != 1:
            continue
        for e in np.round(np.arange(0, 0.51, 0.05), 2):
            res = ev.under_process(name, ErasureVector.uniform(float(e), ev.encoded(name).blocks), trials, 21)
            rows.append({"model": name, "eps_train": eps[0], "eps_test": float(e),
                         "psnr": float(res["psnr"].mean())})
    return rows


def exp_ladder(ev: Evaluator, models: list[str], trials: int, sr_model: str | None) -> list[dict]:
    """Fig. 6: at most n blocks sent, each sent block erased with probability q."""
    rows = []
    for q in (0.01, 0.10):
        for name in models + ([sr_model] if sr_model else []):
            k = ev.encoded(name).blocks
            # common random numbers: the same erasures for every cap n and every codec, so the
            # curves differ only by what is sent (independent draws per n made them jagged)
            erased = np.random.default_rng([ev.seed, 31, int(q * 100)]).random((trials, k)) < q
            for n in range(1, k + 1):
                sent = np.arange(k) < n
                received = sent[None] & ~erased
                if name == sr_model:  # successive refinement: a gap makes later layers useless
                    received = np.cumprod(received, axis=1).astype(bool)
                res = ev.with_blocks(name, received)
                rows.append({"model": name, "role": "sr-standin" if name == sr_model else "jscc",
                             "q": q, "sent": n, "psnr": float(res["psnr"].mean())})
    return rows


def exp_uep(ev: Evaluator, models: list[str], trials: int) -> list[dict]:
    rows = []
    for name in models:
        eps = training_eps(ev.encoded(name).card)
        if eps is None or max(eps) == 0:
            continue
        vec = ErasureVector(tuple(eps)) if len(eps) > 1 else ErasureVector.uniform(eps[0], ev.encoded(name).blocks)
        for a in (0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5):
            res = ev.under_process(name, vec.scaled(a), trials, 41)
            rows.append({"model": name, "a": a, "psnr": float(res["psnr"].mean()),
                         "eps_train": ",".join(f"{e:g}" for e in eps)})
    return rows


def exp_scr(ev: Evaluator, models: list[str], trials: int, size_label: str) -> list[dict]:
    rows = []
    for ci, (label, proc) in enumerate(LOSS_CONDITIONS):
        if label == "none":
            continue
        for name in models:
            enc = ev.encoded(name)
            res = ev.under_process(name, proc, trials, 61 + ci)
            rows.append({"size": size_label, "condition": label, "model": name, "scr": enc.model.cfg.scr,
                         "packets_per_block": enc.fragments(), "psnr_mean": float(res["psnr"].mean()),
                         "psnr_var": float(res["psnr"].var(axis=1).mean())})
    return rows


@torch.inference_mode()
def exp_bits(ev: Evaluator, models: list[str]) -> list[dict]:
    rows = []
    for name in models:
        enc = ev.encoded(name)
        size = tuple(ev.x.shape[-2:])
        with ev.autocast():
            y = torch.cat([enc.model.encode(ev.x[i : i + 1]) for i in range(len(ev.x))]).float()
        for bits in (None, 8, 6, 5, 4, 3, 2):
            v = y if bits is None else torch.from_numpy(dequantize(quantize(y, bits), bits))
            with ev.autocast():
                rec = torch.cat([enc.model.decode(v[i : i + ev.batch], None, size).float()
                                 for i in range(0, len(v), ev.batch)])
            rows.append({"model": name, "bits": "float" if bits is None else bits,
                         "bytes_per_frame_packed": None if bits is None else int(y[0].numel() * bits / 8),
                         "psnr": float(psnr(rec, ev.x).mean())})
    return rows


LOSS_CONDITIONS: list[tuple[str, LossProcess]] = [
    ("none", ErasureVector.uniform(0.0)),
    ("uniform 5%", ErasureVector.uniform(0.05)),
    ("uniform 10%", ErasureVector.uniform(0.10)),
    ("uniform 20%", ErasureVector.uniform(0.20)),
    ("GE ~10%", GE_10),
    ("GE ~15%", GE_15),
]


def exp_loss(ev: Evaluator, models: list[str], trials: int, size_label: str,
             baselines: bool = True) -> list[dict]:
    rows = []
    frame_bytes = int(ev.encoded(models[0]).values[0].numel())
    for ci, (label, proc) in enumerate(LOSS_CONDITIONS):
        t = 1 if label == "none" else trials
        for name in models:
            res = ev.under_process(name, proc, t, 51 + ci, metrics=True)
            per_image_var = res["psnr"].var(axis=1).mean() if t > 1 else 0.0
            rows.append({"size": size_label, "condition": label, "codec": name, "bytes": frame_bytes,
                         "psnr_mean": float(res["psnr"].mean()), "psnr_var": float(per_image_var),
                         "ms_ssim": float(res["ms_ssim"].mean())})
        if baselines:
            rows += _baseline_rows(ev, proc, label, t, frame_bytes, size_label, 51 + ci)
    return rows


def _baseline_rows(ev: Evaluator, proc: LossProcess, label: str, trials: int, frame_bytes: int,
                   size_label: str, seed_offset: int) -> list[dict]:
    from jscc_stream.baselines import image as baselines

    rows = []
    for codec in ("jpeg", "jpeg2000"):
        rng = np.random.default_rng([ev.seed, seed_offset, len(codec)])
        per_image, ssim_all, undecodable, quality = [], [], 0, []
        for i in range(len(ev.x)):
            try:
                coded = ev.coded(codec, i, frame_bytes)
            except ValueError as exc:  # the budget is below the codec's smallest file
                log.warning("%s skipped at %s: %s", codec, size_label, exc)
                break
            quality.append(coded.quality)
            lost = proc.sample(trials, len(coded.packets), rng)
            recs = []
            for t in range(trials):
                rec, info = baselines.decode_with_loss(coded, list(~lost[t]))
                undecodable += not info.get("decodable", True)
                recs.append(to_tensor(rec))
            recs_t = torch.cat(recs)
            ref = ev.x[i : i + 1].expand_as(recs_t)
            per_image.append(psnr(recs_t, ref).numpy())
            ssim_all.append(ms_ssim(recs_t, ref).numpy())
        if len(per_image) < len(ev.x):
            continue
        arr = np.stack(per_image)
        rows.append({"size": size_label, "condition": label, "codec": codec, "bytes": frame_bytes,
                     "psnr_mean": float(arr.mean()), "psnr_var": float(arr.var(axis=1).mean()) if trials > 1 else 0.0,
                     "ms_ssim": float(np.concatenate(ssim_all).mean()),
                     "undecodable_frac": undecodable / (len(ev.x) * trials),
                     "quality_mean": float(np.mean(quality))})
    return rows
