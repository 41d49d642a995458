"""The importance level of each payload of the recent frames, as the relay forwarded them.

Receivers name payloads by their index in a frame (NACKs, receipts); the level is only in the
payload's header.  The relay remembers the levels of the last ``capacity`` frames so that it
can keep a receiver's NACKs to its subscription and check a receipt's reference levels.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["FrameLevels"]


class FrameLevels:
    def __init__(self, capacity: int = 128) -> None:
        self.capacity = capacity
        self._frames: OrderedDict[int, tuple[int, dict[int, int]]] = OrderedDict()
        self.last: int | None = None  # newest frame id seen

    def record(self, frame_id: int, index: int, count: int, level: int) -> None:
        entry = self._frames.get(frame_id)
        if entry is None or entry[0] != count:
            entry = self._frames[frame_id] = (count, {})
            while len(self._frames) > self.capacity:
                self._frames.popitem(last=False)
        entry[1][index] = level
        self.last = frame_id

    def count(self, frame_id: int) -> int | None:
        """Payloads in the frame (None: not a recent frame)."""
        entry = self._frames.get(frame_id)
        return None if entry is None else entry[0]

    def level(self, frame_id: int, index: int) -> int | None:
        """The payload's level; for one not seen (lost upstream), that of the next one seen
        (payloads go out in level order); None when the frame is not known."""
        entry = self._frames.get(frame_id)
        if entry is None or not 0 <= index < entry[0]:
            return None
        later = [lv for i, lv in entry[1].items() if i >= index]
        return min(later) if later else max(entry[1].values(), default=None)
