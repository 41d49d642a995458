"""Marked UDP probe traffic: check what a bottleneck (shim or tc) does to each DSCP class.

``send`` paces fixed-size datagrams at a given rate, cycling through a list of DSCPs so each
gets an equal share; ``recv`` counts what arrives per DSCP (as marked in the payload and as seen
in the IP header).  Both print JSON so scripts and tests can compare the two.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass

from jscc_stream.netem.dscp import dscp_of_tos, tos_of_dscp
from jscc_stream.udp import ANCILLARY_SIZE, MAX_DATAGRAM, read_tos, resolve, set_tos, udp_socket

__all__ = ["MAGIC", "send_probe", "recv_probe", "ProbeResult"]

MAGIC = b"JSCP"
_HDR = struct.Struct("!4sIB")


@dataclass
class ProbeResult:
    by_dscp: dict[int, int]  # probe datagrams by the DSCP their sender meant
    by_tos_dscp: dict[int, int]  # all datagrams by the DSCP in their IP header
    other: int  # datagrams that are not probes

    def as_dict(self) -> dict:
        return {"by_dscp": {str(k): v for k, v in sorted(self.by_dscp.items())},
                "by_tos_dscp": {str(k): v for k, v in sorted(self.by_tos_dscp.items())},
                "other": self.other}


def send_probe(dest: tuple[str, int], rate_bps: float, duration_s: float, size: int,
               dscps: list[int]) -> dict[int, int]:
    """Send for ``duration_s`` at ``rate_bps`` (IP+UDP headers included); returns counts sent."""
    if size < _HDR.size:
        raise ValueError(f"probe datagrams must be at least {_HDR.size} bytes")
    family, addr = resolve(*dest)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    overhead = 48 if family == socket.AF_INET6 else 28
    interval = (size + overhead) * 8 / rate_bps
    n = max(1, int(duration_s / interval))
    pad = bytes(size - _HDR.size)
    sent: Counter[int] = Counter()
    t0 = time.perf_counter()
    for i in range(n):
        d = dscps[i % len(dscps)]
        set_tos(sock, tos_of_dscp(d))
        wait = t0 + i * interval - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        try:
            sock.sendto(_HDR.pack(MAGIC, i, d) + pad, addr)
            sent[d] += 1
        except OSError:  # a full qdisc may refuse it: not sent
            pass
    sock.close()
    return dict(sent)


def recv_probe(sock: socket.socket, idle_s: float, max_s: float) -> ProbeResult:
    """Count probe datagrams until ``idle_s`` pass without one (after the first) or ``max_s``."""
    by_dscp: Counter[int] = Counter()
    by_tos: Counter[int] = Counter()
    other = 0
    start = time.monotonic()
    got_any = False
    while time.monotonic() - start < max_s:
        sock.settimeout(idle_s if got_any else max(0.01, max_s - (time.monotonic() - start)))
        try:
            data, anc, _, _ = sock.recvmsg(MAX_DATAGRAM, ANCILLARY_SIZE)
        except socket.timeout:
            break
        got_any = True
        by_tos[dscp_of_tos(read_tos(anc) or 0)] += 1  # every datagram, probe or not (e.g. jscc-send)
        if len(data) >= _HDR.size and data[:4] == MAGIC:
            by_dscp[_HDR.unpack_from(data)[2]] += 1
        else:
            other += 1
    return ProbeResult(dict(by_dscp), dict(by_tos), other)


def open_receiver(listen: tuple[str, int]) -> socket.socket:
    family, addr = resolve(*listen, passive=True)
    return udp_socket(family, addr, rcvbuf=4 << 20, recv_tos=True, blocking=True)


def run_recv(listen: tuple[str, int], idle_s: float, max_s: float) -> ProbeResult:
    sock = open_receiver(listen)
    print(json.dumps({"listening": list(sock.getsockname()[:2])}), flush=True)
    try:
        return recv_probe(sock, idle_s, max_s)
    finally:
        sock.close()

