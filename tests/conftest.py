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
    """The shipped 'uniform' weights (what the streaming path runs by default)."""
    from jscc_stream.models.frame_codec import FrameCodec

    return FrameCodec.load("uniform", device="cpu")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory, tiny_codec):
    """The tiny codec saved as a weights file, for daemons started as subprocesses."""
    from jscc_stream.models.zoo import save_codec

    return save_codec(tiny_codec.model, tmp_path_factory.mktemp("w"), "tiny", {"training_loss": "none"})
