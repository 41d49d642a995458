"""Frame sources (jscc-send, the viewer's originals, the demo and the benchmarks): synthetic (deterministic, for tests), webcam, video file, and
an image folder/glob played as a slideshow with slow camera motion.

Every source returns BGR uint8 frames of exactly the requested size from ``read(index)``;
``None`` means the source has ended.  ``synthetic`` and image sources are pure functions of the
frame index, so a test can regenerate any frame the receiver reports.
"""

from __future__ import annotations

import glob
import logging
import math
import sys
from pathlib import Path
from typing import Iterable, Protocol

import cv2
import numpy as np

from .errors import UserError

__all__ = ["Source", "KenBurns", "SyntheticSource", "SlideshowSource", "CaptureSource", "open_source", "fit_frame",
           "IMAGE_SUFFIXES", "image_files"]

log = logging.getLogger("jscc_stream.sources")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}
#: failed reads in a row after which a webcam counts as gone (1 s at 15 fps); before that the
#: last frame is sent again, so a glitch does not end a stream
WEBCAM_MISSES = 15
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # scikit-image's bundled colour photographs


def fit_frame(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop to the target aspect ratio, then resize to width x height (area filter when
    shrinking, cubic when enlarging): the picture is never stretched.  A grey image becomes three
    channels; an image already of that size (and three channels) is returned as it is."""
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    elif img.shape[2] > 3:
        img = img[..., :3]
    ih, iw = img.shape[:2]
    if (iw, ih) == (width, height):
        return img
    target = width / height
    if iw / ih > target:  # too wide: crop the sides
        cw = max(1, round(ih * target))
        img = img[:, (iw - cw) // 2 : (iw - cw) // 2 + cw]
    elif iw / ih < target:
        ch = max(1, round(iw / target))
        img = img[(ih - ch) // 2 : (ih - ch) // 2 + ch]
    interp = cv2.INTER_AREA if img.shape[1] > width else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(img, (width, height), interpolation=interp))


class Source(Protocol):
    def read(self, index: int) -> np.ndarray | None: ...

    def close(self) -> None: ...


class KenBurns:
    """A slow pan/zoom over a still image: a camera-motion model for stills, pure in ``t``."""

    def __init__(self, width: int, height: int, seed: int = 0, zoom: float = 0.15) -> None:
        rng = np.random.default_rng(seed)
        self.width, self.height = width, height
        self.zoom = zoom
        self.periods = rng.uniform(5.0, 13.0, 3)
        self.phases = rng.uniform(0, 2 * math.pi, 3)

    def view(self, image: np.ndarray, t: float) -> np.ndarray:
        ih, iw = image.shape[:2]
        w, h = self.width, self.height
        base = max(w / iw, h / ih) * (1 + 2 * self.zoom)
        scale = base * (1 + self.zoom * math.sin(2 * math.pi * t / self.periods[0] + self.phases[0]))
        vw, vh = w / scale, h / scale  # visible window in image pixels
        cx = iw / 2 + 0.45 * max(0.0, iw - vw) * math.sin(2 * math.pi * t / self.periods[1] + self.phases[1])
        cy = ih / 2 + 0.45 * max(0.0, ih - vh) * math.sin(2 * math.pi * t / self.periods[2] + self.phases[2])
        m = np.array([[scale, 0, w / 2 - scale * cx], [0, scale, h / 2 - scale * cy]], np.float64)
        return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


class SyntheticSource:
    """A bundled photograph (real texture) under a seeded pan/zoom: deterministic per index."""

    def __init__(self, width: int, height: int, fps: float, seed: int = 0) -> None:
        from skimage import data as skdata

        rgb = getattr(skdata, _PHOTOS[seed % len(_PHOTOS)])()
        self.image = np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.fps = fps
        self.motion = KenBurns(width, height, seed)

    def read(self, index: int) -> np.ndarray:
        return self.motion.view(self.image, index / self.fps)

    def close(self) -> None:
        pass


class SlideshowSource:
    """Images from a folder or glob, each shown ``slide_seconds`` with camera motion, looping."""

    def __init__(self, files: list[Path], width: int, height: int, fps: float, slide_seconds: float = 4.0,
                 seed: int = 0) -> None:
        if not files:
            raise UserError("no images to show")
        self.files = files
        self.fps = fps
        self.per_slide = max(1, round(slide_seconds * fps))
        self.motion = KenBurns(width, height, seed)
        self._cache: tuple[int, np.ndarray] | None = None

    def _image(self, k: int) -> np.ndarray | None:
        if self._cache is None or self._cache[0] != k:
            img = _imread(self.files[k])
            if img is None:  # its header looked like an image (see image_files), its data did not
                log.warning("skipping %s: cannot decode it", self.files[k])
                del self.files[k]
                self._cache = None
                if not self.files:
                    raise UserError("none of the images could be decoded")
                return None
            self._cache = (k, img)
        return self._cache[1]

    def read(self, index: int) -> np.ndarray:
        while True:
            k = (index // self.per_slide) % len(self.files)
            img = self._image(k)
            if img is not None:
                return self.motion.view(img, (index % self.per_slide) / self.fps)

    def close(self) -> None:
        pass


class CaptureSource:
    """A webcam or video file through OpenCV at the stream size (ends with the file).  A file's
    frames are centre-cropped to the stream's aspect (`fit_frame`), never stretched; a webcam is
    asked for the stream size and only resized if it delivers another."""

    def __init__(self, target: int | str, width: int, height: int) -> None:
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our one line says it
        try:
            if isinstance(target, int) and sys.platform.startswith("linux"):
                self.cap = cv2.VideoCapture(target, cv2.CAP_V4L2)  # V4L2: what Linux cameras speak
            else:
                self.cap = cv2.VideoCapture(target)
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not self.cap.isOpened():
            if isinstance(target, int):
                where = f" (no camera at /dev/video{target}?)" if sys.platform.startswith("linux") else ""
                raise UserError(f"cannot open webcam {target}{where}")
            raise UserError(f"cannot open video file {target}")
        if isinstance(target, int):
            self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self.width, self.height = width, height
        self.target = target
        self.is_file = not isinstance(target, int)
        self._next = 0  # a file's index of the frame the next cap.read() returns
        self._failures = 0  # a webcam's failed reads in a row
        self._last: np.ndarray | None = None  # a webcam's last frame

    def read(self, index: int) -> np.ndarray | None:
        """The frame of capture tick ``index``.  A file plays in real time like a camera: frame
        ``index`` of the file whatever ticks the sender skipped (a busy encoder), so frame ids
        and file frames never drift apart."""
        if self.is_file and index != self._next:
            if 0 < index - self._next <= 64:
                while self._next < index and self.cap.grab():
                    self._next += 1
            else:
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, index)
                self._next = index
        ok, frame = self.cap.read()
        self._next += 1
        if not ok or frame is None:
            return None if self.is_file else self._missed()
        if self.is_file:
            return fit_frame(frame, self.width, self.height)
        if frame.shape[1] != self.width or frame.shape[0] != self.height:
            frame = cv2.resize(frame, (self.width, self.height), interpolation=cv2.INTER_AREA)
        self._failures, self._last = 0, frame
        return frame

    def _missed(self) -> np.ndarray | None:
        """A webcam read failed: its last frame again for a glitch; once it stays gone (unplugged),
        one warning and None, which ends the stream (a frozen picture sent on would look live)."""
        self._failures += 1
        if self._last is not None and self._failures < WEBCAM_MISSES:
            return self._last
        if self._failures == WEBCAM_MISSES or self._last is None and self._failures == 1:
            log.warning("webcam %s stopped delivering frames: ending the stream", self.target)
        self._last = None
        return None

    def close(self) -> None:
        self.cap.release()


def image_files(paths: Iterable[Path]) -> list[Path]:
    """The paths, sorted, that name an image OpenCV reads (by suffix and header); the others are
    skipped with one warning (a folder of photos often holds a note, a thumbnail database)."""
    keep, skipped = [], []
    for p in sorted(paths):
        ok = p.suffix.lower() in IMAGE_SUFFIXES and cv2.haveImageReader(str(p))
        (keep if ok else skipped).append(p)
    if skipped:
        names = ", ".join(p.name for p in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        log.warning("skipping %d file(s) that are not images: %s", len(skipped), names)
    return keep


def _imread(path: Path) -> np.ndarray | None:
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # a warning of ours says it
    try:
        return cv2.imread(str(path), cv2.IMREAD_COLOR)
    finally:
        cv2.utils.logging.setLogLevel(level)


def open_source(spec: str, width: int, height: int, fps: float, seed: int = 0) -> Source:
    """``synthetic[:SEED]`` | ``webcam[:INDEX]`` | video file | image folder | glob."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        try:
            seed = int(spec.split(":", 1)[1]) if ":" in spec else seed
        except ValueError:
            raise UserError(f"bad synthetic seed in {spec!r}") from None
        return SyntheticSource(width, height, fps, seed)
    if spec == "webcam" or spec.startswith("webcam:"):
        try:
            index = int(spec.split(":", 1)[1]) if ":" in spec else 0
        except ValueError:
            raise UserError(f"bad webcam index in {spec!r}") from None
        return CaptureSource(index, width, height)
    path = Path(spec)
    if path.is_dir():
        files = image_files(p for p in path.rglob("*") if p.is_file())
        if not files:
            raise UserError(f"no images in folder {spec}")
        return SlideshowSource(files, width, height, fps, seed=seed)
    if any(c in spec for c in "*?["):
        files = image_files(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"no images match {spec}")
        return SlideshowSource(files, width, height, fps, seed=seed)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            if not image_files([path]):
                raise UserError(f"cannot read image {spec}")
            return SlideshowSource([path], width, height, fps, seed=seed)
        return CaptureSource(str(path), width, height)
    raise UserError(f"source {spec!r} is not synthetic, webcam[:N], a video file, an image folder or a glob")
