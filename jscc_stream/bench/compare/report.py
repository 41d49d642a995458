"""Markdown tables and matplotlib plots from a harness ``results.json``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["ARM_LABELS", "goal_check", "video_goal_check", "recovery_frames", "markdown_report", "plot_all",
           "write_report"]

ARM_LABELS = {"jscc": "JSCC", "h264": "H.264", "h264-slices": "H.264 slices", "h264-fec": "H.264+FEC", "h264-nack": "H.264+NACK", "jpeg": "JPEG",
              "webrtc-vp8": "WebRTC VP8", "webrtc-h264": "WebRTC H.264"}
_COLORS = {"jscc": "tab:red", "h264": "tab:blue", "h264-slices": "tab:cyan", "h264-fec": "tab:green", "h264-nack": "tab:purple", "jpeg": "tab:orange",
           "webrtc-vp8": "tab:brown", "webrtc-h264": "tab:gray"}


def _runs(results: dict, source: str) -> dict[tuple[str, str], dict]:
    return {(r["condition"], r["arm"]): r for r in results["runs"] if r["source"] == source}


def _fmt(v, spec=".1f") -> str:
    return "–" if v is None else format(v, spec)


def goal_check(results: dict, min_loss: float = 0.05, margin_db: float = 3.0) -> list[str]:
    """Issue 5's goal per source: at >= 5 % loss, JSCC >= 3 dB above H.264 and above H.264+FEC, no frozen frames."""
    conds = results["conditions"]
    lines = []
    for source in dict.fromkeys(r["source"] for r in results["runs"]):
        runs = _runs(results, source)
        rows = []
        for c, info in conds.items():
            j, h, f = (runs.get((c, a)) for a in ("jscc", "h264", "h264-fec"))
            if info["trace_loss"] < min_loss or not (j and h and f):
                continue
            rows.append((c, j["psnr_mean"] - h["psnr_mean"], j["psnr_mean"] - f["psnr_mean"], j["frozen"]))
        if not rows:
            continue
        worst_h = min(rows, key=lambda r: r[1])
        worst_f = min(rows, key=lambda r: r[2])
        frozen = sum(r[3] for r in rows)
        ok = worst_h[1] >= margin_db and worst_f[2] >= margin_db and frozen == 0
        lines.append(
            f"- **{source}** ({len(rows)} conditions with >= {100 * min_loss:.0f} % loss): "
            f"{'goal met' if ok else 'goal not met'}. JSCC − H.264: min {worst_h[1]:+.2f} dB ({worst_h[0]}); "
            f"JSCC − H.264+FEC: min {worst_f[2]:+.2f} dB ({worst_f[0]})"
            + ("" if worst_f[2] >= margin_db else f", short of +{margin_db:.0f} dB by {margin_db - worst_f[2]:.2f} dB")
            + f"; JSCC frozen frames: {frozen}.")
    return lines


def recovery_frames(psnr_db: list[float], drop_db: float = 3.0, within_db: float = 1.0) -> list[int]:
    """Frames from each quality drop until quality is back: a drop is a frame more than
    ``drop_db`` under the median of the 5 frames before it; it is over at the first frame
    within ``within_db`` of that level (0 = the dropped frame itself never counted twice)."""
    out, i = [], 5
    while i < len(psnr_db):
        base = float(np.median(psnr_db[i - 5:i]))
        if psnr_db[i] < base - drop_db:
            k = next((k for k in range(1, len(psnr_db) - i) if psnr_db[i + k] >= base - within_db), None)
            if k is None:
                break  # not back before the run ended: not counted (the run is too short to say)
            out.append(k)
            i += k + 5
        else:
            i += 1
    return out


