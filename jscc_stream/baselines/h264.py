"""The H.264 baseline: libx264 / FFmpeg through PyAV, and the RFC 6184 payload format (single NAL
unit packets and FU-A fragments).

Encoder: ``preset=veryfast``, ``tune=zerolatency`` (no B-frames, no lookahead), one thread and so
one slice per frame (deterministic), rate-controlled to a target bitrate with a VBV of 4 frames
(133 ms at 30 fps: a tighter one undershoots the target by ~25 %). **Periodic intra refresh**
(``intra-refresh=1``, ``keyint=30``) rather than a short GOP: every frame is about the same size
(no I-frame bursts of many packets that a loss burst wipes out at once), and the picture heals
from any loss within 30 frames (1 s) without a keyframe request. ``slice_max_size`` makes every
slice fit one packet (RFC 6184 single NAL unit packets, as loss-hardened RTP video phones do): a
lost packet then loses one slice, which FFmpeg conceals, instead of the whole frame. Decoder:
FFmpeg (PyAV's ``h264``) with its default error concealment; a frame whose slice NAL unit did not
arrive whole, or that FFmpeg rejects, gives no picture.

The comparison harness (``jscc-bench compare``) streams H.264 over the same RTP/UDP transport and
the same <= 900-byte datagram limit as the JSCC stream. The payload format (RTP headers are
aiortc's) is packetization mode 1 without aggregation, i.e. a NAL unit that fits is sent as it
is, a larger one is cut into FU-A fragments of near-equal size. A receiver rebuilds a NAL unit
from FU-A fragments only when the start fragment, the end fragment and every sequence number
between them arrived; an incomplete NAL unit is dropped, as RFC 6184 receivers do (section 5.8).
STAP-A packets are understood on reception for robustness, never produced.
"""

from __future__ import annotations

import fractions
from collections.abc import Iterable, Sequence

import numpy as np

from jscc_stream.proto.packet import DATAGRAM_LIMIT, RTP_HEADER_BYTES
from jscc_stream.proto.seq import seq_diff

__all__ = [
    "H264Encoder",
    "H264Decoder",
    "NAL_FU_A",
    "NAL_STAP_A",
    "split_annexb",
    "join_annexb",
    "packetize_nal",
    "packetize_access_unit",
    "depacketize",
]

NAL_STAP_A = 24
NAL_FU_A = 28
_START = b"\x00\x00\x01"


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream (3- or 4-byte start codes), without start codes."""
    nals: list[bytes] = []
    i = data.find(_START)
    while i >= 0:
        start = i + 3
        j = data.find(_START, start)
        end = len(data) if j < 0 else j
        nal = data[start:end]
        # A 4-byte start code leaves its leading zero at the end of the previous NAL unit;
        # trailing zero bytes are never part of a NAL unit (rbsp_trailing_bits end in a 1 bit).
        nal = nal.rstrip(b"\x00") if j >= 0 else nal
        if nal:
            nals.append(nal)
        i = j
    return nals


def join_annexb(nals: Iterable[bytes]) -> bytes:
    """NAL units -> Annex B byte stream (4-byte start codes), what FFmpeg's parser expects."""
    return b"".join(b"\x00\x00\x00\x01" + n for n in nals)


