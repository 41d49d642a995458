"""One jscc-send, one jscc-relay, three jscc-recv (levels 2, 4 and all) as processes on loopback,
each receiver behind a tap: a UDP forwarder in this test that timestamps every datagram and
reads its RTP header itself.  What the taps saw, not the relay's counters, shows that each
receiver gets only its levels (exactly the all-levels receiver's packets of those levels), at
a rate that grows with its levels; that each decodes every frame; and that a receiver that
leaves (RTCP BYE) gets nothing more within 1 s, and one that falls silent nothing more once
the relay's 1 s timeout passed."""

from __future__ import annotations

import json
import selectors
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from jscc_stream.procs import daemon_cmd, free_port, stop_process, stop_processes, wait_for_line

RELAY_MEASURE = "relay-measure.json"  # what the run measured, next to the daemons' logs


@dataclass
class Tap:
    """Between the relay and one receiver: the receiver joins at ``front``; the relay sees the
    tap's ``back`` socket as the receiver."""

    relay: tuple
    front: socket.socket = field(default_factory=lambda: _bound(free_port()))
    back: socket.socket = field(default_factory=lambda: _bound(0))
    receiver: tuple | None = None
    down: list[tuple[float, int, int, int, int]] = field(default_factory=list)  # t, pt, ssrc, seq, level
    down_bytes: list[tuple[float, int]] = field(default_factory=list)
    sized: list[tuple[float, int, int, int, int, int]] = field(default_factory=list)  # down's, and the size
    byes: list[float] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.front.getsockname()[1]

    def on_front(self) -> None:  # receiver -> relay
        data, addr = self.front.recvfrom(65535)
        self.receiver = addr
        if _rtcp_types(data) & {203}:
            self.byes.append(time.monotonic())
        self.back.sendto(data, self.relay)

    def on_back(self) -> None:  # relay -> receiver
        data = self.back.recv(65535)
        t = time.monotonic()
        self.down_bytes.append((t, len(data)))
        pt = data[1] & 0x7F
        if not 192 <= data[1] <= 223 and pt in (96, 98, 99):
            ssrc, = struct.unpack_from("!I", data, 8)
            seq, = struct.unpack_from("!H", data, 2)
            level = data[12 + {96: 5, 98: 4, 99: 10}[pt]]
            self.down.append((t, pt, ssrc, seq, level))
            self.sized.append((t, pt, ssrc, seq, level, len(data)))
        if self.receiver is not None:
            self.front.sendto(data, self.receiver)


def _bound(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("127.0.0.1", port))
    s.setblocking(False)
    return s


def _rtcp_types(data: bytes) -> set[int]:
    """Packet types in a compound RTCP datagram (empty for RTP)."""
    out, pos = set(), 0
    while pos + 4 <= len(data) and 192 <= data[pos + 1] <= 223:
        out.add(data[pos + 1])
        pos += 4 + 4 * struct.unpack_from("!H", data, pos + 2)[0]
    return out


@dataclass
class Quiet:
    """A subscriber that falls silent without a BYE (a crashed receiver): the relay's timeout."""

    sock: socket.socket = field(default_factory=lambda: _bound(free_port()))
    arrivals: list[tuple[float, int | None]] = field(default_factory=list)  # t, level (None: not media)
    last_word: float = 0.0

    def subscribe(self, relay: tuple, levels: int) -> None:
        from jscc_stream.proto.rtcp import build_report
        from jscc_stream.proto.stream_pb2 import Feedback, Subscription

        self.sock.sendto(build_report(1, [], Feedback(subscription=Subscription(levels=levels)).SerializeToString()),
                         relay)
        self.last_word = time.monotonic()

    def on_data(self) -> None:
        data = self.sock.recv(65535)
        media = not 192 <= data[1] <= 223 and data[1] & 0x7F in (98, 99)
        self.arrivals.append((time.monotonic(), data[12 + (4 if data[1] & 0x7F == 98 else 10)] if media else None))


def _run_taps(taps: list[Tap], quiet: Quiet, stop: threading.Event) -> None:
    sel = selectors.DefaultSelector()
    for tap in taps:
        sel.register(tap.front, selectors.EVENT_READ, tap.on_front)
        sel.register(tap.back, selectors.EVENT_READ, tap.on_back)
    sel.register(quiet.sock, selectors.EVENT_READ, quiet.on_data)
    while not stop.is_set():
        for key, _ in sel.select(0.05):
            try:
                key.data()
            except OSError:  # a receiver gone: ICMP port unreachable
                pass


def _rate_kbps(tap: Tap, t0: float, t1: float) -> float:
    return sum(n for t, n in tap.down_bytes if t0 <= t < t1) * 8 / (t1 - t0) / 1000


