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

from jscc_stream.errors import UserError

__all__ = ["DisplayWindow", "display_available"]

_QUIT_KEYS = {ord("q"), ord("Q"), 27}  # q, Esc


_INSTEAD = "use --web HOST:PORT (browser viewer), --record FILE.mp4 or --save-frames DIR instead of --display"


def _x_unreachable(name: str) -> bool:
    """True when libxcb cannot connect to X display ``name``.  Asked before any HighGUI call:
    OpenCV's Qt (xcb) backend aborts the whole process when it cannot connect."""
    import ctypes
    import ctypes.util

    try:
        xcb = ctypes.CDLL(ctypes.util.find_library("xcb") or "libxcb.so.1")
    except OSError:
        return False  # nothing to ask; HighGUI will tell
    xcb.xcb_connect.restype = ctypes.c_void_p
    xcb.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    xcb.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
    xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    conn = xcb.xcb_connect(name.encode(), None)
    try:
        return bool(xcb.xcb_connection_has_error(conn))
    finally:
        xcb.xcb_disconnect(conn)


def display_available() -> str | None:
    """None when a window can open here, else the one-line reason why not."""
    if not sys.platform.startswith("linux"):
        return None
    display = os.environ.get("DISPLAY")
    if not display:
        return f"no display here ($DISPLAY is not set): {_INSTEAD}"
    if _x_unreachable(display):
        return f"no display here (cannot connect to X display {display!r}): {_INSTEAD}"
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
