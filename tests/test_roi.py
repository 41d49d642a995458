"""Regions of interest (paper 003): the map's wire form, the region sources, the codec with a
map (better inside at the same bytes, every payload decodable alone, the map's loss), jscc-send."""

from __future__ import annotations

import asyncio
import json
import sys

import cv2
import numpy as np
import pytest

from jscc_stream import metrics
from jscc_stream.errors import UserError
from jscc_stream.models.roi import MAX_RECTS, RoiError, RoiMap, priority
from jscc_stream.regions import FaceRegions, MaskRegions, open_regions

W, H = 320, 240


def _astronaut(width: int = 512, height: int = 512) -> np.ndarray:
    from skimage import data

    return cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), (width, height),
                      interpolation=cv2.INTER_AREA)


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    """PSNR over the pixels ``where`` is True."""
    return metrics.psnr(a[where], b[where])


# --- the map ----------------------------------------------------------------------------------
@pytest.mark.parametrize("inside", [True, False])
def test_map_round_trips_exactly_through_its_wire_form(inside):
    roi = RoiMap(((0, 0, 3, 2), (5, 7, 20, 15), (254, 254, 255, 255)), boost=17)
    wire = roi.pack(inside)
    assert len(wire) == 2 + 4 * 3
    back, flag, used = RoiMap.unpack(wire + b"rest of the body")
    assert (back, flag, used) == (roi, inside, len(wire))


