"""What every jscc-* command shares: --log-level and one-line errors for user mistakes."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .errors import UserError

__all__ = ["add_common_args", "setup_logging", "parse_args", "run_cli", "run_async", "write_json",
           "parse_frame_size", "parse_ssrc", "event_loop_factory", "entry_point"]


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="logging verbosity (default: info)")


def parse_frame_size(text: str, multiple_of: int = 1, minimum: int = 16) -> tuple[int, int]:
    """``"320x240"`` -> ``(320, 240)``; a UserError names what is wrong."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"size must be WxH, e.g. 320x240, got {text!r}") from None
    if w < minimum or h < minimum:
        raise UserError(f"size {text} is too small (at least {minimum}x{minimum})")
    if w % multiple_of or h % multiple_of:
        raise UserError(f"size must be multiples of {multiple_of} (the codec's stride), got {text!r}")
    return w, h


def parse_ssrc(text: str | None) -> int | None:
    """``--ssrc``: decimal or 0x-hexadecimal, a 32-bit RTP SSRC; a UserError otherwise."""
    if text is None:
        return None
    try:
        value = int(text, 0)
    except ValueError:
        raise UserError(f"--ssrc must be a number (decimal or 0x hex), got {text!r}") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise UserError(f"--ssrc must be in [0, 0xffffffff], got {text}")
    return value


def event_loop_factory() -> Callable[[], "asyncio.AbstractEventLoop"]:
    """uvloop's loop when installed (it is on Linux: every daemon runs on it), else asyncio's."""
    try:
        import uvloop

        return uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def parse_args(build_parser: Callable[[], argparse.ArgumentParser],
               argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` with a command's parser and log at its ``--log-level``."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    return args


def run_async(main: Awaitable[Any]) -> Any:
    """Run a daemon's main coroutine on the event loop every daemon uses (uvloop)."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(main)


def write_json(path: str | None, data: Any) -> None:
    """A run's summary as indented JSON, when the user asked for it (``path`` not None)."""
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=2)


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None,
            prog: str = "jscc") -> int:
    """Run ``main``; user errors become one line on stderr and exit 2, Ctrl-C exits 130."""
    try:
        return int(main(argv) or 0)
    except (UserError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def entry_point(main: Callable[[Sequence[str] | None], int | None], prog: str) -> Callable[..., int]:
    """The console-script function of a command: ``main`` run under :func:`run_cli` as ``prog``."""

    def entry(argv: Sequence[str] | None = None) -> int:
        return run_cli(main, argv, prog=prog)

    entry.__name__ = entry.__qualname__ = "main"
    return entry
