"""Reassembly with an injected clock: subsets, reordering, duplicates, wrap, restarts, garbage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jscc_stream.proto.description import LatentLayout
from jscc_stream.proto.description import make_description, parse_description
from jscc_stream.proto.packet import WireError
from jscc_stream.proto.packetizer import Packetizer
from jscc_stream.proto.reassembly import Reassembler


def _setup(ssrc=11, k=4, alpha=2, h=3, w=50, mtu=120, first_seq=0, revision=0, epoch=0, size=(64, 48)):
    lay = LatentLayout(*size, k, alpha, h, w, 8, True)
    pk = Packetizer(ssrc, list(range(k)), mtu=mtu, first_seq=first_seq)
    body = make_description(ssrc=ssrc, revision=revision, codec_name="t", codec_sha256="", layout=lay, fps=30,
                            block_levels=list(range(k)), dscp_map=None, clock_epoch_unix_us=epoch, mtu=mtu)
    return lay, pk, Packetizer(ssrc, list(range(k))).description(0, body).data  # any MTU for control


def _frame(pk, lay, fid, seed=0):
    wire = np.random.default_rng(seed + fid).integers(0, 256, (lay.blocks, lay.block_bytes), dtype=np.uint8)
    return wire, pk.packetize(fid, fid * 3000, wire)


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_any_subset_gives_exactly_those_bytes(data):
    lay, pk, desc = _setup(mtu=data.draw(st.integers(40, 400)), first_seq=data.draw(st.integers(0, 65535)))
    wire, grams = _frame(pk, lay, 5)
    keep = data.draw(st.lists(st.booleans(), min_size=len(grams), max_size=len(grams)))
    order = data.draw(st.permutations(range(len(grams))))
    r = Reassembler(latency=0.05)
    r.push(desc, 0.0)
    out = []
    for i in order:
        if keep[i]:
            out += r.push(grams[i].data, 0.001)
    out += r.pop_due(1.0)
    if not any(keep):
        assert out == []
        return
    (slot,) = out
    expect = np.zeros(wire.shape, bool)
    from jscc_stream.proto.packet import parse_datagram
    for g, k in zip(grams, keep):
        if k:
            p = parse_datagram(g.data)
            expect[p.header.block, p.header.offset:p.header.offset + len(p.data)] = True
    assert (slot.received == expect).all()
    assert (slot.wire[expect] == wire[expect]).all() and (slot.wire[~expect] == 0).all()
    assert slot.complete == all(keep)
    assert slot.bytes_received == int(expect.sum())
    for b, off, n in slot.missing_ranges():
        assert not expect[b, off:off + n].any()
    assert sum(n for _, _, n in slot.missing_ranges()) == int((~expect).sum())


def test_complete_frame_released_at_once_and_duplicates_late_counted():
    lay, pk, desc = _setup()
    r = Reassembler(latency=0.05)
    r.push(desc, 0.0)
    _, grams = _frame(pk, lay, 0)
    out = []
    for g in grams[:-1]:
        out += r.push(g.data, 0.01)
    assert out == [] and r.next_deadline() == pytest.approx(0.06)
    assert r.push(grams[0].data, 0.01) == [] and r.counters.duplicates == 1
    (slot,) = r.push(grams[-1].data, 0.02)
    assert slot.reason == "complete" and slot.complete
    r.push(grams[0].data, 0.03)
    assert r.counters.late == 1 and r.next_deadline() is None


def test_deadline_and_marker_grace_and_superseding():
    lay, pk, desc = _setup()
    r = Reassembler(latency=0.05, reorder_grace=0.005)
    r.push(desc, 0.0)
    _, g0 = _frame(pk, lay, 0)
    _, g1 = _frame(pk, lay, 1)
    _, g2 = _frame(pk, lay, 2)
    r.push(g0[0].data, 0.0)  # frame 0: only the first packet
    assert r.pop_due(0.049) == []
    (s0,) = r.pop_due(0.05)
    assert s0.reason == "deadline" and not s0.complete
    r.push(g1[0].data, 0.1)
    r.push(g1[-1].data, 0.101)  # marker seen: deadline shortened to the grace
    assert r.next_deadline() == pytest.approx(0.106)
    r.push(g2[0].data, 0.102)
    assert r.next_deadline() == pytest.approx(0.106)
    out = []
    for g in g2[1:]:
        out += r.push(g.data, 0.103)  # frame 2 completes and pushes incomplete frame 1 out first
    assert [s.frame_id for s in out] == [1, 2] and [s.reason for s in out] == ["superseded", "complete"]
    r.push(g1[1].data, 0.2)
    assert r.counters.late == 1
    _, g3 = _frame(pk, lay, 3)
    _, g4 = _frame(pk, lay, 4)
    r.push(g3[0].data, 1.0)  # frame 3 loses everything after its first packet
    assert r.next_deadline() == pytest.approx(1.05)
    r.push(g4[0].data, 1.01)  # a priority queue may still hold frame 3's less important blocks
    assert r.next_deadline() == pytest.approx(1.05)
    r.push(g4[-1].data, 1.02)  # frame 4's least important packet: nothing of frame 3 can follow
    assert r.next_deadline() == pytest.approx(1.025)


def test_priority_reordering_across_frames_is_not_late():
    """Under strict priority, frame n+1's important blocks overtake frame n's unimportant ones:
    those must still count for frame n, not be dropped as late."""
    lay, pk, desc = _setup()
    r = Reassembler(latency=0.05, reorder_grace=0.005)
    r.push(desc, 0.0)
    _, g0 = _frame(pk, lay, 0)
    _, g1 = _frame(pk, lay, 1)
    half0, half1 = len(g0) // 2, len(g1) // 2
    for g in g0[:half0]:
        r.push(g.data, 0.001)
    for g in g1[:half1]:  # frame 1's most important half jumps the queue
        r.push(g.data, 0.002)
    out = []
    for g in g0[half0:]:
        out += r.push(g.data, 0.003)
    assert r.counters.late == 0
    assert [s.frame_id for s in out] == [0] and out[0].complete


def test_sequence_wrap_and_reordering_across_frames():
    lay, pk, desc = _setup(first_seq=65530)
    r = Reassembler(latency=0.05)
    r.push(desc, 0.0)
    frames = [_frame(pk, lay, f) for f in range(3)]
    grams = [g for _, gs in frames for g in gs]
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(grams[: len(frames[0][1])]))  # shuffle inside frame 0
    out = []
    for i in perm:
        out += r.push(grams[i].data, 0.01)
    for g in grams[len(frames[0][1]):]:
        out += r.push(g.data, 0.02)
    assert [s.frame_id for s in out] == [0, 1, 2] and all(s.complete for s in out)
    for (wire, _), s in zip(frames, out):
        assert (s.wire == wire).all()


def test_media_before_description_is_undecodable_then_decodes():
    lay, pk, desc = _setup()
    r = Reassembler(latency=0.05)
    _, g0 = _frame(pk, lay, 0)
    for g in g0:
        assert r.push(g.data, 0.0) == []
    assert r.counters.undecodable_frames == 1 and r.counters.no_description == len(g0)
    r.push(desc, 0.01)
    _, g1 = _frame(pk, lay, 1)
    out = []
    for g in g1:
        out += r.push(g.data, 0.02)
    assert [s.frame_id for s in out] == [1]


def test_restarted_sender_new_ssrc_and_frame_ids():
    lay, pk, desc = _setup(ssrc=1)
    r = Reassembler(latency=0.05)
    r.push(desc, 0.0)
    for f in (100, 101):
        _, gs = _frame(pk, lay, f)
        for g in gs:
            r.push(g.data, 0.0)
    lay2, pk2, desc2 = _setup(ssrc=2, k=2, w=20)  # restarted with another layout, ids from 0
    r.push(desc2, 1.0)
    _, gs = _frame(pk2, lay2, 0)
    out = []
    for g in gs:
        out += r.push(g.data, 1.0)
    assert [(s.ssrc, s.frame_id, s.wire.shape) for s in out] == [(2, 0, (2, lay2.block_bytes))]
    assert r.counters.ssrc_changes == 1 and r.counters.late == 0


def test_revision_mismatch_waits_for_new_description():
    lay, pk, desc = _setup(revision=1)
    r = Reassembler()
    r.push(desc, 0.0)
    wire = np.zeros((lay.blocks, lay.block_bytes), np.uint8)
    for g in pk.packetize(0, 0, wire, revision=2):
        r.push(g.data, 0.0)
    assert r.counters.no_description > 0 and not r.slots


def test_garbage_never_raises_and_memory_is_bounded():
    lay, pk, desc = _setup()
    r = Reassembler(latency=10.0, max_frames=8)
    r.push(desc, 0.0)
    rng = np.random.default_rng(3)
    for i in range(2000):
        n = int(rng.integers(0, 200))
        junk = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        if n >= 2 and i % 2:
            junk[0] = 0x80  # looks like RTP v2
            junk[1] = 96 if i % 4 == 1 else 97
        r.push(bytes(junk), 0.0)
    assert r.counters.invalid + r.counters.no_description + r.counters.foreign > 1900
    for f in range(100):  # many partial frames: never more than max_frames pending
        _, gs = _frame(pk, lay, f)
        r.push(gs[0].data, 0.0)
        assert len(r.slots) <= 8
    # a media packet that claims bytes beyond its block is rejected
    from jscc_stream.proto.packet import FragmentHeader, build_media
    bad = build_media(11, 1, 0, False, FragmentHeader(500, 0, 0, 0, 1, 0, lay.block_bytes - 1), b"ab")
    before = r.counters.invalid
    r.push(bad, 0.0)
    assert r.counters.invalid == before + 1


def test_bad_descriptions_rejected():
    with pytest.raises(WireError):
        parse_description(b"\xff\xff")
    lay = LatentLayout(64, 48, 4, 2, 3, 50, 8, True)
    body = make_description(ssrc=1, revision=0, codec_name="t", codec_sha256="", layout=lay, fps=30,
                            block_levels=[0, 1], dscp_map=None, clock_epoch_unix_us=0, mtu=900)
    with pytest.raises(WireError):
        parse_description(body)


def _send(r, pk, lay, fid, now, upto=None):
    """Push frame ``fid``'s packets (the first ``upto`` of them) at ``now``; what was released."""
    out = []
    for g in _frame(pk, lay, fid)[1][:upto]:
        out += r.push(g.data, now)
    return out


