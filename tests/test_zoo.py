"""Weights load by name or path, never unpickle, and reject corrupt or foreign files clearly."""

from __future__ import annotations

import json

import pytest
import torch

from jscc_stream.models.codec import CodecConfig, JSCCCodec
from jscc_stream.models.zoo import CodecLoadError, available_codecs, load_codec, save_codec

FIXED = ("fixed-uniform", "fixed-ladder", "fixed-noerasure")
ENTROPY_CODED = ("uniform", "ladder", "noerasure")


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = JSCCCodec(CodecConfig(widths=(8, 8, 16, 16), enc_res=(0, 0, 0, 1), dec_res=(0, 0, 0, 1), mca_width=8))
    path = save_codec(model, tmp_path, "tiny", {"training_loss": "uniform:0.1", "steps": 1})
    return model, path


def test_save_writes_hashed_name_and_card(saved) -> None:
    model, path = saved
    assert path.name.startswith("tiny-") and path.suffix == ".safetensors"
    card = json.loads(path.with_name("tiny.json").read_text())
    assert card["sha256"].startswith(path.stem.split("-")[1])
    assert card["config"]["widths"] == [8, 8, 16, 16]


def test_load_by_path_round_trips(saved) -> None:
    model, path = saved
    loaded, card = load_codec(path)
    assert card["training_loss"] == "uniform:0.1"
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():  # fp16 storage: close, not bit-identical
        assert torch.allclose(model.eval().encode(x), loaded.encode(x), atol=2e-2)


@pytest.mark.parametrize("name", FIXED)
def test_shipped_weights_load_by_name(name: str) -> None:
    assert name in available_codecs()
    model, card = load_codec(name)
    assert isinstance(model, JSCCCodec)
    assert card["name"] == name and card["blocks"] == 8 and card["alpha"] == 2
    assert {"training_data", "steps", "wall_time_s", "validation", "training_loss", "renamed_from"} <= set(card)


@pytest.mark.parametrize("name", ENTROPY_CODED)
def test_shipped_entropy_coded_weights_load_by_name(name: str) -> None:
    from jscc_stream.models.packet_codec import PacketCodec
    from jscc_stream.models.transform import RDCodec

    assert name in available_codecs()
    model, card = load_codec(name)
    assert isinstance(model, RDCodec) and card["name"] == name and card["erasures"] == {"noerasure": "none"}.get(name, name)
    assert {"steps", "wall_time_s", "images", "validation (held-out crops, 256x256, EMA)"} <= set(card)
    codec = PacketCodec.load(name, device="cpu")
    assert codec.name == name and codec.sha256 == card["sha256"]


def test_corrupt_file_is_rejected(saved, tmp_path) -> None:
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CodecLoadError, match="corrupt"):
        load_codec(path)


def test_truncated_file_without_hash_name_is_rejected(saved, tmp_path) -> None:
    _, path = saved
    bad = tmp_path / "renamed.safetensors"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CodecLoadError, match="not a valid safetensors"):
        load_codec(bad)


def test_pickle_is_never_loaded(tmp_path) -> None:
    evil = tmp_path / "evil.safetensors"
    torch.save({"x": torch.zeros(1)}, evil)  # a pickle in disguise
    with pytest.raises(CodecLoadError):
        load_codec(evil)


def test_unknown_name_lists_available() -> None:
    with pytest.raises(CodecLoadError, match="unknown codec 'nope'"):
        load_codec("nope")


def test_missing_path() -> None:
    with pytest.raises(CodecLoadError, match="does not exist"):
        load_codec("/nonexistent/w.safetensors")


def test_name_lookup_is_exact(tmp_path, monkeypatch) -> None:
    """'uniform' must not also match 'uniform-0.3-HASH.safetensors'."""
    from jscc_stream.models import zoo

    torch.manual_seed(0)
    model = JSCCCodec(CodecConfig(widths=(8, 8, 16, 16), enc_res=(0, 0, 0, 1), dec_res=(0, 0, 0, 1), mca_width=8))
    a = save_codec(model, tmp_path, "uniform", {"training_loss": "uniform:0.1"})
    b = save_codec(model, tmp_path, "uniform-0.3", {"training_loss": "uniform:0.3"})
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path)
    assert zoo.resolve_weights("uniform") == a and zoo.resolve_weights("uniform-0.3") == b
    assert a.exists() and b.exists()  # saving one never deletes the other
    assert set(zoo.available_codecs()) == {"uniform", "uniform-0.3"}


def test_shipped_analog_codec_loads_by_name_and_is_small() -> None:
    from jscc_stream.models.analog import AnalogCodec
    from jscc_stream.models.analog_stream import AnalogFrameCodec
    from jscc_stream.models.stream_codec import load_stream_codec
    from jscc_stream.models.zoo import resolve_weights

    model, card = load_codec("analog")
    assert isinstance(model, AnalogCodec) and card["kind"] == "analog-f16" and card["objective"] == "vscc"
    assert {"training_snr_db", "cmc", "kb_var", "steps", "wall_time_s", "validation", "training_data"} <= set(card)
    assert resolve_weights("analog").stat().st_size < 1 << 20
    assert isinstance(load_stream_codec("analog", device="cpu"), AnalogFrameCodec)
