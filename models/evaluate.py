"""``jscc-eval``: the papers' image experiments on the shipped codecs.

Experiments (``--experiments``, default all):

* ``blocks``   PSNR / MS-SSIM vs number of leading blocks received, and with a random E of K
               erased (paper 000, Fig. 4 and 11);
* ``mismatch`` codecs trained at several uniform eps, tested at eps_test 0..0.5 (Fig. 5);
* ``ladder``   increasing-eps codecs vs a successive-refinement stand-in with a cap on the
               blocks sent, each sent block erased at 1 % and 10 % (Fig. 6);
* ``uep``      unequal protection: eps_test = min(a * eps_train, 1), a = 0.5..5 (Fig. 7);
* ``bits``     all blocks received, latent quantized to 8..2 bits or kept real-valued: how much
               inference-only quantization (paper 000, Remark III.3) costs;
* ``scr``      SCR ablation at the largest size (blocks span several packets there): a codec
               trained and tested with SCR vs one trained and tested with the natural byte order;
* ``loss``     packet loss (uniform 5/10/20 %, Gilbert-Elliott ~10/15 %) for the codecs and for
               JPEG / JPEG 2000 at the same bytes per frame cut into the same <= 900-byte packets
               (paper 001, Table 1 format: mean and variance of PSNR).

Every frame is encoded once per codec; losses are drawn per packet from the shared loss processes
(seeded) and decoded in batches.  Writes ``results.json``, CSV files, PNG plots and
``summary.md`` into ``--out`` and prints the summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jscc_stream.errors import UserError
from jscc_stream.cli import add_common_args, parse_frame_size, run_cli, setup_logging
from jscc_stream.netem.loss import (
    GE_10, GE_15, ErasureVector, GilbertElliott, LossProcess, parse_loss_spec,
)

from .codec import JSCCCodec
from .data import builtin_eval_images, fit_frame, list_images, load_rgb, to_tensor
from .erasure import keep_mask, packet_losses
from .precision import PRECISIONS, resolve_precision
from .quant import dequantize, quantize
from .zoo import available_codecs, load_codec

log = logging.getLogger("jscc.eval")

# Payload bytes one 900-byte datagram carries: the RTP header (12) and the jscc payload header
# (12, docs/wire-format.md) come off the MTU.  Blocks larger than this travel as fragments.
PACKET_PAYLOAD = 900 - 12 - 12
EXPERIMENTS = ("blocks", "mismatch", "ladder", "uep", "loss", "bits", "scr")


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of 8-bit-rounded reconstructions, batch ``(N, 3, H, W)``."""
    a = (a.clamp(0, 1) * 255).round() / 255
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-12))


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
    def decode(self, enc: Encoded, keep: torch.Tensor, repeats: int, metrics: bool = False
               ) -> dict[str, np.ndarray]:
        """Decode every image ``repeats`` times with ``keep`` masks ``(N*repeats, C, h, w)``
        (image-major) -> per-decode PSNR (and MS-SSIM), shaped ``(N, repeats)``."""
        n = len(self.x)
        vals = enc.values.repeat_interleave(repeats, 0)
        refs = enc.images.repeat_interleave(repeats, 0)
        size = tuple(enc.images.shape[-2:])
        out_p, out_s = [], []
        for i in range(0, len(vals), self.batch):
            with self.autocast():
                rec = enc.model.decode(vals[i : i + self.batch], keep[i : i + self.batch], size).float()
            out_p.append(psnr(rec, refs[i : i + self.batch]))
            if metrics:
                out_s.append(ms_ssim(rec, refs[i : i + self.batch]))
        res = {"psnr": torch.cat(out_p).numpy().reshape(n, repeats)}
        if metrics:
            res["ms_ssim"] = torch.cat(out_s).numpy().reshape(n, repeats)
        return res

    def keep_from_losses(self, enc: Encoded, lost: np.ndarray) -> torch.Tensor:
        c = enc.model.cfg
        h, w = enc.values.shape[-2:]
        return keep_mask(lost, c.alpha, h, w, c.scr)

    def under_process(self, name: str, process: LossProcess, trials: int, seed_offset: int = 0,
                      metrics: bool = False) -> dict[str, np.ndarray]:
        enc = self.encoded(name)
        rng = np.random.default_rng([self.seed, seed_offset])
        lost = packet_losses(process, len(self.x) * trials, enc.blocks, enc.fragments(), rng)
        return self.decode(enc, self.keep_from_losses(enc, lost), trials, metrics)

    def with_blocks(self, name: str, received: np.ndarray, metrics: bool = False) -> dict[str, np.ndarray]:
        """``received`` bool ``(R, K)`` patterns applied to every image (whole blocks)."""
        enc = self.encoded(name)
        r = len(received)
        lost = np.repeat((~received)[None], len(self.x), 0).reshape(-1, enc.blocks, 1)
        return self.decode(enc, self.keep_from_losses(enc, lost), r, metrics)


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
                rec, info = baselines.decode_with_loss(coded, list(lost[t]))
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


