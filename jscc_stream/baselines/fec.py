"""Reed-Solomon erasure coding over packets (zfec), for the H.264+FEC baseline of issue 5.

A *block* is k source packets (here: the RTP packets of one H.264 frame) plus n - k parity
packets. Each source packet becomes one symbol: a 2-byte length, the whole RTP packet, zero
padding to the block's longest packet. zfec's systematic Reed-Solomon code over GF(2^8) makes the
n - k parity symbols, so **any k of the n packets give back every source packet exactly**; fewer
than k give back only the source packets that arrived. A parity packet's payload is a 6-byte
header and one parity symbol:

```
 0               1               2               3
+---------------+---------------+---------------+---------------+
|   base sequence number (first source packet)  |       k       |
+---------------+---------------+---------------+---------------+
|       n       | parity index  |  parity symbol (2 + max RTP packet length bytes) ...
+---------------+---------------+-----------------------------------------------
```

Per-frame blocks add no latency (the parity of a frame leaves right after it) at the price of
small blocks that a long burst can still overwhelm; `parity_count` sizes the parity for the loss
rate the sender expects (e.g. from RTCP reports).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from jscc_stream.proto.fec import FecError, encode_parity, fec_ratio, parity_count, recover, symbol_size

__all__ = [
    "FEC_HEADER_BYTES",
    "FecError",
    "FecHeader",
    "symbol_size",
    "encode_parity",
    "recover",
    "fec_ratio",
    "parity_count",
]

FEC_HEADER_BYTES = 6
_HDR = struct.Struct(">HBBBx")


@dataclass(frozen=True)
class FecHeader:
    base_seq: int  # RTP sequence number of the block's first source packet
    k: int  # source packets in the block
    n: int  # source + parity packets
    index: int  # this parity packet's share number, k <= index < n

    def __post_init__(self) -> None:
        if not (1 <= self.k < self.n <= 256 and self.k <= self.index < self.n and 0 <= self.base_seq <= 0xFFFF):
            raise FecError(f"bad FEC header: base_seq={self.base_seq} k={self.k} n={self.n} index={self.index}")

    def pack(self) -> bytes:
        return _HDR.pack(self.base_seq, self.k, self.n - 1, self.index)

    @classmethod
    def parse(cls, payload: bytes) -> tuple["FecHeader", bytes]:
        """(header, parity symbol) of a parity packet's payload."""
        if len(payload) < FEC_HEADER_BYTES + 3:
            raise FecError(f"FEC payload too short ({len(payload)} bytes)")
        base, k, n1, index = _HDR.unpack_from(payload)
        return cls(base, k, n1 + 1, index), bytes(payload[FEC_HEADER_BYTES:])
