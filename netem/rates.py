"""Rates and sizes as users write them (``2mbit``, ``500kbit``, ``64kb``), tc's units.

tc reads ``kbit``/``mbit``/``gbit`` as bits per second with SI multipliers and ``bps``/``kbps``
as *bytes* per second; we accept the same spellings so a value means the same thing on both
paths.
"""

from __future__ import annotations

import math
import re

__all__ = ["parse_rate", "parse_size", "format_rate", "parse_rate_schedule", "parse_probability",
           "RateSchedule", "check_rate_schedule"]

#: ((seconds since start, bits per second), ...): the first at 0, times strictly increasing
RateSchedule = tuple[tuple[float, float], ...]

_RATE_UNITS = {
    "": 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9,
    "k": 1e3, "m": 1e6, "g": 1e9,
    "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9,
    "kibit": 1024, "mibit": 1024 ** 2, "gibit": 1024 ** 3,
}
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024 ** 2, "mb": 1024 ** 2,
               "kbit": 128, "mbit": 128 * 1024}
_NUM = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$")


def parse_rate(text: str) -> float:
    """Bits per second from ``2mbit``, ``500kbit``, ``1.5mbit``, ``250kbps`` (bytes/s), ``1e6``."""
    m = _NUM.match(str(text).lower())
    if not m or m.group(2) not in _RATE_UNITS:
        raise ValueError(f"cannot read rate {text!r}; write e.g. 2mbit, 500kbit or 250kbps (bytes/s)")
    value = float(m.group(1)) * _RATE_UNITS[m.group(2)]
    if not 0 < value < math.inf:
        raise ValueError(f"rate must be positive and finite, got {text!r}")
    return value


def parse_size(text: str) -> int:
    """Bytes from ``64kb``, ``1500``, ``2m``."""
    m = _NUM.match(str(text).lower())
    if not m or m.group(2) not in _SIZE_UNITS:
        raise ValueError(f"cannot read size {text!r}; write e.g. 1500, 64kb or 1mb")
    raw = float(m.group(1)) * _SIZE_UNITS[m.group(2)]
    if not raw < math.inf:
        raise ValueError(f"size must be finite, got {text!r}")
    value = int(raw)
    if value <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return value


def format_rate(bps: float) -> str:
    """A tc rate string: whole bits per second in the largest exact SI unit."""
    bits = max(1, int(round(bps)))
    for unit, mult in (("gbit", 10 ** 9), ("mbit", 10 ** 6), ("kbit", 10 ** 3)):
        if bits % mult == 0:
            return f"{bits // mult}{unit}"
    return f"{bits}bit"


def parse_rate_schedule(text: str) -> RateSchedule:
    """``0:2mbit,20:500kbit,40:2mbit`` -> ((0, 2e6), (20, 5e5), (40, 2e6)): a bottleneck whose
    rate changes over time (seconds since the link started)."""
    entries = [e.strip() for e in str(text).split(",")]
    if not any(entries):
        raise ValueError("rate schedule is empty; write T:RATE,... e.g. 0:2mbit,20:500kbit")
    out: list[tuple[float, float]] = []
    for e in entries:
        t_text, sep, r_text = e.partition(":")
        try:
            t = float(t_text)
        except ValueError:
            t = math.nan
        if not sep or not math.isfinite(t):
            raise ValueError(f"rate schedule entry {e!r}: write T:RATE (seconds:rate), e.g. 20:500kbit")
        try:
            rate = parse_rate(r_text)
        except ValueError as exc:
            raise ValueError(f"rate schedule entry {e!r}: {exc}") from None
        out.append((t, rate))
    return check_rate_schedule(out)


def check_rate_schedule(schedule) -> RateSchedule:
    """Validate (time, bit/s) pairs: first at 0, times strictly increasing, rates positive."""
    sched = tuple((float(t), float(r)) for t, r in schedule)
    if not sched:
        raise ValueError("rate schedule is empty")
    if sched[0][0] != 0:
        raise ValueError(f"rate schedule must start at time 0, not {sched[0][0]:g}")
    for (t0, _), (t1, _) in zip(sched, sched[1:]):
        if not t1 > t0:
            raise ValueError(f"rate schedule times must increase strictly ({t0:g} then {t1:g})")
    for t, r in sched:
        if not (math.isfinite(r) and r > 0):
            raise ValueError(f"rate schedule rate at {t:g} s must be positive, got {r!r}")
    return sched


def parse_probability(text: str | float, what: str = "probability") -> float:
    """A probability written ``0.05`` or ``5%``, checked to lie in [0, 1]."""
    s = str(text).strip()
    scale = 100.0 if s.endswith("%") else 1.0
    try:
        p = float(s.rstrip("%")) / scale
    except ValueError:
        raise ValueError(f"{what} must be a number like 0.05 or 5%, got {text!r}") from None
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{what} must be in [0, 1] (or 0%..100%), got {text!r}")
    return p
