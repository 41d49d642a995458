"""What the sender remembers of its own packets for congestion control, and how it turns the
target bitrate into each frame's codec byte budget.

The rate the path sees is everything the sender puts on it: codec payloads, their RTP and
payload headers, the IP/UDP headers, parity packets and retransmissions.  The codec only
controls the first, so the budget takes the rest off the target, each from what the last
frames actually cost.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence

from jscc_stream.proto.packet import IP_UDP_BYTES, JSCC_HEADER_BYTES, RTP_HEADER_BYTES
from jscc_stream.proto.seq import SeqUnwrapper

__all__ = ["SendLog", "FrameBudget", "IP_UDP_BYTES", "PriorityLoss", "LowPriorityDelay"]


class SendLog:
    """Sequence number -> (send time, bytes on the wire) of the last ``size`` RTP packets, so
    that arrival reports (16-bit sequence numbers) become the controller's packet results."""

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._sent: OrderedDict[int, tuple[float, int, int]] = OrderedDict()  # time, bytes, level
        self._unwrap = SeqUnwrapper()
        self._heard: OrderedDict[int, bool] = OrderedDict()  # what reports said so far: arrived?

    def record(self, seq: int, send_time: float, wire_bytes: int, level: int = -1) -> None:
        self._sent[self._unwrap.unwrap(seq)] = (send_time, wire_bytes, level)
        while len(self._sent) > self.size:
            self._sent.popitem(last=False)

    def results(self, arrivals: Sequence[tuple[int, float | None]]):
        """[(16-bit seq, arrival or None)] -> (PacketResults of what is news about the packets
        this sender knows, their importance levels).  Unknown or forgotten sequence numbers are
        dropped (a report cannot invent packets), and so is what an earlier report already said
        (a report that reaches back for a late packet repeats its neighbours as not arrived)."""
        from .congestion import PacketResult

        out, levels = [], []
        newest = self._unwrap.highest  # extended sequence number of the newest packet sent
        if newest is None:
            return out, levels
        for seq, arrival in arrivals:
            ext = newest - ((newest - seq) & 0xFFFF)
            sent = self._sent.get(ext)
            before = self._heard.get(ext)
            if sent is None or before or (before is False and arrival is None):
                continue
            self._heard[ext] = arrival is not None
            out.append(PacketResult(ext, sent[0], sent[1], arrival))
            levels.append(sent[2])
        while len(self._heard) > self.size:
            self._heard.popitem(last=False)
        return out, levels


class LowPriorityDelay:
    """How long the least important packets wait in the path: their one-way delay (sender and
    receiver clocks need not agree) above the smallest seen in the last ``window`` seconds."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._mins: deque[tuple[float, float]] = deque()  # (sender time, min one-way delay of a report)

    def update(self, results, levels: Sequence[int], top: int, now: float) -> float | None:
        owd = [r.arrival - r.send_time for r, lv in zip(results, levels) if r.arrival is not None]
        low = sorted(r.arrival - r.send_time for r, lv in zip(results, levels)
                     if r.arrival is not None and lv >= top)
        if owd:
            self._mins.append((now, min(owd)))
        while self._mins and now - self._mins[0][0] > self.window:
            self._mins.popleft()
        if not low or not self._mins:
            return None
        return low[len(low) // 2] - min(m for _, m in self._mins)


class PriorityLoss:
    """Whether loss falls on the least important packets (level >= ``top``) while the most
    important get through: what a full priority queue does, and random loss does not.  Counted
    over ``window`` seconds of reports (one report holds too few packets to tell: at 10 % random
    loss a 50 ms report spares its ~10 top packets a third of the time)."""

    def __init__(self, window: float = 0.5, min_packets: int = 30) -> None:
        self.window, self.min_packets = window, min_packets
        self._since: float | None = None
        self._counts = [0, 0, 0, 0]  # top lost, top total, low lost, low total
        self.skewed = False

    def update(self, results, levels: Sequence[int], top: int, now: float) -> bool:
        c = self._counts
        for r, lv in zip(results, levels):
            if lv >= 0:
                i = 0 if lv < top else 2
                c[i] += r.arrival is None
                c[i + 1] += 1
        if self._since is None:
            self._since = now
        if now - self._since >= self.window:
            top_lost, top_n, low_lost, low_n = c
            enough = top_n >= self.min_packets and low_n >= self.min_packets
            self.skewed = bool(enough and low_lost / low_n >= 0.05 and top_lost / top_n <= low_lost / low_n / 4)
            self._counts, self._since = [0, 0, 0, 0], now
        return self.skewed


class FrameBudget:
    """Codec bytes per frame for a target bitrate: the frame's share of the rate, less the
    expected headers (per packet), parity and retransmissions (each an average of recent
    frames)."""

    HEADER_BYTES = RTP_HEADER_BYTES + JSCC_HEADER_BYTES + IP_UDP_BYTES

    def __init__(self, window: int = 15) -> None:
        self._packets: deque[int] = deque(maxlen=window)
        self._parity: deque[int] = deque(maxlen=window)
        self._resent: deque[tuple[float, int]] = deque(maxlen=256)

    def on_frame(self, packets: int, parity_bytes: int) -> None:
        self._packets.append(packets)
        self._parity.append(parity_bytes)

    def on_resend(self, now: float, wire_bytes: int) -> None:
        self._resent.append((now, wire_bytes))

    def codec_bytes(self, target_bps: float, fps: float, now: float) -> int:
        frame = target_bps / 8 / fps
        packets = sum(self._packets) / len(self._packets) if self._packets else 8
        parity = sum(self._parity) / len(self._parity) if self._parity else 0
        # a snapshot: on_resend runs on the event loop while this runs on the encode thread
        resent = sum(b for t, b in tuple(self._resent) if now - t < 1.0) / fps
        return max(64, int(frame - packets * self.HEADER_BYTES - parity - resent))
