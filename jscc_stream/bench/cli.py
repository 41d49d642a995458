"""jscc-bench: benchmarks (not tests). Timings are reported as medians / percentiles, never asserted.

Subcommands:
  compare   JSCC vs H.264 (plain, +FEC, +NACK) and JPEG over the same seeded lossy channel:
            per-frame PSNR/SSIM, frozen frames, latency; tables and plots (docs/results.md).
            `jscc-bench compare --help` for its options.
  pipeline  live sender -> shim -> receiver runs on loopback: displayed fps, capture-to-display
            latency p50/p95/p99 and CPU per process, for several frame sizes and loss settings.
  link      the changing-link experiment: JSCC and two WebRTC peers (aiortc, VP8 / H.264) for 60 s
            through a shim whose rate goes 2 Mbit/s -> 500 kbit/s -> 2 Mbit/s (50 ms delay, 2 % loss):
            PSNR, frozen frames, latency and sent rate over time; link.json, link.md, link.png.
  fuzz      10^6 random and mutated datagrams (from a captured real stream) at a running jscc-recv
            and, separately, a running jscc-netem: alive, no traceback, RSS and fds before/during/after,
            still serving a real stream afterwards; fuzz.json and fuzz.png.
  soak      a long live run sender -> shim (Gilbert-Elliott loss) -> receiver sampling each process's
            RSS, fds and threads and the receiver's fps and p95 latency every --interval; soak.json,
            soak.png and a verdict (resources flat, fps and latency steady).
  roi       paper 003's segment importance: photographs with faces coded with and without a region
            map at the same bytes, through no / uniform / Gilbert-Elliott loss and a priority
            bottleneck; PSNR inside the faces and outside; roi.json, roi.md, roi.png.
  codec     encoder / decoder milliseconds per frame (medians) at 320x240 and 640x480, on CPU
            with a fixed thread count (float32 and the fast reduced precision) and on CUDA when
            present; parameter count; bytes per frame; OpenCV JPEG timed in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from jscc_stream.errors import UserError
from jscc_stream.cli import add_common_args, entry_point, parse_args, parse_frame_size

__all__ = ["main", "build_parser"]


def _fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def cmd_pipeline(args: argparse.Namespace) -> int:
    from jscc_stream.models.zoo import resolve_weights
    from jscc_stream.pipeline import PipelineConfig, format_summary, run_pipeline

    resolve_weights(args.codec)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    losses = [s.strip() for s in args.losses.split(",") if s.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for size in sizes:
        for loss in losses:
            cfg = PipelineConfig(size=size, fps=args.fps, duration=args.duration, loss=loss, seed=args.seed,
                                 codec=args.codec, latency_ms=args.latency_ms, sender_threads=args.sender_threads,
                                 receiver_threads=args.receiver_threads, psnr=False,
                                 decode_workers=args.decode_workers,
                                 workdir=out / f"run-{size}-{loss.replace(':', '_')}")
            print(f"pipeline {size} {args.fps:g} fps loss={loss} for {args.duration:g} s ...", flush=True)
            res = run_pipeline(cfg)
            print("  " + format_summary(res), flush=True)
            runs.append(res)
    import os

    meta = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(), "cpus": os.cpu_count(),
            "load_avg_at_end": os.getloadavg(), "codec": args.codec}
    (out / "pipeline.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2))
    lines = [f"# jscc-bench pipeline ({meta['when']}, {meta['cpus']} CPUs, load avg at end "
             f"{meta['load_avg_at_end'][0]:.2f})", "",
             f"codec `{args.codec}`, {args.fps:g} fps, {args.duration:g} s per run, playout deadline "
             f"{args.latency_ms:g} ms, torch threads sender {args.sender_threads} / receiver {args.receiver_threads} "
             f"x {args.decode_workers} decode workers; "
             "sender, jscc-netem shim and receiver on one machine over loopback.", "",
             "| size | loss | displayed fps | frames sent / dropped at sender / skipped at receiver | byte loss "
             "| latency p50 / p95 / p99 ms | decode ms (median) | encode ms (median) | CPU % sender / shim / receiver |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        c = r["config"]
        s, rc, cpu = r.get("sender", {}), r.get("receiver", {}), r.get("cpu_percent", {})
        lines.append(
            f"| {c['size']} | {c['loss']} | {_fmt(r.get('displayed_fps'))} | {s.get('frames_sent', '-')} / "
            f"{s.get('frames_dropped', '-')} / {rc.get('frames_skipped', '-')} | {100 * r.get('byte_loss', 0):.1f}% | "
            f"{_fmt(r.get('latency_p50_ms'))} / {_fmt(r.get('latency_p95_ms'))} / {_fmt(r.get('latency_p99_ms'))} | "
            f"{_fmt(r.get('decode_ms_median'))} | {_fmt(s.get('encode_ms_median'))} | "
            f"{cpu.get('sender', '-')} / {cpu.get('shim', '-')} / {cpu.get('receiver', '-')} |")
    (out / "pipeline.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'pipeline.json'} and {out / 'pipeline.md'}")
    return 0


def cmd_codec(args: argparse.Namespace) -> int:
    from .codec import bench_codec

    sizes = tuple(parse_frame_size(s) for s in args.sizes.split(","))
    res = bench_codec(args.codec, sizes, threads=args.threads, repeats=args.repeats, out=Path(args.out))
    print(res["markdown"])
    print(f"wrote {args.out}/codec_bench.json and codec_bench.md")
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    import shlex

    from .compare.changing_link import DEFAULT_VIDEO, LINK_ARMS, LinkRunConfig, parse_schedule, run_link

    parse_schedule(args.schedule)
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    bad = [a for a in arms if a not in LINK_ARMS]
    if bad or not arms:
        raise UserError(f"unknown arm: {', '.join(bad) or '(none)'}; choose from {', '.join(LINK_ARMS)}")
    from jscc_stream.netem.loss import parse_loss_spec

    try:
        parse_loss_spec(args.loss)
    except ValueError as exc:
        raise UserError(f"bad --loss: {exc}") from None
    width, height = parse_frame_size(args.size, multiple_of=16)
    source = args.source or (str(DEFAULT_VIDEO) if DEFAULT_VIDEO.exists() else "synthetic")
    if "jscc" in arms:
        from jscc_stream.models.zoo import resolve_weights

        resolve_weights(args.codec)
    cfg = LinkRunConfig(out=Path(args.out), duration_s=args.duration, width=width, height=height, fps=args.fps,
                        source=source, arms=arms, schedule=args.schedule, delay_ms=args.delay_ms, loss=args.loss,
                        seed=args.seed, codec=args.codec, jscc_kbps=args.jscc_kbps,
                        jscc_args=shlex.split(args.jscc_args), latency_ms=args.latency_ms,
                        workdir=Path(args.workdir) if args.workdir else None)
    res = run_link(cfg)
    print((cfg.out / "link.md").read_text())
    print(f"wrote {cfg.out}/link.json, link.md and link.png ({res['wall_s']:.0f} s)")
    return 0


def cmd_fuzz(args: argparse.Namespace) -> int:
    from .fuzz import FuzzConfig, run_fuzz

    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    bad = [t for t in targets if t not in ("receiver", "shim")]
    if bad or not targets:
        raise UserError(f"unknown target: {', '.join(bad) or '(none)'}; choose from receiver, shim")
    if args.datagrams < 1 or args.samples < 1:
        raise UserError("--datagrams and --samples must be >= 1")
    if args.capture and not Path(args.capture).is_file():
        raise UserError(f"--capture: no such file {args.capture}")
    parse_frame_size(args.size, multiple_of=16)
    cfg = FuzzConfig(out=Path(args.out), datagrams=args.datagrams, targets=targets, seed=args.seed,
                     capture=Path(args.capture) if args.capture else None, capture_seconds=args.capture_seconds,
                     size=args.size, fps=args.fps, codec=args.codec, samples=args.samples,
                     max_queue_bytes=args.max_queue_kb << 10, max_rate=args.max_rate,
                     rss_limit_mb=args.rss_limit_mb, progress=not args.no_progress)
    res = run_fuzz(cfg)
    for name, r in res["targets"].items():
        v, fz = r["verdict"], r.get("fuzz", {})
        print(f"{name}: {'PASS' if v['pass'] else 'FAIL'} {v['checks']}; {fz.get('sent')} datagrams in "
              f"{fz.get('seconds')} s; RSS growth {v['rss_growth_mb']} MB (anonymous {v['rss_anon_growth_mb']} MB), "
              f"fd growth {v['fd_growth']}; counted {r['counted']}")
    print(f"wrote {cfg.out}/fuzz.json and fuzz.png")
    return 0 if res["pass"] else 1


def _add_fuzz(sub) -> None:
    fz = sub.add_parser("fuzz", help="random and mutated datagrams at a running jscc-recv and jscc-netem: "
                                     "crash, leak and still-serving checks",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                        description="Captures a few seconds of a live jscc-send (or loads --capture), then per "
                                    "target: replays it (warm-up), measures RSS/fds/threads, sends --datagrams "
                                    "random and mutated datagrams (bit flips, truncation, extension, header "
                                    "fields, replays under other SSRC/seq, splices) paced on the target "
                                    "socket's receive queue, replays the real stream again and checks it is "
                                    "decoded (receiver) or forwarded (shim), stops it and reads its log. Exit "
                                    "status 1 when a bar is missed: alive, clean exit, no traceback, RSS growth "
                                    "<= --rss-limit-mb, no fd growth, real stream still served.")
    fz.add_argument("--datagrams", type=int, default=1_000_000, help="hostile datagrams per target")
    fz.add_argument("--targets", default="receiver,shim", help="comma list of receiver, shim")
    fz.add_argument("--seed", type=int, default=0, help="seed of the mutations (same seed + capture: same datagrams)")
    fz.add_argument("--capture", help="reuse a capture (an earlier run's capture.bin) instead of a live jscc-send")
    fz.add_argument("--capture-seconds", type=float, default=4.0, help="seconds of live jscc-send to capture")
    fz.add_argument("--size", default="320x240", help="captured stream's frame size")
    fz.add_argument("--fps", type=float, default=15.0, help="captured stream's frame rate")
    fz.add_argument("--codec", default="video", help="captured stream's codec")
    fz.add_argument("--samples", type=int, default=20, help="RSS/fd measurements during the fuzzing")
    fz.add_argument("--max-queue-kb", type=int, default=128,
                    help="pause sending while the target's socket receive queue holds more than this")
    fz.add_argument("--max-rate", type=float, default=0.0, help="datagrams per second at most (0: queue pacing only)")
    fz.add_argument("--rss-limit-mb", type=float, default=20.0, help="the RSS growth bar")
    fz.add_argument("--no-progress", action="store_true", help="no progress bar")
    fz.add_argument("--out", default="out/bench/fuzz", help="folder for fuzz.json, fuzz.png, capture.bin, logs")
    add_common_args(fz)
    fz.set_defaults(func=cmd_fuzz)


def cmd_soak(args: argparse.Namespace) -> int:
    from jscc_stream.netem.loss import parse_loss_spec

    from .soak import SoakConfig, run_soak

    if args.minutes <= 0 or args.interval <= 0 or args.interval > args.minutes * 60:
        raise UserError("--minutes and --interval must be positive, --interval at most the run")
    try:
        parse_loss_spec(args.loss)
    except ValueError as exc:
        raise UserError(f"bad --loss: {exc}") from None
    parse_frame_size(args.size, multiple_of=16)
    if args.codec:
        from jscc_stream.models.zoo import resolve_weights

        resolve_weights(args.codec)
    cfg = SoakConfig(out=Path(args.out), minutes=args.minutes, interval=args.interval, size=args.size, fps=args.fps,
                     loss=args.loss, codec=args.codec, latency_ms=args.latency_ms, seed=args.seed)
    print(f"soak: {args.size} {args.fps:g} fps, loss {args.loss}, {args.minutes:g} min, a sample every "
          f"{args.interval:g} s ...", flush=True)
    res = run_soak(cfg)
    v = res["verdict"]
    for name, c in v["checks"].items():
        print(f"  {'ok  ' if c['ok'] else 'FAIL'} {name}: {json.dumps({k: x for k, x in c.items() if k != 'ok'})}")
    print(f"{'PASS' if res['pass'] else 'FAIL'}; wrote {cfg.out}/soak.json and soak.png")
    return 0 if res["pass"] else 1


def _add_soak(sub) -> None:
    so = sub.add_parser("soak", help="long live run sender -> shim -> receiver: RSS, fds, threads, fps and "
                                     "p95 latency sampled over time, with a verdict",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                        description="Runs jscc-send -> jscc-netem (--loss) -> jscc-recv for --minutes and samples "
                                    "every --interval each process's RSS, open fds and threads (/proc) and the "
                                    "receiver's displayed fps and p95 capture-to-display latency over the "
                                    "interval (its per-frame stats). Verdict: RSS, fds and threads at most 5 % "
                                    "above their value at the first sample after the first minute; every later "
                                    "interval's fps at most 10 % below, and p95 latency at most 10 % above, the "
                                    "first minute's (a run shorter than 3 minutes uses its first third instead "
                                    "of the first minute). Exit status 1 when a bar is missed.")
    so.add_argument("--minutes", type=float, default=30.0, help="length of the run")
    so.add_argument("--interval", type=float, default=60.0, help="seconds between samples")
    so.add_argument("--size", default="320x240", help="frame size WxH (what the 2-core machine sustains steadily)")
    so.add_argument("--fps", type=float, default=15.0)
    so.add_argument("--loss", default="ge10", help="the shim's loss process (jscc-netem --loss; ge10: "
                                                   "Gilbert-Elliott, about 10 %% loss)")
    so.add_argument("--codec", default="video", help="codec name or .safetensors path")
    so.add_argument("--latency-ms", type=float, default=50.0, help="receiver playout deadline")
    so.add_argument("--seed", type=int, default=1)
    so.add_argument("--out", default="out/bench/soak", help="folder for soak.json, soak.png and the daemons' logs")
    add_common_args(so)
    so.set_defaults(func=cmd_soak)


def cmd_roi(args: argparse.Namespace) -> int:
    from .roi import RoiBenchConfig, run_roi_bench

    try:
        bpp = tuple(float(x) for x in args.bpp.split(","))
        boosts = tuple(int(x) for x in args.boosts.split(","))
    except ValueError:
        raise UserError("--bpp and --boosts must be comma-separated numbers") from None
    if any(b <= 0 for b in bpp) or any(not 1 <= b <= 64 for b in boosts) or args.seeds < 1:
        raise UserError("--bpp must be positive, --boosts in 1..64, --seeds >= 1")
    channels = tuple(c.strip() for c in args.channels.split(",") if c.strip())
    from jscc_stream.netem.loss import parse_loss_spec

    for ch in channels:
        if ch.startswith("priority:"):
            share = ch.partition(":")[2]
            if not share.replace(".", "", 1).isdigit() or not 0 < float(share) < 1:
                raise UserError(f"bad channel {ch}: priority:SHARE with 0 < SHARE < 1")
        else:
            parse_loss_spec(ch.removeprefix("fec+"))
    run_roi_bench(RoiBenchConfig(Path(args.out), args.codec, bpp, boosts, channels, args.seeds, tuple(args.image)))
    print((Path(args.out) / "roi.md").read_text())
    print(f"wrote {args.out}/roi.json, roi.md and roi.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jscc-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("compare", add_help=False,
                   help="JSCC vs H.264 / H.264+FEC / H.264+NACK / JPEG over one lossy channel "
                        "(see jscc-bench compare --help)")
    pl = sub.add_parser("pipeline", help="live sender -> shim -> receiver runs: fps, latency, CPU",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pl.add_argument("--sizes", default="320x240,640x480", help="comma-separated WxH")
    pl.add_argument("--losses", default="none,ge10", help="comma-separated shim loss specs")
    pl.add_argument("--fps", type=float, default=30.0)
    pl.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    pl.add_argument("--codec", default="video", help="codec name or .safetensors path")
    pl.add_argument("--latency-ms", type=float, default=50.0, help="receiver playout deadline")
    pl.add_argument("--sender-threads", type=int, default=1)
    pl.add_argument("--receiver-threads", type=int, default=1)
    pl.add_argument("--decode-workers", type=int, default=1, help="receiver frames decoded in parallel")
    pl.add_argument("--seed", type=int, default=1)
    pl.add_argument("--out", default="out/bench/pipeline", help="folder for pipeline.json, pipeline.md and run logs")
    add_common_args(pl)
    pl.set_defaults(func=cmd_pipeline)
    li = sub.add_parser("link", help="changing-link experiment: JSCC vs WebRTC (aiortc VP8/H.264) over a "
                                     "bottleneck whose rate changes; PSNR, freezes, latency, sent rate over time",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    li.add_argument("--duration", type=float, default=60.0, help="seconds of media per arm")
    li.add_argument("--source", default=None,
                    help="synthetic, photos or a video file (played forwards then backwards when shorter than "
                         "--duration) (default: data/video/opencv_vtest.avi when present, else synthetic)")
    li.add_argument("--arms", default="jscc,webrtc-vp8,webrtc-h264", help="comma list of jscc, webrtc-vp8, webrtc-h264")
    li.add_argument("--schedule", default="0:2mbit,20:500kbit,40:2mbit",
                    help="bottleneck rate over the shim's time, SECONDS:RATE,... starting at 0")
    li.add_argument("--delay-ms", type=float, default=50.0, help="one-way delay, both directions")
    li.add_argument("--loss", default="uniform:0.02", help="forward-path loss process (jscc-netem --loss)")
    li.add_argument("--size", default="320x240", help="frame size WxH")
    li.add_argument("--fps", type=float, default=30.0)
    li.add_argument("--codec", default="video", help="JSCC codec name or .safetensors path")
    li.add_argument("--jscc-kbps", type=float, default=1500.0,
                    help="the JSCC sender's starting bitrate (congestion control takes it from there)")
    li.add_argument("--jscc-args", default="--min-kbps 150 --max-kbps 2000 --priority-dscp",
                    help="more jscc-send flags for the JSCC arm, one string (congestion control's bounds, DSCP "
                         "marking by importance for the shim's priority queue)")
    li.add_argument("--latency-ms", type=float, default=50.0, help="jscc-recv's playout deadline")
    li.add_argument("--seed", type=int, default=1, help="seed of the shim's loss draws")
    li.add_argument("--workdir", help="keep per-arm logs here (default: a temp folder)")
    li.add_argument("--out", default="docs/results/link", help="folder for link.json, link.md, link.png")
    add_common_args(li)
    li.set_defaults(func=cmd_link)
    ro = sub.add_parser("roi", help="faces coded with and without a region map at the same bytes, under loss "
                                    "and priority dropping: PSNR inside and outside the faces",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ro.add_argument("--codec", default="uniform", help="entropy-coded codec (the video codec's intra model)")
    ro.add_argument("--bpp", default="0.25,0.5,1.0", help="budgets, bits per pixel (the same with and without)")
    ro.add_argument("--boosts", default="16,24,32", help="region boosts to try (quantizer indexes finer inside)")
    ro.add_argument("--channels", default="none,uniform:0.1,ge10,priority:0.1,fec+uniform:0.1,fec+ge10",
                    help="jscc-netem loss specs over the frame's payloads (one per packet); priority:SHARE (the "
                         "least important payloads dropped until SHARE of the bytes are gone); fec+SPEC: SPEC with "
                         "the sender's parity over its two top ranks, sized to SPEC's mean loss, in the same bytes")
    ro.add_argument("--seeds", type=int, default=10, help="draws per random channel (medians reported)")
    ro.add_argument("--image", action="append", default=[],
                    help="another photograph with a face (besides scikit-image's astronaut and matplotlib's "
                         "grace_hopper)")
    ro.add_argument("--out", default="docs/results/papers/roi", help="folder for roi.json, roi.md, roi.png")
    add_common_args(ro)
    ro.set_defaults(func=cmd_roi)
    co = sub.add_parser("codec", help="encoder/decoder ms per frame, parameters, bytes per frame",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    co.add_argument("--codec", default="uniform", help="codec name or .safetensors path")
    co.add_argument("--sizes", default="320x240,640x480", help="comma-separated WxH")
    co.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    co.add_argument("--repeats", type=int, default=30, help="timed calls per measurement")
    co.add_argument("--out", default="out/bench/codec", help="folder for codec_bench.json/.md")
    add_common_args(co)
    co.set_defaults(func=cmd_codec)
    _add_fuzz(sub)
    _add_soak(sub)
    return p


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:  # its own CLI, with its own options
        from .compare.cli import main as compare_main

        return compare_main(argv[1:])
    args = parse_args(build_parser, argv)
    if getattr(args, "duration", 1) <= 0:
        raise UserError("--duration must be positive")
    return args.func(args)


main = entry_point(_main, "jscc-bench")


if __name__ == "__main__":
    raise SystemExit(main())
