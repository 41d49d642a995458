"""The shim on loopback sockets: forwarding both ways, DSCP kept, loss statistics, priority under
overload, garbage, and the CLI's clean shutdown.  Synchronisation is by awaiting conditions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from jscc_stream.netem.dscp import dscp_of_tos, tos_of_dscp
from jscc_stream.netem.link import LinkConfig
from jscc_stream.netem.loss import GE_10, LossSpecError
from jscc_stream.netem.shim import Shim, ShimConfig
from jscc_stream.udp import enable_tos_reception, read_tos

AF41, AF42, AF43, BE, LE, EF = (tos_of_dscp(d) for d in (34, 36, 38, 0, 1, 46))


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Endpoint:
    """A non-blocking UDP socket whose arrivals (data, tos, addr) land in an asyncio queue."""

    def __init__(self, family: int = socket.AF_INET) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        enable_tos_reception(self.sock)
        self.sock.setblocking(False)
        self.sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        self.queue: asyncio.Queue = asyncio.Queue()
        self.count = 0
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data, anc, _, addr = self.sock.recvmsg(65535, 64)
            except BlockingIOError:
                return
            self.count += 1
            self.queue.put_nowait((data, read_tos(anc), addr))

    @property
    def addr(self):
        return self.sock.getsockname()

    def send(self, data: bytes, addr, tos: int = 0) -> None:
        if self.sock.family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
        else:
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        self.sock.sendto(data, addr)

    async def get(self, timeout: float = 5.0):
        return await asyncio.wait_for(self.queue.get(), timeout)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


async def until(cond, timeout: float = 10.0) -> None:
    """Wait for a condition (polled each loop turn), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def make_shim(receiver: Endpoint, link: LinkConfig | None = None, seed: int = 1,
                    host: str = "127.0.0.1", **config) -> Shim:
    fwd_host = receiver.addr[0]
    shim = Shim(ShimConfig(listen=(host, 0), forward=(fwd_host, receiver.addr[1]),
                           forward_link=link or LinkConfig(), seed=seed, stats_interval=0, **config))
    await shim.start()
    return shim


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
async def test_forwards_both_ways_and_keeps_dscp(family):
    if family == socket.AF_INET6 and not _has_ipv6():
        pytest.skip("no IPv6 loopback here")
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    recv, send = Endpoint(family), Endpoint(family)
    shim = await make_shim(recv, host=host)
    try:
        marks = [AF41, AF42, AF43, BE, LE, EF, AF41]
        for i, tos in enumerate(marks):
            send.send(b"rtp%d" % i, shim.listen_address, tos)
        got = [await recv.get() for _ in marks]
        assert [g[0] for g in got] == [b"rtp%d" % i for i in range(len(marks))]
        assert [g[1] & 0xFC for g in got] == marks
        upstream = got[0][2]
        assert upstream[1] == shim.upstream_addresses()[0][1]
        # the receiver answers (RTCP) to where the packets came from; the sender gets it
        recv.send(b"rtcp-rr", upstream, AF42)
        data, tos, src = await send.get()
        assert data == b"rtcp-rr" and tos & 0xFC == AF42 and src[1] == shim.listen_address[1]
        st = shim.stats()
        assert st["forward"]["classes"]["af41"]["out"] == 2
        assert st["forward"]["classes"]["le"]["out"] == 1
        assert st["reverse"]["total"]["out"] == 1
    finally:
        shim.close(), recv.close(), send.close()


async def test_each_sender_gets_its_own_return_path():
    recv, a, b = Endpoint(), Endpoint(), Endpoint()
    shim = await make_shim(recv)
    try:
        a.send(b"from-a", shim.listen_address)
        b.send(b"from-b", shim.listen_address)
        got = dict([(d, src) for d, _, src in [await recv.get(), await recv.get()]])
        assert got[b"from-a"] != got[b"from-b"]
        recv.send(b"to-b", got[b"from-b"])
        recv.send(b"to-a", got[b"from-a"])
        assert (await b.get())[0] == b"to-b"
        assert (await a.get())[0] == b"to-a"
    finally:
        shim.close(), recv.close(), a.close(), b.close()


