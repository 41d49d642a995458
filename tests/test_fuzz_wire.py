"""Property tests of the media path's parsers (issue 16): RTP + JSCC headers (PT 96/98/99), the
stream description (PT 97) and the receiver's datagram handler.  Valid values round-trip exactly;
arbitrary or mutated bytes raise only :class:`WireError` (the promise of ``parse_datagram`` and
``parse_description``), and the reassembler, which takes every datagram the socket gives, never
raises at all."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FUZZ, mutated
from jscc_stream.proto.description import LatentLayout, StreamInfo, make_description, parse_description
from jscc_stream.proto.packet import (DescriptionPacket, FragmentHeader, MediaPacket, ParityHeader, ParityPacket,
                                      PayloadHeader, PayloadPacket, WireError, build_description, build_media,
                                      build_parity, build_payload, parse_datagram)
from jscc_stream.proto.packetizer import Packetizer
from jscc_stream.proto.protection import parity_for
from jscc_stream.proto.reassembly import Reassembler

u8, u16, u32 = st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)
body = st.binary(max_size=300)


@st.composite
def fragment_headers(draw) -> FragmentHeader:
    count = draw(st.integers(1, 255))
    return FragmentHeader(draw(u32), draw(u8), draw(u8), draw(st.integers(0, count - 1)), count, draw(u8),
                          draw(st.integers(0, (1 << 24) - 1)))


@st.composite
def payload_headers(draw) -> PayloadHeader:
    count = draw(st.integers(1, 0xFFFF))
    return PayloadHeader(draw(u32), draw(u8), draw(st.integers(0, count - 1)), count, draw(u8),
                         draw(st.integers(0, min(count, 255))))


@st.composite
def parity_headers(draw) -> ParityHeader:
    k = draw(st.integers(1, 254))
    n = draw(st.integers(k + 1, 255))
    return ParityHeader(draw(u32), k, n, draw(st.integers(k, n - 1)), draw(u8), draw(st.integers(k, 0xFFFF)),
                        tuple(draw(st.lists(u8, min_size=k, max_size=k))), draw(u8))


@FUZZ
@given(h=fragment_headers(), ssrc=u32, seq=u16, ts=u32, marker=st.booleans(), data=body)
def test_media_packets_round_trip(h, ssrc, seq, ts, marker, data):
    assert FragmentHeader.unpack(h.pack()) == h
    assert parse_datagram(build_media(ssrc, seq, ts, marker, h, data)) == MediaPacket(ssrc, seq, ts, marker, h, data)


@FUZZ
@given(h=payload_headers(), ssrc=u32, seq=u16, ts=u32, marker=st.booleans(), data=body)
def test_payload_packets_round_trip(h, ssrc, seq, ts, marker, data):
    assert PayloadHeader.unpack(h.pack()) == h
    assert parse_datagram(build_payload(ssrc, seq, ts, marker, h, data)) == PayloadPacket(ssrc, seq, ts, marker,
                                                                                           h, data)


@FUZZ
@given(h=parity_headers(), ssrc=u32, seq=u16, ts=u32, symbol=body)
def test_parity_packets_round_trip(h, ssrc, seq, ts, symbol):
    assert ParityHeader.unpack(h.pack()) == h
    assert parse_datagram(build_parity(ssrc, seq, ts, h, symbol)) == ParityPacket(ssrc, seq, ts, h, symbol)


@st.composite
def stream_infos(draw) -> StreamInfo:
    entropy = draw(st.booleans())
    blocks = draw(st.integers(1, 255))
    alpha, h, w = (draw(st.integers(1, 64)) for _ in range(3))
    if blocks * alpha * h * w > 16 << 20:
        alpha = h = w = 1
    layout = LatentLayout(draw(st.integers(1, 8192)), draw(st.integers(1, 8192)), blocks, alpha, h, w,
                          draw(st.integers(1, 8)), draw(st.booleans()))
    return StreamInfo(ssrc=draw(u32), revision=draw(u32), codec_name=draw(st.text(st.characters(codec="utf-8"))),
                      codec_sha256=draw(st.text(st.characters(codec="utf-8"), max_size=64)), layout=layout,
                      fps=draw(st.floats(allow_nan=False)),
                      block_levels=tuple(draw(st.lists(u32, min_size=blocks, max_size=blocks))),
                      dscp_map=draw(st.dictionaries(u32, u32, max_size=8)),
                      clock_epoch_unix_us=draw(st.integers(0, 2 ** 64 - 1)), mtu=draw(u32),
                      entropy_coded=entropy, max_frame_payloads=draw(st.integers(1, (16 << 20) // 512)) if entropy else 0)


@FUZZ
@given(info=stream_infos(), seq=u16, ts=u32)
def test_stream_descriptions_round_trip(info, seq, ts):
    raw = make_description(ssrc=info.ssrc, revision=info.revision, codec_name=info.codec_name,
                           codec_sha256=info.codec_sha256, layout=info.layout, fps=info.fps,
                           block_levels=list(info.block_levels), dscp_map=info.dscp_map,
                           clock_epoch_unix_us=info.clock_epoch_unix_us, mtu=info.mtu,
                           max_frame_payloads=info.max_frame_payloads)
    assert parse_description(raw) == info
    assert parse_datagram(build_description(info.ssrc, seq, ts, raw)) == DescriptionPacket(info.ssrc, seq, ts, raw)


# -- garbage and mutations ------------------------------------------------------------------------

def _layout_description(ssrc: int, entropy: bool) -> bytes:
    lay = LatentLayout(64, 48, 4, 1 if entropy else 2, 3, 50, 8, True)
    return make_description(ssrc=ssrc, revision=0, codec_name="fixed-uniform", codec_sha256="ab" * 32,
                            layout=lay, fps=30, block_levels=[0, 1, 2, 3], dscp_map={0: 34, 1: 36, 2: 38, 3: 0},
                            clock_epoch_unix_us=1_700_000_000_000_000, mtu=300,
                            max_frame_payloads=16 if entropy else 0)


def _seed_packets() -> list[bytes]:
    """Real datagrams of both kinds of stream, from the project's own packetizer."""
    rng = np.random.default_rng(16)
    fixed = Packetizer(11, [0, 1, 2, 3], mtu=300, first_seq=65530)
    out = [fixed.description(0, _layout_description(11, False)).data]
    out += [g.data for g in fixed.packetize(7, 3000, rng.integers(0, 256, (4, 300), dtype=np.uint8))]
    ent = Packetizer(12, [0, 1, 2, 3], mtu=300)
    out.append(ent.description(0, _layout_description(12, True)).data)
    payloads = [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes() for n in (120, 90, 200, 60, 30)]
    parity = parity_for(payloads, 3, loss=0.3)
    assert parity
    out += [g.data for g in ent.packetize_payloads(9, 6000, payloads, [0, 0, 1, 2, 3], protected=3,
                                                   parity=parity, covered=3)]
    return out


