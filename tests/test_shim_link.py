"""The shim's pure core: loss, bottleneck buffer, token bucket, delay, driven by a fake clock."""

from __future__ import annotations

import numpy as np
import pytest

from jscc_stream.netem.dscp import class_rank, dscp_of_tos, parse_dscp, tos_of_dscp
from jscc_stream.netem.link import Link, LinkConfig, Packet, PacketQueues, TokenBucket
from jscc_stream.netem.loss import GE_10, GE_15, GilbertElliott, NoLoss, parse_loss_spec
from jscc_stream.netem.rates import format_rate, parse_rate, parse_size

AF41, AF42, AF43, BE, LE = (tos_of_dscp(d) for d in (34, 36, 38, 0, 1))


def pkt(tos: int, size: int = 472, dest=None) -> Packet:
    return Packet.make(bytes(size), tos, dest)


def simulate(link: Link, arrivals: list[tuple[float, Packet]]) -> list[Packet]:
    """Feed arrivals in time order, collecting everything the link releases, then drain."""
    out: list[Packet] = []
    for t, p in arrivals:
        out += link.due(t)
        link.arrive(p, t)
    t = arrivals[-1][0] if arrivals else 0.0
    while (nxt := link.next_event()) is not None:
        t = max(t, nxt)
        out += link.due(t)
    return out


# --- loss ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ge", [GE_10, GE_15, GilbertElliott(0.05, 0.3, 0.2, 1.0)])
def test_ge_loss_rate_matches_model_on_the_pure_dropper(ge):
    link = Link(LinkConfig(loss=ge), np.random.default_rng(7))
    n = 100_000
    for i in range(n):
        link.arrive(pkt(AF41, 10), i * 1e-4)
    link.due(n * 1e-4)
    st = link.stats()["total"]
    assert st["in"] == n and st["out"] + st["lost"] == n
    assert st["lost"] / n == pytest.approx(ge.mean_loss, abs=0.01)


def test_no_loss_no_rate_passes_everything_in_order():
    link = Link(LinkConfig(), np.random.default_rng(0))
    arr = [(i * 0.001, Packet.make(i.to_bytes(4, "big"), AF41)) for i in range(100)]
    out = simulate(link, arr)
    assert [p.data for p in out] == [p.data for _, p in arr]


# --- priority push-out vs drop-tail under 50 % overload -------------------------------------------

