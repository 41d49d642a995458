"""Rates and sizes as users write them (``2mbit``, ``500kbit``, ``64kb``), tc's units.

tc reads ``kbit``/``mbit``/``gbit`` as bits per second with SI multipliers and ``bps``/``kbps``
as *bytes* per second; we accept the same spellings so a value means the same thing on both
paths.
"""

from __future__ import annotations

import re

__all__ = ["parse_rate", "parse_size", "format_rate"]

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
    if not value > 0:
        raise ValueError(f"rate must be positive, got {text!r}")
    return value


def parse_size(text: str) -> int:
    """Bytes from ``64kb``, ``1500``, ``2m``."""
    m = _NUM.match(str(text).lower())
    if not m or m.group(2) not in _SIZE_UNITS:
        raise ValueError(f"cannot read size {text!r}; write e.g. 1500, 64kb or 1mb")
    value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
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
