"""``jscc-bench link``: the changing-link experiment (issue 14 item 6).

Each arm (default ``jscc``, ``webrtc-vp8``, ``webrtc-h264``) streams the same source for
``--duration`` seconds at 320x240, 30 fps through its own ``jscc-netem`` shim whose bottleneck
follows a schedule (default 2 Mbit/s, 500 kbit/s from 20 s, 2 Mbit/s from 40 s), with 50 ms
one-way delay both ways, random loss (default uniform 2 %) on the forward path from the first
datagram, and strict DSCP priority in the bottleneck buffer (``--priority``). WebRTC's ICE checks
and DTLS flights cross that loss too; aioice's STUN retransmissions and the DTLS timer repair
them (no clean start).

Time is the shim's clock (its zero = when it listens, which is when its rate schedule starts). Media
starts a little later (ICE + DTLS, ~0.5 s; jscc-send's model load, a few seconds) and runs for
``--duration`` seconds from there; every frame is placed on the shim clock by its capture instant.

The link changes: with ``jscc-netem --rate-schedule`` (when the installed jscc-netem has it) the
shim changes its rate itself and writes a per-``--series-interval`` time series into its stats
JSON; otherwise the harness drives the same schedule through the shim's HTTP control API
(``POST /rate``) and samples its counters (``GET /stats``) every 0.5 s into the same records.
Sent rate = the shim's ``bytes_in`` per interval (what the sender offered the link, before loss and
queue drops); a record's ``t`` is taken as the end of its interval.

Scoring per source frame as ``compare``: PSNR of what is on screen (a frozen frame scores as the
picture still shown); frozen = no new picture decoded for that frame. A video file shorter than the
run is played forwards then backwards (ping-pong, no scene cut) as often as needed.

The issue's bars, checked for the JSCC arm (reported met/missed with the numbers):

- latency: p95 <= 150 ms in every 5 s window that tiles ``[c + 2 s, next change)`` for each
  capacity change c (the run's start counts as one): windows fully inside such a span, by frame
  capture time, e.g. [2,7) [7,12) [12,17) [22,27) ... [52,57) for the default schedule;
- no frozen frames over the whole run;
- sent rate within 20 % of capacity in every whole 1 s bin of ``[c + 2 s, next change)`` that
  lies inside the media;
- mean PSNR >= each WebRTC arm's.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from jscc_stream.errors import UserError
from jscc_stream.metrics import psnr
from jscc_stream.procs import daemon_cmd, free_port
from jscc_stream.proto.packet import IP_UDP_BYTES

from .channel import Shim
from .stream import ArmRun
from .webrtc_arm import WEBRTC_ARMS, WebRtcConfig, h264_available, run_webrtc

__all__ = ["LinkRunConfig", "LINK_ARMS", "parse_schedule", "run_link", "link_checks", "DEFAULT_VIDEO"]

log = logging.getLogger(__name__)

LINK_ARMS = ("jscc",) + WEBRTC_ARMS
DEFAULT_VIDEO = Path("data/video/opencv_vtest.avi")
SERIES_INTERVAL = 0.5
_COLORS = {"jscc": "tab:red", "webrtc-vp8": "tab:brown", "webrtc-h264": "tab:gray"}
_LABELS = {"jscc": "JSCC", "webrtc-vp8": "WebRTC VP8", "webrtc-h264": "WebRTC H.264"}


@dataclass
class LinkRunConfig:
    out: Path = Path("docs/results/link")
    duration_s: float = 60.0
    width: int = 320
    height: int = 240
    fps: float = 30.0
    source: str = "synthetic"
    arms: tuple[str, ...] = LINK_ARMS
    schedule: str = "0:2mbit,20:500kbit,40:2mbit"
    delay_ms: float = 50.0
    loss: str = "uniform:0.02"
    seed: int = 1
    codec: str = "video"
    jscc_kbps: float = 1500.0  # the entropy-coded JSCC codec's bitrate (until jscc-send adapts it)
    jscc_args: list[str] = field(default_factory=list)  # more jscc-send flags
    latency_ms: float = 50.0  # jscc-recv's playout deadline (as compare's)
    workdir: Path | None = None


def parse_schedule(text: str) -> list[tuple[float, float]]:
    """``0:2mbit,20:500kbit,40:2mbit`` -> [(0, 2e6), (20, 5e5), (40, 2e6)]; a UserError otherwise."""
    from jscc_stream.netem.rates import parse_rate

    out: list[tuple[float, float]] = []
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        t, sep, rate = item.partition(":")
        try:
            if not sep:
                raise ValueError
            at = float(t)
            bps = parse_rate(rate)
        except ValueError:
            raise UserError(f"bad --schedule entry {item!r}: write SECONDS:RATE, e.g. 0:2mbit,20:500kbit") from None
        if out and at <= out[-1][0]:
            raise UserError(f"--schedule times must increase: {item!r} after {out[-1][0]:g} s")
        out.append((at, bps))
    if not out or out[0][0] != 0:
        raise UserError("--schedule must start at 0 s, e.g. 0:2mbit,20:500kbit")
    return out


def capacity_at(schedule: list[tuple[float, float]], t: float) -> float:
    rate = schedule[0][1]
    for at, bps in schedule:
        if t >= at:
            rate = bps
    return rate


@lru_cache(maxsize=1)
def _shim_has_rate_schedule() -> bool:
    try:
        out = subprocess.run(daemon_cmd("netem", "--help"), capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--rate-schedule" in out and "--series-interval" in out


class LinkShim:
    """The shim of one arm with the changing link: ``--rate-schedule`` when jscc-netem has it, else
    the schedule driven (and the counters sampled) through its control API by a thread."""

    def __init__(self, listen: int, forward: int, cfg: LinkRunConfig, workdir: Path) -> None:
        self.schedule = parse_schedule(cfg.schedule)
        self.native = _shim_has_rate_schedule()
        common = ["--priority"]
        if self.native:
            extra = ["--rate-schedule", cfg.schedule, "--series-interval", str(SERIES_INTERVAL)]
        else:
            self.control_port = free_port(tcp=True)
            extra = ["--rate", f"{self.schedule[0][1]:.0f}", "--control", f"127.0.0.1:{self.control_port}"]
        self.shim = Shim(listen, forward, None, cfg.delay_ms, workdir, seed=cfg.seed,
                         reverse_delay_ms=cfg.delay_ms, loss=cfg.loss, extra_args=common + extra)
        self.series: list[dict] = []
        self.rate_changes: list[tuple[float, float]] = []  # (shim time applied, bps), control path
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def started_unix(self) -> float:
        return self.shim.started_unix

    def __enter__(self) -> "LinkShim":
        self.shim.__enter__()
        self.t0 = time.monotonic()
        if not self.native:
            self._thread = threading.Thread(target=self._drive, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self.shim.__exit__(*exc)
        if self.native:
            try:
                self.series = json.loads(self.shim.stats_json.read_text()).get("series") or []
            except (OSError, json.JSONDecodeError):
                self.series = []

    def _http(self, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.control_port}{path}",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method="GET" if body is None else "POST")
        with urllib.request.urlopen(req, timeout=2) as r:
            return json.loads(r.read())

    def _drive(self) -> None:
        pending = list(self.schedule[1:])
        prev: dict | None = None
        k = 1
        while not self._stop.is_set():
            t_next = k * SERIES_INTERVAL
            while pending and pending[0][0] <= t_next:
                at, bps = pending.pop(0)
                self._sleep_until(at)
                try:
                    self._http("/rate", {"rate": bps})
                    self.rate_changes.append((round(time.monotonic() - self.t0, 3), bps))
                except OSError as exc:
                    log.warning("shim control: rate change failed: %s", exc)
            if not self._sleep_until(t_next):
                break
            try:
                fwd = self._http("/stats")["forward"]
            except (OSError, KeyError, ValueError):
                k += 1
                continue
            tot = fwd["total"]
            cur = {"bytes_in": tot["bytes_in"], "bytes_out": tot["bytes_out"], "packets_in": tot["in"],
                   "packets_out": tot["out"], "packets_lost": tot["lost"],
                   "packets_dropped": tot["dropped"] + tot.get("evicted", 0) + tot.get("expired", 0)}
            rec = {"t": round(time.monotonic() - self.t0, 3)}
            rec.update({key: v - (prev or {}).get(key, 0) for key, v in cur.items()})
            rec.update(rate_bps=fwd.get("rate_bps"), queue_packets=fwd.get("queued_packets"),
                       queue_bytes=fwd.get("queued_bytes"))
            self.series.append(rec)
            prev = cur
            k += 1

    def _sleep_until(self, t: float) -> bool:
        delay = self.t0 + t - time.monotonic()
        return not (delay > 0 and self._stop.wait(delay))


# --- source --------------------------------------------------------------------------------------
def load_link_frames(source: str, n: int, width: int, height: int, fps: float, seed: int = 0) -> list[np.ndarray]:
    """``n`` frames of ``source``; a video file shorter than that plays forwards then backwards."""
    from .runner import SOURCES, _is_video, prepare_source
    from jscc_stream.sources import open_source

    if source not in SOURCES and not Path(source).exists():
        raise UserError(f"source {source!r}: no such file or folder (built-in: {', '.join(SOURCES)})")
    spec = prepare_source(source, Path(tempfile.gettempdir()) / "jscc-link-src") if source == "photos" else source
    src = open_source(spec, width, height, fps, seed=seed)
    frames: list[np.ndarray] = []
    try:
        for i in range(n):
            f = src.read(i)
            if f is None:
                break
            frames.append(f)
    finally:
        src.close()
    if not frames:
        raise UserError(f"cannot decode any frame of {source}")
    if len(frames) < n and _is_video(source):
        cycle = frames + frames[-2:0:-1] if len(frames) > 2 else frames
        frames = [cycle[i % len(cycle)] for i in range(n)]
    return frames[:n]


# --- analysis ------------------------------------------------------------------------------------
def _capture_times(n: int, fps: float, known: list[float | None]) -> list[float]:
    """Every frame's capture time from those known: frame i at c + i/fps, c the median offset."""
    offs = [t - i / fps for i, t in enumerate(known) if t is not None]
    c = float(np.median(offs)) if offs else 0.0
    return [t if t is not None else c + i / fps for i, t in enumerate(known)]


