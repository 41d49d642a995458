"""The receiver's side of predicted frames: decoded pictures kept as references, and receipts.

A predicted frame names its reference by frame-id distance; the receiver keeps the pictures it
decoded (a bounded number, oldest evicted) and, after decoding each frame, tells the sender
which payloads it used and a CRC of the picture (:mod:`jscc_stream.sender.references` holds
the other side).  A frame whose reference is not held (never arrived, skipped, evicted, or the
receiver joined late) is not decoded; its receipt says so, and the sender answers with an
intra frame.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

__all__ = ["ReferenceStore"]


class ReferenceStore:
    """Decoded pictures by frame id, for predicted frames to refer to (thread-safe)."""

    def __init__(self, capacity: int = 48) -> None:
        self.capacity = capacity
        self._pictures: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, frame_id: int, picture: np.ndarray) -> None:
        with self._lock:
            self._pictures[frame_id] = picture
            self._pictures.move_to_end(frame_id)
            while len(self._pictures) > self.capacity:
                self._pictures.popitem(last=False)

    def get(self, frame_id: int) -> np.ndarray | None:
        with self._lock:
            return self._pictures.get(frame_id)

    def clear(self) -> None:
        with self._lock:
            self._pictures.clear()
