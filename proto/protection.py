"""Repair of a frame's top importance levels: Reed-Solomon parity (paper 000 §III's unequal
protection) and selective retransmission (NACK), for entropy-coded streams.

The sender sends a frame's payloads in importance order; the first ``protected`` of them (the
levels below ``--protect-levels``) are the ones worth repairing: every payload header of the
frame says how many (``PayloadHeader.protected``).  Then

* **parity**: ``m`` packets of a systematic Reed-Solomon code over those ``k`` payloads go out
  right after them (``ParityHeader``), ``m`` following the loss the receivers report; any ``k``
  of the ``k + m`` give every protected payload back, before decoding;
* **NACK**: a receiver that still misses protected payloads asks for them (``Feedback.nacks``)
  only while one round trip still fits before the frame's playout deadline, and holds the frame
  (never past that deadline) for the answer; the sender resends them from a short history.

Less important payloads are never repaired: their loss costs little picture, and repairing
them would cost bytes and latency.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from .fec import encode_parity, fec_ratio, parity_count
from .packet import JSCC_HEADER_BYTES, RTP_HEADER_BYTES, PayloadHeader

__all__ = ["MAX_PROTECTED", "BURST_FREE", "loss_runs", "protected_prefix", "parity_for",
           "NackPolicy", "RetransmitHistory"]

MAX_PROTECTED = 64  # payloads one parity block covers at most (its header lists their levels)
BURST_FREE = 3.0  # mean loss run (packets) up to which parity keeps its full share


def protected_prefix(levels: Sequence[int], sizes: Sequence[int], protect_levels: int, mtu: int) -> int:
    """How many leading payloads are protected: those of a level below ``protect_levels``, as long
    as a parity packet over them still fits the MTU (a parity symbol is as long as the longest)."""
    k = 0
    for level, size in zip(levels, sizes):
        if level >= protect_levels or k >= MAX_PROTECTED:
            break
        if RTP_HEADER_BYTES + JSCC_HEADER_BYTES + (k + 1) + 2 + size > mtu:
            break
        k += 1
    return k


def parity_for(payloads: Sequence[bytes], k: int, loss: float, burst: float = 1.0) -> list[bytes]:
    """The parity symbols over ``payloads[:k]`` for the reported loss (none at no loss).

    ``burst``: the mean length of the loss runs reported.  A frame's protected payloads and their
    parity leave back to back, so a run longer than the parity erases the block whatever it
    holds: beyond ``BURST_FREE`` packets the share shrinks in proportion and the bytes go to the
    codec instead."""
    if k < 1:
        return []
    share = fec_ratio(min(1.0, max(0.0, loss))) * min(1.0, BURST_FREE / max(burst, 1.0))
    m = parity_count(k, share)
    m = min(m, 255 - k)
    return encode_parity(list(payloads[:k]), k + m) if m else []


def loss_runs(results: Sequence) -> list[int]:
    """Lengths of the runs of consecutive lost packets in one arrival report (items with
    ``seq`` and ``arrival``, None = lost); a run cut by the report's edge counts as it is."""
    runs, cur, prev = [], 0, None
    for r in sorted(results, key=lambda r: r.seq):
        if cur and (r.arrival is not None or r.seq != prev + 1):  # a run ends (or a gap cuts it)
            runs.append(cur)
            cur = 0
        if r.arrival is None:
            cur += 1
        prev = r.seq
    if cur:
        runs.append(cur)
    return runs


@dataclass
class NackPolicy:
    """Which protected payloads a receiver asks for again, and when.

    Only payloads known to be missing (a later payload or a parity packet of the frame arrived:
    they go out after it), only with a known round trip that still fits before the playout
    deadline (plus ``margin``), each at most ``max_tries`` times, a round trip apart."""

    max_tries: int = 2
    margin: float = 0.005
    _tries: dict = field(default_factory=dict)  # (ssrc, frame id) -> {index: (tries, last time)}

    def due(self, key: tuple[int, int], protected: int, have: Sequence[bool], parity_seen: bool,
            now: float, deadline: float, rtt: float | None) -> list[int]:
        """Indices to ask for now.  ``have``: per payload of the frame, whether it arrived;
        ``deadline``: the frame's playout deadline on the caller's clock."""
        if rtt is None or rtt <= 0 or now + rtt + self.margin > deadline or protected <= 0:
            return []
        arrived = [i for i, h in enumerate(have) if h]
        if not arrived:
            return []
        seen_up_to = len(have) if parity_seen else max(arrived)
        state = self._tries.setdefault(key, {})
        out = []
        for i in range(min(protected, seen_up_to, len(have))):
            if have[i]:
                continue
            tries, last = state.get(i, (0, -1e9))
            if tries < self.max_tries and now - last >= 1.5 * rtt:
                state[i] = (tries + 1, now)
                out.append(i)
        while len(self._tries) > 256:
            self._tries.pop(next(iter(self._tries)))
        return out

    def forget(self, key: tuple[int, int]) -> None:
        self._tries.pop(key, None)


@dataclass
class _Sent:
    timestamp: int
    sent_at: float
    payloads: list[tuple[PayloadHeader, bytes]]
    resent: dict = field(default_factory=dict)  # index -> times


class RetransmitHistory:
    """The sender's short memory of protected payloads, for NACKs: the last ``max_frames``
    frames younger than ``max_age`` seconds; each payload resent at most ``max_resends`` times."""

    def __init__(self, max_frames: int = 60, max_age: float = 1.0, max_resends: int = 2) -> None:
        self.max_frames, self.max_age, self.max_resends = max_frames, max_age, max_resends
        self._frames: OrderedDict[int, _Sent] = OrderedDict()

    def add(self, frame_id: int, timestamp: int, sent_at: float, headers: Sequence[PayloadHeader],
            payloads: Sequence[bytes]) -> None:
        kept = [(h, p) for h, p in zip(headers, payloads) if h.index < h.protected]
        self._frames[frame_id] = _Sent(timestamp, sent_at, kept)
        self._frames.move_to_end(frame_id)
        while len(self._frames) > self.max_frames:
            self._frames.popitem(last=False)

    def take(self, frame_id: int, indices: Sequence[int], now: float) -> tuple[int, list[tuple[PayloadHeader, bytes]]]:
        """(RTP timestamp, the payloads to resend) for a NACK: protected, known, young enough."""
        sent = self._frames.get(frame_id)
        if sent is None or now - sent.sent_at > self.max_age:
            return 0, []
        by_index = {h.index: (h, p) for h, p in sent.payloads}
        out = []
        for i in dict.fromkeys(indices):
            if i in by_index and sent.resent.get(i, 0) < self.max_resends:
                sent.resent[i] = sent.resent.get(i, 0) + 1
                out.append(by_index[i])
        return sent.timestamp, out
