"""Loss processes: statistics match their models, specs parse, bad specs get clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from jscc_stream.netem.loss import (
    GE_10, GE_15, LADDER, ErasureVector, GilbertElliott, LossSpecError, NoLoss, TailDrop,
    TraceReplay, parse_loss_spec,
)


def _runs(flags: np.ndarray) -> np.ndarray:
    """Lengths of consecutive True runs in a 1-D bool array."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    d = np.diff(padded)
    return np.flatnonzero(d == -1) - np.flatnonzero(d == 1)


@pytest.mark.parametrize("ge", [GE_10, GE_15, GilbertElliott(0.05, 0.3, 0.2, 0.99)])
def test_ge_loss_rate_matches_stationary_formula(ge: GilbertElliott) -> None:
    lost, states = ge.sample_with_states(64, 5000, np.random.default_rng(0))
    expected = ge.pi_bad * (1 - ge.h) + (1 - ge.pi_bad) * (1 - ge.k)
    assert ge.mean_loss == pytest.approx(expected)
    assert lost.mean() == pytest.approx(expected, abs=0.006)
    # time spent in Bad and the mean Bad sojourn 1/r
    assert states.mean() == pytest.approx(ge.pi_bad, abs=0.01)
    sojourns = np.concatenate([_runs(s) for s in states])
    assert sojourns.mean() == pytest.approx(1 / ge.r, rel=0.05)


def test_gilbert_burst_length_is_one_over_r() -> None:
    """With h=0, k=1 (every Bad packet lost, no Good loss) loss bursts are Bad sojourns."""
    ge = GilbertElliott(p=0.02, r=0.25, h=0.0, k=1.0)
    lost = ge.sample(32, 20000, np.random.default_rng(1))
    bursts = np.concatenate([_runs(row) for row in lost])
    assert bursts.mean() == pytest.approx(1 / ge.r, rel=0.05)
    assert lost.mean() == pytest.approx(ge.p / (ge.p + ge.r), abs=0.005)


def test_ge_stream_matches_vectorised_statistics() -> None:
    d = GE_10.stream(np.random.default_rng(2))
    flags = np.array([d.lost() for _ in range(200_000)])
    assert flags.mean() == pytest.approx(GE_10.mean_loss, abs=0.005)


def test_loss_draw_uses_arrival_state() -> None:
    """Good never loses (k=1), Bad always (h=0): the loss flag must equal the arrival state."""
    ge = GilbertElliott(0.3, 0.3, 0.0, 1.0)
    lost, states = ge.sample_with_states(4, 1000, np.random.default_rng(3))
    assert np.array_equal(lost, states)


def test_netem_args_percent_convention() -> None:
    assert GE_10.netem_args() == ["loss", "gemodel", "37.8%", "88.3%", "19%", "6.2%"]


def test_erasure_vector_per_block_rates_and_scaling() -> None:
    lost = LADDER.sample(200_000, 8, np.random.default_rng(4))
    assert lost.mean(axis=0) == pytest.approx(np.array(LADDER.eps), abs=0.003)
    scaled = LADDER.scaled(20)
    assert scaled.eps[0] == 0.0 and scaled.eps[-1] == 1.0  # min(a*eps, 1)
    assert scaled.eps[3] == pytest.approx(0.6)


def test_seeded_sampling_is_reproducible() -> None:
    a = GE_15.sample(3, 50, np.random.default_rng(9))
    b = GE_15.sample(3, 50, np.random.default_rng(9))
    assert np.array_equal(a, b)


def test_tail_drop_keeps_a_prefix() -> None:
    lost = TailDrop().sample(1000, 8, np.random.default_rng(5))
    kept = ~lost
    # every row is a run of kept blocks followed by lost ones, at least one kept
    assert kept[:, 0].all()
    assert (np.diff(kept.astype(int), axis=1) <= 0).all()
    assert set(kept.sum(1)) == set(range(1, 9))


def test_trace_replay(tmp_path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("0 1 1\n0,0\n")
    tr = parse_loss_spec(f"trace:{f}")
    assert isinstance(tr, TraceReplay) and tr.mean_loss == pytest.approx(0.4)
    d = tr.stream(np.random.default_rng(0))
    assert [d.lost() for _ in range(6)] == [False, True, True, False, False, False]


@pytest.mark.parametrize("spec,expected", [
    ("none", NoLoss()), ("uniform:0.1", ErasureVector((0.1,))), ("uniform:10%", ErasureVector((0.1,))),
    ("ge10", GE_10), ("ge:0.378,0.883,0.81,0.938", GE_10), ("ladder", LADDER),
])
def test_parse_specs(spec: str, expected) -> None:
    assert parse_loss_spec(spec) == expected


@pytest.mark.parametrize("bad", ["", "uniform", "uniform:1.5", "uniform:x", "ge:1,2", "ge:0.1,0.2,0.3,2",
                                  "ge:0,0,1,1", "bogus:3", "trace:/nonexistent/file", "eps:"])
def test_bad_specs_raise_clear_errors(bad: str) -> None:
    with pytest.raises(LossSpecError):
        parse_loss_spec(bad)


def test_trace_with_garbage_is_rejected(tmp_path) -> None:
    f = tmp_path / "bad.txt"
    f.write_text("0 1 2")
    with pytest.raises(LossSpecError, match="only 0 and 1"):
        parse_loss_spec(f"trace:{f}")
