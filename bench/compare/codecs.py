"""The baseline codecs of the comparison, as packet producers (sender) and frame decoders (receiver).

* H.264: libx264 through PyAV, ``preset=veryfast``, ``tune=zerolatency`` (no B-frames, no
  lookahead), one thread and so one slice per frame (deterministic), rate-controlled to the JSCC
  stream's bitrate with a VBV of 4 frames (133 ms at 30 fps: a tighter one undershoots the
  target by ~25 %). **Periodic intra refresh** (``intra-refresh=1``,
  ``keyint=30``) rather than a short GOP: every frame is about the same size (no I-frame bursts of
  many packets that a loss burst wipes out at once), and the picture heals from any loss within
  30 frames (1 s) without a keyframe request — the plain arm has no feedback channel. The
  ``h264-slices`` variant adds ``slice-max-size`` so that every slice fits one packet (RFC 6184
  single NAL unit packets, as loss-hardened RTP video phones do): a lost packet then loses one
  slice, which FFmpeg conceals, instead of the whole frame. Decoded by
  FFmpeg (PyAV's ``h264``) with its default error concealment; a frame whose slice NAL unit did not
  arrive whole, or that FFmpeg rejects, is not shown: the last good frame stays (counted frozen).
* JPEG: ``jscc_stream.models.baselines.encode_jpeg`` (highest quality that fits, restart marker
  each MCU row, packets at restart boundaries) with a 6-byte payload header so that a receiver
  knows which restart intervals it holds; decoded by ``decode_with_loss`` (lost rows concealed).
"""

from __future__ import annotations

import fractions
import struct
from dataclasses import dataclass

import numpy as np

from jscc_stream.proto.h264 import depacketize, join_annexb, packetize_access_unit, split_annexb

__all__ = ["H264Encoder", "H264Decoder", "JpegPacketizer", "JpegDepacketizer", "JPEG_HEADER_BYTES"]

JPEG_HEADER_BYTES = 6
_JPEG_HDR = struct.Struct(">BBBBBB")


class H264Encoder:
    """BGR frames -> NAL units of one access unit each (libx264, zero latency, intra refresh)."""

    def __init__(self, width: int, height: int, fps: float, bitrate_bps: float, preset: str = "veryfast",
                 keyint: int = 30, slice_max_size: int | None = None) -> None:
        import av

        self.ctx = av.CodecContext.create("libx264", "w")
        self.ctx.width, self.ctx.height, self.ctx.pix_fmt = width, height, "yuv420p"
        self.ctx.time_base = fractions.Fraction(1, round(fps))
        self.ctx.framerate = fractions.Fraction(round(fps), 1)
        self.ctx.bit_rate = int(bitrate_bps)
        kbps = max(1, int(bitrate_bps / 1000))
        self.ctx.options = {
            "preset": preset,
            "tune": "zerolatency",
            "threads": "1",
            "x264-params": f"intra-refresh=1:keyint={keyint}:vbv-maxrate={kbps}:"
                           f"vbv-bufsize={max(1, int(4 * kbps / fps))}:annexb=1"
                           + (f":slice-max-size={slice_max_size}" if slice_max_size else ""),
        }
        self.ctx.flags |= av.codec.context.Flags.global_header
        self.ctx.open()
        # SPS/PPS out of band, as RFC 6184's sprop-parameter-sets in the SDP: a receiver is primed with
        # them, so losing the first frame does not make the whole stream undecodable.
        self.parameter_sets = split_annexb(bytes(self.ctx.extradata or b""))
        self._pts = 0

    def encode(self, bgr: np.ndarray) -> list[bytes]:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr), format="bgr24").reformat(format="yuv420p")
        frame.pts = self._pts
        self._pts += 1
        data = b"".join(bytes(p) for p in self.ctx.encode(frame))
        return split_annexb(data)

    def packets(self, bgr: np.ndarray, mtu: int) -> list[bytes]:
        """RTP payloads (RFC 6184 single NAL / FU-A) of the next frame."""
        return packetize_access_unit(self.encode(bgr), mtu)


class H264Decoder:
    """RTP payloads of one access unit -> BGR frame, or None when FFmpeg gives no picture."""

    def __init__(self, parameter_sets: list[bytes]) -> None:
        import av

        self.ctx = av.CodecContext.create("h264", "r")
        self.nals_dropped = 0
        self.parameter_sets = join_annexb(parameter_sets)

    def decode(self, packets: list[tuple[int, bytes]]) -> np.ndarray | None:
        import av

        nals, dropped = depacketize(packets)
        self.nals_dropped += dropped
        if not any(1 <= (n[0] & 0x1F) <= 5 for n in nals):  # no slice arrived whole
            if nals:  # still hand parameter sets / SEI to the decoder
                self._feed(join_annexb(nals), av)
            return None
        out = self._feed(self.parameter_sets + join_annexb(nals), av)
        return out[-1].to_ndarray(format="bgr24") if out else None

    def _feed(self, data: bytes, av) -> list:
        try:
            return list(self.ctx.decode(av.Packet(data)))
        except av.FFmpegError:
            return []


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
    mtu: int = 900

    def packets(self, bgr: np.ndarray) -> list[bytes]:
        from jscc_stream.models.baselines import encode_jpeg

        coded = encode_jpeg(np.ascontiguousarray(bgr[:, :, ::-1]), self.max_bytes, self.mtu - 12 - JPEG_HEADER_BYTES)
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

    def decode(self, payloads: list[bytes]) -> np.ndarray | None:
        from jscc_stream.models.baselines import CodedImage, decode_with_loss

        units: dict[int, bytes] = {}
        pieces: dict[int, dict[int, bytes]] = {}
        piece_counts: dict[int, int] = {}
        total = None
        for pl in payloads:
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
            rgb, info = decode_with_loss(coded, [u not in units for u in range(total)])
        except (ValueError, IndexError, struct.error):
            return None
        return np.ascontiguousarray(rgb[:, :, ::-1]) if info["decodable"] else None
