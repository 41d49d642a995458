"""jscc-eval end to end on a tiny image set, and its handling of bad input."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from jscc_stream.models.evaluate import main


@pytest.fixture()
def tiny_images(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:128]
    for i in range(2):
        base = np.stack([np.sin(xx / (5 + i)) , np.cos(yy / 7), np.sin((xx + yy) / 9)], -1)
        img = ((base * 0.4 + 0.5 + rng.normal(0, 0.03, base.shape)).clip(0, 1) * 255).astype(np.uint8)
        cv2.imwrite(str(d / f"img{i}.png"), img)
    return d


def test_eval_end_to_end_on_tiny_set(tiny_images, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(["--images", str(tiny_images), "--sizes", "128x96", "--trials", "2", "--out", str(out),
               "--log-level", "warning"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert {"blocks", "loss", "mismatch", "ladder", "uep", "checks"} <= set(res)
    loss = res["loss"]["128x96"]
    codecs = {r["codec"] for r in loss}
    assert {"fixed-uniform", "fixed-ladder", "fixed-noerasure", "jpeg", "jpeg2000"} <= codecs
    for r in loss:
        assert 5 < r["psnr_mean"] < 60 and r["psnr_var"] >= 0
    for name in res["plots"]:
        assert (out / name).stat().st_size > 1000
    assert (out / "summary.md").read_text().startswith("# jscc-eval summary")
    assert "Packet loss at 128x96" in capsys.readouterr().out
    # more leading blocks never hurt the ladder codec by much, and all blocks beat one block
    lead = [r["psnr"] for r in res["blocks"]["128x96"] if r["model"] == "fixed-ladder" and r["pattern"] == "leading"]
    assert lead[-1] > lead[0]


@pytest.mark.parametrize("args,msg", [
    (["--experiments", "bogus"], "unknown experiments"),
    (["--sizes", "big"], "size must be WxH"),
    (["--models", "nope"], "none of the codecs"),
    (["--images", "/nonexistent"], "does not exist"),
    (["--bits", "9"], "--bits"),
])
def test_eval_bad_input_is_one_line_error(args, msg, tmp_path, capsys) -> None:
    rc = main(args + ["--out", str(tmp_path / "o"), "--sizes", "64x48"] if "--sizes" not in args else
              args + ["--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and err.count("\n") == 1


def test_eval_entropy_coded_experiments_end_to_end(tiny_images, tiny_rd_weights, tmp_path) -> None:
    out = tmp_path / "rd"
    rc = main(["--images", str(tiny_images), "--sizes", "128x96", "--experiments", "rd,rdloss,rdlevels",
               "--rd-models", str(tiny_rd_weights), "--trials", "2", "--out", str(out), "--log-level", "warning"])
    assert rc == 0
    summary = (out / "rd" / "summary.md").read_text()
    assert "BD-rate of" in summary and "uniform 10%" in summary and "first j levels" in summary
    rows = list(csv.DictReader(open(out / "rd" / "rd_128x96.csv")))
    assert {r["codec"] for r in rows} >= {str(tiny_rd_weights), "jpeg", "jpeg2000", "webp"}
    ours = [r for r in rows if r["codec"] == str(tiny_rd_weights)]
    assert all(int(r["bytes"]) <= float(r["target_bpp"]) * 128 * 96 / 8 for r in ours if float(r["target_bpp"]) >= 0.25)
    assert (out / "rd" / "rd_psnr_128x96.png").stat().st_size > 0
    assert main(["--experiments", "rd", "--rd-models", "nope", "--out", str(out)]) == 2
