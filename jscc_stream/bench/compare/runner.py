"""Runs every codec over every loss condition on every source, scores the frames, writes the results.

For each (source, condition): one trace file (seeded), then each arm in turn streams the same
source frames in real time through its own ``jscc-netem`` shim process replaying that trace.
Scores are per source frame, on what the viewer sees at that frame's slot: the frame decoded for
it, or the last good one (frozen), or mid-grey before the first. PSNR and SSIM (scikit-image,
colour, 8-bit range) against the source frame.

A source is a built-in name (`SOURCES`) or the user's own footage: a video file (any that OpenCV
reads; centre-cropped to the frame size, taken in order at the media rate whatever its own rate,
and it must hold at least ``frames`` frames: no looping, whose jump would be a scene cut), an
image folder or a glob (a slideshow, like ``photos``). A video file reaches the JSCC sender as a
lossless copy of exactly the frames the baselines and the scorer use.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from jscc_stream.errors import UserError
from jscc_stream.metrics import psnr
from jscc_stream.procs import free_port
from jscc_stream.sources import IMAGE_SUFFIXES, open_source

from jscc_stream.proto.packet import IP_UDP_BYTES, JSCC_HEADER_BYTES, RTP_HEADER_BYTES

from .channel import CONDITIONS, Condition, Shim, write_trace
from .jscc_arm import run_jscc
from .stream import ARMS, ArmConfig, ArmRun, run_arm
from .webrtc_arm import WEBRTC_ARMS, WebRtcConfig, run_webrtc

__all__ = ["HarnessConfig", "ALL_ARMS", "DEFAULT_ARMS", "SOURCES", "run_harness", "score_run", "prepare_source", "name_sources",
           "load_frames"]

log = logging.getLogger(__name__)

DEFAULT_ARMS = ("jscc",) + ARMS
# aiortc peers as the yardstick (webrtc_arm.py): on request only (--arms), as they add seconds of
# connection setup per run
ALL_ARMS = DEFAULT_ARMS + WEBRTC_ARMS
HEADER_ALLOWANCE_PACKETS = 16
SOURCES = ("synthetic", "photos")  # built in; cfg.sources may also name video files, image folders, globs
_PHOTO_ORDER = ("coffee", "rocket", "chelsea", "astronaut")  # the synthetic source pans over astronaut


@dataclass
class HarnessConfig:
    out: Path
    frames: int = 150
    width: int = 320
    height: int = 240
    fps: float = 30.0  # media frame rate: source motion, bits per frame, RTP timestamps
    jscc_wall_fps: float | None = None  # send the JSCC arm's frames at this wall-clock rate (None: fps)
    # jscc-send --pace: the share of a frame interval its packets are spread over (the baselines
    # send a frame's packets back to back: 0 does the same)
    jscc_pace: float = 0.0
    jscc_args: Sequence[str] = ()  # more jscc-send options for the JSCC arm
    sources: Sequence[str] = SOURCES  # SOURCES names or paths (see the module docstring)
    conditions: Sequence[Condition] = CONDITIONS
    arms: Sequence[str] = DEFAULT_ARMS
    codec: str = "video"
    seed: int = 1  # loss traces
    source_seed: int = 0  # synthetic source / slideshow motion
    delay_ms: float = 50.0  # shim one-way delay, every arm (half the NACK arm's RTT)
    rtt_ms: float = 100.0
    latency_ms: float = 50.0  # playout deadline of jscc-recv and the baseline receivers
    payload_bytes_per_frame: int | None = None  # default: the JSCC codec's frame bytes at this size
    workdir: Path | None = None
    keep_workdir: bool = False
    merge: bool = False  # keep runs of an earlier results.json in out that this run does not redo
    extra: dict = field(default_factory=dict)


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _is_video(source: str) -> bool:
    """A video file: read in sequence, not a pure function of the frame index like the others."""
    return source not in SOURCES and not _is_glob(source) and Path(source).is_file() \
        and Path(source).suffix.lower() not in IMAGE_SUFFIXES


def name_sources(sources: Sequence[str]) -> dict[str, str]:
    """A short name per source for tables, plots and run folders -> the source as given.

    Built-ins keep their name; a file gives its stem, a folder its name, a glob the folder before
    its first wildcard; clashes get -2, -3. A path that does not exist is a one-line error."""
    names: dict[str, str] = {}
    for source in sources:
        if source in SOURCES:
            base = source
        elif _is_glob(source):
            base = Path(re.split(r"[*?\[]", source, maxsplit=1)[0] or ".").resolve().name or "glob"
        elif Path(source).exists():
            base = Path(source).stem if Path(source).is_file() else Path(source).resolve().name
        else:
            raise UserError(f"source {source!r}: no such file or folder (built-in sources: {', '.join(SOURCES)})")
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.")[:32] or "source"
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}-{k}"
        names[name] = source
    return names


def load_frames(spec: str, n: int, width: int, height: int, fps: float, seed: int = 0) -> list[np.ndarray]:
    """The first ``n`` frames of a source; a video that holds fewer is a one-line error."""
    src = open_source(spec, width, height, fps, seed=seed)
    try:
        frames = []
        for i in range(n):
            frame = src.read(i)
            if frame is None:
                raise UserError(f"cannot decode any frame of {spec}" if i == 0 else
                                f"{spec} has {i} frames, fewer than --frames {n}: pass --frames {i} or less")
            frames.append(frame)
        return frames
    finally:
        src.close()


def prepare_source(name: str, data_dir: Path) -> str:
    """The source spec for jscc-send / open_source: 'synthetic', a folder of photographs, or the
    user's path as it is."""
    if name == "synthetic":
        return "synthetic"
    if name == "photos":
        import cv2
        from skimage import data as skdata

        folder = data_dir / "photos"
        folder.mkdir(parents=True, exist_ok=True)
        for i, photo in enumerate(_PHOTO_ORDER):
            path = folder / f"{i}_{photo}.png"
            if not path.exists():
                cv2.imwrite(str(path), cv2.cvtColor(getattr(skdata, photo)(), cv2.COLOR_RGB2BGR))
        return str(folder)
    return name


