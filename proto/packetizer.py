"""Blocks -> datagrams no larger than the MTU, most important block first."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .packet import (DATAGRAM_LIMIT, JSCC_HEADER_BYTES, RTP_HEADER_BYTES, FragmentHeader, ParityHeader,
                     PayloadHeader, build_description, build_media, build_parity, build_payload)

__all__ = ["Datagram", "Packetizer", "fragment_bounds", "fragment_cuts", "MIN_MTU"]

MIN_MTU = RTP_HEADER_BYTES + JSCC_HEADER_BYTES + 1


@dataclass(frozen=True, slots=True)
class Datagram:
    data: bytes
    level: int  # importance level, -1 for control (stream description)
    block: int
    header: PayloadHeader | None = None  # a whole payload's (entropy-coded streams)
    layer: int = 0  # bit layer (0: coarse index or no layers; the sender's DSCP policy reads it)


def fragment_cuts(block_bytes: int, fragments: int) -> list[int]:
    """Where a block of ``block_bytes`` is cut into ``fragments`` contiguous, near-equal pieces:
    the start offset of each piece, then the end (10 bytes in 3 -> 0, 3, 6, 10; the last piece
    takes the remainder).  The packetizer cuts the wire this way and the erasure model of
    training and evaluation (``models.erasure``) loses exactly these pieces."""
    return [i * block_bytes // fragments for i in range(fragments + 1)]


def fragment_bounds(block_bytes: int, max_payload: int) -> list[tuple[int, int]]:
    """Split ``block_bytes`` into the fewest fragments of at most ``max_payload`` bytes, evenly
    sized (so a lost fragment erases about the same share of any block)."""
    if block_bytes <= 0:
        raise ValueError("block size must be positive")
    if max_payload <= 0:
        raise ValueError("no room for payload in a datagram")
    n = math.ceil(block_bytes / max_payload)
    if n > 255:
        raise ValueError(f"a block of {block_bytes} bytes needs {n} fragments (max 255): raise the MTU")
    cuts = fragment_cuts(block_bytes, n)
    return [(cuts[i], cuts[i + 1] - cuts[i]) for i in range(n)]


class Packetizer:
    """Stateful per-SSRC packetizer: owns the RTP sequence counter."""

    def __init__(self, ssrc: int, block_levels: list[int], mtu: int = DATAGRAM_LIMIT, first_seq: int = 0) -> None:
        if mtu < MIN_MTU:
            raise ValueError(f"MTU must be at least {MIN_MTU} bytes, got {mtu}")
        self.ssrc = ssrc & 0xFFFFFFFF
        self.block_levels = list(block_levels)
        self.mtu = mtu
        self.seq = first_seq & 0xFFFF
        self.max_payload = mtu - RTP_HEADER_BYTES - JSCC_HEADER_BYTES

    def _next_seq(self) -> int:
        s = self.seq
        self.seq = (self.seq + 1) & 0xFFFF
        return s

    def packetize(self, frame_id: int, timestamp: int, wire: np.ndarray, revision: int = 0) -> list[Datagram]:
        """``(K, L)`` uint8 wire bytes -> datagrams, block 0 first; the last carries the marker."""
        if wire.ndim != 2 or wire.dtype != np.uint8:
            raise ValueError(f"wire must be a (K, L) uint8 array, got {wire.shape} {wire.dtype}")
        k, length = wire.shape
        if k != len(self.block_levels):
            raise ValueError(f"{k} blocks but {len(self.block_levels)} importance levels")
        bounds = fragment_bounds(length, self.max_payload)
        out: list[Datagram] = []
        total = k * len(bounds)
        for b in range(k):
            row = wire[b]
            level = self.block_levels[b]
            for fi, (off, n) in enumerate(bounds):
                hdr = FragmentHeader(frame_id, b, level, fi, len(bounds), revision, off)
                data = build_media(self.ssrc, self._next_seq(), timestamp, len(out) == total - 1, hdr,
                                   row[off:off + n].tobytes())
                out.append(Datagram(data, level, b))
        return out

    def packetize_payloads(self, frame_id: int, timestamp: int, payloads: list[bytes], levels: list[int],
                           revision: int = 0, protected: int = 0, parity: list[bytes] = (),
                           covered: int = 0, layers: list[int] | None = None) -> list[Datagram]:
        """Whole codec payloads (importance order) -> one datagram each; the last carries the
        marker.  The first ``protected`` may be asked for again (NACK, ``proto.protection``); the
        ``parity`` symbols over the first ``covered`` go out right after those (after the whole
        frame instead was no better: -0.3 to +0.6 dB over 16 lossy runs, mostly within noise).
        ``layers``: each payload's bit layer, into its header and datagram (default all 0).
        A payload too large for the MTU is a codec bug, raised."""
        if len(payloads) != len(levels):
            raise ValueError(f"{len(payloads)} payloads but {len(levels)} levels")
        if parity and not 1 <= covered <= len(payloads):
            raise ValueError(f"parity over {covered} payloads of {len(payloads)}")
        layers = layers or [0] * len(payloads)
        out: list[Datagram] = []
        for i, (data, level, layer) in enumerate(zip(payloads, levels, layers)):
            if len(data) > self.max_payload:
                raise ValueError(f"payload of {len(data)} bytes exceeds the {self.max_payload}-byte room of the MTU")
            hdr = PayloadHeader(frame_id, level, i, len(payloads), revision, protected, layer)
            gram = build_payload(self.ssrc, self._next_seq(), timestamp, i == len(payloads) - 1, hdr, data)
            out.append(Datagram(gram, level, i, hdr, layer))
            if parity and i == covered - 1:
                out += self._parity(frame_id, timestamp, levels[:covered], len(payloads), revision, parity)
        return out

    def _parity(self, frame_id: int, timestamp: int, levels: list[int], count: int, revision: int,
                symbols: list[bytes]) -> list[Datagram]:
        k = len(levels)
        out = []
        for j, sym in enumerate(symbols):
            hdr = ParityHeader(frame_id, k, k + len(symbols), k + j, revision, count, tuple(levels), max(levels))
            gram = build_parity(self.ssrc, self._next_seq(), timestamp, hdr, sym)
            if len(gram) > self.mtu:
                raise ValueError(f"parity packet of {len(gram)} bytes exceeds the MTU {self.mtu}")
            out.append(Datagram(gram, max(levels), -1))
        return out

    def resend(self, timestamp: int, header: PayloadHeader, data: bytes) -> Datagram:
        """A payload again (a NACK's answer), under a new sequence number, without the marker."""
        return Datagram(build_payload(self.ssrc, self._next_seq(), timestamp, False, header, data), header.level,
                        header.index, header, header.layer)

    def description(self, timestamp: int, body: bytes) -> Datagram:
        data = build_description(self.ssrc, self._next_seq(), timestamp, body)
        if len(data) > self.mtu:
            raise ValueError(f"stream description needs {len(data)} bytes, more than the MTU {self.mtu}")
        return Datagram(data, -1, -1)
