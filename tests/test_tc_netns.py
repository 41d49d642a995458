"""jscc-netem tc on a real kernel: a veth pair between two network namespaces (made and removed
here), the HTB + u32 DSCP-priority bottleneck overloaded by 50 %, and netem GE loss where the
kernel has sch_netem.  Needs root; skips with the reason otherwise."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

PY = sys.executable
AF41, AF42, AF43, LE = 34, 36, 38, 1
# level -> leaf qdisc handle of the priority plan (see netem/tc.py)
LEAF = {AF41: "10", AF42: "11", AF43: "12", 0: "13", LE: "14"}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def _why_no_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces and change qdiscs"
    if not shutil.which("ip") or not shutil.which("tc"):
        return "iproute2 (ip, tc) is not installed"
    name = f"jscc-probe-{os.getpid()}"
    r = _ip("netns", "add", name, check=False)
    if r.returncode != 0:
        return f"no network namespace support here: {r.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


@dataclass
class NetPair:
    a: str  # namespace holding the bottleneck (sender side)
    b: str  # receiver side
    dev: str = "jv-a"
    a4: str = "10.231.0.1"
    b4: str = "10.231.0.2"
    a6: str = "fd00:231::1"
    b6: str = "fd00:231::2"

    def run(self, ns: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                              timeout=timeout)

    def popen(self, ns: str, *cmd: str) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def netem_cli(self, *args: str) -> subprocess.CompletedProcess:
        # _main, not main: the same code path without run_cli's codec imports (keeps it fast);
        # errors still surface as a non-zero exit with the message.
        code = ("import sys; from jscc_stream.netem.cli import _main; "
                "sys.exit(_main(sys.argv[1:]))")
        return self.run(self.a, PY, "-c", code, *args)

    def leaf_stats(self) -> dict[str, tuple[int, int]]:
        """Per leaf qdisc handle: (packets sent, packets dropped), as the kernel counts them."""
        out = self.run(self.a, "tc", "-s", "qdisc", "show", "dev", self.dev).stdout
        stats = {}
        for m in re.finditer(r"qdisc \w+ (\w+): parent 1:\w+.*?\n\s*Sent \d+ bytes (\d+) pkt "
                             r"\(dropped (\d+)", out):
            stats[m.group(1)] = (int(m.group(2)), int(m.group(3)))
        return stats


@pytest.fixture(scope="module")
def net() -> Iterator[NetPair]:
    reason = _why_no_netns()
    if reason:
        pytest.skip(reason)
    pair = NetPair(f"jscc-a-{os.getpid()}", f"jscc-b-{os.getpid()}")
    try:
        _ip("netns", "add", pair.a)
        _ip("netns", "add", pair.b)
        mac_a, mac_b = "02:00:00:00:23:01", "02:00:00:00:23:02"
        _ip("link", "add", pair.dev, "address", mac_a, "netns", pair.a, "type", "veth", "peer",
            "name", "jv-b", "address", mac_b, "netns", pair.b)
        for ns, dev, v4, v6, peer4, peer6, peer_mac in (
                (pair.a, pair.dev, pair.a4, pair.a6, pair.b4, pair.b6, mac_b),
                (pair.b, "jv-b", pair.b4, pair.b6, pair.a4, pair.a6, mac_a)):
            _ip("-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            _ip("-n", ns, "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            # static neighbours: no ARP/NDP resolution queueing (and dropping) the first packets
            for peer in (peer4, peer6):
                _ip("-n", ns, "neigh", "replace", peer, "lladdr", peer_mac, "dev", dev,
                    "nud", "permanent")
        yield pair
    finally:
        _ip("netns", "del", pair.a, check=False)  # takes the veth pair with it
        _ip("netns", "del", pair.b, check=False)


_RECV = """
import json, sys, threading
from jscc_stream.netem.probe import open_receiver, recv_probe
socks = [open_receiver((h, 9000)) for h in sys.argv[1:]]
print(json.dumps({"listening": len(socks)}), flush=True)
res = [None] * len(socks)
def go(i): res[i] = recv_probe(socks[i], idle_s=0.7, max_s=30).as_dict()
ts = [threading.Thread(target=go, args=(i,)) for i in range(len(socks))]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps(res), flush=True)
"""

_SEND = """
import json, sys, threading
from jscc_stream.netem.probe import send_probe
rate, dur = float(sys.argv[1]), float(sys.argv[2])
res = {}
def go(h): res[h] = send_probe((h, 9000), rate, dur, 500, [38, 1, 36, 34])
ts = [threading.Thread(target=go, args=(h,)) for h in sys.argv[3:]]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps(res), flush=True)
"""


def _start_receiver(net: NetPair, *hosts: str) -> subprocess.Popen:
    proc = net.popen(net.b, PY, "-c", _RECV, *hosts)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the sockets are bound
    assert "listening" in line, proc.stderr.read() if proc.stderr else line
    return proc


def _finish(proc: subprocess.Popen) -> list[dict]:
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_priority_bottleneck_keeps_af41_under_50pct_overload(net: NetPair):
    r = net.netem_cli("tc", "apply", "--dev", net.dev, "--rate", "2mbit", "--priority-dscp")
    assert r.returncode == 0, r.stderr
    try:
        recv = _start_receiver(net, net.b4, net.b6)
        # IPv4 and IPv6 at 1.5 Mbit/s each: 3 Mbit/s offered to a 2 Mbit/s bottleneck
        s = net.run(net.a, PY, "-c", _SEND, "1.5e6", "2.0", net.b4, net.b6)
        assert s.returncode == 0, s.stderr
        sent = json.loads(s.stdout)
        got4, got6 = _finish(recv)
        leaves = net.leaf_stats()
        show = net.netem_cli("tc", "show", "--dev", net.dev)
    finally:
        cleared = net.netem_cli("tc", "clear", "--dev", net.dev)
    assert cleared.returncode == 0, cleared.stderr
    assert "htb" not in net.run(net.a, "tc", "qdisc", "show", "dev", net.dev).stdout
    assert show.returncode == 0 and "htb 1:" in show.stdout
    ratios = {}
    for fam, host, got in (("v4", net.b4, got4), ("v6", net.b6, got6)):
        s_ = {int(k): v for k, v in sent[host].items()}
        g = {int(k): v for k, v in got["by_dscp"].items()}
        assert {int(k): v for k, v in got["by_tos_dscp"].items()} == g  # DSCP intact
        ratios[fam] = {d: g.get(d, 0) / s_[d] for d in (AF41, AF42, AF43, LE)}
    print("delivered ratio per DSCP:", ratios, "leaf (sent, dropped):", leaves)
    for fam, rt in ratios.items():
        assert rt[AF41] >= 0.95, (fam, rt)
        assert rt[LE] <= min(rt[AF41], rt[AF42], rt[AF43]), (fam, rt)
    # the kernel's own counters: LE's queue takes most of the drops, AF41's none to speak of
    drops = {d: leaves[LEAF[d]][1] for d in (AF41, AF42, AF43, LE)}
    assert drops[LE] >= 0.5 * sum(drops.values()), drops
    assert drops[AF41] <= 0.05 * (leaves[LEAF[AF41]][0] + drops[AF41]), drops


def test_ingress_priority_bottleneck_through_ifb(net: NetPair):
    """--ingress shapes what arrives on the receiver's side, through an ifb device."""
    r = net.run(net.b, PY, "-c", "import sys; from jscc_stream.netem.cli import _main; "
                "sys.exit(_main(sys.argv[1:]))", "tc", "apply", "--dev", "jv-b", "--ingress",
                "--rate", "2mbit", "--priority-dscp")
    if r.returncode != 0 and "module ifb" in r.stderr:
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, r.stderr
    try:
        recv = _start_receiver(net, net.b4)
        s = net.run(net.a, PY, "-c", _SEND, "3e6", "1.2", net.b4)
        assert s.returncode == 0, s.stderr
        sent = {int(k): v for k, v in json.loads(s.stdout)[net.b4].items()}
        (got,) = _finish(recv)
    finally:
        c = net.run(net.b, PY, "-c", "import sys; from jscc_stream.netem.cli import _main; "
                    "sys.exit(_main(sys.argv[1:]))", "tc", "clear", "--dev", "jv-b")
    assert c.returncode == 0 and "ifbjv-b" in c.stdout, c.stdout + c.stderr
    g = {int(k): v for k, v in got["by_dscp"].items()}
    ratio = {d: g.get(d, 0) / sent[d] for d in (AF41, AF42, AF43, LE)}
    print("ingress delivered ratio per DSCP:", ratio)
    assert ratio[AF41] >= 0.95 and ratio[LE] <= min(ratio[AF42], ratio[AF43]), ratio


