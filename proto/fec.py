"""Reed-Solomon erasure coding over packets (zfec's systematic code over GF(2^8)).

k source packets plus n - k parity symbols: **any k of the n give back every source packet
exactly**; fewer than k give back only the source packets that arrived.  Each source packet
becomes one symbol: a 2-byte length, the packet, zero padding to the longest packet of the
block.  Used by the sender's protection of the top importance levels (``proto.protection``)
and by the H.264+FEC baseline (``baselines.fec``), each with its own packet header.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence

__all__ = ["FecError", "symbol_size", "encode_parity", "recover", "fec_ratio", "parity_count"]

_LEN = struct.Struct(">H")


class FecError(ValueError):
    """Bad FEC parameters, a malformed parity packet, or too few shares to decode."""


def symbol_size(sources: Sequence[bytes]) -> int:
    return 2 + max(len(s) for s in sources)


def _symbols(sources: Sequence[bytes]) -> list[bytes]:
    size = symbol_size(sources)
    out = []
    for s in sources:
        if len(s) > 0xFFFF:
            raise FecError(f"source packet of {len(s)} bytes is too long")
        out.append(_LEN.pack(len(s)) + bytes(s) + bytes(size - 2 - len(s)))
    return out


def encode_parity(sources: Sequence[bytes], n: int) -> list[bytes]:
    """The n - k parity symbols of k = len(sources) source packets (k < n <= 256)."""
    import zfec

    k = len(sources)
    if not (1 <= k < n <= 256):
        raise FecError(f"need 1 <= k < n <= 256, got k={k} n={n}")
    return list(zfec.Encoder(k, n).encode(_symbols(sources), list(range(k, n))))


def recover(k: int, n: int, shares: Mapping[int, bytes]) -> list[bytes]:
    """All k source packets from any k shares {share number: symbol or source packet}.

    Share numbers 0..k-1 are the source packets themselves (as sent, unpadded); k..n-1 parity
    symbols. Raises FecError with fewer than k shares or inconsistent symbol sizes.
    """
    import zfec

    if not (1 <= k < n <= 256):
        raise FecError(f"need 1 <= k < n <= 256, got k={k} n={n}")
    bad = [i for i in shares if not 0 <= i < n]
    if bad:
        raise FecError(f"share numbers out of range 0..{n - 1}: {bad}")
    if len(shares) < k:
        raise FecError(f"{len(shares)} shares, need {k}")
    if all(i in shares for i in range(k)):
        return [bytes(shares[i]) for i in range(k)]
    parity = [i for i in shares if i >= k]
    if not parity:
        raise FecError("no parity symbol to size the block")
    size = len(shares[parity[0]])
    chosen = sorted(shares)[:k]
    blocks = []
    for i in chosen:
        s = bytes(shares[i])
        if i < k:
            if len(s) + 2 > size:
                raise FecError(f"source packet {i} ({len(s)} bytes) longer than the parity symbol allows")
            s = _LEN.pack(len(s)) + s + bytes(size - 2 - len(s))
        elif len(s) != size:
            raise FecError(f"parity symbol {i} has {len(s)} bytes, expected {size}")
        blocks.append(s)
    decoded = zfec.Decoder(k, n).decode(blocks, chosen)
    out = []
    for i, sym in enumerate(decoded):
        if i in shares:
            out.append(bytes(shares[i]))
            continue
        (length,) = _LEN.unpack_from(sym)
        if length > size - 2:
            raise FecError(f"recovered source packet {i} has an impossible length {length}")
        out.append(bytes(sym[2 : 2 + length]))
    return out


def fec_ratio(loss_rate: float, max_ratio: float = 0.5) -> float:
    """Share of the total bitrate given to parity for a mean packet loss rate.

    Three times the loss rate, at most max_ratio: with blocks of 6-10 packets this leaves the
    residual frame loss after decoding around or below 1 % for independent losses up to ~15 %
    (bursts do worse; that is the point of the comparison).
    """
    if not 0 <= loss_rate <= 1:
        raise FecError(f"loss rate must be in [0, 1], got {loss_rate}")
    return min(max_ratio, 3.0 * loss_rate)


def parity_count(k: int, ratio: float) -> int:
    """Parity packets for k source packets so that parity / (k + parity) ~= ratio (>= 1 if ratio > 0)."""
    if k < 1:
        raise FecError(f"k must be >= 1, got {k}")
    if not 0 <= ratio < 1:
        raise FecError(f"ratio must be in [0, 1), got {ratio}")
    if ratio == 0:
        return 0
    return max(1, min(256 - k, math.ceil(k * ratio / (1 - ratio) - 1e-9)))