def test_injected_ssrcs_never_evict_the_locked_stream():
    """Issue 16: four streams injected by anyone who can send UDP evicted the real one.  The
    reassembler locks onto the first described stream; other SSRCs are counted and dropped."""
    lay, pk, desc = _setup(ssrc=1)
    r = Reassembler(latency=0.05)
    r.push(desc, 0.0)
    assert [s.frame_id for s in _send(r, pk, lay, 0, 0.0)] == [0]
    for ssrc in (2, 3, 4, 5, 6):
        lay2, pk2, desc2 = _setup(ssrc=ssrc)
        r.push(desc2, 0.01)
        _send(r, pk2, lay2, 1, 0.01)
    assert [s.frame_id for s in _send(r, pk, lay, 1, 0.02)] == [1]
    assert list(r.streams) == [1] and all(k[0] == 1 for k in r.slots)
    assert r.counters.foreign == 5 * (1 + len(_frame(pk, lay, 1)[1])) and r.counters.ssrc_changes == 0


def test_another_ssrc_takes_over_only_after_the_locked_one_is_silent():
    lay, pk, desc = _setup(ssrc=1)
    lay2, pk2, desc2 = _setup(ssrc=2, k=2, w=20)
    r = Reassembler(latency=0.05, handover=0.3)
    r.push(desc, 0.0)
    _send(r, pk, lay, 0, 0.1)
    r.push(desc2, 0.35)  # 0.25 s after the last packet: too soon
    assert r.locked == 1 and r.counters.foreign == 1 and r.session == 1
    r.push(desc2, 0.41)
    assert r.locked == 2 and r.counters.ssrc_changes == 1 and r.session == 2
    out = _send(r, pk2, lay2, 0, 0.42)
    assert [(s.ssrc, s.frame_id, s.session) for s in out] == [(2, 0, 2)]
    r.push(desc, 0.5)  # the old stream is now the foreign one while 2 is heard
    assert r.locked == 2 and r.counters.foreign == 2


