"""jscc-demo: one command for a live stream on this machine.

Starts ``jscc-recv``, the ``jscc-netem`` shim (GE ~10 % loss by default) and ``jscc-send``
(synthetic source by default) as subprocesses on loopback, shows the stream (``--display``
when there is a $DISPLAY) or records it, and prints a summary: displayed fps, loss, mean PSNR
against the source (synthetic source only), capture-to-display latency, CPU per process.
The run itself is ``jscc_stream.pipeline.run_pipeline`` (also what ``jscc-bench pipeline`` measures).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from jscc_stream.cli import add_common_args, entry_point, parse_args
from jscc_stream.pipeline import PipelineConfig, format_summary, run_pipeline

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jscc-demo", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Live stream on this machine: jscc-send -> jscc-netem (loss) -> jscc-recv on loopback; shows "
                    "the stream (with a $DISPLAY) or records it, then prints fps, loss, PSNR and latency.")
    p.add_argument("--source", default="synthetic", help="synthetic[:SEED] | webcam[:INDEX] | video | image folder/glob")
    p.add_argument("--size", default="320x240")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--duration", type=float, default=20.0, help="seconds (Ctrl-C stops earlier)")
    p.add_argument("--loss", default="ge10", help="shim loss: none | uniform:P | ge:p,r,h,k | ge10 | ge15 | trace:FILE")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", help="shim bottleneck rate, e.g. 400kbit (default: none)")
    p.add_argument("--queue-packets", type=int, help="shim bottleneck buffer in packets (default: the shim's)")
    p.add_argument("--priority", action="store_true",
                   help="shim serves the bottleneck by DSCP priority with push-out (else drop-tail)")
    p.add_argument("--max-queue-delay-ms", type=float,
                   help="shim drops packets that waited longer than this in the bottleneck (default: never)")
    p.add_argument("--no-adapt", action="store_true",
                   help="sender keeps its frame rate (no adaptation to the receiver's decode rate)")
    p.add_argument("--codec", default="video", help="codec name or .safetensors path")
    p.add_argument("--latency-ms", type=float, default=50.0, help="receiver playout deadline")
    p.add_argument("--display", action="store_true", default=None, help="show a window (default: when $DISPLAY is set)")
    p.add_argument("--record", default=None, help="record to this mp4 (default out/demo.mp4 when not displaying)")
    p.add_argument("--workdir", help="keep logs and per-frame stats here (default: a temp folder)")
    p.add_argument("--json", help="also write the summary as JSON here")
    add_common_args(p)
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(build_parser, argv)
    from jscc_stream.models.zoo import resolve_weights
    from jscc_stream.netem.loss import parse_loss_spec

    resolve_weights(args.codec)
    parse_loss_spec(args.loss)
    display = bool(os.environ.get("DISPLAY")) if args.display is None else args.display
    record = args.record or (None if display else "out/demo.mp4")
    cfg = PipelineConfig(source=args.source, size=args.size, fps=args.fps, duration=args.duration, loss=args.loss,
                         seed=args.seed, codec=args.codec, latency_ms=args.latency_ms, display=display, record=record,
                         workdir=Path(args.workdir) if args.workdir else None, log_level=args.log_level,
                         extra_shim=(["--rate", args.rate] if args.rate else []) + (["--priority"] if args.priority else [])
                         + (["--queue-packets", str(args.queue_packets)] if args.queue_packets else [])
                         + (["--max-queue-delay-ms", f"{args.max_queue_delay_ms:g}"]
                            if args.max_queue_delay_ms is not None else []),
                         extra_sender=["--no-adapt"] if args.no_adapt else [])
    res = run_pipeline(cfg)
    print(format_summary(res))
    if record:
        print(f"recorded to {record}; logs and per-frame stats in {res['workdir']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    if res["interrupted"]:
        return 130
    return 0 if all(c == 0 for c in res["exit_codes"].values()) else 1


main = entry_point(_main, "jscc-demo")


if __name__ == "__main__":
    raise SystemExit(main())
