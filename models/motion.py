"""Motion for predicted frames: one vector per 16x16 patch, a global affine model, and the warp.

The encoder measures dense optical flow from the frame to its reference (OpenCV's DIS, the
"ultrafast" preset: ~1 ms at 320x240), averages it per patch (the codec's latent grid) and
rounds it to quarter pixels.  Camera motion (pan, zoom, a little rotation) is mostly affine, so
the frame's vectors are sent as an affine model (six numbers, in every motion payload) plus
per-patch deviations, which are zero wherever the model fits: a pan or a zoom costs a skip flag
per patch.  Both ends turn the same integer vectors into the same prediction: the vectors are
interpolated bilinearly into a smooth per-pixel field (no block edges, zooms follow) and the
reference is sampled bilinearly there.  Nothing here is learned and everything is deterministic
on one machine (OpenCV's float32 resize and remap).
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

__all__ = ["QPEL", "AFFINE_SCALE", "estimate_vectors", "fit_affine", "affine_vectors", "predict",
           "conceal_vectors", "choose_vectors"]

QPEL = 4  # vectors are in quarter pixels
AFFINE_SCALE = 1024  # affine slopes are in 1/1024 quarter-pixel per patch
# a patch keeps its own vector only where that lowers its squared prediction error by more than
# this much per pixel (about what the deviation's bits cost at the rates streams run at)
DEVIATION_GAIN = 4.0
_PATCH = 16


def _gray(frame_bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)


@lru_cache(maxsize=1)
def _dis() -> cv2.DISOpticalFlow:
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)


def estimate_vectors(frame_bgr: np.ndarray, ref_bgr: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``(2, h, w)`` int32 quarter-pixel vectors (x, y): where each patch of ``frame_bgr`` comes
    from in ``ref_bgr`` (``frame(p) ~ ref(p + v)``)."""
    flow = _dis().calc(_gray(frame_bgr), _gray(ref_bgr), None)  # (H, W, 2): frame -> ref
    h, w = grid
    hh, ww = flow.shape[:2]
    pad = np.pad(flow, ((0, h * _PATCH - hh), (0, w * _PATCH - ww), (0, 0)), mode="edge")
    mean = pad.reshape(h, _PATCH, w, _PATCH, 2).mean(axis=(1, 3))
    return np.round(mean * QPEL).astype(np.int32).transpose(2, 0, 1)


def _block_coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w]
    return xs - (w - 1) / 2.0, ys - (h - 1) / 2.0


def fit_affine(vectors: np.ndarray) -> np.ndarray:
    """Six int32 affine parameters ``(tx, ty, mxx, mxy, myx, myy)`` fitted to ``(2, h, w)``
    vectors by least squares, twice (the second time without the worst quarter: objects moving
    against the camera).  ``v(x, y) = t + M (x, y) / AFFINE_SCALE`` with (x, y) in patches
    from the grid's centre."""
    _, h, w = vectors.shape
    bx, by = _block_coords(h, w)
    a = np.stack([np.ones(h * w), bx.ravel(), by.ravel()], 1)
    v = vectors.reshape(2, -1).T.astype(np.float64)
    keep = np.ones(h * w, dtype=bool)
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(a[keep], v[keep], rcond=None)
        err = np.abs(a @ coef - v).sum(1)
        if keep.sum() > 8:
            keep = err <= np.quantile(err, 0.75)
    t = np.round(coef[0])
    m = np.round(coef[1:].T * AFFINE_SCALE)  # rows: x then y; columns: d/dx, d/dy
    out = np.array([t[0], t[1], m[0, 0], m[0, 1], m[1, 0], m[1, 1]])
    return np.clip(out, -32767, 32767).astype(np.int32)


