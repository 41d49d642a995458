"""Codec semantics: SCR is an exact permutation, placeholders and masks, quantization, shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jscc_stream.models.codec import ERASED, CodecConfig, JSCCCodec
from jscc_stream.models.erasure import block_received_mask, fragment_of_element, packet_losses, received_mask
from jscc_stream.models.quant import dequantize, quantize
from jscc_stream.models.scr import from_wire, golden_stride, to_wire, wire_order
from jscc_stream.netem.loss import GE_10, LADDER, TailDrop


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 40), st.integers(1, 40), st.booleans())
def test_scr_inverse_is_exact(alpha: int, h: int, w: int, scr: bool) -> None:
    rng = np.random.default_rng(alpha * 1000 + h * 40 + w)
    block = rng.integers(0, 256, size=(3, alpha, h, w), dtype=np.uint8)
    wire = to_wire(block, scr)
    assert wire.shape == (3, alpha * h * w)
    assert np.array_equal(from_wire(wire, alpha, h, w, scr), block)
    order = wire_order(alpha, h, w, scr)
    assert np.array_equal(np.sort(order), np.arange(alpha * h * w))  # a permutation


def test_scr_spreads_a_lost_packet() -> None:
    """A contiguous third of a 2x30x40 block (one of 3 packets at 640x480) must touch both
    channels and rows all over the latent, unlike the natural order (one channel's top rows)."""
    alpha, h, w = 2, 30, 40
    n = alpha * h * w
    lost = np.zeros(n, bool)
    lost[: n // 3] = True
    for scr, expect_spread in ((True, True), (False, False)):
        mask = from_wire(lost[None].astype(np.uint8), alpha, h, w, scr)[0].astype(bool)
        rows_hit = np.flatnonzero(mask.any(axis=(0, 2)))
        chans_hit = np.flatnonzero(mask.any(axis=(1, 2)))
        spread = len(chans_hit) == alpha and rows_hit.min() == 0 and rows_hit.max() == h - 1
        assert spread == expect_spread


def test_golden_stride_is_coprime() -> None:
    import math
    for n in (1, 2, 3, 300, 1200, 4800, 97):
        s = golden_stride(n)
        assert math.gcd(s, n) == 1 or n <= 2


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantization_round_trip(bits: int) -> None:
    levels = (1 << bits) - 1
    x = torch.rand(2, 16, 5, 7)
    codes = quantize(x, bits)
    assert codes.dtype == np.uint8 and int(codes.max()) <= levels
    back = dequantize(codes, bits)
    assert np.abs(back - x.numpy()).max() <= 0.5 / levels + 1e-6
    assert np.array_equal(quantize(torch.from_numpy(back), bits), codes)  # idempotent


@pytest.mark.parametrize("bad", [1, 9, 0, 3.5])
def test_quantization_rejects_bad_bits(bad) -> None:
    with pytest.raises(ValueError):
        quantize(torch.rand(1), bad)


def test_dequantize_rejects_out_of_range_codes() -> None:
    with pytest.raises(ValueError):
        dequantize(np.array([200], np.uint8), 4)


def _small(**cfg) -> JSCCCodec:
    torch.manual_seed(0)
    return JSCCCodec(CodecConfig(widths=(8, 8, 16, 16), enc_res=(0, 0, 0, 1), dec_res=(0, 0, 0, 1),
                                 mca_width=8, **cfg)).eval()


@pytest.mark.parametrize("hw", [(240, 320), (100, 130), (16, 16), (33, 65)])
def test_any_frame_size_round_trips_shape(hw) -> None:
    m = _small()
    x = torch.rand(1, 3, *hw)
    with torch.no_grad():
        y = m.encode(x)
    assert y.shape == (1, 16, -(-hw[0] // 16), -(-hw[1] // 16))
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert m.decode(y, None, hw).shape == (1, 3, *hw)


def test_decoder_sees_placeholder_and_mask() -> None:
    """Whatever value an erased element holds, the decoder sees -1 there (eq. 1) and the
    result equals the training path's r*(B+1)-1 form."""
    m = _small()
    x = torch.rand(1, 3, 64, 64)
    y = m.encode(x)
    received = torch.ones_like(y)
    received[:, 4:6] = 0
    received[:, 0, 1, 2] = 0  # a single element of block 0
    with torch.no_grad():
        a = m.decode(y, received, (64, 64))
        b = m.decode(torch.where(received.bool(), y, torch.full_like(y, 0.77)), received, (64, 64))
        c = m(x, received)
        seen = {}

        def grab(mod, args) -> None:
            seen["y"] = args[0].clone()

        hook = m.decoder.register_forward_pre_hook(grab)
        m.decode(y, received, (64, 64))
        hook.remove()
    assert torch.allclose(a, b) and torch.allclose(a, c, atol=1e-6)
    assert torch.all(seen["y"][received == 0] == ERASED)
    assert torch.all(seen["y"][received == 1] >= 0)


def test_mask_changes_output_only_through_mca() -> None:
    m = _small()
    y = torch.rand(1, 16, 4, 4)
    received = torch.ones_like(y)
    received[:, 2:4] = 0
    with torch.no_grad():
        full = m.decode(y, None, (64, 64))
        erased = m.decode(y, received, (64, 64))
    assert not torch.allclose(full, erased)


def test_decode_rejects_bad_shapes() -> None:
    m = _small()
    with pytest.raises(ValueError):
        m.decode(torch.rand(1, 15, 4, 4), None, (64, 64))
    with pytest.raises(ValueError):
        m.decode(torch.rand(1, 16, 4, 4), torch.ones(1, 16, 4, 5), (64, 64))
    with pytest.raises(ValueError):
        m.encode(torch.rand(1, 4, 64, 64))


def test_fragment_loss_erases_exactly_its_bytes() -> None:
    alpha, h, w, frags = 2, 6, 5, 3
    lost = np.zeros((1, 8, frags), bool)
    lost[0, 2, 1] = True  # block 2, middle fragment
    received = received_mask(lost, alpha, h, w, scr=True)[0].numpy()
    assert received.shape == (16, h, w)
    erased = received == 0
    assert erased[[c for c in range(16) if c not in (4, 5)]].sum() == 0
    n = alpha * h * w
    assert erased[4:6].sum() == n // 3
    # the erased elements are exactly those whose wire bytes fall in the middle third
    frag = fragment_of_element(alpha, h, w, frags, True).reshape(alpha, h, w)
    assert np.array_equal(erased[4:6], frag == 1)


def test_packet_losses_shapes_and_profiles() -> None:
    rng = np.random.default_rng(0)
    assert packet_losses(GE_10, 5, 8, 3, rng).shape == (5, 8, 3)
    lad = packet_losses(LADDER, 50_000, 8, 2, rng)
    assert lad[:, 0].sum() == 0 and lad[:, 7].mean() == pytest.approx(0.07, abs=0.005)
    td = packet_losses(TailDrop(), 100, 8, 2, rng)
    assert (td[:, :, 0] == td[:, :, 1]).all()  # whole blocks


def test_block_received_mask() -> None:
    rec = torch.tensor([[1, 0, 1, 1, 1, 1, 1, 0]])
    m = block_received_mask(rec, 2, 3, 4)
    assert m.shape == (1, 16, 3, 4)
    assert m[0, 2:4].sum() == 0 and m[0, 14:16].sum() == 0 and m[0, :2].all()


def test_frame_codec_round_trip_with_erasure(tiny_codec) -> None:
    frame = (np.random.default_rng(0).random((240, 320, 3)) * 255).astype(np.uint8)
    wire = tiny_codec.encode(frame)
    lay = tiny_codec.layout(320, 240)
    assert wire.shape == (8, 600) and lay.frame_bytes == 4800
    rec = np.ones_like(wire, bool)
    rec[5, 100:300] = False
    out = tiny_codec.decode(wire, rec, 320, 240)
    assert out.shape == frame.shape and out.dtype == np.uint8
    # erased bytes' contents do not matter
    wire2 = wire.copy()
    wire2[5, 100:300] = 7
    assert np.array_equal(tiny_codec.decode(wire2, rec, 320, 240), out)
    with pytest.raises(ValueError):
        tiny_codec.decode(wire[:, :10], None, 320, 240)
    with pytest.raises(ValueError):
        tiny_codec.encode(frame[..., 0])


def test_pca_initialisation_reconstructs_and_orders_importance() -> None:
    """Before any training the linear path alone is a PCA codec: it reconstructs smooth images
    well, and the first block (largest-variance components) matters most."""
    torch.manual_seed(0)
    m = _small()
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(96.0), indexing="ij")
    imgs = torch.stack([torch.stack([torch.sin(xx / (6 + i) + yy / 11), torch.cos(yy / (5 + i)),
                                     torch.sin((xx - yy) / 13)]) * 0.4 + 0.5 for i in range(6)])
    patches = imgs.unfold(2, 16, 16).unfold(3, 16, 16).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 16, 16)
    m.init_linear_from_pca(patches)
    with torch.no_grad():
        full = m(imgs)
        y = m.encode(imgs)
        keep_first = torch.zeros_like(y)
        keep_first[:, :2] = 1
        keep_last = torch.zeros_like(y)
        keep_last[:, -2:] = 1
        first, last = m(imgs, keep_first), m(imgs, keep_last)
    err = lambda a: float(((a - imgs) ** 2).mean())  # noqa: E731
    assert err(full) < 0.2 * err(torch.full_like(imgs, 0.5))
    assert err(first) < err(last)
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0


def test_linear_taps_must_be_odd_and_positive() -> None:
    for bad in (0, 2, -1):
        with pytest.raises(ValueError, match="linear_taps"):
            CodecConfig(linear_taps=bad)


def test_widening_the_synthesis_kernel_keeps_the_outputs() -> None:
    """A shipped 1-tap codec fine-tuned into the overlapping 3-tap synthesis starts exactly where
    it was (the old kernel sits at the centre, the new taps are zero), erasures included."""
    torch.manual_seed(1)
    m = _small().eval()
    with torch.no_grad():
        for p in m.decoder.linear.parameters():
            p.normal_()
    wide = m.with_linear_taps(3).eval()
    assert wide.cfg.linear_taps == 3 and wide.decoder.linear[0].kernel_size == (3, 3)
    x = torch.rand(2, 3, 48, 64)
    received = (torch.rand(2, m.cfg.latent_channels, 3, 4) > 0.3).float()
    with torch.no_grad():
        assert torch.allclose(m(x, received), wide(x, received), atol=1e-6)
    with pytest.raises(ValueError, match="shrink"):
        wide.with_linear_taps(1)


def test_overlapping_synthesis_reads_the_neighbours() -> None:
    """With 3 taps, a latent element changes the pixels of the neighbouring patches too (what
    lets the decoder interpolate across patch borders); with 1 tap only its own patch."""
    torch.manual_seed(2)
    for taps, expect_outside in ((1, False), (3, True)):
        m = _small(linear_taps=taps).eval()
        with torch.no_grad():
            for p in m.decoder.linear.parameters():
                p.normal_()
        y = torch.full((1, m.cfg.latent_channels, 3, 3), 0.5)
        base = m.decoder.linear(y - 0.5)
        y[0, 0, 1, 1] = 1.0
        diff = (m.decoder.linear(y - 0.5) - base).abs().sum(1)[0]
        s = m.cfg.stride
        inside = diff[s:2 * s, s:2 * s].sum()
        outside = diff.sum() - inside
        assert inside > 0 and bool(outside > 1e-3 * inside) == expect_outside


def test_checkerboard_swap_is_its_own_inverse_and_lossless() -> None:
    from jscc_stream.models.codec import checkerboard_swap

    t = torch.rand(2, 6, 5, 7)
    once = checkerboard_swap(t, ((1, 2), (4, 0)))
    assert torch.equal(checkerboard_swap(once, ((1, 2), (4, 0))), t)
    assert torch.equal(once[:, 1, 0, 0], t[:, 1, 0, 0]) and torch.equal(once[:, 1, 0, 1], t[:, 2, 0, 1])
    assert torch.equal(once[:, 3], t[:, 3])  # channels outside the pairs stay put
    assert torch.equal(checkerboard_swap(t, ()), t)


@pytest.mark.parametrize("bad", [((1, 1),), ((1, 2), (2, 3)), ((0, 99),), ((1, 2, 3),)])
def test_checker_swap_must_be_disjoint_pairs_of_real_channels(bad) -> None:
    with pytest.raises(ValueError, match="checker_swap"):
        CodecConfig(checker_swap=bad)


def test_checker_swap_gives_the_first_block_half_of_each_channel() -> None:
    """With (1, 2) swapped, a frame with only block 0 reaches the decoder with channel 0 whole
    and channels 1 and 2 each at the opposite half of a checkerboard; with every block received
    the swap changes nothing the decoder sees (the codec's output is the same)."""
    from dataclasses import replace

    m = _small()
    sw = JSCCCodec(replace(m.cfg, checker_swap=((1, 2),))).eval()
    sw.load_state_dict(m.state_dict())
    x = torch.rand(1, 3, 64, 80)
    seen = {}
    sw.decoder.register_forward_hook(lambda mod, args, out: seen.update(mask=args[1].clone()))
    with torch.no_grad():
        assert torch.allclose(m(x), sw(x), atol=1e-6)
        received = torch.zeros(1, sw.cfg.latent_channels, 4, 5)
        received[:, :2] = 1
        sw(x, received)
    mask = seen["mask"][0]
    assert bool(mask[0].all()) and not bool(mask[3:].any())
    assert torch.equal(mask[1] + mask[2], torch.ones(4, 5))  # complementary checkerboards
    assert mask[1, 0, 0] == 1 and mask[1, 0, 1] == 0 and mask[2, 0, 1] == 1
    assert CodecConfig.from_dict(sw.cfg.to_dict()).checker_swap == ((1, 2),)
