"""The one error type every layer may raise for a mistake that is the user's to fix."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A mistake in what the user asked for: a CLI prints it as one line and exits 2.

    Library errors that are the user's to fix (a bad loss spec, a corrupt weights file)
    subclass it, so this module needs to import none of them (and no torch)."""
