"""Shipped weights, found by name (CompressAI-style zoo), and safe (de)serialisation.

Weights are safetensors files named ``NAME-HASH8.safetensors`` where HASH8 is the start of the
file's sha256; the model card (JSON) sits beside them as ``NAME.json`` and is also embedded in
the safetensors metadata, so a copied weights file stays self-describing.  Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from jscc_stream.errors import UserError

from .analog import AnalogCodec, AnalogConfig
from .codec import CodecConfig, JSCCCodec
from .transform import RDCodec, RDConfig

__all__ = ["WEIGHTS_DIR", "CodecLoadError", "available_codecs", "load_codec", "save_codec",
           "resolve_weights", "sha256_file"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class CodecLoadError(UserError, RuntimeError):
    """Weights could not be found or are not a valid codec (message is user-facing)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def available_codecs() -> list[str]:
    return sorted({p.name.rsplit("-", 1)[0] for p in WEIGHTS_DIR.glob("*-*.safetensors")})


def resolve_weights(name_or_path: str | Path) -> Path:
    """A shipped name (``uniform``) or a path to a ``.safetensors`` file -> the file."""
    p = Path(name_or_path)
    if p.suffix == ".safetensors" or p.exists():
        if not p.is_file():
            raise CodecLoadError(f"weights file {p} does not exist")
        return p
    matches = sorted(m for m in WEIGHTS_DIR.glob(f"{name_or_path}-*.safetensors")
                     if m.stem.rsplit("-", 1)[0] == str(name_or_path))  # "uniform" is not "uniform-0.3"
    if not matches:
        names = ", ".join(available_codecs()) or "none shipped"
        raise CodecLoadError(f"unknown codec {str(name_or_path)!r} (available: {names}; or give a .safetensors path)")
    if len(matches) > 1:
        raise CodecLoadError(f"several weights files for {name_or_path!r}: {[m.name for m in matches]}")
    return matches[0]


def _model_from_card(config: dict) -> JSCCCodec | RDCodec:
    """The architecture a card names: the rate-distortion codec (``rd-*``) or the
    fixed-rate JSCC codec of papers 000/001."""
    if str(config.get("arch", "")).startswith("rd-"):
        return RDCodec(RDConfig.from_dict(config))
    if str(config.get("arch", "")).startswith("analog-"):
        return AnalogCodec(AnalogConfig.from_dict(config))
    return JSCCCodec(CodecConfig.from_dict(config))


def load_codec(name_or_path: str | Path = "uniform", device: str | torch.device = "cpu",
               verify_hash: bool = True) -> tuple[JSCCCodec | RDCodec, dict[str, Any]]:
    """Load a codec by shipped name or path; returns ``(model in eval mode, model card)``."""
    path = resolve_weights(name_or_path)
    if verify_hash and "-" in path.stem:
        expected = path.stem.rsplit("-", 1)[1]
        if len(expected) == 8 and all(c in "0123456789abcdef" for c in expected):
            actual = sha256_file(path)
            if not actual.startswith(expected):
                raise CodecLoadError(
                    f"{path.name} is corrupt: sha256 starts {actual[:8]}, the name says {expected}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = {k: v.float() if v.is_floating_point() else v
                 for k, v in load_file(str(path), device="cpu").items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CodecLoadError(f"{path} is not a valid safetensors weights file ({exc})") from None
    if "card" not in meta:
        raise CodecLoadError(f"{path} has no model card in its metadata")
    try:
        card = json.loads(meta["card"])
        model = _model_from_card(card["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CodecLoadError(f"{path} has an invalid model card ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CodecLoadError(f"{path} does not match its architecture: {str(exc)[:300]}") from None
    card["weights_file"] = path.name
    card["sha256"] = sha256_file(path) if verify_hash else card.get("sha256", "")
    return model.to(device=device, memory_format=torch.channels_last).eval(), card


def save_codec(model: JSCCCodec | RDCodec, out_dir: str | Path, name: str, card: dict[str, Any]) -> Path:
    """Write ``NAME-HASH8.safetensors`` (card embedded) and ``NAME.json``; returns the weights."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    card = {**card, "name": name, "config": model.cfg.to_dict()}
    # float16 on disk halves the shipped size; weights are used in float32 (loss < 0.01 dB).
    state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()).contiguous()
             for k, v in model.state_dict().items()}
    tmp = out_dir / f"{name}.tmp.safetensors"
    save_file(state, str(tmp), metadata={"card": json.dumps(card, sort_keys=True)})
    digest = sha256_file(tmp)
    for old in out_dir.glob(f"{name}-*.safetensors"):
        if old.stem.rsplit("-", 1)[0] == name:
            old.unlink()
    final = out_dir / f"{name}-{digest[:8]}.safetensors"
    tmp.replace(final)
    card_out = {**card, "weights_file": final.name, "sha256": digest}
    (out_dir / f"{name}.json").write_text(json.dumps(card_out, indent=2, sort_keys=True) + "\n")
    return final
