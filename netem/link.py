"""The shim's impairment model for one direction, free of sockets and clocks.

A datagram's path through a :class:`Link` is what a congested access link does to it:

    loss process  ->  bottleneck buffer + token bucket  ->  propagation delay (+ jitter)  ->  out

Time is a number the caller passes in (``now``, seconds on any monotonic clock), so tests drive
it with a simulated clock and the asyncio shim with ``loop.time()``.  The buffer holds one FIFO
per DSCP priority class: with ``priority`` it serves them strictly by rank and a full buffer
makes room for an arrival by pushing out the oldest packet of the least important class at or
below its own (drop head); without, it is one drop-tail FIFO (the class FIFOs then only keep the counters apart).

``max_queue_delay_s`` bounds how long a packet may wait in that buffer: a packet that reaches
the head later than that is dropped instead of sent (counted as ``expired``).  Real-time media
needs this under strict priority: the least important class still served only gets the capacity
left over by every newer frame's more important packets, so without a bound its queue stands
and what it delivers arrives after the receiver's playout deadline, wasting the capacity.

``rate_schedule`` makes the bottleneck's rate a step function of the time since the link started
(a "changing link"): the token bucket switches rate at each step, keeping the credit it accrued
at the old rate.  ``reorder`` holds a packet back by ``reorder_delay_s`` on top of its delay, so
packets released after it overtake it (note: tc netem does the opposite, its ``reorder`` sends the
chosen packets *without* the delay); ``duplicate`` delivers a packet twice.  Both act after the
bottleneck, so neither the held-back packet nor the copy costs bottleneck capacity, and they draw
from their own random streams so switching them on leaves the seeded loss draws unchanged.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from jscc_stream.netem.dscp import PRIORITY_CLASSES, class_rank, dscp_of_tos
from jscc_stream.netem.loss import LossProcess, NoLoss, PacketDropper
from jscc_stream.netem.rates import RateSchedule, check_rate_schedule

__all__ = ["Packet", "ClassCounters", "LinkConfig", "PacketQueues", "TokenBucket", "Link"]

N_CLASSES = len(PRIORITY_CLASSES)


@dataclass(slots=True)
class Packet:
    """One datagram in flight: payload, TOS byte it arrived with, and where it goes."""

    data: bytes
    tos: int = 0
    dest: Any = None
    size: int = 0  # bytes the bottleneck charges (payload + IP/UDP overhead)
    rank: int = 3
    t_in: float = 0.0  # when it entered the bottleneck buffer

    @classmethod
    def make(cls, data: bytes, tos: int = 0, dest: Any = None, overhead: int = 28) -> "Packet":
        return cls(data, tos, dest, len(data) + overhead, class_rank(dscp_of_tos(tos)))


@dataclass
class ClassCounters:
    """Per-class fate of datagrams: in = arrived, lost = loss process, dropped = buffer full
    or waited too long (evicted counts the push-outs among them, expired the ones that waited
    longer than ``max_queue_delay_s``), out = delivered."""

    in_: int = 0
    out: int = 0
    lost: int = 0
    dropped: int = 0
    evicted: int = 0
    expired: int = 0
    duplicated: int = 0  # extra copies delivered (each also counts in ``out``)
    reordered: int = 0  # packets held back by the reorder delay
    bytes_in: int = 0
    bytes_out: int = 0

    def as_dict(self) -> dict[str, int]:
        d = asdict(self)
        d["in"] = d.pop("in_")
        return d


@dataclass
class LinkConfig:
    """What one direction does to traffic.  ``rate_bps=None`` (and no ``rate_schedule``) means
    no bottleneck; ``rate_schedule`` replaces ``rate_bps`` with ((t_s, bit/s), ...)."""

    loss: LossProcess = field(default_factory=NoLoss)
    delay_s: float = 0.0
    jitter_s: float = 0.0
    rate_bps: float | None = None
    burst_bytes: int | None = None
    queue_packets: int = 64
    queue_bytes: int | None = None
    priority: bool = False
    overhead: int = 28
    max_queue_delay_s: float | None = None
    rate_schedule: RateSchedule | None = None
    reorder: float = 0.0
    reorder_delay_s: float = 0.010
    duplicate: float = 0.0

    def __post_init__(self) -> None:
        if self.delay_s < 0 or self.jitter_s < 0:
            raise ValueError("delay and jitter must be >= 0")
        if self.rate_bps is not None and not self.rate_bps > 0:
            raise ValueError("rate must be positive")
        if self.queue_packets < 1:
            raise ValueError("queue must hold at least one packet")
        if self.queue_bytes is not None and self.queue_bytes < 1:
            raise ValueError("queue bytes must be positive")
        if self.max_queue_delay_s is not None and not self.max_queue_delay_s > 0:
            raise ValueError("max queue delay must be positive")
        if self.rate_schedule is not None:
            if self.rate_bps is not None:
                raise ValueError("give a rate or a rate schedule, not both")
            self.rate_schedule = check_rate_schedule(self.rate_schedule)
        check_impairments(self.reorder, self.reorder_delay_s, self.duplicate)


def check_impairments(reorder: float, reorder_delay_s: float, duplicate: float) -> None:
    if not 0.0 <= reorder <= 1.0 or not 0.0 <= duplicate <= 1.0:
        raise ValueError("reorder and duplicate probabilities must be in [0, 1]")
    if not 0.0 <= reorder_delay_s <= 10.0:
        raise ValueError("reorder delay must be between 0 and 10000 ms")


class PacketQueues:
    """The bottleneck buffer: per-class FIFOs sharing one capacity (packets, and bytes if set)."""

    def __init__(self, capacity_packets: int, capacity_bytes: int | None, priority: bool) -> None:
        self.capacity_packets = capacity_packets
        self.capacity_bytes = capacity_bytes
        self.priority = priority
        self._q: list[deque[Packet]] = [deque() for _ in range(N_CLASSES)]
        self._fifo: deque[Packet] = deque()  # arrival order in drop-tail mode
        self._bytes = [0] * N_CLASSES
        self.packets = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.packets

    def _fits(self, extra_packets: int, extra_bytes: int) -> bool:
        if self.packets + extra_packets > self.capacity_packets:
            return False
        return self.capacity_bytes is None or self.bytes + extra_bytes <= self.capacity_bytes

    def push(self, pkt: Packet) -> tuple[bool, list[Packet]]:
        """Queue ``pkt``; return (accepted, packets evicted to make room)."""
        if self._fits(1, pkt.size):
            self._append(pkt)
            return True, []
        if not self.priority:
            return False, []
        # Push-out: only if evicting every packet of its own or a less important class would make
        # room.  The victim is the *oldest* packet of the least important class present (drop
        # head): for real-time media a stale packet is worth least, it would miss its playout
        # deadline anyway, and keeping it delays every fresher packet of its class.
        lower_pkts = sum(len(self._q[r]) for r in range(pkt.rank, N_CLASSES))
        lower_bytes = sum(self._bytes[r] for r in range(pkt.rank, N_CLASSES))
        if self.packets - lower_pkts + 1 > self.capacity_packets or (
                self.capacity_bytes is not None
                and self.bytes - lower_bytes + pkt.size > self.capacity_bytes):
            return False, []
        evicted: list[Packet] = []
        rank = N_CLASSES - 1
        while not self._fits(1, pkt.size):
            while not self._q[rank]:
                rank -= 1
            victim = self._q[rank].popleft()
            self._account(victim, -1)
            evicted.append(victim)
        self._append(pkt)
        return True, evicted

    def _append(self, pkt: Packet) -> None:
        (self._q[pkt.rank] if self.priority else self._fifo).append(pkt)
        self._account(pkt, +1)

    def _account(self, pkt: Packet, sign: int) -> None:
        self.packets += sign
        self.bytes += sign * pkt.size
        self._bytes[pkt.rank] += sign * pkt.size

    def peek(self) -> Packet | None:
        if not self.priority:
            return self._fifo[0] if self._fifo else None
        for q in self._q:
            if q:
                return q[0]
        return None

    def pop(self) -> Packet:
        if self.priority:
            for q in self._q:
                if q:
                    pkt = q.popleft()
                    break
            else:
                raise IndexError("pop from empty queues")
        else:
            pkt = self._fifo.popleft()
        self._account(pkt, -1)
        return pkt

    def clear(self) -> list[Packet]:
        out = [p for q in self._q for p in q] + list(self._fifo)
        for q in self._q:
            q.clear()
        self._fifo.clear()
        self._bytes = [0] * N_CLASSES
        self.packets = self.bytes = 0
        return out


class TokenBucket:
    """Bytes of credit filling at ``rate_bps / 8`` up to ``burst``; a packet leaves when the
    credit covers it (or covers a full burst, for packets larger than the burst)."""

    def __init__(self, rate_bps: float, burst_bytes: int, now: float = 0.0) -> None:
        self.rate = rate_bps / 8.0  # bytes per second
        self.burst = float(burst_bytes)
        self.tokens = self.burst
        self.t = now

    def advance(self, now: float) -> None:
        if now > self.t:
            self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
            self.t = now

    def ready_at(self, size: int) -> float:
        """Earliest time at which a packet of ``size`` bytes may leave."""
        need = min(float(size), self.burst) - self.tokens
        return self.t if need <= 0 else self.t + need / self.rate

    def take(self, size: int) -> None:
        self.tokens -= size

    def set_rate(self, rate_bps: float, burst_bytes: int, now: float) -> None:
        """Switch rate at ``now``, keeping the credit accrued so far (capped at the new depth)."""
        self.advance(now)
        self.rate = rate_bps / 8.0
        self.burst = float(burst_bytes)
        self.tokens = min(self.tokens, self.burst)


def default_burst(rate_bps: float) -> int:
    """Two full-size datagrams or 5 ms of traffic, whichever is larger."""
    return int(max(2 * 1500, rate_bps / 8 * 0.005))


class Link:
    """One direction of the shim: loss, bottleneck, delay.  Pure: ``now`` is passed in."""

    def __init__(self, config: LinkConfig, rng: np.random.Generator, now: float = 0.0) -> None:
        self.config = config
        self.t0 = now
        self._rng = rng
        # own streams for reorder/duplicate: spawning does not advance ``rng``, so the loss and
        # jitter draws stay what they were for the same seed
        self._reorder_rng, self._dup_rng = rng.spawn(2)
        self._dropper: PacketDropper = config.loss.stream(rng)
        self.counters = [ClassCounters() for _ in range(N_CLASSES)]
        self.queues = PacketQueues(config.queue_packets, config.queue_bytes, config.priority)
        self._bucket: TokenBucket | None = None
        self.rate_bps: float | None = None  # the bottleneck's rate now (None: unlimited)
        self._rate_area = 0.0  # integral of the rate (bits) since the last sample ...
        self._rate_since = now  # ... up to here
        self._unlimited = False  # ... or the link was unlimited for part of it
        self._schedule: list[tuple[float, float]] = []  # pending (absolute time, bit/s) steps
        if config.rate_schedule:
            self._start_schedule(config.rate_schedule, now)
        else:
            self._set_bucket(config.rate_bps, config.burst_bytes, now)
        self._delayed: list[tuple[float, int, Packet]] = []
        self._seq = 0
        self._last_release = -float("inf")
        self._ready: list[Packet] = []
        self._max_wait = 0.0  # longest buffer wait of a packet leaving it since the last sample
        self._prev_totals: dict[str, int] = {}
        self._prev_sample = now
        self._unlimited = self.rate_bps is None

    # --- control hooks (runtime changes, e.g. from an HTTP control API) -----------------------
    def set_loss(self, loss: LossProcess) -> None:
        """Switch the loss process; the new one starts from its stationary state."""
        self.config.loss = loss
        self._dropper = loss.stream(self._rng)

    def set_rate(self, rate_bps: float | None, now: float, burst_bytes: int | None = None) -> None:
        """Change (or remove, with None) the bottleneck; queued packets keep their places."""
        if rate_bps is not None and not rate_bps > 0:
            raise ValueError("rate must be positive")
        self._serve(now)
        self._schedule = []  # a fixed rate overrides a schedule
        self.config.rate_schedule = None
        self.config.rate_bps = rate_bps
        self.config.burst_bytes = burst_bytes
        self._set_bucket(rate_bps, burst_bytes, now)
        self._serve(now)

    def set_rate_schedule(self, schedule: RateSchedule, now: float) -> None:
        """Follow ``schedule`` from ``now`` on (its times count from ``now``)."""
        schedule = check_rate_schedule(schedule)
        self._serve(now)
        self.config.rate_schedule = schedule
        self.config.rate_bps = None
        self._start_schedule(schedule, now)
        self._serve(now)

    def set_impairments(self, reorder: float | None = None, reorder_delay_s: float | None = None,
                        duplicate: float | None = None) -> None:
        """Change the reorder/duplicate probabilities (None keeps a value as it is)."""
        cfg = self.config
        new = (cfg.reorder if reorder is None else reorder,
               cfg.reorder_delay_s if reorder_delay_s is None else reorder_delay_s,
               cfg.duplicate if duplicate is None else duplicate)
        check_impairments(*new)
        cfg.reorder, cfg.reorder_delay_s, cfg.duplicate = new

    def set_delay(self, delay_s: float, jitter_s: float = 0.0) -> None:
        if delay_s < 0 or jitter_s < 0:
            raise ValueError("delay and jitter must be >= 0")
        self.config.delay_s, self.config.jitter_s = delay_s, jitter_s

    def _set_bucket(self, rate_bps: float | None, burst: int | None, now: float) -> None:
        self._note_rate_change(rate_bps, now)
        self._bucket = None if rate_bps is None else TokenBucket(
            rate_bps, burst or default_burst(rate_bps), now)

    def _start_schedule(self, schedule: RateSchedule, now: float) -> None:
        first, *rest = schedule
        self._schedule = [(now + t, r) for t, r in rest]
        if self._bucket is None:
            self._set_bucket(first[1], self.config.burst_bytes, now)
        else:
            self._switch_rate(first[1], now)

    def _switch_rate(self, rate_bps: float, t: float) -> None:
        assert self._bucket is not None
        self._bucket.set_rate(rate_bps, self.config.burst_bytes or default_burst(rate_bps), t)
        self._note_rate_change(rate_bps, t)

    def _note_rate_change(self, rate_bps: float | None, t: float) -> None:
        """Keep the rate's integral for the series' mean capacity per interval."""
        if self.rate_bps is not None:
            self._rate_area += self.rate_bps * (t - self._rate_since)
        self._rate_since = t
        self._unlimited = self._unlimited or rate_bps is None
        self.rate_bps = rate_bps

    # --- data path ----------------------------------------------------------------------------
    def arrive(self, pkt: Packet, now: float) -> None:
        """A datagram enters the link at ``now`` (call in time order)."""
        c = self.counters[pkt.rank]
        c.in_ += 1
        c.bytes_in += len(pkt.data)
        self._serve(now)
        if self._dropper.lost():
            c.lost += 1
            return
        if self._bucket is None:
            self._depart(pkt, now)
            return
        pkt.t_in = now
        accepted, evicted = self.queues.push(pkt)
        for v in evicted:
            vc = self.counters[v.rank]
            vc.dropped += 1
            vc.evicted += 1
        if not accepted:
            c.dropped += 1
        self._serve(now)

    def due(self, now: float) -> list[Packet]:
        """Every datagram whose time to leave the link has come, in order."""
        self._serve(now)
        while self._delayed and self._delayed[0][0] <= now:
            self._ready.append(heapq.heappop(self._delayed)[2])
        out, self._ready = self._ready, []
        for p in out:
            c = self.counters[p.rank]
            c.out += 1
            c.bytes_out += len(p.data)
        return out

    def next_event(self) -> float | None:
        """When ``due`` next has something to do (None: nothing pending)."""
        times = []
        if self._ready:
            return -float("inf")
        if self._delayed:
            times.append(self._delayed[0][0])
        head = self.queues.peek()
        if head is not None and self._bucket is not None:
            times.append(self._bucket.ready_at(head.size))
            if self._schedule:  # the rate may change before the head is ready
                times.append(self._schedule[0][0])
        return min(times) if times else None

    def _serve(self, now: float) -> None:
        """Let the bottleneck transmit every packet it could have sent by ``now``, switching
        rate at each scheduled step on the way."""
        while self._schedule and self._schedule[0][0] <= now:
            t, rate = self._schedule.pop(0)
            self._serve_until(t)
            self._switch_rate(rate, t)
        self._serve_until(now)

    def _serve_until(self, now: float) -> None:
        b = self._bucket
        if b is None:
            while self.queues:  # the bottleneck was removed at runtime
                self._depart(self.queues.pop(), now)
            return
        limit = self.config.max_queue_delay_s
        while self.queues:
            head = self.queues.peek()
            assert head is not None
            t = b.ready_at(head.size)
            if t > now:
                break
            self._max_wait = max(self._max_wait, t - head.t_in)
            if limit is not None and t - head.t_in > limit:
                self.queues.pop()  # stale: it would only take capacity from fresher packets
                c = self.counters[head.rank]
                c.dropped += 1
                c.expired += 1
                continue
            b.advance(t)
            b.take(head.size)
            self._depart(self.queues.pop(), t)
        b.advance(now)

    def _depart(self, pkt: Packet, t: float) -> None:
        cfg = self.config
        copies = 1
        if cfg.duplicate and self._dup_rng.random() < cfg.duplicate:
            copies = 2
            self.counters[pkt.rank].duplicated += 1
        held = bool(cfg.reorder) and cfg.reorder_delay_s > 0 and self._reorder_rng.random() < cfg.reorder
        if cfg.delay_s == 0 and cfg.jitter_s == 0 and not held:
            self._ready += [pkt] * copies
            return
        release = t + cfg.delay_s
        if cfg.jitter_s:
            release += float(self._rng.uniform(-cfg.jitter_s, cfg.jitter_s))
        # Jitter never reorders: a packet leaves no earlier than the one before it ...
        release = max(release, t, self._last_release)
        if held:  # ... but a held-back one leaves later, and the packets after it do not wait
            self.counters[pkt.rank].reordered += 1
            release += cfg.reorder_delay_s
        else:
            self._last_release = release
        for _ in range(copies):
            self._seq += 1
            heapq.heappush(self._delayed, (release, self._seq, pkt))

    # --- reporting ------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        per_class = {c.name: self.counters[c.rank].as_dict() for c in PRIORITY_CLASSES}
        total = {k: sum(d[k] for d in per_class.values()) for k in next(iter(per_class.values()))}
        return {"classes": per_class, "total": total, "queued_packets": len(self.queues),
                "queued_bytes": self.queues.bytes, "in_delay": len(self._delayed),
                "loss": str(self.config.loss), "rate_bps": self.rate_bps,
                "rate_schedule": (None if self.config.rate_schedule is None
                                  else [list(e) for e in self.config.rate_schedule]),
                "priority": self.config.priority,
                "max_queue_delay_s": self.config.max_queue_delay_s,
                "reorder": self.config.reorder, "reorder_delay_s": self.config.reorder_delay_s,
                "duplicate": self.config.duplicate}

    def sample(self, now: float) -> dict[str, Any]:
        """One record of the time series: what happened since the previous sample (or the
        start).  ``bytes_in`` is what the sender offered (payload bytes, before loss);
        ``rate_bps`` is the rate at ``now``, ``mean_rate_bps`` the capacity averaged over the
        interval (None where the link was unlimited in it)."""
        self._serve(now)
        self._note_rate_change(self.rate_bps, now)
        dt = now - self._prev_sample
        mean_rate = None if self._unlimited else (self._rate_area / dt if dt > 0 else self.rate_bps)
        totals = {k: sum(getattr(c, k) for c in self.counters)
                  for k in ("in_", "out", "lost", "dropped", "bytes_in", "bytes_out")}
        d = {k: v - self._prev_totals.get(k, 0) for k, v in totals.items()}
        rec = {"t": round(now - self.t0, 4), "dt": round(now - self._prev_sample, 4),
               "bytes_in": d["bytes_in"], "bytes_out": d["bytes_out"],
               "packets_in": d["in_"], "packets_out": d["out"], "packets_lost": d["lost"],
               "packets_dropped": d["dropped"], "rate_bps": self.rate_bps,
               "mean_rate_bps": None if mean_rate is None else round(mean_rate, 1),
               "queue_packets": len(self.queues), "queue_bytes": self.queues.bytes,
               "max_queue_delay_ms": round(self._max_wait * 1e3, 3)}
        self._prev_totals, self._prev_sample, self._max_wait = totals, now, 0.0
        self._rate_area, self._unlimited = 0.0, self.rate_bps is None
        return rec
