"""The kernel path: the shim's impairments as a Linux ``tc`` configuration.

The plan is plain data (argument lists) built from a :class:`TcConfig`, so ``--dry-run`` prints
exactly what ``apply`` feeds to ``tc -batch -``.  Shapes it takes:

* netem only (loss/delay): ``netem`` as the root qdisc;
* ``--rate``: HTB root with one class at the rate and a small pfifo (or netem) leaf;
* ``--priority-dscp``: HTB root, a parent class at the rate, and one child class per importance
  level (AF41, AF42, AF43, default, LE) with HTB ``prio`` 0..4, a 1 % guaranteed floor and the
  full rate as ceiling, so spare capacity goes strictly to the more important level; u32 filters
  on the IPv4 dsfield and the IPv6 traffic class pick the class; each class has its own short
  queue, so under overload the least important level's queue overflows first;
* loss/delay together with a rate: netem becomes the leaf qdisc of each HTB class;
* ``--ingress``: incoming traffic is redirected to an ifb device and shaped there.

Gilbert-Elliott maps to ``loss gemodel p r 1-h 1-k`` through ``GilbertElliott.netem_args()``.
``duplicate`` and ``reorder`` are netem's own: note that netem's reorder sends the chosen packets
*without* the delay (they overtake the ones before them), while the shim's holds them back.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from jscc_stream.netem.dscp import BEST_EFFORT_RANK, PRIORITY_CLASSES, tos_of_dscp
from jscc_stream.netem.loss import ErasureVector, GilbertElliott, LossProcess, NoLoss
from jscc_stream.netem.rates import format_rate

__all__ = ["TcConfig", "TcPlan", "TcError", "build_plan", "clear_plan", "apply", "clear", "show",
           "ifb_name", "MODULE_OF"]

#: kernel module providing each qdisc/filter/action kind the plan uses
MODULE_OF = {"netem": "sch_netem", "htb": "sch_htb", "pfifo": "sch_fifo", "ingress": "sch_ingress",
             "u32": "cls_u32", "mirred": "act_mirred", "ifb": "ifb"}

Runner = Callable[..., subprocess.CompletedProcess]


class TcError(Exception):
    """tc/ip refused the plan or the host cannot run it (shown as one line, exit 2)."""


@dataclass(frozen=True)
class TcConfig:
    dev: str
    loss: LossProcess = field(default_factory=NoLoss)
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_bps: float | None = None
    priority_dscp: bool = False
    ingress: bool = False
    queue_packets: int | None = None  # per class; default 10 with priority, 50 otherwise
    floor_fraction: float = 0.01
    reorder: float = 0.0  # netem: this fraction skips the delay (needs delay_ms > 0)
    duplicate: float = 0.0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,15}", self.dev):
            raise ValueError(f"invalid device name {self.dev!r}")
        for name in ("delay_ms", "jitter_ms"):
            v = getattr(self, name)
            if not (v >= 0 and v < 3.6e6):
                raise ValueError(f"--{name.replace('_', '-')} must be between 0 and 3600000, got {v}")
        if self.rate_bps is not None and not self.rate_bps >= 8:
            raise ValueError("--rate must be at least 8bit")
        if self.priority_dscp and self.rate_bps is None:
            raise ValueError("--priority-dscp needs --rate: priority only matters at a bottleneck")
        if self.queue_packets is not None and not 1 <= self.queue_packets <= 100000:
            raise ValueError("--queue-packets must be between 1 and 100000")
        if not isinstance(self.loss, (NoLoss, GilbertElliott)) and not (
                isinstance(self.loss, ErasureVector) and len(set(self.loss.eps)) == 1):
            raise ValueError(f"tc netem supports loss none, uniform:P and ge:p,r,h,k (or ge10, ge15), "
                             f"not {self.loss}")
        for name in ("reorder", "duplicate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name} must be a probability in [0, 1]")
        if self.reorder and not self.delay_ms > 0:
            raise ValueError("tc netem can only reorder with a delay: --reorder needs --delay-ms "
                             "(the reordered packets skip it)")
        if not self.has_netem and self.rate_bps is None:
            raise ValueError("nothing to apply: give --loss, --delay-ms, --rate or --priority-dscp")

    @property
    def has_netem(self) -> bool:
        return (not isinstance(self.loss, NoLoss) or self.delay_ms > 0 or self.jitter_ms > 0
                or self.reorder > 0 or self.duplicate > 0)

    @property
    def class_queue(self) -> int:
        if self.queue_packets is not None:
            return self.queue_packets
        return 10 if self.priority_dscp else 50


@dataclass(frozen=True)
class TcPlan:
    """Commands in order: ``ip`` commands first (ifb), then the ``tc -batch`` lines (or the
    other way round with ``ip_last``, as clearing does)."""

    dev: str
    target: str  # where the shaping qdiscs go: dev, or its ifb for --ingress
    ip: tuple[tuple[str, ...], ...]
    tc: tuple[tuple[str, ...], ...]
    ip_last: bool = False

    def lines(self) -> list[str]:
        ip = [" ".join(("ip",) + c) for c in self.ip]
        tc = [" ".join(("tc",) + c) for c in self.tc]
        return tc + ip if self.ip_last else ip + tc

    def batch(self) -> str:
        return "".join(" ".join(c) + "\n" for c in self.tc)


def _pct(v: float) -> str:
    return f"{100 * v:.4f}".rstrip("0").rstrip(".") + "%"


def _ms(v: float) -> str:
    return f"{v:.3f}".rstrip("0").rstrip(".") + "ms"


def netem_args(cfg: TcConfig) -> list[str]:
    args: list[str] = []
    if cfg.delay_ms > 0 or cfg.jitter_ms > 0:
        args += ["delay", _ms(cfg.delay_ms)] + ([_ms(cfg.jitter_ms)] if cfg.jitter_ms else [])
    if isinstance(cfg.loss, GilbertElliott):
        args += cfg.loss.netem_args()
    elif isinstance(cfg.loss, ErasureVector):
        args += ["loss", "random", _pct(cfg.loss.eps[0])]
    if cfg.duplicate:
        args += ["duplicate", _pct(cfg.duplicate)]
    if cfg.reorder:
        args += ["reorder", _pct(cfg.reorder)]
    return args


def ifb_name(dev: str) -> str:
    """The ifb device that carries ``dev``'s ingress traffic (interface names are <= 15 chars)."""
    return ("ifb" + dev)[:15]


