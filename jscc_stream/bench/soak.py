"""``jscc-bench soak``: a long live run sender -> shim -> receiver, watched for slow trouble.

Leaks and drifts (memory, descriptors, threads, a decoder falling slowly behind) do not show in
a 20-second benchmark.  This runs the real daemons (``pipeline.run_pipeline``) for many minutes
through a Gilbert-Elliott lossy shim and every ``interval`` samples each process's RSS, open
fds and threads (/proc) and, from the receiver's per-frame stats lines, the interval's displayed
fps and p95 capture-to-display latency.  The verdict compares the later samples with the first
minute's: resources may grow at most 5 %, fps may fall and p95 latency may rise at most 10 %; and every daemon must run the whole time,
exit 0 and log no traceback.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from jscc_stream.metrics import percentile
from jscc_stream.procs import log_problems, proc_usage

__all__ = ["SoakConfig", "SoakMonitor", "soak_verdict", "health_checks", "run_soak", "plot_soak", "RESOURCES"]

RESOURCES = ("rss_kb", "rss_anon_kb", "fds", "threads")  # rss_anon_kb: the heap, where a leak grows


@dataclass
class SoakConfig:
    out: Path
    minutes: float = 30.0
    interval: float = 60.0  # seconds between samples
    size: str = "320x240"
    fps: float = 15.0
    loss: str = "ge10"
    codec: str = "video"
    latency_ms: float = 50.0
    seed: int = 1
    baseline_s: float = 60.0  # "the first minute": resources after it, fps/latency over it
    resource_tolerance: float = 0.05
    perf_tolerance: float = 0.10


class SoakMonitor:
    """Called every tick by the pipeline; every ``interval`` seconds it appends a sample.  The
    receiver's per-frame lines are read incrementally, so a long run costs no more per sample."""

    def __init__(self, frames_path: Path, interval: float, baseline_s: float) -> None:
        self.frames_path = frames_path
        self.interval = interval
        self.baseline_s = baseline_s
        self.samples: list[dict] = []
        self.t0: float | None = None
        self._offset = 0
        self._early: list[dict] = []  # records up to the baseline: the reference fps and p95

    def __call__(self, procs: dict) -> None:
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        t = now - self.t0
        if t >= self.interval * (len(self.samples) + 1):
            self.sample(procs, t)

    def _new_records(self) -> list[dict]:
        if not self.frames_path.exists():
            return []
        with open(self.frames_path) as f:
            f.seek(self._offset)
            chunk = f.read()
        complete = chunk[:chunk.rfind("\n") + 1]  # a line being written waits for the next sample
        self._offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def sample(self, procs: dict, t: float) -> dict:
        recs = self._new_records()
        prev_t = self.samples[-1]["t"] if self.samples else 0.0
        if prev_t < self.baseline_s:
            self._early += recs
        s = {"t": round(t, 1), "procs": {n: proc_usage(p.pid) for n, p in procs.items()},
             **window_perf(recs, t - prev_t)}
        self.samples.append(s)
        return s

    def reference(self) -> dict:
        """fps and p95 latency over the first minute (up to the first sample at or after it)."""
        base = next((s for s in self.samples if s["t"] >= self.baseline_s), None)
        return window_perf(self._early, base["t"] if base else (self.samples[-1]["t"] if self.samples else 0))


def window_perf(recs: list[dict], seconds: float) -> dict:
    """Displayed frames per second and p95 capture-to-display latency of some per-frame records."""
    shown = [r for r in recs if r.get("decoded")]
    lat = [r["capture_to_display_ms"] for r in shown if r.get("capture_to_display_ms") is not None]
    return {"frames": len(shown), "fps": round(len(shown) / seconds, 2) if seconds > 0 else None,
            "latency_p95_ms": percentile(lat, 95)}


def _growth(values: list[float], base: float) -> float:
    return (max(values) - base) / base if base else (0.0 if max(values) <= 0 else float("inf"))


def health_checks(exit_codes: dict, logs: dict[str, dict], samples: int, expected_samples: int) -> dict[str, dict]:
    """What must hold besides flat curves: every daemon exited 0, no log shows a traceback (an
    exception can kill a daemon's loop while it exits 0), and the run lasted its length."""
    return {"exit_codes": {"ok": bool(exit_codes) and all(c == 0 for c in exit_codes.values()), **exit_codes},
            "no_tracebacks": {"ok": all(v["tracebacks"] == 0 for v in logs.values()),
                              **{n: v["tracebacks"] for n, v in logs.items()}},
            "full_length": {"ok": samples >= expected_samples, "samples": samples, "expected": expected_samples}}


