"""The codec a stream runs, by shipped name or weights path, whatever its kind: a fixed-rate
JSCC codec (:class:`.frame_codec.FrameCodec`), an entropy-coded still-image codec
(:class:`.packet_codec.PacketCodec`) or a video codec with predicted frames
(:class:`.video_codec.VideoCodec`: an inter model whose card names its intra codec) or an analog
codec sending float16 latent values (:class:`.analog_stream.AnalogFrameCodec`, paper 002)."""

from __future__ import annotations

from pathlib import Path

from .analog import AnalogCodec
from .analog_stream import AnalogFrameCodec
from .frame_codec import FrameCodec, pick_device
from .packet_codec import PacketCodec
from .transform import RDCodec
from .video_codec import VideoCodec
from .zoo import CodecLoadError, load_codec

__all__ = ["load_stream_codec"]


def load_stream_codec(name_or_path: str | Path, device: str = "auto", precision: str = "auto",
                      bits: int = 8):
    """The codec a stream runs, by shipped name or weights path (see the module docstring)."""
    dev = pick_device(device)
    model, card = load_codec(name_or_path, device=dev)
    if isinstance(model, RDCodec) and card.get("role") == "inter":
        intra = load_stream_codec(card.get("intra", "uniform"), device, precision)
        if not isinstance(intra, PacketCodec) or intra.model.cfg.levels != model.cfg.levels:
            raise CodecLoadError(f"{name_or_path}: its intra codec {card.get('intra')!r} does not match it")
        return VideoCodec(intra, PacketCodec(model, card, dev, precision), card)
    if isinstance(model, RDCodec):
        return PacketCodec(model, card, dev, precision)
    if isinstance(model, AnalogCodec):
        return AnalogFrameCodec(model, card, dev)
    return FrameCodec(model, card, dev, bits, precision)
