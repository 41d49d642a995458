"""Predicted frames: motion, the P-frame payloads, and reference sync between the two ends."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from jscc_stream.metrics import psnr
from jscc_stream.models import motion
from jscc_stream.models.packet_codec import MAX_PAYLOAD, PacketCodec, PayloadError
from jscc_stream.models.stream_codec import load_stream_codec
from jscc_stream.models.zoo import CodecLoadError
from jscc_stream.models.video_codec import MOTION_VERSION, RESIDUAL_VERSION, VideoCodec, frame_info
from jscc_stream.proto.receipts import pack_bitmap, unpack_bitmap
from jscc_stream.proto.references import Receipt, ReferenceState, ReferenceStore
from jscc_stream.sources import SyntheticSource

W, H = 320, 240
BUDGET = 4792  # 1.15 Mbit/s at 30 fps


@pytest.fixture(scope="module")
def codec() -> VideoCodec:
    import torch

    torch.set_num_threads(1)
    try:
        return load_stream_codec("video", device="cpu")
    except CodecLoadError:
        # before a trained inter model ships, the intra model stands in for it
        return VideoCodec(PacketCodec.load("uniform", device="cpu"), PacketCodec.load("uniform", device="cpu"))


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    src = SyntheticSource(W, H, 30.0, seed=1)
    return [src.read(i) for i in range(12)]


def test_affine_model_recovers_a_pan_and_zoom():
    grid = (15, 20)
    params = np.array([10, -6, 300, 0, 0, 300])
    v = motion.affine_vectors(params, grid)
    fit = motion.fit_affine(v)  # from vectors rounded to quarter pixels: close, not exact
    assert np.abs(fit - params).max() <= 8
    assert np.abs(motion.affine_vectors(fit, grid) - v).max() <= 1


def test_concealed_vectors_come_from_known_neighbours():
    v = np.stack([np.full((4, 5), 7), np.full((4, 5), -3)]).astype(np.int32)
    known = np.ones((4, 5), bool)
    known[1, 2] = known[3, 4] = False
    damaged = v.copy()
    damaged[:, ~known] = 999
    out = motion.conceal_vectors(damaged, known, np.zeros_like(v))
    assert np.array_equal(out, v)


def test_prediction_follows_camera_motion(frames):
    _, vectors, pred = motion.choose_vectors(frames[5], frames[4], (15, 20))
    assert np.array_equal(pred, motion.predict(frames[4], vectors))
    pred = np.clip(np.rint(pred), 0, 255).astype(np.uint8)
    assert psnr(pred, frames[5]) > psnr(frames[4], frames[5]) + 5


def test_predicted_frames_beat_intra_at_the_same_bytes(codec, frames):
    ref = codec.decode(codec.encode(frames[0], BUDGET), W, H)
    intra_db, p_db = [], []
    for n in range(1, 6):
        intra = codec.decode(codec.encode(frames[n], BUDGET), W, H)
        pl = codec.encode(frames[n], BUDGET, ref, 1)
        assert sum(map(len, pl)) <= BUDGET and all(len(p) <= MAX_PAYLOAD for p in pl)
        assert {p[0] >> 4 for p in pl} == {MOTION_VERSION, RESIDUAL_VERSION}
        assert all(frame_info(p).ref_back == 1 and frame_info(p).predicted for p in pl)
        ref = codec.decode(pl, W, H, ref)
        intra_db.append(psnr(intra, frames[n]))
        p_db.append(psnr(ref, frames[n]))
    assert np.mean(p_db) > np.mean(intra_db) + 1.5, (p_db, intra_db)


def test_a_scene_cut_is_coded_intra(codec, frames):
    other = SyntheticSource(W, H, 30.0, seed=2).read(0)
    ref = codec.decode(codec.encode(other, BUDGET), W, H)
    pl = codec.encode(frames[0], BUDGET, ref, 1)
    assert not codec.frame_info(pl).predicted
    assert psnr(codec.decode(pl, W, H, ref), frames[0]) > 25


def test_each_payload_decodes_alone_and_losses_degrade_gracefully(codec, frames):
    ref = codec.decode(codec.encode(frames[2], BUDGET), W, H)
    pl = codec.encode(frames[3], BUDGET, ref, 1)
    full = psnr(codec.decode(pl, W, H, ref), frames[3])
    rng = np.random.default_rng(0)
    lossy = [p if rng.random() > 0.3 else None for p in pl]
    part = psnr(codec.decode(lossy, W, H, ref), frames[3])
    nothing = psnr(codec.decode([None] * len(pl), W, H, ref), frames[3])
    assert full > part > nothing - 0.5
    for p in pl:  # any single payload decodes alone
        out = codec.decode([p], W, H, ref)
        assert out.shape == (H, W, 3)
    with pytest.raises(PayloadError):
        codec.decode(pl, W, H, None)


def test_damaged_payloads_are_not_ok(codec, frames):
    ref = codec.decode(codec.encode(frames[0], BUDGET), W, H)
    pl = codec.encode(frames[1], BUDGET, ref, 1)
    assert all(codec.payload_ok(p) for p in pl)
    bad = bytearray(pl[-1])
    bad[-1] ^= 0x55
    assert not codec.payload_ok(bytes(bad)) and not codec.payload_ok(b"") and not codec.payload_ok(b"\x30")


def test_bitmaps_round_trip_and_reject_bad_lengths():
    used = [True, False, True] * 5
    assert unpack_bitmap(pack_bitmap(used), len(used)) == tuple(used)
    with pytest.raises(ValueError):
        unpack_bitmap(b"\x01\x02\x03", 4)
    with pytest.raises(ValueError):
        unpack_bitmap(b"", 10**6)


class _Receiver:
    """The receiver's decode step (receiver/receiver.py's) over a lossy channel, in-process."""

    def __init__(self, codec: VideoCodec) -> None:
        self.codec, self.store = codec, ReferenceStore()

    def decode(self, fid: int, payloads: list[bytes | None]) -> Receipt:
        return self.store.decode(self.codec, fid, payloads, W, H)[1]


@pytest.mark.parametrize("seed, optimism", [(0, 0.0), (1, 0.0), (2, 1.0), (3, 1.0)])
def test_sender_holds_the_receivers_reference_bit_for_bit_under_any_loss(codec, frames, seed, optimism):
    """Random losses, receipts two frames late (some lost, some twice): every picture the sender holds as the
    receiver's is the receiver's, bit for bit; without optimism every reference is one of them;
    with it, a frame after a reported loss is predicted from one of them again (drift lasts
    until the loss's receipt, no longer)."""
    rng = np.random.default_rng(seed)
    refs = ReferenceState(codec, W, H, "feedback", silence_s=60, optimism_loss=optimism)
    rx = _Receiver(codec)
    in_flight: list[Receipt] = []
    kinds = []
    for fid, frame in enumerate(frames):
        ref_id, ref = refs.choose(fid)
        if ref_id is not None:
            exact = np.array_equal(ref, rx.store.get(ref_id))
            kinds.append("exact" if exact else "drifted")
            assert exact or optimism > 0, "a confirmed reference differs from the receiver's picture"
        pl = codec.encode(frame, BUDGET, ref, 0 if ref_id is None else fid - ref_id)
        refs.sent(fid, pl, ref_id, ref)
        loss = rng.uniform(0, 0.5) if fid % 3 == 1 else 0.0
        in_flight.append(rx.decode(fid, [p if rng.random() > loss else None for p in pl]))
        if len(in_flight) > 2:  # a round trip of two frames; a receipt lost, or duplicated, now and then
            receipt = in_flight.pop(0)
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):
                refs.on_receipt(receipt)
        for k, pic in refs.known().items():
            assert np.array_equal(pic, rx.store.get(k))
    assert "exact" in kinds
    assert refs.stats.mismatches == 0 and refs.stats.confirmed > 0
    assert refs.stats.redecoded > 0  # losses happened and were reproduced
    if optimism:
        assert refs.stats.optimistic > 0 and refs.stats.resyncs > 0


