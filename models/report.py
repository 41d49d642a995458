"""``jscc-eval``'s outputs: CSV files, PNG plots, the markdown summary and the acceptance checks."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

__all__ = ["write_csv", "plots", "summarize", "acceptance_checks"]


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _plot(path: Path, title: str, xlabel: str, ylabel: str,
          series: dict[str, tuple[Sequence[float], Sequence[float]]], vline: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", ms=3, label=label)
    if vline is not None:
        ax.axvline(vline, color="grey", ls=":", lw=1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plots(out: Path, results: dict) -> list[str]:
    made = []
    for size, rows in results.get("blocks", {}).items():
        for pattern in dict.fromkeys(r["pattern"] for r in rows):
            series = {r_m: ([r["blocks"] for r in rows if r["model"] == r_m and r["pattern"] == pattern],
                            [r["psnr"] for r in rows if r["model"] == r_m and r["pattern"] == pattern])
                      for r_m in dict.fromkeys(r["model"] for r in rows)}
            name = f"blocks_{pattern}_{size}.png"
            _plot(out / name, f"PSNR vs {pattern} blocks received ({size})", "blocks received", "PSNR (dB)", series)
            made.append(name)
    rows = results.get("mismatch", [])
    if rows:
        series = {f"{m} (eps_train={[r for r in rows if r['model'] == m][0]['eps_train']:g})":
                  ([r["eps_test"] for r in rows if r["model"] == m], [r["psnr"] for r in rows if r["model"] == m])
                  for m in dict.fromkeys(r["model"] for r in rows)}
        _plot(out / "mismatch.png", "Mismatch: trained at eps_train, tested at eps_test", "eps_test",
              "PSNR (dB)", series)
        made.append("mismatch.png")
    rows = results.get("ladder", [])
    for q in sorted({r["q"] for r in rows}):
        sub = [r for r in rows if r["q"] == q]
        series = {m + (" (SR stand-in)" if sub_m[0]["role"] == "sr-standin" else ""):
                  ([r["sent"] for r in sub_m], [r["psnr"] for r in sub_m])
                  for m in dict.fromkeys(r["model"] for r in sub)
                  for sub_m in [[r for r in sub if r["model"] == m]]}
        name = f"ladder_q{int(q * 100)}.png"
        _plot(out / name, f"Blocks sent, each erased w.p. {q:.0%}", "max blocks sent", "PSNR (dB)", series)
        made.append(name)
    rows = results.get("uep", [])
    if rows:
        series = {m: ([r["a"] for r in rows if r["model"] == m], [r["psnr"] for r in rows if r["model"] == m])
                  for m in dict.fromkeys(r["model"] for r in rows)}
        _plot(out / "uep.png", "Unequal protection: eps_test = min(a*eps_train, 1)", "a", "PSNR (dB)", series,
              vline=1.0)
        made.append("uep.png")
    return made


def summarize(results: dict, images: list[str]) -> str:
    lines = ["# jscc-eval summary", "",
             f"Images: {', '.join(images)}; quantization {results['bits']} bits; "
             f"{results['trials']} loss draws per image and condition; seed {results['seed']}; "
             f"codec arithmetic {results['precision']}.", ""]
    loss = results.get("loss", {})
    for size, rows in loss.items():
        lines += [f"## Packet loss at {size} (paper 001 Table 1 format)", "",
                  "| condition | codec | bytes/frame | PSNR mean | PSNR var | MS-SSIM | note |",
                  "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
        for r in rows:
            note = ""
            if "quality_mean" in r:
                note = f"q={r['quality_mean']:.0f}, undecodable {r['undecodable_frac']:.0%}"
            lines.append(f"| {r['condition']} | {r['codec']} | {r['bytes']} | {r['psnr_mean']:.2f} | "
                         f"{r['psnr_var']:.3f} | {r['ms_ssim']:.4f} | {note} |")
        lines.append("")
    for size, rows in results.get("blocks", {}).items():
        models = list(dict.fromkeys(r["model"] for r in rows))
        k = max(r["blocks"] for r in rows)
        lines += [f"## PSNR (dB) vs leading blocks received at {size}", "",
                  "| model | " + " | ".join(str(i) for i in range(1, k + 1)) + " |",
                  "| --- |" + " ---: |" * k]
        for m in models:
            vals = [r["psnr"] for r in rows if r["model"] == m and r["pattern"] == "leading"]
            lines.append(f"| {m} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
        lines.append("")
    scr = results.get("scr", [])
    if scr:
        lines += [f"## SCR ablation at {scr[0]['size']} ({scr[0]['packets_per_block']} packets per block)", "",
                  "| condition | " + " | ".join(f"{m} (SCR {'on' if r0['scr'] else 'off'})"
                                            for m in dict.fromkeys(r["model"] for r in scr)
                                            for r0 in [next(r for r in scr if r["model"] == m)]) + " |",
                  "| --- |" + " ---: |" * len({r["model"] for r in scr})]
        for cond in dict.fromkeys(r["condition"] for r in scr):
            lines.append(f"| {cond} | " + " | ".join(f"{r['psnr_mean']:.2f}" for r in scr if r["condition"] == cond) + " |")
        lines.append("")
    bits = results.get("quantization", [])
    if bits:
        lines += ["## Quantization cost (all blocks received, first size)", "",
                  "| model | " + " | ".join(str(r["bits"]) for r in bits if r["model"] == bits[0]["model"]) + " |",
                  "| --- |" + " ---: |" * sum(r["model"] == bits[0]["model"] for r in bits)]
        for m in dict.fromkeys(r["model"] for r in bits):
            lines.append(f"| {m} | " + " | ".join(f"{r['psnr']:.2f}" for r in bits if r["model"] == m) + " |")
        lines.append("")
    checks = results.get("checks", [])
    if checks:
        lines += ["## Acceptance checks", "", "| check | value | bar | pass |", "| --- | ---: | --- | --- |"]
        for c in checks:
            lines.append(f"| {c['check']} | {c['value']} | {c['bar']} | {'yes' if c['pass'] else 'NO'} |")
        lines.append("")
    return "\n".join(lines)


def acceptance_checks(results: dict) -> list[dict]:
    checks = []
    loss = results.get("loss", {}).get("320x240", [])

    def get(cond: str, codec: str) -> float | None:
        for r in loss:
            if r["condition"] == cond and r["codec"] == codec:
                return r["psnr_mean"]
        return None

    jpeg = get("none", "jpeg")
    for m in ("fixed-noerasure", "fixed-uniform", "fixed-ladder"):
        v = get("none", m)
        if v is not None and jpeg is not None:
            checks.append({"check": f"{m} all blocks vs JPEG (dB)", "value": f"{v - jpeg:+.2f}",
                           "bar": ">= -2", "pass": v - jpeg >= -2})
    for cond in ("uniform 10%", "GE ~10%"):
        u, n, j = get(cond, "fixed-uniform"), get(cond, "fixed-noerasure"), get(cond, "jpeg")
        if u is not None and n is not None:
            checks.append({"check": f"fixed-uniform - fixed-noerasure at {cond} (dB)", "value": f"{u - n:+.2f}",
                           "bar": ">= +3", "pass": u - n >= 3})
        if u is not None and j is not None:
            checks.append({"check": f"fixed-uniform - JPEG at {cond} (dB)", "value": f"{u - j:+.2f}",
                           "bar": ">= +5", "pass": u - j >= 5})
    lead = [r for r in results.get("blocks", {}).get("320x240", [])
            if r["model"] == "fixed-ladder" and r["pattern"] == "leading"]
    if lead:
        first = lead[0]["psnr"]
        mono = all(b["psnr"] >= a["psnr"] - 1e-6 for a, b in zip(lead, lead[1:]))
        checks.append({"check": "fixed-ladder, first block only (dB)", "value": f"{first:.2f}", "bar": ">= 20",
                       "pass": first >= 20})
        checks.append({"check": "ladder never decreasing with more leading blocks", "value": str(mono),
                       "bar": "True", "pass": mono})
    return checks
