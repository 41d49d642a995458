"""jscc-relay in process, between a scripted sender and scripted receivers on loopback: each
receiver gets only the levels it subscribes to (read from the datagrams it receives, not from
the relay's counters), subscriptions change mid-stream, bad ones are refused or clamped and
counted, receivers join, leave (BYE) and time out; what goes upstream (NACKs kept to the
subscription, the reference receiver's receipts, intra requests, the relay's own reports)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from jscc_stream.procs import free_port
from jscc_stream.proto.description import LatentLayout, make_description, parse_description
from jscc_stream.proto.packetizer import Packetizer
from jscc_stream.proto.receipts import pack_bitmap
from jscc_stream.proto.rtcp import build_bye, build_report, parse_rtcp
from jscc_stream.proto.stream_pb2 import Feedback, FrameReceipt, Nack, Subscription
from jscc_stream.relay.relay import Relay, RelayConfig
from jscc_stream.relay.subscriptions import SubscriptionTable
from jscc_stream.udp import udp_socket

LEVELS = 7
PER_LEVEL = 2  # payloads per level in a scripted frame: payload i has level i // 2


def level_of(data: bytes) -> int | None:
    """A datagram's importance level read straight from its bytes (RTP header 12 bytes, then
    the payload header: PT 98 level at +4, PT 99 parity level at +10); None: not media."""
    pt = data[1] & 0x7F
    if 192 <= data[1] <= 223 or pt == 97:
        return None
    return data[12 + 4] if pt == 98 else data[12 + 10]


class Endpoint:
    """A loopback UDP socket the test reads without blocking."""

    def __init__(self) -> None:
        self.sock = udp_socket(socket.AF_INET, ("127.0.0.1", free_port()))
        self.addr = self.sock.getsockname()

    def drain(self) -> list[tuple[float, bytes]]:
        out = []
        while True:
            try:
                out.append((time.monotonic(), self.sock.recv(65535)))
            except BlockingIOError:
                return out

    def send(self, data: bytes, to) -> None:
        self.sock.sendto(data, to)


class Receiver(Endpoint):
    def subscribe(self, relay_addr, levels: int, **fb) -> None:
        msg = Feedback(subscription=Subscription(levels=levels), **fb)
        self.send(build_report(0x1234, [], msg.SerializeToString()), relay_addr)

    def feedback(self, relay_addr, **fb) -> None:
        self.send(build_report(0x1234, [], Feedback(**fb).SerializeToString()), relay_addr)

    def levels(self) -> set[int]:
        return {lv for _, d in self.drain() if (lv := level_of(d)) is not None}


class Sender(Endpoint):
    SSRC = 0x5EED

    def __init__(self, relay_addr) -> None:
        super().__init__()
        self.relay_addr = relay_addr
        self.pk = Packetizer(self.SSRC, list(range(LEVELS)), 900, first_seq=100)
        self.fid = 0

    def describe(self) -> None:
        body = make_description(ssrc=self.SSRC, revision=0, codec_name="video", codec_sha256="",
                                layout=LatentLayout(160, 128, LEVELS, 1, 8, 10, 8, False), fps=30.0,
                                block_levels=list(range(LEVELS)), dscp_map=None, clock_epoch_unix_us=0, mtu=900,
                                max_frame_payloads=64)
        self.send(self.pk.description(0, body).data, self.relay_addr)

    def frame(self) -> None:
        levels = [i // PER_LEVEL for i in range(LEVELS * PER_LEVEL)]
        grams = self.pk.packetize_payloads(self.fid, self.fid * 3000, [bytes([i]) * 40 for i in range(len(levels))],
                                           levels, protected=4, parity=[b"p" * 40], covered=4)
        for g in grams:
            self.send(g.data, self.relay_addr)
        self.fid += 1

    def feedback(self) -> list[Feedback]:
        out = []
        for _, d in self.drain():
            for body in parse_rtcp(d).apps:
                fb = Feedback()
                fb.ParseFromString(body)
                out.append(fb)
        return out


@pytest.fixture
async def relay(request):
    up = udp_socket(socket.AF_INET, ("127.0.0.1", free_port()), recv_tos=True)
    down = udp_socket(socket.AF_INET, ("127.0.0.1", free_port()), recv_tos=True)
    reference = getattr(request, "param", "least")
    r = Relay(up, down, RelayConfig(timeout=0.3, intra_interval=0.0, reference=reference, adapt=True))
    task = asyncio.create_task(r.run())
    sender = Sender(up.getsockname())
    yield r, sender, down.getsockname()
    r.stop_event.set()
    await task
    up.close()
    down.close()


async def stream(sender: Sender, frames: int = 3) -> None:
    """Frames through the relay (a description first), with time for the relay to forward them."""
    sender.describe()
    for _ in range(frames):
        sender.frame()
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)


async def joined(sender: Sender, down, *levels: int, frames: int = 2) -> list[Receiver]:
    """Receivers subscribed to ``levels`` each, once ``frames`` frames went through the relay."""
    rx = [Receiver() for _ in levels]
    for rcv, n in zip(rx, levels):
        rcv.subscribe(down, n)
    await asyncio.sleep(0.05)
    await stream(sender, frames)
    return rx


async def test_each_receiver_gets_only_its_levels_and_changes_take_effect_mid_stream(relay):
    r, sender, down = relay
    rx = dict(zip((2, 4, 0), await joined(sender, down, 2, 4, 0, frames=3)))
    assert rx[2].levels() == {0, 1}
    assert rx[4].levels() == {0, 1, 2, 3}
    assert rx[0].levels() == set(range(LEVELS))
    moving = rx[2]
    for levels, expected in ((4, {0, 1, 2, 3}), (0, set(range(LEVELS))), (2, {0, 1})):
        moving.subscribe(down, levels)
        await asyncio.sleep(0.05)
        moving.drain()
        await stream(sender)
        assert moving.levels() == expected, levels
    assert r.table.counters.changes == 3 and r.table.counters.joins == 3


async def test_parity_goes_only_to_receivers_of_every_level_it_covers(relay):
    r, sender, down = relay
    one, two = await joined(sender, down, 1, 2)
    pts = {n: [d[1] & 0x7F for _, d in rcv.drain()] for n, rcv in ((1, one), (2, two))}
    assert 99 not in pts[1] and pts[2].count(99) == 2  # parity over payloads of levels 0 and 1
    assert pts[1].count(98) == 2 * PER_LEVEL and pts[2].count(98) == 2 * 2 * PER_LEVEL


def _raw_subscription(levels_varint: bytes) -> bytes:
    """A Feedback whose Subscription.levels is written by hand (field 13, then field 1)."""
    sub = b"\x08" + levels_varint
    return bytes([13 << 3 | 2, len(sub)]) + sub


async def test_bad_subscriptions_are_refused_or_clamped_and_counted(relay):
    r, sender, down = relay
    await stream(sender, 1)  # the relay now knows the stream has 7 levels
    negative, huge, above, good = Receiver(), Receiver(), Receiver(), Receiver()
    minus_one = b"\xff" * 9 + b"\x01"  # -1 as a 64-bit varint, as an int32 writer would put it
    negative.send(build_report(1, [], _raw_subscription(minus_one)), down)
    huge.subscribe(down, 300)
    above.subscribe(down, 9)
    good.subscribe(down, 1)
    garbage = [b"\x00\x01\x02", b"\x80\xc9\x00\xff" + b"\x00" * 8, build_report(1, [], b"\xff\xfe\xfd not protobuf"),
               build_report(1, [], b"")]  # the last: feedback from an address that never joined
    for g in garbage:
        good.send(g, down) if g is garbage[-1] else Receiver().send(g, down)
    await asyncio.sleep(0.05)
    await stream(sender, 2)
    assert negative.levels() == set() and huge.levels() == set()
    assert above.levels() == set(range(LEVELS))  # asked for 9 of 7: clamped to all
    assert good.levels() == {0}  # still served after the garbage
    c = r.table.counters
    assert (c.refused, c.clamped, c.joins) == (2, 1, 2)
    assert r.stats.downstream_invalid == 1 and r.stats.malformed_feedback >= 2


async def test_join_leave_by_bye_and_timeout(relay):
    r, sender, down = relay
    stranger = Receiver()
    stranger.feedback(down, frames_decoded=1)  # no subscription: never served
    leaver, silent, staying = Receiver(), Receiver(), Receiver()
    for rcv in (leaver, silent, staying):
        rcv.subscribe(down, 0)
    silent_since = time.monotonic()  # its last word
    await asyncio.sleep(0.05)
    await stream(sender, 1)
    assert all(rcv.levels() for rcv in (leaver, silent, staying)) and not stranger.levels()
    leaver.send(build_bye(0x1234), down)
    bye_at = time.monotonic()
    t_end = time.monotonic() + 1.0
    seen: dict[str, list[float]] = {"leaver": [], "silent": []}
    while time.monotonic() < t_end:  # frames for a second; `staying` keeps subscribing
        staying.subscribe(down, 0)
        sender.frame()
        await asyncio.sleep(0.01)  # arrival times to within this
        for name, rcv in (("leaver", leaver), ("silent", silent)):
            seen[name] += [t for t, d in rcv.drain() if level_of(d) is not None]
    leaver_last = max(seen["leaver"], default=bye_at)
    silent_last = max(seen["silent"])
    assert leaver_last - bye_at < 0.1
    assert 0.2 < silent_last - silent_since < 0.3 + 0.1  # --timeout 0.3 s, checked every 50 ms
    assert staying.levels() == set(range(LEVELS))
    c = r.table.counters
    assert (c.joins, c.byes, c.timeouts) == (3, 1, 1) and r.stats.unknown_feedback == 1
    assert list(r.table.receivers) == [staying.addr]


async def test_upstream_feedback_nacks_receipts_intra_and_own_reports(relay):
    r, sender, down = relay
    low, = await joined(sender, down, 2)
    full = Receiver()
    desc = [d for _, d in low.drain() if d[1] & 0x7F == 97]
    assert parse_description(desc[-1][12:]).reference_levels == 2  # keep references from levels 0-1
    full.subscribe(down, 0)
    sender.drain()
    sender.frame()  # its arrivals are reported up within 50 ms
    low.feedback(down, ssrc=Sender.SSRC, nacks=[Nack(frame_id=1, payloads=[0, 3, 4, 13])])
    used = pack_bitmap([True] * 4 + [False] * 10)
    low.feedback(down, ssrc=Sender.SSRC, receipts=[FrameReceipt(frame_id=1, payloads=14, received=used,
                                                                decoded=True, crc32=7)])
    full.feedback(down, ssrc=Sender.SSRC, receipts=[FrameReceipt(frame_id=1, payloads=14, received=pack_bitmap(
        [False] + [True] * 13), decoded=True, crc32=9)])  # lacks a level-0 payload: its reference differs
    await asyncio.sleep(0.15)
    up = sender.feedback()
    nacks = [list(n.payloads) for fb in up for n in fb.nacks]
    receipts = [(x.frame_id, x.decoded, x.crc32) for fb in up for x in fb.receipts]
    assert nacks == [[0, 3]]  # payloads 4 and 13 are levels 2 and 6: not subscribed
    assert (1, True, 7) in receipts and (1, True, 9) not in receipts  # only the reference receiver's
    assert any(not decoded for _, decoded, _ in receipts)  # an intra request for `full`
    assert r.stats.nack_payloads_dropped == 2 and r.stats.intra_requests >= 1
    assert any(fb.HasField("arrivals") for fb in up)  # the relay's own congestion feedback


@pytest.mark.parametrize("relay", ["most"], indirect=True)
async def test_references_may_follow_the_receiver_with_the_most_levels(relay):
    r, sender, down = relay
    low, full = await joined(sender, down, 2, 0)
    desc = [d for _, d in low.drain() if d[1] & 0x7F == 97]
    assert parse_description(desc[-1][12:]).reference_levels == 0  # references from every level
    sender.drain()
    for rcv, crc, used in ((full, 9, [True] * 14), (low, 7, [True] * 4 + [False] * 10)):
        rcv.feedback(down, ssrc=Sender.SSRC, receipts=[FrameReceipt(frame_id=1, payloads=14,
                                                                    received=pack_bitmap(used), decoded=True, crc32=crc)])
    await asyncio.sleep(0.1)
    receipts = [(x.crc32, x.decoded) for fb in sender.feedback() for x in fb.receipts]
    assert (9, True) in receipts and (7, True) not in receipts  # the all-levels receiver's only
    assert (0, False) in receipts  # the 2-level receiver lacks the reference's levels: an intra frame


async def test_adapt_drops_a_level_on_reported_loss(relay):
    r, sender, down = relay
    rcv, = await joined(sender, down, 4, frames=1)
    assert rcv.levels() == {0, 1, 2, 3}
    rcv.feedback(down, ssrc=Sender.SSRC, block_loss=[0.0, 0.0, 0.0, 0.4, 1.0, 1.0, 1.0])  # level 3: 40 % lost
    await asyncio.sleep(0.05)
    await stream(sender, 2)
    assert rcv.levels() == {0, 1, 2} and r.table.counters.adapted_down == 1


def test_subscription_table_reference_and_adaptation():
    t = SubscriptionTable(timeout=1.0, adapt=True, stream_levels=7)
    a = t.subscribe(("a", 1), 4, 0, now=0.0)
    b = t.subscribe(("b", 1), 0, 0, now=0.1)
    assert t.reference() is a and t.reference_levels() == 4
    assert t.reference(most=True) is b and t.reference_levels(most=True) == 0
    t.on_loss(a, [0.0, 0.0, 0.0, 0.3, 1.0, 1.0, 1.0], now=1.0)  # 30 % of level 3 lost
    assert t.effective(a) == 3 and t.counters.adapted_down == 1
    t.on_loss(a, [0.0] * 7, now=2.0)
    assert t.effective(a) == 3  # not yet: 3 s of low loss first
    t.on_loss(a, [0.0] * 7, now=4.1)
    assert t.effective(a) == 4 and a.cap is None and t.counters.adapted_up == 1
    t.on_loss(b, [0.5] * 7, now=5.0)
    assert t.effective(b) == 6
    assert [s.addr for s in t.expire(now=5.5)] == [("a", 1), ("b", 1)]
    assert t.reference() is None and t.reference_levels() == 0


@pytest.mark.parametrize("command, argv, msg", [
    ("relay", ["--timeout", "0"], "--timeout must be in"),
    ("relay", ["--max-receivers", "0"], "--max-receivers must be >= 1"),
    ("relay", ["--listen", "nope"], "--listen: bad address"),
    ("relay", ["--intra-interval", "-1"], "--intra-interval must be in"),
    ("relay", ["--arrival-ms", "-5"], "--arrival-ms must be in"),
    ("receiver", ["--levels", "-1"], "--levels must be in [0, 255]"),
    ("receiver", ["--levels", "256"], "--levels must be in [0, 255]"),
    ("receiver", ["--join", "relay-without-port"], "--join: bad address")])
def test_cli_user_errors(command, argv, msg, capsys):
    import importlib

    assert importlib.import_module(f"jscc_stream.{command}.cli").main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]
