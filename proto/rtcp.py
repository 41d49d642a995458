"""RTCP use (RFC 3550, RTP/RTCP on one port as RFC 5761): sender reports, receiver reports with
LSR/DLSR, extended reports (RFC 3611 RRTR/DLRR) so that the receiver learns the round trip too,
BYE, and our Feedback protobuf in an APP packet (name ``JSCC``).

Round-trip time, both ends, from NTP timestamps in "compact" form (the middle 32 bits, units of
1/65536 s) so neither end needs the other's clock:

* sender: SR carries its NTP time T; the receiver echoes LSR = compact(T) and DLSR = how long it
  held it; RTT = compact(now) - LSR - DLSR (RFC 3550 6.4.1);
* receiver: XR RRTR carries its NTP time; the sender answers at once with an XR DLRR block
  (LRR, DLRR); RTT the same way (RFC 3611 4.4-4.5).

aiortc's classes build and parse SR/RR/BYE; XR and APP are packed here.  Garbage raises
``ValueError`` from :func:`parse_rtcp`; callers count and drop it.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

from aiortc.rtp import (RtcpByePacket, RtcpPacket, RtcpReceiverInfo, RtcpRrPacket, RtcpSenderInfo,
                        RtcpSrPacket)

from .packet import CLOCK_RATE
from .seq import SeqUnwrapper

__all__ = ["ReceptionStats", "RtcpMessages", "build_report", "build_sender_report", "build_rrtr", "build_dlrr",
           "build_bye", "parse_rtcp", "ntp_now", "compact", "rtt_from", "RTCP_APP", "APP_NAME"]

RTCP_APP = 204
RTCP_XR = 207
APP_NAME = b"JSCC"
_XR_RRTR, _XR_DLRR = 4, 5
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)
MAX_RTT_S = 10.0  # a longer "round trip" is a broken or forged report


def ntp_now(unix: float | None = None) -> int:
    """64-bit NTP timestamp of wall-clock time ``unix`` (default: now)."""
    t = time.time() if unix is None else unix
    return int((t + NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFF_FFFF_FFFF_FFFF


def compact(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp (RFC 3550's LSR/DLSR units: 1/65536 s)."""
    return (ntp >> 16) & 0xFFFF_FFFF


def rtt_from(now_compact: int, last: int, delay: int) -> float | None:
    """Round trip (s) from compact(now), the echoed timestamp and the peer's holding delay;
    None when the report has no timestamp or gives an impossible value."""
    if not last:
        return None
    rtt = ((now_compact - last - delay) & 0xFFFF_FFFF) / 65536
    return rtt if rtt < MAX_RTT_S else None