def packetize_nal(nal: bytes, mtu: int = DATAGRAM_LIMIT) -> list[bytes]:
    """RTP payloads for one NAL unit: itself if it fits behind the RTP header, else FU-A fragments."""
    if not nal:
        raise ValueError("empty NAL unit")
    limit = mtu - RTP_HEADER_BYTES
    if limit < 3:
        raise ValueError(f"mtu {mtu} leaves no room for an FU-A fragment")
    if len(nal) <= limit:
        return [bytes(nal)]
    header = nal[0]
    body = nal[1:]
    per = limit - 2  # FU indicator + FU header
    n = -(-len(body) // per)
    size, extra = divmod(len(body), n)  # near-equal fragments: no tiny last packet
    indicator = (header & 0xE0) | NAL_FU_A
    out: list[bytes] = []
    pos = 0
    for i in range(n):
        step = size + (1 if i < extra else 0)
        fu = header & 0x1F
        if i == 0:
            fu |= 0x80
        if i == n - 1:
            fu |= 0x40
        out.append(bytes((indicator, fu)) + body[pos : pos + step])
        pos += step
    return out


def packetize_access_unit(nals: Sequence[bytes], mtu: int = DATAGRAM_LIMIT) -> list[bytes]:
    """RTP payloads of one access unit (frame) in order; the last one gets the RTP marker bit."""
    out: list[bytes] = []
    for nal in nals:
        out += packetize_nal(nal, mtu)
    return out


def depacketize(packets: Iterable[tuple[int, bytes]]) -> tuple[list[bytes], int]:
    """(sequence number, payload) pairs of one access unit, any order -> (NAL units, units dropped).

    Sequence numbers are compared with serial arithmetic (wrap safe). A FU-A NAL unit is kept only
    if its start and end fragments and everything between arrived; a fragment run that cannot be
    completed, a malformed payload, or a STAP-A with a bad length counts as one dropped unit.
    """
    items = _sort_serial(list({seq & 0xFFFF: bytes(p) for seq, p in packets}.items()))
    nals: list[bytes] = []
    dropped = 0
    fu: list[bytes] | None = None
    fu_header = 0
    broken = False  # inside a unit already counted as dropped
    last_seq: int | None = None
    for seq, payload in items:
        contiguous = last_seq is not None and seq_diff(seq, last_seq) == 1
        last_seq = seq
        if not payload:
            dropped += 1
            continue
        ntype = payload[0] & 0x1F
        if ntype != NAL_FU_A:
            broken = False
            if fu is not None:  # an open fragment run never ended
                fu, dropped = None, dropped + 1
        if ntype == NAL_FU_A:
            if len(payload) < 3:
                dropped += 1
                continue
            start, end = payload[1] & 0x80, payload[1] & 0x40
            if start:
                if fu is not None:
                    dropped += 1
                fu, broken = [payload[2:]], False
                fu_header = (payload[0] & 0xE0) | (payload[1] & 0x1F)
            elif fu is not None and contiguous:
                fu.append(payload[2:])
            else:  # a gap inside the run, or the run's start was lost: the unit is gone
                if fu is not None:
                    dropped += 1
                    broken = True
                elif not broken:
                    dropped += 1
                    broken = True
                fu = None
                if end:
                    broken = False
                continue
            if end:
                nals.append(bytes((fu_header,)) + b"".join(fu))
                fu = None
        elif ntype == NAL_STAP_A:
            pos, units = 1, []
            while pos + 2 <= len(payload):
                size = int.from_bytes(payload[pos : pos + 2], "big")
                if size == 0 or pos + 2 + size > len(payload):
                    units = None
                    break
                units.append(payload[pos + 2 : pos + 2 + size])
                pos += 2 + size
            if units is None or pos != len(payload):
                dropped += 1
            else:
                nals += units
        elif 1 <= ntype <= 23:
            nals.append(bytes(payload))
        else:
            dropped += 1
    if fu is not None:
        dropped += 1
    return nals, dropped


def _sort_serial(items: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Sort by sequence number relative to the first one (serial arithmetic, so wrap safe)."""
    if not items:
        return items
    ref = items[0][0]
    return sorted(items, key=lambda sp: seq_diff(sp[0], ref))


class H264Encoder:
    """BGR frames -> NAL units of one access unit each (libx264, zero latency, intra refresh)."""

    def __init__(self, width: int, height: int, fps: float, bitrate_bps: float, preset: str = "veryfast",
                 keyint: int = 30, slice_max_size: int | None = None, mtu: int = DATAGRAM_LIMIT) -> None:
        import av

        self.mtu = mtu
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

    def packets(self, bgr: np.ndarray, mtu: int | None = None) -> list[bytes]:
        """RTP payloads (RFC 6184 single NAL / FU-A) of the next frame (``mtu``: the constructor's)."""
        return packetize_access_unit(self.encode(bgr), mtu or self.mtu)


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
