"""jscc-demo: one command for a live stream on this machine.

Starts ``jscc-recv``, the ``jscc-netem`` shim (GE ~10 % loss by default) and ``jscc-send``
(synthetic source by default) as subprocesses on loopback, shows the stream (``--display``
when there is a $DISPLAY) or records it, and prints a summary: displayed fps, loss, mean PSNR
against the source (synthetic source only), capture-to-display latency, CPU per process.
``run_pipeline`` is also what ``jscc-bench pipeline`` measures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jscc_stream.errors import UserError
from jscc_stream.cli import add_common_args, run_cli, setup_logging

__all__ = ["PipelineConfig", "run_pipeline", "summarize_frames", "wait_for_line", "main"]


@dataclass
class PipelineConfig:
    source: str = "synthetic"
    size: str = "320x240"
    fps: float = 30.0
    duration: float = 20.0
    loss: str = "ge10"  # "none" runs the shim without loss; "" skips the shim
    seed: int = 1
    codec: str = "uniform"
    latency_ms: float = 50.0
    sender_threads: int = 1
    receiver_threads: int = 1
    decode_workers: int = 1
    priority_dscp: bool = True
    display: bool = False
    record: str | None = None
    psnr: bool = True  # synthetic source: save frames and compare with the regenerated source
    workdir: Path | None = None
    extra_sender: list[str] = field(default_factory=list)
    extra_shim: list[str] = field(default_factory=list)  # e.g. ["--rate", "400kbit", "--priority"]
    log_level: str = "info"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process in clock ticks, from /proc (no psutil needed)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])


def wait_for_line(path: Path, needle: str, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until a daemon's log shows ``needle`` (it is up); a UserError if it exits or times out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise UserError(f"{Path(proc.args[2]).name if len(proc.args) > 2 else proc.args} exited early: "
                            f"{path.read_text(errors='replace').strip().splitlines()[-1:]}")
        time.sleep(0.05)
    raise UserError(f"timed out waiting for '{needle}' in {path}")


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))]


def summarize_frames(records: list[dict], fps: float) -> dict:
    """Per-frame stats lines -> displayed fps, loss, latency percentiles, deadline misses."""
    if not records:
        return {"frames_displayed": 0}
    shown = [r for r in records if r["decoded"]]
    t = [r["display_unix"] for r in shown]
    span = (max(t) - min(t)) if len(t) > 1 else 0.0
    lat = [r["capture_to_display_ms"] for r in shown if r.get("capture_to_display_ms") is not None]
    ids = [r["frame_id"] for r in records]
    return {
        "frames_displayed": len(shown),
        "displayed_fps": (len(shown) - 1) / span if span > 0 else None,
        "frame_ids_span": max(ids) - min(ids) + 1,
        "byte_loss": 1 - sum(r["bytes_received"] for r in records) / max(1, sum(r["bytes_expected"] for r in records)),
        "frames_incomplete": sum(r["bytes_received"] < r["bytes_expected"] for r in records),
        "release_reasons": {k: sum(r["reason"] == k for r in records) for k in sorted({r["reason"] for r in records})},
        "latency_p50_ms": _pct(lat, 50), "latency_p95_ms": _pct(lat, 95), "latency_p99_ms": _pct(lat, 99),
        "decode_ms_median": _pct([r["decode_ms"] for r in shown], 50),
        "wait_ms_p95": _pct([r["wait_ms"] for r in records], 95),
    }


def _psnr_summary(frames_dir: Path, size: tuple[int, int], fps: float, source: str) -> dict:
    import cv2
    import numpy as np

    from jscc_stream.sender.sources import open_source

    src = open_source(source, size[0], size[1], fps)
    vals = []
    for png in sorted(frames_dir.glob("*.png")):
        got = cv2.imread(str(png), cv2.IMREAD_COLOR)
        ref = src.read(int(png.stem))
        mse = float(np.mean((got.astype(np.float64) - ref) ** 2))
        vals.append(99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse))
    return {"psnr_mean_db": float(np.mean(vals)) if vals else None, "psnr_frames": len(vals)}


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run receiver, shim and sender as subprocesses for ``cfg.duration`` seconds; return the summary."""
    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="jscc-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    rport = _free_port()
    use_shim = bool(cfg.loss)
    sport = _free_port() if use_shim else rport
    width, height = (int(v) for v in cfg.size.split("x"))
    psnr = cfg.psnr and cfg.source.startswith("synthetic")
    # the daemons' logs go to files and their "listening on"/"sending" lines (info) are how this
    # launcher knows they are up, so they never log below info
    daemon_level = "debug" if cfg.log_level == "debug" else "info"
    recv_cmd = [py, "-m", "jscc_stream.receiver.cli", "--listen", f"127.0.0.1:{rport}", "--codec", cfg.codec,
                "--latency-ms", str(cfg.latency_ms), "--threads", str(cfg.receiver_threads),
                "--decode-workers", str(cfg.decode_workers),
                "--stats-json", str(work / "frames.jsonl"), "--summary-json", str(work / "receiver.json"),
                "--log-level", daemon_level]
    if cfg.display:
        recv_cmd.append("--display")
    if cfg.record:
        recv_cmd += ["--record", cfg.record]
    if psnr:
        recv_cmd += ["--save-frames", str(work / "frames")]
    shim_cmd = [py, "-m", "jscc_stream.netem.cli", "--listen", f"127.0.0.1:{sport}", "--forward",
                f"127.0.0.1:{rport}", "--loss", cfg.loss, "--seed", str(cfg.seed), "--stats-interval", "0",
                "--stats-json", str(work / "shim.json"), "--log-level", "info", *cfg.extra_shim]
    send_cmd = [py, "-m", "jscc_stream.sender.cli", "--dest", f"127.0.0.1:{sport}", "--source", cfg.source,
                "--size", cfg.size, "--fps", str(cfg.fps), "--duration", str(cfg.duration), "--codec", cfg.codec,
                "--threads", str(cfg.sender_threads), "--stats-json", str(work / "sender.json"),
                "--seed", str(cfg.seed), "--log-level", daemon_level, *cfg.extra_sender]
    if cfg.priority_dscp:
        send_cmd.append("--priority-dscp")
    # Each daemon in its own session, as a service manager would start it: Ctrl-C reaches only
    # this process, which stops them in order; and the kernel's autogroup scheduler treats each
    # as its own group instead of lumping them with the shell's other work.
    procs: dict[str, subprocess.Popen] = {}
    logs = {name: open(work / f"{name}.log", "w") for name in ("receiver", "shim", "sender")}
    ticks0: dict[str, int] = {}
    ticks1: dict[str, int] = {}
    started: float | None = None
    interrupted = False
    try:
        procs["receiver"] = subprocess.Popen(recv_cmd, stdout=logs["receiver"], stderr=subprocess.STDOUT,
                                             start_new_session=True)
        if use_shim:
            procs["shim"] = subprocess.Popen(shim_cmd, stdout=logs["shim"], stderr=subprocess.STDOUT,
                                             start_new_session=True)
        wait_for_line(work / "receiver.log", "listening on", procs["receiver"], 60)
        if use_shim:
            wait_for_line(work / "shim.log", "listening on", procs["shim"], 60)
        procs["sender"] = subprocess.Popen(send_cmd, stdout=logs["sender"], stderr=subprocess.STDOUT,
                                             start_new_session=True)
        wait_for_line(work / "sender.log", "sending ", procs["sender"], 60)
        t0 = started = time.monotonic()
        for name, p in procs.items():
            ticks0[name] = _cpu_ticks(p.pid) or 0
        while procs["sender"].poll() is None:  # sample CPU until the sender finishes
            for name, p in procs.items():
                v = _cpu_ticks(p.pid)
                if v is not None:
                    ticks1[name] = v
            time.sleep(0.25)
        elapsed = time.monotonic() - t0
        time.sleep(max(0.3, 3 * cfg.latency_ms / 1000))  # let the last frames play out
    except KeyboardInterrupt:  # Ctrl-C: stop everyone cleanly, then summarize what was shown
        interrupted = True
        elapsed = None if started is None else time.monotonic() - started
    finally:
        for name in ("sender", "shim", "receiver"):
            p = procs.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in logs.values():
            f.close()
    if elapsed is None:
        raise KeyboardInterrupt
    hz = os.sysconf("SC_CLK_TCK")
    records = []
    if (work / "frames.jsonl").exists():
        records = [json.loads(x) for x in (work / "frames.jsonl").read_text().splitlines() if x.strip()]
    out: dict = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()},
                 "workdir": str(work), **summarize_frames(records, cfg.fps)}
    out["cpu_percent"] = {n: round(100 * (ticks1.get(n, ticks0[n]) - ticks0[n]) / hz / elapsed, 1)
                          for n in ticks0}
    for name in ("sender", "receiver", "shim"):
        path = work / f"{name}.json"
        if path.exists():
            try:
                out[name] = json.loads(path.read_text())
            except json.JSONDecodeError:
                pass
    if psnr and (work / "frames").is_dir():
        out.update(_psnr_summary(work / "frames", (width, height), cfg.fps, cfg.source if ":" in cfg.source
                                 else f"{cfg.source}:{cfg.seed}"))
    out["exit_codes"] = {n: p.returncode for n, p in procs.items()}
    out["interrupted"] = interrupted
    return out


