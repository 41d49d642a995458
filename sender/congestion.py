"""Sender-side congestion control: the target bitrate follows what the path carries.

Google-Congestion-Control-like (draft-ietf-rmcat-gcc-02, transport-wide feedback / RFC 8888),
pure and clock-free: every call carries ``now`` (sender monotonic seconds) and receiver arrival
times only meet each other as differences, so the two clocks never need to agree.  The target
is the minimum of two estimates, clamped to [min_bps, max_bps]:

* delay-based: packets are grouped into 5 ms send bursts; the growth of the one-way delay
  between groups goes through a trendline (least-squares slope of the smoothed accumulated
  delay) and an overuse detector with an adaptive threshold; an AIMD rule raises the rate while
  the queue is steady and cuts it to ``beta`` x the acknowledged bitrate when the queue grows;
* loss-based: > 20 % loss cuts the rate by half the loss, < 5 % lets it grow 5 % (GCC: 10 % and
  2 %; this codec rides through random loss); > 5 % when the sender sees the loss fall on its
  least important packets only (a full priority queue dropping them: congestion); > 20 % loss with under 75 % of the sent rate getting
  through sets it to the acked rate (a full queue that drops, e.g. a priority queue evicting the
  least important packets, shows no delay growth).

Feedback is untrusted input (it crosses the network): entries that are not finite, negative,
out of order or duplicated are dropped, and no input can move the target out of its bounds.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["PacketResult", "RateControllerConfig", "RateController"]


@dataclass(frozen=True, slots=True)
class PacketResult:
    """What the receiver reported for one sent packet (arrival None: reported lost)."""

    seq: int  # transport sequence number, unwrapped by the caller
    send_time: float  # sender's monotonic clock, seconds
    size: int  # bytes on the wire (UDP payload)
    arrival: float | None  # receiver's clock, seconds (its own epoch)


@dataclass
class RateControllerConfig:
    """Bounds plus GCC's tuning constants (defaults from the draft / libwebrtc unless noted)."""

    start_bps: float
    min_bps: float
    max_bps: float
    burst_s: float = 0.005  # packets sent within this of a group's first form one group
    trend_window: int = 20  # groups in the trendline regression
    trend_min_groups: int = 4  # libwebrtc waits for a full window; a heavy overload shows sooner
    smoothing: float = 0.9  # exponential smoothing of the accumulated delay
    trend_gain: float = 4.0
    threshold_ms: float = 12.5  # initial adaptive threshold (gamma)
    k_up: float = 0.0087
    k_down: float = 0.039
    threshold_min_ms: float = 6.0
    threshold_max_ms: float = 600.0
    overuse_time_s: float = 0.010  # overuse must last this long before it counts
    beta: float = 0.85  # decrease to beta x the acknowledged bitrate
    increase_per_s: float = 0.25  # far from the last congestion point (libwebrtc: 8 %/s, plus probing)
    near_increase_per_s: float = 0.05  # near the last congestion point: at least this share per second
    acked_window_s: float = 0.5  # receive-rate window (receiver clock)
    loss_low: float = 0.05  # GCC: 2 %; the top levels are protected, so a few % of random loss is no congestion
    #: GCC: 10 %.  This codec rides through random loss (every payload decodes alone, the top levels
    #: carry parity): at 10 % the rate would only ratchet down on a lossy radio link that is not
    #: congested (GE ~10 %: 1152 -> 457 kbit/s in 20 s).  Congestion shows as delay growth, or as
    #: heavy loss with little getting through (``congested_share``), first.
    loss_high: float = 0.20
    loss_high_priority: float = 0.05  # ... when the loss falls on the least important packets only
    loss_increase: float = 1.05
    #: with > loss_high loss and an acked rate below this share of the target, the loss-based
    #: rate drops to the acked rate at once (random loss alone leaves acked ~ (1 - loss) x target)
    congested_share: float = 0.75
    loss_interval_s: float = 0.5  # the loss rule runs at most this often ...
    loss_min_packets: int = 40  # ... and only over this many reported packets
    feedback_timeout_s: float = 1.0  # silence longer than this (or 3 RTTs) halves the rate per second

    def __post_init__(self) -> None:
        lo, st, hi = self.min_bps, self.start_bps, self.max_bps
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in (lo, st, hi)):
            raise ValueError(f"rates must be positive and finite: min={lo!r} start={st!r} max={hi!r}")
        if not lo <= st <= hi:
            raise ValueError(f"need min_bps <= start_bps <= max_bps, got {lo} <= {st} <= {hi}")
        if not 0 < self.beta < 1 or self.trend_window < 2 or not self.burst_s > 0:
            raise ValueError("beta must be in (0, 1), trend_window >= 2, burst_s > 0")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _valid(r: Any) -> bool:
    """Entries a sane receiver could have sent; anything else is ignored."""
    seq, size = getattr(r, "seq", None), getattr(r, "size", None)
    arrival = getattr(r, "arrival", None)
    send = getattr(r, "send_time", None)
    return (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0
            and _finite(send) and abs(send) < 1e9 and _finite(size) and 0 < size <= 65535
            and (arrival is None or _finite(arrival) and abs(arrival) < 1e9))