def _spans(schedule: list[tuple[float, float]], end: float, settle: float = 2.0) -> list[tuple[float, float]]:
    """[change + settle, next change) for each change (the start counts), the last to ``end``."""
    times = [t for t, _ in schedule] + [end]
    return [(a + settle, b) for a, b in zip(times, times[1:]) if b > a + settle]


REALTIME_MS = 400.0  # a picture later than this after capture is no use to a conversation


def _psnr_within(frames: list[np.ndarray], run: ArmRun, grey: np.ndarray, limit_ms: float) -> list[float]:
    """PSNR per frame of what a real-time viewer sees: a picture that came more than ``limit_ms``
    after capture counts as not shown (the previous timely one stays), however good it is."""
    out, last = [], None
    for ref, img, ok, lat in zip(frames, run.shown, run.decoded, run.latency_ms):
        if ok and lat is not None and lat <= limit_ms:
            last = img
        out.append(round(psnr(ref, grey if last is None else last, identical_db=100.0), 3))
    return out


def analyse_arm(arm: str, run: ArmRun, frames: list[np.ndarray], capture_s: list[float], series: list[dict],
                schedule: list[tuple[float, float]], fps: float) -> dict:
    grey = np.full_like(frames[0], 128)
    p = [round(psnr(ref, grey if img is None else img, identical_db=100.0), 3) for ref, img in zip(frames, run.shown)]
    p_live = _psnr_within(frames, run, grey, REALTIME_MS)
    frozen = [not d for d in run.decoded]
    longest, cur = 0, 0
    for f in frozen:
        cur = cur + 1 if f else 0
        longest = max(longest, cur)
    lat = [v for v in run.latency_ms if v is not None]
    t_start, t_end = capture_s[0], capture_s[-1] + 1 / fps
    windows = []
    for w0 in np.arange(np.floor(t_start / 5) * 5, t_end, 5.0):
        vals = [v for v, t in zip(run.latency_ms, capture_s) if v is not None and w0 <= t < w0 + 5]
        windows.append({"t0": float(w0), "t1": float(w0 + 5), "frames": len(vals),
                        "p50_ms": round(float(np.percentile(vals, 50)), 1) if vals else None,
                        "p95_ms": round(float(np.percentile(vals, 95)), 1) if vals else None})
    # sent rate per 1 s bin from the shim's series (bin of the interval's midpoint), counted as the
    # bottleneck counts it: each datagram plus its IP/UDP headers (jscc-netem --overhead 28), so a
    # stream of small packets is not flattered against the capacity
    sent: dict[int, float] = {}
    if series:
        dt = series[1]["t"] - series[0]["t"] if len(series) > 1 else SERIES_INTERVAL
        for rec in series:
            b = int(np.floor(rec["t"] - dt / 2))
            wire = rec.get("bytes_in", 0) + IP_UDP_BYTES * rec.get("packets_in", 0)
            sent[b] = sent.get(b, 0.0) + wire * 8 / 1000
        rate_source = "shim series (IP/UDP headers included)"
    elif run.extra.get("sent_series_bytes"):
        iv = run.extra["series_interval_s"]
        for k, b in enumerate(run.extra["sent_series_bytes"]):
            sent[int(np.floor((k + 0.5) * iv))] = sent.get(int(np.floor((k + 0.5) * iv)), 0.0) + b * 8 / 1000
        rate_source = "sender's own count"
    else:
        rate_source = None
    seconds = list(range(int(np.floor(t_start)), int(np.ceil(t_end))))
    return {
        "arm": arm,
        "psnr_mean": round(float(np.mean(p)), 3),
        "psnr_mean_realtime": round(float(np.mean(p_live)), 3),
        "frozen": int(sum(frozen)),
        "longest_freeze_frames": longest,
        "longest_freeze_s": round(longest / fps, 3),
        "latency_p50_ms": round(float(np.percentile(lat, 50)), 1) if lat else None,
        "latency_p95_ms": round(float(np.percentile(lat, 95)), 1) if lat else None,
        "latency_windows": windows,
        "media_start_s": round(t_start, 3),
        "media_end_s": round(t_end, 3),
        "seconds": seconds,
        "sent_kbps": [round(sent[s], 1) if s in sent else None for s in seconds],
        "capacity_kbps": [round(capacity_at(schedule, s + 0.5) / 1000, 1) for s in seconds],
        "sent_rate_from": rate_source,
        "packets_sent": run.packets_sent,
        "retransmissions": run.retransmissions,
        # per frame, for the plots
        "capture_s": [round(t, 4) for t in capture_s],
        "psnr": p,
        "decoded": [bool(d) for d in run.decoded],
        "latency_ms": [None if v is None else round(v, 1) for v in run.latency_ms],
        "extra": {k: v for k, v in run.extra.items() if not isinstance(v, (list, dict)) or k == "rtp_packets_by_pt"},
    }


