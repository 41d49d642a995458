"""jscc-bench soak: the verdict fails each kind of drift and passes a flat run; the monitor reads
the receiver's stats lines incrementally; a very short live soak writes its summary and plot."""

from __future__ import annotations

import json

from jscc_stream.bench.cli import main as bench_main
from jscc_stream.bench.soak import RESOURCES, SoakMonitor, health_checks, soak_verdict, window_perf

PROCS = ("sender", "shim", "receiver")
REF = {"fps": 15.0, "latency_p95_ms": 80.0}
FLAT = {"rss_kb": 300_000, "rss_anon_kb": 100_000, "fds": 20, "threads": 8}


def _samples(n: int = 6, step: float = 30.0, **drift) -> list[dict]:
    """Flat samples every ``step`` s; ``drift`` = {"receiver.rss_kb": 1.10, "fps": 0.8, ...} multiplies
    that quantity in the last sample."""
    out = []
    for i in range(1, n + 1):
        last = i == n
        procs = {p: {q: int(FLAT[q] * (drift.get(f"{p}.{q}", 1) if last else 1)) for q in RESOURCES} for p in PROCS}
        out.append({"t": i * step, "procs": procs, "fps": REF["fps"] * (drift.get("fps", 1) if last else 1),
                    "latency_p95_ms": REF["latency_p95_ms"] * (drift.get("p95", 1) if last else 1)})
    return out


def test_a_flat_run_passes():
    v = soak_verdict(_samples(), REF, baseline_s=60)
    assert v["pass"] and v["baseline_t"] == 60 and not v["failed"]
    assert set(v["checks"]) == {f"{p}.{q}" for p in PROCS for q in RESOURCES} | {"fps", "latency_p95_ms"}


def test_each_drift_fails_its_check():
    cases = {"receiver.rss_kb": ({"receiver.rss_kb": 1.06}, "receiver.rss_kb"),
             "receiver.rss_anon_kb": ({"receiver.rss_anon_kb": 1.06}, "receiver.rss_anon_kb"),
             "shim.fds": ({"shim.fds": 1.10}, "shim.fds"),
             "sender.threads": ({"sender.threads": 1.25}, "sender.threads"),
             "fps": ({"fps": 0.85}, "fps"), "p95": ({"p95": 1.15}, "latency_p95_ms")}
    for drift, check in cases.values():
        v = soak_verdict(_samples(**drift), REF, baseline_s=60)
        assert not v["pass"] and v["failed"] == [check], (drift, v["failed"])


def test_within_the_tolerances_and_improvements_pass():
    assert soak_verdict(_samples(**{"receiver.rss_kb": 1.04, "fps": 0.92, "p95": 1.08}), REF, 60)["pass"]
    assert soak_verdict(_samples(fps=1.3, p95=0.5), REF, 60)["pass"]  # faster or lower latency is no drift


def test_growth_before_the_baseline_does_not_count_but_after_it_does():
    s = _samples()
    s[0]["procs"]["receiver"]["rss_kb"] = 100_000  # startup: below the baseline's value
    assert soak_verdict(s, REF, 60)["pass"]


def test_too_short_or_a_vanished_process_fails():
    assert not soak_verdict(_samples(n=2), REF, 60)["pass"]  # nothing after the baseline
    s = _samples()
    s[-1]["procs"]["shim"] = None
    v = soak_verdict(s, REF, 60)
    assert not v["pass"] and v["failed"] == [f"shim.{q}" for q in RESOURCES]
    assert not soak_verdict(_samples(), {"fps": None, "latency_p95_ms": None}, 60)["pass"]


def test_health_fails_a_crashed_loop_a_bad_exit_or_a_short_run():
    clean = {n: {"tracebacks": 0} for n in PROCS}
    exits = {n: 0 for n in PROCS}
    assert soak_verdict(_samples(), REF, 60, health=health_checks(exits, clean, 6, 5))["pass"]
    cases = {"no_tracebacks": (exits, {**clean, "sender": {"tracebacks": 1}}, 6),
             "exit_codes": ({**exits, "shim": -9}, clean, 6), "full_length": (exits, clean, 3)}
    for check, (codes, logs, n) in cases.items():
        v = soak_verdict(_samples(), REF, 60, health=health_checks(codes, logs, n, 5))
        assert not v["pass"] and v["failed"] == [check], check


def test_the_monitor_reads_complete_lines_incrementally(tmp_path):
    path = tmp_path / "frames.jsonl"
    mon = SoakMonitor(path, interval=10, baseline_s=10)
    rec = {"decoded": True, "capture_to_display_ms": 50.0}
    path.write_text(json.dumps(rec) + "\n" + json.dumps(rec) + "\n" + '{"decoded": tr')
    s1 = mon.sample({}, 10.0)
    assert s1["frames"] == 2 and s1["fps"] == 0.2
    with open(path, "a") as f:
        f.write('ue, "capture_to_display_ms": 70.0}\n' + json.dumps({"decoded": False}) + "\n")
    s2 = mon.sample({}, 20.0)
    assert s2["frames"] == 1 and s2["latency_p95_ms"] == 70.0
    assert mon.reference()["frames"] == 2  # the first sample at or after 10 s closes the reference window
    assert window_perf([], 5.0) == {"frames": 0, "fps": 0.0, "latency_p95_ms": None}


def test_a_very_short_live_soak(tmp_path, capsys):
    out = tmp_path / "soak"
    rc = bench_main(["soak", "--minutes", "0.25", "--interval", "4", "--out", str(out)])
    summary = json.loads((out / "soak.json").read_text())
    assert (out / "soak.png").stat().st_size > 1000
    assert summary["meta"]["loss"] == "ge10" and summary["meta"]["baseline_s"] == 5
    assert len(summary["samples"]) >= 3
    for s in summary["samples"]:
        assert set(s["procs"]) == set(PROCS) and all(set(RESOURCES) <= set(u) for u in s["procs"].values())
        assert {"fps", "latency_p95_ms", "frames"} <= set(s)
    assert sum(s["frames"] for s in summary["samples"]) > 0
    health = {k: summary["verdict"]["checks"][k] for k in ("exit_codes", "no_tracebacks", "full_length")}
    again = soak_verdict(summary["samples"], summary["reference"], summary["meta"]["baseline_s"], health=health)
    assert again == summary["verdict"]
    assert set(summary["logs"]) == set(PROCS)
    assert rc == (0 if summary["pass"] else 1) and "soak.json" in capsys.readouterr().out
