"""``jscc-bench compare`` (or ``python -m jscc_stream.bench.compare``): H.264, H.264+FEC, H.264+NACK, JPEG and JSCC over the same lossy channel.

One command regenerates every table and plot of docs/results.md (seeds fixed):

    jscc-bench compare --out docs/results

``--quick`` (CI): 30 frames, the synthetic source, no loss and GE ~10 %.

``--sources`` also takes the user's own footage (video files, image folders, globs):

    jscc-bench compare --sources synthetic,clips/street.mp4 --frames 120 --out /tmp/cmp
"""

from __future__ import annotations

import argparse
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path

from jscc_stream.errors import UserError
from jscc_stream.cli import add_common_args, entry_point, parse_args, parse_frame_size

__all__ = ["build_parser", "run", "main"]

log = logging.getLogger("jscc.bench.compare")
PROG = "jscc-bench compare"


def build_parser() -> argparse.ArgumentParser:
    from .channel import CONDITIONS
    from .runner import ALL_ARMS, DEFAULT_ARMS, SOURCES

    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Stream the same source frames with JSCC (jscc-send | jscc-netem | jscc-recv), H.264 "
                    "(plain, +Reed-Solomon FEC, +NACK) and per-frame JPEG through the jscc-netem shim with "
                    "identical seeded loss traces; score per-frame PSNR/SSIM, frozen frames and latency; write "
                    "results.json, summary.json, table.md and PNG plots to --out.")
    p.add_argument("--out", type=Path, default=Path("docs/results"), help="output folder")
    p.add_argument("--quick", action="store_true", help="CI size: 30 frames, synthetic source, 'none' and 'ge10'")
    p.add_argument("--frames", type=int, help="frames per run (default 150, --quick 30)")
    p.add_argument("--size", default="320x240", help="frame size WxH")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--jscc-wall-fps", type=float,
                   help="send the JSCC arm's frames at this wall-clock rate (media stays at --fps: the exact "
                        "frames go through a lossless video file, pacing is scaled) when the CPU is too busy "
                        "for its decoder to keep up in real time (default: --fps)")
    p.add_argument("--jscc-pace", type=float, default=0.0,
                   help="jscc-send --pace for the JSCC arm (0: a frame's packets back to back, as the baseline "
                        "arms send them; the published runs before the video codec used 0.5)")
    p.add_argument("--sources",
                   help=f"comma list of {', '.join(SOURCES)} and/or your own footage: video files (any that OpenCV "
                        "reads; centre-cropped to --size, never stretched; frames taken in order at --fps; it must "
                        "hold at least --frames frames, no looping), image folders or globs (a slideshow with slow "
                        "camera motion). Tables and plots name a path by its file stem (default: all built-ins; "
                        "--quick synthetic)")
    p.add_argument("--conditions", help="comma list of " + ", ".join(c.name for c in CONDITIONS)
                   + " (default all; --quick none,ge10)")
    p.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                   help=f"comma list of codecs to run, from {', '.join(ALL_ARMS)} (the webrtc-* arms are two "
                        "aiortc peers, VP8 or H.264 with their own NACK, PLI and REMB bitrate adaptation)")
    p.add_argument("--codec", default="video", help="JSCC codec name or .safetensors path")
    p.add_argument("--jscc-args", default="", metavar="ARGS",
                   help="more jscc-send options for the JSCC arm, one string; write it with = as it starts with -- (e.g. --jscc-args=\"--protect-levels 0\" for no "
                        "repair of the top levels)")
    p.add_argument("--seed", type=int, default=1, help="seed of the loss traces")
    p.add_argument("--rtt-ms", type=float, default=100.0, help="round trip for the NACK arm")
    p.add_argument("--delay-ms", type=float, default=50.0, help="shim one-way delay (every arm)")
    p.add_argument("--latency-ms", type=float, default=50.0, help="receivers' playout deadline")
    p.add_argument("--workdir", type=Path, help="keep per-run logs and frames here (default: a temp folder)")
    p.add_argument("--merge", action="store_true",
                   help="keep the runs of an existing --out/results.json that this invocation does not redo "
                        "(e.g. rerun only --arms jscc when new weights land)")
    p.add_argument("--report-only", action="store_true", help="redraw table and plots from --out/results.json")
    add_common_args(p)
    return p


def _pick(text: str | None, allowed: Sequence[str], default: Sequence[str], what: str) -> list[str]:
    if not text:
        return list(default)
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise UserError(f"unknown {what}: {', '.join(bad) or '(none)'}; choose from {', '.join(allowed)}")
    return items


def _sources(text: str | None, default: list[str]) -> list[str]:
    """Built-in source names and paths from ``--sources``; a path that does not exist is an error now."""
    from .runner import name_sources

    if not text:
        return default
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UserError("--sources is empty")
    name_sources(items)
    return items


def run(args: argparse.Namespace) -> Path:
    """Run the harness for parsed arguments; returns the path of table.md (what `jscc-eval stream` calls)."""
    import json

    from .channel import CONDITIONS, QUICK_CONDITIONS
    from .report import write_report
    from .runner import ALL_ARMS, DEFAULT_ARMS, SOURCES, HarnessConfig, run_harness

    if args.report_only:
        path = args.out / "results.json"
        if not path.exists():
            raise UserError(f"{path} does not exist: run the harness first")
        return write_report(json.loads(path.read_text()), args.out)
    width, height = parse_frame_size(args.size, multiple_of=16)
    frames = args.frames or (30 if args.quick else 150)
    if frames < 2:
        raise UserError("--frames must be at least 2")
    by_name = {c.name: c for c in CONDITIONS}
    conds = _pick(args.conditions, list(by_name), [c.name for c in (QUICK_CONDITIONS if args.quick else CONDITIONS)],
                  "condition")
    sources = _sources(args.sources, ["synthetic"] if args.quick else list(SOURCES))
    arms = _pick(args.arms, ALL_ARMS, DEFAULT_ARMS, "arm")
    if "jscc" in arms:
        from jscc_stream.models.zoo import resolve_weights

        resolve_weights(args.codec)  # a clear error now rather than inside a subprocess
    cfg = HarnessConfig(out=args.out, frames=frames, width=width, height=height, fps=args.fps, sources=sources,
                        conditions=[by_name[c] for c in conds], arms=arms, codec=args.codec, seed=args.seed,
                        delay_ms=args.delay_ms, rtt_ms=args.rtt_ms, latency_ms=args.latency_ms,
                        workdir=args.workdir, merge=args.merge, jscc_wall_fps=args.jscc_wall_fps,
                        jscc_pace=args.jscc_pace, jscc_args=shlex.split(args.jscc_args))
    results = run_harness(cfg, progress=log.info)
    table = write_report(results, args.out)
    log.info("wrote %s and plots in %s (%.0f s)", table, args.out, results["wall_s"])
    return table


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(build_parser, argv)
    table = run(args)
    print(table.read_text())
    return 0


main = entry_point(_main, PROG)
