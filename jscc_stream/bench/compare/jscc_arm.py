"""The JSCC arm: the real ``jscc-send -> jscc-netem -> jscc-recv`` processes on loopback.

The receiver saves every decoded frame (``--save-frames``) and one stats record per frame
(``--stats-json``: decoded, capture-to-display latency); the harness reads them back and scores
them against the same source frames the baselines used (the sources are pure functions of the
frame index). A frame id that was never displayed (all packets lost, or dropped by a busy
encoder) keeps the previous picture on screen and counts as frozen.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2

from jscc_stream.procs import daemon_cmd, free_port, stop_process, wait_for_line

from .channel import Shim
from .stream import ArmRun

__all__ = ["run_jscc"]


def _read_run(stats: Path, frames_dir: Path, n_frames: int) -> ArmRun:
    """The receiver's per-frame records and saved pictures as an ArmRun."""
    records = {}
    if stats.exists():
        for line in stats.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                records[r["frame_id"]] = r
    run = ArmRun(arm="jscc", shown=[None] * n_frames, decoded=[False] * n_frames, latency_ms=[None] * n_frames)
    # each displayed frame's capture instant (unix seconds): display time minus its latency
    run.extra["capture_unix"] = [
        round(r["display_unix"] - r["capture_to_display_ms"] / 1000, 4)
        if (r := records.get(i)) and r.get("display_unix") and r.get("capture_to_display_ms") is not None else None
        for i in range(n_frames)]
    last = None
    for i in range(n_frames):
        r = records.get(i)
        img = None
        if r is not None and r.get("decoded"):
            img = cv2.imread(str(frames_dir / f"{i:08d}.png"), cv2.IMREAD_COLOR)
        if img is not None:
            last = img
            run.decoded[i] = True
            run.latency_ms[i] = r.get("capture_to_display_ms")
        run.shown[i] = last
    return run


def run_jscc(source: str, n_frames: int, width: int, height: int, fps: float, codec: str, trace: Path | None,
             delay_ms: float, workdir: Path, seed: int = 0, latency_ms: float = 50.0, pace: float = 0.5,
             extra_sender: list[str] | None = None, kbps: float | None = None,
             shim: Callable[[int, int], Any] | None = None) -> ArmRun:
    """One JSCC run; ``kbps`` sets an entropy-coded codec's bitrate (ignored by a fixed-rate one).
    ``shim(listen_port, forward_port)`` makes the shim (a context manager) instead of the default
    one replaying ``trace`` with ``delay_ms`` both ways."""
    workdir.mkdir(parents=True, exist_ok=True)
    rport, sport = free_port(), free_port()
    frames_dir = workdir / "frames"
    stats = workdir / "frames.jsonl"
    recv_cmd = daemon_cmd("receiver", "--listen", f"127.0.0.1:{rport}", "--codec", codec, "--device", "cpu",
                          "--latency-ms", str(latency_ms), "--save-frames", str(frames_dir),
                          *(["--gap-ms", "10"] if pace == 0 else []),
                          "--stats-json", str(stats), "--summary-json", str(workdir / "receiver.json"))
    send_cmd = daemon_cmd("sender", "--dest", f"127.0.0.1:{sport}", "--source", source, "--size", f"{width}x{height}",
                          "--fps", str(fps), "--frames", str(n_frames), "--codec", codec, "--device", "cpu",
                          "--seed", str(seed), "--pace", str(pace), "--stats-json", str(workdir / "sender.json"),
                          *(extra_sender or []))
    from jscc_stream.models.stream_codec import load_stream_codec

    if kbps and "--kbps" not in (extra_sender or []) and getattr(load_stream_codec(codec, device="cpu"),
                                                                  "entropy_coded", False):
        send_cmd += ["--kbps", f"{kbps:.1f}"]  # (unless the caller's own options set it)
    logs = {n: open(workdir / f"{n}.log", "w") for n in ("receiver", "sender")}
    recv = send = None
    try:
        recv = subprocess.Popen(recv_cmd, stdout=logs["receiver"], stderr=subprocess.STDOUT)
        # the return path as long as the forward one: a round trip of 2 x delay_ms, as the NACK
        # arm's (--rtt-ms, 100 ms by default), for the video codec's receipts
        the_shim = shim(sport, rport) if shim else Shim(sport, rport, trace, delay_ms, workdir,
                                                        reverse_delay_ms=delay_ms)
        with the_shim:
            wait_for_line(workdir / "receiver.log", "listening on", recv, 120)
            send = subprocess.Popen(send_cmd, stdout=logs["sender"], stderr=subprocess.STDOUT)
            try:
                send.wait(n_frames / fps + 120)
            except subprocess.TimeoutExpired:
                stop_process(send)
            # let the last frames play out (deadline + shim delay), then stop the receiver
            import time

            time.sleep(0.5 + (latency_ms + delay_ms) / 1000)
            stop_process(recv)
    finally:
        stop_process(send)
        stop_process(recv)
        for f in logs.values():
            f.close()
    if send is not None and send.returncode not in (0, None):
        tail = (workdir / "sender.log").read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"jscc-send failed ({send.returncode}): {tail}")
    run = _read_run(stats, frames_dir, n_frames)
    try:
        sender = json.loads((workdir / "sender.json").read_text())
    except (OSError, json.JSONDecodeError):
        sender = {}
    run.extra["sender"] = sender
    run.packets_sent = int(sender.get("packets", sender.get("packets_sent", 0)) or 0)
    run.wire_bytes = int(sender.get("bytes", sender.get("bytes_sent", 0)) or 0)
    run.duration_s = n_frames / fps
    return run
