"""Paper 002's analog channel and objectives: the AWGN channel on power-normalised values (netem),
the AE / VAE / VSCC loss terms against independent computations, and jscc-train --channel."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from jscc_stream.errors import UserError
from jscc_stream.models.analog import (AnalogCodec, AnalogConfig, kl_gauss, kl_terms, normalize_power,
                                       objective_loss)
from jscc_stream.netem.awgn import AwgnChannel, parse_channel_spec
from jscc_stream.netem.awgn import normalize_power as np_normalize_power


def test_power_normalisation_is_exact() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 7.0, size=4096)
    y, scale = np_normalize_power(x)
    assert np.mean(y * y) == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(y, x * scale)
    zeros, s = np_normalize_power(np.zeros(8))
    assert s == 1.0 and not zeros.any()
    t = torch.randn(5, 4, 6, 7) * torch.arange(1, 6).view(5, 1, 1, 1)
    per_image = normalize_power(t).pow(2).flatten(1).mean(1)
    assert torch.allclose(per_image, torch.ones(5), atol=1e-6)


@pytest.mark.parametrize("snr_db", [-10.0, -5.0, 0.0, 5.0, 15.0, 25.0])
def test_measured_snr_matches_the_spec(snr_db: float) -> None:
    ch = parse_channel_spec(f"awgn:{snr_db:g}")
    assert ch.noise_var == pytest.approx(10 ** (-snr_db / 10))
    x, _ = np_normalize_power(np.random.default_rng(2).normal(size=200_000))
    noise = ch.add_noise(x, np.random.default_rng(3)) - x
    measured = 10 * math.log10(np.mean(x * x) / np.mean(noise.astype(np.float64) ** 2))
    assert measured == pytest.approx(snr_db, abs=0.05)
    assert abs(noise.mean()) < 5 * ch.noise_std / math.sqrt(x.size)  # zero mean


@pytest.mark.parametrize("spec", ["awgn", "awgn:", "awgn:loud", "gauss:5", "awgn:nan", "awgn:-45", "awgn:90", "5"])
def test_bad_channel_specs_are_rejected(spec: str) -> None:
    with pytest.raises(UserError):
        parse_channel_spec(spec)


def test_channel_spec_accepts_db_suffix_and_negative() -> None:
    assert parse_channel_spec("awgn:-5").snr_db == -5.0
    assert parse_channel_spec("AWGN:12.5dB").snr_db == 12.5
    assert str(AwgnChannel(5.0)) == "awgn:5"


def _case() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, generator=g, dtype=torch.float64), torch.randn(64, generator=g, dtype=torch.float64) - 1


def test_kl_closed_form_matches_torch_and_monte_carlo() -> None:
    mu, logvar = _case()
    var = logvar.exp()
    for var_q in (1.0, 0.5, 7.3):
        ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, var.sqrt()),
                                                torch.distributions.Normal(0.0, math.sqrt(var_q)))
        assert torch.allclose(kl_gauss(mu, var, var_q), ref, atol=1e-12)
    # Monte Carlo of E_p[log p - log q] for one element
    p = torch.distributions.Normal(mu[3], var[3].sqrt())
    q = torch.distributions.Normal(0.0, math.sqrt(2.0))
    s = p.sample((400_000,))
    mc = (p.log_prob(s) - q.log_prob(s)).mean().item()
    assert kl_gauss(mu[3], var[3], 2.0).item() == pytest.approx(mc, abs=0.01)


def test_vae_kl_is_eq_11_and_vscc_prior_variance_is_noise_plus_cmc() -> None:
    mu, logvar = _case()
    var = logvar.exp()
    eq11 = 0.5 * (-logvar + var + mu ** 2 - 1)
    assert torch.allclose(kl_terms("vae", mu, logvar, 0.3, 5.0), eq11)
    nv, d = 0.316, 10.0
    vscc = kl_terms("vscc", mu, logvar, nv, d)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, (var + nv).sqrt()),
                                            torch.distributions.Normal(0.0, math.sqrt(nv + d)))
    assert torch.allclose(vscc, ref, atol=1e-12)
    eq9 = 0.5 * (torch.log((nv + d) / (var + nv)) + (mu ** 2 + var + nv) / (nv + d) - 1)
    assert torch.allclose(vscc, eq9)
    # zero exactly where the posterior equals the prior: mu = 0, s^2 = d
    assert kl_terms("vscc", torch.zeros(1), torch.tensor([math.log(d)]), nv, d).abs().item() < 1e-6
    with pytest.raises(ValueError):
        kl_terms("vscc", mu, logvar, nv, 0.0)


def test_ae_has_no_kl_term() -> None:
    assert kl_terms("ae", torch.zeros(3), None, 0.1, 5.0) is None
    x, x_hat = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    loss, parts = objective_loss(x, x_hat, None, kl_weight=123.0)
    assert loss.item() == pytest.approx(torch.mean((x - x_hat) ** 2).item()) and parts["kl"] == 0.0
    model = AnalogCodec(AnalogConfig(channels=2, width=8, objective="ae"))
    mu, logvar = model.encode(torch.rand(1, 3, 16, 16))
    assert logvar is None and mu.shape == (1, 2, 4, 4)


def test_variational_codec_sends_unit_power_means_and_resamples_with_the_knowledge_base() -> None:
    torch.manual_seed(0)
    model = AnalogCodec(AnalogConfig(channels=3, width=8, objective="vscc")).eval()
    x = torch.rand(2, 3, 20, 28)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (2, 3, 5, 7)
    assert torch.allclose(mu.pow(2).flatten(1).mean(1), torch.ones(2), atol=1e-5)
    g = torch.Generator().manual_seed(1)
    assert model.transmit(x, 0.1, g).shape == x.shape
    z = torch.zeros(1, 3, 5, 7)
    assert torch.equal(model.resample(z, None), z)  # knowledge-base variance still zero
    model.kb_var.fill_(4.0)
    assert model.resample(torch.zeros(1, 3, 64, 64), None).std().item() == pytest.approx(2.0, rel=0.05)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three noise 'photographs' of 320x240 (the crop sampler wants a short side of 240)."""
    import cv2

    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(d / f"p{i}.png"), rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    return d


