"""One datagram on the wire: an RTP packet (aiortc's class) whose payload is a block fragment
behind a 12-byte JSCC payload header (PT 96, fixed-rate codecs), a whole self-contained codec
payload behind a 12-byte payload header (PT 98, entropy-coded codecs) or a stream description
(PT 97).

See ``docs/wire-format.md`` for the byte diagram.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from aiortc.rtp import RtpPacket

__all__ = ["PT_MEDIA", "PT_DESCRIPTION", "PT_PAYLOAD", "RTP_HEADER_BYTES", "JSCC_HEADER_BYTES", "DATAGRAM_LIMIT",
           "MEDIA_PAYLOAD_BYTES", "WIRE_VERSION", "CLOCK_RATE", "WireError", "FragmentHeader", "PayloadHeader",
           "MediaPacket", "PayloadPacket", "DescriptionPacket", "build_media", "build_payload", "build_description",
           "parse_datagram"]

PT_MEDIA = 96
PT_DESCRIPTION = 97
PT_PAYLOAD = 98
RTP_HEADER_BYTES = 12
JSCC_HEADER_BYTES = 12
#: The design's largest datagram (UDP payload), RTP header and extensions included.
DATAGRAM_LIMIT = 900
#: Block bytes one datagram of that size carries behind the RTP and JSCC headers.
MEDIA_PAYLOAD_BYTES = DATAGRAM_LIMIT - RTP_HEADER_BYTES - JSCC_HEADER_BYTES
WIRE_VERSION = 1
CLOCK_RATE = 90_000  # RTP timestamp ticks per second (video convention)
MAX_OFFSET = (1 << 24) - 1

_HDR = struct.Struct("!IBBBBI")  # frame id | block, level, frag index, frag count | revision<<24 | offset
_PHDR = struct.Struct("!IBBHHBB")  # frame id | level, 0 | payload index | payload count | revision, 0
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

    def pack(self) -> bytes:
        if not 0 <= self.index < self.count <= MAX_PAYLOADS:
            raise ValueError(f"payload {self.index} of {self.count} out of range")
        return _PHDR.pack(self.frame_id & 0xFFFFFFFF, self.level, 0, self.index, self.count,
                          self.revision & 0xFF, 0)

    @classmethod
    def unpack(cls, data: bytes) -> "PayloadHeader":
        if len(data) < JSCC_HEADER_BYTES:
            raise WireError(f"payload of {len(data)} bytes is shorter than the JSCC header")
        fid, level, _, index, count, rev, _ = _PHDR.unpack_from(data)
        if count == 0 or index >= count:
            raise WireError(f"bad payload index {index}/{count}")
        return cls(fid, level, index, count, rev)


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


def build_description(ssrc: int, seq: int, timestamp: int, body: bytes) -> bytes:
    pkt = RtpPacket(payload_type=PT_DESCRIPTION, sequence_number=seq & 0xFFFF,
                    timestamp=timestamp & 0xFFFFFFFF, ssrc=ssrc, payload=body)
    return pkt.serialize()


def parse_datagram(data: bytes) -> MediaPacket | PayloadPacket | DescriptionPacket:
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
    if pkt.payload_type == PT_DESCRIPTION:
        return DescriptionPacket(pkt.ssrc, pkt.sequence_number, pkt.timestamp, bytes(pkt.payload))
    raise WireError(f"unknown RTP payload type {pkt.payload_type}")