def video_goal_check(results: dict) -> list[str]:
    """Issue "Video, not stills" per source: nothing lost, JSCC >= H.264 - 2 dB; from 5 % loss
    JSCC >= H.264+FEC + 1 dB (and >= H.264+NACK from 10 %), frozen frames <= 1 %; JSCC latency
    p95 <= H.264+FEC's + 30 ms; after drops, back within 1 dB in a round trip + 3 frames."""
    conds, cfg = results["conditions"], results["config"]
    rtt_frames = cfg["rtt_ms"] / 1000 * cfg["fps"]
    lines = []
    for source in dict.fromkeys(r["source"] for r in results["runs"]):
        runs = _runs(results, source)
        j0, h0 = runs.get(("none", "jscc")), runs.get(("none", "h264"))
        miss: list[str] = []
        if j0 and h0 and j0["psnr_mean"] < h0["psnr_mean"] - 2:
            miss.append(f"clean {j0['psnr_mean'] - h0['psnr_mean']:+.2f} dB vs H.264 (bar -2)")
        rec: list[int] = []
        for c, info in conds.items():
            j, f, n = (runs.get((c, a)) for a in ("jscc", "h264-fec", "h264-nack"))
            if j is None:
                continue
            rec += recovery_frames(j["psnr"])
            if info["trace_loss"] < 0.05:
                continue
            if f and j["psnr_mean"] < f["psnr_mean"] + 1:
                miss.append(f"{c} {j['psnr_mean'] - f['psnr_mean']:+.2f} dB vs H.264+FEC (bar +1)")
            if n and info["trace_loss"] >= 0.1 and j["psnr_mean"] < n["psnr_mean"]:
                miss.append(f"{c} {j['psnr_mean'] - n['psnr_mean']:+.2f} dB vs H.264+NACK")
            if j["frozen"] > 0.01 * len(j["psnr"]):
                miss.append(f"{c} {j['frozen']} frozen")
            if f and j["latency_p95_ms"] and f["latency_p95_ms"] and j["latency_p95_ms"] > f["latency_p95_ms"] + 30:
                miss.append(f"{c} latency p95 {j['latency_p95_ms']:.0f} vs {f['latency_p95_ms']:.0f} ms")
        slow = [k for k in rec if k > rtt_frames + 3]
        rec_text = (f"{len(rec)} drops, back within 1 dB in median {np.median(rec):.0f} frames, max {max(rec)}"
                    f" (bar {rtt_frames + 3:.0f}){'' if not slow else f', {len(slow)} slower'}" if rec else "no drops")
        lines.append(f"- **{source}**: {'all bars met' if not miss else 'missed: ' + '; '.join(miss)}. "
                     f"Recovery: {rec_text}.")
    return lines


def markdown_report(results: dict) -> str:
    conds = results["conditions"]
    arms = [a for a in ARM_LABELS if any(r["arm"] == a for r in results["runs"])]
    sources = list(dict.fromkeys(r["source"] for r in results["runs"]))
    out = []
    goal = goal_check(results)
    if goal:
        out += ["### Goal check (mean PSNR, all frames, frozen ones included)\n", *goal, ""]
    video = video_goal_check(results)
    if video:
        out += ["### Video bars (issue \"Video, not stills\")\n", *video, ""]
    for source in sources:
        runs = _runs(results, source)
        names = [c for c in conds if any((c, a) in runs for a in arms)]
        out.append(f"### Source: {source}\n")
        out.append("Mean PSNR in dB (frozen frames of " + str(results["config"]["frames"]) + ") per condition; "
                   "loss = the trace's measured packet loss rate.\n")
        out.append("| condition | loss | " + " | ".join(ARM_LABELS[a] for a in arms) + " | JSCC − H.264 | JSCC − H.264+FEC |")
        out.append("|---|---:|" + "---:|" * len(arms) + "---:|---:|")
        for c in names:
            cells = []
            for a in arms:
                r = runs.get((c, a))
                cells.append("–" if r is None else f"{r['psnr_mean']:.2f} ({r['frozen']})")
            j, h, f = (runs.get((c, a)) for a in ("jscc", "h264", "h264-fec"))
            d1 = _fmt(j["psnr_mean"] - h["psnr_mean"], "+.2f") if j and h else "–"
            d2 = _fmt(j["psnr_mean"] - f["psnr_mean"], "+.2f") if j and f else "–"
            out.append(f"| {c} | {100 * conds[c]['trace_loss']:.1f} % | " + " | ".join(cells) + f" | {d1} | {d2} |")
        out.append("")
        out.append("Mean SSIM, capture-to-display latency p50 / p95 (ms, decoded frames; includes the shim's "
                   f"{results['config']['delay_ms']:.0f} ms one-way delay) and actual bitrate (kbit/s, RTP "
                   "packets incl. headers, parity and retransmissions):\n")
        out.append("| condition | arm | SSIM | latency p50 | latency p95 | kbit/s | packets | notes |")
        out.append("|---|---|---:|---:|---:|---:|---:|---|")
        for c in names:
            for a in arms:
                r = runs.get((c, a))
                if r is None:
                    continue
                notes = []
                if a == "h264-nack":
                    notes.append(f"{r['retransmissions']} retransmissions")
                if a == "h264-fec":
                    notes.append(f"parity {100 * r['extra'].get('fec_ratio', 0):.0f} %, "
                                 f"{r['fec_recovered_frames']} frames repaired")
                out.append(f"| {c} | {ARM_LABELS[a]} | {r['ssim_mean']:.3f} | {_fmt(r['latency_p50_ms'])} | "
                           f"{_fmt(r['latency_p95_ms'])} | {_fmt(r['wire_kbps'], '.0f')} | {r['packets_sent']} | "
                           f"{'; '.join(notes)} |")
        out.append("")
    return "\n".join(out)