async def test_a_full_table_refuses_new_sources_and_keeps_the_active_ones():
    """Issue 16: spoofed sources used to evict real senders (and orphan their queued packets)."""
    recv, a, b = Endpoint(), Endpoint(), Endpoint()
    spoofers = [Endpoint() for _ in range(3)]
    shim = await make_shim(recv, max_clients=2)
    try:
        a.send(b"a0", shim.listen_address)
        b.send(b"b0", shim.listen_address)
        first = {d: src for d, _, src in [await recv.get(), await recv.get()]}
        for i, s in enumerate(spoofers):
            s.send(b"spoof%d" % i, shim.listen_address)
        a.send(b"a1", shim.listen_address)
        b.send(b"b1", shim.listen_address)
        later: dict[bytes, tuple] = {}
        while not {b"a1", b"b1"} <= set(later):
            data, _, src = await recv.get()
            later[data] = src
        assert set(later) == {b"a1", b"b1"}  # no spoofed datagram got through
        assert later[b"a1"] == first[b"a0"] and later[b"b1"] == first[b"b0"]  # same upstream sockets
        assert shim.stats()["clients"] == 2 and shim.stats()["errors"]["clients_refused"] == 3
    finally:
        shim.close(), recv.close(), a.close(), b.close(), [s.close() for s in spoofers]


async def test_silent_senders_expire_and_their_queued_packets_are_counted():
    recv, a, b = Endpoint(), Endpoint(), Endpoint()
    shim = await make_shim(recv, LinkConfig(delay_s=0.6), max_clients=1, client_timeout=0.15)
    try:
        a.send(b"held", shim.listen_address)  # still in the delay line when a expires
        await until(lambda: shim.stats()["errors"]["clients_expired"] == 1, timeout=5)
        assert shim.stats()["clients"] == 0 and shim.upstream_addresses() == []
        await until(lambda: shim.stats()["errors"]["orphaned"] == 1, timeout=5)
        shim.set_delay(0)  # b's datagram must arrive before b, silent after it, expires too
        b.send(b"from-b", shim.listen_address)  # the freed place goes to a new sender
        assert (await recv.get())[0] == b"from-b"
        assert shim.stats()["errors"]["clients_refused"] == 0
    finally:
        shim.close(), recv.close(), a.close(), b.close()


async def test_ge_loss_rate_through_sockets():
    recv, send = Endpoint(), Endpoint()
    shim = await make_shim(recv, LinkConfig(loss=GE_10), seed=11)
    n, batch = 20_000, 400
    try:
        for start in range(0, n, batch):
            for i in range(start, start + batch):
                send.send(i.to_bytes(4, "big"), shim.listen_address)
            await until(lambda: shim.stats()["forward"]["total"]["in"] >= start + batch)
        total = shim.stats()["forward"]["total"]
        await until(lambda: recv.count == total["out"])
        assert total["in"] == n and total["out"] + total["lost"] == n
        assert 1 - recv.count / n == pytest.approx(GE_10.mean_loss, abs=0.015)
    finally:
        shim.close(), recv.close(), send.close()


async def _overload_through_shim(priority: bool) -> dict[str, float]:
    """Offer 1.5x a 2 Mbit/s bottleneck for ~1.2 s, classes interleaved, least important first."""
    recv, send = Endpoint(), Endpoint()
    rate = 2e6
    shim = await make_shim(recv, LinkConfig(rate_bps=rate, queue_packets=48, priority=priority))
    try:
        loop = asyncio.get_running_loop()
        marks = [LE, AF43, AF42, AF41]
        wire = 500  # 472-byte payload + 28 bytes of IP/UDP
        interval = 8 / 1.5 * wire * 8 / rate  # a burst of 8 datagrams per interval
        n_bursts = 60
        t0 = loop.time()
        for k in range(n_bursts):
            for j in range(8):
                send.send(bytes([marks[j % 4]]) + bytes(wire - 29), shim.listen_address, marks[j % 4])
            # pacing, not synchronisation: the next burst is due at t0 + (k+1)*interval
            await asyncio.sleep(max(0.0, t0 + (k + 1) * interval - loop.time()))
        await until(lambda: shim.stats()["forward"]["total"]["in"] == 8 * n_bursts)
        await until(lambda: shim.stats()["forward"]["queued_packets"] == 0)
        await until(lambda: recv.count == shim.stats()["forward"]["total"]["out"])
        by_tos = Counter()
        while not recv.queue.empty():
            data, tos, _ = recv.queue.get_nowait()
            assert data[0] == tos & 0xFC  # DSCP kept through the bottleneck too
            by_tos[tos & 0xFC] += 1
        sent = 2 * n_bursts
        return {name: by_tos[t] / sent for name, t in
                (("af41", AF41), ("af42", AF42), ("af43", AF43), ("le", LE))}
    finally:
        shim.close(), recv.close(), send.close()


