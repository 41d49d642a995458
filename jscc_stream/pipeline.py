"""Sender, shim and receiver as subprocesses on loopback for a while, then a summary of the run.

``run_pipeline`` starts ``jscc-recv``, the ``jscc-netem`` shim and ``jscc-send`` (the real
daemons, each in its own session as a service manager would start them), waits for the sender to
finish, stops them in order and summarizes what the receiver displayed: fps, loss, latency
percentiles, CPU per process and, for the synthetic source, PSNR against the regenerated source.
It is what ``jscc-demo`` shows and what ``jscc-bench pipeline`` measures.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .metrics import percentile, psnr
from .procs import cpu_ticks, daemon_cmd, free_port, stop_processes, wait_for_line

__all__ = ["PipelineConfig", "run_pipeline", "summarize_frames", "format_summary"]


@dataclass
class PipelineConfig:
    source: str = "synthetic"
    size: str = "320x240"
    fps: float = 30.0
    duration: float = 20.0
    loss: str = "ge10"  # "none" runs the shim without loss; "" skips the shim
    seed: int = 1
    codec: str = "video"
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
        "latency_p50_ms": percentile(lat, 50), "latency_p95_ms": percentile(lat, 95), "latency_p99_ms": percentile(lat, 99),
        "decode_ms_median": percentile([r["decode_ms"] for r in shown], 50),
        "wait_ms_p95": percentile([r["wait_ms"] for r in records], 95),
    }


def _psnr_summary(frames_dir: Path, size: tuple[int, int], fps: float, source: str) -> dict:
    import cv2
    import numpy as np

    from .sources import open_source

    src = open_source(source, size[0], size[1], fps)
    vals = [psnr(cv2.imread(str(png), cv2.IMREAD_COLOR), src.read(int(png.stem)))
            for png in sorted(frames_dir.glob("*.png"))]
    return {"psnr_mean_db": float(np.mean(vals)) if vals else None, "psnr_frames": len(vals)}


@dataclass
class _Daemons:
    """What happened while the daemons ran: processes, CPU ticks at start and end, seconds."""

    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    ticks0: dict[str, int] = field(default_factory=dict)
    ticks1: dict[str, int] = field(default_factory=dict)
    elapsed: float | None = None
    interrupted: bool = False


def _commands(cfg: PipelineConfig, work: Path, rport: int, sport: int, save_frames: bool) -> dict[str, list[str]]:
    """The daemons' command lines (the shim's only when ``cfg.loss`` asks for one)."""
    # the daemons' logs go to files and their "listening on"/"sending" lines (info) are how this
    # launcher knows they are up, so they never log below info
    level = "debug" if cfg.log_level == "debug" else "info"
    recv = daemon_cmd("receiver", "--listen", f"127.0.0.1:{rport}", "--codec", cfg.codec,
                      "--latency-ms", str(cfg.latency_ms), "--threads", str(cfg.receiver_threads),
                      "--decode-workers", str(cfg.decode_workers), "--stats-json", str(work / "frames.jsonl"),
                      "--summary-json", str(work / "receiver.json"), "--log-level", level)
    recv += ["--display"] if cfg.display else []
    recv += ["--record", cfg.record] if cfg.record else []
    recv += ["--save-frames", str(work / "frames")] if save_frames else []
    send = daemon_cmd("sender", "--dest", f"127.0.0.1:{sport}", "--source", cfg.source, "--size", cfg.size,
                      "--fps", str(cfg.fps), "--duration", str(cfg.duration), "--codec", cfg.codec,
                      "--threads", str(cfg.sender_threads), "--stats-json", str(work / "sender.json"),
                      "--seed", str(cfg.seed), "--log-level", level, *cfg.extra_sender)
    send += ["--priority-dscp"] if cfg.priority_dscp else []
    cmds = {"receiver": recv, "sender": send}
    if cfg.loss:
        cmds["shim"] = daemon_cmd("netem", "--listen", f"127.0.0.1:{sport}", "--forward", f"127.0.0.1:{rport}",
                                  "--loss", cfg.loss, "--seed", str(cfg.seed), "--stats-interval", "0",
                                  "--stats-json", str(work / "shim.json"), "--log-level", "info", *cfg.extra_shim)
    return cmds


def _start(run: _Daemons, name: str, cmd: list[str], log) -> None:
    # Each daemon in its own session, as a service manager would start it: Ctrl-C reaches only
    # this process, which stops them in order; and the kernel's autogroup scheduler treats each
    # as its own group instead of lumping them with the shell's other work.
    run.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _run_daemons(cmds: dict[str, list[str]], work: Path, latency_ms: float,
                 on_tick: Callable[[dict[str, subprocess.Popen]], None] | None = None) -> _Daemons:
    """Start receiver and shim, then the sender; sample CPU (and call ``on_tick`` with the
    processes) every 0.25 s until the sender ends; stop them all."""
    run = _Daemons()
    logs = {name: open(work / f"{name}.log", "w") for name in ("receiver", "shim", "sender")}
    started: float | None = None
    try:
        for name in ("receiver", "shim"):
            if name in cmds:
                _start(run, name, cmds[name], logs[name])
        for name in ("receiver", "shim"):
            if name in cmds:
                wait_for_line(work / f"{name}.log", "listening on", run.procs[name], 60)
        _start(run, "sender", cmds["sender"], logs["sender"])
        wait_for_line(work / "sender.log", "sending ", run.procs["sender"], 60)
        started = time.monotonic()
        run.ticks0 = {name: cpu_ticks(p.pid) or 0 for name, p in run.procs.items()}
        while run.procs["sender"].poll() is None:  # sample CPU until the sender finishes
            run.ticks1.update({n: v for n, p in run.procs.items() if (v := cpu_ticks(p.pid)) is not None})
            if on_tick is not None:
                on_tick(run.procs)
            time.sleep(0.25)
        run.elapsed = time.monotonic() - started
        time.sleep(max(0.3, 3 * latency_ms / 1000))  # let the last frames play out
    except KeyboardInterrupt:  # Ctrl-C: stop everyone cleanly, then summarize what was shown
        run.interrupted = True
        run.elapsed = None if started is None else time.monotonic() - started
    finally:
        stop_processes([run.procs.get(name) for name in ("sender", "shim", "receiver")])
        for f in logs.values():
            f.close()
    return run


def _collect(cfg: PipelineConfig, work: Path, run: _Daemons, save_frames: bool) -> dict:
    """The run's summary from the files the daemons wrote."""
    hz = os.sysconf("SC_CLK_TCK")
    records = []
    if (work / "frames.jsonl").exists():
        records = [json.loads(x) for x in (work / "frames.jsonl").read_text().splitlines() if x.strip()]
    out: dict = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()},
                 "workdir": str(work), **summarize_frames(records, cfg.fps)}
    out["cpu_percent"] = {n: round(100 * (run.ticks1.get(n, run.ticks0[n]) - run.ticks0[n]) / hz / run.elapsed, 1)
                          for n in run.ticks0}
    for name in ("sender", "receiver", "shim"):
        path = work / f"{name}.json"
        if path.exists():
            try:
                out[name] = json.loads(path.read_text())
            except json.JSONDecodeError:
                pass
    if save_frames and (work / "frames").is_dir():
        width, height = (int(v) for v in cfg.size.split("x"))
        out.update(_psnr_summary(work / "frames", (width, height), cfg.fps, cfg.source if ":" in cfg.source
                                 else f"{cfg.source}:{cfg.seed}"))
    out["exit_codes"] = {n: p.returncode for n, p in run.procs.items()}
    out["interrupted"] = run.interrupted
    return out