def soak_verdict(samples: list[dict], reference: dict, baseline_s: float = 60.0,
                 resource_tolerance: float = 0.05, perf_tolerance: float = 0.10,
                 health: dict[str, dict] | None = None) -> dict:
    """The bars: every resource of every process at most ``resource_tolerance`` above its value
    at the first sample at or after ``baseline_s``; every later interval's fps at least
    (1 - ``perf_tolerance``) x the reference's and its p95 latency at most (1 + ``perf_tolerance``)
    x the reference's; and the ``health`` checks (:func:`health_checks`).  A run without
    samples after the baseline fails (nothing was checked)."""
    base = next((s for s in samples if s["t"] >= baseline_s), None)
    later = [s for s in samples if base is not None and s["t"] > base["t"]]
    checks: dict[str, dict] = dict(health or {})
    if base is None or not later:
        return {"pass": False, "reason": "no samples after the baseline", "checks": checks}
    for proc, usage in base["procs"].items():
        for q in RESOURCES:
            vals = [s["procs"].get(proc, {}) or {} for s in later]
            vals = [v[q] for v in vals if q in v]
            if usage is None or not vals or len(vals) < len(later):
                checks[f"{proc}.{q}"] = {"ok": False, "reason": "process gone"}
                continue
            g = _growth(vals, usage[q])
            checks[f"{proc}.{q}"] = {"base": usage[q], "max": max(vals), "growth": round(g, 4),
                                     "ok": g <= resource_tolerance}
    fps = [s["fps"] or 0.0 for s in later]
    ref_fps = reference.get("fps") or 0.0
    checks["fps"] = {"reference": ref_fps, "min": min(fps),
                     "ok": ref_fps > 0 and min(fps) >= (1 - perf_tolerance) * ref_fps,
                     "worst_change": round(min(fps) / ref_fps - 1, 4) if ref_fps else None}
    p95 = [s["latency_p95_ms"] for s in later]
    ref_p95 = reference.get("latency_p95_ms")
    known = bool(ref_p95) and None not in p95
    checks["latency_p95_ms"] = {"reference": ref_p95, "max": max(p95) if known else None,
                                "ok": known and max(p95) <= (1 + perf_tolerance) * ref_p95,
                                "worst_change": round(max(p95) / ref_p95 - 1, 4) if known else None}
    return {"pass": all(c["ok"] for c in checks.values()), "baseline_t": base["t"], "checks": checks,
            "failed": [k for k, c in checks.items() if not c["ok"]]}


def run_soak(cfg: SoakConfig) -> dict:
    """The live run, its samples and verdict; writes soak.json and soak.png to ``cfg.out``."""
    from jscc_stream.pipeline import PipelineConfig, run_pipeline

    cfg.out.mkdir(parents=True, exist_ok=True)
    work = cfg.out / "work"
    baseline_s = min(cfg.baseline_s, cfg.minutes * 60 / 3)  # a short trial run still has later samples
    monitor = SoakMonitor(work / "frames.jsonl", cfg.interval, baseline_s)
    pcfg = PipelineConfig(size=cfg.size, fps=cfg.fps, duration=cfg.minutes * 60, loss=cfg.loss, seed=cfg.seed,
                          codec=cfg.codec, latency_ms=cfg.latency_ms, psnr=False, workdir=work)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    res = run_pipeline(pcfg, on_tick=monitor)
    reference = monitor.reference()
    logs = {n: log_problems(work / f"{n}.log") for n in ("sender", "shim", "receiver")}
    # samples come while the sender runs; its own clock starts a little before ours
    health = health_checks(res.get("exit_codes") or {}, logs, len(monitor.samples),
                           max(1, int(cfg.minutes * 60 / cfg.interval) - 1))
    verdict = soak_verdict(monitor.samples, reference, baseline_s, cfg.resource_tolerance, cfg.perf_tolerance,
                           health)
    meta = {"started": started, "host": platform.node(), "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
            "minutes": cfg.minutes, "interval_s": cfg.interval, "baseline_s": baseline_s, "size": cfg.size,
            "fps": cfg.fps, "loss": cfg.loss, "codec": cfg.codec, "latency_ms": cfg.latency_ms}
    run = {k: res.get(k) for k in ("frames_displayed", "displayed_fps", "byte_loss", "latency_p50_ms",
                                   "latency_p95_ms", "latency_p99_ms", "cpu_percent", "exit_codes", "interrupted")}
    summary = {"meta": meta, "reference": reference, "samples": monitor.samples, "verdict": verdict, "run": run,
               "logs": logs, "pass": verdict["pass"]}
    (cfg.out / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_soak(summary, cfg.out / "soak.png")
    return summary


def _series(samples: list[dict], proc: str, q: str, scale: float = 1.0) -> list[float | None]:
    vals = [(s["procs"].get(proc) or {}).get(q) for s in samples]
    return [None if v is None else v / scale for v in vals]


def plot_soak(summary: dict, path: Path) -> None:
    """One panel per quantity (RSS, fds, threads, fps, p95 latency), one line per process."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = summary["samples"]
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.4))
    ts = [s["t"] / 60 for s in samples]
    names = sorted({n for s in samples for n in s["procs"]})
    for n in names:
        line, = axes[0].plot(ts, _series(samples, n, "rss_kb", 1024), marker=".", label=n)
        axes[0].plot(ts, _series(samples, n, "rss_anon_kb", 1024), ls="--", color=line.get_color())
        axes[1].plot(ts, _series(samples, n, "fds"), marker=".", label=n)
        axes[2].plot(ts, _series(samples, n, "threads"), marker=".", label=n)
    for ax, title in zip(axes, ("RSS (MB; dashed: anonymous)", "open fds", "threads")):
        ax.set_title(title)
    for ax, q, title in zip(axes[3:], ("fps", "latency_p95_ms"), ("receiver fps", "receiver p95 latency (ms)")):
        ax.plot(ts, [s[q] for s in samples], marker=".", color="C3", label="receiver")
        ref = summary["reference"].get(q)
        if ref:
            ax.axhline(ref, ls="--", color="gray", label="first minute")
        ax.set_title(title)
    for ax in axes:
        ax.set_xlabel("minutes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    m = summary["meta"]
    fig.suptitle(f"jscc-bench soak: {m['size']} {m['fps']:g} fps, loss {m['loss']}, {m['minutes']:g} min "
                 f"(verdict: {'PASS' if summary['pass'] else 'FAIL'})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
