"""Daemons as subprocesses on loopback (demo, benchmarks, comparison): ports, readiness, stopping."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from .errors import UserError

__all__ = ["free_port", "wait_for_line", "stop_process", "cpu_ticks"]


def free_port() -> int:
    """A UDP port on 127.0.0.1 that is free now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(path: Path, needle: str, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until a daemon's log shows ``needle`` (it is up); a UserError if it exits or times out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise UserError(f"{Path(proc.args[2]).name if len(proc.args) > 2 else proc.args} exited early: "
                            f"{path.read_text(errors='replace').strip().splitlines()[-1:]}")
        time.sleep(0.05)
    raise UserError(f"timed out waiting for '{needle}' in {path}")


def stop_process(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    """SIGINT (a daemon's clean stop), then wait; kill it if it does not exit in ``timeout`` s."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process in clock ticks, from /proc (no psutil needed)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])