def link_checks(arms: dict[str, dict], schedule: list[tuple[float, float]], arm: str = "jscc",
                p95_ms: float = 150.0, rate_tol: float = 0.2) -> list[dict]:
    """The issue's bars for ``arm``: each {bar, met, detail}."""
    a = arms.get(arm)
    if a is None:
        return []
    out = []
    spans = _spans(schedule, a["media_end_s"])
    bad_w, n_w = [], 0
    for s0, s1 in spans:
        w0 = s0
        while w0 + 5 <= s1 + 1e-9:
            vals = [v for v, t in zip(a["latency_ms"], a["capture_s"]) if v is not None and w0 <= t < w0 + 5]
            if vals and min(a["capture_s"]) <= w0:
                n_w += 1
                p95 = float(np.percentile(vals, 95))
                if p95 > p95_ms:
                    bad_w.append(f"[{w0:g},{w0 + 5:g}) {p95:.0f} ms")
            w0 += 5
    out.append({"bar": f"latency p95 <= {p95_ms:g} ms in every 5 s window from 2 s after each change",
                "met": n_w > 0 and not bad_w,
                "detail": f"{n_w - len(bad_w)}/{n_w} windows met" + (f"; over: {', '.join(bad_w)}" if bad_w else "")})
    out.append({"bar": "no frozen frames", "met": a["frozen"] == 0,
                "detail": f"{a['frozen']} frozen, longest freeze {a['longest_freeze_frames']} frames"})
    bins_bad, n_b = [], 0
    for s, sent, cap in zip(a["seconds"], a["sent_kbps"], a["capacity_kbps"]):
        if sent is None or s < a["media_start_s"] or s + 1 > a["media_end_s"]:
            continue
        if not any(s0 <= s and s + 1 <= s1 for s0, s1 in spans):
            continue
        n_b += 1
        if abs(sent - cap) > rate_tol * cap:
            bins_bad.append((s, sent, cap))
    worst = max(bins_bad, key=lambda b: abs(b[1] - b[2]) / b[2], default=None)
    out.append({"bar": f"sent rate within {100 * rate_tol:.0f} % of capacity from 2 s after each change",
                "met": n_b > 0 and not bins_bad,
                "detail": (f"{n_b - len(bins_bad)}/{n_b} one-second bins met" if n_b else "no sent-rate series")
                + (f"; worst {worst[1]:.0f} kbit/s at {worst[0]}-{worst[0] + 1} s vs {worst[2]:.0f}" if worst else "")})
    for other in WEBRTC_ARMS:
        if other in arms:
            d = a["psnr_mean"] - arms[other]["psnr_mean"]
            rt = a.get("psnr_mean_realtime", 0.0) - arms[other].get("psnr_mean_realtime", 0.0)
            out.append({"bar": f"mean PSNR >= {_LABELS[other]}'s", "met": d >= 0,
                        "detail": f"{a['psnr_mean']:.2f} vs {arms[other]['psnr_mean']:.2f} dB ({d:+.2f}); "
                                  f"counting pictures later than {REALTIME_MS:.0f} ms as not shown: "
                                  f"{a.get('psnr_mean_realtime', 0.0):.2f} vs "
                                  f"{arms[other].get('psnr_mean_realtime', 0.0):.2f} dB ({rt:+.2f})"})
    return out


