"""The ``--display`` window: every HighGUI call on one GUI thread, fed the newest frame.

OpenCV's GUI backends (Qt, GTK) want the window created, drawn and pumped on one thread: a
frame shown from the decode thread is refused (Qt: ``QMetaObject::invokeMethod: No such
method GuiReceiver::showImage``) and the window stays black.  So the receiver only drops its
newest frame into a one-slot mailbox (never waiting on the GUI); the GUI thread shows whatever
is newest, pumps events, and reports ``q``, Esc or the window's close button through
``on_close`` so the receiver stops cleanly (stats and recordings flushed).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Callable

import cv2
import numpy as np

from jscc_stream.cli import UserError

__all__ = ["DisplayWindow", "display_available"]

_QUIT_KEYS = {ord("q"), ord("Q"), 27}  # q, Esc


def display_available() -> str | None:
    """None when a window can open here, else the one-line reason why not."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return ("no display here ($DISPLAY is not set): use --web HOST:PORT (browser viewer), --record FILE.mp4 "
                "or --save-frames DIR instead of --display")
    return None


class DisplayWindow:
    """A window at the frames' real size on its own GUI thread."""

    def __init__(self, name: str = "jscc-recv", on_close: Callable[[], None] | None = None,
                 poll_ms: int = 5) -> None:
        reason = display_available()
        if reason:
            raise UserError(reason)
        self.name = name
        self.on_close = on_close
        self.poll_ms = poll_ms
        self.frames_shown = 0
        self._latest: np.ndarray | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="jscc-display", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error:
            self._thread.join(1)
            raise UserError(self._error)

    def show(self, frame: np.ndarray) -> None:
        """Hand over the newest frame; returns at once (an older one not yet drawn is dropped)."""
        with self._lock:
            self._latest = frame

    def _run(self) -> None:
        try:
            # real size, no toolbar or status bar (Qt adds both by default)
            cv2.namedWindow(self.name, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
        except cv2.error as exc:
            self._error = ("this OpenCV cannot open windows (" + str(exc).strip().splitlines()[-1][:120] +
                           "): use --web, --record or --save-frames instead of --display")
            self._ready.set()
            return
        self._ready.set()
        shown_once = False
        try:
            while not self._stop.is_set():
                with self._lock:
                    frame, self._latest = self._latest, None
                if frame is not None:
                    cv2.imshow(self.name, frame)
                    self.frames_shown += 1
                    shown_once = True
                key = cv2.waitKey(self.poll_ms) & 0xFF
                closed = shown_once and cv2.getWindowProperty(self.name, cv2.WND_PROP_VISIBLE) < 1
                if key in _QUIT_KEYS or closed:
                    if self.on_close is not None:
                        self.on_close()
                    break
        finally:
            try:
                cv2.destroyAllWindows()  # on this thread: Qt objects die where they were made
                cv2.waitKey(1)
            except cv2.error:
                pass

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(2)