def test_without_loss_every_frame_predicts_from_the_previous_one(codec, frames):
    refs = ReferenceState(codec, W, H, "feedback", silence_s=60)
    rx = _Receiver(codec)
    backs = []
    for fid, frame in enumerate(frames[:6]):
        ref_id, ref = refs.choose(fid)
        backs.append(None if ref_id is None else fid - ref_id)
        pl = codec.encode(frame, BUDGET, ref, 0 if ref_id is None else fid - ref_id)
        refs.sent(fid, pl, ref_id, ref)
        receipt = rx.decode(fid, list(pl))
        if ref_id is not None:
            assert np.array_equal(ref, rx.store.get(ref_id))  # nothing lost: no drift
        refs.on_receipt(receipt)
    assert backs == [None, 1, 1, 1, 1, 1]


def test_forged_stale_and_duplicated_receipts_do_not_corrupt_the_state(codec, frames):
    refs = ReferenceState(codec, W, H, "feedback", silence_s=60)
    rx = _Receiver(codec)
    pl = codec.encode(frames[0], BUDGET)
    refs.sent(0, pl, None, None)
    good = rx.decode(0, list(pl))
    refs.on_receipt(Receipt(7, good.received, True, good.crc32))  # a frame never sent
    refs.on_receipt(Receipt(0, good.received[:-1], True, good.crc32))  # wrong payload count
    assert refs.stats.rejected == 2
    refs.on_receipt(Receipt(0, good.received, True, good.crc32 ^ 1))  # a picture nobody decoded
    assert refs.choose(1) == (None, None) and refs.stats.mismatches == 1
    refs.on_receipt(good)
    refs.on_receipt(good)  # duplicated
    ref_id, ref = refs.choose(1)
    assert ref_id == 0 and np.array_equal(ref, rx.store.get(0))


