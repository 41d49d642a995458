"""Restarts (issue 16): the sender killed (SIGKILL) and restarted with a new SSRC and with the
same one, the shim restarted, the receiver restarted: each time the picture is back within
1 s of the restarted process being ready.

One pipeline (jscc-send -> jscc-netem -> jscc-recv, the shipped video codec, 160x128 synthetic)
serves the four tests, in order.  The time is measured from the last look at the restarted
daemon's log that did not yet show its ready line (so it is never shorter than the truth) to
the display time of the first frame the receiver decoded after it (its --stats-json record).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from jscc_stream.procs import daemon_cmd, free_port, stop_processes

# seven daemon starts (torch and the codec each) take ~10 s apiece on a loaded 2-core machine
pytestmark = pytest.mark.slow

PICTURE_BACK_S = 1.0
SSRC_A, SSRC_B = 0x0A0A0A0A, 0x0B0B0B0B
START_S = 180  # a daemon's start, on a machine shared with other test runs


class Pipeline:
    """receiver <- shim <- sender on loopback, each restartable, with their logs in ``work``."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.rport, self.sport = free_port(), free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.runs: Counter = Counter()
        self.stats: Path | None = None  # the running receiver's per-frame records

    def _start(self, name: str, *args: str) -> Path:
        self.runs[name] += 1
        log = self.work / f"{name}{self.runs[name]}.log"
        with open(log, "w") as f:
            self.procs[name] = subprocess.Popen(daemon_cmd(name, *args), stdout=f, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        return log

    def receiver(self, *extra: str) -> Path:
        self.stats = self.work / f"frames{self.runs['receiver'] + 1}.jsonl"
        return self._start("receiver", "--listen", f"127.0.0.1:{self.rport}", "--stats-json", str(self.stats),
                           *extra)

    def shim(self) -> Path:
        return self._start("netem", "--listen", f"127.0.0.1:{self.sport}", "--forward", f"127.0.0.1:{self.rport}",
                           "--stats-interval", "0")

    def sender(self, ssrc: int) -> Path:
        return self._start("sender", "--dest", f"127.0.0.1:{self.sport}", "--size", "160x128", "--fps", "30",
                           "--source", "synthetic:3", "--ssrc", hex(ssrc))

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait()

    def ready(self, name: str, log: Path, needle: str) -> float:
        """Wall-clock time of the last look at ``log`` that did not show ``needle``."""
        end, before = time.monotonic() + START_S, time.time()
        while time.monotonic() < end:
            looked = time.time()
            if needle in log.read_text(errors="replace"):
                return before
            before = looked
            assert self.procs[name].poll() is None, log.read_text()
            time.sleep(0.01)
        raise AssertionError(f"{name} not ready after {START_S} s: {log.read_text()}")

    def picture_back(self, since: float, ssrc: int | None = None, timeout: float = 30) -> float:
        """Seconds from ``since`` to the display of the first frame decoded after it."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in self.stats.read_text().splitlines() if self.stats.exists() else []:
                rec = json.loads(line) if line.endswith("}") else {}
                if rec.get("decoded") and rec["display_unix"] > since and ssrc in (None, rec["ssrc"]):
                    return rec["display_unix"] - since
            time.sleep(0.05)
        raise AssertionError(f"no picture {timeout} s after the restart; receiver: {self.log('receiver')}")

    def streamed(self, ssrc: int, frames: int, timeout: float = 60) -> None:
        """Wait until the receiver decoded frame id ``frames`` or later of ``ssrc``: the sender
        has streamed for a while (frames / 30 fps s) before it is killed."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            recs = [json.loads(x) for x in self.stats.read_text().splitlines() if x.endswith("}")]
            if any(r["decoded"] and r["ssrc"] == ssrc and r["frame_id"] >= frames for r in recs):
                return
            time.sleep(0.1)
        raise AssertionError(f"frame {frames} of {ssrc:08x} never decoded; receiver: {self.log('receiver')}")

    def log(self, name: str) -> str:
        return (self.work / f"{name}{self.runs[name]}.log").read_text(errors="replace")[-2000:]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    p = Pipeline(tmp_path_factory.mktemp("restarts"))
    try:
        logs = {"receiver": p.receiver(), "netem": p.shim(), "sender": p.sender(SSRC_A)}
        since = min(p.ready(name, log, "listening on" if name != "sender" else "sending ")
                    for name, log in logs.items())
        p.picture_back(since, SSRC_A, timeout=START_S)
        yield p
    finally:
        stop_processes(list(p.procs.values()))


def _restart(pipeline: Pipeline, name: str, what: str, *args: str) -> None:
    """Kill daemon ``name`` (SIGKILL), start it again and check how soon the picture is back."""
    pipeline.kill(name)
    start = {"sender": pipeline.sender, "netem": pipeline.shim, "receiver": pipeline.receiver}[name]
    since = pipeline.ready(name, start(*args), "sending " if name == "sender" else "listening on")
    back = pipeline.picture_back(since, SSRC_B)
    print(f"\n{what}: picture back {back * 1000:.0f} ms after the restarted process was ready")
    assert back < PICTURE_BACK_S


def test_sender_killed_and_restarted_with_a_new_ssrc(pipeline):
    _restart(pipeline, "sender", "sender, new SSRC", SSRC_B)


def test_sender_killed_and_restarted_with_the_same_ssrc(pipeline):
    """Its frame ids start from 0 again: without a new session every frame was late until the
    ids passed the old ones (here 3 s)."""
    pipeline.streamed(SSRC_B, 90)
    _restart(pipeline, "sender", "sender, same SSRC", SSRC_B)


def test_shim_restarted(pipeline):
    _restart(pipeline, "netem", "shim")


def test_receiver_restarted(pipeline):
    """It needs the stream's description (the sender sends it at once when the new receiver
    speaks up) and an intra frame (the sender learns the receiver is new from its reports)."""
    _restart(pipeline, "receiver", "receiver", "--ssrc", str(SSRC_B))
