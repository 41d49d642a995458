"""``jscc-recv --display`` as a person sees it: a real window under Xvfb, screenshots of the X
display, ``q`` pressed through the X server; and the one-line error where there is no display."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

NEEDED = ("Xvfb", "xdotool", "import")


def _missing_tools() -> list[str]:
    return [t for t in NEEDED if shutil.which(t) is None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def xserver():
    missing = _missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian: apt-get install xvfb xdotool imagemagick; .ci/run does)")
    r, w = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        number = f.readline().strip()
    if not number:
        proc.kill()
        pytest.skip("Xvfb could not start here")
    yield f":{number}"
    proc.terminate()
    proc.wait(5)


def _screenshot(display: str, path: Path) -> np.ndarray:
    subprocess.run(["import", "-display", display, "-window", "root", str(path)], check=True, timeout=20)
    img = cv2.imread(str(path))
    assert img is not None
    return img


def _window_ids(display: str, name: str) -> list[str]:
    out = subprocess.run(["xdotool", "search", "--name", name], env={**os.environ, "DISPLAY": display},
                         capture_output=True, text=True)
    return out.stdout.split()


def _window_id(display: str, name: str, proc: subprocess.Popen, timeout: float = 60.0) -> str:
    env = {**os.environ, "DISPLAY": display}
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = subprocess.run(["xdotool", "search", "--name", name], env=env, capture_output=True, text=True)
        if out.stdout.strip():
            return out.stdout.split()[-1]
        if proc.poll() is not None:
            raise AssertionError(f"jscc-recv exited {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.2)
    raise AssertionError(f"no window named {name} appeared")


def test_display_window_shows_the_stream_and_q_quits(xserver, tiny_rd_weights, tmp_path):
    rport, sport = _free_port(), _free_port()
    env = {**os.environ, "DISPLAY": xserver, "QT_QPA_PLATFORM": "xcb"}
    py = sys.executable
    summary, stats = tmp_path / "summary.json", tmp_path / "frames.jsonl"
    recv = subprocess.Popen([py, "-m", "jscc_stream.receiver.cli", "--listen", f"127.0.0.1:{rport}", "--display",
                             "--codec", str(tiny_rd_weights), "--latency-ms", "150", "--summary-json", str(summary),
                             "--stats-json", str(stats), "--log-level", "warning"],
                            env=env, stderr=subprocess.PIPE, text=True)
    shim = subprocess.Popen([py, "-m", "jscc_stream.netem.cli", "--listen", f"127.0.0.1:{sport}", "--forward",
                             f"127.0.0.1:{rport}", "--loss", "ge10", "--seed", "1", "--stats-interval", "0",
                             "--log-level", "warning"])
    send = subprocess.Popen([py, "-m", "jscc_stream.sender.cli", "--dest", f"127.0.0.1:{sport}", "--codec",
                             str(tiny_rd_weights), "--duration", "60", "--priority-dscp", "--log-level", "warning"])
    try:
        _window_id(xserver, "jscc-recv", recv)
        # the window opens at start; the picture comes once the sender's first frames arrive
        end = time.monotonic() + 45
        while True:
            a = _screenshot(xserver, tmp_path / "a.png")
            if a[:240, :320].std() > 20 or time.monotonic() > end:
                break
            time.sleep(0.5)
        time.sleep(0.7)
        b = _screenshot(xserver, tmp_path / "b.png")
        # the window sits at the top left of the bare X screen, at the frame's real size
        win_a, win_b = a[:240, :320].astype(float), b[:240, :320].astype(float)
        assert win_a.std() > 20 and win_b.std() > 20, "the window shows no picture"
        assert np.abs(win_a - win_b).mean() > 1.0, "the picture does not change"
        assert a[300:, 400:].max() == 0  # outside the window: the bare black screen
        # focus the window and press q as a keyboard would (XTEST: a real key event, not a
        # synthetic one an application may ignore); Qt may have replaced the window: search again
        for _ in range(3):
            for wid in _window_ids(xserver, "jscc-recv"):
                subprocess.run(["xdotool", "windowfocus", wid], env=env, timeout=10, capture_output=True)
            subprocess.run(["xdotool", "key", "q"], env=env, timeout=10, capture_output=True)
            try:
                recv.wait(10)
                break
            except subprocess.TimeoutExpired:
                continue
        rc = recv.wait(10)
        err = recv.stderr.read()
        assert rc == 0, err
    finally:
        for p in (send, shim, recv):
            if p.poll() is None:
                p.kill()
                p.wait()
    data = json.loads(summary.read_text())
    assert data["frames_decoded"] >= 2  # two different pictures were on screen
    lines = stats.read_text().splitlines()  # flushed to the last frame shown, each line whole
    assert len(lines) >= data["frames_out"] and all(json.loads(line)["frame_id"] >= 0 for line in lines)


def test_display_without_a_desktop_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    out = subprocess.run([sys.executable, "-m", "jscc_stream.receiver.cli", "--listen", f"127.0.0.1:{_free_port()}",
                          "--display"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "no display" in lines[0] and "--web" in lines[0] and "--record" in lines[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the message names Linux's /dev/videoN")
def test_webcam_that_is_not_there_is_one_line():
    out = subprocess.run([sys.executable, "-m", "jscc_stream.sender.cli", "--source", "webcam:57", "--frames", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == "jscc-send: error: cannot open webcam 57 (no camera at /dev/video57?)"


class _FakeHighGui:
    """Stands in for cv2's window functions: records the calling thread of each, can hold the
    screen (imshow blocks), and plays a scripted key or a closed window."""

    WINDOW_AUTOSIZE, WINDOW_GUI_NORMAL, WND_PROP_VISIBLE = 1, 16, 4
    error = RuntimeError

    def __init__(self, key: int = -1, closed_after: int | None = None):
        import threading

        self.threads: set[int] = set()
        self.shown: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.key, self.closed_after = key, closed_after

    def _note(self):
        import threading

        self.threads.add(threading.get_ident())

    def namedWindow(self, *a):
        self._note()

    def imshow(self, name, frame):
        self._note()
        self.release.wait(5)
        self.shown.append(int(frame[0, 0, 0]))

    def waitKey(self, ms):
        self._note()
        time.sleep(ms / 1000)
        return self.key if self.shown else -1

    def getWindowProperty(self, *a):
        self._note()
        return 0 if self.closed_after is not None and len(self.shown) >= self.closed_after else 1

    def destroyAllWindows(self):
        self._note()


def _window(monkeypatch, fake, on_close=None):
    import threading

    from jscc_stream.receiver import display

    monkeypatch.setattr(display, "cv2", fake)
    monkeypatch.setattr(display, "display_available", lambda: None)
    return display.DisplayWindow("t", on_close=on_close, poll_ms=1), threading.get_ident()


def test_gui_calls_stay_on_one_thread_and_only_the_newest_frame_is_drawn(monkeypatch):
    fake = _FakeHighGui()
    win, caller = _window(monkeypatch, fake)
    frame = lambda v: np.full((4, 4, 3), v, np.uint8)  # noqa: E731
    win.show(frame(0))
    time.sleep(0.2)
    fake.release.clear()  # the screen hangs while drawing the next frame
    win.show(frame(1))
    time.sleep(0.1)
    t0 = time.monotonic()
    for v in range(2, 52):
        win.show(frame(v))  # the caller never waits on the GUI
    assert time.monotonic() - t0 < 0.5
    fake.release.set()
    time.sleep(0.3)
    win.close()
    assert fake.shown[0] == 0 and fake.shown[-1] == 51 and len(fake.shown) <= 4  # 2..50 replaced
    assert len(fake.threads) == 1 and caller not in fake.threads


@pytest.mark.parametrize("key", [ord("q"), 27])
def test_q_or_esc_asks_the_receiver_to_stop(monkeypatch, key):
    stopped = []
    win, _ = _window(monkeypatch, _FakeHighGui(key=key), on_close=lambda: stopped.append(1))
    win.show(np.zeros((4, 4, 3), np.uint8))
    time.sleep(0.3)
    assert stopped == [1]
    win.close()


def test_close_button_asks_the_receiver_to_stop(monkeypatch):
    stopped = []
    win, _ = _window(monkeypatch, _FakeHighGui(closed_after=2), on_close=lambda: stopped.append(1))
    for v in range(3):
        win.show(np.full((4, 4, 3), v, np.uint8))
        time.sleep(0.05)
    time.sleep(0.3)
    assert stopped == [1]
    win.close()
