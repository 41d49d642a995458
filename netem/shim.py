"""The userspace network shim: a UDP relay that impairs what it forwards.

Senders talk to ``listen``; each sender (client address) gets its own upstream socket towards
``forward``, so whatever the receiver sends back to that socket (RTCP) is relayed to that
sender.  A sender silent for ``client_timeout`` is forgotten; while ``max_clients`` are active
a new source is refused (counted), never one of them evicted: any host can send from made-up
addresses, and must not be able to push a real sender out.  An upstream socket relays back only
what comes from the receiver, so nobody else can feed a sender forged RTCP through the shim.  The impairments live in two pure :class:`~jscc_stream.netem.link.Link` objects, one
per direction; this module only moves bytes between sockets and the links and keeps the DSCP:
it reads each datagram's TOS/traffic class (``IP_RECVTOS``/``IPV6_RECVTCLASS`` + ``recvmsg``)
and sets it on the outgoing socket before sending that datagram on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jscc_stream.netem.analog_noise import AnalogNoise
from jscc_stream.netem.awgn import AwgnChannel
from jscc_stream.netem.link import Link, LinkConfig, Packet
from jscc_stream.netem.loss import LossProcess, parse_loss_spec
from jscc_stream.netem.rates import RateSchedule, parse_rate, parse_rate_schedule
from jscc_stream.udp import ANCILLARY_SIZE, MAX_DATAGRAM, TosSetter, read_tos, resolve, udp_socket

__all__ = ["ShimConfig", "Shim", "run_shim"]

log = logging.getLogger("jscc_stream.netem.shim")

#: records of the forward link's time series kept (10 minutes at the default 0.5 s interval)
SERIES_MAX = 1200

@dataclass
class ShimConfig:
    listen: tuple[str, int]
    forward: tuple[str, int]
    forward_link: LinkConfig = field(default_factory=LinkConfig)
    reverse_link: LinkConfig = field(default_factory=LinkConfig)
    seed: int | None = None
    stats_interval: float = 5.0
    series_interval: float = 0.0  # seconds between time-series records of the forward link; 0: off
    max_clients: int = 16
    client_timeout: float = 10.0  # seconds a sender may stay silent before it is forgotten
    recv_batch: int = 256
    rcvbuf: int = 4 << 20
    awgn_snr_db: float | None = None  # channel noise on analog streams' float16 values (paper 002)


@dataclass
class _Client:
    addr: tuple
    sock: socket.socket
    tos: TosSetter
    last_seen: float


class Shim:
    """The relay.  ``await start()``, then it runs on the loop until ``close()``."""

    def __init__(self, config: ShimConfig) -> None:
        self.config = config
        ss = np.random.SeedSequence(config.seed)
        fwd_seed, rev_seed = ss.spawn(2)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fwd_rng = np.random.default_rng(fwd_seed)
        self._rev_rng = np.random.default_rng(rev_seed)
        self.analog_noise = (None if config.awgn_snr_db is None else
                             AnalogNoise(AwgnChannel(config.awgn_snr_db), np.random.default_rng(ss.spawn(1)[0])))
        self.forward_link: Link | None = None
        self.reverse_link: Link | None = None
        self._listen: socket.socket | None = None
        self._listen_tos: TosSetter | None = None
        self._fwd_family = socket.AF_INET
        self._fwd_addr: tuple = ()
        self._clients: OrderedDict[tuple, _Client] = OrderedDict()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._stats_task: asyncio.Task | None = None
        # recv/send: socket errors; clients_expired: senders forgotten after client_timeout of
        # silence; clients_refused: datagrams of new sources dropped while the table was full;
        # orphaned: queued packets whose sender was forgotten meanwhile; foreign: datagrams at an
        # upstream socket from anyone but the receiver (dropped)
        self.errors = {"recv": 0, "send": 0, "clients_expired": 0, "clients_refused": 0, "orphaned": 0,
                       "foreign": 0}
        self._expiry_timer: asyncio.TimerHandle | None = None
        self.started_at = 0.0
        self.closed = asyncio.Event()
        #: forward-link records, one per ``series_interval`` (see Link.sample): the newest
        #: SERIES_MAX only, so a long-running shim's memory stays flat (the soak found it growing)
        self.series: deque[dict[str, Any]] = deque(maxlen=SERIES_MAX)
        self._series_timer: asyncio.TimerHandle | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> tuple:
        """Bind the sockets; returns the listening address (with the real port if 0 was asked)."""
        loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        self.forward_link = Link(self.config.forward_link, self._fwd_rng, now)
        self.reverse_link = Link(self.config.reverse_link, self._rev_rng, now)
        self._fwd_family, self._fwd_addr = resolve(*self.config.forward)
        family, addr = resolve(*self.config.listen, passive=True)
        try:
            sock = udp_socket(family, addr, rcvbuf=self.config.rcvbuf, recv_tos=True, dual_stack=True)
        except OSError as exc:
            raise ValueError(f"cannot listen on {self.config.listen[0]}:{self.config.listen[1]}: "
                             f"{exc.strerror}") from None
        self._listen = sock
        self._listen_tos = TosSetter(sock)
        loop.add_reader(sock.fileno(), self._on_listen_readable)
        self.started_at = time.time()
        if self.config.stats_interval > 0:
            self._stats_task = loop.create_task(self._log_stats_forever())
        if self.config.series_interval > 0:
            self._schedule_sample(now, 1)
        self._expiry_timer = loop.call_later(self.config.client_timeout, self._on_expiry_timer)
        log.info("listening on %s, forwarding to %s; forward: %s%s", self.listen_address,
                 self._fwd_addr[:2], _describe(self.config.forward_link),
                 "" if self.config.awgn_snr_db is None else f"; AWGN at {self.config.awgn_snr_db:g} dB SNR on analog streams")
        return self.listen_address

    @property
    def listen_address(self) -> tuple:
        assert self._listen is not None, "start() first"
        return self._listen.getsockname()

    def upstream_addresses(self) -> list[tuple]:
        """Local addresses of the per-sender sockets facing the receiver."""
        return [c.sock.getsockname() for c in self._clients.values()]

    def close(self) -> None:
        if self._loop is None or self.closed.is_set():
            return
        if self._timer:
            self._timer.cancel()
        if self._stats_task:
            self._stats_task.cancel()
        if self._series_timer:
            self._series_timer.cancel()
        if self._expiry_timer:
            self._expiry_timer.cancel()
        for c in list(self._clients.values()):
            self._drop_client(c)
        if self._listen is not None:
            self._loop.remove_reader(self._listen.fileno())
            self._listen.close()
        self.closed.set()

    # --- control hooks (for a later HTTP control API) -------------------------------------------
    def set_loss(self, loss: str | LossProcess, direction: str = "forward") -> None:
        """Swap the loss process (``"ge10"``, ``"uniform:0.05"``, or a LossProcess)."""
        proc = parse_loss_spec(loss) if isinstance(loss, str) else loss
        self._link(direction).set_loss(proc)
        log.info("%s loss now %s", direction, proc)

    def set_rate(self, rate: str | float | None, direction: str = "forward") -> None:
        """Change the bottleneck rate (``"2mbit"``, bits/s, or None to remove it)."""
        bps = parse_rate(rate) if isinstance(rate, str) else rate
        assert self._loop is not None
        self._link(direction).set_rate(bps, self._loop.time())
        self._pump()
        log.info("%s rate now %s", direction, "unlimited" if bps is None else f"{bps:g} bit/s")

    def set_delay(self, delay_ms: float, jitter_ms: float = 0.0, direction: str = "forward") -> None:
        self._link(direction).set_delay(delay_ms / 1000.0, jitter_ms / 1000.0)

    def set_rate_schedule(self, schedule: str | RateSchedule, direction: str = "forward") -> None:
        """Follow a rate schedule (``"0:2mbit,20:500kbit"`` or ((s, bit/s), ...)) from now on."""
        sched = parse_rate_schedule(schedule) if isinstance(schedule, str) else schedule
        assert self._loop is not None
        self._link(direction).set_rate_schedule(sched, self._loop.time())
        self._pump()
        log.info("%s rate schedule now %s", direction, sched)

    def set_impairments(self, reorder: float | None = None, reorder_delay_ms: float | None = None,
                        duplicate: float | None = None, direction: str = "forward") -> None:
        """Change reorder/duplicate probabilities and the reorder hold-back (None: unchanged)."""
        self._link(direction).set_impairments(
            reorder, None if reorder_delay_ms is None else reorder_delay_ms / 1000.0, duplicate)

    def _link(self, direction: str) -> Link:
        link = {"forward": self.forward_link, "reverse": self.reverse_link}.get(direction)
        if link is None:
            raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
        return link

    def stats(self) -> dict[str, Any]:
        assert self.forward_link is not None and self.reverse_link is not None
        out = {"forward": self.forward_link.stats(), "reverse": self.reverse_link.stats(),
               "clients": len(self._clients), "errors": dict(self.errors),
               "uptime_s": round(time.time() - self.started_at, 3)}
        if self.analog_noise is not None:
            n = self.analog_noise
            out["awgn"] = {"snr_db": n.channel.snr_db, "analog_streams": len(n.analog_ssrcs),
                           "packets_noised": n.packets_noised, "values_noised": n.values_noised}
        return out

    # --- time series ------------------------------------------------------------------------------
    def _schedule_sample(self, t0: float, k: int) -> None:
        """Sample at absolute times t0 + k*interval, so timer lateness does not accumulate."""
        assert self._loop is not None
        at = t0 + k * self.config.series_interval
        self._series_timer = self._loop.call_at(at, self._on_sample_timer, t0, k)

    def _on_sample_timer(self, t0: float, k: int) -> None:
        self.sample_series()
        assert self._loop is not None
        behind = int((self._loop.time() - t0) / self.config.series_interval)
        self._schedule_sample(t0, max(k, behind) + 1)

    def sample_series(self) -> None:
        """Append the forward link's record for the time since the previous one."""
        assert self._loop is not None and self.forward_link is not None
        self.series.append(self.forward_link.sample(self._loop.time()))
        self._pump()

    # --- socket side ----------------------------------------------------------------------------
    def _client_for(self, addr: tuple, now: float) -> _Client | None:
        """The sender at ``addr``, new if there is room; None (refused, counted) when the table
        is full of senders heard from within ``client_timeout``."""
        c = self._clients.get(addr)
        if c is not None:
            c.last_seen = now
            self._clients.move_to_end(addr)
            return c
        if len(self._clients) >= self.config.max_clients:
            self.expire_clients(now)
        if len(self._clients) >= self.config.max_clients:
            self.errors["clients_refused"] += 1
            n = self.errors["clients_refused"]
            if n <= 3 or n % 1000 == 0:
                log.warning("refused new source %s: %d senders active (--max-clients); %d refused so far",
                            addr[:2], len(self._clients), n)
            return None
        sock = udp_socket(self._fwd_family, rcvbuf=self.config.rcvbuf, recv_tos=True)
        c = _Client(addr, sock, TosSetter(sock), now)
        self._clients[addr] = c
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._on_upstream_readable, c)
        log.info("new sender %s -> upstream port %d", addr[:2], sock.getsockname()[1])
        return c

    def expire_clients(self, now: float) -> int:
        """Forget the senders silent for longer than ``client_timeout``; how many were."""
        stale = [c for c in self._clients.values() if now - c.last_seen > self.config.client_timeout]
        for c in stale:  # in order of last activity, oldest first
            self._drop_client(c)
            log.info("sender %s silent for %.1f s: forgotten", c.addr[:2], now - c.last_seen)
        self.errors["clients_expired"] += len(stale)
        return len(stale)

    def _on_expiry_timer(self) -> None:
        assert self._loop is not None
        self.expire_clients(self._loop.time())
        self._expiry_timer = self._loop.call_later(max(0.05, self.config.client_timeout / 2),
                                                   self._on_expiry_timer)

    def _drop_client(self, c: _Client) -> None:
        self._clients.pop(c.addr, None)
        assert self._loop is not None
        self._loop.remove_reader(c.sock.fileno())
        c.sock.close()

    def _drain(self, sock: socket.socket, on_packet: Callable[[bytes, int, tuple, float], None]) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for _ in range(self.config.recv_batch):
            try:
                data, anc, _flags, addr = sock.recvmsg(MAX_DATAGRAM, ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. an ICMP error queued on the socket
                self.errors["recv"] += 1
                log.debug("recv error: %s", exc)
                continue
            on_packet(data, (read_tos(anc) or 0) & 0xFC, addr, now)
        self._pump()

    def _on_listen_readable(self) -> None:
        assert self._listen is not None and self.forward_link is not None
        link = self.forward_link
        overhead = link.config.overhead

        noise = self.analog_noise

        def on_packet(data: bytes, tos: int, addr: tuple, now: float) -> None:
            client = self._client_for(addr, now)
            if client is None:
                return
            if noise is not None:
                data = noise.apply(data)
            link.arrive(Packet.make(data, tos, client.addr, overhead), now)

        self._drain(self._listen, on_packet)

    def _on_upstream_readable(self, client: _Client) -> None:
        assert self.reverse_link is not None
        link = self.reverse_link
        overhead = link.config.overhead

        def on_packet(data: bytes, tos: int, addr: tuple, now: float) -> None:
            if tuple(addr[:2]) != receiver:  # the upstream port is open to anyone: only the receiver's
                self.errors["foreign"] += 1  # datagrams go back to the sender (it trusts what we relay)
                return
            link.arrive(Packet.make(data, tos, client.addr, overhead), now)

        receiver = tuple(self._fwd_addr[:2])
        if client.sock.fileno() >= 0:
            self._drain(client.sock, on_packet)

    def _pump(self) -> None:
        """Send whatever the links release now and wake up again when they next will."""
        assert self._loop is not None and self.forward_link and self.reverse_link
        self._timer_at = float("inf")
        now = self._loop.time()
        for pkt in self.forward_link.due(now):
            c = self._clients.get(pkt.dest)
            if c is not None:
                self._send(c.sock, c.tos, pkt, self._fwd_addr)
            else:
                self.errors["orphaned"] += 1
        for pkt in self.reverse_link.due(now):
            assert self._listen is not None and self._listen_tos is not None
            self._send(self._listen, self._listen_tos, pkt, pkt.dest)
        nxt = [t for t in (self.forward_link.next_event(), self.reverse_link.next_event())
               if t is not None]
        if nxt:
            at = min(nxt)
            if at < self._timer_at:
                if self._timer:
                    self._timer.cancel()
                self._timer_at = at
                self._timer = self._loop.call_at(max(at, now), self._pump)

    def _send(self, sock: socket.socket, tos: TosSetter, pkt: Packet, addr: tuple) -> None:
        try:
            tos.set(pkt.tos)
            sock.sendto(pkt.data, addr)
        except OSError as exc:  # full socket buffer, unreachable peer: the datagram is gone
            self.errors["send"] += 1
            log.debug("send to %s failed: %s", addr[:2], exc)

    async def _log_stats_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval)
            assert self.forward_link is not None
            st = self.forward_link.stats()
            parts = [f"{name} in={c['in']} out={c['out']} lost={c['lost']} dropped={c['dropped']}"
                     for name, c in st["classes"].items() if c["in"]]
            log.info("forward: %s | queued=%d | reverse out=%d",
                     "; ".join(parts) or "idle", st["queued_packets"],
                     self.reverse_link.stats()["total"]["out"] if self.reverse_link else 0)


