"""The stream description (protobuf) <-> what the receiver needs to reassemble and decode."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from .packet import WIRE_VERSION, WireError

__all__ = ["LatentLayout", "StreamInfo", "make_description", "parse_description", "MAX_FRAME_BYTES", "CODEC_KINDS",
           "ANALOG_F16", "with_reference_levels"]

#: Reject descriptions whose frames would need more memory than this (bounded receivers).
MAX_FRAME_BYTES = 16 << 20
#: Analog codecs (paper 002): block bytes are unit-power latent values, little-endian float16.
ANALOG_F16 = "analog-f16"
#: The codec kinds a description may name ("" = quantized codes).
CODEC_KINDS = ("", ANALOG_F16)


@dataclass(frozen=True)
class LatentLayout:
    """Shape of one encoded frame on the wire: ``blocks`` rows of ``alpha*h*w`` bytes (``bits``-bit
    elements, SCR order when ``scr``) for a ``width`` x ``height`` picture."""

    width: int
    height: int
    blocks: int
    alpha: int
    h: int
    w: int
    bits: int
    scr: bool

    @property
    def block_bytes(self) -> int:
        return self.alpha * self.h * self.w

    @property
    def frame_bytes(self) -> int:
        return self.blocks * self.block_bytes


@dataclass(frozen=True)
class StreamInfo:
    """A validated stream description."""

    ssrc: int
    revision: int
    codec_name: str
    codec_sha256: str
    layout: LatentLayout
    fps: float
    block_levels: tuple[int, ...]
    dscp_map: dict[int, int]
    clock_epoch_unix_us: int
    mtu: int
    entropy_coded: bool = False  # media are whole codec payloads (PT 98), one level each
    max_frame_payloads: int = 0
    #: predicted frames keep as reference the picture decoded from levels below this (0: all);
    #: a relay sets it to its least-subscribed receiver's levels
    reference_levels: int = 0
    codec_kind: str = ""  # "analog-f16": block bytes are float16 values (alpha = 2 bytes each)


def make_description(*, ssrc: int, revision: int, codec_name: str, codec_sha256: str, layout: LatentLayout,
                     fps: float, block_levels: list[int], dscp_map: dict[int, int] | None,
                     clock_epoch_unix_us: int, mtu: int, max_frame_payloads: int = 0,
                     codec_kind: str = "") -> bytes:
    """Serialize a description of a stream whose frames have ``layout`` (an entropy-coded
    stream when ``max_frame_payloads`` > 0; an analog one when ``codec_kind`` says so)."""
    from .stream_pb2 import StreamDescription

    msg = StreamDescription(
        version=WIRE_VERSION, ssrc=ssrc, revision=revision, codec_name=codec_name,
        codec_sha256=codec_sha256, blocks=layout.blocks, alpha=layout.alpha, latent_h=layout.h,
        latent_w=layout.w, quant_bits=layout.bits, scr=layout.scr, width=layout.width,
        height=layout.height, fps=fps, block_level=block_levels, clock_epoch_unix_us=clock_epoch_unix_us,
        mtu=mtu, entropy_coded=max_frame_payloads > 0, max_frame_payloads=max_frame_payloads,
        codec_kind=codec_kind)
    for level, dscp in sorted((dscp_map or {}).items()):
        msg.dscp_map.add(level=level, dscp=dscp)
    return msg.SerializeToString()


def parse_description(body: bytes) -> StreamInfo:
    """Bytes of a PT 97 payload -> :class:`StreamInfo`, or :class:`WireError`."""
    from .stream_pb2 import StreamDescription

    msg = StreamDescription()
    try:
        msg.ParseFromString(body)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise WireError(f"bad stream description: {exc}") from None
    if msg.version != WIRE_VERSION:
        raise WireError(f"stream description version {msg.version}, this receiver speaks {WIRE_VERSION}")
    dims = (msg.blocks, msg.alpha, msg.latent_h, msg.latent_w, msg.width, msg.height)
    if min(dims) <= 0 or msg.blocks > 255:
        raise WireError(f"stream description has invalid sizes {dims}")
    if msg.blocks * msg.alpha * msg.latent_h * msg.latent_w > MAX_FRAME_BYTES:
        raise WireError("stream description frame too large")
    if len(msg.block_level) != msg.blocks:
        raise WireError(f"{len(msg.block_level)} importance levels for {msg.blocks} blocks")
    if not 1 <= msg.quant_bits <= 8:
        raise WireError(f"quantization bits {msg.quant_bits} out of range")
    if msg.entropy_coded and not 0 < msg.max_frame_payloads <= MAX_FRAME_BYTES // 512:
        raise WireError(f"entropy-coded stream with {msg.max_frame_payloads} payloads per frame at most")
    if msg.codec_kind not in CODEC_KINDS:
        raise WireError(f"unknown codec kind {msg.codec_kind[:40]!r}")
    return StreamInfo(
        ssrc=msg.ssrc, revision=msg.revision, codec_name=msg.codec_name, codec_sha256=msg.codec_sha256,
        layout=LatentLayout(width=msg.width, height=msg.height, blocks=msg.blocks, alpha=msg.alpha, h=msg.latent_h,
                            w=msg.latent_w, bits=msg.quant_bits, scr=msg.scr), fps=msg.fps,
        block_levels=tuple(msg.block_level), dscp_map={r.level: r.dscp for r in msg.dscp_map},
        clock_epoch_unix_us=msg.clock_epoch_unix_us, mtu=msg.mtu, entropy_coded=msg.entropy_coded,
        max_frame_payloads=msg.max_frame_payloads if msg.entropy_coded else 0,
        reference_levels=min(msg.reference_levels, msg.blocks), codec_kind=msg.codec_kind)


def with_reference_levels(body: bytes, levels: int) -> bytes:
    """A description (PT 97 payload) with ``reference_levels`` set, as a relay forwards it;
    :class:`WireError` when ``body`` is not one."""
    from .stream_pb2 import StreamDescription

    msg = StreamDescription()
    try:
        msg.ParseFromString(body)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise WireError(f"bad stream description: {exc}") from None
    msg.reference_levels = max(0, levels)
    return msg.SerializeToString()
