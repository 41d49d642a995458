"""Packet-loss processes shared by training, evaluation, the userspace shim and the tc plan.

Every process answers two questions:

* ``sample(n_seqs, length, rng)`` -> bool array ``(n_seqs, length)``, True where a packet is
  lost.  Vectorised over sequences (training batches, evaluation sweeps).  For per-block
  profiles (``ErasureVector``, ``TailDrop``) the packet index is the block index.
* ``stream(rng)`` -> a stateful :class:`PacketDropper` deciding packet after packet, which is
  what the network shim needs.

Gilbert-Elliott follows the netem convention ``[p, r, h, k]``: p = P(G->B), r = P(B->G), a
packet is lost with probability 1-k in Good and 1-h in Bad, and the draw uses the state the
packet arrives in (the transition happens after it), exactly as Linux ``sch_netem`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from jscc_stream.errors import UserError

__all__ = [
    "LossProcess",
    "PacketDropper",
    "NoLoss",
    "ErasureVector",
    "GilbertElliott",
    "TailDrop",
    "TraceReplay",
    "GE_10",
    "GE_15",
    "LADDER",
    "STEEP_LADDER",
    "parse_loss_spec",
    "LossSpecError",
]


class LossSpecError(UserError, ValueError):
    """A loss description given by a user is malformed (message is shown as is)."""


class PacketDropper(Protocol):
    def lost(self) -> bool:
        """Decide the fate of the next packet."""


class LossProcess(Protocol):
    def sample(self, n_seqs: int, length: int, rng: np.random.Generator) -> np.ndarray: ...

    def stream(self, rng: np.random.Generator) -> PacketDropper: ...

    @property
    def mean_loss(self) -> float: ...


def _check_prob(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise LossSpecError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


class _IidDropper:
    def __init__(self, probs: np.ndarray, rng: np.random.Generator) -> None:
        self._probs = probs
        self._rng = rng
        self._i = 0

    def lost(self) -> bool:
        p = self._probs[self._i % len(self._probs)]
        self._i += 1
        return bool(self._rng.random() < p)


@dataclass(frozen=True)
class NoLoss:
    """Nothing is ever lost."""

    def sample(self, n_seqs: int, length: int, rng: np.random.Generator) -> np.ndarray:
        return np.zeros((n_seqs, length), dtype=bool)

    def stream(self, rng: np.random.Generator) -> PacketDropper:
        return _IidDropper(np.zeros(1), rng)

    @property
    def mean_loss(self) -> float:
        return 0.0

    def __str__(self) -> str:
        return "none"


@dataclass(frozen=True)
class ErasureVector:
    """Independent erasures with a per-position probability vector eps (paper 000, eq. 1).

    Position i of a sequence is lost with probability ``eps[i % len(eps)]``: a vector of length
    K describes one frame's blocks; a length-1 vector is plain uniform packet loss.
    """

    eps: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.eps) == 0:
            raise LossSpecError("erasure vector must not be empty")
        object.__setattr__(self, "eps", tuple(_check_prob("eps", e) for e in self.eps))

    @classmethod
    def uniform(cls, p: float, k: int = 1) -> "ErasureVector":
        return cls((p,) * k)

    def scaled(self, a: float) -> "ErasureVector":
        """Unequal-protection test channel of paper 000: eps_test = min(a * eps_train, 1)."""
        if a < 0:
            raise LossSpecError(f"scale must be >= 0, got {a}")
        return ErasureVector(tuple(min(a * e, 1.0) for e in self.eps))

    def probs(self, length: int) -> np.ndarray:
        reps = -(-length // len(self.eps))
        return np.tile(np.asarray(self.eps), reps)[:length]

    def sample(self, n_seqs: int, length: int, rng: np.random.Generator) -> np.ndarray:
        return rng.random((n_seqs, length)) < self.probs(length)[None, :]

    def stream(self, rng: np.random.Generator) -> PacketDropper:
        return _IidDropper(np.asarray(self.eps), rng)

    @property
    def mean_loss(self) -> float:
        return float(np.mean(self.eps))

    def __str__(self) -> str:
        """The spec that parses back to this vector (a codec's card records it): every digit
        kept (``repr``), and ``uniform:`` only for one entry, not for K equal ones."""
        if len(self.eps) == 1:
            return f"uniform:{self.eps[0]!r}"
        return "eps:" + ",".join(repr(e) for e in self.eps)


@dataclass(frozen=True)
class GilbertElliott:
    """Two-state Markov loss, netem ``gemodel`` semantics: [p, r, h, k]."""

    p: float
    r: float
    h: float = 0.0
    k: float = 1.0

    def __post_init__(self) -> None:
        for name in ("p", "r", "h", "k"):
            _check_prob(name, getattr(self, name))
        if self.p + self.r == 0:
            raise LossSpecError("p and r cannot both be 0 (the chain would never move)")

    @property
    def pi_bad(self) -> float:
        """Stationary probability of the Bad state."""
        return self.p / (self.p + self.r)

    @property
    def mean_loss(self) -> float:
        pb = self.pi_bad
        return pb * (1 - self.h) + (1 - pb) * (1 - self.k)

    @property
    def mean_bad_sojourn(self) -> float:
        """Mean number of consecutive packets spent in Bad: 1/r."""
        return math.inf if self.r == 0 else 1.0 / self.r

    def sample(self, n_seqs: int, length: int, rng: np.random.Generator) -> np.ndarray:
        lost, _ = self.sample_with_states(n_seqs, length, rng)
        return lost

    def sample_with_states(
        self, n_seqs: int, length: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Loss flags and the state (True = Bad) each packet arrived in."""
        bad = rng.random(n_seqs) < self.pi_bad  # stationary start
        u_loss = rng.random((n_seqs, length))
        u_move = rng.random((n_seqs, length))
        lost = np.empty((n_seqs, length), dtype=bool)
        states = np.empty((n_seqs, length), dtype=bool)
        for t in range(length):
            states[:, t] = bad
            lost[:, t] = u_loss[:, t] < np.where(bad, 1 - self.h, 1 - self.k)
            bad = np.where(bad, u_move[:, t] >= self.r, u_move[:, t] < self.p)
        return lost, states

    def stream(self, rng: np.random.Generator) -> PacketDropper:
        return _GeDropper(self, rng)

    def netem_args(self) -> list[str]:
        """``tc qdisc ... netem`` arguments: ``loss gemodel p r 1-h 1-k`` in percent."""
        pct = lambda v: f"{100 * v:.4f}".rstrip("0").rstrip(".") + "%"  # noqa: E731
        return ["loss", "gemodel", pct(self.p), pct(self.r), pct(1 - self.h), pct(1 - self.k)]

    def __str__(self) -> str:
        return f"ge:{self.p!r},{self.r!r},{self.h!r},{self.k!r}"


class _GeDropper:
    def __init__(self, ge: GilbertElliott, rng: np.random.Generator) -> None:
        self._ge = ge
        self._rng = rng
        self.bad = bool(rng.random() < ge.pi_bad)

    def lost(self) -> bool:
        ge, rng = self._ge, self._rng
        drop = rng.random() < ((1 - ge.h) if self.bad else (1 - ge.k))
        move = rng.random()
        self.bad = (move >= ge.r) if self.bad else (move < ge.p)
        return bool(drop)


@dataclass(frozen=True)
class TailDrop:
    """Progressive (successive-refinement style) loss: keep the first n of every `length`
    positions, n uniform in [min_keep, length]; the rest are dropped.  Training only."""

    min_keep: int = 1

    def sample(self, n_seqs: int, length: int, rng: np.random.Generator) -> np.ndarray:
        keep = rng.integers(min(self.min_keep, length), length + 1, size=n_seqs)
        return np.arange(length)[None, :] >= keep[:, None]

    def stream(self, rng: np.random.Generator) -> PacketDropper:
        raise LossSpecError("tail-drop is a per-frame training profile, not a packet stream")

    @property
    def mean_loss(self) -> float:
        return float("nan")

    def __str__(self) -> str:
        return f"taildrop:{self.min_keep}"


@dataclass(frozen=True)
class TraceReplay:
    """Replay of a recorded 0/1 loss trace (1 = lost), looped; sequences start at random offsets."""

    trace: tuple[bool, ...] = field(repr=False)
    name: str = "trace"

    def __post_init__(self) -> None:
        if len(self.trace) == 0:
            raise LossSpecError("loss trace is empty")

    @classmethod
    def from_file(cls, path: str | Path) -> "TraceReplay":
        """A trace file named on the command line (the control API names traces only from
        ``jscc-netem --trace-dir``: see netem/traces.py)."""
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise LossSpecError(f"cannot read loss trace {path}: {getattr(exc, 'strerror', None) or 'not text'}"
                                ) from None
        return cls.from_text(text, str(path))

    @classmethod
    def from_text(cls, text: str, name: str) -> "TraceReplay":
        """0/1 separated by blanks or commas.  A bad entry is named by its position, never by its
        text, so an error cannot show what a file holds."""
        bits: list[bool] = []
        for i, tok in enumerate(text.replace(",", " ").split()):
            if tok not in ("0", "1"):
                raise LossSpecError(f"loss trace {name} must hold only 0 and 1 (entry {i + 1} is neither)")
            bits.append(tok == "1")
        return cls(tuple(bits), name=name)

    def sample(self, n_seqs: int, length: int, rng: np.random.Generator) -> np.ndarray:
        arr = np.asarray(self.trace, dtype=bool)
        starts = rng.integers(0, len(arr), size=n_seqs)
        idx = (starts[:, None] + np.arange(length)[None, :]) % len(arr)
        return arr[idx]

    def stream(self, rng: np.random.Generator) -> PacketDropper:
        return _TraceDropper(self.trace)

    @property
    def mean_loss(self) -> float:
        return float(np.mean(self.trace))

    def __str__(self) -> str:
        return f"trace:{self.name}"


class _TraceDropper:
    def __init__(self, trace: tuple[bool, ...]) -> None:
        self._trace = trace
        self._i = 0

    def lost(self) -> bool:
        v = self._trace[self._i % len(self._trace)]
        self._i += 1
        return v


# Paper 001's parameters: about 10 % and 15 % loss.
GE_10 = GilbertElliott(0.378, 0.883, 0.810, 0.938)
GE_15 = GilbertElliott(0.417, 0.973, 0.620, 0.948)
# Paper 000's increasing erasure profile and a steeper one.
LADDER = ErasureVector((0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07))
STEEP_LADDER = ErasureVector((0.0, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35))


def _floats(text: str, n: int | None, what: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise LossSpecError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if n is not None and len(vals) != n:
        raise LossSpecError(f"{what}: expected {n} numbers, got {len(vals)} in {text!r}")
    return vals


def parse_loss_spec(spec: str, open_trace: Callable[[str], "TraceReplay"] | None = None) -> LossProcess:
    """Parse ``none | uniform:P | ge:p,r,h,k | ge10 | ge15 | eps:e1,..,eK | ladder | steep |
    taildrop | trace:FILE``.  P may be a fraction (0.1) or a percentage (10%).

    ``open_trace`` turns the name after ``trace:`` into a trace; by default it is a file path
    (the command line's case); the control API passes its trace directory's lookup instead."""
    spec = spec.strip()
    kind, _, arg = spec.partition(":")
    kind = kind.lower()
    if kind == "none" and not arg:
        return NoLoss()
    if kind == "uniform":
        if not arg:
            raise LossSpecError("uniform loss needs a probability, e.g. uniform:0.1 or uniform:10%")
        text = arg.strip()
        scale = 100.0 if text.endswith("%") else 1.0
        (p,) = _floats(text.rstrip("%"), 1, "uniform")
        return ErasureVector.uniform(_check_prob("uniform loss", p / scale))
    if kind == "ge":
        if not arg:
            raise LossSpecError("ge loss needs four numbers p,r,h,k, e.g. ge:0.378,0.883,0.81,0.938")
        return GilbertElliott(*_floats(arg, 4, "ge:p,r,h,k"))
    if kind == "ge10" and not arg:
        return GE_10
    if kind == "ge15" and not arg:
        return GE_15
    if kind == "eps":
        return ErasureVector(tuple(_floats(arg, None, "eps")))
    if kind == "ladder" and not arg:
        return LADDER
    if kind == "steep" and not arg:
        return STEEP_LADDER
    if kind == "taildrop":
        if arg and not arg.strip().isdecimal():
            raise LossSpecError(f"taildrop takes a whole number of blocks to keep, e.g. taildrop:2, got {arg!r}")
        return TailDrop(int(arg) if arg else 1)
    if kind == "trace":
        if not arg:
            raise LossSpecError("trace loss needs a file, e.g. trace:losses.txt")
        return (open_trace or TraceReplay.from_file)(arg)
    raise LossSpecError(
        f"unknown loss {spec!r}; use none, uniform:P, ge:p,r,h,k, ge10, ge15, eps:e1,...,eK, "
        "ladder, steep, taildrop or trace:FILE"
    )