def _leaf_netem_limit(cfg: TcConfig) -> int:
    """A netem leaf queues the packets still in their delay as well as those waiting for the
    bottleneck: add room for twice the rate's worth of 200-byte packets over delay + jitter."""
    assert cfg.rate_bps is not None
    in_flight = 2 * cfg.rate_bps / 8 / 200 * (cfg.delay_ms + cfg.jitter_ms) / 1000
    return cfg.class_queue + int(-(-in_flight // 1))


def _leaf(cfg: TcConfig, target: str, parent: str, handle: str) -> tuple[str, ...]:
    if cfg.has_netem:
        return ("qdisc", "add", "dev", target, "parent", parent, "handle", handle, "netem",
                *netem_args(cfg), "limit", str(_leaf_netem_limit(cfg)))
    return ("qdisc", "add", "dev", target, "parent", parent, "handle", handle, "pfifo",
            "limit", str(cfg.class_queue))


def _minor(rank: int) -> str:
    """HTB class/leaf-handle minor of an importance rank: 10 (AF41) .. 14 (LE), read as hex."""
    return f"{0x10 + rank:x}"


def _egress(cfg: TcConfig, t: str) -> list[tuple[str, ...]]:
    if cfg.rate_bps is None:  # netem alone
        return [("qdisc", "add", "dev", t, "root", "handle", "1:", "netem", *netem_args(cfg),
                 "limit", "1000")]
    rate = format_rate(cfg.rate_bps)
    if not cfg.priority_dscp:
        return [("qdisc", "add", "dev", t, "root", "handle", "1:", "htb", "default", "1"),
                ("class", "add", "dev", t, "parent", "1:", "classid", "1:1", "htb", "rate", rate,
                 "ceil", rate, "quantum", "1514"),
                _leaf(cfg, t, "1:1", "10:")]
    floor = format_rate(max(8000.0, cfg.rate_bps * cfg.floor_fraction))
    cmds = [("qdisc", "add", "dev", t, "root", "handle", "1:", "htb", "default",
             _minor(BEST_EFFORT_RANK)),
            ("class", "add", "dev", t, "parent", "1:", "classid", "1:1", "htb", "rate", rate,
             "ceil", rate, "quantum", "1514")]
    for c in PRIORITY_CLASSES:
        minor = _minor(c.rank)
        cmds.append(("class", "add", "dev", t, "parent", "1:1", "classid", f"1:{minor}", "htb",
                     "rate", floor, "ceil", rate, "prio", str(c.rank), "quantum", "1514"))
        cmds.append(_leaf(cfg, t, f"1:{minor}", f"{minor}:"))
    for c in PRIORITY_CLASSES:
        for d in c.dscps:
            cmds.append(("filter", "add", "dev", t, "parent", "1:", "protocol", "ip", "prio", "1",
                         "u32", "match", "ip", "dsfield", f"0x{tos_of_dscp(d):02x}", "0xfc",
                         "flowid", f"1:{_minor(c.rank)}"))
    for c in PRIORITY_CLASSES:
        for d in c.dscps:
            cmds.append(("filter", "add", "dev", t, "parent", "1:", "protocol", "ipv6", "prio", "2",
                         "u32", "match", "ip6", "priority", f"0x{tos_of_dscp(d):02x}", "0xfc",
                         "flowid", f"1:{_minor(c.rank)}"))
    return cmds


def build_plan(cfg: TcConfig) -> TcPlan:
    """The commands that set ``cfg`` up on a device with no qdiscs of ours."""
    if not cfg.ingress:
        return TcPlan(cfg.dev, cfg.dev, (), tuple(_egress(cfg, cfg.dev)))
    ifb = ifb_name(cfg.dev)
    ip = (("link", "add", ifb, "type", "ifb"), ("link", "set", "dev", ifb, "up"))
    tc = _egress(cfg, ifb) + [
        ("qdisc", "add", "dev", cfg.dev, "handle", "ffff:", "ingress"),
        ("filter", "add", "dev", cfg.dev, "parent", "ffff:", "protocol", "all", "u32", "match",
         "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb),
    ]
    return TcPlan(cfg.dev, ifb, ip, tuple(tc))


def clear_plan(dev: str) -> TcPlan:
    """What ``clear`` runs (each command on its own; 'nothing to delete' is not an error)."""
    ifb = ifb_name(dev)
    return TcPlan(dev, dev, (("link", "del", ifb),),
                  (("qdisc", "del", "dev", dev, "root"), ("qdisc", "del", "dev", dev, "ingress")),
                  ip_last=True)


# --- running it -----------------------------------------------------------------------------------

def _has_net_admin() -> bool:
    """CAP_NET_ADMIN (bit 12) in our effective set: root, or a container with NET_ADMIN."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> 12 & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def _check_host(dev: str, need_admin: bool) -> None:
    if shutil.which("tc") is None:
        raise TcError("the 'tc' command is not installed (Debian/Ubuntu: apt-get install iproute2)")
    if need_admin and not _has_net_admin():
        raise TcError("changing qdiscs needs root or CAP_NET_ADMIN: run with sudo, or in Docker "
                      "with cap_add: [NET_ADMIN]")
    try:
        socket.if_nametoindex(dev)
    except OSError:
        raise TcError(f"unknown network device {dev!r} (see 'ip link' for the names here)") from None


_NOTHING_TO_DELETE = re.compile(r"No such file|handle of zero|Invalid handle|Cannot find device \"ifb"
                                r"|does not exist|Cannot find specified qdisc", re.I)


def _explain(cmd: Sequence[str], msg: str) -> str:
    """One line saying what failed and, for a missing kernel feature, how to load it."""
    msg = " ".join(msg.split())
    kind = None
    if "qdisc kind is unknown" in msg or "Unknown qdisc" in msg:
        for k in ("netem", "htb", "pfifo", "ingress"):
            if k in cmd:
                kind = k
                break
    elif re.search(r"filter.*(unknown|not found)|Unknown filter", msg, re.I):
        kind = "u32"
    elif re.search(r"action|mirred", msg, re.I) and "mirred" in cmd:
        kind = "mirred"
    elif "type ifb" in " ".join(cmd) and re.search(r"unknown|not supported|Operation", msg, re.I):
        kind = "ifb"
    if kind:
        mod = MODULE_OF[kind]
        return (f"this kernel has no '{kind}' support (module {mod}); load it on the host with "
                f"'sudo modprobe {mod}' (in Docker: on the host, not in the container)")
    return f"'{' '.join(cmd)}' failed: {msg or 'no message'}"


def _run(runner: Runner, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return runner(argv, input=stdin, capture_output=True, text=True, check=False)


def clear(dev: str, runner: Runner = subprocess.run, check_host: bool = True) -> list[str]:
    """Remove our root/ingress qdiscs and the ifb; returns what was actually removed."""
    if check_host:
        _check_host(dev, need_admin=True)
    plan = clear_plan(dev)
    removed = []
    for tool, cmds in (("tc", plan.tc), ("ip", plan.ip)):
        for c in cmds:
            if tool == "ip" and not _link_exists(runner, c[2]):
                continue
            r = _run(runner, [tool, *c])
            if r.returncode == 0:
                removed.append(" ".join((tool, *c)))
            elif not _NOTHING_TO_DELETE.search(r.stderr or ""):
                raise TcError(_explain(c, r.stderr))
    return removed


def _link_exists(runner: Runner, name: str) -> bool:
    return _run(runner, ["ip", "link", "show", "dev", name]).returncode == 0


def apply(cfg: TcConfig, runner: Runner = subprocess.run, check_host: bool = True) -> TcPlan:
    """Replace whatever qdiscs ``cfg.dev`` has with the plan; on failure leave it cleared."""
    if check_host:
        _check_host(cfg.dev, need_admin=True)
    plan = build_plan(cfg)
    clear(cfg.dev, runner, check_host=False)
    try:
        for c in plan.ip:
            r = _run(runner, ["ip", *c])
            if r.returncode != 0:
                raise TcError(_explain(c, r.stderr))
        r = _run(runner, ["tc", "-batch", "-"], plan.batch())
        if r.returncode != 0:
            m = re.search(r"Command failed -:(\d+)", r.stderr or "")
            idx = int(m.group(1)) - 1 if m else -1
            cmd = plan.tc[idx] if 0 <= idx < len(plan.tc) else ("-batch",)
            msg = "\n".join(line for line in (r.stderr or "").splitlines()
                            if not line.startswith("Command failed"))
            raise TcError(_explain(cmd, msg))
    except TcError:
        try:
            clear(cfg.dev, runner, check_host=False)
        except TcError:
            pass
        raise
    return plan


def show(dev: str, runner: Runner = subprocess.run) -> str:
    """qdiscs (with counters), classes and filters on ``dev`` and its ifb, as tc prints them."""
    _check_host(dev, need_admin=False)
    out = []
    devs = [dev] + ([ifb_name(dev)] if _link_exists(runner, ifb_name(dev)) else [])
    for d in devs:
        for what in (["-s", "qdisc", "show", "dev", d], ["-s", "class", "show", "dev", d],
                     ["filter", "show", "dev", d], ["filter", "show", "dev", d, "parent", "ffff:"]):
            r = _run(runner, ["tc", *what])
            text = (r.stdout or "").strip()
            if r.returncode != 0:
                text = (r.stderr or "").strip()
            if text:
                out.append(f"# tc {' '.join(what)}\n{text}")
    return "\n".join(out) + "\n"
