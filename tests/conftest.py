"""Shared fixtures: small deterministic assets, never the training data."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_codec():
    """An untrained, small codec: enough for shape/semantics tests, fast on CPU."""
    import torch

    from jscc_stream.models.codec import CodecConfig, JSCCCodec
    from jscc_stream.models.frame_codec import FrameCodec

    torch.manual_seed(0)
    cfg = CodecConfig(widths=(8, 8, 16, 16), enc_res=(0, 0, 0, 1), dec_res=(0, 0, 0, 1), mca_width=8)
    return FrameCodec(JSCCCodec(cfg))


@pytest.fixture(scope="session")
def shipped_codec():
    """The shipped fixed-rate 'fixed-uniform' weights (papers 000/001's codec)."""
    from jscc_stream.models.frame_codec import FrameCodec

    return FrameCodec.load("fixed-uniform", device="cpu")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory, tiny_codec):
    """The tiny codec saved as a weights file, for daemons started as subprocesses."""
    from jscc_stream.models.zoo import save_codec

    return save_codec(tiny_codec.model, tmp_path_factory.mktemp("w"), "tiny", {"training_loss": "none"})


@pytest.fixture(scope="session")
def tiny_rd_codec():
    """A small untrained entropy-coded codec: the KLT of the bundled test photographs (what a
    trained one starts from), no refinement CNN; deterministic and fast on CPU."""
    import torch

    from jscc_stream.models.data import builtin_eval_images
    from jscc_stream.models.packet_codec import PacketCodec
    from jscc_stream.models.transform import RDCodec, RDConfig

    torch.manual_seed(0)
    patches = []
    for rgb in builtin_eval_images(320, 240).values():
        x = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
        patches.append(x.unfold(1, 16, 8).unfold(2, 16, 8).permute(1, 2, 0, 3, 4).reshape(-1, 768))
    model = RDCodec(RDConfig(channels=64, levels=(4, 8, 16, 36), latent_width=16, pixel_width=0))
    model.init_from_klt(torch.cat(patches))
    return PacketCodec(model, {"name": "tiny-rd"}, precision="fp32")


@pytest.fixture(scope="session")
def tiny_rd_weights(tmp_path_factory, tiny_rd_codec):
    """The tiny entropy-coded codec saved as a weights file (daemons load it by path)."""
    from jscc_stream.models.zoo import save_codec

    return save_codec(tiny_rd_codec.model, tmp_path_factory.mktemp("w"), "tiny-rd", {"training_loss": "none"})


@pytest.fixture
async def shim():
    """A jscc-netem shim on loopback (forwarding to the discard port), for control API tests."""
    from jscc_stream.netem.shim import Shim, ShimConfig

    s = Shim(ShimConfig(listen=("127.0.0.1", 0), forward=("127.0.0.1", 9), stats_interval=0))
    await s.start()
    yield s
    s.close()
