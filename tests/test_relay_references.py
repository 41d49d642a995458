"""The video codec behind a relay: receivers of 2, 4 and all importance levels keep as their
reference the picture decoded from the reference levels (the least-subscribed receiver's), so
all hold the sender's reference bit for bit, decode every frame (P-frames included) and show
more detail the more levels they get; the receipts of the 2-level receiver drive the sender."""

from __future__ import annotations

import numpy as np
import pytest

from jscc_stream.metrics import psnr
from jscc_stream.proto.reassembly import Reassembler
from jscc_stream.proto.references import ReferenceState, ReferenceStore
from jscc_stream.sources import SyntheticSource

W, H, BUDGET = 160, 128, 2400


@pytest.fixture(scope="module")
def codec():
    import torch

    from jscc_stream.models.stream_codec import load_stream_codec

    torch.set_num_threads(1)
    return load_stream_codec("video", device="cpu")


def _subscribed(codec, payloads: list[bytes], levels: int) -> list[bytes | None]:
    """What a relay forwards to a receiver of ``levels`` levels (the rest never arrives)."""
    return [p if codec.payload_levels([p])[0] < levels else None for p in payloads]


def test_receivers_of_different_levels_share_the_senders_references(codec):
    src = SyntheticSource(W, H, 30.0, seed=3)
    refs = ReferenceState(codec, W, H, "feedback", silence_s=60)
    subscriptions, reference_levels = (2, 4, len(codec.levels)), 2
    stores = {n: ReferenceStore() for n in subscriptions}
    quality: dict[int, list[float]] = {n: [] for n in subscriptions}
    in_flight = []
    for fid in range(10):
        frame = src.read(fid)
        ref_id, ref = refs.choose(fid)
        payloads = codec.encode(frame, BUDGET, ref, 0 if ref_id is None else fid - ref_id)
        refs.sent(fid, payloads, ref_id, ref)
        for n, store in stores.items():
            shown, receipt, _ = store.decode(codec, fid, _subscribed(codec, payloads, n), W, H, reference_levels)
            assert shown is not None, f"frame {fid} not decoded with {n} levels"
            quality[n].append(psnr(shown, frame))
            if n == reference_levels:
                in_flight.append(receipt)  # the relay forwards the reference receiver's receipts only
        if len(in_flight) > 1:  # one frame's round trip
            refs.on_receipt(in_flight.pop(0))
        kept = [store.get(fid) for store in stores.values()]
        assert all(np.array_equal(kept[0], k) for k in kept[1:]), f"frame {fid}: references differ"
        for k, pic in refs.known().items():
            assert np.array_equal(pic, stores[2].get(k)), f"the sender's picture of frame {k} is not the receivers'"
    assert refs.stats.predicted > 0 and refs.stats.confirmed > 0 and refs.stats.mismatches == 0
    mean = {n: float(np.mean(q)) for n, q in quality.items()}
    assert mean[2] < mean[4] < mean[len(codec.levels)], mean


def test_a_subscription_does_not_hold_frames_back_for_levels_it_never_gets():
    """A receiver of 2 levels: a newer frame's first packet releases the older frame within the
    reorder grace, although its levels 2+ never come (without the subscription: the deadline)."""
    from jscc_stream.proto.description import LatentLayout, make_description
    from jscc_stream.proto.packetizer import Packetizer

    pk = Packetizer(7, list(range(7)), 900)
    body = make_description(ssrc=7, revision=0, codec_name="video", codec_sha256="",
                            layout=LatentLayout(W, H, 7, 1, 8, 10, 8, False), fps=30.0, block_levels=list(range(7)),
                            dscp_map=None, clock_epoch_unix_us=0, mtu=900, max_frame_payloads=64)
    frames = [pk.packetize_payloads(f, f * 3000, [b"x" * 30] * 14, [i // 2 for i in range(14)]) for f in range(2)]
    released = {}
    for levels in (2, 0):
        r = Reassembler(latency=0.2, reorder_grace=0.01, levels=levels)
        r.push(pk.description(0, body).data, 0.0)
        for g in frames[0][:4]:  # levels 0 and 1 of frame 0, all the relay forwards
            r.push(g.data, 0.001)
        r.push(frames[1][0].data, 0.030)
        released[levels] = r.next_deadline()
    assert released[2] == pytest.approx(0.040) and released[0] == pytest.approx(0.201)