# ---- output ---------------------------------------------------------------------------------

def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _plot(path: Path, title: str, xlabel: str, ylabel: str,
          series: dict[str, tuple[Sequence[float], Sequence[float]]], vline: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", ms=3, label=label)
    if vline is not None:
        ax.axvline(vline, color="grey", ls=":", lw=1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plots(out: Path, results: dict) -> list[str]:
    made = []
    for size, rows in results.get("blocks", {}).items():
        for pattern in dict.fromkeys(r["pattern"] for r in rows):
            series = {r_m: ([r["blocks"] for r in rows if r["model"] == r_m and r["pattern"] == pattern],
                            [r["psnr"] for r in rows if r["model"] == r_m and r["pattern"] == pattern])
                      for r_m in dict.fromkeys(r["model"] for r in rows)}
            name = f"blocks_{pattern}_{size}.png"
            _plot(out / name, f"PSNR vs {pattern} blocks received ({size})", "blocks received", "PSNR (dB)", series)
            made.append(name)
    rows = results.get("mismatch", [])
    if rows:
        series = {f"{m} (eps_train={[r for r in rows if r['model'] == m][0]['eps_train']:g})":
                  ([r["eps_test"] for r in rows if r["model"] == m], [r["psnr"] for r in rows if r["model"] == m])
                  for m in dict.fromkeys(r["model"] for r in rows)}
        _plot(out / "mismatch.png", "Mismatch: trained at eps_train, tested at eps_test", "eps_test",
              "PSNR (dB)", series)
        made.append("mismatch.png")
    rows = results.get("ladder", [])
    for q in sorted({r["q"] for r in rows}):
        sub = [r for r in rows if r["q"] == q]
        series = {m + (" (SR stand-in)" if sub_m[0]["role"] == "sr-standin" else ""):
                  ([r["sent"] for r in sub_m], [r["psnr"] for r in sub_m])
                  for m in dict.fromkeys(r["model"] for r in sub)
                  for sub_m in [[r for r in sub if r["model"] == m]]}
        name = f"ladder_q{int(q * 100)}.png"
        _plot(out / name, f"Blocks sent, each erased w.p. {q:.0%}", "max blocks sent", "PSNR (dB)", series)
        made.append(name)
    rows = results.get("uep", [])
    if rows:
        series = {m: ([r["a"] for r in rows if r["model"] == m], [r["psnr"] for r in rows if r["model"] == m])
                  for m in dict.fromkeys(r["model"] for r in rows)}
        _plot(out / "uep.png", "Unequal protection: eps_test = min(a*eps_train, 1)", "a", "PSNR (dB)", series,
              vline=1.0)
        made.append("uep.png")
    return made


def summarize(results: dict, images: list[str]) -> str:
    lines = ["# jscc-eval summary", "",
             f"Images: {', '.join(images)}; quantization {results['bits']} bits; "
             f"{results['trials']} loss draws per image and condition; seed {results['seed']}; "
             f"codec arithmetic {results['precision']}.", ""]
    loss = results.get("loss", {})
    for size, rows in loss.items():
        lines += [f"## Packet loss at {size} (paper 001 Table 1 format)", "",
                  "| condition | codec | bytes/frame | PSNR mean | PSNR var | MS-SSIM | note |",
                  "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
        for r in rows:
            note = ""
            if "quality_mean" in r:
                note = f"q={r['quality_mean']:.0f}, undecodable {r['undecodable_frac']:.0%}"
            lines.append(f"| {r['condition']} | {r['codec']} | {r['bytes']} | {r['psnr_mean']:.2f} | "
                         f"{r['psnr_var']:.3f} | {r['ms_ssim']:.4f} | {note} |")
        lines.append("")
    for size, rows in results.get("blocks", {}).items():
        models = list(dict.fromkeys(r["model"] for r in rows))
        k = max(r["blocks"] for r in rows)
        lines += [f"## PSNR (dB) vs leading blocks received at {size}", "",
                  "| model | " + " | ".join(str(i) for i in range(1, k + 1)) + " |",
                  "| --- |" + " ---: |" * k]
        for m in models:
            vals = [r["psnr"] for r in rows if r["model"] == m and r["pattern"] == "leading"]
            lines.append(f"| {m} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
        lines.append("")
    scr = results.get("scr", [])
    if scr:
        lines += [f"## SCR ablation at {scr[0]['size']} ({scr[0]['packets_per_block']} packets per block)", "",
                  "| condition | " + " | ".join(f"{m} (SCR {'on' if r0['scr'] else 'off'})"
                                            for m in dict.fromkeys(r["model"] for r in scr)
                                            for r0 in [next(r for r in scr if r["model"] == m)]) + " |",
                  "| --- |" + " ---: |" * len({r["model"] for r in scr})]
        for cond in dict.fromkeys(r["condition"] for r in scr):
            lines.append(f"| {cond} | " + " | ".join(f"{r['psnr_mean']:.2f}" for r in scr if r["condition"] == cond) + " |")
        lines.append("")
    bits = results.get("quantization", [])
    if bits:
        lines += ["## Quantization cost (all blocks received, first size)", "",
                  "| model | " + " | ".join(str(r["bits"]) for r in bits if r["model"] == bits[0]["model"]) + " |",
                  "| --- |" + " ---: |" * sum(r["model"] == bits[0]["model"] for r in bits)]
        for m in dict.fromkeys(r["model"] for r in bits):
            lines.append(f"| {m} | " + " | ".join(f"{r['psnr']:.2f}" for r in bits if r["model"] == m) + " |")
        lines.append("")
    checks = results.get("checks", [])
    if checks:
        lines += ["## Acceptance checks", "", "| check | value | bar | pass |", "| --- | ---: | --- | --- |"]
        for c in checks:
            lines.append(f"| {c['check']} | {c['value']} | {c['bar']} | {'yes' if c['pass'] else 'NO'} |")
        lines.append("")
    return "\n".join(lines)


def acceptance_checks(results: dict) -> list[dict]:
    checks = []
    loss = results.get("loss", {}).get("320x240", [])

    def get(cond: str, codec: str) -> float | None:
        for r in loss:
            if r["condition"] == cond and r["codec"] == codec:
                return r["psnr_mean"]
        return None

    jpeg = get("none", "jpeg")
    for m in ("noerasure", "uniform", "ladder"):
        v = get("none", m)
        if v is not None and jpeg is not None:
            checks.append({"check": f"{m} all blocks vs JPEG (dB)", "value": f"{v - jpeg:+.2f}",
                           "bar": ">= -2", "pass": v - jpeg >= -2})
    for cond in ("uniform 10%", "GE ~10%"):
        u, n, j = get(cond, "uniform"), get(cond, "noerasure"), get(cond, "jpeg")
        if u is not None and n is not None:
            checks.append({"check": f"uniform - noerasure at {cond} (dB)", "value": f"{u - n:+.2f}",
                           "bar": ">= +3", "pass": u - n >= 3})
        if u is not None and j is not None:
            checks.append({"check": f"uniform - JPEG at {cond} (dB)", "value": f"{u - j:+.2f}",
                           "bar": ">= +5", "pass": u - j >= 5})
    lead = [r for r in results.get("blocks", {}).get("320x240", [])
            if r["model"] == "ladder" and r["pattern"] == "leading"]
    if lead:
        first = lead[0]["psnr"]
        mono = all(b["psnr"] >= a["psnr"] - 1e-6 for a, b in zip(lead, lead[1:]))
        checks.append({"check": "ladder, first block only (dB)", "value": f"{first:.2f}", "bar": ">= 20",
                       "pass": first >= 20})
        checks.append({"check": "ladder never decreasing with more leading blocks", "value": str(mono),
                       "bar": "True", "pass": mono})
    return checks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jscc-eval",
        description="Reproduce the papers' image experiments with the shipped codecs and write "
                    "CSV/JSON, PNG plots and a markdown summary.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", default="builtin",
                   help="'builtin' (scikit-image's bundled photographs) or a folder of images")
    p.add_argument("--sizes", default="320x240,640x480", help="frame sizes, comma-separated")
    p.add_argument("--models", default="noerasure,uniform,ladder", help="codecs for blocks/loss experiments")
    p.add_argument("--mismatch-models", default="noerasure,uniform,uniform-0.3",
                   help="codecs trained at different uniform eps (those not shipped are skipped)")
    p.add_argument("--ladder-models", default="ladder,steep", help="increasing-eps codecs (Fig. 6/7)")
    p.add_argument("--sr-model", default="taildrop", help="tail-drop-trained codec standing in for successive refinement")
    p.add_argument("--scr-models", default="uniform-scr,uniform",
                   help="codecs trained with and without SCR (ablation at the largest size)")
    p.add_argument("--experiments", default=",".join(EXPERIMENTS), help=f"any of {', '.join(EXPERIMENTS)}")
    p.add_argument("--trials", type=int, default=20, help="loss draws per image and condition")
    p.add_argument("--bits", type=int, default=8, help="latent quantization bits (2..8)")
    p.add_argument("--no-baselines", action="store_true", help="skip JPEG / JPEG 2000")
    p.add_argument("--batch", type=int, default=16, help="decoder batch size")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="codec arithmetic: auto = bf16 where the CPU is fast at it (what jscc-send/"
                        "jscc-recv run), fp32 for the reference")
    p.add_argument("--out", default="out/eval", help="output folder")
    add_common_args(p)
    return p


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # OpenJPEG's per-decode chatter
    exps = [e.strip() for e in args.experiments.split(",") if e.strip()]
    bad = set(exps) - set(EXPERIMENTS)
    if bad:
        raise UserError(f"unknown experiments {sorted(bad)}; choose from {', '.join(EXPERIMENTS)}")
    if not 2 <= args.bits <= 8:
        raise UserError("--bits must be in 2..8")
    if args.trials < 1:
        raise UserError("--trials must be >= 1")
    sizes = [parse_frame_size(s) for s in args.sizes.split(",")]
    if args.images != "builtin":
        list_images(args.images)  # a missing or empty folder is reported before any work starts
    try:
        amp_dtype = resolve_precision(args.precision, torch.device("cpu"))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    shipped = set(available_codecs())

    def usable(names: str) -> list[str]:
        out = []
        for n in (v.strip() for v in names.split(",") if v.strip()):
            if n in shipped or Path(n).is_file():
                out.append(n)
            else:
                log.warning("codec %s not available, skipped", n)
        return out

    models = usable(args.models)
    if not models:
        raise UserError(f"none of the codecs {args.models!r} is available (shipped: {sorted(shipped)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"bits": args.bits, "trials": args.trials, "precision": str(amp_dtype or "float32"), "seed": args.seed, "sizes": args.sizes,
                     "images": args.images, "blocks": {}, "loss": {}}
    t0 = time.time()
    from tqdm import tqdm

    largest = max(sizes, key=lambda wh: wh[0] * wh[1])
    steps = [(e, s) for s in sizes for e in exps
             if e in ("blocks", "loss") or (e == "scr" and s == largest) or (e != "scr" and s == sizes[0])]
    bar = tqdm(steps, desc="jscc-eval", dynamic_ncols=True)
    evaluators: dict[tuple[int, int], Evaluator] = {}
    image_names: list[str] = []
    for exp, (w, h) in bar:
        label = f"{w}x{h}"
        bar.set_postfix_str(f"{exp} {label}")
        if (w, h) not in evaluators:
            if args.images == "builtin":
                imgs = builtin_eval_images(w, h)
            else:
                imgs = {p.stem: fit_frame(load_rgb(p), w, h) for p in list_images(args.images)}
            evaluators[(w, h)] = Evaluator(imgs, args.bits, args.batch, args.seed, amp_dtype)
            image_names = list(imgs)
        ev = evaluators[(w, h)]
        if exp == "blocks":
            results["blocks"][label] = exp_blocks(ev, models, args.trials, random_patterns=(w, h) == sizes[0])
            write_csv(out / f"blocks_{label}.csv", results["blocks"][label])
        elif exp == "loss":
            results["loss"][label] = exp_loss(ev, models, args.trials, label, not args.no_baselines)
            write_csv(out / f"loss_{label}.csv", results["loss"][label])
        elif exp == "scr":
            results["scr"] = exp_scr(ev, usable(args.scr_models), args.trials, label)
            write_csv(out / "scr.csv", results["scr"])
        elif exp == "bits":
            results["quantization"] = exp_bits(ev, models)
            write_csv(out / "quantization.csv", results["quantization"])
        elif exp == "mismatch":
            results["mismatch"] = exp_mismatch(ev, usable(args.mismatch_models), args.trials)
            write_csv(out / "mismatch.csv", results["mismatch"])
        elif exp == "ladder":
            sr = usable(args.sr_model)
            results["ladder"] = exp_ladder(ev, usable(args.ladder_models), args.trials, sr[0] if sr else None)
            write_csv(out / "ladder.csv", results["ladder"])
        elif exp == "uep":
            results["uep"] = exp_uep(ev, usable(args.ladder_models) + usable("uniform"), args.trials)
            write_csv(out / "uep.csv", results["uep"])
    results["checks"] = acceptance_checks(results)
    results["plots"] = plots(out, results)
    results["wall_time_s"] = round(time.time() - t0, 1)
    results["codecs"] = {n: {k: ev.encoded(n).card.get(k) for k in ("weights_file", "training_loss", "steps")}
                         for ev in evaluators.values() for n in ev._cache}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    summary = summarize(results, image_names)
    (out / "summary.md").write_text(summary + "\n")
    print(summary)
    print(f"wrote {out}/ (results.json, CSV, {len(results['plots'])} plots, summary.md) "
          f"in {results['wall_time_s']:.0f} s")
    return results


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    run(args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, prog="jscc-eval")


if __name__ == "__main__":
    raise SystemExit(main())
