"""RFC 6184 packetization of the H.264 baseline: datagram limit, FU-A reassembly, loss semantics."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jscc_stream.baselines.h264 import (
    NAL_FU_A,
    depacketize,
    join_annexb,
    packetize_access_unit,
    packetize_nal,
    split_annexb,
)
from jscc_stream.proto.packet import RTP_HEADER_BYTES

nal_st = st.binary(min_size=1, max_size=5000).map(lambda b: bytes([0x65]) + b)  # IDR slice header byte


@settings(max_examples=60, deadline=None)
@given(nals=st.lists(nal_st, min_size=1, max_size=5), mtu=st.integers(100, 1500), start=st.integers(0, 0xFFFF))
def test_any_access_unit_fits_and_round_trips(nals, mtu, start):
    payloads = packetize_access_unit(nals, mtu)
    assert all(len(p) + RTP_HEADER_BYTES <= mtu for p in payloads)
    packets = [((start + i) & 0xFFFF, p) for i, p in enumerate(payloads)]
    random.Random(0).shuffle(packets)  # order and the sequence wrap must not matter
    got, dropped = depacketize(packets)
    assert got == nals and dropped == 0


def test_small_nal_is_single_packet_large_is_fu_a():
    nal = bytes([0x41]) + bytes(range(200))
    assert packetize_nal(nal, 900) == [nal]
    big = bytes([0x65]) + bytes(3000)
    frags = packetize_nal(big, 900)
    assert len(frags) == 4 and all(p[0] & 0x1F == NAL_FU_A for p in frags)
    assert frags[0][1] & 0x80 and frags[-1][1] & 0x40 and not frags[1][1] & 0xC0
    assert max(len(p) for p in frags) - min(len(p) for p in frags) <= 1  # near-equal sizes


@pytest.mark.parametrize("lost", [0, 1, 3])
def test_lost_fragment_drops_only_its_nal(lost):
    small = bytes([0x06, 1, 2, 3])
    big = bytes([0x61]) + bytes(range(256)) * 12
    payloads = packetize_access_unit([small, big], 900)
    packets = [(65530 + i & 0xFFFF, p) for i, p in enumerate(payloads) if i != lost + 1]
    got, dropped = depacketize(packets)
    assert got == [small] and dropped == 1


def test_lost_single_nal_keeps_the_others_and_duplicates_are_ignored():
    a, b, c = bytes([0x67, 1]), bytes([0x68, 2]), bytes([0x65, 3, 4])
    payloads = packetize_access_unit([a, b, c], 900)
    got, dropped = depacketize([(10, payloads[0]), (12, payloads[2]), (12, payloads[2])])
    assert got == [a, c] and dropped == 0


def test_stap_a_and_garbage():
    stap = bytes([24]) + (2).to_bytes(2, "big") + b"\x67\x01" + (3).to_bytes(2, "big") + b"\x68\x02\x03"
    got, dropped = depacketize([(1, stap), (2, b""), (3, bytes([0x1F, 0])), (4, bytes([24, 0, 9, 1]))])
    assert got == [b"\x67\x01", b"\x68\x02\x03"] and dropped == 3


def test_annexb_round_trip_and_bad_mtu():
    clean = [bytes([0x67, 1, 2]), bytes([0x68, 7]), bytes([0x65, 9, 9, 1])]
    assert split_annexb(join_annexb(clean)) == clean
    assert split_annexb(b"\x00\x00\x01\x67\x01\x00\x00\x00\x01\x68\x02") == [b"\x67\x01", b"\x68\x02"]
    with pytest.raises(ValueError):
        packetize_nal(b"", 900)
    with pytest.raises(ValueError):
        packetize_nal(bytes(100), 14)


def test_real_x264_stream_survives_packetization():
    av = pytest.importorskip("av")
    import fractions

    import numpy as np

    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = 64, 48, "yuv420p"
    enc.time_base = fractions.Fraction(1, 30)
    enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    dec = av.CodecContext.create("h264", "r")
    rng = np.random.default_rng(0)
    decoded = 0
    for i in range(3):
        frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), np.uint8), format="bgr24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = i
        for pkt in enc.encode(frame):
            payloads = packetize_access_unit(split_annexb(bytes(pkt)), 200)
            assert all(len(p) + 12 <= 200 for p in payloads)
            nals, dropped = depacketize(list(enumerate(payloads)))
            assert dropped == 0
            decoded += len(dec.decode(av.Packet(join_annexb(nals))))
    assert decoded == 3
