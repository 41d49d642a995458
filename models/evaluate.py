"""``jscc-eval``: the papers' image experiments on the shipped codecs.

Experiments (``--experiments``, default all but ``awgn``).  The entropy-coded codecs (``--rd-models``):

* ``rd``       PSNR and MS-SSIM against bits per pixel (0.1-1.5) beside JPEG, JPEG 2000 and WebP
               at the same bytes, BD-rate against JPEG (:mod:`.rd_eval`);
* ``rdloss``   PSNR under uniform and Gilbert-Elliott packet loss at 0.5 bpp, beside JPEG;
* ``rdlevels`` PSNR decoded from the first j importance levels;
* ``bitlayers`` paper 003's bit-level importance (:mod:`.bitlayers_eval`): PSNR from the first j
               bit layers, and through a strict-priority bottleneck with and without the
               refinements marked below the coarse indexes, at the same bytes (first rd model,
               first size).

The video codecs (``--video-models``, predicted frames):

* ``video``    a stream simulated offline (receipts a round trip late, loss per payload):
               predicted frames against intra-only at the same bytes (:mod:`.video_eval`).

The analog codecs of paper 002 (trained first when missing from ``--awgn-models``):

* ``awgn``     AE / VAE / VSCC trained at -5, 5, 15 dB, PSNR and SSIM vs test SNR -10..25 dB, and
               VSCC's channel matching constant sweep (paper 002, Fig. 8 and 9; :mod:`.awgn_eval`).

The fixed-rate codecs of papers 000/001 (``--models`` and the other model lists):

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
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from jscc_stream.cli import add_common_args, entry_point, parse_args, parse_frame_size
from jscc_stream.errors import UserError

from jscc_stream.sources import fit_frame

from .data import builtin_eval_images, list_images, load_rgb
from .experiments import (EXPERIMENTS, Evaluator, exp_bits, exp_blocks, exp_ladder, exp_loss, exp_mismatch,
                          exp_scr, exp_uep)
from .precision import PRECISIONS, resolve_precision
from .report import acceptance_checks, plots, summarize, write_csv
from .zoo import available_codecs

log = logging.getLogger("jscc.eval")

RD_EXPERIMENTS = ("rd", "rdloss", "rdlevels", "video", "bitlayers", "awgn")
#: What runs without --experiments: all but awgn, which trains its models (opt-in: tens of CPU minutes).
DEFAULT_EXPERIMENTS = EXPERIMENTS + RD_EXPERIMENTS[:-1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jscc-eval",
        description="Reproduce the papers' image experiments with the shipped codecs and write "
                    "CSV/JSON, PNG plots and a markdown summary.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", default="builtin",
                   help="'builtin' (scikit-image's bundled photographs) or a folder of images")
    p.add_argument("--sizes", default="320x240,640x480", help="frame sizes, comma-separated")
    p.add_argument("--models", default="fixed-noerasure,fixed-uniform,fixed-ladder",
                   help="fixed-rate codecs for the papers' blocks/loss experiments")
    p.add_argument("--mismatch-models", default="fixed-noerasure,fixed-uniform,fixed-uniform-0.3",
                   help="codecs trained at different uniform eps (those not shipped are skipped)")
    p.add_argument("--ladder-models", default="fixed-ladder,fixed-steep", help="increasing-eps codecs (Fig. 6/7)")
    p.add_argument("--sr-model", default="fixed-taildrop", help="tail-drop-trained codec standing in for successive refinement")
    p.add_argument("--scr-models", default="fixed-uniform-scr,fixed-uniform",
                   help="codecs trained with and without SCR (ablation at the largest size)")
    p.add_argument("--rd-models", default="uniform,ladder,noerasure",
                   help="entropy-coded codecs for the rd, rdloss and rdlevels experiments")
    p.add_argument("--video-models", default="video", help="video codecs for the video experiment")
    p.add_argument("--video-sources", default="synthetic:0,synthetic:1,synthetic:2,synthetic:3",
                   help="comma list of frame sources for the video experiment (synthetic[:SEED], a video file, "
                        "an image folder); frames at the first --sizes")
    p.add_argument("--video-frames", type=int, default=60, help="frames per video source")
    p.add_argument("--experiments", default=",".join(DEFAULT_EXPERIMENTS),
                   help=f"any of {', '.join(EXPERIMENTS + RD_EXPERIMENTS)} (awgn only when named: it trains "
                        "its models first)")
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
    a = p.add_argument_group("awgn experiment (paper 002)")
    a.add_argument("--awgn-models", default="runs/awgn", metavar="DIR",
                   help="where the analog models are read from, and trained into when missing")
    a.add_argument("--data", action="append", default=None, metavar="DIR",
                   help="training photographs for missing analog models (default: data/train when it exists)")
    a.add_argument("--train-steps", type=int, default=1000, help="optimiser steps per analog model trained")
    a.add_argument("--awgn-trials", type=int, default=2, help="noise draws per image and test SNR")
    a.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="analog models' training and testing device (auto = CUDA when present)")
    add_common_args(p)
    return p


def _check(args: argparse.Namespace) -> tuple[list[str], list[tuple[int, int]], torch.dtype | None]:
    """Experiments, sizes and codec precision asked for; user mistakes before any work starts."""
    exps = [e.strip() for e in args.experiments.split(",") if e.strip()]
    bad = set(exps) - set(EXPERIMENTS + RD_EXPERIMENTS)
    if bad:
        raise UserError(f"unknown experiments {sorted(bad)}; choose from {', '.join(EXPERIMENTS + RD_EXPERIMENTS)}")
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
    return exps, sizes, amp_dtype


def _usable(names: str, shipped: set[str]) -> list[str]:
    """The codecs of a comma list that exist (shipped names or files); the others are skipped."""
    out = []
    for n in (v.strip() for v in names.split(",") if v.strip()):
        if n in shipped or Path(n).is_file():
            out.append(n)
        else:
            log.warning("codec %s not available, skipped", n)
    return out


def _images(args: argparse.Namespace, w: int, h: int) -> dict:
    if args.images == "builtin":
        return builtin_eval_images(w, h)
    return {p.stem: fit_frame(load_rgb(p), w, h) for p in list_images(args.images)}


def _run_experiment(exp: str, ev: Evaluator, args: argparse.Namespace, models: list[str], label: str,
                    first_size: bool, shipped: set[str], results: dict, out: Path) -> None:
    """Run one experiment at one size into ``results`` and its CSV file."""
    if exp in ("blocks", "loss"):
        rows = (exp_blocks(ev, models, args.trials, random_patterns=first_size) if exp == "blocks"
                else exp_loss(ev, models, args.trials, label, not args.no_baselines))
        results[exp][label] = rows
        write_csv(out / f"{exp}_{label}.csv", rows)
        return
    if exp == "scr":
        key, rows = "scr", exp_scr(ev, _usable(args.scr_models, shipped), args.trials, label)
    elif exp == "bits":
        key, rows = "quantization", exp_bits(ev, models)
    elif exp == "mismatch":
        key, rows = "mismatch", exp_mismatch(ev, _usable(args.mismatch_models, shipped), args.trials)
    elif exp == "ladder":
        sr = _usable(args.sr_model, shipped)
        key, rows = "ladder", exp_ladder(ev, _usable(args.ladder_models, shipped), args.trials, sr[0] if sr else None)
    else:  # uep
        key, rows = "uep", exp_uep(ev, _usable(args.ladder_models, shipped) + _usable("fixed-uniform", shipped), args.trials)
    results[key] = rows
    write_csv(out / f"{key}.csv", rows)


def _finish(results: dict, evaluators: dict, image_names: list[str], out: Path, t0: float) -> None:
    """Checks, plots, results.json and summary.md."""
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


def run(args: argparse.Namespace) -> dict:
    """Run the experiments ``args`` asks for; write and return the results."""
    if args.threads:
        torch.set_num_threads(args.threads)
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # OpenJPEG's per-decode chatter
    exps, sizes, amp_dtype = _check(args)
    shipped = set(available_codecs())
    out = Path(args.out)
    rd_exps = [e for e in exps if e in RD_EXPERIMENTS]
    exps = [e for e in exps if e not in RD_EXPERIMENTS]
    models = _usable(args.models, shipped) if exps else []
    if exps and not models:
        raise UserError(f"none of the codecs {args.models!r} is available (shipped: {sorted(shipped)})")
    video, layers = "video" in rd_exps, "bitlayers" in rd_exps
    if "awgn" in rd_exps:
        _run_awgn(args, out / "awgn" if len(rd_exps) > 1 or exps else out)
    rd_exps = [e for e in rd_exps if e not in ("video", "bitlayers", "awgn")]
    rd_results = _run_rd(args, rd_exps, sizes, shipped, out) if rd_exps else None
    if video:
        rd_results = {**(rd_results or {}), "video": _run_video(args, sizes[0], out)}
    if layers:
        rd_results = {**(rd_results or {}), "bitlayers": _run_bitlayers(args, sizes[0], shipped, out)}
    if not exps:
        return {"rd": rd_results}
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"bits": args.bits, "trials": args.trials, "precision": str(amp_dtype or "float32"),
                     "seed": args.seed, "sizes": args.sizes, "images": args.images, "blocks": {}, "loss": {}}
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
            imgs = _images(args, w, h)
            evaluators[(w, h)] = Evaluator(imgs, args.bits, args.batch, args.seed, amp_dtype)
            image_names = list(imgs)
        _run_experiment(exp, evaluators[(w, h)], args, models, label, (w, h) == sizes[0], shipped, results, out)
    _finish(results, evaluators, image_names, out, t0)
    results["rd"] = rd_results
    return results


def _run_rd(args: argparse.Namespace, exps: list[str], sizes: list[tuple[int, int]], shipped: set[str],
            out: Path) -> dict:
    """The entropy-coded codecs' experiments into ``out/rd`` (:func:`.rd_eval.run`)."""
    from .rd_eval import run as rd_run

    models = _usable(args.rd_models, shipped)
    if not models:
        raise UserError(f"none of the codecs {args.rd_models!r} is available (shipped: {sorted(shipped)})")
    res = rd_run(models, sizes, exps, out / "rd", args.images, args.trials, seed=args.seed, precision=args.precision,
                 baselines=() if args.no_baselines else ("jpeg", "jpeg2000", "webp"), progress=log.info)
    print((out / "rd" / "summary.md").read_text())
    return res


