"""Who receives what from a relay: receivers, their subscriptions, join, leave and timeout.

Pure and clock-free (every call takes ``now``), so the rules are tested without sockets.  A
receiver joins with the first Feedback that carries a ``Subscription`` (its address is where
the relay sends), stays while any RTCP from it arrives within ``timeout`` and leaves with an
RTCP BYE or that silence.  A subscription asks for levels ``0 .. levels-1`` (0: all); one above
the stream's level count is clamped to all, one no stream can have (above 255, or a negative
number written into the unsigned field) is refused; both are counted.  ``layers`` is kept for
the bit-level refinement layers to come (0: all, the only value acted on now).

With ``adapt`` the relay also caps a receiver's levels from the loss it reports (Feedback
``block_loss`` over the levels it gets): one level fewer after a report above ``loss_high``,
one more (up to its subscription) after ``recover_s`` of reports below ``loss_low``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Subscriber", "SubscriptionCounters", "SubscriptionTable", "MAX_LEVELS"]

MAX_LEVELS = 255  # a stream description's block count is at most this


@dataclass
class Subscriber:
    addr: tuple
    levels: int  # asked for (0: all)
    layers: int
    joined_at: float
    last_heard: float
    cap: int | None = None  # --adapt's limit (None: none)
    good_since: float = 0.0
    packets: int = 0  # forwarded to it
    bytes: int = 0
    changes: int = 0  # subscription changes after joining

    def summary(self) -> dict:
        return {"addr": f"{self.addr[0]}:{self.addr[1]}", "levels": self.levels, "cap": self.cap,
                "packets": self.packets, "bytes": self.bytes, "changes": self.changes}


@dataclass
class SubscriptionCounters:
    joins: int = 0
    changes: int = 0
    byes: int = 0
    timeouts: int = 0
    clamped: int = 0  # asked for more levels than the stream has: given all
    refused: int = 0  # asked for a level count no stream has (or a negative one): ignored
    full: int = 0  # joins refused because max_receivers are in
    adapted_down: int = 0
    adapted_up: int = 0


@dataclass
class SubscriptionTable:
    timeout: float = 1.0
    max_receivers: int = 32
    adapt: bool = False
    loss_high: float = 0.10
    loss_low: float = 0.02
    recover_s: float = 3.0
    stream_levels: int | None = None  # from the stream description, once heard
    counters: SubscriptionCounters = field(default_factory=SubscriptionCounters)
    receivers: dict[tuple, Subscriber] = field(default_factory=dict)

    def subscribe(self, addr: tuple, levels: int, layers: int, now: float) -> Subscriber | None:
        """A Subscription from ``addr``: join, change or keep-alive; None when refused."""
        if not 0 <= levels <= MAX_LEVELS:
            self.counters.refused += 1
            return None
        if self.stream_levels is not None and levels > self.stream_levels:
            self.counters.clamped += 1
            levels = 0
        sub = self.receivers.get(addr)
        if sub is None:
            if len(self.receivers) >= self.max_receivers:
                self.counters.full += 1
                return None
            sub = self.receivers[addr] = Subscriber(addr, levels, layers, now, now, good_since=now)
            self.counters.joins += 1
            return sub
        sub.last_heard = now
        if (levels, layers) != (sub.levels, sub.layers):
            sub.levels, sub.layers, sub.cap = levels, layers, None
            sub.changes += 1
            self.counters.changes += 1
        return sub

    def heard(self, addr: tuple, now: float) -> Subscriber | None:
        """Any RTCP from a receiver keeps it joined; None for an address that never joined."""
        sub = self.receivers.get(addr)
        if sub is not None:
            sub.last_heard = now
        return sub

    def bye(self, addr: tuple) -> Subscriber | None:
        sub = self.receivers.pop(addr, None)
        self.counters.byes += sub is not None
        return sub

    def expire(self, now: float) -> list[Subscriber]:
        """Receivers silent for longer than ``timeout``: removed and returned."""
        gone = [s for s in self.receivers.values() if now - s.last_heard > self.timeout]
        for s in gone:
            del self.receivers[s.addr]
        self.counters.timeouts += len(gone)
        return gone

    def effective(self, sub: Subscriber) -> int:
        """Levels forwarded to ``sub`` now: its subscription, under the adaptation's cap."""
        total = self.stream_levels or MAX_LEVELS
        levels = min(sub.levels or total, total)
        return min(levels, sub.cap) if sub.cap is not None else levels

    def set_stream_levels(self, levels: int) -> None:
        """The stream's level count (from its description): subscriptions above it mean all."""
        self.stream_levels = levels
        for sub in self.receivers.values():
            if sub.levels > levels:
                sub.levels = 0
                self.counters.clamped += 1

    def reference(self, most: bool = False) -> Subscriber | None:
        """The receiver with the fewest levels (``most``: the most), the earliest joined of
        those: the sender's references follow what it decodes (see ``relay.relay``)."""
        sign = -1 if most else 1
        return min(self.receivers.values(), key=lambda s: (sign * self.effective(s), s.joined_at), default=None)

    def reference_levels(self, most: bool = False) -> int:
        """The reference receiver's levels (0: all, or no receiver): with the fewest, the
        levels every receiver gets."""
        ref = self.reference(most)
        if ref is None or self.stream_levels is None:
            return 0
        n = self.effective(ref)
        return 0 if n >= self.stream_levels else n

    def on_loss(self, sub: Subscriber, block_loss: list[float], now: float) -> None:
        """``--adapt``: a receiver's per-level loss report -> its cap (see the module docstring)."""
        if not self.adapt or not block_loss:
            return
        n = self.effective(sub)
        loss = max(block_loss[:n], default=0.0)
        if loss > self.loss_high and n > 1:
            sub.cap, sub.good_since = n - 1, now
            self.counters.adapted_down += 1
        elif loss > self.loss_low:
            sub.good_since = now
        elif sub.cap is not None and now - sub.good_since >= self.recover_s:
            sub.cap = sub.cap + 1 if sub.cap + 1 < (sub.levels or self.stream_levels or MAX_LEVELS) else None
            sub.good_since = now
            self.counters.adapted_up += 1
