"""``jscc-bench fuzz``: random and mutated datagrams at a running jscc-recv and jscc-netem.

Per target: start it, play it a real stream (a capture of jscc-send, replayed under a fresh
SSRC) so its codec and buffers are warm, measure its RSS / fds / threads, send N hostile
datagrams paced on its socket's receive queue (so it really parses them instead of the kernel
dropping them), measure a few times on the way and after, replay the real stream again and
check it is still served, stop it and read its log and counters.  Bars: alive, clean exit, no
traceback, RSS growth <= 20 MB, no fd growth.
"""

from __future__ import annotations

import json
import os
import platform
import random
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from jscc_stream.procs import daemon_cmd, free_port, proc_usage, stop_process, udp_socket_queue

from .fuzz_data import DatagramFuzzer, is_rtcp_shaped, pack_capture, unpack_capture
from .fuzz_targets import TARGETS, ReceiverTarget, ShimTarget, replay

__all__ = ["FuzzConfig", "capture_stream", "run_fuzz", "fuzz_verdict"]

Capture = list[tuple[float, bytes]]


@dataclass
class FuzzConfig:
    out: Path
    datagrams: int = 1_000_000
    targets: tuple[str, ...] = ("receiver", "shim")
    seed: int = 0
    capture: Path | None = None  # a saved capture to reuse; default: capture a live jscc-send
    capture_seconds: float = 4.0
    size: str = "320x240"
    fps: float = 15.0
    codec: str = "video"
    samples: int = 20  # measurements during the fuzzing
    max_queue_bytes: int = 128 << 10  # pause sending while the target's socket holds more than this
    max_rate: float = 0.0  # datagrams per second at most (0: only the queue paces)
    rss_limit_mb: float = 20.0
    progress: bool = True