def plot_all(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = results["conditions"]
    arms = [a for a in ARM_LABELS if any(r["arm"] == a for r in results["runs"])]
    written = []
    for source in dict.fromkeys(r["source"] for r in results["runs"]):
        runs = _runs(results, source)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for a in arms:
            for fam, style, marker in (("uniform", "-", "o"), ("ge", "--", "s"), ("burst", "", "*")):
                pts = sorted((conds[c]["trace_loss"], r["psnr_mean"]) for (c, aa), r in runs.items()
                             if aa == a and conds[c]["family"] == fam or aa == a and fam == "ge" and c == "none")
                if not pts:
                    continue
                x, y = zip(*pts)
                ax.plot(100 * np.array(x), y, linestyle=style or "none", marker=marker, color=_COLORS[a],
                        label=ARM_LABELS[a] if fam == "uniform" else None, markersize=10 if marker == "*" else 5)
        from matplotlib.lines import Line2D

        for style, marker, text in (("-", "o", "uniform loss"), ("--", "s", "Gilbert-Elliott"),
                                    ("none", "*", "long bursts")):
            ax.add_line(Line2D([], [], color="grey", linestyle=style, marker=marker, label=text))
        ax.set_xlabel("packet loss rate of the trace (%)")
        ax.set_ylabel("mean PSNR (dB), frozen frames included")
        ax.set_title(f"PSNR vs loss — {source}, {results['config']['width']}x{results['config']['height']}, "
                     f"{results['config']['frames']} frames")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out / f"psnr_vs_loss_{source}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
        for c in conds:
            if c == "none" or not any((c, a) in runs for a in arms):
                continue
            if c not in ("ge10", "burst") and len(conds) > 2:
                continue
            fig, ax = plt.subplots(figsize=(8, 4.4))
            for a in arms:
                r = runs.get((c, a))
                if r is not None:
                    ax.plot(r["psnr"], color=_COLORS[a], lw=1.2, label=f"{ARM_LABELS[a]} ({r['psnr_mean']:.1f} dB)")
            ax.set_xlabel("frame")
            ax.set_ylabel("PSNR (dB)")
            ax.set_title(f"PSNR over time — {source}, {c} ({100 * conds[c]['trace_loss']:.1f} % loss)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
            fig.tight_layout()
            path = out / f"psnr_time_{source}_{c}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def write_report(results: dict, out: Path) -> Path:
    """table.md plus the PNG plots in ``out``; returns the table's path."""
    table = out / "table.md"
    table.write_text(markdown_report(results) + "\n")
    plot_all(results, out)
    return table
