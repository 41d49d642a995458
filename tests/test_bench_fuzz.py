"""jscc-bench fuzz: the mutations are seeded and varied, the verdict fails what it should, and a
short run against the real daemons (2000 datagrams each) produces its summary and plot."""

from __future__ import annotations

import json

import pytest

from jscc_stream.bench.cli import main as bench_main
from jscc_stream.bench.fuzz import fuzz_verdict
from jscc_stream.bench.fuzz_data import MUTATIONS, DatagramFuzzer, is_rtcp_shaped, pack_capture, unpack_capture

CAPTURE = [bytes([0x80, 98]) + bytes(range(10)) + bytes(100), bytes([0x80, 200]) + bytes(26),
           bytes([0x80, 97]) + bytes(60)]


def test_the_fuzzer_is_seeded_and_uses_every_mutation():
    fa, fb = DatagramFuzzer(CAPTURE, seed=3), DatagramFuzzer(CAPTURE, seed=3)
    a = [fa.next() for _ in range(3000)]
    assert a == [fb.next() for _ in range(3000)]
    assert {name for name, _ in a} == set(MUTATIONS)
    assert abs(sum(w for w, _ in MUTATIONS.values()) - 1) < 1e-9
    assert all(isinstance(d, bytes) and len(d) <= 65507 for _, d in a)
    assert len({d for _, d in a}) > 2000  # varied, not the capture over and over
    assert a != [DatagramFuzzer(CAPTURE, seed=4).next() for _ in range(3000)]


def test_capture_file_round_trip_and_rtcp_shape():
    grams = [(0.0, CAPTURE[0]), (0.5, b""), (1.25, CAPTURE[1])]
    assert unpack_capture(pack_capture(grams)) == grams
    assert is_rtcp_shaped(CAPTURE[1]) and not is_rtcp_shaped(CAPTURE[0]) and not is_rtcp_shaped(b"\x80")
    with pytest.raises(ValueError):
        DatagramFuzzer([])


def _result(**over) -> dict:
    res = {"target": "receiver", "before": {"rss_kb": 400_000, "rss_anon_kb": 200_000, "fds": 14},
           "after": {"rss_kb": 410_000, "rss_anon_kb": 201_000, "fds": 14},
           "stop": {"alive_before_stop": True, "exit_code": 0, "tracebacks": 0},
           "warm_up": {"frames_decoded": 40}, "real_stream_after": {"frames_decoded": 40}}
    res.update(over)
    return res


def test_the_verdict_passes_a_clean_run_and_fails_each_bar():
    assert fuzz_verdict(_result())["pass"]
    fails = [
        ("rss_growth_ok", _result(after={"rss_kb": 400_000 + 21 * 1024, "rss_anon_kb": 200_000, "fds": 14})),
        # the whole shrank (page cache reclaimed) while the heap grew: still a leak
        ("rss_growth_ok", _result(after={"rss_kb": 300_000, "rss_anon_kb": 200_000 + 21 * 1024, "fds": 14})),
        ("no_fd_growth", _result(after={"rss_kb": 400_000, "rss_anon_kb": 200_000, "fds": 15})),
        ("no_traceback", _result(stop={"alive_before_stop": True, "exit_code": 0, "tracebacks": 1})),
        ("alive", _result(stop={"alive_before_stop": False, "exit_code": 0, "tracebacks": 0})),
        ("clean_exit", _result(stop={"alive_before_stop": True, "exit_code": 1, "tracebacks": 0})),
        ("serves_real_stream", _result(real_stream_after={"frames_decoded": 10})),
    ]
    for check, res in fails:
        v = fuzz_verdict(res)
        assert not v["pass"] and [k for k, ok in v["checks"].items() if not ok] == [check], check
    shim = {"target": "shim", "real_stream_after": {"distinct": 50, "forwarded": 49}}
    assert not fuzz_verdict(_result(**shim))["checks"]["serves_real_stream"]
    shim["real_stream_after"]["forwarded"] = 50
    assert fuzz_verdict(_result(**shim))["pass"]


def test_a_short_fuzz_run_against_both_daemons(tmp_path, capsys):
    out = tmp_path / "fuzz"
    rc = bench_main(["fuzz", "--datagrams", "2000", "--samples", "4", "--capture-seconds", "1", "--fps", "10",
                     "--no-progress", "--out", str(out)])
    summary = json.loads((out / "fuzz.json").read_text())
    assert (out / "fuzz.png").stat().st_size > 1000 and (out / "capture.bin").exists()
    assert set(summary["targets"]) == {"receiver", "shim"}
    for name, res in summary["targets"].items():
        assert res["fuzz"]["sent"] == 2000 and len(res["fuzz"]["samples"]) == 4, name
        assert {"rss_kb", "fds", "threads"} <= set(res["before"]) and res["verdict"]["checks"]["alive"], name
        assert res["stop"]["tracebacks"] == 0 and res["stop"]["exit_code"] == 0, name
    rec, shim = summary["targets"]["receiver"], summary["targets"]["shim"]
    assert rec["warm_up"]["frames_decoded"] > 0 and rec["real_stream_after"]["frames_decoded"] > 0
    assert rec["counted"]["receiver_counted_media_datagrams"] == rec["counted"]["expected_media_datagrams"]
    assert shim["real_stream_after"]["forwarded"] == shim["real_stream_after"]["distinct"] > 0
    # every datagram from a source in its client table counted; the pool's others refused
    assert shim["counted"]["shim_counted_during_fuzz"] == 2000 - shim["fuzz"]["sent_from_refused_sources"]
    assert rc == (0 if summary["pass"] else 1)
    assert "wrote" in capsys.readouterr().out
