"""Training samples for the predicted-frame (residual) model: frame pairs, motion, residuals.

A pair is a frame and its reference as a stream would have them: the reference is *decoded*
(coding noise, simulated by JPEG at a random quality) and the frame moved against it.  Pairs
come from photographs under synthetic camera motion (a random small affine warp: pan, zoom,
roll, plus a brightness change) and, when a folder of video clips is given, from consecutive or
near frames of real footage.  The sample is what the residual model codes: ``0.5 + (frame -
prediction) / 255`` with the prediction from :mod:`.motion` exactly as the codec makes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from . import motion
from .data import CropSampler

__all__ = ["ResidualSampler", "synthetic_pair", "degrade", "load_clips"]

VIDEO_SUFFIXES = {".avi", ".mp4", ".mkv", ".webm", ".ogv", ".mov", ".mpg", ".mpeg", ".y4m", ".m4v"}


def degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A decoded-looking copy: JPEG at quality 35..95 (block and ringing noise of ~30-42 dB)."""
    q = int(rng.integers(35, 96))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else img


def synthetic_pair(image: np.ndarray, crop: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(frame, reference) ``crop x crop`` from one picture: the reference is the frame's view
    under a random camera move (up to ~10 px pan, 5 % zoom, 1.5 degrees roll)."""
    h, w = image.shape[:2]
    y = int(rng.integers(0, h - crop + 1))
    x = int(rng.integers(0, w - crop + 1))
    frame = image[y:y + crop, x:x + crop]
    angle = rng.normal(0, 0.6)
    scale = float(np.exp(rng.normal(0, 0.02)))
    shift = rng.normal(0, 4.0, 2)
    centre = (x + crop / 2, y + crop / 2)
    m = cv2.getRotationMatrix2D(centre, angle, scale)
    m[:, 2] += shift - np.array([x, y])
    ref = cv2.warpAffine(image, m, (crop, crop), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    gain = float(np.exp(rng.normal(0, 0.03)))
    frame = np.clip(frame.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(frame), ref


def load_clips(folder: str | Path, size: int = 320, max_frames: int = 300) -> list[np.ndarray]:
    """Frames of every video in ``folder`` (``(n, H, W, 3)`` BGR uint8 per clip), shrunk so
    the short side is ``size`` (camera frames at streaming sizes) and capped at ``max_frames``."""
    clips = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES):
        cap = cv2.VideoCapture(str(path))
        frames = []
        while len(frames) < max_frames:
            ok, f = cap.read()
            if not ok:
                break
            s = size / min(f.shape[:2])
            if s < 1:
                f = cv2.resize(f, (round(f.shape[1] * s), round(f.shape[0] * s)), interpolation=cv2.INTER_AREA)
            frames.append(f)
        cap.release()
        if len(frames) >= 8:
            clips.append(np.stack(frames))
    return clips


@dataclass
class ResidualSampler:
    """Batches of residual images ``(N, 3, crop, crop)`` in RGB (see the module's docstring)."""

    photos: CropSampler
    clips: list[np.ndarray] = field(default_factory=list)
    clip_share: float = 0.5  # share of samples from video clips when there are any
    max_back: int = 4  # a reference up to this many frames back (feedback delays it)
    with_prediction: bool = False  # append the prediction (RGB, 0..1): a conditional model's context

    @property
    def crop(self) -> int:
        return self.photos.crop

    def _clip_pair(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        clip = self.clips[rng.integers(len(self.clips))]
        n, h, w = clip.shape[:3]
        c = self.crop
        back = int(rng.integers(1, self.max_back + 1))
        t = int(rng.integers(back, n))
        y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        return clip[t, y:y + c, x:x + c], clip[t - back, y:y + c, x:x + c]

    def pair(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.clips and rng.random() < self.clip_share:
            frame, ref = self._clip_pair(rng)
        else:
            image = self.photos.images[rng.integers(len(self.photos.images))]
            frame, ref = synthetic_pair(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), self.crop, rng)
        return np.ascontiguousarray(frame), degrade(np.ascontiguousarray(ref), rng)

    def batch(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        c = self.crop
        grid = (c // 16, c // 16)
        out = np.empty((n, 6 if self.with_prediction else 3, c, c), dtype=np.float32)
        for i in range(n):
            frame, ref = self.pair(rng)
            _, _, pred = motion.choose_vectors(frame, ref, grid)
            out[i, :3] = (frame.astype(np.float32) - pred)[..., ::-1].transpose(2, 0, 1) / 255 + 0.5
            if self.with_prediction:
                out[i, 3:] = pred[..., ::-1].transpose(2, 0, 1) / 255
        return torch.from_numpy(out)
