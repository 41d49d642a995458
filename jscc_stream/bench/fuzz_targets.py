"""The daemons ``jscc-bench fuzz`` attacks, as running processes: jscc-recv, and jscc-netem with a
downstream sink.  Each target starts, takes a real stream (the capture replayed under a fresh
SSRC), reports its live counters where it has them, and says after the fuzzing whether it still
serves the real stream."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from jscc_stream.proto.packet import PT_DESCRIPTION, build_description, parse_datagram
from jscc_stream.procs import daemon_cmd, free_port, log_problems, stop_process, wait_for_line

from .fuzz_data import is_rtcp_shaped

__all__ = ["with_ssrc", "replay", "ReceiverTarget", "ShimTarget", "TARGETS"]

Capture = Sequence[tuple[float, bytes]]


def with_ssrc(data: bytes, ssrc: int) -> bytes:
    """A captured RTP datagram as stream ``ssrc`` would send it (a stream description names its
    SSRC inside too, and the receiver checks that the two agree)."""
    if data[1] & 0x7F != PT_DESCRIPTION:
        return data[:8] + ssrc.to_bytes(4, "big") + data[12:]
    from jscc_stream.proto.stream_pb2 import StreamDescription

    pkt = parse_datagram(data)
    msg = StreamDescription()
    msg.ParseFromString(pkt.body)
    msg.ssrc = ssrc
    return build_description(ssrc, pkt.seq, pkt.timestamp, msg.SerializeToString())


def replay(sock: socket.socket, dest: tuple[str, int], capture: Capture, ssrc: int) -> int:
    """Send the capture's RTP datagrams at their recorded pace with their SSRC set to ``ssrc``
    (a new stream to the target); returns how many were sent."""
    start, n = time.monotonic(), 0
    for t, data in capture:
        if is_rtcp_shaped(data) or len(data) < 12:
            continue
        delay = start + t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sock.sendto(with_ssrc(data, ssrc), dest)
        n += 1
    return n


class _Target:
    """What both targets share: the process, its log, the port it listens on."""

    name = ""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.log_path = work / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def _spawn(self, cmd: list[str]) -> None:
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_line(self.log_path, "listening on", self.proc, 120)

    @property
    def dest(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def live_count(self) -> int | None:
        """Datagrams the target says it took in so far, when it can say so while running."""
        return None

    def settled(self) -> bool:
        """Nothing of what was sent is still inside the target."""
        return True

    def stop(self) -> dict:
        """SIGINT (a clean stop), then its exit code and what its log shows."""
        alive = self.alive()
        stop_process(self.proc)
        if self._log:
            self._log.close()
        return {"alive_before_stop": alive, "exit_code": None if self.proc is None else self.proc.returncode,
                **log_problems(self.log_path)}


class ReceiverTarget(_Target):
    """jscc-recv; its counters come from --summary-json at exit, its decoded frames from the
    per-frame --stats-json lines (by SSRC, so the replays before and after can be compared)."""

    name = "receiver"

    def start(self) -> None:
        self._spawn(daemon_cmd("receiver", "--listen", f"127.0.0.1:{self.port}", "--threads", "1",
                               "--stats-json", str(self.work / "frames.jsonl"),
                               "--summary-json", str(self.work / "receiver_summary.json"), "--log-level", "info"))

    def frames_of(self, ssrc: int) -> dict:
        """Frames of stream ``ssrc`` the receiver released and decoded."""
        out, decoded = 0, 0
        with open(self.work / "frames.jsonl") as f:
            for line in f:
                rec = json.loads(line)
                if rec.get("ssrc") == ssrc:
                    out += 1
                    decoded += bool(rec.get("decoded"))
        return {"frames_out": out, "frames_decoded": decoded}

    def summary(self) -> dict:
        path = self.work / "receiver_summary.json"
        return json.loads(path.read_text()) if path.exists() else {}


class _Sink(threading.Thread):
    """The shim's downstream end: counts what the shim forwards, remembers the datagrams of the
    real stream (to check they all came through) and answers some with junk, which fuzzes the
    shim's return path too."""

    def __init__(self, seed: int) -> None:
        super().__init__(daemon=True, name="fuzz-sink")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", free_port()))
        self.sock.settimeout(0.2)
        self.count = 0
        self.watch: set[bytes] = set()
        self.seen: set[bytes] = set()
        self.rng = random.Random(seed)
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            try:
                data, addr = self.sock.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            self.count += 1
            if data in self.watch:
                self.seen.add(data)
            if self.count % 50 == 0:
                self.sock.sendto(self.rng.randbytes(self.rng.randrange(0, 1000)), addr)


class ShimTarget(_Target):
    """jscc-netem (no impairment) forwarding to a sink; its live counters from the control API.
    Datagrams come from one main socket and, one in ``pool_every``, from a pool of more sockets
    than the shim keeps clients, so its client table is full and refuses new sources (never
    evicting an active one) while it is fuzzed."""

    name = "shim"
    pool_size = 32
    pool_every = 500
    admitted = 15  # pool sockets in the client table (jscc-netem --max-clients 16, less the main one)

    def __init__(self, work: Path, seed: int = 0) -> None:
        super().__init__(work)
        self.sink = _Sink(seed)
        self.control = free_port(tcp=True)
        self.pool = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(self.pool_size)]

    def start(self) -> None:
        self.sink.start()
        self._spawn(daemon_cmd("netem", "--listen", f"127.0.0.1:{self.port}",
                               "--forward", f"127.0.0.1:{self.sink.sock.getsockname()[1]}",
                               "--control", f"127.0.0.1:{self.control}", "--stats-interval", "0",
                               "--client-timeout", "3600",
                               "--stats-json", str(self.work / "shim_stats.json"), "--log-level", "info"))
        # the client table one short of its cap (16) before the baseline: the real stream's socket,
        # which also sends most of the fuzzing, takes the last slot (the long --client-timeout
        # keeps it through a quiet spell), the rest of the pool is refused while it is fuzzed
        for s in self.pool[:self.admitted]:
            s.sendto(b"warm-up", self.dest)

    def stats(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.control}/stats", timeout=5) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def live_count(self) -> int | None:
        st = self.stats()
        return None if st is None else st["forward"]["total"]["in"]

    def settled(self) -> bool:
        st = self.stats()
        return st is not None and st["forward"]["queued_packets"] == 0 and st["forward"]["in_delay"] == 0

    def check_forwarding(self, sock: socket.socket, capture: Capture, ssrc: int) -> dict:
        """Replay the real stream through the shim and count how much of it reached the sink."""
        grams = {with_ssrc(d, ssrc) for _, d in capture
                 if not is_rtcp_shaped(d) and len(d) >= 12}
        self.sink.watch, self.sink.seen = grams, set()
        sent = replay(sock, self.dest, capture, ssrc)
        end = time.monotonic() + 5
        while len(self.sink.seen) < len(grams) and time.monotonic() < end:
            time.sleep(0.05)
        return {"sent": sent, "distinct": len(grams), "forwarded": len(self.sink.seen)}

    def stop(self) -> dict:
        out = super().stop()
        self.sink.stopping = True
        self.sink.join(2)
        for s in self.pool:
            s.close()
        path = self.work / "shim_stats.json"
        out["shim_stats"] = json.loads(path.read_text()) if path.exists() else None
        out["sink_received"] = self.sink.count
        self.sink.sock.close()
        return out


TARGETS = {"receiver": ReceiverTarget, "shim": ShimTarget}