def jscc_kbps(payload_bytes: int, fps: float) -> float:
    """The JSCC arm's ``--kbps`` (a wire rate: headers, parity, retransmissions included) for
    about ``payload_bytes`` of codec payload a frame, what the baselines' encoders get (their
    packet headers are not charged to their bitrate either).  A frame of the video codec goes out
    in ~16 datagrams (small top-level payloads, one per datagram); fixed rate (``--no-cc``), as
    the baselines."""
    return (payload_bytes + HEADER_ALLOWANCE_PACKETS * (RTP_HEADER_BYTES + JSCC_HEADER_BYTES + IP_UDP_BYTES)) * 8 * fps / 1000


def _video_file(frames: list[np.ndarray], path: Path, fps: float) -> str:
    """The exact source frames as a lossless FFV1 file (read back bit-exact by OpenCV), written once."""
    if not path.exists():
        import av

        out = av.open(str(path), "w")
        stream = out.add_stream("ffv1", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "bgr0"
        for f in frames:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(f, format="bgr24").reformat(format="bgr0")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
        out.close()
    return str(path)


def score_run(run: ArmRun, frames: list[np.ndarray]) -> dict:
    """Per-frame PSNR/SSIM of what was on screen, frozen count, latency and bitrate of one arm run."""
    from skimage.metrics import structural_similarity

    grey = np.full_like(frames[0], 128)
    psnr_db, ssim = [], []
    for ref, shown in zip(frames, run.shown):
        img = grey if shown is None else shown
        psnr_db.append(round(psnr(ref, img, identical_db=100.0), 3))
        ssim.append(round(float(structural_similarity(ref, img, channel_axis=2, data_range=255)), 4))
    lat = [v for v in run.latency_ms if v is not None]
    return {
        "arm": run.arm,
        "psnr": psnr_db,
        "ssim": ssim,
        "decoded": [bool(d) for d in run.decoded],
        "latency_ms": [None if v is None else round(v, 2) for v in run.latency_ms],
        "psnr_mean": float(np.mean(psnr_db)),
        "psnr_median": float(np.median(psnr_db)),
        "psnr_var": float(np.var(psnr_db)),
        "ssim_mean": float(np.mean(ssim)),
        "frozen": int(sum(not d for d in run.decoded)),
        "latency_p50_ms": float(np.percentile(lat, 50)) if lat else None,
        "latency_p95_ms": float(np.percentile(lat, 95)) if lat else None,
        "packets_sent": run.packets_sent,
        "wire_kbps": run.wire_bytes * 8 / run.duration_s / 1000 if run.duration_s else None,
        "retransmissions": run.retransmissions,
        "fec_recovered_frames": run.fec_recovered_frames,
        "extra": {k: v for k, v in run.extra.items() if k != "sender"},
    }


def _payload_bytes(cfg: HarnessConfig) -> int:
    """Payload bytes per frame every arm gets: the fixed-rate codec's frame size, or 0.5 bit per
    pixel for an entropy-coded one (which then runs at exactly that budget)."""
    if cfg.payload_bytes_per_frame:
        return cfg.payload_bytes_per_frame
    default = 2 * 8 * (-(-cfg.width // 16)) * (-(-cfg.height // 16))  # 0.5 bpp at 16x16 patches
    if "jscc" not in cfg.arms:
        return default
    from jscc_stream.models.stream_codec import load_stream_codec

    codec = load_stream_codec(cfg.codec, device="cpu")
    return default if getattr(codec, "entropy_coded", False) else codec.layout(cfg.width, cfg.height).frame_bytes


def run_harness(cfg: HarnessConfig, progress=print) -> dict:
    """Run everything in ``cfg``; write ``results.json`` (per frame) and ``summary.json`` to cfg.out."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    work = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="jscc-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    payload = _payload_bytes(cfg)
    trace_len = max(20000, cfg.frames * 60)  # far more datagrams than any arm sends
    results: dict = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()
                                if k not in ("conditions",)},
                     "payload_bytes_per_frame": payload, "conditions": {}, "runs": []}
    results["config"]["conditions"] = [asdict(c) for c in cfg.conditions]
    names = name_sources(cfg.sources)
    results["sources"] = names
    t_start = time.monotonic()
    try:
        for source in names.values():  # a short or unreadable video fails now, not after an hour of runs
            if source not in SOURCES:
                load_frames(source, cfg.frames, cfg.width, cfg.height, cfg.fps, cfg.source_seed)
        for source_name, source in names.items():
            spec = prepare_source(source, work)
            frames = load_frames(spec, cfg.frames, cfg.width, cfg.height, cfg.fps, cfg.source_seed)
            (work / f"{source_name}.mkv").unlink(missing_ok=True)  # a kept --workdir's copy may hold other frames
            for cond in cfg.conditions:
                trace = work / f"trace-{cond.name}.txt"
                stats = write_trace(cond, trace, trace_len, cfg.seed)
                results["conditions"][cond.name] = {**asdict(cond), **stats}
                for arm in cfg.arms:
                    t0 = time.monotonic()
                    rundir = work / source_name / cond.name / arm
                    rundir.mkdir(parents=True, exist_ok=True)
                    if arm == "jscc":
                        run = _run_jscc_arm(cfg, spec, frames, trace, rundir, work / f"{source_name}.mkv",
                                            f"{source_name} {cond.name}", payload, copy=_is_video(source))
                    elif arm in WEBRTC_ARMS:
                        # the return path makes up the round trip (--rtt-ms), as the NACK arm's
                        back = max(0.0, cfg.rtt_ms - cfg.delay_ms)
                        run = run_webrtc(WebRtcConfig(arm, cfg.width, cfg.height, cfg.fps), frames,
                                         lambda listen, fwd: Shim(listen, fwd, trace, cfg.delay_ms, rundir,
                                                                  seed=cfg.seed, reverse_delay_ms=back))
                    else:
                        acfg = ArmConfig(arm, cfg.width, cfg.height, cfg.fps, payload_bytes_per_frame=payload,
                                         latency_ms=cfg.latency_ms, rtt_ms=cfg.rtt_ms,
                                         loss_rate=stats["nominal_loss"])
                        rport, sport = free_port(), free_port()
                        with Shim(sport, rport, trace, cfg.delay_ms, rundir, seed=cfg.seed):
                            run = run_arm(acfg, frames, ("127.0.0.1", sport), rport)
                    scored = score_run(run, frames)
                    scored.update(source=source_name, condition=cond.name, wall_s=round(time.monotonic() - t0, 1))
                    if arm == "jscc":
                        scored["codec"] = cfg.codec
                    results["runs"].append(scored)
                    progress(f"{source_name:9s} {cond.name:6s} {arm:9s} PSNR {scored['psnr_mean']:6.2f} dB  "
                             f"SSIM {scored['ssim_mean']:.3f}  frozen {scored['frozen']:3d}/{cfg.frames}  "
                             f"latency p50 {scored['latency_p50_ms'] or float('nan'):6.1f} ms  "
                             f"{scored['wire_kbps']:.0f} kbit/s  ({scored['wall_s']:.0f} s)")
    finally:
        if not cfg.keep_workdir and not cfg.workdir:
            shutil.rmtree(work, ignore_errors=True)
    results["wall_s"] = round(time.monotonic() - t_start, 1)
    _write_results(cfg, results)
    return results


def _run_jscc_arm(cfg: HarnessConfig, spec: str, frames: list[np.ndarray], trace: Path, rundir: Path,
                  video: Path, label: str, payload: int, copy: bool = False) -> ArmRun:
    """The real daemons at ``cfg.jscc_wall_fps`` (the exact frames through a lossless video file
    when that differs from the media rate, or under ``copy``: the source is a video file, which
    jscc-send would otherwise decode and crop on its own)."""
    wall = cfg.jscc_wall_fps or cfg.fps
    jspec = spec if wall == cfg.fps and not copy else _video_file(frames, video, cfg.fps)
    # A video file is read in sequence, so a frame the sender skips (busy encoder) puts
    # frame ids and file frames out of step: keep the rate fixed and retry such a run.
    for attempt in range(3):
        run = run_jscc(jspec, cfg.frames, cfg.width, cfg.height, wall, cfg.codec, trace,
                       cfg.delay_ms, rundir, seed=cfg.source_seed, latency_ms=cfg.latency_ms,
                       pace=cfg.jscc_pace * wall / cfg.fps, kbps=jscc_kbps(payload, wall),
                       extra_sender=["--no-cc", *cfg.jscc_args] + (["--no-adapt"] if jspec != spec else []))
        sender = run.extra.get("sender", {})
        skipped = sender.get("frames_dropped", 0) + sender.get("frames_rate_limited", 0)
        if jspec == spec or not skipped:
            break
        log.warning("%s jscc: the sender skipped %d frames (busy CPU), frames out of step "
                    "with the video file; %s", label, skipped,
                    "retrying" if attempt < 2 else "giving up: lower --jscc-wall-fps")
    run.duration_s = cfg.frames / cfg.fps
    run.extra["sender_skipped"] = skipped
    return run


def _write_results(cfg: HarnessConfig, results: dict) -> None:
    """``results.json`` (merged with the earlier one's other runs under ``cfg.merge``) and ``summary.json``."""
    old_path = cfg.out / "results.json"
    if cfg.merge and old_path.exists():
        old = json.loads(old_path.read_text())
        redone = {(r["source"], r["condition"], r["arm"]) for r in results["runs"]}
        kept = [r for r in old["runs"] if (r["source"], r["condition"], r["arm"]) not in redone]
        results["runs"] = kept + results["runs"]
        results["conditions"] = {**old.get("conditions", {}), **results["conditions"]}
        results["wall_s"] += old.get("wall_s", 0)
        results["merged_from_earlier_run"] = len(kept)
    (cfg.out / "results.json").write_text(json.dumps(results) + "\n")
    summary = {**{k: v for k, v in results.items() if k != "runs"},
               "runs": [{**{k: v for k, v in r.items() if k not in ("psnr", "ssim", "decoded", "latency_ms")},
                         "extra": {k: v for k, v in r.get("extra", {}).items() if not isinstance(v, list)}}
                        for r in results["runs"]]}
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
