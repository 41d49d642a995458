"""The sender's marking policy: importance level -> DSCP code point (RFC 8837 interactive video by default)."""

from __future__ import annotations

# The code points themselves (names, TOS byte) are the network's vocabulary: netem/dscp.py.
from jscc_stream.netem.dscp import parse_dscp

__all__ = ["DscpMapError", "default_dscp_map", "parse_dscp_map"]


class DscpMapError(ValueError):
    """A --dscp-map the user wrote is not valid (message is user-facing)."""


def default_dscp_map(levels: int) -> dict[int, int]:
    """RFC 8837 interactive video: one AF4 class (no reordering inside the flow), LE last.

    Levels are split into four groups, most important first: AF41, AF42, AF43, LE.
    With 8 levels: 0-1 AF41, 2-3 AF42, 4-5 AF43, 6-7 LE.
    """
    if levels <= 0:
        return {}
    order = [34, 36, 38, 1]
    return {lv: order[min(3, lv * 4 // levels)] for lv in range(levels)}


def _code(text: str) -> int:
    try:
        return parse_dscp(text)
    except ValueError as exc:
        raise DscpMapError(str(exc)) from None


def parse_dscp_map(spec: str, levels: int) -> dict[int, int]:
    """``"0-1:AF41,2-3:AF42,4-5:AF43,6-7:LE"`` -> ``{level: dscp}``; every level must be covered."""
    out: dict[int, int] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if ":" not in part:
            raise DscpMapError(f"bad DSCP map entry {part!r} (expected LEVELS:DSCP, e.g. 0-1:AF41)")
        rng, code = part.split(":", 1)
        try:
            lo, _, hi = rng.partition("-")
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise DscpMapError(f"bad level range {rng!r} in DSCP map") from None
        if first < 0 or last < first:
            raise DscpMapError(f"bad level range {rng!r} in DSCP map")
        dscp = _code(code)
        for lv in range(first, min(last, levels - 1) + 1):  # levels past the codec's are not kept
            out[lv] = dscp
    missing = [lv for lv in range(levels) if lv not in out]
    if missing:
        raise DscpMapError(f"DSCP map does not cover importance levels {missing}")
    return {lv: out[lv] for lv in range(levels)}
