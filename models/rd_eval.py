"""Experiments of the entropy-coded codec, run through its packet API as the daemons run it.

* ``rd``: PSNR and MS-SSIM against bits per pixel (0.1-1.5 bpp) for the codec, JPEG, JPEG 2000
  and WebP at the same bytes, and the BD-rate against JPEG over 0.15-1.0 bpp;
* ``rdloss``: PSNR at one rate under uniform and Gilbert-Elliott packet loss (several draws),
  against JPEG with a restart marker per MCU row and row concealment;
* ``rdlevels``: PSNR decoded from the first j importance levels alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
import torch


from jscc_stream.baselines.image import decode_with_loss, encode_jpeg, largest_fitting
from jscc_stream.metrics import psnr as psnr_u8

from .experiments import LOSS_CONDITIONS, ms_ssim  # the papers' experiments' conditions, the same draws
from .packet_codec import PacketCodec, parse_payload

__all__ = ["RD_BPPS", "rd_rows", "bd_rate", "loss_rows", "level_rows", "classical_encoder"]

RD_BPPS = (0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0, 1.25, 1.5)


def ms_ssim_u8(a: np.ndarray, b: np.ndarray) -> float:
    """:func:`.experiments.ms_ssim` of two 8-bit images."""
    ta = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255
    tb = torch.from_numpy(b).permute(2, 0, 1)[None].float() / 255
    return float(ms_ssim(ta, tb))


def _best_fitting(encode: Callable[[int], bytes], max_bytes: int, lo: int = 1, hi: int = 100) -> bytes | None:
    """The baselines' search for the highest setting whose output fits; None when none does."""
    try:
        return largest_fitting(encode, lo, hi, max_bytes, "setting")[1]
    except ValueError:
        return None


def classical_encoder(name: str) -> Callable[[np.ndarray, int], bytes | None]:
    """``(BGR frame, max_bytes) -> file bytes`` at the best quality that fits, or None."""
    def jpeg(bgr: np.ndarray, max_bytes: int) -> bytes | None:
        return _best_fitting(lambda q: cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q,
                                                                      cv2.IMWRITE_JPEG_OPTIMIZE, 1])[1].tobytes(), max_bytes)

    def webp(bgr: np.ndarray, max_bytes: int) -> bytes | None:
        return _best_fitting(lambda q: cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, q])[1].tobytes(), max_bytes)

    def jp2(bgr: np.ndarray, max_bytes: int) -> bytes | None:
        # compression ratio x1000 is the knob: bisect on it (higher = better quality)
        return _best_fitting(lambda r: cv2.imencode(".jp2", bgr, [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, r])[1].tobytes(),
                                max_bytes, 1, 1000)

    table = {"jpeg": jpeg, "webp": webp, "jpeg2000": jp2}
    if name not in table:
        raise ValueError(f"unknown classical codec {name!r}")
    return table[name]


def rd_rows(codec: PacketCodec, images: dict[str, np.ndarray], bpps: Iterable[float] = RD_BPPS,
            baselines: Iterable[str] = ("jpeg", "jpeg2000", "webp"),
            label: str = "jscc") -> list[dict]:
    """One row per (codec, image, target bpp): bytes used, bpp, PSNR, MS-SSIM.  Images RGB."""
    rows = []
    for name, rgb in images.items():
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        h, w = bgr.shape[:2]
        for bpp in bpps:
            budget = int(bpp * w * h / 8)
            payloads = codec.encode(bgr, budget)
            out = codec.decode(payloads, w, h)
            used = sum(map(len, payloads))
            rows.append({"codec": label, "image": name, "target_bpp": bpp, "bytes": used,
                         "bpp": used * 8 / (w * h), "psnr": psnr_u8(out, bgr),
                         "ms_ssim": ms_ssim_u8(out, bgr), "payloads": len(payloads)})
            for base in baselines:
                data = classical_encoder(base)(bgr, budget)
                if data is None:
                    continue  # cannot go this low at all
                dec = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                rows.append({"codec": base, "image": name, "target_bpp": bpp, "bytes": len(data),
                             "bpp": len(data) * 8 / (w * h), "psnr": psnr_u8(dec, bgr),
                             "ms_ssim": ms_ssim_u8(dec, bgr), "payloads": None})
    return rows


def bd_rate(rate_a: np.ndarray, psnr_a: np.ndarray, rate_b: np.ndarray, psnr_b: np.ndarray) -> float:
    """Bjøntegaard delta rate of curve B against curve A, in percent (negative: B needs fewer
    bits for the same quality).  Cubic fits of log-rate over PSNR, integrated over the PSNR
    range both curves cover."""
    la, lb = np.log(rate_a), np.log(rate_b)
    pa, pb = np.polyfit(psnr_a, la, 3), np.polyfit(psnr_b, lb, 3)
    lo, hi = max(psnr_a.min(), psnr_b.min()), min(psnr_a.max(), psnr_b.max())
    if hi <= lo:
        raise ValueError("the two curves share no PSNR range")
    ia, ib = np.polyint(pa), np.polyint(pb)
    mean_diff = ((np.polyval(ib, hi) - np.polyval(ib, lo)) - (np.polyval(ia, hi) - np.polyval(ia, lo))) / (hi - lo)
    return float((math.exp(mean_diff) - 1) * 100)