def run_pipeline(cfg: PipelineConfig, on_tick: Callable[[dict[str, subprocess.Popen]], None] | None = None) -> dict:
    """Run receiver, shim and sender as subprocesses for ``cfg.duration`` seconds; return the
    summary.  ``on_tick(processes)`` is called every 0.25 s while the sender runs (a soak test
    samples the processes from it)."""
    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="jscc-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    rport = free_port()
    sport = free_port() if cfg.loss else rport
    save_frames = cfg.psnr and cfg.source.startswith("synthetic")
    run = _run_daemons(_commands(cfg, work, rport, sport, save_frames), work, cfg.latency_ms, on_tick)
    if run.elapsed is None:
        raise KeyboardInterrupt
    return _collect(cfg, work, run, save_frames)


def format_summary(res: dict) -> str:
    def f(v, spec=".1f"):
        return "-" if v is None else format(v, spec)

    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in res.get("cpu_percent", {}).items())
    return (f"displayed {res.get('frames_displayed', 0)} frames at {f(res.get('displayed_fps'))} fps; "
            f"byte loss {100 * res.get('byte_loss', 0):.1f}% ({res.get('frames_incomplete', 0)} frames incomplete); "
            f"mean PSNR {f(res.get('psnr_mean_db'), '.2f')} dB; capture-to-display p50 {f(res.get('latency_p50_ms'))} "
            f"p95 {f(res.get('latency_p95_ms'))} p99 {f(res.get('latency_p99_ms'))} ms; CPU {cpu}")