def test_map_from_a_pixel_mask_covers_exactly_the_patches_it_touches(rng):
    mask = np.zeros((H, W), dtype=bool)
    mask[40:100, 50:90] = True  # touches latent columns 3..5, rows 2..6
    cv2.circle(mask.view(np.uint8), (250, 170), 30, 1, -1)
    roi = RoiMap.from_pixels(mask)
    grid = np.zeros((15, 20), dtype=bool)
    ys, xs = np.nonzero(mask)
    grid[ys // 16, xs // 16] = True
    assert np.array_equal(roi.cells(15, 20), grid.ravel())
    assert RoiMap.from_pixels(np.zeros((H, W), dtype=bool)) is None
    # a scattered mask: more rectangles than a map holds -> component boxes or one box, a superset
    noisy = rng.random((H, W)) > 0.995
    big = RoiMap.from_pixels(noisy)
    assert len(big.rects) <= MAX_RECTS and big.cells(15, 20)[np.flatnonzero(noisy.reshape(15, 16, 20, 16).any((1, 3)))].all()


@pytest.mark.parametrize("wire", [b"", b"\x02\x10\x00\x00\x01", b"\x01\x10\x05\x05\x05\x06", b"\x01\x00\x00\x00\x01\x01"])
def test_bad_maps_are_errors(wire):
    with pytest.raises(RoiError):
        RoiMap.unpack(wire)


# --- the sources ------------------------------------------------------------------------------
def test_face_source_finds_the_astronauts_face():
    img = _astronaut()
    regions = FaceRegions()
    mask = regions.region(0, img)
    assert mask is not None and mask.shape == img.shape[:2]
    assert mask[120:140, 200:230].all()  # her face (between the eyes, the nose)
    assert mask.mean() < 0.25  # a face, not the frame
    # a miss keeps the last boxes for `hold` detections, then lets them go
    grey = np.full(img.shape, 128, np.uint8)
    assert all(regions.region(i, grey) is not None for i in range(1, 4 * regions.interval))
    assert regions.region(4 * regions.interval, grey) is None
    assert FaceRegions().region(0, grey) is None  # nothing to find


def test_masks_from_a_folder_and_a_video(tmp_path):
    masks = []
    for i in range(3):
        m = np.zeros((H, W), np.uint8)
        m[20 * i:20 * i + 64, 30:94] = 255
        masks.append(m)
        cv2.imwrite(str(tmp_path / f"m{i:02d}.png"), m)
    frame = np.zeros((H, W, 3), np.uint8)
    folder = open_regions(str(tmp_path), W, H)
    for i in range(4):  # in a loop
        assert np.array_equal(folder.region(i, frame), masks[i % 3] > 127)
    video = tmp_path / "masks.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    for m in masks:
        writer.write(cv2.cvtColor(m, cv2.COLOR_GRAY2BGR))
    writer.release()
    from_video = MaskRegions(video, W, H)
    assert len(from_video.masks) == 3
    for i in range(3):  # lossy video: the same mask but at its edges
        assert (from_video.region(i, frame) != (masks[i] > 127)).mean() < 0.01


@pytest.mark.parametrize("case, msg", [("small", "is 160x120, the stream is 320x240"), ("empty", "no mask images"),
                                       ("missing", "neither 'face' nor a mask folder")])
def test_bad_mask_input_is_a_one_line_error(tmp_path, case, msg):
    if case == "small":
        cv2.imwrite(str(tmp_path / "a.png"), np.zeros((120, 160), np.uint8))
    path = tmp_path / "nope" if case == "missing" else tmp_path
    with pytest.raises(UserError, match=msg) as err:
        open_regions(str(path), W, H)
    assert "\n" not in str(err.value)


# --- the codec --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def face():
    img = _astronaut(W, H)
    mask = np.zeros((H, W), dtype=bool)
    mask[16:112, 112:192] = True  # whole latent patches: the map covers exactly this
    return img, mask, RoiMap.from_pixels(mask)


def test_region_gets_better_at_the_same_bytes_and_every_payload_carries_the_map(tiny_rd_codec, face):
    img, mask, roi = face
    budget = 3000
    plain = tiny_rd_codec.encode(img, budget)
    with_roi = tiny_rd_codec.encode(img, budget, roi=roi)
    assert sum(map(len, with_roi)) <= budget
    out_plain, out_roi = tiny_rd_codec.decode(plain, W, H), tiny_rd_codec.decode(with_roi, W, H)
    assert psnr(img, out_roi, mask) > psnr(img, out_plain, mask) + 1.5
    assert psnr(img, out_roi, ~mask) < psnr(img, out_plain, ~mask)  # the price, paid outside
    insides = []
    for p in with_roi:
        assert p[4] & 0x80  # the header's flag
        got, inside, _ = RoiMap.unpack(p[7:])
        assert got == roi
        insides.append(inside)
    # each level: its inside payloads first, ranked one level up; the list stays in rank order
    ranks = tiny_rd_codec.payload_levels(with_roi)
    assert ranks == sorted(ranks)
    assert [r for r, i, p in zip(ranks, insides, with_roi) if i and p[0] & 15 > 0] == \
           [max(0, (p[0] & 15) - 1) for i, p in zip(insides, with_roi) if i and p[0] & 15 > 0]
    assert priority(plain[-1]) == plain[-1][0] & 15


def test_each_payload_decodes_alone_and_losing_the_region_is_an_erasure(tiny_rd_codec, face, rng):
    img, mask, roi = face
    payloads = tiny_rd_codec.encode(img, 3000, roi=roi)
    whole = tiny_rd_codec.decode(payloads, W, H)
    full = psnr(img, whole, np.ones((H, W), bool))
    inside = [RoiMap.unpack(p[7:])[1] for p in payloads]
    # one of the region's level-0 payloads lost: a lattice quarter of its DCs, interpolated
    first = inside.index(True)
    one = tiny_rd_codec.decode([None if j == first else p for j, p in enumerate(payloads)], W, H)
    assert psnr(img, whole, mask) - 10 < psnr(img, one, mask) < psnr(img, whole, mask)  # (an untrained model)
    # every payload of the region lost: the rest of the frame decodes as before
    no_region = tiny_rd_codec.decode([None if i else p for p, i in zip(payloads, inside)], W, H)
    assert psnr(img, no_region, ~mask) > psnr(img, whole, ~mask) - 1
    # a payload alone (the others lost) decodes: the map travels in it
    for k in (0, len(payloads) - 1):
        alone = tiny_rd_codec.decode([p if j == k else None for j, p in enumerate(payloads)], W, H)
        assert alone.shape == (H, W, 3)
    # random 10 % losses and a corrupted map: erasures, never an error
    bad = bytearray(payloads[1])
    bad[8] ^= 0xFF
    lossy = [None if rng.random() < 0.1 else p for p in payloads]
    out = tiny_rd_codec.decode([lossy[0], bytes(bad), *lossy[2:]], W, H)
    assert np.array_equal(out, tiny_rd_codec.decode([lossy[0], None, *lossy[2:]], W, H))
    assert psnr(img, out, np.ones((H, W), bool)) > min(full - 10, 15)


def test_predicted_frames_carry_the_region_too(tiny_rd_codec, face):
    from jscc_stream.models.packet_codec import PacketCodec
    from jscc_stream.models.video_codec import VideoCodec

    img, mask, roi = face
    codec = VideoCodec(PacketCodec(tiny_rd_codec.model, {}, precision="fp32"),
                       PacketCodec(tiny_rd_codec.model, {}, precision="fp32"))
    ref = codec.decode(codec.encode(img, 3000), W, H)
    moved = np.roll(img, 2, axis=1)
    plain = codec.decode(codec.encode(moved, 1500, ref, 1), W, H, ref)
    payloads = codec.encode(moved, 1500, ref, 1, roi=roi)
    assert codec.frame_info(payloads).predicted and sum(map(len, payloads)) <= 1500
    assert psnr(moved, codec.decode(payloads, W, H, ref), mask) > psnr(moved, plain, mask)
    ranks = codec.payload_levels(payloads)
    assert ranks == sorted(ranks) and any(r < p[0] & 15 for r, p in zip(ranks, payloads))  # promoted ones


# --- jscc-send --------------------------------------------------------------------------------
def test_send_roi_errors_are_one_line(tmp_path, capsys):
    from jscc_stream.sender.cli import main as send_main

    for argv, msg in [(["--codec", "uniform", "--roi", str(tmp_path)], "no mask images"),
                      (["--codec", "uniform", "--roi-boost", "0"], "--roi-boost must be"),
                      (["--codec", "fixed-uniform", "--roi", "face"], "--roi needs an entropy-coded codec")]:
        assert send_main(argv + ["--frames", "1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err


async def test_send_roi_face_streams_end_to_end_through_jscc_recv(tiny_rd_weights, tmp_path):
    from jscc_stream.procs import free_port

    video = tmp_path / "astronaut.avi"  # a still camera: the detector's answer the same each time
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    frame = cv2.resize(_astronaut()[:384], (W, H), interpolation=cv2.INTER_AREA)  # 4:3, her face at the top
    for _ in range(40):
        writer.write(frame)
    writer.release()
    port = free_port()
    frames = tmp_path / "frames.jsonl"
    recv = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jscc_stream.receiver.cli", "--listen", f"127.0.0.1:{port}", "--codec",
        str(tiny_rd_weights), "--frames", "8", "--duration", "60", "--stats-json", str(frames), "--threads", "1",
        stderr=asyncio.subprocess.PIPE)
    send = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jscc_stream.sender.cli", "--dest", f"127.0.0.1:{port}", "--codec",
        str(tiny_rd_weights), "--source", str(video), "--roi", "face", "--kbps", "600", "--fps", "10",
        "--frames", "20", "--stats-json", str(tmp_path / "send.json"), "--priority-dscp",
        stderr=asyncio.subprocess.PIPE)
    try:
        assert await asyncio.wait_for(recv.wait(), 120) == 0, (await recv.stderr.read()).decode()
        assert await asyncio.wait_for(send.wait(), 60) == 0, (await send.stderr.read()).decode()
    finally:
        for proc in (recv, send):
            if proc.returncode is None:
                proc.kill()
    recs = [json.loads(x) for x in frames.read_text().splitlines()]
    assert len(recs) >= 8 and all(r["decoded"] for r in recs)
    sent = json.loads((tmp_path / "send.json").read_text())
    assert sent["roi_frames"] == sent["frames_sent"] >= 8  # the face found in every frame


# --- jscc-bench roi ---------------------------------------------------------------------------
def test_priority_bottleneck_drops_the_least_important_payloads_first():
    from jscc_stream.bench.roi import drop_by_priority

    ranks, sizes = [0, 0, 1, 1, 2, 2], [100, 100, 100, 100, 50, 50]
    assert drop_by_priority(ranks, sizes, 0.1).tolist() == [False] * 5 + [True]
    assert drop_by_priority(ranks, sizes, 0.3).tolist() == [False] * 3 + [True] * 3
    assert not drop_by_priority(ranks, sizes, 0.0).any()


def test_bench_roi_writes_its_json_table_and_plot(tmp_path, capsys):
    from jscc_stream.bench.cli import main as bench_main

    assert bench_main(["roi", "--bpp", "0.5", "--boosts", "24", "--channels", "none,priority:0.1,fec+uniform:0.1",
                       "--seeds", "1", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "roi.json").read_text())
    rows = {(r["image"], r["boost"]): r for r in res["rows"]}
    assert {img for img, _ in rows} == {"astronaut", "grace_hopper"}
    for img in ("astronaut", "grace_hopper"):
        off, on = rows[(img, 0)], rows[(img, 24)]
        assert on["bytes"] <= on["budget"] and off["bytes"] <= off["budget"]
        assert on["channels"]["none"]["psnr_in"] > off["channels"]["none"]["psnr_in"]
        for ch, c in on["channels"].items():  # the same bytes on the wire, parity included
            assert c["wire_bytes"] <= off["channels"][ch]["wire_bytes"]
        assert on["channels"]["fec+uniform:0.1"]["parity_packets"] > 0
    assert (tmp_path / "roi.png").stat().st_size > 1000 and "| astronaut | 0.5 | 24 | none |" in capsys.readouterr().out
    assert bench_main(["roi", "--channels", "priority:2"]) == 2