def _describe(cfg: LinkConfig) -> str:
    parts = [f"loss={cfg.loss}"]
    if cfg.delay_s or cfg.jitter_s:
        parts.append(f"delay={cfg.delay_s * 1e3:g}ms±{cfg.jitter_s * 1e3:g}ms")
    if cfg.reorder:
        parts.append(f"reorder={cfg.reorder:g}+{cfg.reorder_delay_s * 1e3:g}ms")
    if cfg.duplicate:
        parts.append(f"duplicate={cfg.duplicate:g}")
    if cfg.rate_bps or cfg.rate_schedule:
        rate = (f"{cfg.rate_bps:g}bit/s" if cfg.rate_bps else
                "schedule " + ",".join(f"{t:g}:{r:g}" for t, r in cfg.rate_schedule or ()))
        parts.append(f"rate={rate} queue={cfg.queue_packets}p"
                     + (f"/{cfg.queue_bytes}B" if cfg.queue_bytes else "")
                     + (" priority" if cfg.priority else " drop-tail")
                     + (f" max-delay={cfg.max_queue_delay_s * 1e3:g}ms"
                        if cfg.max_queue_delay_s else ""))
    return " ".join(parts)


async def run_shim(config: ShimConfig, stats_json: Path | None = None,
                   on_ready: Callable[[Shim], None] | None = None) -> dict[str, Any]:
    """Run until SIGINT/SIGTERM; write the final counters to ``stats_json``."""
    import signal

    shim = Shim(config)
    await shim.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    if on_ready:
        on_ready(shim)
    try:
        await stop.wait()
    finally:
        if config.series_interval > 0:
            shim.sample_series()  # the last, partial interval
        stats = shim.stats()
        shim.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass
    log.info("stopped; forward totals %s", stats["forward"]["total"])
    if config.series_interval > 0:
        stats["series"] = list(shim.series)
    if stats_json is not None:
        stats_json.write_text(json.dumps(stats, indent=2) + "\n")
    return stats