def affine_vectors(params: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The affine model's ``(2, h, w)`` int32 vectors (exact integer arithmetic: both ends agree)."""
    h, w = grid
    ys, xs = np.mgrid[0:h, 0:w]
    # centred coordinates times 2 stay integers: (2x - (w-1)) / 2
    cx, cy = 2 * xs - (w - 1), 2 * ys - (h - 1)
    tx, ty, mxx, mxy, myx, myy = (int(p) for p in params)
    den = 2 * AFFINE_SCALE
    vx = tx + np.floor_divide(mxx * cx + mxy * cy + den // 2, den)
    vy = ty + np.floor_divide(myx * cx + myy * cy + den // 2, den)
    return np.stack([vx, vy]).astype(np.int32)


def conceal_vectors(vectors: np.ndarray, known: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Vectors at unknown patches (``known`` False) set to the mean of their known 8-neighbours
    (rounded), or to ``fallback`` (the affine model's) where none is known."""
    out = vectors.copy()
    if known.all():
        return out
    k = known.astype(np.float32)
    kernel = np.ones((3, 3), np.float32)
    den = cv2.filter2D(k, -1, kernel, borderType=cv2.BORDER_CONSTANT)
    for c in range(2):
        num = cv2.filter2D(vectors[c].astype(np.float32) * k, -1, kernel, borderType=cv2.BORDER_CONSTANT)
        fill = np.where(den > 0, np.round(num / np.maximum(den, 1)), fallback[c])
        out[c] = np.where(known, vectors[c], fill).astype(np.int32)
    return out


def predict(ref_bgr: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """The reference warped by the patch vectors: float32 BGR HxWx3 (values 0..255), the
    vectors interpolated bilinearly between patch centres."""
    hh, ww = ref_bgr.shape[:2]
    _, h, w = vectors.shape
    field = vectors.astype(np.float32) / QPEL
    # patch centres sit at 16 i + 7.5: resize from the (h, w) grid to (16h, 16w) maps them there
    fx = cv2.resize(field[0], (w * _PATCH, h * _PATCH), interpolation=cv2.INTER_LINEAR)[:hh, :ww]
    fy = cv2.resize(field[1], (w * _PATCH, h * _PATCH), interpolation=cv2.INTER_LINEAR)[:hh, :ww]
    gx, gy = _pixel_grid(hh, ww)
    src = ref_bgr.astype(np.float32)
    return cv2.remap(src, gx + fx, gy + fy, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    gx.flags.writeable = gy.flags.writeable = False
    return gx, gy


def _patch_sse(pred: np.ndarray, frame_f32: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Squared prediction error per patch (summed over its pixels and colours)."""
    h, w = grid
    d = cv2.subtract(pred, frame_f32)
    d = cv2.multiply(d, d)
    hh, ww = d.shape[:2]
    if (hh, ww) != (h * _PATCH, w * _PATCH):
        d = cv2.copyMakeBorder(d, 0, h * _PATCH - hh, 0, w * _PATCH - ww, cv2.BORDER_CONSTANT, value=0)
    # an area resize by 16 is the mean of each patch (OpenCV's fast path for integer factors)
    return cv2.resize(d, (w, h), interpolation=cv2.INTER_AREA).sum(axis=2) * (_PATCH * _PATCH)


def choose_vectors(frame_bgr: np.ndarray, ref_bgr: np.ndarray,
                   grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(affine parameters, ``(2, h, w)`` vectors, the prediction :func:`predict` makes of
    them) for coding ``frame_bgr`` from ``ref_bgr``:
    the affine model's vector at every patch except where the patch's own measured vector
    predicts it clearly better (:data:`DEVIATION_GAIN`), so that camera motion costs nothing
    per patch and only objects moving on their own pay for their vectors."""
    measured = estimate_vectors(frame_bgr, ref_bgr, grid)
    params = fit_affine(measured)
    model = affine_vectors(params, grid)
    pred_model = predict(ref_bgr, model)
    if np.array_equal(measured, model):
        return params, model, pred_model
    frame_f32 = frame_bgr.astype(np.float32)
    pred_own = predict(ref_bgr, measured)
    own = _patch_sse(pred_model, frame_f32, grid) - _patch_sse(pred_own, frame_f32, grid) \
        > DEVIATION_GAIN * _PATCH * _PATCH * 3
    if not own.any():
        return params, model, pred_model
    if own.all():
        return params, measured, pred_own
    vectors = np.where(own[None], measured, model).astype(np.int32)
    return params, vectors, predict(ref_bgr, vectors)