SEEDS = _seed_packets()


def _parses_or_wire_error(data: bytes) -> None:
    try:
        pkt = parse_datagram(data)
    except WireError:
        return
    if isinstance(pkt, DescriptionPacket):
        try:
            parse_description(pkt.body)
        except WireError:
            pass


@FUZZ
@given(data=st.binary(max_size=1500))
def test_arbitrary_bytes_parse_or_raise_wire_error(data):
    _parses_or_wire_error(data)
    try:
        parse_description(data)
    except WireError:
        pass


@FUZZ
@given(data=mutated(SEEDS))
def test_mutated_packets_parse_or_raise_wire_error(data):
    _parses_or_wire_error(data)


def _fresh_reassembler() -> Reassembler:
    r = Reassembler(latency=0.05, gap=0.02, max_size=(1920, 1080))
    for gram in SEEDS:  # both streams described, frames under way
        r.push(gram, 0.0)
    return r


@FUZZ
@given(grams=st.lists(st.one_of(mutated(SEEDS), st.sampled_from(SEEDS), st.binary(max_size=200)),
                      min_size=1, max_size=12),
       tos=st.one_of(st.none(), st.integers(0, 63)))
def test_the_reassembler_never_raises_on_mutated_datagrams(grams, tos):
    r = _fresh_reassembler()
    now = 0.001
    for gram in grams:
        now += 0.003
        for slot in r.push(gram, now, tos):
            assert slot is not None
    r.pop_due(now + 10.0)
    assert r.counters.datagrams == len(SEEDS) + len(grams)
