"""Paper 003's progressive multicast with the video codec, in process: what receivers of 2, 4 and
all importance levels show under three ways of keeping predicted frames' references.

* ``least`` (``jscc-relay --reference least``, the default): the sender follows the 2-level
  receiver's receipts and every receiver keeps the picture decoded from levels 0-1;
* ``most`` (``--reference most``): the sender follows the all-levels receiver's receipts, every
  receiver keeps its own picture (fewer levels drift) and an intra frame comes every
  ``--refresh`` frames (the relay's intra request, once per ``--intra-interval``);
* ``most-no-refresh``: the same without the intra frames (how far the drift goes);
* ``intra``: every frame intra, no references at all.

Usage: .venv/bin/python scripts/relay_references.py [--frames 30] [--size 320x240] [--out FILE.json]
Prints (and writes) mean PSNR per receiver and mean bytes per level of a frame.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from jscc_stream.metrics import psnr
from jscc_stream.models.stream_codec import load_stream_codec
from jscc_stream.proto.references import Receipt, ReferenceState, ReferenceStore
from jscc_stream.sources import open_source


def run(codec, frames: list[np.ndarray], scheme: str, budget: int, subscriptions: tuple[int, ...],
        refresh: int) -> dict:
    h, w = frames[0].shape[:2]
    follow = subscriptions[0] if scheme == "least" else subscriptions[-1]
    keep = subscriptions[0] if scheme == "least" else 0
    refs = ReferenceState(codec, w, h, "intra" if scheme == "intra" else "feedback", silence_s=60)
    stores = {n: ReferenceStore() for n in subscriptions}
    shown: dict[int, list[float]] = {n: [] for n in subscriptions}
    level_bytes = np.zeros(len(codec.levels))
    in_flight = []
    for fid, frame in enumerate(frames):
        ref_id, ref = refs.choose(fid)
        payloads = codec.encode(frame, budget, ref, 0 if ref_id is None else fid - ref_id)
        refs.sent(fid, payloads, ref_id, ref)
        for p in payloads:
            level_bytes[codec.payload_levels([p])[0]] += len(p)
        for n, store in stores.items():
            got = [p if codec.payload_levels([p])[0] < n else None for p in payloads]
            picture, receipt, _ = store.decode(codec, fid, got, w, h, keep)
            shown[n].append(psnr(picture, frame) if picture is not None else float("nan"))
            if n == follow:
                in_flight.append(receipt)
        if len(in_flight) > 1:  # one frame's round trip
            refs.on_receipt(in_flight.pop(0))
        if scheme == "most" and fid % refresh == refresh - 1:  # the relay's intra request
            refs.on_receipt(Receipt(fid, (False,) * len(payloads), False, 0))
    return {"psnr_db": {("all" if n == len(codec.levels) else str(n)): round(float(np.nanmean(v)), 2)
                        for n, v in shown.items()},
            "psnr_db_last_third": {("all" if n == len(codec.levels) else str(n)):
                                   round(float(np.nanmean(v[-len(v) // 3:])), 2) for n, v in shown.items()},
            "bytes_per_frame_by_level": [round(float(b) / len(frames), 1) for b in level_bytes],
            "mismatches": refs.stats.mismatches, "intra_frames": refs.stats.intra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--bytes", type=int, default=4792, help="codec bytes per frame (4792: 1.15 Mbit/s at 30 fps)")
    ap.add_argument("--source", default="synthetic:1")
    ap.add_argument("--refresh", type=int, default=30, help="most: an intra frame every this many frames")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    w, h = (int(v) for v in args.size.split("x"))
    codec = load_stream_codec("video", device="cpu")
    src = open_source(args.source, w, h, 30.0)
    frames = [src.read(i) for i in range(args.frames)]
    subs = (2, 4, len(codec.levels))
    out = {"config": vars(args), "subscriptions": list(subs),
           "schemes": {s: run(codec, frames, s, args.bytes, subs, args.refresh)
                       for s in ("least", "most", "most-no-refresh", "intra")}}
    print(json.dumps(out, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