def bd_rate_rows(rows: list[dict], anchor: str = "jpeg", lo: float = 0.15, hi: float = 1.0) -> list[dict]:
    """BD-rate of every codec against ``anchor``, per image, over target bpp in [lo, hi]."""
    out = []
    codecs = sorted({r["codec"] for r in rows} - {anchor})
    for image in sorted({r["image"] for r in rows}):
        def curve(c: str) -> tuple[np.ndarray, np.ndarray]:
            pts = sorted((r["bpp"], r["psnr"]) for r in rows
                         if r["codec"] == c and r["image"] == image and lo <= r["target_bpp"] <= hi)
            return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        ra, pa = curve(anchor)
        for c in codecs:
            rb, pb = curve(c)
            if len(ra) >= 4 and len(rb) >= 4:
                try:
                    out.append({"codec": c, "anchor": anchor, "image": image, "bd_rate_pct": bd_rate(ra, pa, rb, pb)})
                except ValueError:
                    pass
    return out


def loss_rows(codec: PacketCodec, images: dict[str, np.ndarray], bpp: float, trials: int,
              seed: int = 0, label: str = "jscc") -> list[dict]:
    """PSNR under packet loss: every condition, ``trials`` draws per image, codec and JPEG."""
    rows = []
    for ci, (cond, proc) in enumerate(LOSS_CONDITIONS):
        n_draws = 1 if cond == "none" else trials
        for name, rgb in images.items():
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            h, w = bgr.shape[:2]
            budget = int(bpp * w * h / 8)
            payloads = codec.encode(bgr, budget)
            jpeg = encode_jpeg(rgb, budget)
            # separate generators: JPEG's draws must not depend on how many payloads the codec
            # sent (interleaved, its mean over 10 draws moved by up to 1 dB between codecs)
            rng, rng_jpeg = np.random.default_rng(seed + 1000 * ci), np.random.default_rng(seed + 1000 * ci + 500)
            for t in range(n_draws):
                lost = proc.sample(1, len(payloads), rng)[0]
                out = codec.decode([None if x else p for p, x in zip(payloads, lost)], w, h)
                rows.append({"codec": label, "condition": cond, "image": name, "trial": t,
                             "psnr": psnr_u8(out, bgr), "lost": float(lost.mean()),
                             "bytes": sum(map(len, payloads))})
                jl = proc.sample(1, len(jpeg.packets), rng_jpeg)[0]
                dec, _ = decode_with_loss(jpeg, ~jl)
                rows.append({"codec": "jpeg", "condition": cond, "image": name, "trial": t,
                             "psnr": psnr_u8(dec, rgb), "lost": float(jl.mean()), "bytes": len(jpeg.data)})
    return rows


def level_rows(codec: PacketCodec, images: dict[str, np.ndarray], bpp: float, label: str = "jscc") -> list[dict]:
    """PSNR decoded from the payloads of levels < j only, for every j."""
    rows = []
    n_levels = len(codec.levels)
    for name, rgb in images.items():
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        h, w = bgr.shape[:2]
        payloads = codec.encode(bgr, int(bpp * w * h / 8))
        lv = [parse_payload(p, n_levels)[0].level for p in payloads]
        for j in range(1, n_levels + 1):
            kept = [p if level < j else None for p, level in zip(payloads, lv)]
            used = sum(len(p) for p in kept if p)
            out = codec.decode(kept, w, h)
            rows.append({"codec": label, "image": name, "levels": j, "bytes": used,
                         "psnr": psnr_u8(out, bgr)})
    return rows


def _mean(rows: list[dict], key: str = "psnr", **where) -> float:
    vals = [r[key] for r in rows if all(r.get(k) == v for k, v in where.items())]
    return float(np.mean(vals)) if vals else float("nan")


