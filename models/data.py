"""Images for training and evaluation: folders of photographs and the built-in evaluation set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from jscc_stream.sources import IMAGE_SUFFIXES, fit_frame, image_files

__all__ = [
    "IMAGE_SUFFIXES",
    "list_images",
    "load_rgb",
    "builtin_eval_images",
    "CropSampler",
    "to_tensor",
]

# scikit-image's bundled photographs (colour and grey natural images; no drawings or text).
BUILTIN_EVAL = ("astronaut", "camera", "chelsea", "coffee", "rocket",
                "immunohistochemistry", "hubble_deep_field", "retina")


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = image_files(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return files


def load_rgb(path: str | Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot decode image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def builtin_eval_images(width: int = 320, height: int = 240) -> dict[str, np.ndarray]:
    """scikit-image's bundled photographs, fitted to width x height, RGB uint8."""
    import skimage.data

    out = {}
    for name in BUILTIN_EVAL:
        img = getattr(skimage.data, name)()
        if img.dtype != np.uint8:
            img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        out[name] = fit_frame(img, width, height)
    return out


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """RGB uint8 HxWx3 -> float (1, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float().div_(255)


@dataclass
class CropSampler:
    """Random crops with flips from photographs held in memory at several scales.

    Frames from a camera at 320x240 or 640x480 show much more scene per pixel than a
    wallpaper at 2560x1600, so every image is kept at a few downscaled sizes whose short side
    ranges from 240 to 960 pixels, and crops are drawn from all of them."""

    images: list[np.ndarray]
    crop: int = 128

    @classmethod
    def from_files(cls, files: list[Path], crop: int = 128,
                   short_sides: tuple[int, ...] = (240, 360, 480, 720, 960)) -> "CropSampler":
        pyramid = []
        for f in files:
            img = load_rgb(f)
            h, w = img.shape[:2]
            for s in short_sides:
                scale = s / min(h, w)
                if scale > 1.0:
                    continue
                size = (max(crop, round(w * scale)), max(crop, round(h * scale)))
                pyramid.append(cv2.resize(img, size, interpolation=cv2.INTER_AREA))
        if not pyramid:
            raise ValueError("no usable training images")
        return cls(pyramid, crop)

    def batch(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        c = self.crop
        out = np.empty((n, c, c, 3), dtype=np.uint8)
        for i in range(n):
            img = self.images[rng.integers(len(self.images))]
            y = rng.integers(0, img.shape[0] - c + 1)
            x = rng.integers(0, img.shape[1] - c + 1)
            patch = img[y : y + c, x : x + c]
            if rng.random() < 0.5:
                patch = patch[:, ::-1]
            if rng.random() < 0.2:
                patch = patch[::-1]
            out[i] = patch
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255)
