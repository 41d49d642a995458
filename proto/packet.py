"""One datagram on the wire: an RTP packet (aiortc's class) whose payload is a block fragment
behind a 12-byte JSCC payload header (PT 96, fixed-rate codecs), a whole self-contained codec
payload behind a 12-byte payload header (PT 98, entropy-coded codecs), a Reed-Solomon parity packet
over a frame's first payloads (PT 99, ``proto.protection``) or a stream description (PT 97).

See ``docs/wire-format.md`` for the byte diagram.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from aiortc.rtp import RtpPacket

__all__ = ["PT_MEDIA", "PT_DESCRIPTION", "PT_PAYLOAD", "RTP_HEADER_BYTES", "JSCC_HEADER_BYTES", "DATAGRAM_LIMIT",
           "MEDIA_PAYLOAD_BYTES", "WIRE_VERSION", "CLOCK_RATE", "WireError", "FragmentHeader", "PayloadHeader",
           "MediaPacket", "PayloadPacket", "DescriptionPacket", "build_media", "build_payload", "build_description",
           "parse_datagram", "IP_UDP_BYTES", "PT_PARITY", "ParityHeader", "ParityPacket", "build_parity"]

PT_MEDIA = 96
PT_DESCRIPTION = 97
PT_PAYLOAD = 98
PT_PARITY = 99
RTP_HEADER_BYTES = 12
JSCC_HEADER_BYTES = 12
#: The design's largest datagram (UDP payload), RTP header and extensions included.
DATAGRAM_LIMIT = 900
#: Block bytes one datagram of that size carries behind the RTP and JSCC headers.
MEDIA_PAYLOAD_BYTES = DATAGRAM_LIMIT - RTP_HEADER_BYTES - JSCC_HEADER_BYTES
WIRE_VERSION = 1
IP_UDP_BYTES = 28  # IPv4 + UDP headers: what a bottleneck charges beyond the datagram
CLOCK_RATE = 90_000  # RTP timestamp ticks per second (video convention)
MAX_OFFSET = (1 << 24) - 1

_HDR = struct.Struct("!IBBBBI")  # frame id | block, level, frag index, frag count | revision<<24 | offset
_PHDR = struct.Struct("!IBBHHBB")  # frame id | level, protected | payload index | payload count | revision, layer
_QHDR = struct.Struct("!IBBBBHBB")  # frame id | k, n, share index, revision | payload count | level, 0
MAX_PAYLOADS = 0xFFFF


class WireError(ValueError):
    """A datagram that is not a valid jscc-stream packet (counted by receivers, never raised out)."""


@dataclass(frozen=True, slots=True)
class FragmentHeader:
    """The JSCC payload header in front of every block fragment."""

    frame_id: int  # sender's capture index, 32-bit
    block: int  # 0..K-1, block 0 most important
    level: int  # importance level (drives DSCP)
    frag_index: int
    frag_count: int
    revision: int  # low 8 bits of the stream description revision this frame was encoded under
    offset: int  # byte offset of this fragment inside the block (24-bit)

    def pack(self) -> bytes:
        if not 0 <= self.offset <= MAX_OFFSET:
            raise ValueError(f"fragment offset {self.offset} does not fit 24 bits")
        return _HDR.pack(self.frame_id & 0xFFFFFFFF, self.block, self.level, self.frag_index,
                         self.frag_count, ((self.revision & 0xFF) << 24) | self.offset)

    @classmethod
    def unpack(cls, data: bytes) -> "FragmentHeader":
        if len(data) < JSCC_HEADER_BYTES:
            raise WireError(f"payload of {len(data)} bytes is shorter than the JSCC header")
        fid, block, level, fi, fc, rev_off = _HDR.unpack_from(data)
        if fc == 0 or fi >= fc:
            raise WireError(f"bad fragment {fi}/{fc}")
        return cls(fid, block, level, fi, fc, rev_off >> 24, rev_off & MAX_OFFSET)


@dataclass(frozen=True, slots=True)
class PayloadHeader:
    """The header in front of every whole codec payload (PT 98)."""

    frame_id: int
    level: int  # importance level (drives DSCP), 0 most important
    index: int  # this payload's place in the frame, 0..count-1 (importance order)
    count: int  # payloads in the frame
    revision: int
    #: the frame's first ``protected`` payloads (its top levels) may be repaired: the receiver
    #: asks for them again (NACK) and parity packets cover them; 0 = none (older senders too)
    protected: int = 0
    #: bit layer (paper 003, ``jscc-send --bit-layers``): 0 = the coarse index (and every payload
    #: of a stream without layers; the byte was 0 before), 1.. = refinements, less important the
    #: higher: what a relay or receiver filters on without decoding (the DSCP may be rewritten)
    layer: int = 0

    def pack(self) -> bytes:
        if not 0 <= self.index < self.count <= MAX_PAYLOADS:
            raise ValueError(f"payload {self.index} of {self.count} out of range")
        if not 0 <= self.protected <= min(self.count, 255):
            raise ValueError(f"{self.protected} protected payloads of {self.count}")
        if not 0 <= self.layer <= 255:
            raise ValueError(f"bit layer {self.layer} does not fit a byte")
        return _PHDR.pack(self.frame_id & 0xFFFFFFFF, self.level, self.protected, self.index, self.count,
                          self.revision & 0xFF, self.layer)

    @classmethod
    def unpack(cls, data: bytes) -> "PayloadHeader":
        if len(data) < JSCC_HEADER_BYTES:
            raise WireError(f"payload of {len(data)} bytes is shorter than the JSCC header")
        fid, level, protected, index, count, rev, layer = _PHDR.unpack_from(data)
        if count == 0 or index >= count or protected > count:
            raise WireError(f"bad payload index {index}/{count} ({protected} protected)")
        return cls(fid, level, index, count, rev, protected, layer)


@dataclass(frozen=True, slots=True)
class ParityHeader:
    """The header of a parity packet: share ``index`` (k..n-1) of a Reed-Solomon code over the
    frame's payloads 0..k-1, with their importance levels (so a recovered payload gets its
    header back)."""

    frame_id: int
    k: int
    n: int
    index: int
    revision: int
    count: int  # payloads in the frame
    levels: tuple[int, ...]  # level of each of the k covered payloads
    level: int = 0  # the parity's own importance (DSCP): the least important level it covers

    def __post_init__(self) -> None:
        if not (1 <= self.k < self.n <= 255 and self.k <= self.index < self.n and self.k <= self.count
                and len(self.levels) == self.k):
            raise WireError(f"bad parity header k={self.k} n={self.n} index={self.index} count={self.count}")

    @property
    def size(self) -> int:
        return _QHDR.size + self.k

    def pack(self) -> bytes:
        return _QHDR.pack(self.frame_id & 0xFFFFFFFF, self.k, self.n, self.index, self.revision & 0xFF,
                          self.count, self.level, 0) + bytes(self.levels)

    @classmethod
    def unpack(cls, data: bytes) -> "ParityHeader":
        if len(data) < _QHDR.size:
            raise WireError(f"parity payload of {len(data)} bytes is shorter than its header")
        fid, k, n, index, rev, count, level, _ = _QHDR.unpack_from(data)
        if len(data) < _QHDR.size + k:
            raise WireError("parity header cut short")
        return cls(fid, k, n, index, rev, count, tuple(data[_QHDR.size:_QHDR.size + k]), level)


@dataclass(frozen=True, slots=True)
class ParityPacket:
    ssrc: int
    seq: int
    timestamp: int
    header: ParityHeader
    symbol: bytes


@dataclass(frozen=True, slots=True)
class PayloadPacket:
    ssrc: int
    seq: int
    timestamp: int
    marker: bool
    header: PayloadHeader
    data: bytes  # the codec payload


@dataclass(frozen=True, slots=True)
class MediaPacket:
    ssrc: int
    seq: int
    timestamp: int
    marker: bool
    header: FragmentHeader
    data: bytes  # the fragment's bytes


@dataclass(frozen=True, slots=True)
class DescriptionPacket:
    ssrc: int
    seq: int
    timestamp: int
    body: bytes  # serialized StreamDescription


def build_media(ssrc: int, seq: int, timestamp: int, marker: bool, header: FragmentHeader,
                data: bytes) -> bytes:
    pkt = RtpPacket(payload_type=PT_MEDIA, marker=int(marker), sequence_number=seq & 0xFFFF,
                    timestamp=timestamp & 0xFFFFFFFF, ssrc=ssrc, payload=header.pack() + data)
    return pkt.serialize()


def build_payload(ssrc: int, seq: int, timestamp: int, marker: bool, header: PayloadHeader,
                  data: bytes) -> bytes:
    pkt = RtpPacket(payload_type=PT_PAYLOAD, marker=int(marker), sequence_number=seq & 0xFFFF,
                    timestamp=timestamp & 0xFFFFFFFF, ssrc=ssrc, payload=header.pack() + data)
    return pkt.serialize()


def build_parity(ssrc: int, seq: int, timestamp: int, header: ParityHeader, symbol: bytes) -> bytes:
    pkt = RtpPacket(payload_type=PT_PARITY, sequence_number=seq & 0xFFFF, timestamp=timestamp & 0xFFFFFFFF,
                    ssrc=ssrc, payload=header.pack() + symbol)
    return pkt.serialize()


def build_description(ssrc: int, seq: int, timestamp: int, body: bytes) -> bytes:
    pkt = RtpPacket(payload_type=PT_DESCRIPTION, sequence_number=seq & 0xFFFF,
                    timestamp=timestamp & 0xFFFFFFFF, ssrc=ssrc, payload=body)
    return pkt.serialize()


def parse_datagram(data: bytes) -> MediaPacket | PayloadPacket | ParityPacket | DescriptionPacket:
    """Bytes off the socket -> a packet; anything else raises :class:`WireError`."""
    if len(data) < RTP_HEADER_BYTES:
        raise WireError(f"datagram of {len(data)} bytes is too short for RTP")
    if 192 <= data[1] <= 223:
        raise WireError("RTCP packet on the media path")
    try:
        pkt = RtpPacket.parse(data)
    except (ValueError, IndexError, struct.error) as exc:
        raise WireError(f"not RTP: {exc}") from None
    if pkt.payload_type == PT_MEDIA:
        header = FragmentHeader.unpack(pkt.payload)
        return MediaPacket(pkt.ssrc, pkt.sequence_number, pkt.timestamp, bool(pkt.marker), header,
                           bytes(pkt.payload[JSCC_HEADER_BYTES:]))
    if pkt.payload_type == PT_PAYLOAD:
        ph = PayloadHeader.unpack(pkt.payload)
        return PayloadPacket(pkt.ssrc, pkt.sequence_number, pkt.timestamp, bool(pkt.marker), ph,
                             bytes(pkt.payload[JSCC_HEADER_BYTES:]))
    if pkt.payload_type == PT_PARITY:
        qh = ParityHeader.unpack(pkt.payload)
        return ParityPacket(pkt.ssrc, pkt.sequence_number, pkt.timestamp, qh, bytes(pkt.payload[qh.size:]))
    if pkt.payload_type == PT_DESCRIPTION:
        return DescriptionPacket(pkt.ssrc, pkt.sequence_number, pkt.timestamp, bytes(pkt.payload))
    raise WireError(f"unknown RTP payload type {pkt.payload_type}")
