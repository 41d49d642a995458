"""jscc-bench roi: paper 003's segment importance on photographs with faces.

Each photograph is coded by the entropy-coded codec at a byte budget with and without a region
map on its detected faces (the ``--roi face`` source of ``jscc-send``), at the same budget.
The payloads then cross a channel, one payload per packet as the sender sends them: none,
uniform or Gilbert-Elliott loss (``netem/loss.py``, several seeds, medians), or a priority
bottleneck that drops the least important payloads first (highest rank, last sent) until a
share of the frame's bytes is gone (what DSCP priority dropping does).  PSNR is measured inside
the face boxes and outside them.  "The same bytes" is on the wire: a map's extra payloads
(each level's region in payloads of its own) pay their packet headers out of the frame's
budget.  A ``fec+`` channel adds the sender's parity (its defaults: the payloads of the two
top ranks protected, parity sized to the channel's mean loss; a region's payloads rank one
level up, so more of them are protected), whose bytes count too; no retransmission.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from jscc_stream.errors import UserError
from jscc_stream.metrics import psnr
from jscc_stream.proto.packet import DATAGRAM_LIMIT, IP_UDP_BYTES, JSCC_HEADER_BYTES, RTP_HEADER_BYTES
from jscc_stream.proto.protection import parity_for, protected_prefix
from jscc_stream.regions import FaceRegions

__all__ = ["RoiBenchConfig", "run_roi_bench", "builtin_face_photos", "drop_by_priority", "wire_bytes"]

PACKET_OVERHEAD = RTP_HEADER_BYTES + JSCC_HEADER_BYTES + IP_UDP_BYTES
REPAIR = "fec+"  # a channel spec's prefix: the sender's parity over its protected payloads travels too


@dataclass
class RoiBenchConfig:
    out: Path
    codec: str = "uniform"
    bpp: tuple[float, ...] = (0.25, 0.5, 1.0)
    boosts: tuple[int, ...] = (16, 24, 32)
    channels: tuple[str, ...] = ("none", "uniform:0.1", "ge10", "priority:0.1", "fec+uniform:0.1", "fec+ge10")
    seeds: int = 10
    images: tuple[str, ...] = ()  # extra photographs (paths); the bundled two always


def builtin_face_photos() -> dict[str, np.ndarray]:
    """Two portraits that ship with dependencies: scikit-image's ``astronaut`` (Eileen Collins,
    512x512) and matplotlib's ``grace_hopper`` sample (512x600), BGR."""
    import matplotlib
    from skimage import data

    hopper = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))
    return {"astronaut": cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), "grace_hopper": hopper}


def drop_by_priority(ranks: list[int], sizes: list[int], share: float) -> np.ndarray:
    """Lost flags: the least important payloads (highest rank; among equals the last sent)
    dropped until at least ``share`` of the bytes are gone."""
    lost = np.zeros(len(ranks), dtype=bool)
    need, gone = share * sum(sizes), 0
    for i in sorted(range(len(ranks)), key=lambda i: (ranks[i], i), reverse=True):
        if gone >= need:
            break
        lost[i], gone = True, gone + sizes[i]
    return lost


def _losses(channel: str, ranks: list[int], sizes: list[int], seeds: int, k: int = 0,
            m: int = 0) -> list[np.ndarray]:
    """Lost flags per draw of ``channel`` over a frame's payloads (one draw when deterministic);
    ``m`` parity packets over the first ``k`` payloads travel too, and restore all ``k`` when
    no more than ``m`` of the ``k + m`` were lost."""
    if channel == "none":
        return [np.zeros(len(ranks), dtype=bool)]
    if channel.startswith("priority:"):
        return [drop_by_priority(ranks, sizes, float(channel.partition(":")[2]))]
    from jscc_stream.netem.loss import parse_loss_spec

    process, n, out = parse_loss_spec(channel.removeprefix(REPAIR)), len(ranks), []
    for s in range(seeds):
        lost = process.sample(1, n + m, np.random.default_rng(s))[0]
        if m and lost[:k].sum() + lost[n:].sum() <= m:
            lost[:k] = False
        out.append(lost[:n])
    return out


def _parity(codec, payloads: list[bytes], channel: str) -> tuple[int, list[bytes]]:
    """(k, parity) the sender adds on a ``fec+`` channel: its defaults (the two top levels
    protected, parity sized to the channel's mean loss); (0, []) elsewhere."""
    if not channel.startswith(REPAIR):
        return 0, []
    from jscc_stream.netem.loss import parse_loss_spec

    k = protected_prefix(codec.payload_levels(payloads), [len(p) for p in payloads], 2, DATAGRAM_LIMIT)
    return k, parity_for(payloads, k, parse_loss_spec(channel.removeprefix(REPAIR)).mean_loss)


