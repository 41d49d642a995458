"""The bit-layer experiment (paper 003's bit-level importance, ``jscc-eval --experiments bitlayers``).

* **layers received**: each photo coded at one budget in 2, 3 and 4 bit layers (:mod:`.bitlayers`),
  decoded from its first j layers; beside it, the plain codec at the bytes those j layers took
  (what a sender that knew the rate in advance would have sent);
* **priority bottleneck**: the photos streamed as a 30 fps sequence of intra frames through the
  shim's link model (:class:`jscc_stream.netem.link.Link`: strict DSCP priority, drop-head, a
  playout deadline as the queue's age limit) at a share of the offered rate, every arm at the
  same codec budget: plain payloads marked by level (AF41/AF42/AF43/LE), bit layers marked by
  level alone, and bit layers with the refinements marked LE below every coarse index (AF41-AF43).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from jscc_stream.metrics import psnr
from jscc_stream.netem.dscp import tos_of_dscp
from jscc_stream.netem.link import Link, LinkConfig, Packet
from jscc_stream.proto.packet import IP_UDP_BYTES, JSCC_HEADER_BYTES, RTP_HEADER_BYTES

from .packet_codec import PacketCodec

__all__ = ["layer_rows", "bottleneck_rows", "run"]

FPS = 30.0
PACE = 0.5  # a frame's packets spread over this share of the frame interval (jscc-send --pace)
DEADLINE_S = 0.1  # a packet older than this in the bottleneck misses its playout and is dropped
ARMS = ("plain, DSCP by level", "2 bit layers, DSCP by level", "2 bit layers, refinements LE")


def _encode(codec: PacketCodec, bgr: np.ndarray, budget: int, layers: int) -> list[bytes]:
    codec.bit_layers = layers
    try:
        return codec.encode(bgr, budget)
    finally:
        codec.bit_layers = 1


def layer_rows(codec: PacketCodec, images: dict[str, np.ndarray], budget: int,
               layer_counts: tuple[int, ...] = (2, 3, 4)) -> list[dict]:
    """PSNR from the first j of L layers, and the plain codec's at the same bytes."""
    rows = []
    for name, rgb in images.items():
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        h, w = bgr.shape[:2]
        plain = _encode(codec, bgr, budget, 1)
        rows.append({"image": name, "layers": 1, "received": 1, "bytes": sum(map(len, plain)),
                     "psnr": psnr(codec.decode(plain, w, h), bgr), "plain_psnr": None})
        for n in layer_counts:
            payloads = _encode(codec, bgr, budget, n)
            lay = codec.payload_layers(payloads)
            for j in range(1, n + 1):
                kept = [p if layer < j else None for p, layer in zip(payloads, lay)]
                used = sum(len(p) for p in kept if p)
                same = _encode(codec, bgr, used, 1)
                rows.append({"image": name, "layers": n, "received": j, "bytes": used,
                             "psnr": psnr(codec.decode(kept, w, h), bgr),
                             "plain_psnr": psnr(codec.decode(same, w, h), bgr)})
    return rows


def _wire(payloads: list[bytes]) -> int:
    """Bytes a bottleneck charges for a frame's payloads (RTP, payload header, IP/UDP)."""
    return sum(len(p) + RTP_HEADER_BYTES + JSCC_HEADER_BYTES + IP_UDP_BYTES for p in payloads)


