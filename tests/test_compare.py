"""The comparison harness (issue 5): baseline packetizers, and the table from a tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("zfec")

from jscc_stream.bench.compare.channel import CONDITIONS, write_trace  # noqa: E402
from jscc_stream.bench.compare.cli import main  # noqa: E402
from jscc_stream.baselines.h264 import H264Encoder  # noqa: E402
from jscc_stream.baselines.jpeg_payload import JpegDepacketizer, JpegPacketizer  # noqa: E402


@pytest.fixture(scope="module")
def frames():
    from jscc_stream.sources import open_source

    src = open_source("synthetic", 160, 128, 30)
    return [src.read(i) for i in range(6)]


def test_h264_packets_fit_the_mtu(frames):
    enc = H264Encoder(160, 128, 30, 600_000)
    assert {n[0] & 0x1F for n in enc.parameter_sets} == {7, 8}
    for f in frames:
        payloads = enc.packets(f, 900)
        assert payloads and all(len(p) + 12 <= 900 for p in payloads)


def test_jpeg_packets_and_loss_concealment(frames):
    from jscc_stream.baselines.image import decode_with_loss, encode_jpeg

    pk = JpegPacketizer(max_bytes=3000, mtu=300)
    payloads = pk.packets(frames[0])
    assert len(payloads) > 3 and all(len(p) + 12 <= 300 for p in payloads)
    coded = encode_jpeg(np.ascontiguousarray(frames[0][:, :, ::-1]), 3000, 300 - 12 - 6)
    assert len(coded.packets) == len(payloads)
    dep = JpegDepacketizer(160, 128)
    full = dep.decode(list(enumerate(payloads)))
    assert full is not None and full.shape == (128, 160, 3)
    assert 10 * np.log10(255**2 / np.mean((full.astype(float) - frames[0]) ** 2)) > 25
    # Whatever is lost, the receiver decodes exactly what the offline baseline decodes for that loss
    # (or nothing when the offline decoder says undecodable).
    for lost in range(len(payloads)):
        got = dep.decode([(i, p) for i, p in enumerate(payloads) if i != lost])
        ref, info = decode_with_loss(coded, [i != lost for i in range(len(payloads))])
        if info["decodable"]:
            assert got is not None and np.array_equal(got, ref[:, :, ::-1])
        else:
            assert got is None
    assert dep.decode([]) is None
    assert dep.decode([(0, b"\x00\x01"), (1, b"garbage")]) is None


def test_traces_are_seeded_and_match_their_process(tmp_path):
    ge10 = next(c for c in CONDITIONS if c.name == "ge10")
    a = write_trace(ge10, tmp_path / "a.txt", 20000, seed=3)
    b = write_trace(ge10, tmp_path / "b.txt", 20000, seed=3)
    assert (tmp_path / "a.txt").read_text() == (tmp_path / "b.txt").read_text() and a == b
    assert abs(a["trace_loss"] - a["nominal_loss"]) < 0.02


def test_cli_rejects_bad_input(capsys):
    assert main(["--conditions", "nope", "--quick"]) == 2
    assert "unknown condition" in capsys.readouterr().err
    assert main(["--size", "100x7"]) == 2


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, tiny_codec):
    from jscc_stream.models.zoo import save_codec

    return save_codec(tiny_codec.model, tmp_path_factory.mktemp("w"), "tiny", {"note": "untrained, tests"})


def test_tiny_run_writes_the_table(tmp_path, tiny_weights):
    out = tmp_path / "out"
    rc = main(["--quick", "--frames", "8", "--conditions", "ge10", "--size", "160x128", "--codec",
               str(tiny_weights), "--out", str(out), "--log-level", "warning"])
    assert rc == 0
    table = (out / "table.md").read_text()
    for label in ("JSCC", "H.264", "H.264 slices", "H.264+FEC", "H.264+NACK", "JPEG", "| ge10 |"):
        assert label in table
    results = json.loads((out / "results.json").read_text())
    runs = {r["arm"]: r for r in results["runs"]}
    assert set(runs) == {"jscc", "h264", "h264-slices", "h264-fec", "h264-nack", "jpeg"}
    for r in runs.values():
        assert len(r["psnr"]) == len(r["ssim"]) == len(r["decoded"]) == 8
        assert r["packets_sent"] > 0
    assert runs["h264-fec"]["extra"]["fec_ratio"] > 0
    assert (out / "psnr_vs_loss_synthetic.png").stat().st_size > 0
    assert (out / "psnr_time_synthetic_ge10.png").stat().st_size > 0


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 40-frame MJPG clip of moving content, wider than 160x128 so that fitting must crop."""
    import cv2

    path = tmp_path_factory.mktemp("clip") / "my street.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (240, 128))
    assert out.isOpened()
    yy, xx = np.mgrid[0:128, 0:240]
    for i in range(40):
        img = np.stack([128 + 90 * np.sin((xx + 4 * i) / 13) * np.cos(yy / 9), 128 + 60 * np.cos((xx - yy) / 17),
                        (xx + 3 * i) % 256], 2).astype(np.uint8)
        out.write(np.ascontiguousarray(img))
    out.release()
    return path