def capture_stream(cfg: FuzzConfig, work: Path) -> Capture:
    """A live jscc-send's datagrams for ``cfg.capture_seconds``, read from a plain UDP socket
    (no feedback: with the video codec every frame is then intra, decodable on its own)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", free_port()))
    sock.settimeout(0.2)
    cmd = daemon_cmd("sender", "--dest", f"127.0.0.1:{sock.getsockname()[1]}", "--size", cfg.size,
                     "--fps", str(cfg.fps), "--codec", cfg.codec, "--duration", str(cfg.capture_seconds),
                     "--seed", str(cfg.seed), "--log-level", "warning")
    grams: Capture = []
    with open(work / "capture_sender.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        try:
            t0 = None
            while proc.poll() is None or grams and time.monotonic() - t0 - grams[-1][0] < 0.5:
                try:
                    data = sock.recv(65535)
                except socket.timeout:
                    continue
                t0 = time.monotonic() if t0 is None else t0
                grams.append((time.monotonic() - t0, data))
        finally:
            stop_process(proc)
            sock.close()
    if not any(not is_rtcp_shaped(d) for _, d in grams):
        raise RuntimeError(f"jscc-send sent no media (see {work / 'capture_sender.log'})")
    return grams


def _sample(target, sent: int, t0: float) -> dict:
    q = udp_socket_queue(target.port) or {}
    return {"sent": sent, "t": round(time.monotonic() - t0, 2), **(proc_usage(target.proc.pid) or {}),
            "kernel_drops": q.get("drops"), "rx_queue": q.get("rx_queue"), "target_count": target.live_count()}


def _wait_drained(target, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        q = udp_socket_queue(target.port)
        if (q is None or q["rx_queue"] == 0) and target.settled():
            return
        time.sleep(0.05)


def _pace(target, cfg: FuzzConfig, sent: int, t0: float) -> float:
    """Wait while the target's socket holds more than ``max_queue_bytes`` (or we are ahead of
    ``max_rate``); returns the seconds waited."""
    start = time.monotonic()
    while (q := udp_socket_queue(target.port)) is not None and q["rx_queue"] > cfg.max_queue_bytes:
        if not target.alive():
            break
        time.sleep(0.001)
    if cfg.max_rate > 0:
        ahead = t0 + sent / cfg.max_rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    return time.monotonic() - start


def _fuzz(target, capture: Capture, cfg: FuzzConfig, main: socket.socket) -> dict:
    """Send ``cfg.datagrams`` hostile datagrams, most from ``main`` (the real stream's socket:
    a source the target already knows), measuring ``cfg.samples`` times on the way."""
    from tqdm import tqdm

    fuzzer = DatagramFuzzer([d for _, d in capture], cfg.seed)
    pool = getattr(target, "pool", [])
    admitted = getattr(target, "admitted", len(pool))  # pool sockets the target took as clients
    refused = 0
    every = max(1, cfg.datagrams // max(1, cfg.samples))
    kinds, rtcp_shaped, errors, waited = Counter(), 0, Counter(), 0.0
    rng = random.Random(cfg.seed + 1)
    samples, t0 = [], time.monotonic()
    bar = tqdm(total=cfg.datagrams, desc=f"fuzz {target.name}", unit="dgram", disable=not cfg.progress,
               mininterval=2)
    for i in range(cfg.datagrams):
        name, data = fuzzer.next()
        kinds[name] += 1
        rtcp_shaped += is_rtcp_shaped(data)
        sock = main
        if pool and i % ShimTarget.pool_every == 0:
            k = rng.randrange(len(pool))
            sock, refused = pool[k], refused + (k >= admitted)
        try:
            sock.sendto(data, target.dest)
        except OSError as exc:
            errors[exc.__class__.__name__] += 1
        if i % 64 == 63:
            waited += _pace(target, cfg, i + 1, t0)
            bar.update(64)
            if not target.alive():
                break
        if (i + 1) % every == 0:
            samples.append(_sample(target, i + 1, t0))
    bar.close()
    elapsed = time.monotonic() - t0
    return {"sent": sum(kinds.values()), "seconds": round(elapsed, 1), "paced_wait_s": round(waited, 1),
            "rate_per_s": round(sum(kinds.values()) / elapsed, 1), "by_mutation": dict(kinds),
            "rtcp_shaped": rtcp_shaped, "send_errors": dict(errors), "samples": samples,
            "sent_from_refused_sources": refused}


def _check_real_stream(target, sock: socket.socket, capture: Capture, ssrc: int) -> dict:
    if isinstance(target, ShimTarget):
        return target.check_forwarding(sock, capture, ssrc)
    sent = replay(sock, target.dest, capture, ssrc)
    time.sleep(1.0)  # the last frames play out
    return {"sent": sent, **target.frames_of(ssrc)}


def _run_target(name: str, capture: Capture, cfg: FuzzConfig, work: Path) -> dict:
    """One target from start to stop: warm-up, baseline, fuzzing, drain, real stream, stop."""
    target = TARGETS[name](work) if name == "receiver" else TARGETS[name](work, cfg.seed)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rng = random.Random(cfg.seed + 2)
    warm_ssrc, post_ssrc = rng.getrandbits(32), rng.getrandbits(32)
    res: dict = {"target": name}
    try:
        target.start()
        res["warm_up"] = _check_real_stream(target, sock, capture, warm_ssrc)
        time.sleep(1.0)
        t0 = time.monotonic()
        res["before"] = _sample(target, 0, t0)
        res["fuzz"] = _fuzz(target, capture, cfg, sock)
        _wait_drained(target)
        res["after_fuzz"] = _sample(target, res["fuzz"]["sent"], t0)
        # a new stream is served once the one before it (the warm-up's, or a replayed one the
        # fuzzing described) has been quiet for the receiver's hand-over time (300 ms), as a
        # restarted sender meets it
        time.sleep(0.5)
        res["real_stream_after"] = _check_real_stream(target, sock, capture, post_ssrc)
        res["after"] = _sample(target, res["fuzz"]["sent"], t0)
    finally:
        sock.close()
        res["stop"] = target.stop()
    if isinstance(target, ReceiverTarget):
        res["receiver_summary"] = target.summary()
        if res.get("real_stream_after"):
            res["warm_up"] = {**res["warm_up"], **target.frames_of(warm_ssrc)}
            res["real_stream_after"].update(target.frames_of(post_ssrc))
    res["counted"] = _counted(res, name)
    res["verdict"] = fuzz_verdict(res, cfg.rss_limit_mb)
    return res


def _counted(res: dict, name: str) -> dict:
    """The target's own count of datagrams taken in, against what reached it."""
    fz, drops = res.get("fuzz", {}), None
    if res.get("before", {}).get("kernel_drops") is not None and res.get("after_fuzz"):
        drops = res["after_fuzz"]["kernel_drops"] - res["before"]["kernel_drops"]
    out = {"fuzz_sent": fz.get("sent"), "kernel_drops_during_fuzz": drops}
    if name == "shim":
        before, after = res.get("before", {}).get("target_count"), res.get("after_fuzz", {}).get("target_count")
        out["shim_counted_during_fuzz"] = None if None in (before, after) else after - before
    else:
        reasm = res.get("receiver_summary", {}).get("reassembly", {})
        real = sum(res.get(k, {}).get("sent", 0) for k in ("warm_up", "real_stream_after"))
        # RTCP-shaped datagrams go to the RTCP parser, which counts only the ones it rejects
        out["receiver_counted_media_datagrams"] = reasm.get("datagrams")
        out["expected_media_datagrams"] = (fz.get("sent", 0) - fz.get("rtcp_shaped", 0)) + real
    return out