def _tiny_codec(tmp: Path) -> str:
    code = ("import sys, torch\n"
            "from jscc_stream.models.codec import CodecConfig, JSCCCodec\n"
            "from jscc_stream.models.zoo import save_codec\n"
            "torch.manual_seed(0)\n"
            "cfg = CodecConfig(widths=(8, 8, 16, 16), enc_res=(0, 0, 0, 1), dec_res=(0, 0, 0, 1), mca_width=8)\n"
            "print(save_codec(JSCCCodec(cfg), sys.argv[1], 'tiny', {'note': 'untrained, tests only'}))\n")
    r = subprocess.run([PY, "-c", code, str(tmp)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


def test_jscc_send_priority_dscp_stream_through_the_bottleneck(net: NetPair, tmp_path: Path):
    """The real sender, marking blocks AF41/AF42/AF43/LE, into a bottleneck 1/1.5 of its rate."""
    if not (Path(__file__).parents[1] / "sender" / "cli.py").exists():
        pytest.skip("jscc-send is not there yet")
    codec = _tiny_codec(tmp_path)  # untrained is enough: only the packets matter here
    # 320x240 at 30 fps: 8 blocks of 600 bytes a frame -> ~1.25 Mbit/s with RTP/UDP/IP headers
    offered_bps = 1.25e6
    rate = offered_bps / 1.5
    r = net.netem_cli("tc", "apply", "--dev", net.dev, "--rate", f"{int(rate)}bit", "--priority-dscp")
    assert r.returncode == 0, r.stderr
    try:
        recv = _start_receiver(net, net.b4)
        stats = tmp_path / "send.json"
        s = net.run(net.a, PY, "-m", "jscc_stream.sender.cli", "--codec", codec, "--dest",
                    f"{net.b4}:9000", "--priority-dscp", "--duration", "3", "--size", "320x240",
                    "--fps", "30", "--stats-json", str(stats), timeout=60)
        assert s.returncode == 0, s.stderr
        (got,) = _finish(recv)
        leaves = net.leaf_stats()
    finally:
        net.netem_cli("tc", "clear", "--dev", net.dev)
    summary = json.loads(stats.read_text())
    secs = summary["ticks"] / 30
    actual = (summary["bytes_sent"] + 28 * summary["packets_sent"]) * 8 / secs
    assert actual / rate >= 1.3, f"the sender offered only {actual / rate:.2f}x the bottleneck"
    delivered = {d: leaves[LEAF[d]][0] / max(1, sum(leaves[LEAF[d]])) for d in (AF41, AF42, AF43, LE)}
    print("jscc-send overload", round(actual / rate, 2), "delivered per level:", delivered,
          "received by TOS:", got["by_tos_dscp"])
    assert delivered[AF41] >= 0.95, delivered
    assert delivered[LE] <= min(delivered[AF42], delivered[AF43]), delivered
    drops = {d: leaves[LEAF[d]][1] for d in (AF41, AF42, AF43, LE)}
    assert drops[LE] >= 0.5 * sum(drops.values()), drops
    # what the kernel sent out of AF41's queue reached the receiver with its mark
    assert got["by_tos_dscp"].get(str(AF41), 0) >= 0.95 * leaves[LEAF[AF41]][0]


def test_netem_ge_loss_matches_model(net: NetPair):
    """Skips where the kernel lacks sch_netem (this is detected by trying to add it)."""
    r = net.run(net.a, "tc", "qdisc", "add", "dev", net.dev, "root", "netem", "loss", "1%")
    if r.returncode != 0:
        pytest.skip("sch_netem is not available in this kernel ('" + r.stderr.strip().splitlines()[0]
                    + "'); on the host: sudo modprobe sch_netem")
    net.run(net.a, "tc", "qdisc", "del", "dev", net.dev, "root")
    from jscc_stream.netem.loss import GE_10

    r = net.netem_cli("tc", "apply", "--dev", net.dev, "--loss", "ge10")
    assert r.returncode == 0, r.stderr
    try:
        recv = _start_receiver(net, net.b4)
        s = net.run(net.a, PY, "-c", _SEND, "8e6", "2.0", net.b4)  # ~4000 packets
        assert s.returncode == 0, s.stderr
        sent = sum(json.loads(s.stdout)[net.b4].values())
        (got,) = _finish(recv)
    finally:
        net.netem_cli("tc", "clear", "--dev", net.dev)
    loss = 1 - sum(got["by_dscp"].values()) / sent
    print(f"netem GE loss measured {loss:.4f}, model {GE_10.mean_loss:.4f}")
    assert loss == pytest.approx(GE_10.mean_loss, abs=0.03)
