"""The entropy-coded codec's trainer end to end on a tiny set: log, checkpoint, resume, export
to shipped-weights form, and the distributed path under torchrun (gloo, 2 processes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import cv2
import pytest

from jscc_stream.models.data import builtin_eval_images

TINY = ["--batch", "2", "--crop", "64", "--channels", "32", "--levels", "4,8,20", "--latent-width", "8",
        "--pixel-width", "8", "--val-images", "2", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    for name, rgb in builtin_eval_images(320, 240).items():
        cv2.imwrite(str(d / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return d


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", "jscc_stream.models.rd_train", *args], capture_output=True,
                          text=True, timeout=600, **kw)


def test_train_resume_export(photos, tmp_path):
    out = tmp_path / "run"
    r = _run(["--data", str(photos), "--out", str(out), "--steps", "3", *TINY])
    assert r.returncode == 0, r.stderr
    log = [json.loads(line) for line in (out / "train.log").read_text().splitlines()]
    assert log[-1]["step"] == 3 and "psnr@64" in log[-1] and (out / "last.ckpt").exists()
    r = _run(["--data", str(photos), "--out", str(out), "--steps", "5", "--resume", *TINY])
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "train.log").read_text().splitlines()[-1])["step"] == 5
    r = _run(["--data", str(photos), "--out", str(out), "--name", "tiny", "--export", str(tmp_path / "w")])
    assert r.returncode == 0, r.stderr
    (weights,) = (tmp_path / "w").glob("tiny-*.safetensors")
    card = json.loads((tmp_path / "w" / "tiny.json").read_text())
    assert card["steps"] == 5 and card["config"]["levels"] == [4, 8, 20]

    from jscc_stream.models.packet_codec import PacketCodec

    codec = PacketCodec.load(str(weights), device="cpu")
    frame = cv2.cvtColor(builtin_eval_images(320, 240)["rocket"], cv2.COLOR_RGB2BGR)
    assert codec.decode(codec.encode(frame, 4800), 320, 240).shape == (240, 320, 3)


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
                    reason="torchrun not installed")
def test_distributed_training_with_torchrun(photos, tmp_path):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = tmp_path / "ddp"
    import socket

    with socket.socket() as sock:  # a free TCP port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = subprocess.run([torchrun, "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(port),
                        "-m", "jscc_stream.models.rd_train",
                        "--data", str(photos), "--out", str(out), "--steps", "2", *TINY],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "train.log").read_text().splitlines()[-1])["step"] == 2


def test_bad_device_is_one_line(photos, tmp_path):
    r = subprocess.run([sys.executable, "-m", "jscc_stream.models.train", "--arch", "rd", "--data", str(photos),
                        "--out", str(tmp_path), "--device", "tpu"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "jscc-train: error: --device: device must be auto, cpu or cuda[:N], got 'tpu'"]
