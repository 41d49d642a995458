"""Property tests of the entropy-coded codec's payloads (issue 16), the bytes inside a PT 98
packet: the header round-trips; any bytes parse or raise PayloadError; and payloads mutated
behind a *valid* checksum (anyone can compute a CRC) decode to a picture, damaged ones as
erasures, never an exception out of the decoder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FUZZ, fuzz, mutated
from jscc_stream.models.packet_codec import HEADER, VERSION, PayloadError, PayloadHeader, _crc16, parse_payload
from jscc_stream.models.transform import Q_INDEXES

W, H = 64, 48


@st.composite
def headers(draw) -> tuple[PayloadHeader, int]:
    n_levels = draw(st.integers(1, 15))
    kept = draw(st.integers(1, n_levels))
    sent = draw(st.integers(1, kept))
    groups = draw(st.integers(1, 255))
    return PayloadHeader(draw(st.integers(0, sent - 1)), sent, kept, draw(st.integers(0, groups - 1)), groups,
                         draw(st.integers(0, Q_INDEXES - 1))), n_levels


def _sealed(head: bytes, body: bytes) -> bytes:
    """A payload whose checksum is right for its (possibly forged) bytes."""
    crc = _crc16(head[:5] + b"\0\0" + body)
    return head[:5] + crc.to_bytes(2, "little") + body


@FUZZ
@given(hn=headers(), body=st.binary(max_size=200))
def test_payload_headers_round_trip(hn, body):
    head, n_levels = hn
    raw = _sealed(head.pack(0), body)
    assert parse_payload(raw, n_levels) == (head, body)


@FUZZ
@given(raw=st.binary(max_size=300), n_levels=st.integers(0, 16), sealed=st.booleans())
def test_any_payload_parses_or_raises_payload_error(raw, n_levels, sealed):
    if sealed and len(raw) >= HEADER.size:
        raw = _sealed(raw[:HEADER.size], raw[HEADER.size:])
    try:
        head, body = parse_payload(raw, n_levels)
    except PayloadError:
        return
    assert head.level < head.levels_sent <= head.levels_kept <= n_levels and raw.endswith(body)


@pytest.fixture(scope="module")
def frame_payloads(tiny_rd_codec) -> list[bytes]:
    frame = np.random.default_rng(16).integers(0, 256, (H, W, 3), dtype=np.uint8)
    payloads = tiny_rd_codec.encode(frame, 1500)
    assert len(payloads) > 2 and all(p[0] >> 4 == VERSION for p in payloads)
    return payloads


@fuzz(40)
@given(data=st.data())
def test_forged_payloads_decode_as_erasures_never_an_exception(tiny_rd_codec, frame_payloads, data):
    payloads: list[bytes | None] = list(frame_payloads)
    for i in data.draw(st.lists(st.integers(0, len(payloads) - 1), min_size=1, max_size=4, unique=True)):
        raw = data.draw(mutated([payloads[i]]))
        if data.draw(st.booleans()) and len(raw) >= HEADER.size:
            raw = _sealed(raw[:HEADER.size], raw[HEADER.size:])
        payloads[i] = data.draw(st.sampled_from([raw, None]))
    picture = tiny_rd_codec.decode(payloads, W, H)
    assert picture.shape == (H, W, 3) and picture.dtype == np.uint8