def fuzz_verdict(res: dict, rss_limit_mb: float = 20.0) -> dict:
    """The bars, each True/False with the figures they are judged on.  RSS growth is judged on
    the whole and on its anonymous part (the heap: where a leak grows even while the kernel
    drops file-backed pages and the whole shrinks)."""
    before, after = res.get("before") or {}, res.get("after") or {}
    stop = res.get("stop", {})
    growth = {q: (after[q] - before[q]) / 1024 if q in before and q in after else None
              for q in ("rss_kb", "rss_anon_kb")}
    fd_growth = after.get("fds", 0) - before.get("fds", 0) if before and after else None
    real = res.get("real_stream_after") or {}
    warm = res.get("warm_up") or {}
    if res.get("target") == "shim":
        served = bool(real) and real.get("forwarded") == real.get("distinct")
    else:
        served = bool(real) and real.get("frames_decoded", 0) >= max(1, 0.9 * warm.get("frames_decoded", 0))
    checks = {"alive": bool(stop.get("alive_before_stop")), "clean_exit": stop.get("exit_code") == 0,
              "no_traceback": stop.get("tracebacks", 1) == 0,
              "rss_growth_ok": all(g is not None and g <= rss_limit_mb for g in growth.values()),
              "no_fd_growth": fd_growth is not None and fd_growth <= 0, "serves_real_stream": served}
    return {"pass": all(checks.values()), "checks": checks, "fd_growth": fd_growth,
            **{f"{q[:-3]}_growth_mb": None if g is None else round(g, 2) for q, g in growth.items()}}


def _load_capture(cfg: FuzzConfig, work: Path) -> Capture:
    if cfg.capture is not None:
        return unpack_capture(Path(cfg.capture).read_bytes())
    capture = capture_stream(cfg, work)
    (cfg.out / "capture.bin").write_bytes(pack_capture(capture))
    return capture


def run_fuzz(cfg: FuzzConfig) -> dict:
    """Every target in turn; writes fuzz.json and fuzz.png to ``cfg.out``."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    work = cfg.out / "work"
    work.mkdir(exist_ok=True)
    t0 = time.monotonic()
    capture = _load_capture(cfg, work)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(), "cpus": os.cpu_count(),
            "cpu": _cpu_model(), "datagrams": cfg.datagrams, "seed": cfg.seed,
            "capture": {"datagrams": len(capture), "seconds": round(capture[-1][0], 2), "size": cfg.size,
                        "fps": cfg.fps, "codec": cfg.codec, "file": str(cfg.capture or cfg.out / "capture.bin")}}
    results = {}
    for name in cfg.targets:
        twork = work / name
        twork.mkdir(exist_ok=True)
        results[name] = _run_target(name, capture, cfg, twork)
    meta["wall_s"] = round(time.monotonic() - t0, 1)
    meta["load_avg_at_end"] = os.getloadavg()
    summary = {"meta": meta, "targets": results, "pass": all(r["verdict"]["pass"] for r in results.values())}
    (cfg.out / "fuzz.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_fuzz(summary, cfg.out / "fuzz.png")
    return summary


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def plot_fuzz(summary: dict, path: Path) -> None:
    """RSS and open fds of each target against datagrams sent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, res in summary["targets"].items():
        pts = [res.get("before")] + res.get("fuzz", {}).get("samples", []) + [res.get("after")]
        pts = [p for p in pts if p and "rss_kb" in p]
        xs = [p["sent"] for p in pts]
        line, = axes[0].plot(xs, [p["rss_kb"] / 1024 for p in pts], marker=".", label=f"{name} RSS")
        axes[0].plot(xs, [p.get("rss_anon_kb", 0) / 1024 for p in pts], ls="--", color=line.get_color(),
                     label=f"{name} anonymous")
        axes[1].plot(xs, [p["fds"] for p in pts], marker=".", label=name)
    for ax, title in zip(axes, ("resident memory (MB)", "open file descriptors")):
        ax.set_xlabel("datagrams sent")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="center right", fontsize=8)
    fig.suptitle(f"jscc-bench fuzz: {summary['meta']['datagrams']:,} datagrams per target "
                 "(last point: after the real stream again)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