def format_summary(res: dict) -> str:
    def f(v, spec=".1f"):
        return "-" if v is None else format(v, spec)

    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in res.get("cpu_percent", {}).items())
    return (f"displayed {res.get('frames_displayed', 0)} frames at {f(res.get('displayed_fps'))} fps; "
            f"byte loss {100 * res.get('byte_loss', 0):.1f}% ({res.get('frames_incomplete', 0)} frames incomplete); "
            f"mean PSNR {f(res.get('psnr_mean_db'), '.2f')} dB; capture-to-display p50 {f(res.get('latency_p50_ms'))} "
            f"p95 {f(res.get('latency_p95_ms'))} p99 {f(res.get('latency_p99_ms'))} ms; CPU {cpu}")


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
    p.add_argument("--codec", default="uniform", help="codec name or .safetensors path")
    p.add_argument("--latency-ms", type=float, default=50.0, help="receiver playout deadline")
    p.add_argument("--display", action="store_true", default=None, help="show a window (default: when $DISPLAY is set)")
    p.add_argument("--record", default=None, help="record to this mp4 (default out/demo.mp4 when not displaying)")
    p.add_argument("--workdir", help="keep logs and per-frame stats here (default: a temp folder)")
    p.add_argument("--json", help="also write the summary as JSON here")
    add_common_args(p)
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
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


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, prog="jscc-demo")


if __name__ == "__main__":
    raise SystemExit(main())
