"""jscc-train end to end on a tiny codec: card contents, checkpoint resume, fine-tuning options,
and one-line errors for bad options."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from jscc_stream.models.train import main as train_main
from jscc_stream.models.zoo import load_codec

TINY = ["--widths", "8,8,16,16", "--crop", "32", "--batch", "2", "--threads", "1", "--val-every", "2",
        "--ckpt-every", "2", "--loss", "uniform:0.2"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Four smooth 320x240 'photographs' (the sampler wants a short side of at least 240)."""
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:320].astype(np.float32)
    for i in range(4):
        f = rng.uniform(0.01, 0.05, size=3)
        img = np.stack([np.sin(xx * f[c] + yy * f[(c + 1) % 3] + i) for c in range(3)], -1) * 100 + 128
        cv2.imwrite(str(d / f"p{i}.png"), img.clip(0, 255).astype(np.uint8))
    return d


def _card(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text())


def test_trains_resumes_and_writes_a_card(photos: Path, tmp_path: Path) -> None:
    args = ["--data", str(photos), "--out", str(tmp_path), "--name", "t", *TINY]
    assert train_main([*args, "--steps", "4"]) == 0
    card = _card(tmp_path, "t")
    assert card["config"]["linear_taps"] == 3 and card["ema_decay"] == 0.999
    assert card["steps"] == 4 and card["total_steps"] == 4
    assert [h["step"] for h in card["validation_history"]] == [2, 4]
    assert {"psnr_all_blocks", "psnr_train_loss", "psnr_first_block"} <= set(card["validation"])
    assert card["training_data"] == ["p0.png", "p1.png"] and card["validation_data"] == ["p2.png", "p3.png"]
    # --resume continues the same run from its checkpoint
    assert train_main([*args, "--steps", "6", "--resume"]) == 0
    card = _card(tmp_path, "t")
    assert card["steps"] == 6 and [h["step"] for h in card["validation_history"]] == [2, 4, 6]
    model, _ = load_codec(tmp_path / card["weights_file"])
    assert model.cfg.widths == (8, 8, 16, 16)


def test_fine_tune_widens_the_synthesis_and_sets_the_checkerboard(photos: Path, tmp_path: Path) -> None:
    base = ["--data", str(photos), "--out", str(tmp_path), *TINY, "--steps", "2"]
    assert train_main([*base, "--name", "a", "--linear-taps", "1"]) == 0
    first = tmp_path / _card(tmp_path, "a")["weights_file"]
    assert train_main([*base, "--name", "b", "--init", str(first), "--linear-taps", "3",
                       "--checker-swap", "1,2"]) == 0
    card = _card(tmp_path, "b")
    assert card["config"]["linear_taps"] == 3 and card["config"]["checker_swap"] == [[1, 2]]
    assert card["init_from"] == "a" and card["total_steps"] == 4  # the chain's steps add up
    model, _ = load_codec(tmp_path / card["weights_file"])
    assert model.cfg.checker_swap == ((1, 2),)


@pytest.mark.parametrize("extra, message", [
    (["--linear-taps", "2"], "linear_taps must be an odd number"),
    (["--ema", "1"], "--ema must be in [0, 1)"),
    (["--checker-swap", "1"], "--checker-swap: expected two channel numbers"),
    (["--checker-swap", "3,3"], "--checker-swap: checker_swap must be disjoint pairs"),
])
def test_bad_options_are_one_line_errors(photos: Path, tmp_path: Path, capsys, extra, message) -> None:
    code = train_main(["--data", str(photos), "--out", str(tmp_path), "--name", "x", *TINY, "--steps", "1", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