def plot_rd(path, rows: list[dict], key: str, title: str) -> None:
    """Mean quality against mean bpp per codec (one point per target rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for codec in dict.fromkeys(r["codec"] for r in rows):
        pts = []
        for bpp in sorted({r["target_bpp"] for r in rows}):
            sub = [r for r in rows if r["codec"] == codec and r["target_bpp"] == bpp]
            images = {r["image"] for r in rows if r["target_bpp"] == bpp}
            if len(sub) == len(images):  # only rates every image reached (JPEG cannot go lowest)
                pts.append((np.mean([r["bpp"] for r in sub]), np.mean([r[key] for r in sub])))
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=codec)
    ax.set_title(title)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR (dB)" if key == "psnr" else "MS-SSIM")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summary_lines(size: str, rd: list[dict], bd: list[dict], loss: list[dict], levels: list[dict],
                  label: str) -> list[str]:
    """Markdown lines with the numbers the issue states its bars in."""
    out = [f"### {size}", ""]
    if rd:
        out += ["| target bpp | " + " | ".join(dict.fromkeys(r["codec"] for r in rd)) + " |",
                "|---|" + "---|" * len(dict.fromkeys(r["codec"] for r in rd))]
        for bpp in sorted({r["target_bpp"] for r in rd}):
            cells = []
            for c in dict.fromkeys(r["codec"] for r in rd):
                sub = [r for r in rd if r["codec"] == c and r["target_bpp"] == bpp]
                cells.append(f"{np.mean([r['psnr'] for r in sub]):.2f} dB / {np.mean([r['bpp'] for r in sub]):.3f}"
                             + ("" if len(sub) == len({r['image'] for r in rd}) else f" ({len(sub)} img)")
                             if sub else "-")
            out.append(f"| {bpp} | " + " | ".join(cells) + " |")
        out.append("")
    if bd:
        for c in dict.fromkeys(r["codec"] for r in bd):
            vals = [r["bd_rate_pct"] for r in bd if r["codec"] == c]
            out.append(f"- BD-rate of {c} against JPEG (0.15-1.0 bpp, mean over {len(vals)} images): "
                       f"{np.mean(vals):+.1f} % (median {np.median(vals):+.1f} %)")
    if loss:
        for cond in dict.fromkeys(r["condition"] for r in loss):
            j, b = _mean(loss, codec=label, condition=cond), _mean(loss, codec="jpeg", condition=cond)
            per_image_var = [np.var([r["psnr"] for r in loss if r["codec"] == label and r["condition"] == cond
                                     and r["image"] == im]) for im in dict.fromkeys(r["image"] for r in loss)]
            out.append(f"- {cond}: {label} {j:.2f} dB, JPEG (restart markers + concealment) {b:.2f} dB "
                       f"({j - b:+.2f}); {label} PSNR variance across draws {np.mean(per_image_var):.2f} dB^2")
    if levels:
        means = [_mean(levels, levels=j) for j in sorted({r["levels"] for r in levels})]
        out.append("- decoded from the first j levels: " + ", ".join(f"{j + 1}: {m:.2f}" for j, m in enumerate(means)))
    return out + [""]


def run(models: list[str], sizes: list[tuple[int, int]], experiments: list[str], out, images: str = "builtin",
        trials: int = 20, bpps: tuple[float, ...] = RD_BPPS, loss_bpp: float = 0.5, seed: int = 0,
        precision: str = "auto", baselines: tuple[str, ...] = ("jpeg", "jpeg2000", "webp"),
        progress=None) -> dict:
    """Every experiment for every codec and size: CSV files, plots and ``summary.md`` in ``out``."""
    import csv
    import json
    from pathlib import Path

    from jscc_stream.sources import fit_frame

    from .data import builtin_eval_images, list_images, load_rgb
    from .packet_codec import PacketCodec

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    lines = ["# Entropy-coded codec: rate-distortion, loss and levels", ""]
    for (w, h) in sizes:
        size = f"{w}x{h}"
        imgs = (builtin_eval_images(w, h) if images == "builtin"
                else {p.stem: fit_frame(load_rgb(p), w, h) for p in list_images(images)})
        for name in models:
            codec = PacketCodec.load(name, device="cpu", precision=precision)
            rd = rd_rows(codec, imgs, bpps, baselines if name == models[0] else (), label=name) if "rd" in experiments else []
            loss = loss_rows(codec, imgs, loss_bpp, trials, seed, label=name) if "rdloss" in experiments else []
            lv = level_rows(codec, imgs, loss_bpp, label=name) if "rdlevels" in experiments else []
            results[f"{name}@{size}"] = {"rd": rd, "loss": loss, "levels": lv}
            if progress:
                progress(f"{name} {size} done")
        rd_all = [r for k, v in results.items() if k.endswith(size) for r in v["rd"]]
        bd = bd_rate_rows(rd_all) if rd_all else []
        for key, rows in (("rd", rd_all), ("bd", bd)):
            if rows:
                with open(out / f"{key}_{size}.csv", "w", newline="") as f:
                    wr = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
                    wr.writeheader()
                    wr.writerows(rows)
        if rd_all:
            plot_rd(out / f"rd_psnr_{size}.png", rd_all, "psnr", f"PSNR vs rate ({size})")
            plot_rd(out / f"rd_msssim_{size}.png", rd_all, "ms_ssim", f"MS-SSIM vs rate ({size})")
        for name in models:
            v = results[f"{name}@{size}"]
            lines += summary_lines(f"{name}, {size}", v["rd"] if name == models[0] else
                                   [r for r in v["rd"] if r["codec"] == name],
                                   [r for r in bd if r["codec"] == name], v["loss"], v["levels"], name)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(results))
    return results


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m jscc_stream.models.rd_eval", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default="uniform,ladder", help="entropy-coded codecs (names or paths)")
    p.add_argument("--sizes", default="320x240,640x480")
    p.add_argument("--experiments", default="rd,rdloss,rdlevels")
    p.add_argument("--images", default="builtin", help="'builtin' or a folder of images")
    p.add_argument("--trials", type=int, default=20, help="loss draws per image and condition")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="out/rd-eval")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    run(args.models.split(","), sizes, args.experiments.split(","), args.out, args.images, args.trials,
        progress=print)
    print((Path(args.out) / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