def _measure(taps: dict[int, Tap], quiet: Quiet, sender: dict, summaries: dict[int, dict], leaver: int) -> dict:
    media = {n: tap.down for n, tap in taps.items()}
    t0 = min(t for t, *_ in media[0])
    leave_bye = taps[leaver].byes[0]
    return {
        "levels_seen": {n: sorted({lv for *_, lv in m}) for n, m in media.items()},
        "all_levels_receiver_bytes": {f"{kind} level {lv}": sum(len_ for t, pt, _, _, lv_, len_ in taps[0].sized
                                                               if pt == ptype and lv_ == lv and t0 <= t < leave_bye)
                                      for kind, ptype in (("media", 98), ("parity", 99)) for lv in range(8)
                                      if any(pt == ptype and lv_ == lv for _, pt, _, _, lv_, _ in taps[0].sized)},
        "kbps_while_all_joined": {n: round(_rate_kbps(tap, t0, leave_bye), 1) for n, tap in taps.items()},
        "after_bye_s": round(max([t for t, *_ in media[leaver] if t > leave_bye], default=leave_bye) - leave_bye, 4),
        "packets_after_bye": sum(t > leave_bye for t, *_ in media[leaver]),
        "quiet_levels_seen": sorted({lv for _, lv in quiet.arrivals if lv is not None}),
        "after_silence_s": round(max(t for t, _ in quiet.arrivals) - quiet.last_word, 3),
        "receivers": {n: {k: s.get(k) for k in ("frames_out", "frames_decoded", "frames_undecodable",
                                                "frames_predicted", "frames_no_reference", "frames_skipped")}
                      for n, s in summaries.items()},
        "sender_references": sender.get("references"),
    }


def test_three_receivers_get_their_levels_decode_every_frame_and_a_leaver_stops(tmp_path: Path) -> None:
    up, down = free_port(), free_port()
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("relay", "sender", "r2", "r4", "r0")}
    relay = subprocess.Popen(daemon_cmd("relay", "--listen", f"127.0.0.1:{up}", "--listen-receivers",
                                        f"127.0.0.1:{down}", "--stats-json", str(tmp_path / "relay.json")),
                             stdout=logs["relay"], stderr=subprocess.STDOUT)
    taps = {n: Tap(("127.0.0.1", down)) for n in (2, 4, 0)}
    quiet = Quiet()
    stop = threading.Event()
    thread = threading.Thread(target=_run_taps, args=(list(taps.values()), quiet, stop), daemon=True)
    thread.start()
    recv = {n: subprocess.Popen(daemon_cmd("receiver", "--listen", f"127.0.0.1:{free_port()}", "--join",
                                           f"127.0.0.1:{tap.port}", "--levels", str(n), "--codec", "video",
                                           "--latency-ms", "150", "--decode-queue", "8", "--summary-json", str(tmp_path / f"r{n}.json")),
                                stdout=logs[f"r{n}"], stderr=subprocess.STDOUT) for n, tap in taps.items()}
    sender = None
    try:
        wait_for_line(tmp_path / "relay.log", "listening on", relay, 60)
        for n, p in recv.items():
            wait_for_line(tmp_path / f"r{n}.log", "listening on", p, 120)
        sender = subprocess.Popen(daemon_cmd("sender", "--dest", f"127.0.0.1:{up}", "--size", "160x128", "--fps",
                                             "10", "--duration", "7", "--codec", "video", "--stats-json",
                                             str(tmp_path / "sender.json")), stdout=logs["sender"],
                                  stderr=subprocess.STDOUT)
        wait_for_line(tmp_path / "sender.log", "sending ", sender, 120)
        for _ in range(10):  # for 3 s, then silence (no BYE)
            quiet.subscribe(("127.0.0.1", down), 0)  # all levels: it never becomes the reference receiver
            time.sleep(0.3)
        time.sleep(1.0)
        stop_process(recv[4])  # SIGINT: it says BYE and leaves mid-stream
        sender.wait(60)
        time.sleep(1.0)
    finally:
        stop_processes([sender, recv[2], recv[0], relay])
        stop.set()
        thread.join(5)
        for f in logs.values():
            f.close()
    summaries = {n: json.loads((tmp_path / f"r{n}.json").read_text()) for n in taps}
    m = _measure(taps, quiet, json.loads((tmp_path / "sender.json").read_text()), summaries, leaver=4)
    (tmp_path / RELAY_MEASURE).write_text(json.dumps(m, indent=2))
    print(json.dumps(m))
    # only the subscribed levels, read off the wire, and exactly those of the all-levels receiver's packets
    assert set(m["levels_seen"][2]) == {0, 1} and set(m["levels_seen"][4]) <= {0, 1, 2, 3}
    assert max(m["levels_seen"][0]) >= 4
    everything = {(ssrc, seq): lv for _, _, ssrc, seq, lv in taps[0].down}
    assert {(s, q) for _, _, s, q, _ in taps[2].down} == {k for k, lv in everything.items() if lv < 2}
    kbps = m["kbps_while_all_joined"]
    assert kbps[2] < kbps[4] < kbps[0]
    # every frame decoded, P-frames included, from the subscribed levels only; on a loaded machine
    # a decoder that falls behind skips a frame, and the frames predicted from it wait for the
    # intra frame the relay then asks for (at most one a second, 10 frames): nothing else may fail
    for n, s in m["receivers"].items():
        assert s["frames_out"] > 20 and s["frames_predicted"] > 0, (n, s)
        assert s["frames_undecodable"] == s["frames_no_reference"] <= 10 * s["frames_skipped"], (n, s)
    refs = m["sender_references"]
    assert refs["mismatches"] == 0 and refs["confirmed"] > 0
    # the leaver: nothing after its BYE (the relay drops it at once; the bound is 1 s)
    assert m["after_bye_s"] < 1.0
    # a receiver that falls silent: dropped after --timeout (1 s), checked every 50 ms
    assert set(m["quiet_levels_seen"]) <= set(m["levels_seen"][0]) and max(m["quiet_levels_seen"]) >= 4
    assert 0.9 < m["after_silence_s"] < 1.0 + 0.2