@dataclass
class ReceptionStats:
    """Per-SSRC counts for a receiver report: loss from the extended sequence range, interarrival
    jitter in RTP timestamp units, and the last sender report for LSR/DLSR."""

    ssrc: int
    unwrapper: SeqUnwrapper = field(default_factory=SeqUnwrapper)
    base: int | None = None
    received: int = 0
    expected_prior: int = 0
    received_prior: int = 0
    jitter: float = 0.0
    _transit: float | None = None
    last_sr: int = 0  # compact NTP time of the last SR heard
    last_sr_at: float = 0.0  # when it arrived (the caller's monotonic clock, s)

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

    def on_sender_report(self, ntp: int, arrival: float) -> None:
        self.last_sr, self.last_sr_at = compact(ntp), arrival

    def report(self, now: float | None = None) -> RtcpReceiverInfo:
        """A report block for the interval since the previous call (``now``: the clock of
        :meth:`on_sender_report`'s ``arrival``, for DLSR)."""
        highest = self.unwrapper.highest or 0
        expected = highest - (self.base or 0) + 1 if self.base is not None else 0
        lost = max(0, expected - self.received)
        exp_int = expected - self.expected_prior
        rec_int = self.received - self.received_prior
        self.expected_prior, self.received_prior = expected, self.received
        lost_int = exp_int - rec_int
        fraction = 0 if exp_int <= 0 or lost_int <= 0 else min(255, (lost_int << 8) // exp_int)
        dlsr = 0
        if self.last_sr and now is not None:
            dlsr = min(0xFFFF_FFFF, max(0, int((now - self.last_sr_at) * 65536)))
        return RtcpReceiverInfo(ssrc=self.ssrc, fraction_lost=fraction, packets_lost=min(lost, 0x7FFFFF),
                                highest_sequence=highest & 0xFFFFFFFF, jitter=int(self.jitter),
                                lsr=self.last_sr if now is not None else 0, dlsr=dlsr)


def _app(ssrc: int, body: bytes) -> bytes:
    data = struct.pack("!L", ssrc) + APP_NAME + struct.pack("!HH", len(body), 0) + body
    data += b"\0" * (-len(data) % 4)
    return struct.pack("!BBH", 0x80, RTCP_APP, len(data) // 4) + data


def _xr(ssrc: int, blocks: bytes) -> bytes:
    return struct.pack("!BBHL", 0x80, RTCP_XR, (4 + len(blocks)) // 4, ssrc) + blocks


def build_report(receiver_ssrc: int, blocks: list[RtcpReceiverInfo], feedback: bytes | None = None,
                 rrtr_ntp: int | None = None) -> bytes:
    """Compound RTCP: RR, then (optionally) XR RRTR with the receiver's NTP time, then APP
    ``JSCC`` carrying a serialized Feedback."""
    out = bytes(RtcpRrPacket(ssrc=receiver_ssrc, reports=blocks[:31]))
    if rrtr_ntp is not None:
        out += build_rrtr(receiver_ssrc, rrtr_ntp)
    if feedback is not None:
        out += _app(receiver_ssrc, feedback)
    return out


def build_rrtr(ssrc: int, ntp: int) -> bytes:
    return _xr(ssrc, struct.pack("!BBHQ", _XR_RRTR, 0, 2, ntp))


def build_dlrr(ssrc: int, items: list[tuple[int, int, int]]) -> bytes:
    """XR DLRR: per receiver (its SSRC, compact time of its last RRTR, delay since, 1/65536 s)."""
    body = b"".join(struct.pack("!LLL", s & 0xFFFFFFFF, lrr & 0xFFFFFFFF, d & 0xFFFFFFFF) for s, lrr, d in items)
    return _xr(ssrc, struct.pack("!BBH", _XR_DLRR, 0, len(body) // 4) + body)


def build_sender_report(ssrc: int, ntp: int, rtp_timestamp: int, packets: int, octets: int) -> bytes:
    info = RtcpSenderInfo(ntp_timestamp=ntp, rtp_timestamp=rtp_timestamp & 0xFFFFFFFF,
                          packet_count=packets & 0xFFFFFFFF, octet_count=octets & 0xFFFFFFFF)
    return bytes(RtcpSrPacket(ssrc=ssrc, sender_info=info))


def build_bye(ssrc: int) -> bytes:
    return bytes(RtcpByePacket(sources=[ssrc]))


@dataclass
class RtcpMessages:
    """What a compound RTCP datagram held."""

    srs: list[RtcpSrPacket] = field(default_factory=list)
    rrs: list[RtcpRrPacket] = field(default_factory=list)
    byes: list[int] = field(default_factory=list)  # SSRCs that left
    apps: list[bytes] = field(default_factory=list)  # Feedback payloads (APP "JSCC")
    rrtr: list[tuple[int, int]] = field(default_factory=list)  # (sender SSRC, its NTP time)
    dlrr: list[tuple[int, int, int]] = field(default_factory=list)  # (SSRC, LRR, DLRR)


def _parse_xr(data: bytes, pos: int, end: int, out: RtcpMessages) -> None:
    if end - pos < 8:
        return
    (ssrc,) = struct.unpack_from("!L", data, pos + 4)
    p = pos + 8
    while p + 4 <= end:
        bt, _, words = struct.unpack_from("!BBH", data, p)
        stop = p + 4 + 4 * words
        if stop > end:
            return
        if bt == _XR_RRTR and words == 2:
            out.rrtr.append((ssrc, struct.unpack_from("!Q", data, p + 4)[0]))
        elif bt == _XR_DLRR:
            for q in range(p + 4, stop - 11, 12):
                out.dlrr.append(struct.unpack_from("!LLL", data, q))
        p = stop


def parse_rtcp(data: bytes) -> RtcpMessages:
    """Compound RTCP -> its messages; raises ValueError on garbage."""
    out = RtcpMessages()
    for p in RtcpPacket.parse(data):
        if isinstance(p, RtcpSrPacket):
            out.srs.append(p)
        elif isinstance(p, RtcpRrPacket):
            out.rrs.append(p)
        elif isinstance(p, RtcpByePacket):
            out.byes.extend(p.sources)
    pos = 0
    while pos + 4 <= len(data):
        _, pt, length = struct.unpack_from("!BBH", data, pos)
        end = pos + 4 + 4 * length
        if end > len(data):
            break
        if pt == RTCP_APP and end - pos >= 16 and data[pos + 8:pos + 12] == APP_NAME:
            (n,) = struct.unpack_from("!H", data, pos + 12)
            if pos + 16 + n <= end:
                out.apps.append(bytes(data[pos + 16:pos + 16 + n]))
        elif pt == RTCP_XR:
            _parse_xr(data, pos, end, out)
        pos = end
    return out