class _DelayDetector:
    """Send-time groups -> delay trend -> normal / overuse / underuse, with adaptive threshold."""

    def __init__(self, cfg: RateControllerConfig) -> None:
        self.cfg = cfg
        self.threshold = cfg.threshold_ms
        self.state = "normal"
        self.trend = 0.0  # modified trend, ms, compared against the threshold
        self._reset()

    def _reset(self) -> None:
        self._group: list[float] | None = None  # [first_send, last_send, last_arrival]
        self._prev: list[float] | None = None
        self._hist: deque[tuple[float, float]] = deque(maxlen=self.cfg.trend_window)
        self._acc = self._smoothed = 0.0
        self._first_arrival: float | None = None
        self._n = 0
        self._over_s, self._over_n, self._slope = -1.0, 0, 0.0
        self._thr_t: float | None = None

    def add(self, send: float, arrival: float) -> bool:
        """One received packet, in send order; True when it closes a group that signalled overuse."""
        g = self._group
        if g is None:
            self._group = [send, send, arrival]
            return False
        if send < g[0]:
            return False  # reordered: too late to say anything about the queue
        if abs(arrival - g[2]) > 3.0:
            self._reset()  # the receiver's clock jumped (or a long gap): start afresh
            self._group = [send, send, arrival]
            return False
        same_arrival_burst = arrival - g[2] < self.cfg.burst_s and (arrival - g[2]) - (send - g[1]) < 0
        if send - g[0] <= self.cfg.burst_s or (same_arrival_burst and send - g[0] < 0.1):
            g[1], g[2] = max(g[1], send), max(g[2], arrival)
            return False
        overuse = False
        if self._prev is not None:
            ds, da = g[1] - self._prev[1], g[2] - self._prev[2]
            if da < 0 or da > 3.0 or abs(da - ds) > 3.0:
                self._reset()  # clock jump or long gap: start the trend afresh
            else:
                overuse = self._update(1000 * (da - ds), 1000 * ds, 1000 * g[2])
        self._prev, self._group = g, [send, send, arrival]
        return overuse

    def _update(self, d_ms: float, send_delta_ms: float, arrival_ms: float) -> bool:
        cfg = self.cfg
        self._n += 1
        if self._first_arrival is None:
            self._first_arrival = arrival_ms
        self._acc += d_ms
        self._smoothed = cfg.smoothing * self._smoothed + (1 - cfg.smoothing) * self._acc
        self._hist.append((arrival_ms - self._first_arrival, self._smoothed))
        slope = self._slope
        if len(self._hist) >= self.cfg.trend_min_groups:
            xs, ys = zip(*self._hist)
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            den = sum((x - mx) ** 2 for x in xs)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den > 0 else slope
        return self._detect(slope, send_delta_ms, arrival_ms)

    def _detect(self, slope: float, send_delta_ms: float, now_ms: float) -> bool:
        cfg = self.cfg
        self.trend = t = min(self._n, 60) * slope * cfg.trend_gain
        overuse = False
        if t > self.threshold:
            self._over_s = send_delta_ms / 2 if self._over_s < 0 else self._over_s + send_delta_ms
            self._over_n += 1
            if self._over_s > 1000 * cfg.overuse_time_s and self._over_n > 1 and slope >= self._slope:
                self._over_s, self._over_n, overuse, self.state = 0.0, 0, True, "overuse"
        else:
            self._over_s, self._over_n = -1.0, 0
            self.state = "underuse" if t < -self.threshold else "normal"
        self._slope = slope
        # Adaptive threshold: follows |trend| (slowly up, faster down) so that competing
        # loss-based flows do not starve us and noise does not trigger decreases.
        last = now_ms if self._thr_t is None else self._thr_t
        self._thr_t = now_ms
        if abs(t) <= self.threshold + 15:
            k = cfg.k_down if abs(t) < self.threshold else cfg.k_up
            dt = min(max(now_ms - last, 0.0), 100.0)
            self.threshold += k * (abs(t) - self.threshold) * dt
            self.threshold = min(max(self.threshold, cfg.threshold_min_ms), cfg.threshold_max_ms)
        return overuse


