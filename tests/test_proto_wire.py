"""Wire format: packetizer properties, generated protobuf matches the schema, RTCP, seq wrap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jscc_stream.netem.dscp import tos_of_dscp
from jscc_stream.sender.dscp import DscpMapError, default_dscp_map, parse_dscp_map
from jscc_stream.proto.packet import MediaPacket, WireError, parse_datagram
from jscc_stream.proto.packetizer import MIN_MTU, Packetizer, fragment_bounds
from jscc_stream.proto.rtcp import ReceptionStats, build_report, parse_rtcp
from jscc_stream.proto.seq import SeqUnwrapper, seq_diff

PROTO_DIR = Path(__file__).resolve().parents[1] / "proto"


def test_generated_code_matches_schema(tmp_path):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={tmp_path}",
                    str(PROTO_DIR / "stream.proto")], check=True)
    assert (tmp_path / "stream_pb2.py").read_text() == (PROTO_DIR / "stream_pb2.py").read_text(), \
        "proto/stream_pb2.py is stale: regenerate with grpc_tools.protoc (see docs/wire-format.md)"


@settings(max_examples=150, deadline=None)
@given(k=st.integers(1, 12), length=st.integers(1, 5000), mtu=st.integers(MIN_MTU, 1500),
       fid=st.integers(0, 2**32 - 1), seq0=st.integers(0, 65535))
def test_every_datagram_fits_the_mtu_and_roundtrips(k, length, mtu, fid, seq0):
    if -(-length // (mtu - 24)) > 255:
        with pytest.raises(ValueError):
            fragment_bounds(length, mtu - 24)
        return
    rng = np.random.default_rng(length)
    wire = rng.integers(0, 256, (k, length), dtype=np.uint8)
    pk = Packetizer(ssrc=7, block_levels=list(range(k)), mtu=mtu, first_seq=seq0)
    grams = pk.packetize(fid, 1234, wire)
    assert all(len(g.data) <= mtu for g in grams)
    got = np.zeros_like(wire)
    seen = np.zeros(wire.shape, bool)
    for i, g in enumerate(grams):
        p = parse_datagram(g.data)
        assert isinstance(p, MediaPacket)
        assert p.seq == (seq0 + i) & 0xFFFF and p.header.frame_id == fid and p.marker == (i == len(grams) - 1)
        assert p.header.level == p.header.block == g.block
        sl = slice(p.header.offset, p.header.offset + len(p.data))
        assert not seen[p.header.block, sl].any()
        got[p.header.block, sl] = np.frombuffer(p.data, np.uint8)
        seen[p.header.block, sl] = True
    assert seen.all() and (got == wire).all()
    # blocks go most important first
    assert [g.block for g in grams] == sorted(g.block for g in grams)


def test_default_mtu_fragments_large_blocks():
    pk = Packetizer(1, [0] * 8, mtu=900)
    grams = pk.packetize(0, 0, np.zeros((8, 2400), np.uint8))
    assert len(grams) == 8 * 3 and max(len(g.data) for g in grams) <= 900
    with pytest.raises(ValueError):
        Packetizer(1, [0], mtu=MIN_MTU - 1)
    with pytest.raises(ValueError):
        pk.packetize(0, 0, np.zeros((7, 10), np.uint8))


@pytest.mark.parametrize("data", [b"", b"\x80", b"\x00" * 12, b"\x80\x60" + b"\0" * 10,  # short JSCC header
                                  b"\x80\xc9" + b"\0" * 30, b"\x80\x10" + b"\0" * 30])
def test_parse_rejects_garbage(data):
    with pytest.raises(WireError):
        parse_datagram(data)


def test_seq_wrap_arithmetic():
    assert seq_diff(0, 65535) == 1 and seq_diff(65535, 0) == -1 and seq_diff(5, 5) == 0
    assert seq_diff(2, 65000) > 0 and not seq_diff(65000, 2) > 0
    u = SeqUnwrapper()
    assert [u.unwrap(s) for s in (65534, 65535, 0, 65535, 1, 2)] == [65534, 65535, 65536, 65535, 65537, 65538]
    assert u.highest == 65538


def test_dscp_maps():
    assert default_dscp_map(8) == {0: 34, 1: 34, 2: 36, 3: 36, 4: 38, 5: 38, 6: 1, 7: 1}
    assert parse_dscp_map("0-1:AF41,2-3:AF42,4-5:AF43,6-7:LE", 8) == default_dscp_map(8)
    assert parse_dscp_map("0:EF,1-3:10", 4) == {0: 46, 1: 10, 2: 10, 3: 10}
    assert tos_of_dscp(34) == 0x88
    for bad in ("0-1:AF99", "0-1", "x:AF41", "0-1:AF41", "0-7:99"):
        with pytest.raises(DscpMapError):
            parse_dscp_map(bad, 8)


def test_reception_stats_and_report_roundtrip():
    st_ = ReceptionStats(ssrc=99)
    seqs = [65530 + i for i in range(12) if i not in (3, 4)]  # 2 lost across the wrap
    for i, s in enumerate(seqs):
        st_.update(s & 0xFFFF, 3000 * i, 0.0333 * i)
    rep = st_.report()
    assert rep.packets_lost == 2 and rep.fraction_lost == (2 << 8) // 12 and rep.highest_sequence == 65541
    data = build_report(5, [rep], feedback=b"\x08\x63")
    m = parse_rtcp(data)
    rrs, apps = m.rrs, m.apps
    assert rrs[0].ssrc == 5 and rrs[0].reports[0].packets_lost == 2 and apps == [b"\x08\x63"]
    assert st_.report().fraction_lost == 0  # new interval, nothing lost
