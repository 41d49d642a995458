"""The WebRTC yardstick (issue 14 item 6): two aiortc peers through the jscc-netem shim, frames
identified by RTP timestamp; the changing-link experiment's CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("aiortc")

from jscc_stream.bench.cli import main as bench_main  # noqa: E402
from jscc_stream.bench.compare.changing_link import _spans, link_checks, parse_schedule  # noqa: E402
from jscc_stream.bench.compare.channel import Shim  # noqa: E402
from jscc_stream.bench.compare.webrtc_arm import (WebRtcConfig, h264_available, munge_answer,  # noqa: E402
                                                  munge_offer, run_webrtc)
from jscc_stream.errors import UserError  # noqa: E402
from jscc_stream.metrics import psnr  # noqa: E402

W, H, N = 160, 128, 30


@pytest.fixture(scope="module")
def frames():
    """Frames that differ strongly from one to the next: a synthetic pan plus a bright bar that
    jumps across the picture, so the decoded picture for index i is closest to source i."""
    from jscc_stream.sources import open_source

    src = open_source("synthetic", W, H, 30)
    out = []
    for i in range(N):
        f = src.read(i).copy()
        x = (i * 37) % (W - 24)
        f[:, x:x + 24] = (255, 255, 255) if i % 2 else (0, 0, 255)
        out.append(f)
    return out


def test_sdp_munging():
    offer = ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 97\r\na=candidate:abc 1 udp 2130706431 127.0.0.1 5000 typ host\r\n"
             "a=end-of-candidates\r\na=mid:0\r\n")
    assert "candidate" not in munge_offer(offer) and "a=mid:0" in munge_offer(offer)
    answer = munge_answer(offer, "127.0.0.1", 6000)
    assert "a=candidate:abc 1 udp 2130706431 127.0.0.1 6000 typ host" in answer
    assert "5000" not in answer and "a=end-of-candidates" in answer


@pytest.mark.parametrize("arm", ["webrtc-vp8", "webrtc-h264"])
def test_webrtc_arm_through_the_shim(arm, frames, tmp_path):
    if arm == "webrtc-h264" and not h264_available():
        pytest.skip("PyAV without libx264: aiortc cannot encode H.264")
    shims = []

    def make(listen, forward):
        shims.append(Shim(listen, forward, None, 30, tmp_path, reverse_delay_ms=30, loss="none"))
        return shims[-1]

    run = run_webrtc(WebRtcConfig(arm, W, H, 30), frames, make)
    # everything crossed the shim: its forward path saw the media
    stats = json.loads((tmp_path / "shim.json").read_text())
    assert stats["forward"]["total"]["bytes_in"] >= run.wire_bytes * 0.9 > 0
    decoded = [i for i in range(N) if run.decoded[i]]
    assert len(decoded) >= N - 2
    lat = [run.latency_ms[i] for i in decoded]
    assert all(v is not None for v in lat)
    assert 30 <= float(np.median(lat)) < 1000  # at least the shim's one-way delay
    scores = [psnr(frames[i], run.shown[i]) for i in decoded]
    assert float(np.mean(scores)) > 25
    for i in decoded:  # identified by timestamp: the picture for i is closest to source i
        near = range(max(0, i - 2), min(N, i + 3))
        assert max(near, key=lambda j: psnr(frames[j], run.shown[i])) == i
    assert sum(run.extra["sent_bytes"]) > 0 and run.extra["codec"] in ("VP8", "H264")


def test_link_schedule_and_windows():
    assert parse_schedule("0:2mbit,20:500kbit,40:2mbit") == [(0, 2e6), (20, 5e5), (40, 2e6)]
    for bad in ("", "5:2mbit", "0:2mbit,0:1mbit", "0:fast", "0-2mbit"):
        with pytest.raises(UserError):
            parse_schedule(bad)
    sched = parse_schedule("0:2mbit,20:500kbit,40:2mbit")
    assert _spans(sched, 60.5) == [(2, 20), (22, 40), (42, 60.5)]
    # a fabricated run: 60 s at 30 fps, latency 100 ms except 300 ms in [23, 24), sent = capacity
    t = [0.5 + i / 30 for i in range(1800)]
    arm = {"capture_s": t, "latency_ms": [300.0 if 23 <= x < 24 else 100.0 for x in t], "frozen": 0,
           "longest_freeze_frames": 0, "media_start_s": 0.5, "media_end_s": 60.5, "psnr_mean": 30.0,
           "seconds": list(range(61)), "capacity_kbps": [2000.0 if s < 20 or s >= 40 else 500.0 for s in range(61)]}
    arm["sent_kbps"] = list(arm["capacity_kbps"])
    checks = {c["bar"].split()[0]: c for c in link_checks({"jscc": arm, "webrtc-vp8": {"psnr_mean": 31.0}}, sched)}
    assert not checks["latency"]["met"] and "8/9 windows" in checks["latency"]["detail"]
    assert "[22,27)" in checks["latency"]["detail"]
    assert checks["no"]["met"] and checks["sent"]["met"]
    assert not checks["mean"]["met"]


def test_link_smoke_run(tmp_path):
    out = tmp_path / "link"
    rc = bench_main(["link", "--duration", "6", "--schedule", "0:2mbit,3:500kbit", "--arms", "webrtc-vp8",
                     "--source", "synthetic", "--out", str(out), "--log-level", "warning"])
    assert rc == 0
    res = json.loads((out / "link.json").read_text())
    a = res["arms"]["webrtc-vp8"]
    for key in ("psnr_mean", "frozen", "longest_freeze_frames", "latency_p50_ms", "latency_p95_ms",
                "latency_windows", "sent_kbps", "capacity_kbps", "seconds"):
        assert key in a
    assert len(a["psnr"]) == len(a["decoded"]) == 180
    assert any(v for v in a["sent_kbps"] if v) and 500.0 in a["capacity_kbps"]
    assert "checks" in res and (out / "link.md").exists()
    assert (out / "link.png").stat().st_size > 10_000


@pytest.mark.parametrize("args, needle", [
    (["--schedule", "0:2mbit,10:nope"], "bad --schedule"),
    (["--arms", "jscc,webrtc-av1"], "unknown arm"),
    (["--loss", "sometimes"], "loss"),
])
def test_link_cli_rejects_bad_input(args, needle, capsys, tmp_path):
    assert bench_main(["link", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
