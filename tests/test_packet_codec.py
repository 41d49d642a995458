"""The entropy-coded codec's packet API: every payload decodes alone, rate control meets its
budget, damaged payloads are erasures, and the entropy coder is exact."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import torch

from jscc_stream.models.data import builtin_eval_images
from jscc_stream.models.entropy import SCALES, decode_group, encode_group, fit_scale_index, levels_bits
from jscc_stream.models.packet_codec import PacketCodec, parse_payload, PayloadError
from jscc_stream.models.transform import RDCodec, RDConfig


def _patches(images: dict[str, np.ndarray]) -> torch.Tensor:
    out = []
    for rgb in images.values():
        x = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
        p = x.unfold(1, 16, 8).unfold(2, 16, 8)  # overlapping 16x16 patches
        out.append(p.permute(1, 2, 0, 3, 4).reshape(-1, 768))
    return torch.cat(out)


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    return {k: cv2.cvtColor(v, cv2.COLOR_RGB2BGR) for k, v in builtin_eval_images(320, 240).items()}


@pytest.fixture(scope="module")
def codec(tiny_rd_codec) -> PacketCodec:
    return tiny_rd_codec


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(float) - b) ** 2))


def test_entropy_coder_round_trips_exactly():
    rng = np.random.default_rng(1)
    for n in (1, 7, 300):
        scales = rng.choice([0.1, 1.0, 8.0, 40.0], size=12)
        sym = np.rint(rng.laplace(0, scales[:, None], size=(12, n))).astype(np.int32)
        sym[3] = 0  # an all-zero channel is not coded at all
        sym[5, 0] = 900  # a far outlier in a narrow channel still codes exactly
        if n > 10:
            sym[:, 2:9] = 0  # skipped positions
        idx = fit_scale_index(sym)
        np.testing.assert_array_equal(idx == 0, ~sym.any(axis=1))
        body = encode_group(sym)
        np.testing.assert_array_equal(decode_group(body, 12, n), sym)
    assert encode_group(np.zeros((4, 9), dtype=np.int32)) == b""
    np.testing.assert_array_equal(decode_group(b"", 4, 9), 0)


def test_size_estimate_matches_the_coded_size():
    rng = np.random.default_rng(3)
    sym = np.rint(rng.laplace(0, rng.uniform(0.05, 3, (30, 1)), (30, 400))).astype(np.int32)
    sym[:, rng.random(400) < 0.4] = 0  # skipped positions
    sym[10:15] = 0  # an all-zero channel
    sym[20:] = 0  # an all-zero level: not sent
    starts = np.array([0, 4, 10, 20])
    est = levels_bits(sym, starts)
    for lv, (a, b) in enumerate(zip(starts, list(starts[1:]) + [30])):
        coded = 8 * len(encode_group(sym[a:b]))
        assert (est[lv] == 0) == (coded == 0)
        assert coded - 40 <= est[lv] <= coded + 8  # range coder: ideal + at most a word and a bit


def test_skip_flags_make_flat_regions_cheap():
    rng = np.random.default_rng(2)
    busy = np.rint(rng.laplace(0, 2.0, size=(16, 400))).astype(np.int32)
    half_flat = busy.copy()
    half_flat[:, ::2] = 0
    assert len(encode_group(half_flat)) < 0.6 * len(encode_group(busy))


def test_entropy_coder_rejects_malformed_bodies():
    sym = np.array([[3, 0, -1, 2], [0, 0, 1, 0]], dtype=np.int32)
    body = encode_group(sym)
    with pytest.raises(ValueError, match="32-bit words"):
        decode_group(body[:-1], 2, 4)
    with pytest.raises(ValueError):
        decode_group(body[:1], 2, 4)
    with pytest.raises(ValueError, match="flag probability"):
        decode_group(bytes([200]) + body[1:], 2, 4)
    assert len(SCALES) == 32  # 5-bit indexes


@pytest.fixture(scope="module")
def shipped():
    return PacketCodec.load("uniform", device="cpu")


@pytest.mark.parametrize("which", ["klt", "shipped"])
@pytest.mark.parametrize("bpp", [0.1, 0.25, 0.5, 1.0, 1.5])
def test_rate_control_meets_the_budget(codec, shipped, images, bpp, which):
    codec = shipped if which == "shipped" else codec
    budget = int(bpp * 320 * 240 / 8)
    for bgr in images.values():
        payloads = codec.encode(bgr, budget)
        total = sum(map(len, payloads))
        assert 0.9 * budget <= total <= budget, (bpp, total, budget)
        assert max(map(len, payloads)) <= codec.max_payload


def test_a_budget_too_small_for_anything_gives_the_coarsest_frame_every_time(shipped, images):
    """Below what level 0 at the coarsest step needs, frame after frame (a congested link): the
    coarsest step each time; the search starting at the coarsest must not step past it."""
    bgr = images["astronaut"]
    sizes = [sum(map(len, shipped.encode(bgr, 64))) for _ in range(3)]
    assert sizes[0] == sizes[1] == sizes[2] and shipped._rate_hint == 127
    assert sum(map(len, shipped.encode(bgr, 4800))) <= 4800  # and it recovers


def test_quality_rises_with_the_budget(codec, images):
    bgr = images["astronaut"]
    psnrs = [_psnr(codec.decode(codec.encode(bgr, b), 320, 240), bgr) for b in (1000, 3000, 9600)]
    assert psnrs[0] < psnrs[1] < psnrs[2]
    assert psnrs[2] > 27  # a KLT with an entropy code is a JPEG-class transform coder


def test_every_subset_of_payloads_decodes(images):
    # small payloads so that one frame spreads over several
    model = RDCodec(RDConfig(channels=16, levels=(3, 5, 8), latent_width=8, pixel_width=0))
    model.init_from_klt(_patches({"a": cv2.cvtColor(images["coffee"], cv2.COLOR_BGR2RGB)}))
    codec = PacketCodec(model, precision="fp32", max_payload=120)
    bgr = cv2.resize(images["coffee"], (80, 48))
    payloads = codec.encode(bgr, 600)
    assert 5 <= len(payloads) <= 12
    full = codec.decode(payloads, 80, 48)
    seen = set()
    for keep in itertools.product([True, False], repeat=len(payloads)):
        out = codec.decode([p if k else None for p, k in zip(payloads, keep)], 80, 48)
        assert out.shape == (48, 80, 3) and out.dtype == np.uint8
        seen.add(out.tobytes())
    assert len(seen) > len(payloads)  # losses change the picture, each in its own way
    assert _psnr(full, bgr) > _psnr(codec.decode([None] * len(payloads), 80, 48), bgr)


def test_level_zero_is_split_and_levels_come_in_order(codec, images):
    payloads = codec.encode(images["chelsea"], 4800)
    levels = [parse_payload(p, 4)[0].level for p in payloads]
    assert levels == sorted(levels)
    assert levels.count(0) >= 2


def test_damaged_reordered_and_duplicated_payloads(codec, images):
    bgr = images["rocket"]
    payloads = codec.encode(bgr, 4800)
    ref = codec.decode(payloads, 320, 240)
    np.testing.assert_array_equal(codec.decode(payloads[::-1], 320, 240), ref)
    np.testing.assert_array_equal(codec.decode(payloads + payloads[:3], 320, 240), ref)
    one_lost = codec.decode([None] + payloads[1:], 320, 240)
    rng = np.random.default_rng(0)
    damaged = [
        payloads[0][: len(payloads[0]) // 2],  # truncated
        payloads[0][:5],  # shorter than its header
        bytes(rng.integers(0, 256, len(payloads[0]), dtype=np.uint8)),  # garbage
        bytes([payloads[0][0] ^ 0x10]) + payloads[0][1:],  # flipped bit in the header
        payloads[0][:-4] + bytes(4),  # zeroed tail
        b"",
    ]
    for bad in damaged:
        with pytest.raises(PayloadError):
            parse_payload(bad, 4)
        np.testing.assert_array_equal(codec.decode([bad] + payloads[1:], 320, 240), one_lost)


def test_bad_arguments(codec, images):
    with pytest.raises(ValueError, match="max_bytes"):
        codec.encode(images["camera"], 0)
    with pytest.raises(ValueError, match="BGR uint8"):
        codec.encode(images["camera"].astype(np.float32), 4800)
    with pytest.raises(ValueError, match="positive"):
        codec.decode([], 0, 240)
    # nothing arrived: still a frame of the right size
    assert codec.decode([], 320, 240).shape == (240, 320, 3)
