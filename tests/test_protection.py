"""Repair of the top levels (parity, NACK), RTCP round trips, arrival reports: the pieces alone,
then through the packetizer and the reassembler."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jscc_stream.proto.arrivals import ArrivalLog, decode_arrivals
from jscc_stream.proto.description import make_description
from jscc_stream.proto.packet import ParityHeader, WireError, parse_datagram
from jscc_stream.proto.packetizer import Packetizer
from jscc_stream.proto.protection import NackPolicy, RetransmitHistory, parity_for, protected_prefix
from jscc_stream.proto.reassembly import Reassembler
from jscc_stream.proto.rtcp import (ReceptionStats, build_bye, build_dlrr, build_report,
                                    build_sender_report, compact, ntp_now, parse_rtcp, rtt_from)


# -- RTCP: round trip at both ends -------------------------------------------------------------
def test_rtt_from_sender_report_and_receiver_report():
    t0 = 1_800_000_000.0  # sender's wall clock when it sends the SR
    sr = parse_rtcp(build_sender_report(42, ntp_now(t0), 9000, 10, 5000)).srs[0]
    rx = ReceptionStats(ssrc=42)
    rx.update(1, 0, 0.0)
    rx.on_sender_report(sr.sender_info.ntp_timestamp, arrival=5.000)  # receiver's own clock
    block = parse_rtcp(build_report(7, [rx.report(now=5.200)])).rrs[0].reports[0]  # held 200 ms
    assert block.lsr == compact(ntp_now(t0)) and abs(block.dlsr / 65536 - 0.2) < 1e-4
    # the RR reaches the sender 300 ms after its SR left: 100 ms of the 300 were the path
    assert rtt_from(compact(ntp_now(t0 + 0.3)), block.lsr, block.dlsr) == pytest.approx(0.1, abs=1e-3)


def test_rtt_at_the_receiver_from_rrtr_and_dlrr():
    t0 = 1_800_000_000.0
    m = parse_rtcp(build_report(7, [], b"", rrtr_ntp=ntp_now(t0)))
    (ssrc, ntp), = m.rrtr
    assert ssrc == 7
    dlrr = parse_rtcp(build_dlrr(42, [(ssrc, compact(ntp), int(0.01 * 65536))])).dlrr  # held 10 ms
    (who, lrr, delay), = dlrr
    assert who == 7 and rtt_from(compact(ntp_now(t0 + 0.06)), lrr, delay) == pytest.approx(0.05, abs=1e-3)


def test_rtt_rejects_missing_or_impossible_timestamps():
    now = compact(ntp_now())
    assert rtt_from(now, 0, 0) is None  # no SR heard yet
    assert rtt_from(now, now + 65536, 0) is None  # echo from the future: wraps to ~18 hours
    assert rtt_from(now, now - 20 * 65536, 0) is None  # 20 s: not a round trip


def test_bye_and_garbage():
    assert parse_rtcp(build_bye(99)).byes == [99]
    with pytest.raises(ValueError):
        parse_rtcp(b"\x80\xc8\x00\x09" + b"\x00" * 8)  # SR claiming more words than it has
    # an XR with a truncated block is skipped, not misread
    assert parse_rtcp(struct.pack("!BBHLBBH", 0x80, 207, 3, 1, 5, 0, 9) + b"\0" * 4).dlrr == []


# -- arrival reports -------------------------------------------------------------------------
def test_arrival_log_roundtrip_with_losses_and_wrap():
    log = ArrivalLog()
    seqs = [65530, 65531, 65533, 65535, 0, 2]  # 65532, 65534, 1 lost; wraps at 2^16
    for i, s in enumerate(seqs):
        log.add(s, 10.0 + i * 0.001)
    got = decode_arrivals(log.take())
    assert [s for s, _ in got] == [65530, 65531, 65532, 65533, 65534, 65535, 0, 1, 2]
    assert [a is not None for _, a in got] == [1, 1, 0, 1, 0, 1, 1, 0, 1]
    assert [round(a, 6) for _, a in got if a is not None] == [10.0 + i * 0.001 for i in range(6)]
    assert log.take() is None
    log.add(65534, 11.0)  # late: reported lost above, arrived after all
    log.add(65533, 11.0)  # a duplicate of one reported: not news
    log.add(3, 11.001)
    got = decode_arrivals(log.take())
    assert [s for s, _ in got] == [65534, 65535, 0, 1, 2, 3]  # the range reaches back for the late one
    assert [(s, a) for s, a in got if a is not None] == [(65534, 11.0), (3, 11.001)]
    short = ArrivalLog(late_window=4)
    for s in (0, 10):
        short.add(s, 1.0)
    short.take()
    short.add(2, 1.5)  # 8 behind the range's end: beyond the window, not reported
    short.add(7, 1.5)  # 3 behind: reported
    assert [s for s, a in decode_arrivals(short.take()) if a is not None] == [7]


def test_malformed_arrival_reports_raise_value_error():
    from jscc_stream.proto.stream_pb2 import PacketArrivals

    for msg in (PacketArrivals(count=0), PacketArrivals(count=10, received=b"\xff"),  # bitmap too short
                PacketArrivals(count=8, received=b"\x03", delta_us=[1]),  # 2 arrived, 1 time
                PacketArrivals(count=10 ** 6, received=b"")):
        with pytest.raises(ValueError):
            decode_arrivals(msg)


# -- parity over the protected payloads ----------------------------------------------------
def test_protected_prefix_stops_at_the_level_and_the_mtu():
    assert protected_prefix([0, 0, 1, 1, 2, 3], [50] * 6, 2, 900) == 4
    assert protected_prefix([0, 0, 1, 1, 2, 3], [50] * 6, 0, 900) == 0
    assert protected_prefix([0, 0, 1], [50, 880, 50], 2, 900) == 1  # a parity of 880 + headers > 900


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=12), loss=st.floats(0.01, 0.3),
       seed=st.integers(0, 2 ** 16))
def test_any_k_of_n_shares_recover_every_protected_payload(sizes, loss, seed):
    rng = np.random.default_rng(seed)
    k = len(sizes)
    payloads = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes] + [b"tail" * 10]
    levels = [0] * k + [5]
    parity = parity_for(payloads, k, loss)
    m = len(parity)
    assert m >= 1
    pk = Packetizer(5, list(range(6)))
    grams = pk.packetize_payloads(3, 0, payloads, levels, protected=k, parity=parity, covered=k)
    assert [g.header is None for g in grams] == [False] * k + [True] * m + [False]  # parity right after
    shares = [g for g in grams if g.header is None or g.header.index < k]
    keep = rng.permutation(len(shares))[:k]  # any k of the n (payloads and parity mixed)
    r = Reassembler(latency=1.0)
    r.push(_description(), 0.0)
    for i in sorted(keep):
        r.push(shares[i].data, 0.01)
    slot, = r.slots.values()
    assert slot.payload_list()[:k] == payloads[:k]
    assert [slot.payload_levels[i] for i in range(k)] == levels[:k]
    assert r.counters.recovered == k - sum(1 for i in keep if i < k)


def test_fewer_than_k_shares_recover_nothing_and_bad_parity_is_counted():
    payloads = [bytes([i]) * 40 for i in range(4)]
    parity = parity_for(payloads, 4, 0.1)
    grams = Packetizer(5, list(range(6))).packetize_payloads(3, 0, payloads, [0, 0, 1, 1], protected=0,
                                                               parity=parity, covered=4)
    r = Reassembler(latency=1.0)
    r.push(_description(), 0.0)
    r.push(grams[0].data, 0.01)
    r.push(grams[4].data, 0.01)  # 1 payload + 1 parity of k = 4
    slot, = r.slots.values()
    assert slot.payload_list()[1:] == [None, None, None] and r.counters.recovered == 0
    forged = bytearray(grams[5].data)
    forged[12 + 5] = 9  # n changed: not the code the first parity packet announced
    r.push(bytes(forged), 0.02)
    assert r.counters.invalid == 1
    with pytest.raises(WireError):
        ParityHeader(3, 4, 4, 4, 0, 4, (0, 0, 1, 1))  # n must exceed k
    assert isinstance(parse_datagram(grams[4].data).header, ParityHeader)


def _description() -> bytes:
    from jscc_stream.proto.description import LatentLayout

    body = make_description(ssrc=5, codec_name="t", codec_sha256="", layout=LatentLayout(64, 48, 6, 1, 1, 1, 8, False),
                            fps=30.0, block_levels=list(range(6)), dscp_map=None, clock_epoch_unix_us=0, mtu=900,
                            max_frame_payloads=64, revision=0)
    return Packetizer(5, list(range(6)), first_seq=900).description(0, body).data


# -- NACK ----------------------------------------------------------------------------------
def test_nack_only_for_protected_payloads_known_missing_and_in_time():
    p = NackPolicy()
    have = [True, False, True, False, False, True]  # payloads 1, 3, 4 missing
    # protected = 3: payload 1 only (3 and 4 are less important levels)
    assert p.due((1, 1), 3, have, False, now=0.0, deadline=0.2, rtt=0.1) == [1]
    # the answer cannot arrive before the deadline: nothing, whatever is missing
    assert p.due((1, 2), 6, have, False, now=0.0, deadline=0.1, rtt=0.1) == []
    # no round trip known yet: nothing
    assert p.due((1, 3), 6, have, False, now=0.0, deadline=1.0, rtt=None) == []
    # payload 4 counts as missing only once something after it arrived
    assert p.due((1, 4), 6, [True, True, True, True, False, False], False, 0.0, 1.0, 0.1) == []
    assert p.due((1, 5), 6, [True, True, True, True, False, False], True, 0.0, 1.0, 0.1) == [4, 5]


def test_nack_retries_a_round_trip_apart_at_most_twice():
    p = NackPolicy(max_tries=2)
    have = [True, False, True]
    assert p.due((1, 1), 3, have, False, 0.0, 1.0, 0.1) == [1]
    assert p.due((1, 1), 3, have, False, 0.1, 1.0, 0.1) == []  # the first answer may still come
    assert p.due((1, 1), 3, have, False, 0.2, 1.0, 0.1) == [1]
    assert p.due((1, 1), 3, have, False, 0.5, 1.0, 0.1) == []  # two tries: done


def test_held_frame_waits_for_its_retransmission_but_never_past_the_deadline():
    payloads = [bytes([i]) * 30 for i in range(4)]
    pk = Packetizer(5, list(range(6)))
    grams = pk.packetize_payloads(1, 0, payloads, [0, 0, 1, 2], protected=2)
    nxt = pk.packetize_payloads(2, 3000, payloads, [0, 0, 1, 2], protected=2)
    r = Reassembler(latency=0.2, gap=0.01)
    r.push(_description(), 0.0)
    for g in (grams[0], grams[2], grams[3]):  # payload 1 lost; the marker arrived
        assert r.push(g.data, 0.001) == []
    r.hold(5, 1, until=0.5)  # longer than the deadline allows
    slot = r.slots[(5, 1)]
    assert slot.hold_until == pytest.approx(0.201) and slot.deadline == pytest.approx(0.201)
    for g in nxt:  # a newer frame completes: it waits behind the held one
        assert r.push(g.data, 0.05) == []
    assert r.pop_due(0.15) == []
    out = r.push(pk.resend(0, grams[1].header, payloads[1]).data, 0.16)  # the retransmission
    assert [s.frame_id for s in out] == [1, 2] and out[0].complete


def test_history_resends_only_protected_young_payloads_a_bounded_number_of_times():
    payloads = [bytes([i]) * 30 for i in range(4)]
    grams = Packetizer(5, list(range(6))).packetize_payloads(1, 77, payloads, [0, 0, 1, 2], protected=2)
    h = RetransmitHistory(max_age=1.0, max_resends=2)
    h.add(1, 77, 10.0, [g.header for g in grams], payloads)
    ts, items = h.take(1, [0, 3, 9], now=10.1)  # 3 is not protected, 9 does not exist
    assert ts == 77 and [hd.index for hd, _ in items] == [0] and items[0][1] == payloads[0]
    assert len(h.take(1, [0], 10.2)[1]) == 1 and h.take(1, [0], 10.3)[1] == []  # twice at most
    assert h.take(1, [1], 11.5)[1] == []  # too old
    assert h.take(2, [0], 10.1)[1] == []  # unknown frame


def test_parity_after_a_complete_frame_is_unused_not_late():
    payloads = [bytes([i]) * 40 for i in range(4)]
    grams = Packetizer(5, list(range(6))).packetize_payloads(3, 0, payloads, [0, 0, 1, 1], protected=4,
                                                               parity=parity_for(payloads, 4, 0.1), covered=4)
    r = Reassembler(latency=1.0)
    r.push(_description(), 0.0)
    payload_grams = [g for g in grams if g.header is not None]
    released = [s for g in payload_grams for s in r.push(g.data, 0.01)]  # every payload: complete
    assert [s.frame_id for s in released] == [3] and released[0].complete
    for g in grams:
        if g.header is None:
            r.push(g.data, 0.02)  # parity after the frame went out
    assert r.counters.late == 0 and r.counters.parity_unused == len(grams) - 4


def test_loss_runs_and_parity_shrinking_for_bursts_it_cannot_bridge():
    from types import SimpleNamespace

    from jscc_stream.proto.protection import loss_runs

    r = lambda seq, arrival: SimpleNamespace(seq=seq, arrival=arrival)  # noqa: E731
    assert loss_runs([r(1, 1.0), r(2, None), r(3, None), r(4, 1.0), r(5, None), r(7, None), r(8, 1.0),
                      r(9, None)]) == [2, 1, 1, 1]  # 6 unreported: 5 and 7 are separate runs
    assert loss_runs([r(1, 1.0)]) == [] and loss_runs([]) == []
    payloads = [bytes([i]) * 50 for i in range(10)]
    short, long_ = len(parity_for(payloads, 10, 0.15, burst=1.5)), len(parity_for(payloads, 10, 0.15, burst=10.0))
    assert short == 9 and long_ == 2  # 10-packet runs: a 0.3 x share, most of the bytes back to the codec


def test_the_send_log_passes_on_only_what_is_news():
    """A report that reaches back for a late packet repeats its neighbours as not arrived: the
    sender's loss figures (parity sizing, congestion) must not count them again."""
    from jscc_stream.sender.transport import SendLog

    log = SendLog()
    for s in range(10):
        log.record(s, s * 0.001, 900, level=s % 3)
    first, levels = log.results([(s, None if s == 4 else 1.0 + s) for s in range(8)])
    assert len(first) == 8 and levels == [s % 3 for s in range(8)] and first[4].arrival is None
    again, _ = log.results([(s, None) for s in range(4, 10)] + [(4, 2.0)])  # 4 late; 5-7 repeated
    assert [(r.seq, r.arrival) for r in again] == [(8, None), (9, None), (4, 2.0)]
    assert log.results([(99, 1.0)])[0] == []  # never sent


@pytest.mark.parametrize("size, accepted", [((64, 48), True), ((1080, 1920), True), ((1920, 1088), False),
                                            ((3840, 2160), False), ((4000, 16), False)])
def test_a_description_announcing_a_frame_larger_than_the_cap_is_refused(size, accepted):
    """Any UDP source can send a stream description: one announcing a huge frame would make the
    receiver decode ~16-megapixel pictures.  The receiver's --max-size (1920x1080, either
    orientation) bounds it."""
    from jscc_stream.proto.description import LatentLayout

    w, h = size
    body = make_description(ssrc=5, codec_name="t", codec_sha256="", layout=LatentLayout(w, h, 6, 1, 1, 1, 8, False),
                            fps=30.0, block_levels=list(range(6)), dscp_map=None, clock_epoch_unix_us=0, mtu=900,
                            max_frame_payloads=64, revision=0)
    r = Reassembler(latency=1.0, max_size=(1920, 1080))
    r.push(Packetizer(5, list(range(6))).description(0, body).data, 0.0)
    assert (5 in r.streams) == accepted and r.counters.invalid == (not accepted)
