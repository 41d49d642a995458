"""Reed-Solomon packet FEC: any k of n shares give back exactly the source packets."""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("zfec")

from jscc_stream.baselines.fec import (  # noqa: E402
    FEC_HEADER_BYTES,
    FecError,
    FecHeader,
    encode_parity,
    fec_ratio,
    parity_count,
    recover,
)


def _sources(k: int, seed: int = 0) -> list[bytes]:
    import random

    r = random.Random(seed)
    return [bytes(r.randrange(256) for _ in range(r.randrange(1, 880))) for _ in range(k)]


@pytest.mark.parametrize("k,n", [(1, 2), (3, 5), (5, 8), (6, 7)])
def test_any_k_of_n_recover_everything(k, n):
    src = _sources(k, seed=k * n)
    parity = encode_parity(src, n)
    assert len(parity) == n - k and len({len(p) for p in parity}) == 1
    shares_all = {i: s for i, s in enumerate(src)} | {k + j: p for j, p in enumerate(parity)}
    for chosen in itertools.combinations(range(n), k):
        assert recover(k, n, {i: shares_all[i] for i in chosen}) == src


def test_fewer_than_k_is_an_error_not_garbage():
    src = _sources(4)
    parity = encode_parity(src, 6)
    with pytest.raises(FecError):
        recover(4, 6, {0: src[0], 4: parity[0], 5: parity[1]})


def test_header_round_trip_and_bad_input():
    h = FecHeader(base_seq=65535, k=5, n=8, index=6)
    payload = h.pack() + b"xyz"
    assert len(h.pack()) == FEC_HEADER_BYTES
    assert FecHeader.parse(payload) == (h, b"xyz")
    with pytest.raises(FecError):
        FecHeader(base_seq=1, k=5, n=8, index=2)  # a parity index must be >= k
    with pytest.raises(FecError):
        FecHeader.parse(b"\x00\x01")
    with pytest.raises(FecError):
        encode_parity(_sources(3), 3)
    with pytest.raises(FecError):
        recover(3, 5, {0: b"a", 1: b"b", 9: b"c"})
    src = _sources(3)
    parity = encode_parity(src, 5)
    with pytest.raises(FecError):
        recover(3, 5, {0: src[0], 3: parity[0], 4: parity[1][:-1]})


def test_redundancy_sizing():
    assert fec_ratio(0.0) == 0 and fec_ratio(0.1) == pytest.approx(0.3) and fec_ratio(0.3) == 0.5
    assert parity_count(6, 0.0) == 0
    assert parity_count(1, 0.01) == 1
    assert parity_count(7, 0.3) == 3  # 3 / 10 = 0.3
    assert parity_count(5, 0.5) == 5
    with pytest.raises(FecError):
        fec_ratio(1.5)
    with pytest.raises(FecError):
        parity_count(0, 0.2)
