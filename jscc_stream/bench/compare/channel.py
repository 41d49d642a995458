"""The shared lossy channel: seeded loss traces and the ``jscc-netem`` shim process.

Every codec runs over the same condition with the same trace file: the shim's ``trace:FILE``
loss replays the 0/1 trace by **datagram index** from its start (datagram i the shim receives is
lost iff trace[i] is 1). Codecs send different numbers of datagrams (JSCC 8 per frame plus a
stream description per second, H.264 about 6, FEC more, NACK retransmissions extra), so they see
the same loss sequence, rate and burst structure, but not the same frames hit. The traces are
drawn from the shared loss processes (``jscc_stream.netem.loss``) with a fixed seed, long enough
never to loop within a run. The first 20 datagrams of every trace are loss-free (a clean
session start, see `write_trace`).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jscc_stream.netem.loss import parse_loss_spec
from jscc_stream.procs import daemon_cmd, stop_process, wait_for_line

__all__ = ["CLEAN_PREFIX", "Condition", "CONDITIONS", "QUICK_CONDITIONS", "write_trace", "Shim"]


@dataclass(frozen=True)
class Condition:
    name: str  # short label for tables
    spec: str  # loss process spec for parse_loss_spec
    family: str  # "uniform" | "ge" | "burst" (plots group by it)


CONDITIONS = (
    Condition("none", "none", "uniform"),
    Condition("u5", "uniform:0.05", "uniform"),
    Condition("u10", "uniform:0.10", "uniform"),
    Condition("u20", "uniform:0.20", "uniform"),
    Condition("u30", "uniform:0.30", "uniform"),
    # Gilbert-Elliott (netem convention p, r, h, k); ge10/ge15 are paper 001's parameters.
    Condition("ge5", "ge:0.06,0.6,0.5,0.99", "ge"),
    Condition("ge10", "ge10", "ge"),
    Condition("ge15", "ge15", "ge"),
    Condition("ge20", "ge:0.25,0.5,0.45,0.97", "ge"),
    # Long bursts: everything lost in Bad, mean burst 10 packets, ~17 % loss.
    Condition("burst", "ge:0.02,0.1,0,1", "burst"),
)
QUICK_CONDITIONS = (CONDITIONS[0], CONDITIONS[6])


CLEAN_PREFIX = 20


def write_trace(cond: Condition, path: Path, length: int, seed: int, clean_prefix: int = CLEAN_PREFIX) -> dict:
    """Draw ``length`` packets of ``cond``'s loss process with ``seed`` into a 0/1 trace file.

    The first ``clean_prefix`` datagrams are never lost: every codec starts its session cleanly
    (JSCC's first stream description, H.264's first IDR frame). Without it a lost first IDR leaves
    plain H.264 with nothing on screen for ~1.5 s (FFmpeg waits for a recovery point), which
    measures session setup rather than streaming; a real client would ask for a keyframe.
    """
    proc = parse_loss_spec(cond.spec)
    rng = np.random.default_rng(seed)
    lost = proc.sample(1, length, rng)[0].astype(np.uint8)
    lost[:clean_prefix] = 0
    path.write_text(" ".join("1" if v else "0" for v in lost) + "\n")
    lost = lost[clean_prefix:]
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate(([0], lost, [0]))) != 0))[::2] if lost.any() else []
    return {"nominal_loss": float(proc.mean_loss), "trace_loss": float(lost.mean()),
            "mean_burst": float(np.mean(runs)) if len(runs) else 0.0, "length": length, "clean_prefix": clean_prefix}


class Shim:
    """``jscc-netem`` as a subprocess on loopback (context manager); its counters end up in stats_json."""

    def __init__(self, listen_port: int, forward_port: int, trace: Path | None, delay_ms: float, workdir: Path,
                 seed: int = 1, reverse_delay_ms: float = 0.0, loss: str | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        """``reverse_delay_ms``: the return path's delay (lossless; the JSCC arm's receipts and
        RTCP); the baselines' feedback is timed by the arms themselves (``--rtt-ms``).
        ``loss``: a loss spec instead of the ``trace`` (which then is None); ``extra_args``: more
        jscc-netem flags (``--rate``, ``--priority``, ...)."""
        self.listen_port, self.forward_port = listen_port, forward_port
        self.log_path = workdir / "shim.log"
        self.stats_json = workdir / "shim.json"
        loss_spec = f"trace:{trace}" if trace is not None else (loss or "none")
        self.cmd = daemon_cmd("netem", "--listen", f"127.0.0.1:{listen_port}", "--forward",
                              f"127.0.0.1:{forward_port}", "--loss", loss_spec, "--seed", str(seed),
                              "--delay-ms", str(delay_ms), "--reverse-delay-ms", str(reverse_delay_ms),
                              "--stats-interval", "0", "--stats-json",
                              str(self.stats_json), "--log-level", "info", *extra_args)
        self.proc: subprocess.Popen | None = None
        self.started_unix = 0.0  # wall clock when the shim said it listens (its clock's zero, near enough)

    def __enter__(self) -> "Shim":
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for_line(self.log_path, "listening on", self.proc, 60)
        self.started_unix = time.time()
        return self

    def __exit__(self, *exc) -> None:
        stop_process(self.proc)
        self._log.close()