def test_a_fixed_ssrc_never_hands_over():
    lay, pk, desc = _setup(ssrc=7)
    r = Reassembler(latency=0.05, ssrc=9)
    r.push(desc, 0.0)
    assert _send(r, pk, lay, 0, 10.0) == [] and r.locked == 9 and not r.streams
    assert r.counters.foreign == 1 + len(_frame(pk, lay, 0)[1]) and r.counters.no_description == 0


@pytest.mark.parametrize("epoch", [2000, 1000, None])
def test_a_sender_restarted_with_the_same_ssrc_plays_again(epoch):
    """Frame ids start from 0 again: without a new session they were all 'late' until they
    passed the old ones.  A description with another clock epoch, or frame ids that jump back
    after a silence (same epoch, or the new description lost), start a new session."""
    lay, pk, desc = _setup(ssrc=1, epoch=1000)
    r = Reassembler(latency=0.05, handover=0.3)
    r.push(desc, 0.0)
    for f in range(100, 105):
        _send(r, pk, lay, f, 0.01 * f)
    assert _send(r, pk, lay, 3, 1.06) == [] and r.counters.late > 0  # a stale packet soon after: late
    late = r.counters.late
    lay, pk2, desc2 = _setup(ssrc=1, epoch=epoch or 1000, first_seq=500)
    if epoch is not None:
        r.push(desc2, 1.5)
    out = _send(r, pk2, lay, 0, 1.5) + _send(r, pk2, lay, 1, 1.52)
    assert [(s.frame_id, s.session) for s in out] == [(0, 2), (1, 2)]
    assert r.counters.restarts == 1 and r.counters.late == late and r.session == 2
    r.push(_setup(ssrc=1, epoch=2000)[2], 1.6)  # its (new-epoch) description: still this session
    assert r.session == 2 and r.counters.foreign == 0