class RateController:
    """Target bitrate from transport-wide feedback, RTT and loss reports (see module docstring)."""

    def __init__(self, cfg: RateControllerConfig) -> None:
        self.cfg = cfg
        self._det = _DelayDetector(cfg)
        self._delay = self._loss = self._target = float(cfg.start_bps)
        self._state = "increase"
        self._rtt, self._rtt_seen = 0.1, False
        self._acked: deque[tuple[float, int]] = deque()
        self._acked_bps: float | None = None
        self._cap: float | None = None  # link capacity estimate (kbps) at past decreases
        self._cap_var = 0.4
        self._pkt_bytes = 900.0
        self._seen: OrderedDict[int, bool] = OrderedDict()  # seq -> received, bounded
        self._lost = self._counted = 0
        self._loss_fraction = 0.0
        # sender times of the last AIMD step, loss rule, live feedback, backoff; last decrease
        self._t_aimd: float | None = None
        self._t_loss: float | None = None
        self._t_feedback: float | None = None
        self._t_backoff: float | None = None
        self._t_decrease = -math.inf
        self._t_priority_drops: float | None = None

    @property
    def target_bps(self) -> float:
        return self._target

    def _commit(self) -> float:
        lo, hi = self.cfg.min_bps, self.cfg.max_bps
        self._delay = min(max(self._delay, lo), hi)
        self._loss = min(max(self._loss, lo), hi)
        self._target = min(max(min(self._delay, self._loss), lo), hi)
        return self._target

    def on_feedback(self, results: Sequence[PacketResult], now: float, priority_drops: bool = False) -> float:
        """One feedback message: per-packet arrival times (None = lost).  ``priority_drops``: the
        sender saw the loss fall on its least important packets and spare its most important ones,
        which is how a priority queue that is full drops: congestion, not a lossy link."""
        if not _finite(now):
            return self._target
        if priority_drops:
            self._t_priority_drops = now
        try:
            fresh: dict[int, PacketResult] = {}
            for r in results:
                if _valid(r) and (r.seq not in fresh or r.arrival is not None):
                    fresh[r.seq] = r
        except TypeError:
            return self._target
        overuse = False
        for r in sorted(fresh.values(), key=lambda r: (r.send_time, r.seq)):
            overuse |= self._take(r)
        if any(r.arrival is not None for r in fresh.values()):
            self._t_feedback = self._t_backoff = now  # the path is alive
            self._update_delay(overuse, now)
        self._maybe_loss_rule(now)
        return self._commit()

    def _take(self, r: PacketResult) -> bool:
        """Count one reported packet once (seq dedupe); True if it closed an overusing group."""
        before = self._seen.get(r.seq)
        if before is not None and (before or r.arrival is None):
            return False  # duplicate report
        if before is False:
            self._lost = max(self._lost - 1, 0)  # reported lost earlier, arrived after all
        else:
            self._counted += 1
        self._seen[r.seq] = r.arrival is not None
        while len(self._seen) > 8192:
            self._seen.popitem(last=False)
        if r.arrival is None:
            self._lost += 1
            return False
        self._pkt_bytes = 0.95 * self._pkt_bytes + 0.05 * r.size
        self._add_acked(r.arrival, r.size)
        return self._det.add(r.send_time, r.arrival)

    def _add_acked(self, arrival: float, size: int) -> None:
        """Receive rate over the last window of the receiver's clock."""
        a = self._acked
        if a and not -3.0 < arrival - a[-1][0] < 3.0:
            a.clear()  # receiver clock jumped: old samples no longer comparable
        a.append((max(arrival, a[-1][0]) if a else arrival, size))
        while a[-1][0] - a[0][0] > self.cfg.acked_window_s:
            a.popleft()
        span = a[-1][0] - a[0][0]
        if span >= 0.25 * self.cfg.acked_window_s:
            self._acked_bps = 8 * (sum(s for _, s in a) - a[0][1]) / span

    def _update_delay(self, overuse: bool, now: float) -> None:
        """AIMD on the detector's signal."""
        dt = 0.0 if self._t_aimd is None else min(max(now - self._t_aimd, 0.0), 1.0)
        self._t_aimd = now
        signal = "overuse" if overuse else self._det.state
        self._state = {"overuse": "decrease", "underuse": "hold"}.get(signal, "increase")
        acked = self._acked_bps
        if self._state == "increase":
            self._increase(acked, dt)
        elif self._state == "decrease" and (now - self._t_decrease >= min(max(self._rtt, 0.01), 0.2)
                                            or (acked and acked < self._delay / 2)):
            self._decrease(acked, now)  # at most once per RTT, unless the rate collapsed

    def _decrease(self, acked: float | None, now: float) -> None:
        new = self.cfg.beta * (acked if acked else self._delay)
        self._delay = min(self._delay, new)
        self._t_decrease = now
        if acked:
            kb = acked / 1000
            if self._cap is not None and kb < self._cap - 3 * math.sqrt(self._cap_var * self._cap):
                self._cap = None  # capacity fell well below the last estimate
            if self._cap is None:
                self._cap = kb
            else:
                self._cap = 0.95 * self._cap + 0.05 * kb
                self._cap_var = min(max(0.95 * self._cap_var + 0.05 * (self._cap - kb) ** 2 / self._cap, 0.4), 2.5)

    def _increase(self, acked: float | None, dt: float) -> None:
        cap = self._cap
        if cap is not None and acked and acked / 1000 > cap + 3 * math.sqrt(self._cap_var * cap):
            self._cap = cap = None  # more gets through than at the last congestion: look again
        if cap is not None:  # near the congestion point: one packet per response time, or 5 %/s
            # (this stream's packets are small: one packet per response time alone took ~15 s
            # to climb back 100 kbit/s at 500 kbit/s)
            per_s = max(4000.0, 8 * self._pkt_bytes / (self._rtt + 0.1), self.cfg.near_increase_per_s * self._delay)
            new = self._delay + per_s * dt
        else:
            new = self._delay * (1 + self.cfg.increase_per_s) ** dt
        if acked:  # never run far ahead of what the path is seen to carry
            new = min(new, max(self._delay, 1.5 * acked + 10_000))
        self._delay = new

    def _maybe_loss_rule(self, now: float) -> None:
        if self._counted < self.cfg.loss_min_packets:
            return
        if self._t_loss is not None and 0 <= now - self._t_loss < self.cfg.loss_interval_s:
            return
        self._apply_loss(self._lost / self._counted, now)
        self._lost = self._counted = 0

    def _apply_loss(self, p: float, now: float) -> None:
        cfg = self.cfg
        self._t_loss, self._loss_fraction = now, p
        recent = self._t_priority_drops is not None and 0 <= now - self._t_priority_drops < 2 * cfg.loss_interval_s
        if p > (cfg.loss_high_priority if recent else cfg.loss_high):
            self._loss = min(self._loss, self._target) * (1 - 0.5 * p)
            acked = self._acked_bps
            if acked and acked < cfg.congested_share * self._target:
                # heavy loss *and* far less getting through than sent: a full (drop-tail or
                # priority-evicting) bottleneck, whose delay no longer grows; go to what it carries
                self._loss = min(self._loss, acked)
        elif p < cfg.loss_low:
            self._loss = max(self._loss, self._target) * cfg.loss_increase
        else:
            self._loss = min(self._loss, self._target)  # hold where we are

    def on_standing_queue(self, now: float) -> float:
        """The sender saw its least important packets wait long in the path (a priority queue
        that stays full): the in-order, important packets show no delay growth, so the delay
        detector cannot; back off to ``beta`` x the acknowledged rate, at most once per round trip."""
        if _finite(now) and now - self._t_decrease >= max(self._rtt, 0.2):
            self._decrease(self._acked_bps, now)
            self._state = "decrease"
        return self._commit()

    def on_loss_report(self, fraction_lost: float, now: float) -> float:
        """Loss fraction from an RTCP receiver report: a second, coarser loss signal."""
        if _finite(fraction_lost) and _finite(now) and 0 <= fraction_lost <= 1:
            if self._t_loss is None or not 0 <= now - self._t_loss < self.cfg.loss_interval_s:
                self._apply_loss(float(fraction_lost), now)
        return self._commit()

    def on_rtt(self, rtt_s: float, now: float) -> None:
        """Round-trip time from RTCP SR/RR; sets the additive step and the silence timeout."""
        if _finite(rtt_s) and 0 < rtt_s < 60:
            self._rtt = 0.8 * self._rtt + 0.2 * rtt_s if self._rtt_seen else float(rtt_s)
            self._rtt_seen = True

    def on_timeout(self, now: float) -> float:
        """Periodic tick: with no feedback for a while, halve the rate per second of silence."""
        if not _finite(now):
            return self._target
        if self._t_feedback is None:
            self._t_feedback = self._t_backoff = now  # silence counts from the first tick
        limit = max(self.cfg.feedback_timeout_s, 3 * self._rtt)
        start = max(self._t_feedback + limit, self._t_backoff or -math.inf)
        if now > start:
            self._delay = min(self._delay, self._target) * 0.5 ** (now - start)
            self._state, self._t_backoff, self._cap = "hold", now, None  # capacity unknown now
        return self._commit()

    def snapshot(self) -> dict[str, Any]:
        """State for stats and logs."""
        return {"target_bps": self._target, "delay_bps": self._delay, "loss_bps": self._loss,
                "acked_bps": self._acked_bps, "state": self._state, "trend": self._det.trend,
                "threshold": self._det.threshold, "signal": self._det.state,
                "loss_fraction": self._loss_fraction, "rtt": self._rtt}
