"""Daemons as subprocesses on loopback (demo, benchmarks, comparison): ports, readiness, stopping."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .errors import UserError

__all__ = ["free_port", "wait_for_line", "stop_process", "stop_processes", "daemon_cmd", "cpu_ticks", "proc_usage",
           "udp_socket_queue", "log_problems"]


def free_port(tcp: bool = False) -> int:
    """A UDP (or TCP) port on 127.0.0.1 that is free now, drawn below Linux's ephemeral range
    (32768+): the kernel's own choice lands where every other process's unbound sockets get
    theirs, and one of them can take it before the daemon we start binds it ("Address already
    in use")."""
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 32768)
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, kind) as s:
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


def stop_processes(procs: list[subprocess.Popen | None], timeout: float = 15) -> None:
    """SIGINT to each (a daemon's clean stop, in the order given), then wait for each; one that
    does not exit within ``timeout`` s is killed."""
    live = [p for p in procs if p is not None]
    for p in live:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in live:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def stop_process(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    """:func:`stop_processes` for one process."""
    stop_processes([proc], timeout)


def daemon_cmd(daemon: str, *args: str) -> list[str]:
    """The command line of a daemon's CLI in this interpreter: ``daemon`` is ``"receiver"``,
    ``"netem"`` (the shim) or ``"sender"``."""
    return [sys.executable, "-m", f"jscc_stream.{daemon}.cli", *args]


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process in clock ticks, from /proc (no psutil needed)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])


def proc_usage(pid: int) -> dict[str, int] | None:
    """Resident memory (kB: all, and the anonymous part alone), open file descriptors and threads
    of a live process, from /proc (leak checks sample these over a long run); None once it is
    gone.  A leak shows in the anonymous part: the file-backed part (mapped libraries: torch's
    are hundreds of MB) shrinks whenever the kernel reclaims page cache, which can hide one."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_kb": int(fields["VmRSS"].split()[0]), "rss_anon_kb": int(fields["RssAnon"].split()[0]),
            "fds": fds, "threads": int(fields["Threads"])}


def udp_socket_queue(port: int) -> dict[str, int] | None:
    """The kernel's view of the UDP socket bound to ``port`` on this host (/proc/net/udp, udp6):
    bytes waiting in its receive queue and datagrams dropped because it was full; None if no
    socket has that port.  A sender paces itself on the first; the second says what it lost."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port:
                return {"rx_queue": int(f[4].split(":")[1], 16), "drops": int(f[-1])}
    return None


def log_problems(path: Path) -> dict:
    """What a daemon's log shows went wrong: tracebacks (an exception that escaped, even when
    the process lived on or exited 0) and ERROR lines (the first 20 kept)."""
    text = path.read_text(errors="replace") if path.exists() else ""
    lines = text.splitlines()
    errors = [ln for ln in lines if " ERROR " in ln or " CRITICAL " in ln]
    return {"log_lines": len(lines), "tracebacks": text.count("Traceback"), "error_lines": errors[:20],
            "error_line_count": len(errors)}