def test_jscc_train_channel_writes_an_analog_card(photos: Path, tmp_path: Path) -> None:
    from jscc_stream.models.train import main as train_main
    from jscc_stream.models.zoo import load_codec

    args = ["--data", str(photos), "--val-count", "1", "--out", str(tmp_path), "--name", "a", "--channel", "awgn:5",
            "--objective", "vscc", "--cmc", "2", "--steps", "2", "--crop", "16", "--batch", "2", "--threads", "1",
            "--analog-channels", "2"]
    assert train_main(args) == 0
    card = json.loads((tmp_path / "a.json").read_text())
    assert card["kind"] == "analog-f16" and card["objective"] == "vscc" and card["cmc"] == 2.0
    assert card["training_snr_db"] == 5.0 and card["steps"] == 2 and len(card["kb_var"]) == 2
    model, _ = load_codec(tmp_path / card["weights_file"])
    assert isinstance(model, AnalogCodec) and model.cfg.objective == "vscc"
    assert train_main([*args, "--steps", "3", "--resume"]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["steps"] == 3
    assert train_main([*args[:-2], "--cmc", "0"]) == 2
    assert train_main([*args[:8], "--channel", "awgn:x"]) == 2


def test_awgn_experiment_trains_what_is_missing_then_reads_it_back(photos: Path, tmp_path: Path) -> None:
    from jscc_stream.models.awgn_eval import AwgnPlan, run_awgn

    plan = AwgnPlan(train_snrs=(5.0,), cmcs=(1.0, 2.0), test_snrs=(0.0, 10.0), steps=2, batch=2, crop=16)
    res = run_awgn(plan, tmp_path / "out", tmp_path / "models", [str(photos)], "cpu", image_size=(32, 24))
    assert sorted(res["models"]) == ["awgn5-ae", "awgn5-vae", "awgn5-vscc-d1", "awgn5-vscc-d2"]
    assert len(res["rows"]) == 4 * 2 and {r["test_snr_db"] for r in res["rows"]} == {0.0, 10.0}
    assert res["best_cmc_by_validation"]["5"] in (1.0, 2.0)
    assert all((tmp_path / "out" / p).is_file() for p in res["plots"]) and len(res["plots"]) == 4
    again = run_awgn(plan, tmp_path / "out2", tmp_path / "models", None, "cpu", image_size=(32, 24))
    assert again["rows"] == res["rows"]  # same weights read back, same seeded noise


def test_jscc_eval_runs_awgn_only_when_named() -> None:
    from jscc_stream.models.evaluate import build_parser

    assert "awgn" not in build_parser().parse_args([]).experiments.split(",")
    assert build_parser().parse_args(["--experiments", "awgn"]).experiments == "awgn"
