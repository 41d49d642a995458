"""Codec speed benchmark (``jscc-bench codec``): encoder and decoder milliseconds per frame.

Reported as medians over repeated single-frame calls after a warm-up, on CPU with a fixed
number of threads and on CUDA when present; with parameter count and bytes per frame.  A
baseline measured in the same run (OpenCV JPEG encode/decode of the same frame) gives ratios
that stay meaningful when the machine is busy.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from jscc_stream.metrics import psnr
from jscc_stream.models.stream_codec import load_stream_codec
from jscc_stream.sources import fit_frame

__all__ = ["time_call", "bench_codec"]


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 3, sync: Callable[[], None] | None = None
              ) -> list[float]:
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def _frame(width: int, height: int) -> np.ndarray:
    import skimage.data

    return cv2.cvtColor(fit_frame(skimage.data.astronaut(), width, height), cv2.COLOR_RGB2BGR)


def bench_codec(codec_name: str = "uniform", sizes: tuple[tuple[int, int], ...] = ((320, 240), (640, 480)),
                threads: int = 2, repeats: int = 30, out: Path | None = None,
                precisions: tuple[str, ...] = ("fp32", "auto")) -> dict:
    torch.set_num_threads(threads)
    devices = [(d, p) for d in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) for p in precisions]
    results: dict = {"codec": codec_name, "threads": threads, "repeats": repeats,
                     "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                     "torch": torch.__version__, "rows": []}
    reference: dict[tuple[str, str], np.ndarray] = {}
    for dev, prec in devices:
        fc = load_stream_codec(codec_name, device=dev, precision=prec)
        entropy_coded = getattr(fc, "entropy_coded", False)
        prec_name = str(fc.amp_dtype).replace("torch.", "") if fc.amp_dtype else "float32"
        sync = torch.cuda.synchronize if dev == "cuda" else None
        results["parameters"] = sum(p.numel() for p in fc.model.parameters())
        enc_modules = ([fc.model.analysis] + ([fc.model.analysis_cnn] if fc.model.analysis_cnn else [])
                       if entropy_coded else [fc.model.encoder])
        results["encoder_parameters"] = sum(p.numel() for m in enc_modules for p in m.parameters())
        results["decoder_parameters"] = results["parameters"] - results["encoder_parameters"]
        for w, h in sizes:
            frame = _frame(w, h)
            if entropy_coded:  # 0.5 bit per pixel, entropy coding and rate control included
                budget = w * h // 16
                wire = fc.encode(frame, budget)
                lost = [p if i % 5 else None for i, p in enumerate(wire)]  # some losses, as live
                enc = time_call(lambda: fc.encode(frame, budget), repeats, sync=sync)
                dec = time_call(lambda: fc.decode(lost, w, h), repeats, sync=sync)
                full, frame_bytes = fc.decode(wire, w, h), sum(map(len, wire))
            else:
                wire = fc.encode(frame)
                received = np.ones_like(wire, dtype=bool)
                received[3:] = False  # decode cost does not depend on what was lost; show it anyway
                enc = time_call(lambda: fc.encode(frame), repeats, sync=sync)
                dec = time_call(lambda: fc.decode(wire, received, w, h), repeats, sync=sync)
                full, frame_bytes = fc.decode(wire, None, w, h), fc.layout(w, h).frame_bytes
            _, jpeg_bytes = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 75])
            jenc = time_call(lambda: cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 75]), repeats)
            jdec = time_call(lambda: cv2.imdecode(jpeg_bytes, cv2.IMREAD_COLOR), repeats)
            reference.setdefault((dev, f"{w}x{h}"), full)
            row = {"device": dev, "precision": prec_name, "size": f"{w}x{h}",
                   "psnr_vs_source": psnr(full, frame),
                   "psnr_vs_float32": psnr(full, reference[(dev, f"{w}x{h}")]), "bytes_per_frame": frame_bytes,
                   "encode_ms_median": statistics.median(enc), "decode_ms_median": statistics.median(dec),
                   "encode_ms_p90": float(np.percentile(enc, 90)), "decode_ms_p90": float(np.percentile(dec, 90)),
                   "jpeg_encode_ms_median": statistics.median(jenc), "jpeg_decode_ms_median": statistics.median(jdec)}
            row["encode_vs_jpeg"] = row["encode_ms_median"] / row["jpeg_encode_ms_median"]
            row["decode_vs_jpeg"] = row["decode_ms_median"] / row["jpeg_decode_ms_median"]
            results["rows"].append(row)
    lines = [f"codec {codec_name}: {results['parameters']:,} parameters "
             f"(encoder {results['encoder_parameters']:,}, decoder {results['decoder_parameters']:,}); "
             f"CPU threads {threads}; medians of {repeats}",
             "| device | precision | size | bytes/frame | encode ms | decode ms | JPEG enc ms | JPEG dec ms | "
             "enc/JPEG | dec/JPEG | PSNR (astronaut) |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results["rows"]:
        lines.append(f"| {r['device']} | {r['precision']} | {r['size']} | {r['bytes_per_frame']} | "
                     f"{r['encode_ms_median']:.1f} | "
                     f"{r['decode_ms_median']:.1f} | {r['jpeg_encode_ms_median']:.2f} | "
                     f"{r['jpeg_decode_ms_median']:.2f} | {r['encode_vs_jpeg']:.1f}x | {r['decode_vs_jpeg']:.1f}x | "
                     f"{r['psnr_vs_source']:.2f} |")
    results["markdown"] = "\n".join(lines)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "codec_bench.json").write_text(json.dumps(results, indent=1))
        (out / "codec_bench.md").write_text(results["markdown"] + "\n")
    return results
