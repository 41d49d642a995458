"""``jscc-eval --experiments video``: predicted frames against intra-only coding, offline.

A stream simulated in one process, frame by frame, with the stream's own pieces: the sender's
reference state (:class:`jscc_stream.proto.references.ReferenceState`), the codec, a loss
process drawing per payload, the receiver's decode from its reference store, and receipts that
reach the sender ``delay`` frames later (the round trip in frames).  Nothing runs in real time,
so the figures measure the codec and the reference protocol, not the machine.  Per source,
loss condition and configuration: mean PSNR of the frames shown (a frame that could not be
decoded shows the previous picture), how many were predicted, and the mean reference age.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np

from jscc_stream.metrics import psnr
from jscc_stream.netem.loss import parse_loss_spec
from jscc_stream.proto.references import Receipt, ReferenceState, ReferenceStore

__all__ = ["simulate", "run", "CONFIGS", "CONDITIONS"]

# (label, reference mode, receipt delay in frames, optimism: see ReferenceState)
CONFIGS = (("intra", "intra", 0, 0.0), ("P rtt 1", "feedback", 1, 0.25), ("P rtt 4", "feedback", 4, 0.25),
           ("P rtt 4 confirmed only", "feedback", 4, 0.0), ("P oneway", "oneway", 0, 0.0))
CONDITIONS = (("none", "none"), ("u10", "uniform:0.10"), ("ge10", "ge10"))


def simulate(codec, frames: list[np.ndarray], budget: int, mode: str, delay: int, loss_spec: str,
             seed: int = 0, optimism: float = 0.25) -> dict:
    """One simulated stream (see the module docstring); returns per-frame PSNR and counts."""
    h, w = frames[0].shape[:2]
    refs = ReferenceState(codec, w, h, mode, intra_period=30, silence_s=1e9, optimism_loss=optimism)
    store = ReferenceStore()
    proc = parse_loss_spec(loss_spec)
    rng = np.random.default_rng(seed)
    in_flight: deque[tuple[int, Receipt]] = deque()
    shown, out, kinds = None, [], []
    for fid, frame in enumerate(frames):
        while in_flight and in_flight[0][0] <= fid:
            refs.on_receipt(in_flight.popleft()[1])
        ref_id, ref = refs.choose(fid)
        payloads = codec.encode(frame, budget, ref, 0 if ref_id is None else fid - ref_id)
        refs.sent(fid, payloads, ref_id, ref)
        lost = proc.sample(1, len(payloads), rng)[0]
        got = [None if x else p for p, x in zip(payloads, lost)]
        if any(p is not None for p in got):  # the receiver's step (jscc-recv's own)
            picture, receipt, info = store.decode(codec, fid, got, w, h)
            shown = picture if picture is not None else shown
            in_flight.append((fid + delay, receipt))
        else:  # nothing arrived: the receiver never hears of this frame
            info = codec.frame_info(got)
        kinds.append("P" if info.predicted else "I")
        out.append(psnr(shown, frame) if shown is not None else 0.0)
    s = refs.stats
    return {"psnr": out, "kinds": kinds, "mismatches": s.mismatches,
            "mean_ref_back": s.summary()["mean_ref_back"]}


def run(codec_names: list[str], sources: dict[str, list[np.ndarray]], out: Path, budget: int,
        seed: int = 0, progress: Callable[[str], None] | None = None) -> dict:
    """Every codec x source x condition x configuration; writes ``video.csv`` and ``summary.md``."""
    import csv

    from .stream_codec import load_stream_codec

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in codec_names:
        codec = load_stream_codec(name, device="cpu")
        if not getattr(codec, "predicted_frames", False):
            raise ValueError(f"codec {name!r} has no predicted frames")
        for src, frames in sources.items():
            for cond, spec in CONDITIONS:
                for label, mode, delay, optimism in CONFIGS:
                    r = simulate(codec, frames, budget, mode, delay, spec, seed, optimism)
                    rows.append({"codec": name, "source": src, "condition": cond, "config": label,
                                 "psnr": round(float(np.mean(r["psnr"])), 3),
                                 "predicted": r["kinds"].count("P"), "frames": len(frames),
                                 "mean_ref_back": r["mean_ref_back"], "mismatches": r["mismatches"]})
                    if progress:
                        progress(f"{name} {src} {cond} {label}: {rows[-1]['psnr']:.2f} dB")
    with open(out / "video.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    (out / "summary.md").write_text(summary(rows, budget))
    return {"rows": rows}


def summary(rows: list[dict], budget: int) -> str:
    lines = [f"# Predicted frames vs intra, {budget} bytes a frame (simulated stream, receipts `rtt` frames late)", "",
             "| codec | source | condition | " + " | ".join(c[0] for c in CONFIGS) + " |",
             "|---|---|---|" + "---:|" * len(CONFIGS)]
    keys = dict.fromkeys((r["codec"], r["source"], r["condition"]) for r in rows)
    for k in keys:
        cells = {r["config"]: r for r in rows if (r["codec"], r["source"], r["condition"]) == k}
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(
            f"{cells[c[0]]['psnr']:.2f}" if c[0] in cells else "" for c in CONFIGS) + " |")
    return "\n".join(lines) + "\n"
