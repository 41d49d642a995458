"""What the property tests of the parsers share (issue 16): one settings profile, so that CI runs
the same examples every time and fast, and one mutation strategy over real packets."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: Repeatable (derandomized, no example database) and modest: the fuzz files together stay
#: well under a minute on a busy 2-core machine.  ``JSCC_FUZZ_EXAMPLES=20000`` makes a long,
#: random run instead (hunting, not CI).
_DEEP = int(os.environ.get("JSCC_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_DEEP or 150, deadline=None, derandomize=not _DEEP, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fuzz(examples: int) -> settings:
    """:data:`FUZZ` with fewer examples, for a property whose example is slow (a decode)."""
    return settings(FUZZ, max_examples=_DEEP or examples)


@st.composite
def mutated(draw, seeds: list[bytes], max_ops: int = 4) -> bytes:
    """One of ``seeds`` (bytes the project's own builders made) with 1..``max_ops`` edits:
    flipped bits, overwritten, inserted or deleted bytes, a cut, or junk appended."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "extend"]))
        if op == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
            continue
        if not data:
            continue
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 8))]
        else:
            del data[i:]
    return bytes(data)


@contextmanager
def no_hang(seconds: float = 5.0) -> Iterator[None]:
    """Fail (TimeoutError) instead of hanging when the body runs longer than ``seconds``: a
    parser must answer any input at once (main thread only: it uses SIGALRM)."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