def test_video_sources_are_named_cropped_and_checked(clip, tmp_path, capsys):
    import cv2

    from jscc_stream.bench.compare.runner import load_frames, name_sources
    from jscc_stream.sources import fit_frame

    folder = tmp_path / "shots"
    folder.mkdir()
    assert name_sources(["synthetic", str(clip), str(clip), str(folder), str(folder / "*.png")]) == {
        "synthetic": "synthetic", "my-street": str(clip), "my-street-2": str(clip), "shots": str(folder),
        "shots-2": str(folder / "*.png")}
    frames = load_frames(str(clip), 40, 160, 128, 30)
    cap = cv2.VideoCapture(str(clip))
    first = cap.read()[1]
    cap.release()
    assert np.array_equal(frames[0], fit_frame(first, 160, 128))  # centre crop, not a stretch
    assert main(["--quick", "--sources", str(tmp_path / "nope.mp4")]) == 2
    assert "nope.mp4" in capsys.readouterr().err
    assert main(["--quick", "--frames", "41", "--arms", "jpeg", "--sources", str(clip), "--out", str(tmp_path / "o"),
                 "--size", "160x128"]) == 2
    assert "has 40 frames, fewer than --frames 41" in capsys.readouterr().err
    (folder / "junk.avi").write_text("not a video")
    assert main(["--quick", "--arms", "jpeg", "--sources", str(folder / "junk.avi"), "--out", str(tmp_path / "o")]) == 2
    assert "junk.avi" in capsys.readouterr().err


def test_a_video_file_runs_with_the_same_frames_for_every_arm(clip, tmp_path, tiny_weights):
    import av

    from jscc_stream.bench.compare.runner import load_frames

    out, work = tmp_path / "out", tmp_path / "work"
    rc = main(["--quick", "--frames", "8", "--conditions", "none", "--size", "160x128", "--arms", "jscc,jpeg",
               "--sources", str(clip), "--codec", str(tiny_weights), "--out", str(out), "--workdir", str(work),
               "--log-level", "warning"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["sources"] == {"my-street": str(clip)}
    runs = {r["arm"]: r for r in results["runs"]}
    assert set(runs) == {"jscc", "jpeg"} and all(r["source"] == "my-street" for r in runs.values())
    assert runs["jpeg"]["psnr_mean"] > 25  # scored against the frames it was sent
    assert (out / "psnr_vs_loss_my-street.png").stat().st_size > 0
    # jscc-send read a lossless copy of exactly the frames the baselines and the scorer used
    sent = [f.to_ndarray(format="bgr24") for f in av.open(str(work / "my-street.mkv")).decode(video=0)]
    assert len(sent) == 8 and all(np.array_equal(a, b) for a, b in zip(sent, load_frames(str(clip), 8, 160, 128, 30)))
