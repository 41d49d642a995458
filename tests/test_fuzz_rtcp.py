"""Property tests of the feedback path's parsers (issue 16): RTCP (SR, RR, XR RRTR/DLRR, BYE, APP,
compound), the Feedback protobuf in APP and what it carries (arrival reports, receipts, NACKs).
Valid values round-trip exactly; garbage raises only what each parser promises (``parse_rtcp``:
ValueError; the protobuf: DecodeError; ``decode_arrivals`` / ``unpack_bitmap``: ValueError); the
sender's and the receiver's RTCP handlers never raise."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from aiortc.rtp import RtcpReceiverInfo
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FUZZ, mutated
from jscc_stream.proto.arrivals import MAX_COVERED, ArrivalLog, decode_arrivals
from jscc_stream.proto.receipts import MAX_RECEIPT_PAYLOADS, pack_bitmap, unpack_bitmap
from jscc_stream.proto.rtcp import build_bye, build_dlrr, build_report, build_rrtr, build_sender_report, parse_rtcp
from jscc_stream.proto.stream_pb2 import Feedback, FrameReceipt, Nack, PacketArrivals

u8, u32, u64 = st.integers(0, 0xFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 2 ** 64 - 1)

report_blocks = st.builds(RtcpReceiverInfo, ssrc=u32, fraction_lost=u8, packets_lost=st.integers(0, 0x7FFFFF),
                          highest_sequence=u32, jitter=u32, lsr=u32, dlsr=u32)


@FUZZ
@given(ssrc=u32, ntp=u64, ts=u32, packets=u32, octets=u32)
def test_sender_reports_round_trip(ssrc, ntp, ts, packets, octets):
    (sr,) = parse_rtcp(build_sender_report(ssrc, ntp, ts, packets, octets)).srs
    info = sr.sender_info
    assert (sr.ssrc, info.ntp_timestamp, info.rtp_timestamp, info.packet_count, info.octet_count) == (
        ssrc, ntp, ts, packets, octets)


@FUZZ
@given(ssrc=u32, blocks=st.lists(report_blocks, max_size=31), feedback=st.one_of(st.none(), st.binary(max_size=1200)),
       rrtr=st.one_of(st.none(), u64), dlrr=st.lists(st.tuples(u32, u32, u32), max_size=8),
       byes=st.lists(u32, min_size=1, max_size=31))
def test_compound_reports_round_trip(ssrc, blocks, feedback, rrtr, dlrr, byes):
    data = build_report(ssrc, blocks, feedback, rrtr) + build_dlrr(ssrc, dlrr)
    data += b"".join(build_bye(s) for s in byes)
    msgs = parse_rtcp(data)
    (rr,) = msgs.rrs
    assert rr.ssrc == ssrc and rr.reports == blocks
    assert msgs.apps == ([] if feedback is None else [feedback])
    assert msgs.rrtr == ([] if rrtr is None else [(ssrc, rrtr)])
    assert msgs.dlrr == dlrr and msgs.byes == byes and msgs.srs == []


def _feedback_bodies() -> list[bytes]:
    log = ArrivalLog()
    for i, seq in enumerate([65534, 65535, 1, 0, 3, 7]):
        log.add(seq, 10.0 + 0.001 * i)
    full = Feedback(ssrc=1234, frames_decoded=40, frames_incomplete=2, packets_late=1, packets_invalid=3,
                    latency_p50_ms=41.5, latency_p95_ms=70.25, block_loss=[0.0, 0.1, 0.5], frames_skipped=1,
                    receipts=[FrameReceipt(frame_id=9, payloads=12, received=pack_bitmap([True] * 11 + [False]),
                                           decoded=True, crc32=0xDEADBEEF)],
                    arrivals=log.take(), nacks=[Nack(frame_id=9, payloads=[0, 2, 5])])
    return [full.SerializeToString(), Feedback(ssrc=1234, frames_decoded=3).SerializeToString()]


FEEDBACK = _feedback_bodies()


def _seed_rtcp() -> list[bytes]:
    blocks = [RtcpReceiverInfo(ssrc=1234, fraction_lost=25, packets_lost=40, highest_sequence=70000, jitter=90,
                               lsr=0x12345678, dlsr=6553)]
    out = [build_report(77, blocks, body, 0xE000_0000_1234_5678) for body in FEEDBACK]
    out += [build_sender_report(1234, 0xE000_0000_0000_0001, 9000, 100, 90000), build_rrtr(77, 5),
            build_dlrr(1234, [(77, 5, 6), (78, 7, 8)]), build_bye(1234)]
    out.append(out[0] + out[2] + out[4] + out[5])  # one compound of everything
    return out


SEED_RTCP = _seed_rtcp()


def _parse_all(data: bytes) -> None:
    """What a receiver of ``data`` runs: parse_rtcp, then each APP's Feedback and its parts."""
    try:
        msgs = parse_rtcp(data)
    except ValueError:
        return
    for body in msgs.apps:
        _parse_feedback(body)