# --- the run -------------------------------------------------------------------------------------
def _run_one(arm: str, cfg: LinkRunConfig, frames: list[np.ndarray], spec: str, rundir: Path) -> tuple[ArmRun, LinkShim]:
    holder: list[LinkShim] = []

    def make(listen: int, forward: int) -> LinkShim:
        holder.append(LinkShim(listen, forward, cfg, rundir))
        return holder[-1]

    n = len(frames)
    if arm in WEBRTC_ARMS:
        run = run_webrtc(WebRtcConfig(arm, cfg.width, cfg.height, cfg.fps), frames, make)
        return run, holder[0]
    from .jscc_arm import run_jscc

    run = run_jscc(spec, n, cfg.width, cfg.height, cfg.fps, cfg.codec, None, cfg.delay_ms, rundir,
                   seed=0, latency_ms=cfg.latency_ms, pace=0.0, kbps=cfg.jscc_kbps,
                   extra_sender=list(cfg.jscc_args), shim=make)
    return run, holder[0]


def run_link(cfg: LinkRunConfig, progress=print) -> dict:
    schedule = parse_schedule(cfg.schedule)
    unknown = [a for a in cfg.arms if a not in LINK_ARMS]
    if unknown or not cfg.arms:
        raise UserError(f"unknown arm: {', '.join(unknown) or '(none)'}; choose from {', '.join(LINK_ARMS)}")
    if "webrtc-h264" in cfg.arms and not h264_available():
        raise UserError("webrtc-h264 needs PyAV with libx264; leave it out of --arms")
    n = int(round(cfg.duration_s * cfg.fps))
    frames = load_link_frames(cfg.source, n, cfg.width, cfg.height, cfg.fps)
    cfg.out.mkdir(parents=True, exist_ok=True)
    work = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="jscc-link-"))
    work.mkdir(parents=True, exist_ok=True)
    from .runner import SOURCES, _video_file

    results: dict = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                     "schedule": [{"t": t, "bps": b} for t, b in schedule], "frames": n,
                     "when": time.strftime("%Y-%m-%d %H:%M:%S"), "arms": {}}
    t_all = time.monotonic()
    try:
        spec = cfg.source if cfg.source in SOURCES and cfg.source != "photos" else None
        for arm in cfg.arms:
            t0 = time.monotonic()
            rundir = work / arm
            rundir.mkdir(parents=True, exist_ok=True)
            if arm == "jscc" and spec is None:  # the exact frames, losslessly (ping-pong included)
                spec = _video_file(frames, work / "source.mkv", cfg.fps)
            run, shim = _run_one(arm, cfg, frames, spec or "", rundir)
            if arm == "jscc":
                known = [None if t is None else t - shim.started_unix for t in run.extra.get("capture_unix", [])]
            else:
                known = run.extra.get("capture_s", [])
            capture_s = _capture_times(n, cfg.fps, known or [None] * n)
            res = analyse_arm(arm, run, frames, capture_s, shim.series, schedule, cfg.fps)
            res["rate_driven_by"] = "jscc-netem --rate-schedule" if shim.native else "control API (POST /rate)"
            res["rate_changes_applied"] = shim.rate_changes
            res["wall_s"] = round(time.monotonic() - t0, 1)
            if arm == "jscc":
                sender = run.extra.get("sender", {})
                res["sender_skipped_frames"] = sender.get("frames_dropped", 0) + sender.get("frames_rate_limited", 0)
                if res["sender_skipped_frames"]:  # (a file plays in real time: ids stay in step)
                    log.warning("jscc-send skipped %d capture ticks (busy encoder): frozen frames",
                                res["sender_skipped_frames"])
            results["arms"][arm] = res
            progress(f"{arm:12s} PSNR {res['psnr_mean']:6.2f} dB  frozen {res['frozen']:4d}/{n} (longest "
                     f"{res['longest_freeze_frames']})  latency p50/p95 {res['latency_p50_ms']}/"
                     f"{res['latency_p95_ms']} ms  ({res['wall_s']:.0f} s)")
    finally:
        if not cfg.workdir:
            shutil.rmtree(work, ignore_errors=True)
    results["checks"] = {"jscc": link_checks(results["arms"], schedule)}
    results["wall_s"] = round(time.monotonic() - t_all, 1)
    (cfg.out / "link.json").write_text(json.dumps(results) + "\n")
    (cfg.out / "link.md").write_text(link_markdown(results))
    plot_link(results, cfg.out / "link.png")
    return results


