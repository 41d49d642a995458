"""The entropy-coded codec's wire path: PT 98 payload packets, the stream description's flag,
reassembly of payload frames under the one playout rule, and a live stream end to end."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from jscc_stream.proto.description import make_description, parse_description
from jscc_stream.proto.packet import PT_PAYLOAD, PayloadHeader, PayloadPacket, WireError, parse_datagram
from jscc_stream.proto.packetizer import Packetizer
from jscc_stream.proto.reassembly import Reassembler

W, H = 320, 240


def _desc(codec, ssrc=7, max_payloads=None, mtu=900) -> bytes:
    lay = codec.layout(W, H)
    levels = list(range(lay.blocks))
    body = make_description(ssrc=ssrc, revision=0, codec_name="tiny-rd", codec_sha256="", layout=lay, fps=30,
                            block_levels=levels, dscp_map=None, clock_epoch_unix_us=0, mtu=mtu,
                            max_frame_payloads=max_payloads or codec.max_frame_payloads(W, H))
    return Packetizer(ssrc, levels).description(0, body).data


def _frame(codec, pk, fid, budget=4800):
    from jscc_stream.models.data import builtin_eval_images

    import cv2

    bgr = cv2.cvtColor(list(builtin_eval_images(W, H).values())[fid % 8], cv2.COLOR_RGB2BGR)
    payloads = codec.encode(bgr, budget)
    return payloads, pk.packetize_payloads(fid, fid * 3000, payloads, codec.payload_levels(payloads))


def test_payload_packets_round_trip(tiny_rd_codec):
    pk = Packetizer(5, list(range(4)), mtu=900, first_seq=65534)
    payloads, grams = _frame(tiny_rd_codec, pk, 3)
    assert len(grams) == len(payloads) >= 3
    assert all(len(g.data) <= 900 for g in grams)
    for i, (g, p) in enumerate(zip(grams, payloads)):
        pkt = parse_datagram(g.data)
        assert isinstance(pkt, PayloadPacket) and pkt.data == p
        assert pkt.header == PayloadHeader(3, p[0] & 15, i, len(payloads), 0)
        assert pkt.marker == (i == len(grams) - 1) and g.level == pkt.header.level
    with pytest.raises(ValueError, match="exceeds"):
        pk.packetize_payloads(4, 0, [bytes(900)], [0])
    with pytest.raises(WireError):
        PayloadHeader.unpack(PayloadHeader(1, 0, 0, 1, 0).pack()[:8])
    assert PT_PAYLOAD == 98


def test_description_carries_the_entropy_coded_flag(tiny_rd_codec):
    info = parse_description(parse_datagram(_desc(tiny_rd_codec)).body)
    assert info.entropy_coded and info.layout.blocks == 4 and info.max_frame_payloads == 4 * 255
    with pytest.raises(WireError, match="payloads per frame"):
        parse_description(parse_datagram(_desc(tiny_rd_codec, max_payloads=10 ** 7)).body)


def test_payload_frames_reassemble_with_the_playout_rule(tiny_rd_codec):
    pk = Packetizer(7, list(range(4)))
    r = Reassembler(latency=0.05)
    r.push(_desc(tiny_rd_codec), 0.0)
    payloads, grams = _frame(tiny_rd_codec, pk, 1)
    out = []
    for g in reversed(grams):  # any order
        out += r.push(g.data, 0.001)
    (slot,) = out
    assert slot.reason == "complete" and slot.payload_list() == payloads
    assert r.push(grams[0].data, 0.002) == [] and r.counters.late == 1
    # frame 2 loses payloads 0 and 2: released once the marker's reorder grace is over, with
    # None in their places
    payloads2, grams2 = _frame(tiny_rd_codec, pk, 2)
    for i, g in enumerate(grams2):
        if i not in (0, 2):
            assert r.push(g.data, 0.01) == []
    pending = next(iter(r.slots.values()))
    # a missing payload counts at the level of the next one that arrived (levels go out in order)
    assert pending.max_missing_level() == payloads2[3][0] & 15
    lv = [p[0] & 15 for p in payloads2]
    assert list(pending.payload_levels_filled()) == [lv[1], lv[1], lv[3]] + lv[3:]
    assert r.pop_due(0.015) == []
    (slot2,) = r.pop_due(0.021)
    assert slot2.reason == "deadline"
    assert slot2.payload_list() == [None if i in (0, 2) else p for i, p in enumerate(payloads2)]
    expected, got = slot2.level_units()
    assert expected.sum() == len(payloads2) and got.sum() == len(payloads2) - 2
    decoded = tiny_rd_codec.decode(slot2.payload_list(), W, H)
    assert decoded.shape == (H, W, 3)


def test_forged_payload_packets_are_invalid_not_fatal(tiny_rd_codec):
    pk = Packetizer(7, list(range(4)))
    r = Reassembler(latency=0.05)
    r.push(_desc(tiny_rd_codec, max_payloads=40), 0.0)
    payloads, grams = _frame(tiny_rd_codec, pk, 1)
    r.push(grams[0].data, 0.001)
    forged = Packetizer(7, list(range(4)), first_seq=100)
    bad = [forged.packetize_payloads(1, 3000, [b"x" * 20], [0])[0].data,  # same frame, other count
           forged.packetize_payloads(9, 3000, [b"x" * 20] * 41, [0] * 41)[0].data,  # over the bound
           forged.packetize_payloads(9, 3000, [b"x" * 20], [9])[0].data]  # level out of range
    for b in bad:
        assert r.push(b, 0.002) == []
    assert r.counters.invalid == 3
    # a fixed-rate packet on an entropy-coded stream is invalid too
    from jscc_stream.proto.packet import FragmentHeader, build_media

    r.push(build_media(7, 500, 0, True, FragmentHeader(3, 0, 0, 0, 1, 0, 0), b"abc"), 0.003)
    assert r.counters.invalid == 4


@pytest.mark.parametrize("path", ["direct", "shim"])
async def test_entropy_coded_stream_end_to_end(tiny_rd_codec, path, monkeypatch):
    import torch

    from jscc_stream.sender.transport import FrameBudget

    from jscc_stream.sender.dscp import default_dscp_map
    from jscc_stream.sources import SyntheticSource

    from test_stream_e2e import psnr, stream

    torch.set_num_threads(1)
    frames, kbps = 40, 1152.0
    budget = int(kbps * 1000 / 8 / 30)
    # the codec's budget held fixed, and no repair (tested on their own), so that the offline encode
    # below makes the same payloads
    monkeypatch.setattr(FrameBudget, "codec_bytes", lambda self, *a: budget)
    sstats, receiver, got = await stream(tiny_rd_codec, path, frames,
                                         {"dscp_map": default_dscp_map(4), "kbps": kbps, "adapt": False,
                                          "fec": False, "nack": False})
    recs = [r for r, _ in got]
    assert sstats.frames_sent == frames
    # the bitrate holds: payload bytes per frame within the budget (RTP + payload headers on top)
    assert sstats.bytes_sent <= frames * (budget + 30 * 24) + 40 * 200
    assert all(r.decoded for r in recs) and len(recs) >= frames - 3
    assert receiver.reasm.counters.late == 0 and receiver.reasm.counters.undecodable_frames == 0
    full = [r for r in recs if r.bytes_received == r.bytes_expected]
    # DSCP by importance level (AF41, AF42, AF43, LE) as seen at the receiver; -1: level not sent
    assert full and all(r.dscp[0] == 34 and all(d in (-1, e) for d, e in zip(r.dscp, (34, 36, 38, 1)))
                        for r in full)
    assert any(r.dscp == [34, 36, 38, 1] for r in full)
    if path == "direct":
        assert all(r.bytes_received == r.bytes_expected for r in recs)
    else:
        lost = 1 - sum(r.bytes_received for r in recs) / sum(r.bytes_expected for r in recs)
        assert 0.02 < lost < 0.3
    # the live picture is the offline decode of the same payloads with the same ones missing
    src = SyntheticSource(W, H, 30.0, seed=1)
    for rec, frame in got[::5]:
        ref = src.read(rec.frame_id)
        payloads = tiny_rd_codec.encode(ref, budget)
        missing = {m[0] for m in rec.missing}
        offline = tiny_rd_codec.decode([None if i in missing else p for i, p in enumerate(payloads)], W, H)
        assert abs(psnr(ref, frame) - psnr(ref, offline)) < 0.5


@pytest.mark.parametrize("argv, msg", [
    (["--kbps", "0"], "--kbps must be positive"),
    (["--kbps", "500", "--codec", "fixed-uniform"], "--kbps needs an entropy-coded codec"),
    (["--kbps", "500", "--max-kbps", "400"], "need 0 < --min-kbps (62.5) <= --kbps (500) <= --max-kbps (400)"),
    (["--kbps", "500", "--min-kbps", "600"], "need 0 < --min-kbps (600) <= --kbps (500)"),
    (["--min-kbps", "100", "--codec", "fixed-uniform"], "--min-kbps/--max-kbps need an entropy-coded codec"),
])
def test_send_kbps_errors_are_one_line(argv, msg, capsys):
    from jscc_stream.sender.cli import main as send_main

    assert send_main(argv + ["--frames", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]


def test_gap_rule_releases_a_frame_whose_last_packet_was_lost(tiny_rd_codec):
    """With ``gap``, a frame none of whose packets arrived for that long goes out (its marker was
    lost); without, it waits for its deadline."""
    payloads, grams = _frame(tiny_rd_codec, Packetizer(7, list(range(4))), 1)
    last = 0.001 + (len(grams) - 2) * 0.0001  # arrival of the last packet that made it
    for gap, released_at in ((0.01, last + 0.0101), (None, 0.0511)):
        r = Reassembler(latency=0.05, gap=gap)
        r.push(_desc(tiny_rd_codec), 0.0)
        for i, g in enumerate(grams[:-1]):  # the marker (last payload) is lost
            assert r.push(g.data, 0.001 + i * 0.0001) == []
        assert r.pop_due(released_at - 0.002) == []
        (slot,) = r.pop_due(released_at)
        assert slot.reason == "deadline" and slot.payload_list()[-1] is None
    with pytest.raises(ValueError, match="gap"):
        Reassembler(gap=0)


@pytest.mark.parametrize("latency, nack", [(0.25, True), (0.03, True), (0.25, False)])
async def test_top_levels_repaired_by_parity_and_nack_only_when_the_round_trip_fits(tiny_rd_codec, latency,
                                                                                    nack):
    """GE ~10 % loss, 20 ms each way (round trip ~40 ms): with a 250 ms playout deadline lost
    top-level payloads are asked for and resent; with 30 ms the answer could not arrive in time,
    so none is asked for; nor from a sender that does not resend (it says so in its headers).
    Parity (sized to the reported loss) recovers payloads either way."""
    import torch

    from test_stream_e2e import stream

    torch.set_num_threads(1)
    sstats, receiver, got = await stream(tiny_rd_codec, "shim", 60, {"kbps": 1152.0, "adapt": False, "nack": nack},
                                         shim_args=["--delay-ms", "20", "--reverse-delay-ms", "20"], latency=latency)
    c, rs = receiver.reasm.counters, receiver.stats
    assert rs.rtt_ms is not None and 35 < rs.rtt_ms < 150 and 35 < sstats.rtt_ms < 150  # both ends know it
    assert sstats.parity_packets > 0 and c.recovered > 0 and c.frames_recovered > 0
    if latency > 0.1 and nack:
        assert rs.nacks_sent > 0 and sstats.retransmissions > 0
    else:
        assert rs.nacks_sent == 0 and sstats.retransmissions == 0
    assert sstats.retransmissions <= rs.payloads_nacked  # only what was asked for
    assert all(r.decoded for r, _ in got)
