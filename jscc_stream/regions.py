"""Where a frame matters more (paper 003's important segments): pixel masks per frame for
``jscc-send --roi``, from a face detector or from mask files.

A source's ``region(index, frame)`` is a ``height x width`` boolean array (True = important) or
None (nothing important in this frame: coded as without a region).  The codec turns it into a
compact map on its latent grid (``models/roi.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from .errors import UserError

__all__ = ["RegionSource", "FaceRegions", "MaskRegions", "open_regions", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp"}
_HAAR = "haarcascade_frontalface_default.xml"


class RegionSource(Protocol):
    def region(self, index: int, frame: np.ndarray) -> np.ndarray | None: ...


class FaceRegions:
    """Frontal faces, widened by ``margin`` of their size on each side (hair, chin: a
    detector's box is tight).  OpenCV's bundled Haar cascade where the installed OpenCV ships
    it (4.x: ``cv2.data.haarcascades``); OpenCV 5 dropped it, and then scikit-image's bundled
    LBP frontal-face cascade (trained by OpenCV too).  Detection runs on a copy scaled to
    ``detect_width`` pixels (faces of at least 1/8 of the frame's width: a video call's; the
    scikit-image search at 160 pixels is ~5x cheaper than at 320) and every ``interval``
    frames (the boxes held between: faces move little in a few frames, and one detection costs
    several encodes' time).  A detection that finds nothing keeps the last boxes for ``hold``
    more detections: a cascade misses a face in one frame of several (measured on a moving
    crop of the astronaut photograph: found in 2 to 7 of 14 frames), a face rarely leaves."""

    def __init__(self, interval: int = 5, detect_width: int = 160, margin: float = 0.15, hold: int = 3) -> None:
        if interval < 1:
            raise UserError("face detection interval must be >= 1")
        self.interval, self.detect_width, self.margin, self.hold = interval, detect_width, margin, hold
        self._boxes: list[tuple[int, int, int, int]] = []
        self._misses = 0
        self._haar = None
        path = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or ".") / _HAAR
        if hasattr(cv2, "CascadeClassifier") and path.is_file():
            self._haar = cv2.CascadeClassifier(str(path))
            self.detector = "opencv-haar"
        else:
            from skimage import data
            from skimage.feature import Cascade

            self._lbp = Cascade(data.lbp_frontal_face_cascade_filename())
            self.detector = "skimage-lbp"

    def boxes(self, frame: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Face boxes ``(x, y, w, h)`` in ``frame``'s pixels, margins included."""
        h, w = frame.shape[:2]
        s = min(1.0, self.detect_width / w)
        gray = cv2.cvtColor(cv2.resize(frame, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA),
                            cv2.COLOR_BGR2GRAY)
        if self._haar is not None:
            found = [tuple(b) for b in self._haar.detectMultiScale(cv2.equalizeHist(gray), 1.1, 5, minSize=(20, 20))]
        else:
            found = [(d["c"], d["r"], d["width"], d["height"])
                     for d in self._lbp.detect_multi_scale(gray, scale_factor=1.2, step_ratio=1, min_size=(20, 20),
                                                           max_size=gray.shape[::-1], min_neighbor_number=4)]
        out = []
        for x, y, bw, bh in found:
            m = self.margin
            out.append((int((x - m * bw) / s), int((y - m * bh) / s), int(bw * (1 + 2 * m) / s),
                        int(bh * (1 + 2 * m) / s)))
        return out

    def region(self, index: int, frame: np.ndarray) -> np.ndarray | None:
        if index % self.interval == 0:
            found = self.boxes(frame)
            self._misses = 0 if found else self._misses + 1
            if found or self._misses > self.hold:
                self._boxes = found
        if not self._boxes:
            return None
        m = np.zeros(frame.shape[:2], dtype=bool)
        for x, y, bw, bh in self._boxes:
            m[max(0, y):max(0, y + bh), max(0, x):max(0, x + bw)] = True
        return m


class MaskRegions:
    """Masks from a folder of images (sorted by name) or a video, one per frame, in a loop;
    nonzero pixels (above mid-grey) are important.  Each must be the frame's size: a mask
    stretched to fit would mark the wrong pixels without a word."""

    def __init__(self, path: str | Path, width: int, height: int) -> None:
        p = Path(path)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            masks = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]
            names = [f.name for f in files]
        elif p.is_file():
            masks, names = _video_frames(p), []
        else:
            raise UserError(f"--roi: {path} is neither 'face' nor a mask folder or video")
        if not masks:
            raise UserError(f"--roi: no mask images in {path}")
        for i, m in enumerate(masks):
            if m is None:
                raise UserError(f"--roi: cannot read mask {names[i] if names else i} in {path}")
            if m.shape != (height, width):
                raise UserError(f"--roi: mask {names[i] if names else f'frame {i}'} is {m.shape[1]}x{m.shape[0]}, "
                                f"the stream is {width}x{height}")
        self.masks = [m > 127 for m in masks]

    def region(self, index: int, frame: np.ndarray) -> np.ndarray | None:
        m = self.masks[index % len(self.masks)]
        return m if m.any() else None


def _video_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            out.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    finally:
        cap.release()
    return out


def open_regions(spec: str, width: int, height: int) -> RegionSource:
    """``face`` or a mask folder / video (see the classes)."""
    return FaceRegions() if spec == "face" else MaskRegions(spec, width, height)
