"""Loss traces the shim's control API may use: by name from one directory fixed at start
(``jscc-netem --trace-dir DIR``), or as content uploaded in the request.

Never a path from the network: a request that could name any file would let whoever reaches the
API read the shim's files through its error messages, or learn which paths exist.  So a name is
one plain file name (no separator, no ``..``, no leading dot), looked up only in the directory,
and every error says the same about a name whatever lies on the disk."""

from __future__ import annotations

import re
from pathlib import Path

from jscc_stream.netem.loss import LossSpecError, TraceReplay

__all__ = ["TraceDir", "trace_from_upload", "MAX_TRACE_BYTES"]

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
#: largest trace file read from the directory (a trace is 0/1 per packet: 8 MiB is ~4 M packets)
MAX_TRACE_BYTES = 8 << 20
_MAX_UPLOAD_ENTRIES = 1 << 16


class TraceDir:
    """The trace files directly inside ``directory`` (None: no named traces)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def open(self, name: str) -> TraceReplay:
        """The trace named ``name``; LossSpecError (one line, no file content) otherwise."""
        if self.directory is None:
            raise LossSpecError("no trace directory: start jscc-netem with --trace-dir DIR to use trace:NAME, "
                                "or send the trace itself as {\"trace\": \"0 1 0 ...\"}")
        name = name.strip()
        if not _NAME.fullmatch(name) or ".." in name:
            raise LossSpecError("a trace name is a file name in the trace directory (letters, digits, '_', "
                                "'-', '.'; no path)")
        path = self.directory / name
        try:
            with path.open("rb") as f:
                data = f.read(MAX_TRACE_BYTES + 1)
        except OSError:
            raise LossSpecError(f"no readable loss trace {name!r} in the trace directory") from None
        if len(data) > MAX_TRACE_BYTES:
            raise LossSpecError(f"loss trace {name!r} is larger than {MAX_TRACE_BYTES >> 20} MiB")
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise LossSpecError(f"loss trace {name!r} must hold only 0 and 1") from None
        return TraceReplay.from_text(text, name)


def trace_from_upload(content: object) -> TraceReplay:
    """A trace sent in the request: ``"0 1 0 0"`` or ``[0, 1, 0, 0]``."""
    if isinstance(content, list):
        if not all(type(v) is int and v in (0, 1) for v in content):
            raise LossSpecError("'trace' must be a list of 0 and 1")
        content = " ".join(str(int(v)) for v in content)
    if not isinstance(content, str):
        raise LossSpecError("'trace' must be a string of 0 and 1 or a list of them")
    trace = TraceReplay.from_text(content, "uploaded")
    if len(trace.trace) > _MAX_UPLOAD_ENTRIES:
        raise LossSpecError(f"an uploaded trace holds at most {_MAX_UPLOAD_ENTRIES} entries")
    return trace
