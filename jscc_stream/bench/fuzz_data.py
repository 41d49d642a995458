"""Hostile datagrams for ``jscc-bench fuzz``: purely random ones and mutations of a real stream.

A daemon listening on UDP takes bytes from anyone, so its parsers must survive anything.  Random
bytes mostly die at the first check (RTP version, payload type), so most of the mix starts from
a real captured stream and breaks it a little: bit flips, truncation, extension, header fields
rewritten or swapped, replays under other SSRCs and sequence numbers, splices of two packets.
Everything here is a pure function of the seed, so a crash can be replayed.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator, Sequence

__all__ = ["MUTATIONS", "DatagramFuzzer", "is_rtcp_shaped", "pack_capture", "unpack_capture"]

_RTP_PTS = (96, 97, 98, 99)  # the stream's payload types (proto/packet.py)
_ODD_SIZES = (0, 1, 2, 3, 7, 8, 11, 12, 13, 23, 24, 25, 899, 900, 901, 1472, 1473, 9000)


def is_rtcp_shaped(data: bytes) -> bool:
    """What jscc-recv hands to its RTCP parser instead of reassembly (RFC 5761 demultiplexing)."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def _random(rng: random.Random, _cap: Sequence[bytes]) -> bytes:
    n = rng.choice(_ODD_SIZES) if rng.random() < 0.2 else rng.randrange(0, 1400)
    if rng.random() < 0.0005:
        n = rng.randrange(9000, 65508)  # the largest UDP payload
    return rng.randbytes(n)


def _random_rtp(rng: random.Random, _cap: Sequence[bytes]) -> bytes:
    """A valid RTP header of one of the stream's payload types in front of random bytes: gets
    past the first checks into the payload parsers."""
    first = 0x80 | (rng.getrandbits(4) if rng.random() < 0.2 else 0)  # sometimes CSRCs/extension/padding
    second = (rng.getrandbits(1) << 7) | rng.choice(_RTP_PTS)
    head = struct.pack("!BBHII", first, second, rng.getrandbits(16), rng.getrandbits(32), rng.getrandbits(32))
    return head + rng.randbytes(rng.randrange(0, 900))


def _bitflip(rng: random.Random, cap: Sequence[bytes]) -> bytes:
    data = bytearray(rng.choice(cap))
    for _ in range(rng.randrange(1, 9)):
        if data:
            i = rng.randrange(min(len(data), 48) if rng.random() < 0.7 else len(data))  # headers mostly
            data[i] ^= 1 << rng.randrange(8)
    return bytes(data)


def _truncate(rng: random.Random, cap: Sequence[bytes]) -> bytes:
    data = rng.choice(cap)
    return data[:rng.randrange(0, max(1, len(data)))]


def _extend(rng: random.Random, cap: Sequence[bytes]) -> bytes:
    data = rng.choice(cap)
    return data + (rng.randbytes(rng.randrange(1, 600)) if rng.random() < 0.7 else data)


def _fields(rng: random.Random, cap: Sequence[bytes]) -> bytes:
    """Rewrite one or two header fields: RTP flags and payload type, the JSCC header's words
    (frame id, indices, counts, offsets), or swap two 4-byte words of the headers."""
    data = bytearray(rng.choice(cap))
    if len(data) < 24:
        return bytes(data)
    for _ in range(rng.randrange(1, 3)):
        kind = rng.randrange(5)
        if kind == 0:
            data[0] = (data[0] & 0xC0) | rng.getrandbits(6)  # padding, extension, CSRC count
        elif kind == 1:
            data[1] = (data[1] & 0x80) | rng.choice((*_RTP_PTS, rng.getrandbits(7)))
        elif kind == 2:
            i = rng.randrange(12, 24)
            data[i] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.getrandbits(8)))
        elif kind == 3:
            i = rng.randrange(12, 24, 4)
            data[i:i + 4] = rng.choice((0, 0xFFFFFFFF, 0x7FFFFFFF, rng.getrandbits(32))).to_bytes(4, "big")
        else:
            a, b = rng.sample(range(0, 24, 4), 2)
            data[a:a + 4], data[b:b + 4] = data[b:b + 4], data[a:a + 4]
    return bytes(data)


def _replay(rng: random.Random, cap: Sequence[bytes]) -> bytes:
    """A real packet under another SSRC (a few, so several "streams" build up) and sequence
    number / timestamp: what an attacker replaying a capture sends."""
    data = bytearray(rng.choice(cap))
    if len(data) < 12:
        return bytes(data)
    if rng.random() < 0.7:
        data[8:12] = rng.choice((0x1234, 0xDEADBEEF, 0, rng.getrandbits(32))).to_bytes(4, "big")
    if rng.random() < 0.7:
        data[2:4] = rng.getrandbits(16).to_bytes(2, "big")
    if rng.random() < 0.3:
        data[4:8] = rng.getrandbits(32).to_bytes(4, "big")
    return bytes(data)


def _splice(rng: random.Random, cap: Sequence[bytes]) -> bytes:
    a, b = rng.choice(cap), rng.choice(cap)
    return a[:rng.randrange(0, len(a) + 1)] + b[rng.randrange(0, len(b) + 1):]


#: name -> (share of the mix, mutation); the shares sum to 1.
MUTATIONS: dict[str, tuple[float, Callable[[random.Random, Sequence[bytes]], bytes]]] = {
    "random": (0.15, _random), "random_rtp": (0.15, _random_rtp), "bitflip": (0.2, _bitflip),
    "truncate": (0.1, _truncate), "extend": (0.05, _extend), "fields": (0.15, _fields),
    "replay": (0.15, _replay), "splice": (0.05, _splice),
}


class DatagramFuzzer:
    """Seeded stream of (mutation name, datagram) built from ``capture`` (the real stream's
    datagrams, in order); the same seed and capture give the same datagrams."""

    def __init__(self, capture: Sequence[bytes], seed: int = 0) -> None:
        if not capture:
            raise ValueError("an empty capture: no real datagrams to mutate")
        self.capture = list(capture)
        self.rng = random.Random(seed)
        self._names = list(MUTATIONS)
        self._weights = [MUTATIONS[n][0] for n in self._names]

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        while True:
            yield self.next()

    def next(self) -> tuple[str, bytes]:
        name = self.rng.choices(self._names, self._weights)[0]
        return name, MUTATIONS[name][1](self.rng, self.capture)


def pack_capture(datagrams: Sequence[tuple[float, bytes]]) -> bytes:
    """(seconds since the first, datagram) pairs -> one file's bytes (length-prefixed records)."""
    return b"".join(struct.pack("!dI", t, len(d)) + d for t, d in datagrams)


def unpack_capture(blob: bytes) -> list[tuple[float, bytes]]:
    """The inverse of :func:`pack_capture`."""
    out, i = [], 0
    while i < len(blob):
        t, n = struct.unpack_from("!dI", blob, i)
        i += 12
        out.append((t, blob[i:i + n]))
        i += n
    return out
