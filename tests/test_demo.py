"""jscc-demo / jscc-bench pipeline plumbing: a short real run of the three processes."""

from __future__ import annotations

from jscc_stream.bench.cli import main as bench_main
from jscc_stream.demo import main as demo_main
from jscc_stream.pipeline import PipelineConfig, run_pipeline, summarize_frames


def test_short_live_run_through_the_shim(tiny_codec, tmp_path):
    from jscc_stream.models.zoo import save_codec

    weights = save_codec(tiny_codec.model, tmp_path / "w", "tiny", {})
    res = run_pipeline(PipelineConfig(duration=2.0, codec=str(weights), loss="ge10", workdir=tmp_path / "run",
                                      record=str(tmp_path / "demo.mp4"), latency_ms=60))
    assert res["exit_codes"] == {"receiver": 0, "shim": 0, "sender": 0}
    assert res["frames_displayed"] > 5 and res["psnr_frames"] == res["frames_displayed"]
    assert res["psnr_mean_db"] is not None and res["latency_p50_ms"] is not None
    assert set(res["cpu_percent"]) == {"receiver", "shim", "sender"}
    assert (tmp_path / "demo.mp4").stat().st_size > 0
    assert res["receiver"]["reassembly"]["undecodable_frames"] == 0


def test_summarize_frames():
    recs = [dict(frame_id=i, decoded=True, display_unix=i / 30, capture_to_display_ms=50.0 + i, bytes_received=90,
                 bytes_expected=100, reason="deadline", decode_ms=5.0, wait_ms=50.0) for i in range(31)]
    s = summarize_frames(recs, 30)
    assert round(s["displayed_fps"]) == 30 and abs(s["byte_loss"] - 0.1) < 1e-9 and s["latency_p50_ms"] == 65.0
    assert summarize_frames([], 30) == {"frames_displayed": 0}


def test_cli_errors_and_codec_bench(capsys, tmp_path):
    assert demo_main(["--codec", "/nonexistent.safetensors"]) == 2
    assert demo_main(["--loss", "bogus", "--codec", __file__]) == 2
    assert bench_main(["codec", "--sizes", "64x48", "--repeats", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| cpu | float32 | 64x48 |"))
    assert 0 < int(row.split("|")[4]) <= 192  # the entropy-coded default: 0.5 bit per pixel at most
    assert (tmp_path / "codec_bench.json").exists()
    assert bench_main(["codec", "--sizes", "huge"]) == 2
