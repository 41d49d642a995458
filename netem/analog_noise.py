"""``jscc-netem --awgn-snr-db``: channel noise on analog streams' float16 values in flight.

The shim reads the stream descriptions (PT 97) going by to learn which SSRCs carry an analog
codec (``codec_kind = "analog-f16"``); those streams' block fragments (PT 96) get N(0, sigma^2)
added to every whole float16 value they carry (the sender sends unit average power, so sigma^2 =
10^(-SNR/10) makes the SNR real).  Everything else passes untouched, byte for byte: other
streams, RTCP, parity, garbage.  A value cut in two by a fragment boundary stays as sent.
"""

from __future__ import annotations

import numpy as np

from jscc_stream.proto.description import ANALOG_F16, parse_description
from jscc_stream.proto.packet import (PT_DESCRIPTION, PT_MEDIA, DescriptionPacket, MediaPacket, WireError,
                                     parse_datagram)

from .awgn import AwgnChannel

__all__ = ["AnalogNoise"]

_F16 = np.dtype("<f2")
_F16_MAX = float(np.finfo(np.float16).max)


class AnalogNoise:
    """Adds the channel's noise to analog payloads; ``apply(datagram) -> datagram``."""

    def __init__(self, channel: AwgnChannel, rng: np.random.Generator, max_streams: int = 64) -> None:
        self.channel = channel
        self.rng = rng
        self.max_streams = max_streams
        self.analog_ssrcs: set[int] = set()
        self.values_noised = 0
        self.packets_noised = 0

    def apply(self, data: bytes) -> bytes:
        """The datagram, its analog values noisy if it is an analog stream's fragment."""
        if len(data) < 12 or data[1] & 0x7F not in (PT_MEDIA, PT_DESCRIPTION):
            return data  # cheap exit for RTCP and the other payload types
        try:
            pkt = parse_datagram(data)
        except WireError:
            return data
        if isinstance(pkt, DescriptionPacket):
            self._learn(pkt)
            return data
        if not isinstance(pkt, MediaPacket) or pkt.ssrc not in self.analog_ssrcs:
            return data
        start = len(data) - len(pkt.data)
        return data[:start] + self.noisy(pkt.data, pkt.header.offset)

    def _learn(self, pkt: DescriptionPacket) -> None:
        try:
            kind = parse_description(pkt.body).codec_kind
        except WireError:
            return
        if kind == ANALOG_F16 and len(self.analog_ssrcs) < self.max_streams:
            self.analog_ssrcs.add(pkt.ssrc)
        elif kind != ANALOG_F16:
            self.analog_ssrcs.discard(pkt.ssrc)

    def noisy(self, fragment: bytes, offset: int) -> bytes:
        """``fragment`` (bytes from ``offset`` of a block of float16 values) with noise added."""
        first = offset & 1  # a value starts at every even block offset
        n = (len(fragment) - first) // 2
        if n <= 0:
            return fragment
        buf = bytearray(fragment)
        values = np.frombuffer(bytes(buf[first : first + 2 * n]), dtype=_F16).astype(np.float32)
        noisy = np.clip(self.channel.add_noise(values, self.rng), -_F16_MAX, _F16_MAX).astype(_F16)
        buf[first : first + 2 * n] = noisy.tobytes()
        self.values_noised += n
        self.packets_noised += 1
        return bytes(buf)