def test_a_receiver_without_the_reference_gets_an_intra_frame(codec, frames):
    refs = ReferenceState(codec, W, H, "feedback", silence_s=60)
    first = _Receiver(codec)
    pl = codec.encode(frames[0], BUDGET)
    refs.sent(0, pl, None, None)
    refs.on_receipt(first.decode(0, list(pl)))
    ref_id, ref = refs.choose(1)
    assert ref_id == 0
    pl = codec.encode(frames[1], BUDGET, ref, 1)
    refs.sent(1, pl, ref_id, ref)
    restarted = _Receiver(codec)  # lost its references (restart, late join)
    receipt = restarted.decode(1, list(pl))
    assert not receipt.decoded
    refs.on_receipt(receipt)
    assert refs.choose(2) == (None, None)


@pytest.mark.parametrize("mode", ["feedback", "oneway"])
def test_a_new_receiver_gets_an_intra_frame_next(codec, frames, mode):
    """The sender hears a receiver SSRC new at an address (it restarted): whatever was
    confirmed, or predicted from in oneway mode, the new receiver lacks."""
    refs = ReferenceState(codec, W, H, mode, intra_period=30, silence_s=60)
    receiver = _Receiver(codec)
    pl = codec.encode(frames[0], BUDGET)
    refs.sent(0, pl, None, None)
    refs.on_receipt(receiver.decode(0, list(pl)))
    assert refs.choose(1)[0] == 0
    refs.forget()
    assert refs.choose(1) == (None, None)


def _send_frames(refs: ReferenceState, codec: VideoCodec, frames: list[np.ndarray], n: int,
                 after_frame=lambda fid: None) -> str:
    """Frames 0..n-1 through the sender's reference state with no receipts: their kinds, I or P."""
    kinds = ""
    for fid in range(n):
        ref_id, ref = refs.choose(fid)
        kinds += "I" if ref_id is None else "P"
        refs.sent(fid, codec.encode(frames[fid], BUDGET, ref, 0 if ref_id is None else fid - ref_id), ref_id, ref)
        after_frame(fid)
    return kinds


def test_oneway_references_refresh_with_intra_frames(codec, frames):
    refs = ReferenceState(codec, W, H, "oneway", intra_period=4)
    assert _send_frames(refs, codec, frames, 9) == "IPPPIPPPI"
    with pytest.raises(ValueError):
        ReferenceState(codec, W, H, "sometimes")


@pytest.fixture(scope="module")
def tiny_video_codec(tiny_rd_codec) -> VideoCodec:
    """The tiny untrained entropy-coded model as both intra and residual coder: fast, and
    enough to check the stream's reference sync (quality is another test's business)."""
    inter = PacketCodec(tiny_rd_codec.model, {"name": "tiny-video"}, precision="fp32")
    intra = PacketCodec(tiny_rd_codec.model, {"name": "tiny-rd"}, precision="fp32")
    return VideoCodec(intra, inter)