def _parse_feedback(body: bytes) -> None:
    fb = Feedback()
    try:
        fb.ParseFromString(body)
    except DecodeError:
        return
    if fb.HasField("arrivals"):
        try:
            decode_arrivals(fb.arrivals)
        except ValueError:
            pass
    for r in fb.receipts:
        try:
            unpack_bitmap(r.received, r.payloads)
        except ValueError:
            pass


@FUZZ
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_as_rtcp_raise_only_value_error(data):
    _parse_all(data)
    _parse_feedback(data)


@FUZZ
@given(data=mutated(SEED_RTCP))
def test_mutated_rtcp_raises_only_value_error(data):
    _parse_all(data)


@FUZZ
@given(body=mutated(FEEDBACK))
def test_mutated_feedback_raises_only_decode_error(body):
    _parse_feedback(body)


@FUZZ
@given(arrivals=st.dictionaries(st.integers(0, 3000), st.integers(0, 10 ** 6), min_size=1, max_size=300),
       base=st.integers(0, 65535), t0=st.integers(0, 2 ** 40))
def test_arrival_reports_round_trip(arrivals, base, t0):
    """Every arrival the log was given comes back at its sequence number, to the microsecond;
    every other covered number comes back lost."""
    log = ArrivalLog()
    log.add(base, t0 / 1e6)  # the first packet anchors the range
    sent = {0: t0}
    for offset, dt in sorted(arrivals.items()):
        if offset:
            log.add((base + offset) & 0xFFFF, (t0 + dt) / 1e6)
            sent[offset] = t0 + dt
    decoded = decode_arrivals(PacketArrivals.FromString(log.take().SerializeToString()))
    got = {(seq - base) & 0xFFFF: round(t * 1e6) for seq, t in decoded if t is not None}
    assert got == sent
    assert len(decoded) == max(sent) + 1 and decoded[0][0] == base


@FUZZ
@given(begin=st.integers(0, 2 ** 32 - 1), count=st.integers(0, 2 ** 32 - 1), received=st.binary(max_size=600),
       base=st.integers(-2 ** 63, 2 ** 63 - 1), deltas=st.lists(st.integers(-2 ** 31, 2 ** 31 - 1), max_size=50))
def test_any_arrival_message_decodes_or_raises_value_error(begin, count, received, base, deltas):
    msg = PacketArrivals(begin_seq=begin, count=count, received=received, base_us=base, delta_us=deltas)
    try:
        out = decode_arrivals(msg)
    except ValueError:
        return
    assert 0 < len(out) == count <= MAX_COVERED and all(0 <= s <= 0xFFFF for s, _ in out)


@FUZZ
@given(flags=st.lists(st.booleans(), max_size=MAX_RECEIPT_PAYLOADS))
def test_bitmaps_round_trip(flags):
    assert unpack_bitmap(pack_bitmap(flags), len(flags)) == tuple(flags)


@FUZZ
@given(data=st.binary(max_size=600), count=st.integers(0, 2 ** 32 - 1))
def test_any_bitmap_unpacks_or_raises_value_error(data, count):
    try:
        flags = unpack_bitmap(data, count)
    except ValueError:
        return
    assert len(flags) == count


# -- the handlers ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sender(tiny_rd_codec):
    from jscc_stream.sender.sender import Sender, SenderConfig
    from jscc_stream.sources import SyntheticSource

    s = Sender(tiny_rd_codec, SyntheticSource(64, 48, 30), SenderConfig(width=64, height=48, kbps=800, ssrc=1234))
    for i in range(100):
        s.send_log.record((65500 + i) & 0xFFFF, i * 0.001, 900)
    return s


@FUZZ
@given(bodies=st.lists(st.one_of(mutated(FEEDBACK), st.sampled_from(FEEDBACK)), min_size=1, max_size=6))
def test_the_sender_takes_any_feedback_without_raising(sender, bodies):
    now = 1.0
    for body in bodies:
        now += 0.05
        sender._on_feedback(body, ("127.0.0.1", 9), now)


@pytest.fixture(scope="module")
def receiver(tiny_codec):
    from jscc_stream.receiver.outputs import Outputs
    from jscc_stream.receiver.receiver import Receiver, ReceiverConfig

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield Receiver(sock, lambda info: tiny_codec, Outputs(), ReceiverConfig())
    sock.close()


@FUZZ
@given(grams=st.lists(st.one_of(mutated(SEED_RTCP), st.sampled_from(SEED_RTCP), st.binary(max_size=100)),
                      min_size=1, max_size=6))
def test_the_receiver_takes_any_rtcp_without_raising(receiver, grams):
    for i, gram in enumerate(grams):
        receiver._on_rtcp(gram, ("127.0.0.1", 9), 1.0 + i * 0.01)
    assert np.isfinite(receiver.stats.rtt_ms or 0.0)
