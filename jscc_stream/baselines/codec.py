"""The one interface through which the comparison streams a classical codec (H.264, JPEG).

An arm's sender asks its encoder for the RTP payloads of each frame; its receiver hands the
decoder the (sequence number, payload) pairs of one frame that arrived, in any order.  What is
signalled out of band (H.264's parameter sets, the picture size) goes to the constructors.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["PacketEncoder", "PacketDecoder"]


class PacketEncoder(Protocol):
    def packets(self, bgr: np.ndarray) -> list[bytes]:
        """The next BGR frame -> its RTP payloads, each within the MTU given at construction."""
        ...


class PacketDecoder(Protocol):
    def decode(self, packets: list[tuple[int, bytes]]) -> np.ndarray | None:
        """What arrived of one frame -> BGR picture, or None when nothing decodable arrived."""
        ...