def _face_mask(name: str, img: np.ndarray) -> np.ndarray:
    boxes = FaceRegions(detect_width=320).boxes(img)  # offline: the finer search
    if not boxes:
        raise UserError(f"no face found in {name}")
    mask = np.zeros(img.shape[:2], dtype=bool)
    for x, y, w, h in boxes:
        mask[max(0, y):y + h, max(0, x):x + w] = True
    return mask


def wire_bytes(payloads: list[bytes], parity: list[bytes] = (), k: int = 0) -> int:
    """What the payloads cost on the wire: each in its own packet (RTP, JSCC, IP/UDP headers),
    and the parity packets (their header lists the k protected payloads' levels)."""
    return sum(len(p) + PACKET_OVERHEAD for p in payloads) + sum(len(q) + PACKET_OVERHEAD + k for q in parity)


def _encode(codec, img: np.ndarray, budget: int, roi, wire_target: int | None,
            channel: str) -> tuple[list[bytes], int, list[bytes]]:
    """(payloads, k, parity) at ``budget`` codec bytes; with ``wire_target``, the budget lowered
    until the packets (a region map makes more of them) cost no more on the wire than that."""
    payloads = codec.encode(img, budget, roi=roi)
    k, parity = _parity(codec, payloads, channel)
    while wire_target and wire_bytes(payloads, parity, k) > wire_target:
        budget -= max(16, wire_bytes(payloads, parity, k) - wire_target)
        payloads = codec.encode(img, budget, roi=roi)
        k, parity = _parity(codec, payloads, channel)
    return payloads, k, parity


def _arm(codec, img: np.ndarray, face: np.ndarray, budget: int, roi, channels, seeds: int,
         off: dict | None = None) -> dict:
    """One coding of ``img`` (``roi`` None: without a map) across every channel; ``off``: the
    coding without a map, whose wire bytes this one may not exceed (per channel: parity)."""
    height, width = img.shape[:2]
    res: dict = {"channels": {}}
    for ch in channels:
        payloads, k, parity = _encode(codec, img, budget, roi, off and off["channels"][ch]["wire_bytes"], ch)
        ranks, sizes = codec.payload_levels(payloads), [len(p) for p in payloads]
        res.setdefault("bytes", sum(sizes))
        res.setdefault("wire_bytes", wire_bytes(payloads))
        res.setdefault("payloads", len(payloads))
        res.setdefault("map_bytes", len(payloads) * len(roi.pack(True)) if roi is not None else 0)
        inside, outside, lost_bytes = [], [], []
        for lost in _losses(ch, ranks, sizes, seeds, k, len(parity)):
            out = codec.decode([None if x else p for p, x in zip(payloads, lost)], width, height)
            inside.append(psnr(img[face], out[face]))
            outside.append(psnr(img[~face], out[~face]))
            lost_bytes.append(float(np.dot(lost, sizes)) / sum(sizes))
        res["channels"][ch] = {"psnr_in": statistics.median(inside), "psnr_out": statistics.median(outside),
                               "byte_loss": statistics.median(lost_bytes), "draws": len(inside),
                               "wire_bytes": wire_bytes(payloads, parity, k), "parity_packets": len(parity),
                               "protected": k, "psnr_in_all": inside, "psnr_out_all": outside}
    return res


def run_roi_bench(cfg: RoiBenchConfig) -> dict:
    """Every photograph x budget x (no map, each boost) x channel; writes roi.json/.md/.png."""
    from jscc_stream.models.packet_codec import PacketCodec
    from jscc_stream.models.roi import RoiMap

    photos = builtin_face_photos()
    for path in cfg.images:
        img = cv2.imread(path)
        if img is None:
            raise UserError(f"cannot read image {path}")
        photos[Path(path).stem] = img
    codec = PacketCodec.load(cfg.codec, device="cpu", precision="fp32")
    t0, rows = time.time(), []
    for name, img in photos.items():
        mask = _face_mask(name, img)
        h, w = img.shape[:2]
        for bpp in cfg.bpp:
            budget = int(bpp * w * h / 8)
            off = None
            for boost in (0, *cfg.boosts):
                roi = RoiMap.from_pixels(mask, boost) if boost else None
                arm = _arm(codec, img, mask, budget, roi, cfg.channels, cfg.seeds, off)
                off = off or arm
                rows.append({"image": name, "size": f"{w}x{h}", "face_share": float(mask.mean()), "bpp": bpp,
                             "budget": budget, "boost": boost, **arm})
                print(f"{name} {bpp:g} bpp boost {boost}: " + ", ".join(
                    f"{ch} {c['psnr_in']:.2f}/{c['psnr_out']:.2f}" for ch, c in rows[-1]["channels"].items()),
                    flush=True)
    res = {"config": {**asdict(cfg), "out": str(cfg.out)}, "codec": codec.name, "wall_s": time.time() - t0,
           "rows": rows}
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "roi.json").write_text(json.dumps(res, indent=1))
    (cfg.out / "roi.md").write_text(roi_markdown(res))
    roi_plot(res, cfg.out / "roi.png")
    return res