def link_markdown(results: dict) -> str:
    c = results["config"]
    sched = ", ".join(f"{s['bps'] / 1e6:g} Mbit/s from {s['t']:g} s" for s in results["schedule"])
    lines = [f"# Changing link ({results['when']})", "",
             f"{results['frames']} frames of `{c['source']}` at {c['width']}x{c['height']}, {c['fps']:g} fps; "
             f"capacity {sched}; {c['delay_ms']:g} ms one-way delay both ways; loss `{c['loss']}` on the forward "
             f"path; DSCP priority in the bottleneck. JSCC: codec `{c['codec']}` at {c['jscc_kbps']:g} kbit/s"
             + (f", jscc-send {' '.join(c['jscc_args'])}" if c["jscc_args"] else "") + ". Time = the shim's clock.", "",
             f"| arm | mean PSNR dB | PSNR, pictures > {REALTIME_MS:.0f} ms late not shown | frozen | longest freeze | "
             "latency p50 / p95 ms | mean sent kbit/s | retransmissions |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for arm, a in results["arms"].items():
        sent = [v for v in a["sent_kbps"] if v is not None]
        mean_sent = f"{np.mean(sent):.0f}" if sent else "–"
        lines.append(f"| {_LABELS.get(arm, arm)} | {a['psnr_mean']:.2f} | {a.get('psnr_mean_realtime', 0.0):.2f} | "
                     f"{a['frozen']} | "
                     f"{a['longest_freeze_frames']} frames ({a['longest_freeze_s']:.2f} s) | "
                     f"{a['latency_p50_ms']} / {a['latency_p95_ms']} | {mean_sent} | {a['retransmissions']} |")
    lines += ["", "Latency p95 (ms) per 5 s window of capture time:", ""]
    arms = list(results["arms"])
    if arms:
        all_w = sorted({w["t0"] for a in results["arms"].values() for w in a["latency_windows"]})
        lines += ["| window | " + " | ".join(_LABELS.get(a, a) for a in arms) + " |", "|---|" + "---:|" * len(arms)]
        for w0 in all_w:
            cells = []
            for a in arms:
                w = next((x for x in results["arms"][a]["latency_windows"] if x["t0"] == w0), None)
                cells.append("–" if not w or w["p95_ms"] is None else f"{w['p95_ms']:.0f}")
            lines.append(f"| [{w0:g}, {w0 + 5:g}) | " + " | ".join(cells) + " |")
    lines += ["", "Bars for the JSCC arm (issue 14):", ""]
    for chk in results["checks"].get("jscc", []):
        lines.append(f"- {chk['bar']}: **{'met' if chk['met'] else 'missed'}** ({chk['detail']})")
    return "\n".join(lines) + "\n"


def plot_link(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    ax_r, ax_p, ax_l = axes
    sched = results["schedule"]
    end = max((a["media_end_s"] for a in results["arms"].values()), default=sched[-1]["t"] + 1)
    xs = [s["t"] for s in sched] + [end]
    ax_r.step(xs, [s["bps"] / 1000 for s in sched] + [sched[-1]["bps"] / 1000], where="post", color="k",
              lw=2, label="capacity")
    for arm, a in results["arms"].items():
        col, lab = _COLORS.get(arm), _LABELS.get(arm, arm)
        pts = [(s + 0.5, v) for s, v in zip(a["seconds"], a["sent_kbps"]) if v is not None]
        if pts:
            ax_r.plot(*zip(*pts), color=col, label=lab)
        t = np.array(a["capture_s"])
        ax_p.plot(t, a["psnr"], color=col, lw=0.8, label=f"{lab} ({a['psnr_mean']:.1f} dB)")
        frz = [i for i, d in enumerate(a["decoded"]) if not d]
        if frz:
            ax_p.plot(t[frz], np.array(a["psnr"])[frz], "x", color=col, ms=4)
        lat = [(ti, v) for ti, v in zip(t, a["latency_ms"]) if v is not None]
        if lat:
            ax_l.plot(*zip(*lat), color=col, lw=0.8, label=lab)
        if frz:
            ax_l.plot(t[frz], np.zeros(len(frz)), "|", color=col, ms=8)
    ax_r.set_ylabel("kbit/s sent (shim input)")
    ax_r.legend(loc="upper right", fontsize=8)
    ax_p.set_ylabel("PSNR dB (x = frozen)")
    ax_p.legend(loc="lower left", fontsize=8)
    ax_l.set_ylabel("capture-to-display ms (| at 0 = frozen)")
    ax_l.axhline(150, color="k", ls=":", lw=0.8)
    ax_l.set_yscale("symlog", linthresh=200)
    ax_l.set_ylim(bottom=-20)
    ax_l.legend(loc="upper right", fontsize=8)
    ax_l.set_xlabel("time on the shim's clock (s)")
    for ax in axes:
        for s in sched[1:]:
            ax.axvline(s["t"], color="k", ls="--", lw=0.6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
