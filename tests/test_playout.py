"""The one playout rule: ``jscc-recv``'s reassembler and the comparison's baseline receiver
release the same frames at the same moments when fed the same arrivals."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from jscc_stream.bench.compare.stream import CLOCK, JPEG_PT, ArmConfig, ArmRun, _Receiver
from jscc_stream.proto.description import LatentLayout, make_description
from jscc_stream.proto.packetizer import Packetizer
from jscc_stream.proto.reassembly import Reassembler, playout_count

LATENCY = 0.05
N_FRAMES = 8


def test_playout_count_releases_through_the_newest_ready_frame():
    assert playout_count([]) == 0
    assert playout_count([False, False]) == 0
    assert playout_count([True, False, False]) == 1
    assert playout_count([False, False, True, False]) == 3  # older frames go out with a ready one
    # waiting for repairs: a frame with packets holds the line; one with nothing is passed over
    assert playout_count([False, False, True], arrived=[False, True, True]) == 1
    assert playout_count([False, True, False, True], arrived=[False, True, False, True]) == 4
    assert playout_count([False, False], arrived=[False, False]) == 0


def _jscc_frames() -> tuple[bytes, list[list[bytes]]]:
    lay = LatentLayout(64, 48, 2, 2, 3, 20, 8, True)
    pk = Packetizer(7, [0, 1], mtu=80)
    body = make_description(ssrc=7, revision=0, codec_name="t", codec_sha256="", layout=lay, fps=30,
                            block_levels=[0, 1], dscp_map=None, clock_epoch_unix_us=0, mtu=80)
    desc = pk.description(0, body).data
    wire = np.zeros((lay.blocks, lay.block_bytes), np.uint8)
    return desc, [[g.data for g in pk.packetize(f, f * 3000, wire)] for f in range(N_FRAMES)]


def _jpeg_frames(packets: int = 3) -> list[list[bytes]]:
    from aiortc.rtp import RtpPacket

    return [[RtpPacket(payload_type=JPEG_PT, marker=int(p == packets - 1), sequence_number=f * packets + p,
                       timestamp=f * CLOCK // 30, ssrc=1, payload=bytes([p, packets, 0, 0, 0, 0]) + b"x").serialize()
             for p in range(packets)] for f in range(N_FRAMES)]


def _arrivals(fates: list[tuple[str, int, int]], frames: list[list[bytes]]) -> dict[int, list[bytes]]:
    """Per millisecond, the datagrams that arrive: a complete frame's last packet ``wait`` ms
    after the rest, a partial frame without its first packet, a lost frame nothing."""
    at: dict[int, list[bytes]] = {}
    for (fate, t0, wait), grams in zip(fates, frames):
        if fate == "complete":
            at.setdefault(t0, []).extend(grams[:-1])
            at.setdefault(t0 + wait, []).append(grams[-1])
        elif fate == "partial":
            at.setdefault(t0, []).extend(grams[1:])
    return at


def _released_by_reassembler(fates, end_ms: int) -> dict[int, int]:
    desc, frames = _jscc_frames()
    # a grace as long as the latency: no deadline shortening, which the baselines do not model
    r = Reassembler(latency=LATENCY, reorder_grace=LATENCY)
    r.push(desc, 0.0)
    out: dict[int, int] = {}
    arrivals = _arrivals(fates, frames)
    for ms in range(end_ms):
        now = ms / 1000
        released = [s for d in arrivals.get(ms, []) for s in r.push(d, now)] + r.pop_due(now)
        out.update({s.frame_id: ms for s in released})
    return out


def _released_by_baseline(fates, end_ms: int) -> dict[int, int]:
    run = ArmRun("jpeg", [None] * N_FRAMES, [False] * N_FRAMES, [None] * N_FRAMES)
    cfg = ArmConfig("jpeg", 64, 48, latency_ms=LATENCY * 1000)
    rx = _Receiver(cfg, run, N_FRAMES, {})
    out: dict[int, int] = {}
    clock = {"ms": 0}

    def show(f: int, slot, now: float) -> None:  # frames with nothing are the reassembler's gaps
        if slot is not None:
            out[f] = clock["ms"]

    rx._show = show
    arrivals = _arrivals(fates, _jpeg_frames())
    for ms in range(end_ms):
        clock["ms"] = ms
        for d in arrivals.get(ms, []):
            rx.receive(d, ms / 1000)
        rx._release(ms / 1000)
    return out


@settings(max_examples=60, deadline=None)
@given(fates=st.lists(st.tuples(st.sampled_from(["complete", "partial", "lost"]), st.integers(0, 300),
                                st.integers(0, 80)), min_size=N_FRAMES, max_size=N_FRAMES))
def test_jscc_recv_and_the_baselines_play_out_alike(fates):
    """Arrival times are drawn in any order (jitter larger than a frame interval included)."""
    fates = [(fate, 30 * f + t0 // 3 if t0 < 200 else t0, wait) for f, (fate, t0, wait) in enumerate(fates)]
    end = max(t0 + wait for _, t0, wait in fates) + 2 * int(LATENCY * 1000) + 2
    assert _released_by_reassembler(fates, end) == _released_by_baseline(fates, end)