@pytest.mark.parametrize("path", ["direct", "shim"])
async def test_predicted_stream_keeps_references_in_sync_end_to_end(tiny_video_codec, path):
    """Sender -> (shim with GE ~10 % loss) -> receiver: frames are predicted from references
    the receiver confirmed, every receipt's CRC matches the sender's own decode of the same
    payloads, and no frame lacks its reference."""
    import torch

    from test_stream_e2e import stream

    torch.set_num_threads(1)
    frames = 45
    sstats, receiver, got = await stream(tiny_video_codec, path, frames, {"kbps": 1152.0, "adapt": False})
    refs = sstats.references
    assert sstats.frames_sent == frames
    assert refs.predicted > frames // 2 and refs.confirmed > 0 and refs.mismatches == 0 and refs.rejected == 0
    assert receiver.stats.frames_predicted == refs.predicted - (frames - len(got))
    assert receiver.stats.frames_no_reference == 0
    assert all(r.decoded for r, _ in got)
    kinds = [r.extra["frame_type"] for r, _ in got]
    assert kinds[0] == "I" and kinds.count("P") == receiver.stats.frames_predicted
    if path == "shim":
        assert refs.redecoded > 0  # frames with losses were confirmed from exactly what arrived


async def _run_receiver(port: int, seconds: float) -> tuple[object, list]:
    from jscc_stream.receiver.outputs import Outputs
    from jscc_stream.receiver.receiver import Receiver, ReceiverConfig, open_listen_socket

    got: list = []
    sock = open_listen_socket(f"127.0.0.1:{port}")
    receiver = Receiver(sock, lambda info: _run_receiver.codec, Outputs(),
                        ReceiverConfig(latency=0.1, duration=seconds, max_decode_queue=8),
                        on_frame=lambda r, f: got.append(r))
    try:
        await receiver.run()
    finally:
        sock.close()
    return receiver, got


async def test_a_late_receiver_and_a_restarted_one_recover_with_an_intra_frame(tiny_video_codec):
    """The sender streams before anyone listens (predicting from frames nobody decoded, once its
    return path fell silent); a receiver that joins, and later a fresh one on the same port, get
    a picture within a round trip and a few frames: the first frames they cannot decode say so,
    and the sender answers with an intra frame."""
    import torch

    from test_stream_e2e import _free_port

    from jscc_stream.sender.sender import Sender, SenderConfig

    torch.set_num_threads(1)
    _run_receiver.codec = tiny_video_codec
    port = _free_port()
    sender = Sender(tiny_video_codec, SyntheticSource(W, H, 30.0, seed=1),
                    SenderConfig(width=W, height=H, fps=30.0, dests=[f"127.0.0.1:{port}"], duration=4.5,
                                 kbps=1152.0, adapt=False))
    send = asyncio.create_task(sender.run())
    await asyncio.sleep(1.2)  # past the sender's 1 s of silence: it predicts oneway now
    for _ in range(2):
        receiver, got = await _run_receiver(port, 1.4)
        decoded = [r for r in got if r.decoded]
        assert decoded, "nothing decoded"
        # until the intra frame its receipts asked for, frames lacking their reference are not
        # shown; then every frame is
        first = got.index(decoded[0])
        assert first <= 12 and all(r.decoded for r in got[first + 1:])
        assert got[first].extra["frame_type"] == "I"
    await send
    assert sender.refs.stats.mismatches == 0


def test_a_silent_return_path_falls_back_on_intra_refresh(codec, frames):
    import time

    refs = ReferenceState(codec, W, H, "feedback", intra_period=4, silence_s=0.05)
    # no receipt ever comes back: after frame 1 the return path has been silent too long
    kinds = _send_frames(refs, codec, frames, 10, lambda fid: time.sleep(0.06) if fid == 1 else None)
    assert refs.effective_mode() == "oneway"
    # every frame is decodable from the one before it, and intra frames bound the drift
    assert kinds[0] == "I" and "I" in kinds[2:6] and "I" in kinds[6:10]


def test_a_stream_starts_with_one_intra_frame(codec, frames):
    refs = ReferenceState(codec, W, H, "feedback", silence_s=60)
    assert _send_frames(refs, codec, frames, 3) == "IPP"
