"""The sender's marking policy: importance level -> DSCP code point (RFC 8837 interactive video by default)."""

from __future__ import annotations

# The code points themselves (names, TOS byte) are the network's vocabulary: netem/dscp.py.
from jscc_stream.netem.dscp import parse_dscp

__all__ = ["DscpMapError", "default_dscp_map", "parse_dscp_map", "LAYERED_LEVEL_CLASSES", "default_layer_dscp",
           "parse_layer_dscp", "dscp_for"]

#: With bit layers (``--bit-layers``) the coarse indexes of all levels share AF41/AF42/AF43 and
#: the refinements get the classes below them: a full priority queue drops every refinement
#: before any coarse index.
LAYERED_LEVEL_CLASSES = (34, 36, 38)


class DscpMapError(ValueError):
    """A --dscp-map the user wrote is not valid (message is user-facing)."""


def default_dscp_map(levels: int, order: tuple[int, ...] = (34, 36, 38, 1)) -> dict[int, int]:
    """RFC 8837 interactive video: one AF4 class (no reordering inside the flow), LE last.

    Levels are split into ``len(order)`` groups, most important first: AF41, AF42, AF43, LE.
    With 8 levels: 0-1 AF41, 2-3 AF42, 4-5 AF43, 6-7 LE.
    """
    if levels <= 0:
        return {}
    n = len(order)
    return {lv: order[min(n - 1, lv * n // levels)] for lv in range(levels)}


def default_layer_dscp(layers: int) -> dict[int, int]:
    """Refinement bit layer -> DSCP, below every coarse index: LE for the one refinement of two
    layers; with more, best effort (CS0) for the first refinement and LE for the rest."""
    return {j: 0 if j == 1 and layers > 2 else 1 for j in range(1, layers)}


def dscp_for(level_map: dict[int, int], layer_map: dict[int, int] | None, level: int, layer: int) -> int:
    """A datagram's DSCP: a refinement's by its layer (when marked by layer), else by its level."""
    if layer and layer_map is not None:
        return layer_map.get(layer, 1)
    return level_map.get(level, 0)


def _code(text: str) -> int:
    try:
        return parse_dscp(text)
    except ValueError as exc:
        raise DscpMapError(str(exc)) from None


def parse_dscp_map(spec: str, levels: int) -> dict[int, int]:
    """``"0-1:AF41,2-3:AF42,4-5:AF43,6-7:LE"`` -> ``{level: dscp}``; every level must be covered."""
    out = _parse_ranges(spec, "level", levels)
    missing = [lv for lv in range(levels) if lv not in out]
    if missing:
        raise DscpMapError(f"DSCP map does not cover importance levels {missing}")
    return {lv: out[lv] for lv in range(levels)}


def parse_layer_dscp(spec: str, layers: int) -> dict[int, int]:
    """``"1:BE,2-3:LE"`` -> ``{refinement layer: dscp}``; every layer 1..layers-1 must be covered."""
    out = _parse_ranges(spec, "layer", layers)
    missing = [j for j in range(1, layers) if j not in out]
    if missing:
        raise DscpMapError(f"layer DSCP map does not cover bit layers {missing}")
    return {j: out[j] for j in range(1, layers)}


def _parse_ranges(spec: str, what: str, limit: int) -> dict[int, int]:
    """``"A-B:CODE,..."`` -> ``{n: dscp}`` for every n < ``limit`` in each range."""
    out: dict[int, int] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if ":" not in part:
            raise DscpMapError(f"bad DSCP map entry {part!r} (expected {what.upper()}S:DSCP, e.g. 0-1:AF41)")
        rng, code = part.split(":", 1)
        try:
            lo, _, hi = rng.partition("-")
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise DscpMapError(f"bad {what} range {rng!r} in DSCP map") from None
        if first < 0 or last < first:
            raise DscpMapError(f"bad {what} range {rng!r} in DSCP map")
        dscp = _code(code)
        for lv in range(first, min(last, limit - 1) + 1):  # past the codec's are not kept (nor looped over)
            out[lv] = dscp
    return out
