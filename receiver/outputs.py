"""Where decoded frames go: an OpenCV window with an overlay (on its own GUI thread, see
:mod:`.display`), an mp4 file, PNG frames, and the per-frame JSON-lines stats."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from jscc_stream.errors import UserError

__all__ = ["FrameRecord", "Outputs"]


@dataclass
class FrameRecord:
    """One line of ``--stats-json``."""

    frame_id: int
    ssrc: int
    reason: str  # complete | superseded | deadline | evicted
    decoded: bool
    blocks_expected: int
    blocks_received: int  # importance levels fully received (of those the sender sent something of)
    blocks_partial: int
    bytes_expected: int
    bytes_received: int
    missing: list[list[int]]  # [block, offset, length] runs that did not arrive
    dscp: list[int]  # DSCP seen per block (-1: nothing arrived)
    wait_ms: float  # first packet -> release
    decode_ms: float
    capture_to_display_ms: float | None
    display_unix: float = 0.0
    extra: dict = field(default_factory=dict)


class Outputs:
    """Display, recording, frame saving and stats. Called from the output thread only; the
    window itself lives on its GUI thread and never makes this one wait."""

    def __init__(self, display: bool = False, record: str | None = None, save_frames: str | None = None,
                 stats_json: str | None = None, window: str = "jscc-recv",
                 on_close: Callable[[], None] | None = None) -> None:
        self.display = display
        self.window = window
        self.record_path = record
        self.save_dir = Path(save_frames) if save_frames else None
        self._writer: cv2.VideoWriter | None = None
        self._writer_fps = 30.0
        self._stats = open(stats_json, "w", buffering=1) if stats_json else None
        self._shown: list[float] = []
        self._last_latency_ms: float | None = None
        self._window = None
        if self.save_dir:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        if display:
            from .display import DisplayWindow

            self._window = DisplayWindow(window, on_close)

    def set_fps(self, fps: float) -> None:
        if fps > 0:
            self._writer_fps = fps

    def _overlay(self, frame: np.ndarray, rec: FrameRecord) -> np.ndarray:
        now = time.monotonic()
        self._shown = [t for t in self._shown if now - t < 1.0] + [now]
        loss = 1 - rec.bytes_received / max(1, rec.bytes_expected)
        lines = [f"{len(self._shown)} fps  loss {100 * loss:.0f}%",
                 f"levels {rec.blocks_received}/{rec.blocks_expected}  "
                 + (f"latency {self._last_latency_ms:.0f} ms" if self._last_latency_ms is not None else "")]
        if "frame_type" in rec.extra:  # a video codec: I, or P with its reference's age in frames
            kind = rec.extra["frame_type"]
            lines.append(f"{kind} frame" + (f" from {rec.extra['ref_back']} back" if kind == "P" else ""))
        out = frame.copy()
        font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45
        for i, text in enumerate(lines):
            (tw, th), base = cv2.getTextSize(text, font, scale, 1)
            y = 16 + 18 * i
            # a darkened band behind the text (an outline drawn with a thicker stroke does not line
            # up with the thin one in every OpenCV's font renderer)
            band = out[max(0, y - th - 3):y + base + 1, 2:min(out.shape[1], tw + 10)]
            band //= 3
            cv2.putText(out, text, (6, y), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
        return out

    def show(self, frame: np.ndarray | None, rec: FrameRecord) -> None:
        """The moment of display: the window, when there is one (capture-to-display ends here)."""
        if frame is not None and self._window is not None:
            self._window.show(self._overlay(frame, rec))

    def store(self, frame: np.ndarray | None, rec: FrameRecord) -> None:
        """After display: the mp4 and the PNG frames (file writes are not part of the latency)."""
        if rec.capture_to_display_ms is not None:
            self._last_latency_ms = rec.capture_to_display_ms
        if frame is None:
            return
        if self.record_path:
            if self._writer is None:
                Path(self.record_path).parent.mkdir(parents=True, exist_ok=True)
                self._writer = cv2.VideoWriter(self.record_path, cv2.VideoWriter_fourcc(*"mp4v"),
                                               self._writer_fps, (frame.shape[1], frame.shape[0]))
                if not self._writer.isOpened():
                    raise UserError(f"cannot write video {self.record_path}")
            self._writer.write(frame)
        if self.save_dir:
            cv2.imwrite(str(self.save_dir / f"{rec.frame_id:08d}.png"), frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])

    def log(self, rec: FrameRecord) -> None:
        if self._stats:
            d = asdict(rec)
            if not d["extra"]:
                del d["extra"]
            self._stats.write(json.dumps(d, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
        if self._stats:
            self._stats.close()
        if self._window is not None:
            self._window.close()
