"""RTCP use: receiver-side reception statistics (RFC 3550 A.3/A.8), receiver reports through
aiortc's classes, and our Feedback protobuf in an RTCP APP packet (name ``JSCC``)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from aiortc.rtp import RtcpPacket, RtcpReceiverInfo, RtcpRrPacket

from .packet import CLOCK_RATE
from .seq import SeqUnwrapper

__all__ = ["ReceptionStats", "build_report", "parse_report", "RTCP_APP", "APP_NAME"]

RTCP_APP = 204
APP_NAME = b"JSCC"


@dataclass
class ReceptionStats:
    """Per-SSRC counts for a receiver report: loss from the extended sequence range, interarrival
    jitter in RTP timestamp units."""

    ssrc: int
    unwrapper: SeqUnwrapper = field(default_factory=SeqUnwrapper)
    base: int | None = None
    received: int = 0
    expected_prior: int = 0
    received_prior: int = 0
    jitter: float = 0.0
    _transit: float | None = None

    def update(self, seq: int, timestamp: int, arrival: float) -> None:
        ext = self.unwrapper.unwrap(seq)
        if self.base is None or ext < self.base:
            self.base = ext
        self.received += 1
        transit = arrival * CLOCK_RATE - timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            if d < CLOCK_RATE * 60:  # ignore timestamp jumps (new clock epoch)
                self.jitter += (d - self.jitter) / 16
        self._transit = transit

    def report(self) -> RtcpReceiverInfo:
        """A report block for the interval since the previous call."""
        highest = self.unwrapper.highest or 0
        expected = highest - (self.base or 0) + 1 if self.base is not None else 0
        lost = max(0, expected - self.received)
        exp_int = expected - self.expected_prior
        rec_int = self.received - self.received_prior
        self.expected_prior, self.received_prior = expected, self.received
        lost_int = exp_int - rec_int
        fraction = 0 if exp_int <= 0 or lost_int <= 0 else min(255, (lost_int << 8) // exp_int)
        return RtcpReceiverInfo(ssrc=self.ssrc, fraction_lost=fraction, packets_lost=min(lost, 0x7FFFFF),
                                highest_sequence=highest & 0xFFFFFFFF, jitter=int(self.jitter),
                                lsr=0, dlsr=0)


def build_report(receiver_ssrc: int, blocks: list[RtcpReceiverInfo], feedback: bytes | None = None) -> bytes:
    """Compound RTCP: RR, then (optionally) APP ``JSCC`` carrying a serialized Feedback."""
    out = bytes(RtcpRrPacket(ssrc=receiver_ssrc, reports=blocks[:31]))
    if feedback is not None:
        body = struct.pack("!L", receiver_ssrc) + APP_NAME + struct.pack("!HH", len(feedback), 0) + feedback
        body += b"\0" * (-len(body) % 4)
        out += struct.pack("!BBH", 0x80, RTCP_APP, len(body) // 4) + body
    return out


def parse_report(data: bytes) -> tuple[list[RtcpRrPacket], list[bytes]]:
    """Compound RTCP -> (receiver reports, Feedback payloads); raises ValueError on garbage."""
    rrs = [p for p in RtcpPacket.parse(data) if isinstance(p, RtcpRrPacket)]
    apps: list[bytes] = []
    pos = 0
    while pos + 4 <= len(data):
        _, pt, length = struct.unpack_from("!BBH", data, pos)
        end = pos + 4 + 4 * length
        if pt == RTCP_APP and end <= len(data) and end - pos >= 16 and data[pos + 8:pos + 12] == APP_NAME:
            (n,) = struct.unpack_from("!H", data, pos + 12)
            if pos + 16 + n <= end:
                apps.append(bytes(data[pos + 16:pos + 16 + n]))
        pos = end
    return rrs, apps
