"""DSCP marks by importance, seen by an independent capture (tshark on loopback), not by our own
receiver: every media datagram of a `jscc-send --priority-dscp` stream carries the DSCP of its
block's importance level (RFC 8837 default map), and no datagram exceeds 900 bytes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from jscc_stream.sender.dscp import default_dscp_map

PT_MEDIA = 96


def _why_not() -> str | None:
    if not shutil.which("tshark"):
        return "tshark is not installed (.ci/run installs it: apt-get install tshark)"
    if os.geteuid() != 0:
        return "capturing on loopback needs root"
    return None


@pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")
def test_dscp_by_importance_seen_by_tshark(tmp_path, tiny_weights) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    stop = threading.Event()

    def drain() -> None:
        sink.settimeout(0.2)
        while not stop.is_set():
            try:
                sink.recv(2048)
            except OSError:
                pass

    threading.Thread(target=drain, daemon=True).start()
    cap = subprocess.Popen(["tshark", "-i", "lo", "-l", "-n", "-f", f"udp dst port {port}", "-T", "fields",
                            "-e", "ip.dsfield.dscp", "-e", "frame.len", "-e", "udp.length", "-e", "udp.payload"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        line = ""
        while "Capturing on" not in line and time.monotonic() < deadline:
            line = cap.stderr.readline()
        assert "Capturing on" in line, f"tshark did not start: {line!r}"
        subprocess.run([sys.executable, "-m", "jscc_stream.sender.cli", "--source", "synthetic", "--size",
                        "320x240", "--fps", "10", "--frames", "8", "--codec", str(tiny_weights), "--priority-dscp",
                        "--dest", f"127.0.0.1:{port}", "--log-level", "warning"], check=True, timeout=120)
        time.sleep(1.0)  # let tshark print the last packets
    finally:
        cap.terminate()
        out, _ = cap.communicate(timeout=20)
        stop.set()
        sink.close()
    expected = default_dscp_map(8)
    seen: Counter[tuple[int, int]] = Counter()
    for row in out.splitlines():
        dscp, _, udp_len, payload = (row.split("\t") + ["", "", "", ""])[:4]
        data = bytes.fromhex(payload.replace(":", ""))
        assert int(udp_len) - 8 <= 900, "a datagram exceeds the 900-byte limit"
        if len(data) < 18 or data[1] & 0x7F != PT_MEDIA:
            continue
        level = data[12 + 5]
        seen[(level, int(dscp))] += 1
    assert seen, "no media datagrams captured"
    for (level, dscp), n in seen.items():
        assert dscp == expected[level], f"level {level} carried DSCP {dscp}, expected {expected[level]}"
    assert {lv for lv, _ in seen} == set(range(8))