def _footprint(r) -> int:
    """Memory the pending frames hold, counted independently of the reassembler's own sum."""
    return sum(s.wire.nbytes + s.received.nbytes + sum(map(len, (s.payloads or {}).values()))
               + sum(map(len, s.parity.values())) for s in r.slots.values())


def test_pending_memory_is_bounded_oldest_frames_go_first():
    """Issue 16: a described stream whose frames never complete held up to 32 frames of
    whatever layout it announced (~1 GiB).  With ``max_bytes`` the frames with the earliest
    deadline are played out early (counted) and a frame bigger than the bound is refused."""
    lay, pk, desc = _setup(k=8, alpha=16, h=64, w=64, mtu=900, size=(1920, 1080))  # 512 KiB a frame
    frame = lay.blocks * lay.block_bytes * 2  # wire and mask
    r = Reassembler(latency=10.0, max_bytes=5 * frame)
    r.push(desc, 0.0)
    out = []
    for f in range(40):
        out += _send(r, pk, lay, f, 0.001 * f, upto=3)
        assert _footprint(r) == r.pending_bytes <= 5 * frame
    assert len(r.slots) == 5 and sorted(k[1] for k in r.slots) == list(range(35, 40))
    assert [s.frame_id for s in out] == list(range(35)) and all(s.reason == "evicted" for s in out)
    assert r.counters.frames_evicted == 35
    tiny = Reassembler(latency=10.0, max_bytes=frame - 1)
    tiny.push(desc, 0.0)
    assert _send(tiny, pk, lay, 0, 0.0, upto=2) == [] and not tiny.slots and tiny.counters.memory_drops == 2
