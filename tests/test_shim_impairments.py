"""The shim's changing link (--rate-schedule), reordering, duplication and the stats time series:
the pure Link on a simulated clock, the CLI's checks, the control API and a real loopback run."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from jscc_stream.netem import tc
from jscc_stream.netem.cli import main
from jscc_stream.netem.dscp import tos_of_dscp
from jscc_stream.netem.link import Link, LinkConfig, Packet
from jscc_stream.netem.loss import GE_10, parse_loss_spec
from jscc_stream.netem.rates import parse_probability, parse_rate_schedule
from jscc_stream.netem.shim import Shim, ShimConfig

from test_shim_sockets import shim_cli
from test_web_control import _serve

AF41 = tos_of_dscp(34)


def numbered(i: int, size: int = 100) -> Packet:
    """A packet whose payload starts with its sequence number."""
    return Packet.make(i.to_bytes(4, "big") + bytes(size - 4), AF41)


def seq(p: Packet) -> int:
    return int.from_bytes(p.data[:4], "big")


def run_paced(link: Link, n: int, gap: float, size: int = 100) -> list[Packet]:
    """n packets every ``gap`` seconds from t=0; everything the link releases, then drained."""
    out: list[Packet] = []
    for i in range(n):
        out += link.due(i * gap)
        link.arrive(numbered(i, size), i * gap)
    while (t := link.next_event()) is not None:
        out += link.due(t)
    return out


# --- rate schedule ------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("0:2mbit,20:500kbit,40:2mbit", ((0, 2e6), (20, 5e5), (40, 2e6))),
    (" 0:1mbit , 2.5:250kbps ", ((0, 1e6), (2.5, 2e6))),
    ("0:64kbit", ((0, 64e3),)),
])
def test_rate_schedule_parses(text, expected):
    assert parse_rate_schedule(text) == expected


@pytest.mark.parametrize("text,fragment", [
    ("", "empty"),
    ("5:1mbit", "start at time 0"),
    ("0:1mbit,3:2mbit,3:1mbit", "increase strictly"),
    ("0:1mbit,-1:2mbit", "increase strictly"),
    ("-1:1mbit", "start at time 0"),
    ("0:fast", "cannot read rate"),
    ("0:0", "positive"),
    ("0", "T:RATE"),
    ("x:1mbit", "T:RATE"),
    ("0:1mbit,,3:2mbit", "T:RATE"),
    ("0:1mbit,inf:2mbit", "T:RATE"),
])
def test_rate_schedule_bad_input(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_rate_schedule(text)


def test_link_config_takes_a_rate_or_a_schedule_not_both():
    with pytest.raises(ValueError, match="not both"):
        LinkConfig(rate_bps=1e6, rate_schedule=((0, 1e6),))
    with pytest.raises(ValueError, match="time 0"):
        LinkConfig(rate_schedule=((1, 1e6),))


def test_schedule_throughput_per_window_follows_the_schedule():
    """Saturate the link (offered 5 Mbit/s) and measure what leaves per second on the simulated
    clock: each window's throughput is the schedule's rate at that time."""
    schedule = ((0, 2e6), (3, 5e5), (6, 1e6), (8, 3e6))
    link = Link(LinkConfig(rate_schedule=schedule, queue_packets=50), np.random.default_rng(0))
    size, gap, end = 972, 1000 * 8 / 5e6, 10.0  # 972 + 28 = 1000 bytes on the wire
    records, i, t_sample = [], 0, 1.0
    while t_sample <= end + 1e-9:
        while i * gap < t_sample:
            link.due(i * gap)
            link.arrive(numbered(i, size), i * gap)
            i += 1
        link.due(t_sample)
        records.append(link.sample(t_sample))
        t_sample += 1.0
    for rec in records:
        start = rec["t"] - rec["dt"]
        expected = [r for t, r in schedule if t <= start + 1e-9][-1]
        measured = rec["packets_out"] * 1000 * 8 / rec["dt"]
        assert measured == pytest.approx(expected, rel=0.04), rec
        assert rec["rate_bps"] == [r for t, r in schedule if t <= rec["t"] + 1e-9][-1]
        assert rec["mean_rate_bps"] == expected  # the steps fall on the window edges
        assert rec["packets_in"] == pytest.approx(5e6 / 8000, abs=1)
        assert rec["bytes_in"] == rec["packets_in"] * size  # offered payload bytes


def test_tokens_accrue_at_the_old_rate_until_the_switch():
    # 1000 B/s until t=1, then 10000 B/s; bucket depth 2000 B, drained at t=0 by a 2000 B packet.
    link = Link(LinkConfig(rate_schedule=((0, 8000), (1, 80000)), burst_bytes=2000),
                np.random.default_rng(0))
    link.arrive(numbered(0, 1972), 0.0)  # + 28 B overhead
    assert [seq(p) for p in link.due(0.0)] == [0]
    link.arrive(numbered(1, 1972), 0.5)  # 500 B of credit: at 1000 B/s it would wait until 2.0
    assert link.next_event() == pytest.approx(1.0)  # the switch comes first and is an event
    assert link.due(1.0) == []
    # 1000 B accrued by t=1 at the old rate, the other 1000 B at 10000 B/s: ready at 1.1
    assert link.next_event() == pytest.approx(1.1)
    assert link.due(1.0999) == [] and [seq(p) for p in link.due(1.1)] == [1]
    assert link.rate_bps == 80000 and link.stats()["rate_bps"] == 80000


def test_runtime_schedule_counts_from_when_it_is_set_and_a_fixed_rate_ends_it():
    link = Link(LinkConfig(rate_bps=1e6), np.random.default_rng(0), now=100.0)
    link.set_rate_schedule(((0, 2e6), (5, 4e5)), now=110.0)
    assert link.rate_bps == 2e6
    link.due(114.9)
    assert link.rate_bps == 2e6
    link.due(115.0)
    assert link.rate_bps == 4e5
    assert link.stats()["rate_schedule"] == [[0, 2e6], [5, 4e5]]
    link.set_rate_schedule(((0, 1e6), (1, 3e6)), now=120.0)
    link.set_rate(5e5, now=120.5)
    link.due(130.0)
    assert link.rate_bps == 5e5 and link.stats()["rate_schedule"] is None
    rec = link.sample(130.0)  # 100..130: 1 Mbit/s 10 s, 2 Mbit/s 5 s, 400 k 5 s, 1 M .5 s, 500 k 9.5 s
    assert rec["t"] == 30.0 and rec["rate_bps"] == 5e5
    assert rec["mean_rate_bps"] == pytest.approx((10e6 + 10e6 + 2e6 + 0.5e6 + 4.75e6) / 30)
    link.set_rate(None, now=131.0)
    assert link.sample(132.0)["mean_rate_bps"] is None  # unlimited for part of the interval
    assert link.sample(133.0)["rate_bps"] is None


# --- reorder and duplicate ----------------------------------------------------------------------

def test_reordered_packets_arrive_after_later_ones():
    link = Link(LinkConfig(reorder=0.2, reorder_delay_s=0.010), np.random.default_rng(5))
    n = 2000
    out = run_paced(link, n, 0.001)
    order = [seq(p) for p in out]
    assert sorted(order) == list(range(n))  # nothing lost or added
    held = link.stats()["total"]["reordered"]
    assert held / n == pytest.approx(0.2, abs=0.03)
    # a packet arrives after a later-sent one exactly when it was held back (10 ms = 10 packets)
    overtaken = [s for k, s in enumerate(order) if any(o > s for o in order[max(0, k - 30):k])]
    assert len(overtaken) == held
    late = set(overtaken)
    assert [s for s in order if s not in late] == sorted(s for s in order if s not in late)


def test_reorder_with_delay_and_jitter_keeps_the_others_in_order():
    link = Link(LinkConfig(delay_s=0.05, jitter_s=0.01, reorder=0.1, reorder_delay_s=0.02),
                np.random.default_rng(9))
    out = [seq(p) for p in run_paced(link, 1000, 0.002)]
    held = link.stats()["total"]["reordered"]
    assert 60 < held < 140
    # remove the held-back ones (each appears later than some larger number): the rest is in order
    first_out_of_order = [s for k, s in enumerate(out) if s < max(out[:k], default=-1)]
    rest = [s for s in out if s not in set(first_out_of_order)]
    assert rest == sorted(rest) and len(first_out_of_order) <= held


def test_duplicates_are_delivered_twice_and_counted():
    link = Link(LinkConfig(duplicate=0.1), np.random.default_rng(2))
    n = 5000
    out = [seq(p) for p in run_paced(link, n, 0.001)]
    st = link.stats()["total"]
    assert st["duplicated"] / n == pytest.approx(0.1, abs=0.015)
    assert st["out"] == len(out) == n + st["duplicated"]
    assert st["bytes_out"] == 100 * len(out)
    counts = np.bincount(out, minlength=n)
    assert set(counts) == {1, 2} and int((counts == 2).sum()) == st["duplicated"]


def test_reorder_and_duplicate_are_seeded_and_leave_the_loss_draws_alone():
    def run(seed: int, **kw) -> tuple[list[int], dict]:
        link = Link(LinkConfig(loss=parse_loss_spec("uniform:0.1"), **kw), np.random.default_rng(seed))
        return [seq(p) for p in run_paced(link, 3000, 0.001)], link.stats()["total"]

    a, sa = run(3, reorder=0.1, duplicate=0.05)
    b, sb = run(3, reorder=0.1, duplicate=0.05)
    c, _ = run(4, reorder=0.1, duplicate=0.05)
    assert a == b and sa == sb and a != c
    plain, sp = run(3)
    assert set(a) == set(plain) and sa["lost"] == sp["lost"]  # same packets lost as without


def test_impairments_validate_and_change_at_runtime():
    with pytest.raises(ValueError):
        LinkConfig(reorder=1.5)
    with pytest.raises(ValueError):
        LinkConfig(duplicate=-0.1)
    link = Link(LinkConfig(), np.random.default_rng(0))
    link.set_impairments(reorder=0.3, duplicate=0.2)
    link.set_impairments(reorder_delay_s=0.02)
    st = link.stats()
    assert (st["reorder"], st["reorder_delay_s"], st["duplicate"]) == (0.3, 0.02, 0.2)
    with pytest.raises(ValueError):
        link.set_impairments(duplicate=2)
    assert link.stats()["duplicate"] == 0.2
    assert parse_probability("5%") == 0.05 and parse_probability(0.5) == 0.5
    for bad in ("x", "150%", "-0.1", "nan"):
        with pytest.raises(ValueError):
            parse_probability(bad)


# --- the time series -----------------------------------------------------------------------------

def test_series_records_intervals_with_offered_bytes_and_queue():
    link = Link(LinkConfig(loss=GE_10, rate_bps=1e6, queue_packets=40), np.random.default_rng(1))
    recs, i, gap = [], 0, 500 * 8 / 2e6  # 472 + 28 = 500 wire bytes at 2 Mbit/s: twice the rate
    for k in range(1, 9):
        while i * gap < k * 0.25:
            link.due(i * gap)
            link.arrive(numbered(i, 472), i * gap)
            i += 1
        link.due(k * 0.25)
        recs.append(link.sample(k * 0.25))
    st = link.stats()["total"]
    assert [r["t"] for r in recs] == [0.25 * k for k in range(1, 9)]
    assert all(r["dt"] == 0.25 for r in recs)
    for key, total in (("bytes_in", "bytes_in"), ("bytes_out", "bytes_out"), ("packets_in", "in"),
                       ("packets_out", "out"), ("packets_lost", "lost"), ("packets_dropped", "dropped")):
        assert sum(r[key] for r in recs) == st[total], key
    assert sum(r["bytes_in"] for r in recs) == i * 472  # offered, before loss
    assert all(r["packets_lost"] > 0 and r["rate_bps"] == r["mean_rate_bps"] == 1e6 for r in recs)
    late = recs[2:]  # after the buffer filled: it stays nearly full and the wait is ~40 packets
    assert all(r["queue_packets"] >= 35 and r["queue_bytes"] == r["queue_packets"] * 500 for r in late)
    assert all(140 < r["max_queue_delay_ms"] <= 40 * 4 + 1 for r in late)  # 40 * 500 B at 1 Mbit/s = 160 ms


# --- CLI -------------------------------------------------------------------------------------------

BASE = ["--listen", "127.0.0.1:0", "--forward", "127.0.0.1:1"]


@pytest.mark.parametrize("extra,fragment", [
    (["--rate", "1mbit", "--rate-schedule", "0:1mbit"], "choose one"),
    (["--rate-schedule", "1:1mbit"], "time 0"),
    (["--rate-schedule", "0:1mbit,5:2mbit,4:1mbit"], "increase"),
    (["--rate-schedule", "0:quick"], "rate"),
    (["--rate-schedule", ""], "empty"),
    (["--reorder", "1.5"], "--reorder"),
    (["--duplicate", "lots"], "--duplicate"),
    (["--reorder", "0.1", "--reorder-delay-ms", "-1"], "--reorder-delay-ms"),
    (["--series-interval", "-1"], "--series-interval"),
])
def test_cli_bad_input_is_one_line_exit_2(extra, fragment, capsys):
    assert main(BASE + extra) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("jscc-netem: error:")
    assert fragment in err


def test_help_mentions_the_new_flags(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--rate-schedule", "--reorder", "--reorder-delay-ms", "--duplicate", "--series-interval"):
        assert flag in out


# --- tc -------------------------------------------------------------------------------------------

def test_tc_netem_gets_duplicate_and_reorder(capsys):
    cfg = tc.TcConfig(dev="eth0", delay_ms=20, reorder=0.25, duplicate=0.01)
    assert tc.build_plan(cfg).tc[0][7:] == ("netem", "delay", "20ms", "duplicate", "1%",
                                            "reorder", "25%", "limit", "1000")
    only_dup = tc.build_plan(tc.TcConfig(dev="eth0", duplicate=0.5, rate_bps=1e6)).lines()
    assert "netem duplicate 50% limit" in only_dup[-1]
    with pytest.raises(ValueError, match="needs --delay-ms"):
        tc.TcConfig(dev="eth0", reorder=0.1)
    for args, fragment in ((["--reorder", "10%"], "needs --delay-ms"),
                           (["--rate-schedule", "0:1mbit"], "userspace shim"),
                           (["--duplicate", "2"], "--duplicate")):
        assert main(["tc", "apply", "--dev", "eth0", "--dry-run", *args]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and fragment in err
    assert main(["tc", "apply", "--dev", "eth0", "--delay-ms", "10", "--reorder", "5%", "--dry-run"]) == 0
    assert "netem delay 10ms reorder 5% limit 1000" in capsys.readouterr().out


# --- control API ------------------------------------------------------------------------------------

async def test_control_api_sets_schedule_reorder_duplicate(shim):
    server, url = await _serve(shim, token="tok")
    auth = {"Authorization": "Bearer tok"}
    try:
        async with aiohttp.ClientSession(headers=auth) as http:
            async with http.post(url + "/rate-schedule", json={"schedule": "0:2mbit,30:500kbit"}) as r:
                assert r.status == 200
                st = (await r.json())["forward"]
            assert st["rate_bps"] == 2e6 and st["rate_schedule"] == [[0, 2e6], [30, 5e5]]
            async with http.post(url + "/rate-schedule", json={"schedule": [[0, "1mbit"], [10, 64000]],
                                                               "direction": "reverse"}) as r:
                assert r.status == 200
            assert shim.reverse_link.config.rate_schedule == ((0, 1e6), (10, 64000))
            async with http.post(url + "/reorder", json={"probability": 0.05, "delay_ms": 20}) as r:
                assert r.status == 200
                st = (await r.json())["forward"]
            assert (st["reorder"], st["reorder_delay_s"]) == (0.05, 0.02)
            async with http.post(url + "/duplicate", json={"probability": 0.01}) as r:
                assert r.status == 200
            assert shim.forward_link.config.duplicate == 0.01
            async with http.post(url + "/rate", json={"rate": "3mbit"}) as r:  # ends the schedule
                st = (await r.json())["forward"]
            assert st["rate_bps"] == 3e6 and st["rate_schedule"] is None
            before = shim.stats()
            for path, body in (("/rate-schedule", {"schedule": "5:1mbit"}),
                               ("/rate-schedule", {"schedule": [[0, "fast"]]}),
                               ("/rate-schedule", {"schedule": [[0]]}),
                               ("/rate-schedule", {"schedule": []}),
                               ("/rate-schedule", {"schedule": 5}),
                               ("/reorder", {"probability": 2}),
                               ("/reorder", {"probability": True}),
                               ("/reorder", {"probability": 0.1, "delay_ms": -3}),
                               ("/duplicate", {}),
                               ("/duplicate", {"probability": 0.1, "direction": "up"})):
                async with http.post(url + path, json=body) as r:
                    assert r.status == 400, (path, body)
                    assert "error" in await r.json()
            after = shim.stats()
            for key in ("rate_bps", "rate_schedule", "reorder", "reorder_delay_s", "duplicate"):
                assert after["forward"][key] == before["forward"][key]
        async with aiohttp.ClientSession() as http:  # the token still guards the new routes
            async with http.post(url + "/duplicate", json={"probability": 0.5}) as r:
                assert r.status == 401
        assert shim.forward_link.config.duplicate == 0.01
    finally:
        await server.close()


# --- real sockets -----------------------------------------------------------------------------------

async def test_sockets_duplicate_everything_and_series_sampling():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    shim = Shim(ShimConfig(listen=("127.0.0.1", 0), forward=rx.getsockname(), stats_interval=0,
                           series_interval=0.05, forward_link=LinkConfig(duplicate=1.0)))
    await shim.start()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(5):
            tx.sendto(b"d%d" % i, shim.listen_address)
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(got) < 10 and time.monotonic() < deadline:
            try:
                got.append(rx.recv(100))
            except BlockingIOError:
                await asyncio.sleep(0.01)
        assert sorted(got) == sorted([b"d%d" % i for i in range(5)] * 2)
        await asyncio.sleep(0.2)
        assert len(shim.series) >= 3
        assert sum(r["packets_in"] for r in shim.series) == 5
        assert sum(r["packets_out"] for r in shim.series) == 10
        assert shim.stats()["forward"]["total"]["duplicated"] == 5
    finally:
        shim.close(), tx.close(), rx.close()


def test_cli_rate_schedule_writes_a_series(tmp_path: Path):
    """A real run: 1.5 Mbit/s offered into 0:2mbit,1:500kbit for 2 s; the series shows the
    offered bytes, the capacity step at 1 s and the queue building after it."""
    stats = tmp_path / "stats.json"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        sent = 0
        with shim_cli(rx.getsockname()[1], "--rate-schedule", "0:2mbit,1:500kbit", "--series-interval", "0.25",
                      "--stats-json", str(stats)) as port:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                start = time.monotonic()
                gap = 1000 * 8 / 1.5e6  # 972 + 28 B
                while (el := time.monotonic() - start) < 2.0:
                    while sent * gap <= el:
                        tx.sendto(bytes(972), ("127.0.0.1", port))
                        sent += 1
                    time.sleep(0.002)
            time.sleep(0.3)
    data = json.loads(stats.read_text())
    total = data["forward"]["total"]
    assert total["in"] == sent and total["bytes_in"] == 972 * sent  # the summary is as before
    series = data["series"]
    assert len(series) >= 8
    keys = {"t", "dt", "bytes_in", "bytes_out", "packets_in", "packets_out", "packets_lost",
            "packets_dropped", "rate_bps", "mean_rate_bps", "queue_packets", "queue_bytes",
            "max_queue_delay_ms"}
    assert all(set(r) == keys for r in series)
    ts = [r["t"] for r in series]
    assert ts == sorted(ts) and abs(ts[0] - 0.25) < 0.1
    assert sum(r["bytes_in"] for r in series) == total["bytes_in"]
    assert sum(r["packets_out"] for r in series) == total["out"]
    assert all(r["rate_bps"] == 2e6 for r in series if r["t"] < 0.95)
    assert all(r["rate_bps"] == 5e5 for r in series if r["t"] > 1.05)
    for r in series:  # the mean over the interval sees the step at 1 s
        start, end = r["t"] - r["dt"], r["t"]
        expected = (2e6 * max(0.0, min(end, 1.0) - start) + 5e5 * max(0.0, end - max(start, 1.0))) / r["dt"]
        assert r["mean_rate_bps"] == pytest.approx(expected, rel=0.02)
    busy = [r for r in series if 0.3 < r["t"] < 2.0]
    # the sender offered ~1.5 Mbit/s throughout (loopback pacing is loose on a busy machine)
    offered = sum(r["bytes_in"] for r in busy) * 8 / sum(r["dt"] for r in busy)
    assert 1.0e6 < offered < 2.0e6 and all(r["bytes_in"] > 0 for r in busy)
    before = [r for r in series if r["t"] < 0.95]
    assert all(r["packets_dropped"] == 0 for r in before)  # under the 2 Mbit/s capacity
    after = [r for r in series if r["t"] - r["dt"] >= 1.0]
    for r in after:  # never more than the 500 kbit/s capacity (wire bytes, + the 3000 B burst)
        assert (r["bytes_out"] + 28 * r["packets_out"]) * 8 <= 5e5 * r["dt"] + 3000 * 8, r
    assert max(r["queue_packets"] for r in after) >= 20
    assert max(r["max_queue_delay_ms"] for r in after) > 200


async def test_a_long_running_shim_keeps_only_the_newest_series_records():
    """The 30-minute soak found the shim's memory growing ~75 kB a minute: the --stats-json time
    series kept every 0.5 s record for ever.  It now keeps the newest SERIES_MAX."""
    from jscc_stream.netem.shim import SERIES_MAX

    shim = Shim(ShimConfig(listen=("127.0.0.1", 0), forward=("127.0.0.1", 9), forward_link=LinkConfig(),
                           reverse_link=LinkConfig(), series_interval=3600.0))
    await shim.start()
    try:
        for _ in range(SERIES_MAX + 50):
            shim.sample_series()
        assert len(shim.series) == SERIES_MAX
        assert [r["t"] for r in shim.series] == sorted(r["t"] for r in shim.series)  # the newest, in order
    finally:
        shim.close()