def _run_bitlayers(args: argparse.Namespace, size: tuple[int, int], shipped: set[str], out: Path) -> dict:
    """Paper 003's bit-layer experiment into ``out/bitlayers`` (:func:`.bitlayers_eval.run`)."""
    from .bitlayers_eval import run as layers_run

    models = _usable(args.rd_models, shipped)
    if not models:
        raise UserError(f"none of the codecs {args.rd_models!r} is available (shipped: {sorted(shipped)})")
    res = layers_run(models[0], _images(args, *size), out / "bitlayers", precision="fp32", progress=log.info)
    print((out / "bitlayers" / "summary.md").read_text())
    return res


def _run_video(args: argparse.Namespace, size: tuple[int, int], out: Path) -> dict:
    """The video codecs' experiment into ``out/video`` (:func:`.video_eval.run`)."""
    from jscc_stream.sources import open_source

    from .video_eval import run as video_run

    w, h = size
    sources = {}
    for spec in (s.strip() for s in args.video_sources.split(",") if s.strip()):
        src = open_source(spec, w, h, 30.0)
        frames = [f for f in (src.read(i) for i in range(args.video_frames)) if f is not None]
        src.close()
        if len(frames) < 2:
            raise UserError(f"video source {spec} has fewer than 2 frames")
        sources[Path(spec).stem if Path(spec).exists() else spec] = frames
    models = [m.strip() for m in args.video_models.split(",") if m.strip()]
    res = video_run(models, sources, out / "video", budget=w * h // 16, seed=args.seed, progress=log.info)
    print((out / "video" / "summary.md").read_text())
    return res


def _run_awgn(args: argparse.Namespace, out: Path) -> dict:
    """The analog codecs' experiment into ``out`` (:func:`.awgn_eval.run_awgn`)."""
    from .awgn_eval import AwgnPlan, run_awgn

    if args.train_steps < 1 or args.awgn_trials < 1:
        raise UserError("--train-steps and --awgn-trials must be >= 1")
    data = args.data or (["data/train"] if Path("data/train").is_dir() else None)
    for d in data or []:
        list_images(d)  # a missing or empty folder is reported before any work starts
    try:
        res = run_awgn(AwgnPlan(steps=args.train_steps, trials=args.awgn_trials, seed=args.seed), out,
                       Path(args.awgn_models), data, args.device)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(f"awgn: {len(res['models'])} models, best d by validation {res['best_cmc_by_validation']}, "
          f"wrote {out}/awgn.json and {len(res['plots'])} plots in {res['wall_time_s']:.0f} s")
    return res


def _main(argv: Sequence[str] | None = None) -> int:
    run(parse_args(build_parser, argv))
    return 0


main = entry_point(_main, "jscc-eval")


if __name__ == "__main__":
    raise SystemExit(main())