def _gain_rows(res: dict):
    """(image, bpp, boost, channel, bytes off, bytes on, d_in, d_out) against the same budget's
    coding without a map."""
    base = {(r["image"], r["bpp"]): r for r in res["rows"] if r["boost"] == 0}
    for r in res["rows"]:
        if r["boost"]:
            b = base[(r["image"], r["bpp"])]
            for ch, c in r["channels"].items():
                o = b["channels"][ch]
                yield (r["image"], r["bpp"], r["boost"], ch, o["wire_bytes"], c["wire_bytes"],
                       c["psnr_in"] - o["psnr_in"], c["psnr_out"] - o["psnr_out"], o, c)


def roi_markdown(res: dict) -> str:
    gains = list(_gain_rows(res))
    lines = [f"# jscc-bench roi (codec `{res['codec']}`, {res['config']['seeds']} seeds per random channel, medians)",
             "", "Over every photograph and budget: the face's PSNR gain (smallest / median) and the outside's "
             "change (median), map on - off at the same wire bytes.", "",
             "| boost | channel | face gain min / median (dB) | outside change median (dB) |", "|---|---|---|---|"]
    for boost in res["config"]["boosts"]:
        for ch in res["config"]["channels"]:
            d_in = [g[6] for g in gains if g[2] == boost and g[3] == ch]
            d_out = [g[7] for g in gains if g[2] == boost and g[3] == ch]
            lines.append(f"| {boost} | {ch} | {min(d_in):+.2f} / {statistics.median(d_in):+.2f} | "
                         f"{statistics.median(d_out):+.2f} |")
    lines += ["", "| image | bpp | boost | channel | wire bytes off / on | face PSNR off -> on (dB) "
              "| outside off -> on (dB) | face gain | outside change |", "|---|---|---|---|---|---|---|---|---|"]
    for img, bpp, boost, ch, b0, b1, d_in, d_out, o, c in gains:
        lines.append(f"| {img} | {bpp:g} | {boost} | {ch} | {b0} / {b1} | {o['psnr_in']:.2f} -> {c['psnr_in']:.2f} "
                     f"| {o['psnr_out']:.2f} -> {c['psnr_out']:.2f} | {d_in:+.2f} | {d_out:+.2f} |")
    return "\n".join(lines) + "\n"


def roi_plot(res: dict, path: Path) -> None:
    """Face gain and outside cost (dB, map on - off, same budget) against bits per pixel, one
    panel per channel, a line per photograph and boost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gains = list(_gain_rows(res))
    channels = res["config"]["channels"]
    fig, axes = plt.subplots(1, len(channels), figsize=(3.6 * len(channels), 3.9), sharey=True, squeeze=False)
    colours = {b: f"C{i}" for i, b in enumerate(res["config"]["boosts"])}
    for ax, ch in zip(axes[0], channels):
        for img, marker in zip(sorted({g[0] for g in gains}), "os^v"):
            for boost, colour in colours.items():
                pts = sorted((g[1], g[6], g[7]) for g in gains if g[0] == img and g[2] == boost and g[3] == ch)
                x = [p[0] for p in pts]
                ax.plot(x, [p[1] for p in pts], "-", marker=marker, color=colour, label=f"{img} boost {boost}")
                ax.plot(x, [p[2] for p in pts], "--", marker=marker, color=colour, alpha=0.6)
        ax.axhline(2.0, color="grey", lw=0.8, ls=":")
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_title(f"channel {ch}")
        ax.set_xlabel("bits per pixel (same wire bytes on and off)")
    axes[0][0].set_ylabel("PSNR change, map on - off (dB)\nsolid: face, dashed: outside")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=len(labels))
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