def _arm_packets(codec: PacketCodec, bgr: np.ndarray, budget: int, arm: int) -> tuple[list[bytes], list[int]]:
    """One arm's payloads of a frame, at most the plain arm's wire bytes at ``budget`` (layers
    take more packets: their codec budget shrinks by the extra headers), and each one's DSCP:
    jscc-send's defaults (sender/dscp.py, which models may not import): levels in equal groups
    over AF41, AF42, AF43 (and LE without layer marking), refinements LE."""
    payloads = _encode(codec, bgr, budget, 1 if arm == 0 else 2)
    target = _wire(_encode(codec, bgr, budget, 1))
    while arm and _wire(payloads) > target and budget > 1:  # (at 1 byte: the coarsest step, whatever it takes)
        budget = max(1, budget - (_wire(payloads) - target))
        payloads = _encode(codec, bgr, budget, 2)
    levels, layers = codec.payload_levels(payloads), codec.payload_layers(payloads)
    order = (34, 36, 38) if arm == 2 else (34, 36, 38, 1)
    n = len(codec.levels)
    return payloads, [1 if arm == 2 and layer else order[lv * len(order) // n] for lv, layer in zip(levels, layers)]


def _through_link(frames: list[tuple[list[bytes], list[int]]], rate_bps: float) -> list[set[int]]:
    """Which payloads of each frame leave the bottleneck (1 ms steps, simulated time)."""
    link = Link(LinkConfig(rate_bps=rate_bps, priority=True, queue_packets=64, max_queue_delay_s=DEADLINE_S),
                np.random.default_rng(0))
    events = []
    for f, (payloads, dscps) in enumerate(frames):
        gap = PACE / FPS / max(1, len(payloads))
        events += [(f / FPS + i * gap, f, i, len(p), d) for i, (p, d) in enumerate(zip(payloads, dscps))]
    events.sort()
    got: list[set[int]] = [set() for _ in frames]
    t, k = 0.0, 0
    end = len(frames) / FPS + 2 * DEADLINE_S
    while t <= end:
        while k < len(events) and events[k][0] <= t:
            _, f, i, size, dscp = events[k]
            link.arrive(Packet.make(bytes(size + RTP_HEADER_BYTES + JSCC_HEADER_BYTES), tos_of_dscp(dscp), (f, i),
                                    IP_UDP_BYTES), t)
            k += 1
        for pkt in link.due(t):
            got[pkt.dest[0]].add(pkt.dest[1])
        t += 0.001
    return got


def bottleneck_rows(codec: PacketCodec, images: dict[str, np.ndarray], budget: int,
                    shares: tuple[float, ...] = (0.8, 0.6, 0.4, 0.3), rounds: int = 3) -> list[dict]:
    """PSNR per arm and bottleneck share (of the plain arm's offered rate, headers included)."""
    bgrs = [cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) for rgb in images.values()]
    names = list(images)
    coded = [[_arm_packets(codec, bgr, budget, arm) for bgr in bgrs] for arm in range(len(ARMS))]
    offered = np.mean([_wire(fr[0]) for fr in coded[0]]) * 8 * FPS
    rows = []
    for share in shares:
        for arm, name in enumerate(ARMS):
            frames = coded[arm] * rounds
            got = _through_link(frames, share * offered)
            for f, (payloads, _) in enumerate(frames):
                bgr = bgrs[f % len(bgrs)]
                kept = [p if i in got[f] else None for i, p in enumerate(payloads)]
                rows.append({"arm": name, "share": share, "image": names[f % len(names)],
                             "offered_bytes": _wire(payloads), "delivered_bytes": sum(len(p) for p in kept if p),
                             "payloads": len(payloads), "delivered": len(got[f]),
                             "psnr": psnr(codec.decode(kept, bgr.shape[1], bgr.shape[0]), bgr)})
    return rows


def plot(path: Path, layers: list[dict], bottleneck: list[dict], pixels: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    for n in sorted({r["layers"] for r in layers if r["layers"] > 1}):
        pts = sorted({r["received"] for r in layers if r["layers"] == n})
        sub = [[r for r in layers if r["layers"] == n and r["received"] == j] for j in pts]
        x = [np.mean([r["bytes"] for r in s]) * 8 / pixels for s in sub]
        a.plot(x, [np.mean([r["psnr"] for r in s]) for s in sub], marker="o", label=f"{n} bit layers, first j")
    plain = [r for r in layers if r["plain_psnr"] is not None]
    points = sorted({(r["layers"], r["received"]) for r in plain})
    curve = sorted((np.mean([r["bytes"] for r in plain if (r["layers"], r["received"]) == k]) * 8 / pixels,
                    np.mean([r["plain_psnr"] for r in plain if (r["layers"], r["received"]) == k])) for k in points)
    a.plot(*zip(*curve), "k--", lw=1, label="plain codec at those bytes")
    a.set_xlabel("bits per pixel received")
    a.set_ylabel("PSNR (dB)")
    a.set_title("Quality vs bit layers received")
    a.grid(alpha=0.3)
    a.legend(fontsize=7)
    shares = sorted({r["share"] for r in bottleneck}, reverse=True)
    width = 0.8 / len(ARMS)
    for k, arm in enumerate(ARMS):
        vals = [np.mean([r["psnr"] for r in bottleneck if r["arm"] == arm and r["share"] == s]) for s in shares]
        b.bar(np.arange(len(shares)) + (k - 1) * width, vals, width, label=arm)
    b.set_xticks(range(len(shares)), [f"{s:.0%}" for s in shares])
    b.set_xlabel("bottleneck rate, share of the offered rate")
    b.set_ylabel("PSNR (dB)")
    b.set_ylim(bottom=min(r["psnr"] for r in bottleneck) - 2)
    b.set_title("Strict-priority bottleneck, same bytes offered")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summary(layers: list[dict], bottleneck: list[dict]) -> list[str]:
    out = ["# Bit layers (paper 003)", "", "| layers | first j | bytes | PSNR | plain codec at those bytes |",
           "|---|---|---|---|---|"]
    for n in sorted({r["layers"] for r in layers}):
        for j in sorted({r["received"] for r in layers if r["layers"] == n}):
            s = [r for r in layers if r["layers"] == n and r["received"] == j]
            plain = [r["plain_psnr"] for r in s if r["plain_psnr"] is not None]
            out.append(f"| {n} | {j} | {np.mean([r['bytes'] for r in s]):.0f} | "
                       f"{np.mean([r['psnr'] for r in s]):.2f} | " + (f"{np.mean(plain):.2f} |" if plain else "- |"))
    out += ["", "| bottleneck share | arm | wire bytes offered, codec bytes delivered per frame "
                "| payloads delivered | PSNR |", "|---|---|---|---|---|"]
    for s in sorted({r["share"] for r in bottleneck}, reverse=True):
        for arm in ARMS:
            sub = [r for r in bottleneck if r["arm"] == arm and r["share"] == s]
            out.append(f"| {s:.0%} | {arm} | {np.mean([r['offered_bytes'] for r in sub]):.0f} / "
                       f"{np.mean([r['delivered_bytes'] for r in sub]):.0f} | "
                       f"{sum(r['delivered'] for r in sub) / sum(r['payloads'] for r in sub):.0%} | "
                       f"{np.mean([r['psnr'] for r in sub]):.2f} |")
    return out + [""]


def run(codec_name: str, images: dict[str, np.ndarray], out: Path, bpp: float = 0.5, precision: str = "fp32",
        progress: Callable[[str], None] | None = None) -> dict:
    """Both parts on ``images`` (RGB, one size) at ``bpp``: ``results.json``, ``bitlayers.png``,
    ``summary.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    codec = PacketCodec.load(codec_name, device="cpu", precision=precision)
    h, w = next(iter(images.values())).shape[:2]
    budget = int(bpp * w * h / 8)
    layers = layer_rows(codec, images, budget)
    if progress:
        progress("bit layers: layers-received part done")
    bottleneck = bottleneck_rows(codec, images, budget)
    res = {"codec": codec_name, "size": f"{w}x{h}", "budget": budget, "layers": layers, "bottleneck": bottleneck}
    (out / "results.json").write_text(json.dumps(res, indent=1))
    plot(out / "bitlayers.png", layers, bottleneck, w * h)
    (out / "summary.md").write_text("\n".join(summary(layers, bottleneck)))
    return res
