"""JPEG / JPEG 2000 baselines: byte budgets, packet limits, loss-free and damaged decoding, bad input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from jscc_stream.baselines.image import (
    CodedImage,
    decode_with_loss,
    encode_jpeg,
    encode_jpeg2000,
    grey_frame,
)

BUDGET_320 = 4800  # bytes the JSCC codec sends per 320x240 frame


def _image(name: str, width: int = 320, height: int = 240) -> np.ndarray:
    from skimage import data

    return cv2.resize(getattr(data, name)(), (width, height), interpolation=cv2.INTER_AREA)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(cv2.PSNR(np.ascontiguousarray(a), np.ascontiguousarray(b)))


def _full_decode(coded: CodedImage) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(coded.data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return _image("astronaut")


@pytest.fixture(scope="module")
def coded(astronaut) -> dict[str, CodedImage]:
    return {"jpeg": encode_jpeg(astronaut, BUDGET_320), "jpeg2000": encode_jpeg2000(astronaut, BUDGET_320)}


def _all_but(coded: CodedImage, *idx: int) -> list[bool]:
    """Received mask: every packet but ``idx``."""
    received = [True] * len(coded.packets)
    for i in idx:
        received[i] = False
    return received


@pytest.mark.parametrize("codec", ["jpeg", "jpeg2000"])
def test_budget_and_packets(coded, codec):
    c = coded[codec]
    assert c.codec == codec and (c.width, c.height) == (320, 240)
    assert len(c.data) <= BUDGET_320
    assert all(0 < len(p) <= 880 for p in c.packets)
    assert b"".join(c.packets) == c.data
    assert len(c.packet_units) == len(c.packets)


def test_jpeg_quality_is_the_highest_that_fits(astronaut, coded):
    c = coded["jpeg"]
    q = int(c.quality)
    assert 1 <= q < 100
    params = [cv2.IMWRITE_JPEG_OPTIMIZE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL, 20]  # as encode_jpeg writes it
    bgr = np.ascontiguousarray(astronaut[:, :, ::-1])
    _, same = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q, *params])
    _, next_q = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q + 1, *params])
    assert same.tobytes() == c.data and len(next_q) > BUDGET_320
    assert encode_jpeg(astronaut, 10**6).quality == 100


def test_640x480_budget():
    img = _image("chelsea", 640, 480)
    for enc in (encode_jpeg, encode_jpeg2000):
        c = enc(img, 19200)
        assert len(c.data) <= 19200 and max(map(len, c.packets)) <= 880
        rgb, info = decode_with_loss(c, _all_but(c))
        assert rgb.shape == (480, 640, 3) and info["decodable"]


@pytest.mark.parametrize("codec", ["jpeg", "jpeg2000"])
def test_lossless_delivery_matches_full_decode(coded, codec):
    c = coded[codec]
    rgb, info = decode_with_loss(c, _all_but(c))
    assert info["decodable"] and info["packets_lost"] == 0 and info["bytes_used"] == len(c.data)
    np.testing.assert_array_equal(rgb, _full_decode(c))


def test_jpeg_middle_packet_lost_is_concealed(astronaut, coded):
    c = coded["jpeg"]
    mid = len(c.packets) // 2
    rgb, info = decode_with_loss(c, _all_but(c, mid))
    assert info["decodable"] and info["packets_lost"] == 1 and 0 < info["mcu_rows_lost"] < info["mcu_rows"]
    assert info["bytes_used"] < len(c.data)
    grey = _psnr(grey_frame(320, 240), astronaut)
    assert _psnr(rgb, astronaut) > grey + 8
    # rows of the intervals that arrived are bit-exact with the loss-free decode, except the one
    # pixel row next to a lost band (4:2:0 chroma upsampling reaches across MCU rows)
    lost_intervals = [u - 1 for u in c.packet_units[mid] if u > 0]
    band = 240 // info["mcu_rows"]
    keep = np.ones(240, bool)
    for i in lost_intervals:
        keep[max(i * band - 1, 0) : (i + 1) * band + 1] = False
    full = _full_decode(c)
    np.testing.assert_array_equal(rgb[keep], full[keep])
    assert not np.array_equal(rgb[~keep], full[~keep])


def test_jpeg_small_packets_split_header_and_intervals(astronaut):
    c = encode_jpeg(astronaut, BUDGET_320, payload_limit=100)
    assert max(map(len, c.packets)) <= 100
    header_packets = [p for p, units in enumerate(c.packet_units) if 0 in units]
    assert len(header_packets) > 1  # the ~600-byte header needs several packets
    rgb, info = decode_with_loss(c, _all_but(c, header_packets[-1]))
    assert not info["decodable"]
    rgb, info = decode_with_loss(c, _all_but(c, header_packets[-1] + 1))  # a piece of interval 0
    assert info["decodable"] and info["mcu_rows_lost"] == 1


@pytest.mark.parametrize("codec", ["jpeg", "jpeg2000"])
def test_header_packet_lost_gives_grey(coded, codec):
    c = coded[codec]
    rgb, info = decode_with_loss(c, _all_but(c, 0))
    assert info["decodable"] is False and info["bytes_used"] == 0
    np.testing.assert_array_equal(rgb, grey_frame(320, 240))


def test_jpeg_bottom_rows_lost_copy_the_last_received_row(coded):
    c = coded["jpeg"]
    rgb, info = decode_with_loss(c, [True] + [False] * (len(c.packets) - 1))
    received = len(c.packet_units[0]) - 1  # the header packet also carries the first intervals
    assert info["decodable"] and info["mcu_rows_lost"] == info["mcu_rows"] - received > 0
    band = 240 // info["mcu_rows"]
    last = received * band - 2  # last intact row (the one below it is concealed too, see module doc)
    np.testing.assert_array_equal(rgb[last + 1 :], np.broadcast_to(rgb[last], rgb[last + 1 :].shape))


def test_jpeg2000_prefix_decode(astronaut, coded):
    c = coded["jpeg2000"]
    grey = _psnr(grey_frame(320, 240), astronaut)
    for k in range(1, len(c.packets)):
        rgb, info = decode_with_loss(c, _all_but(c, k))
        assert info["decodable"], info
        assert info["bytes_used"] == info["prefix_bytes"] == sum(map(len, c.packets[:k]))
        assert _psnr(rgb, astronaut) > grey + 2
    # everything after the first loss is ignored
    a, _ = decode_with_loss(c, _all_but(c, 2))
    b, _ = decode_with_loss(c, _all_but(c, *range(2, len(c.packets))))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("enc", [encode_jpeg, encode_jpeg2000])
def test_bad_input(enc, astronaut):
    with pytest.raises(ValueError, match="uint8"):
        enc(astronaut.astype(np.float32), BUDGET_320)
    with pytest.raises(ValueError, match="RGB"):
        enc(astronaut[:, :, 0], BUDGET_320)
    with pytest.raises(ValueError, match="too small"):
        enc(astronaut, 100)
    with pytest.raises(ValueError, match="max_bytes"):
        enc(astronaut, 0)


def test_wrong_loss_vector_length(coded):
    c = coded["jpeg"]
    with pytest.raises(ValueError, match="packets"):
        decode_with_loss(c, [True] * (len(c.packets) + 1))
