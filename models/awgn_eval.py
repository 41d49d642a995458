"""``jscc-eval --experiments awgn``: paper 002's experiments with the analog codec (:mod:`.analog`).

* objectives (Fig. 9): AE, VAE and VSCC models trained at each training SNR, PSNR and SSIM against
  the test SNR (only means sent; VAE/VSCC resample with the knowledge-base variance, Fig. 6c);
* CMC sweep (Fig. 8): VSCC models trained with each channel matching constant d at each training
  SNR.  The objectives' VSCC curve is the sweep's best d at the training SNR (validation PSNR),
  so the sweep's models are shared.

Models missing from ``models_dir`` are trained first (``jscc-train --channel`` in-process), so one
command reproduces everything; existing ones are read back.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jscc_stream.netem.awgn import AwgnChannel

from .analog import AnalogCodec
from .data import builtin_eval_images, to_tensor
from .experiments import psnr
from .zoo import load_codec

__all__ = ["AwgnPlan", "model_name", "evaluate_model", "run_awgn", "TEST_SNRS"]

log = logging.getLogger("jscc.eval")

TEST_SNRS = tuple(np.arange(-10.0, 25.01, 2.5).round(2).tolist())


@dataclass(frozen=True)
class AwgnPlan:
    """What to train and test."""

    train_snrs: tuple[float, ...] = (-5.0, 5.0, 15.0)
    cmcs: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 15.0)
    test_snrs: tuple[float, ...] = TEST_SNRS
    steps: int = 1000
    batch: int = 16
    crop: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-3
    trials: int = 2
    seed: int = 0

    def models(self) -> list[tuple[float, str, float | None]]:
        """(training SNR, objective, d) of every model the experiment needs."""
        return [(s, o, None) for s in self.train_snrs for o in ("ae", "vae")] + \
               [(s, "vscc", d) for s in self.train_snrs for d in self.cmcs]


def model_name(snr: float, objective: str, cmc: float | None) -> str:
    """``awgn5-vscc-d10``, ``awgn-5-ae``: the file name stem of a model of the experiment."""
    return f"awgn{snr:g}-{objective}" + (f"-d{cmc:g}" if cmc is not None else "")


@torch.no_grad()
def evaluate_model(model: AnalogCodec, images: torch.Tensor, test_snrs: tuple[float, ...], trials: int,
                   seed: int) -> list[dict]:
    """PSNR and SSIM (mean over images and noise draws, and the draws' min/max of the mean)."""
    from pytorch_msssim import ssim

    model.eval()
    rows = []
    for snr in test_snrs:
        ch = AwgnChannel(snr)
        gen = torch.Generator(device=images.device).manual_seed(seed)
        p, s = [], []
        for _ in range(trials):
            out = model.transmit(images, ch.noise_var, gen).clamp(0, 1)
            p.append(psnr(out, images).mean().item())
            s.append(ssim((out * 255).round() / 255, images, data_range=1.0, size_average=True).item())
        rows.append({"test_snr_db": snr, "psnr": round(float(np.mean(p)), 3), "ssim": round(float(np.mean(s)), 4),
                     "psnr_min": round(min(p), 3), "psnr_max": round(max(p), 3)})
    return rows


def _train_args(plan: AwgnPlan, data: list[str], out: Path, device: str, snr: float, objective: str,
                cmc: float | None) -> argparse.Namespace:
    return argparse.Namespace(
        data=data, val_count=2, name=model_name(snr, objective, cmc), out=str(out), channel=f"awgn:{snr:g}",
        objective=objective, cmc=cmc or 0.0, kl_weight=plan.kl_weight, analog_channels=4, steps=plan.steps,
        batch=plan.batch, crop=plan.crop, lr=plan.lr, seed=plan.seed, resume=False, ckpt_every=500,
        device=device, threads=0, quiet=True)


def _model(plan: AwgnPlan, models_dir: Path, data: list[str] | None, device: str, spec, shared: dict):
    """A model of the plan: read from ``models_dir`` or trained into it (the photographs loaded once)."""
    from .analog_train import load_training_data, train_analog

    name = model_name(*spec)
    found = sorted(p for p in models_dir.glob(f"{name}-*.safetensors") if p.stem.rsplit("-", 1)[0] == name)
    if found:
        path = found[-1]
    else:
        if not data:
            raise FileNotFoundError(f"no {name} in {models_dir} and no --data to train it") from None
        args = _train_args(plan, data, models_dir, device, *spec)
        if "data" not in shared:
            shared["data"] = load_training_data(args)
        t0 = time.time()
        path = train_analog(args, shared["data"])
        log.info("trained %s in %.0f s", name, time.time() - t0)
    return load_codec(path, device=device)


def _best_cmc(cards: dict[str, dict], plan: AwgnPlan, snr: float) -> float:
    """The sweep's d with the best validation PSNR at the training SNR."""
    return max(plan.cmcs, key=lambda d: cards[model_name(snr, "vscc", d)]["validation"]["psnr_at_training_snr"])


def run_awgn(plan: AwgnPlan, out: Path, models_dir: Path, data: list[str] | None, device: str,
             image_size: tuple[int, int] = (160, 120)) -> dict:
    """Train what is missing, test everything, write ``awgn.json`` and the plots into ``out``."""
    from tqdm import tqdm

    from .frame_codec import pick_device

    dev = str(pick_device(device))
    out.mkdir(parents=True, exist_ok=True)
    models_dir.mkdir(parents=True, exist_ok=True)
    images = torch.cat([to_tensor(v) for v in builtin_eval_images(*image_size).values()]).to(dev)
    t0, shared, rows, cards = time.time(), {}, [], {}
    for spec in tqdm(plan.models(), desc="awgn models", dynamic_ncols=True):
        model, card = _model(plan, models_dir, data, dev, spec, shared)
        cards[model_name(*spec)] = card
        for r in evaluate_model(model, images, plan.test_snrs, plan.trials, plan.seed):
            rows.append({"model": model_name(*spec), "train_snr_db": spec[0], "objective": spec[1], "cmc": spec[2], **r})
    best = {snr: _best_cmc(cards, plan, snr) for snr in plan.train_snrs}
    result = {"plan": plan.__dict__ | {"train_snrs": list(plan.train_snrs), "cmcs": list(plan.cmcs),
                                       "test_snrs": list(plan.test_snrs)},
              "images": f"scikit-image builtin set at {image_size[0]}x{image_size[1]}", "device": dev,
              "best_cmc_by_validation": {f"{k:g}": v for k, v in best.items()},
              "best_cmc_by_ssim_in_band": best_in_band(rows, plan, "ssim"),
              "best_cmc_by_psnr_in_band": best_in_band(rows, plan, "psnr"),
              "models": {n: {k: c.get(k) for k in ("steps", "wall_time_s", "kb_var", "validation", "weights_file",
                                                   "bandwidth_ratio", "kl_weight", "device")} for n, c in cards.items()},
              "rows": rows, "wall_time_s": round(time.time() - t0, 1)}
    result["plots"] = awgn_plots(out, rows, plan, best)
    (out / "awgn.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def best_in_band(rows: list[dict], plan: AwgnPlan, metric: str) -> dict[str, float]:
    """Per training SNR, the d whose VSCC model has the best mean ``metric`` over test SNRs from
    the training SNR to 10 dB above it (the band the paper reads Fig. 8 in)."""
    out = {}
    for snr in plan.train_snrs:
        def score(d: float) -> float:
            return float(np.mean([r[metric] for r in rows if r["objective"] == "vscc" and r["cmc"] == d
                                  and r["train_snr_db"] == snr and snr <= r["test_snr_db"] <= snr + 10]))
        out[f"{snr:g}"] = max(plan.cmcs, key=score)
    return out


def _panels(path: Path, plan: AwgnPlan, metric: str, series_of, title: str) -> None:
    """One panel per training SNR, ``series_of(snr)`` -> {label: (xs, ys)}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(plan.train_snrs), figsize=(4.2 * len(plan.train_snrs), 3.6), dpi=90,
                             sharey=True, squeeze=False)
    for ax, snr in zip(axes[0], plan.train_snrs):
        for label, (xs, ys) in series_of(snr).items():
            ax.plot(xs, ys, marker="o", ms=3, label=label)
        ax.axvline(snr, color="grey", ls=":", lw=1)
        ax.set_title(f"trained at {snr:g} dB")
        ax.set_xlabel("test SNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(metric.upper())
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def awgn_plots(out: Path, rows: list[dict], plan: AwgnPlan, best: dict[float, float]) -> list[str]:
    """PSNR and SSIM vs test SNR for the objectives, and for the CMC sweep."""
    def curve(pred, metric):
        sel = [r for r in rows if pred(r)]
        return [r["test_snr_db"] for r in sel], [r[metric] for r in sel]

    made = []
    for metric in ("psnr", "ssim"):
        def objectives(snr, metric=metric):
            return {(f"vscc d={best[snr]:g}" if o == "vscc" else o): curve(
                lambda r, o=o: r["train_snr_db"] == snr and r["objective"] == o
                and (o != "vscc" or r["cmc"] == best[snr]), metric) for o in ("ae", "vae", "vscc")}

        def sweep(snr, metric=metric):
            return {f"d={d:g}": curve(lambda r, d=d: r["train_snr_db"] == snr and r["cmc"] == d, metric)
                    for d in plan.cmcs}

        for name, fn, title in ((f"awgn_objectives_{metric}.png", objectives, "AE / VAE / VSCC over AWGN"),
                                (f"awgn_cmc_{metric}.png", sweep, "VSCC channel matching constant d")):
            _panels(out / name, plan, metric, fn, f"{title}: {metric.upper()} vs test SNR")
            made.append(name)
    return made