def _overload(priority: bool, bursty: bool) -> dict[str, float]:
    rate = 1e6  # 1 Mbit/s; 500-byte datagrams on the wire -> 250 packets/s
    link = Link(LinkConfig(rate_bps=rate, queue_packets=32, priority=priority),
                np.random.default_rng(1))
    classes = [AF41, AF42, AF43, LE]
    offered_pps = 1.5 * rate / 8 / 500
    arrivals = []
    n = 6000
    for i in range(n):
        if bursty:  # a "frame" of 8 datagrams back to back, least important first (the worst
            # order for the important ones under drop-tail), frames evenly spaced
            t = (i // 8) * 8 / offered_pps + (i % 8) * 1e-5
            tos = classes[3 - i % 4]
        else:
            t = i / offered_pps
            tos = classes[i % 4]
        arrivals.append((t, pkt(tos)))
    simulate(link, arrivals)
    st = link.stats()["classes"]
    assert sum(c["in"] for c in st.values()) == n
    return {name: c["out"] / c["in"] for name, c in st.items() if c["in"]}


@pytest.mark.parametrize("bursty", [False, True])
def test_priority_push_out_protects_af41_under_overload(bursty):
    prio = _overload(priority=True, bursty=bursty)
    fifo = _overload(priority=False, bursty=bursty)
    # 1/1.5 of the offered load fits: strict priority gives it to the most important levels.
    assert prio["af41"] >= 0.95 and prio["af42"] >= 0.95
    assert prio["le"] < 0.1 and prio["le"] < prio["af43"] < prio["af42"]
    # Drop-tail spreads the same loss over everyone.
    assert fifo["af41"] < 0.8
    if not bursty:
        assert abs(fifo["af41"] - fifo["le"]) < 0.1
    # Same capacity either way.
    assert sum(prio.values()) == pytest.approx(sum(fifo.values()), abs=0.05)


def _frames_through(link: Link, seconds: float = 10.0) -> dict[str, list[float]]:
    """A 30 fps stream of 8 x 600-byte blocks (2 per class, AF41 first) paced over each frame
    interval into ``link``; returns each class's queueing delays (s) of what it delivered."""
    fps, order = 30, [AF41, AF41, AF42, AF42, AF43, AF43, LE, LE]
    waited: dict[str, list[float]] = {"af41": [], "af42": [], "af43": [], "le": []}
    names = {AF41: "af41", AF42: "af42", AF43: "af43", LE: "le"}
    arrivals = [(f / fps + i / len(order) / fps, tos)
                for f in range(int(seconds * fps)) for i, tos in enumerate(order)]
    tick, t, k = 1e-3, 0.0, 0
    while k < len(arrivals) or link.next_event() is not None:
        for p in link.due(t):
            waited[names[p.tos]].append(t - p.t_in)
        while k < len(arrivals) and arrivals[k][0] <= t:
            link.arrive(pkt(arrivals[k][1], 600), t)
            k += 1
        t += tick
    return waited


def test_max_queue_delay_turns_stale_low_priority_service_into_fresh_service():
    # 8 x 628 bytes x 30 fps = 1.2 Mbit/s offered into 800 kbit/s: 50 % overload.
    def run(limit: float | None) -> tuple[Link, dict[str, list[float]]]:
        link = Link(LinkConfig(rate_bps=8e5, priority=True, max_queue_delay_s=limit),
                    np.random.default_rng(0))
        return link, _frames_through(link)
    link_free, free = run(None)
    link_cap, capped = run(0.030)
    n_sent = 300 * 2
    for waited in (free, capped):
        assert len(waited["af41"]) == n_sent and len(waited["af42"]) == n_sent
    # Without a bound, the AF43 packets strict priority still serves wait for frames.
    assert np.median(free["af43"]) > 0.1
    # With it nothing waits longer than the bound (+ one tick of the simulated clock), the
    # stale ones are counted as expired, and more AF43 packets arrive in time to be decoded.
    assert max(max(w) for w in capped.values() if w) <= 0.030 + 1.5e-3
    assert link_cap.stats()["classes"]["af43"]["expired"] > 0
    assert link_free.stats()["classes"]["af43"]["expired"] == 0
    on_time = lambda w: sum(d <= 0.050 for d in w)  # noqa: E731
    assert on_time(capped["af43"]) > 5 * max(1, on_time(free["af43"]))


def test_max_queue_delay_must_be_positive():
    with pytest.raises(ValueError, match="max queue delay"):
        LinkConfig(rate_bps=1e6, max_queue_delay_s=0)


def test_link_rate_is_the_configured_rate():
    link = Link(LinkConfig(rate_bps=2e6, queue_packets=10_000), np.random.default_rng(0))
    arrivals = [(0.0, pkt(BE, 972)) for _ in range(1000)]  # 1000 bytes each on the wire
    out = []
    for t, p in arrivals:
        link.arrive(p, t)
    out = link.due(1.0)  # 1 s at 2 Mbit/s = 250 kB (+ the initial burst)
    assert 250 <= len(out) <= 250 + 4
    assert link.next_event() == pytest.approx(1.0, abs=0.005)


# --- buffer ---------------------------------------------------------------------------------------

def test_push_out_drops_the_oldest_of_the_least_important_class():
    q = PacketQueues(3, None, priority=True)
    a, b, c = pkt(AF42, 1), pkt(LE, 2), pkt(LE, 3)
    for p in (a, b, c):
        assert q.push(p) == (True, [])
    new = pkt(AF41, 4)
    accepted, evicted = q.push(new)
    assert accepted and evicted == [b]  # the stale LE goes, the fresher one stays
    le5 = pkt(LE, 5)
    assert q.push(le5) == (True, [c])  # same class: drop head, keep the fresh packet
    assert q.push(pkt(AF42, 6))[1] == [le5]
    assert q.push(pkt(AF42, 7))[1] == [a]  # only AF42 and better left: its oldest goes
    assert q.push(pkt(AF42, 8))[1][0].data == bytes(6)
    assert [q.pop().data for _ in range(3)] == [new.data, bytes(7), bytes(8)]
    assert len(q) == 0 and q.bytes == 0 and q.peek() is None


def test_an_arrival_less_important_than_everything_queued_is_refused():
    q = PacketQueues(2, None, priority=True)
    for i in range(2):
        assert q.push(pkt(AF41, i + 1))[0]
    assert q.push(pkt(LE, 9))[0] is False  # nothing less important to push out


def test_byte_capacity_push_out_makes_enough_room_or_none():
    q = PacketQueues(100, 1000, priority=True)
    small = [pkt(LE, 172) for _ in range(5)]  # 200 bytes each with overhead
    for p in small:
        assert q.push(p)[0]
    big = pkt(AF41, 572)  # 600 bytes: three LE packets must go
    accepted, evicted = q.push(big)
    assert accepted and evicted == small[:-4:-1]
    assert q.bytes == 1000
    huge = pkt(AF41, 1072)  # could never fit: refused, nothing evicted
    assert q.push(huge) == (False, [])
    assert q.bytes == 1000


def test_drop_tail_refuses_arrivals_when_full():
    q = PacketQueues(2, None, priority=False)
    le, af = pkt(LE, 1), pkt(AF43, 2)
    q.push(le), q.push(af)
    assert q.push(pkt(AF41, 3)) == (False, [])
    assert [q.pop(), q.pop()] == [le, af]  # plain FIFO order across classes


def test_token_bucket_timing():
    b = TokenBucket(8000, burst_bytes=1000, now=0.0)  # 1000 bytes/s
    assert b.ready_at(1000) == 0.0
    b.take(1000)
    assert b.ready_at(500) == pytest.approx(0.5)
    b.advance(10.0)
    assert b.tokens == 1000  # capped at the burst
    assert b.ready_at(5000) == 10.0  # larger than the burst: goes when the bucket is full


# --- delay, jitter, runtime control -------------------------------------------------------------

def test_delay_and_jitter_keep_order_and_bounds():
    link = Link(LinkConfig(delay_s=0.05, jitter_s=0.02), np.random.default_rng(3))
    times = {}
    for i in range(200):
        link.arrive(Packet.make(i.to_bytes(2, "big"), AF41), i * 0.001)
    t = 0.0
    order = []
    while (nxt := link.next_event()) is not None:
        t = nxt
        for p in link.due(t):
            order.append(int.from_bytes(p.data, "big"))
            times[order[-1]] = t
    assert order == list(range(200))
    lat = [times[i] - i * 0.001 for i in range(200)]
    assert min(lat) >= 0.03 - 1e-9 and max(lat) <= 0.07 + 0.01
    assert np.std(lat) > 0.003  # jitter is there


def test_control_hooks_swap_loss_and_rate():
    link = Link(LinkConfig(), np.random.default_rng(0))
    link.set_loss(parse_loss_spec("uniform:1.0"))
    link.arrive(pkt(AF41), 0.0)
    assert link.stats()["total"]["lost"] == 1
    link.set_loss(NoLoss())
    link.set_rate(8000, now=0.0, burst_bytes=500)  # 1000 bytes/s
    for _ in range(5):
        link.arrive(pkt(AF41), 0.0)
    assert len(link.due(0.0)) == 1 and len(link.queues) == 4
    link.set_rate(None, now=0.1)  # bottleneck removed: the queue flushes
    assert len(link.due(0.1)) == 4
    with pytest.raises(ValueError):
        link.set_rate(-1, now=0.2)
    assert link.stats()["loss"] == "none"


# --- units and DSCP -----------------------------------------------------------------------------

def test_rate_and_size_units():
    assert parse_rate("2mbit") == 2e6
    assert parse_rate("500kbit") == 5e5
    assert parse_rate("250kbps") == 2e6  # tc: bps are bytes per second
    assert parse_rate("1.5Mbit") == 1.5e6
    assert parse_rate("1e6") == 1e6
    assert parse_size("64kb") == 65536 and parse_size("1500") == 1500
    assert format_rate(2e6) == "2mbit" and format_rate(20_000) == "20kbit" and format_rate(1234) == "1234bit"
    for bad in ("", "fast", "-1mbit", "0", "2 furlongs"):
        with pytest.raises(ValueError):
            parse_rate(bad)
    with pytest.raises(ValueError):
        parse_size("0")


def test_dscp_classes():
    assert [class_rank(d) for d in (34, 36, 38, 0, 46, 1)] == [0, 1, 2, 3, 3, 4]
    assert dscp_of_tos(0x88) == 34 and tos_of_dscp(34) == 0x88 and dscp_of_tos(0x8B) == 34
    assert parse_dscp("AF41") == 34 and parse_dscp("le") == 1 and parse_dscp("0x2e") == 46
    for bad in ("af99", "64", "-1"):
        with pytest.raises(ValueError):
            parse_dscp(bad)
