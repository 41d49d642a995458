"""DSCP priority classes shared by the userspace shim and the tc plan.

The sender marks each block's datagrams by importance with RFC 8837 interactive-video code
points, all in the AF4 class so one flow is never reordered by the network: AF41 (most
important), AF42, AF43, then best effort, and LE (RFC 8622, DSCP 1) for the least important.
Both impairment paths rank traffic the same way: rank 0 is served first and dropped last.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DSCP_NAMES", "DscpClass", "PRIORITY_CLASSES", "BEST_EFFORT_RANK", "class_rank", "dscp_of_tos",
           "tos_of_dscp", "parse_dscp"]


@dataclass(frozen=True)
class DscpClass:
    """One importance level: its name, rank (0 = most important) and the DSCPs it holds."""

    name: str
    rank: int
    dscps: tuple[int, ...]


#: Strict priority order.  ``default`` holds every DSCP not named elsewhere (CS0 included).
PRIORITY_CLASSES: tuple[DscpClass, ...] = (
    DscpClass("af41", 0, (34,)),
    DscpClass("af42", 1, (36,)),
    DscpClass("af43", 2, (38,)),
    DscpClass("default", 3, ()),
    DscpClass("le", 4, (1,)),
)
BEST_EFFORT_RANK = 3
_RANK_OF_DSCP = {d: c.rank for c in PRIORITY_CLASSES for d in c.dscps}
#: Code points by their RFC names (lower case; parse_dscp is case-insensitive).
DSCP_NAMES: dict[str, int] = {
    "cs0": 0, "be": 0, "default": 0, "le": 1, "cs1": 8,
    "af11": 10, "af12": 12, "af13": 14, "af21": 18, "af22": 20, "af23": 22,
    "af31": 26, "af32": 28, "af33": 30, "af41": 34, "af42": 36, "af43": 38,
    "cs4": 32, "cs5": 40, "ef": 46, "cs6": 48,
}


def class_rank(dscp: int) -> int:
    """Priority rank of a DSCP (0 = most important, 4 = LE)."""
    return _RANK_OF_DSCP.get(dscp, BEST_EFFORT_RANK)


def dscp_of_tos(tos: int) -> int:
    """The DSCP is the upper six bits of the IPv4 TOS / IPv6 traffic-class byte."""
    return (tos >> 2) & 0x3F


def tos_of_dscp(dscp: int) -> int:
    return (dscp & 0x3F) << 2


def parse_dscp(text: str) -> int:
    """A DSCP by name (``af41``, ``le``, ``be``) or number (decimal or 0x..)."""
    key = text.strip().lower()
    if key in DSCP_NAMES:
        return DSCP_NAMES[key]
    try:
        value = int(key, 0)
    except ValueError:
        raise ValueError(f"unknown DSCP {text!r}; use a name like af41, af42, af43, be, le "
                         "or a number 0-63") from None
    if not 0 <= value <= 63:
        raise ValueError(f"DSCP must be in 0..63, got {value}")
    return value