async def test_priority_push_out_through_sockets_beats_drop_tail():
    prio = await _overload_through_shim(priority=True)
    fifo = await _overload_through_shim(priority=False)
    assert prio["af41"] >= 0.95, prio
    assert prio["le"] < prio["af43"] <= prio["af41"], prio
    assert prio["le"] < 0.4, prio
    assert fifo["af41"] < prio["af41"], (fifo, prio)


async def test_garbage_and_odd_datagrams_never_stop_it():
    recv, send = Endpoint(), Endpoint()
    shim = await make_shim(recv, LinkConfig(loss=GE_10, rate_bps=50e6, priority=True,
                                            delay_s=0.001, jitter_s=0.001))
    rng = np.random.default_rng(5)
    try:
        sizes = [0, 1, 2, 12, 65000] + list(rng.integers(0, 2000, 200))
        for s in sizes:
            send.send(rng.bytes(int(s)), shim.listen_address, int(rng.integers(0, 256)) & 0xFC)
        await until(lambda: shim.stats()["forward"]["total"]["in"] == len(sizes))
        # datagrams from strangers straight at the upstream socket: dropped, counted, never relayed
        # to the sender as if the receiver had sent them (forged RTCP)
        stranger = Endpoint()
        up = ("127.0.0.1", shim.upstream_addresses()[0][1])
        for s in rng.integers(0, 1500, 50):
            stranger.send(rng.bytes(int(s)), up)
        await until(lambda: shim.stats()["errors"]["foreign"] == 50)
        assert shim.stats()["reverse"]["total"]["in"] == 0 and send.queue.empty()
        with pytest.raises(LossSpecError):
            shim.set_loss("not-a-loss")
        shim.set_loss("none")
        shim.set_rate(None)
        await until(lambda: shim.stats()["forward"]["queued_packets"] == 0
                    and shim.stats()["forward"]["in_delay"] == 0)
        while not recv.queue.empty():
            recv.queue.get_nowait()
        send.send(b"still alive", shim.listen_address, AF41)
        while True:
            data, tos, _ = await recv.get()
            if data == b"still alive":
                break
        assert tos & 0xFC == AF41
        stranger.close()
    finally:
        shim.close(), recv.close(), send.close()


@contextlib.contextmanager
def shim_cli(forward_port: int, *args: str) -> Iterator[int]:
    """``jscc-netem`` as a process forwarding to ``forward_port``: yields the port it listens on
    (from its log, once it is ready); on leaving, SIGTERM must stop it with exit code 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "jscc_stream.netem.cli", "--listen", "127.0.0.1:0",
         "--forward", f"127.0.0.1:{forward_port}", "--stats-interval", "0", *args],
        stderr=subprocess.PIPE, text=True)
    try:
        port = None
        assert proc.stderr is not None
        for line in proc.stderr:  # the shim logs where it listens once it is ready
            if "listening on" in line:
                port = int(line.split("listening on ('127.0.0.1', ")[1].split(")")[0])
                break
        assert port, "shim did not start"
        yield port
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_runs_and_stops_cleanly_on_sigterm(tmp_path: Path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(10)
        stats = tmp_path / "stats.json"
        with shim_cli(rx.getsockname()[1], "--loss", "none", "--rate", "10mbit", "--priority",
                      "--stats-json", str(stats)) as port:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                tx.sendto(b"hello", ("127.0.0.1", port))
                assert rx.recvfrom(100)[0] == b"hello"
    data = json.loads(stats.read_text())
    assert data["forward"]["total"]["in"] == 1 and data["forward"]["total"]["out"] == 1


@pytest.mark.parametrize("args", [
    ["--listen", "nohost", "--forward", "127.0.0.1:1"],
    ["--listen", "[::1:5", "--forward", "127.0.0.1:1"],
    ["--listen", "127.0.0.1:0", "--forward", "127.0.0.1:1", "--loss", "ge:1,2"],
    ["--listen", "127.0.0.1:0", "--forward", "127.0.0.1:1", "--rate", "fast"],
    ["--listen", "127.0.0.1:0", "--forward", "127.0.0.1:1", "--queue-packets", "0"],
    ["--listen", "127.0.0.1:0", "--forward", "127.0.0.1:1", "--rate", "1mbit", "--max-queue-delay-ms", "-5"],
    ["--listen", "127.0.0.1:0", "--forward", "127.0.0.1:1", "--client-timeout", "0"],
    ["--listen", "127.0.0.1:0", "--forward", "127.0.0.1:1", "--max-clients", "0"],
])
def test_cli_bad_input_is_one_line_exit_2(args, capsys):
    from jscc_stream.netem.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("jscc-netem: error:")
