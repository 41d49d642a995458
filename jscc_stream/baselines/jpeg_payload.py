"""RTP payload of the JPEG baseline: each packet carries whole restart intervals of a JPEG frame.

``JpegPacketizer`` codes a frame with :func:`~jscc_stream.baselines.image.encode_jpeg` (highest
quality that fits, restart marker each MCU row, packets at restart boundaries) and puts a 6-byte
payload header in front of each packet so that a receiver knows which restart intervals it holds;
``JpegDepacketizer`` decodes what arrived with
:func:`~jscc_stream.baselines.image.decode_with_loss` (lost rows concealed).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from jscc_stream.proto.packet import DATAGRAM_LIMIT, RTP_HEADER_BYTES

from .image import CodedImage, decode_with_loss, encode_jpeg

__all__ = ["JpegPacketizer", "JpegDepacketizer", "JPEG_HEADER_BYTES"]

JPEG_HEADER_BYTES = 6
_JPEG_HDR = struct.Struct(">BBBBBB")


def _unit_ends(data: bytes, start: int) -> list[int]:
    """Ends (exclusive) of the restart intervals in data[start:], each ending with RSTn or EOI."""
    ends, i = [], start
    while True:
        i = data.find(b"\xff", i)
        if i < 0 or i + 1 >= len(data):
            return ends
        m = data[i + 1]
        if 0xD0 <= m <= 0xD7 or m == 0xD9:
            ends.append(i + 2)
            i += 2
        else:
            i += 1 if m == 0xFF else 2


def _sos_end(data: bytes) -> int:
    """Offset just after the SOS segment of a JPEG header (segments walked by their lengths)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError("JPEG header: expected a marker")
        seg = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if data[pos + 1] == 0xDA:
            return pos + 2 + seg
        pos += 2 + seg
    raise ValueError("JPEG header: no SOS")


@dataclass
class JpegPacketizer:
    """BGR frame -> RTP payloads: 6-byte header + the bytes ``encode_jpeg`` put in that packet.

    Header: packet index, packet count, first unit, units in the packet, total units (unit 0 = the
    headers SOI..SOS, unit i+1 = restart interval i), and piece index << 4 | piece count for an
    interval bigger than a packet (split over several).
    """

    max_bytes: int
    mtu: int = DATAGRAM_LIMIT

    def packets(self, bgr: np.ndarray) -> list[bytes]:
        coded = encode_jpeg(np.ascontiguousarray(bgr[:, :, ::-1]), self.max_bytes, self.mtu - RTP_HEADER_BYTES - JPEG_HEADER_BYTES)
        total = len(coded.unit_spans)
        if total > 255 or len(coded.packets) > 255:
            raise ValueError("frame too large for the JPEG payload header")
        out = []
        for p, (data, units) in enumerate(zip(coded.packets, coded.packet_units)):
            carriers = [q for q, us in enumerate(coded.packet_units) if units[0] in us] if len(units) == 1 else [p]
            piece, pieces = carriers.index(p), len(carriers)
            hdr = _JPEG_HDR.pack(p, len(coded.packets), units[0], len(units), total, (piece << 4) | pieces)
            out.append(hdr + data)
        return out


class JpegDepacketizer:
    """The packets of one frame that arrived -> RGB->BGR frame via ``decode_with_loss`` (or None)."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height

    @staticmethod
    def packet_count(payload: bytes) -> int | None:
        return payload[1] if len(payload) >= JPEG_HEADER_BYTES else None

    def decode(self, packets: list[tuple[int, bytes]]) -> np.ndarray | None:
        """``(sequence number, payload)`` of one frame, any order (the payload header says where
        each belongs, so the sequence numbers go unused)."""
        units: dict[int, bytes] = {}
        pieces: dict[int, dict[int, bytes]] = {}
        piece_counts: dict[int, int] = {}
        total = None
        for _, pl in packets:
            if len(pl) < JPEG_HEADER_BYTES:
                continue
            _, _, first, n_units, tot, pc = _JPEG_HDR.unpack_from(pl)
            total = tot
            data = pl[JPEG_HEADER_BYTES:]
            if (pc & 15) > 1:
                pieces.setdefault(first, {})[pc >> 4] = data
                piece_counts[first] = pc & 15
                continue
            try:
                bounds = [_sos_end(data)] if first == 0 else []
                bounds += _unit_ends(data, bounds[0] if bounds else 0)
            except (ValueError, struct.error):
                continue
            if len(bounds) != n_units:
                continue
            a = 0
            for u, b in zip(range(first, first + n_units), bounds):
                units[u] = data[a:b]
                a = b
        for u, got in pieces.items():
            if len(got) == piece_counts[u]:
                units[u] = b"".join(got[i] for i in range(len(got)))
        if total is None or 0 not in units:
            return None
        spans, parts, pos = [], [], 0
        for u in range(total):
            d = units.get(u, b"")
            spans.append((pos, pos + len(d)))
            parts.append(d)
            pos += len(d)
        coded = CodedImage(codec="jpeg", data=b"".join(parts), packets=tuple(parts), quality=0.0,
                           width=self.width, height=self.height, unit_spans=tuple(spans),
                           packet_units=tuple((u,) for u in range(total)))
        try:
            rgb, info = decode_with_loss(coded, [u in units for u in range(total)])
        except (ValueError, IndexError, struct.error):
            return None
        return np.ascontiguousarray(rgb[:, :, ::-1]) if info["decodable"] else None
