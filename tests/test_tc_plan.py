"""jscc-netem tc: the plan as data, its exact dry-run output (golden files), GE mapping, errors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from jscc_stream.netem import tc
from jscc_stream.netem.cli import main
from jscc_stream.netem.loss import GE_10, GilbertElliott, parse_loss_spec

GOLDEN = Path(__file__).parent / "golden"

CASES = {
    "netem_ge_delay": ["apply", "--dev", "eth0", "--loss", "ge10", "--delay-ms", "40", "--jitter-ms", "10"],
    "netem_uniform": ["apply", "--dev", "eth0", "--loss", "uniform:5%"],
    "rate": ["apply", "--dev", "eth0", "--rate", "2mbit"],
    "priority": ["apply", "--dev", "eth0", "--rate", "2mbit", "--priority-dscp"],
    "priority_ge_delay": ["apply", "--dev", "veth0", "--rate", "5mbit", "--priority-dscp",
                          "--loss", "ge:0.05,0.3,0.2,1", "--delay-ms", "20", "--queue-packets", "8"],
    "ingress_rate_uniform": ["apply", "--dev", "eth0", "--ingress", "--rate", "1mbit",
                             "--loss", "uniform:0.05"],
    "clear": ["clear", "--dev", "eth0"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_dry_run_matches_golden(name, capsys):
    assert main(["tc", *CASES[name], "--dry-run"]) == 0
    out = capsys.readouterr().out
    path = GOLDEN / f"tc_{name}.txt"
    if os.environ.get("JSCC_UPDATE_GOLDEN"):
        path.write_text(out)
    assert out == path.read_text()


def test_ge_maps_to_netem_gemodel_exactly():
    plan = tc.build_plan(tc.TcConfig(dev="eth0", loss=GE_10))
    assert plan.tc == (("qdisc", "add", "dev", "eth0", "root", "handle", "1:", "netem",
                        "loss", "gemodel", "37.8%", "88.3%", "19%", "6.2%", "limit", "1000"),)
    ge = GilbertElliott(0.0123, 0.5, 0.25, 0.999)
    args = tc.build_plan(tc.TcConfig(dev="eth0", loss=ge)).tc[0]
    assert args[8:14] == ("loss", "gemodel", "1.23%", "50%", "75%", "0.1%")
    assert list(args[8:14]) == ge.netem_args()


def test_priority_plan_structure():
    plan = tc.build_plan(tc.TcConfig(dev="eth0", rate_bps=2e6, priority_dscp=True))
    lines = plan.lines()
    # one HTB class per level with strict prio 0..4 and a pfifo leaf each
    for rank, minor in enumerate(("10", "11", "12", "13", "14")):
        assert any(f"classid 1:{minor} htb" in line and f"prio {rank}" in line for line in lines)
        assert any(f"parent 1:{minor} handle {minor}: pfifo limit 10" in line for line in lines)
    # unmarked traffic falls into the default (best-effort) class
    assert lines[0].endswith("htb default 13")
    # IPv4 dsfield and IPv6 traffic-class filters for AF41/AF42/AF43/LE
    for tos, minor in (("0x88", "10"), ("0x90", "11"), ("0x98", "12"), ("0x04", "14")):
        assert any(f"match ip dsfield {tos} 0xfc flowid 1:{minor}" in line for line in lines)
        assert any(f"match ip6 priority {tos} 0xfc flowid 1:{minor}" in line for line in lines)
    assert plan.batch().count("\n") == len(plan.tc)


@pytest.mark.parametrize("args, msg", [
    (["--loss", "eps:0.1,0.2"], "supports loss none"),
    (["--loss", "taildrop"], "supports loss none"),
    (["--loss", "ge:2,0,0,0"], "probability"),
    (["--loss", "bogus"], "unknown loss"),
    (["--rate", "0"], "rate"),
    (["--rate", "lots"], "cannot read rate"),
    (["--priority-dscp"], "needs --rate"),
    (["--delay-ms", "-5"], "delay-ms"),
    ([], "nothing to apply"),
    (["--rate", "1mbit", "--queue-packets", "0"], "queue-packets"),
])
def test_invalid_parameters_are_one_line_exit_2(args, msg, capsys):
    assert main(["tc", "apply", "--dev", "eth0", "--dry-run", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and msg in err, err


def test_invalid_device_name(capsys):
    assert main(["tc", "apply", "--dev", "eth0; reboot", "--rate", "1mbit", "--dry-run"]) == 2
    assert "invalid device name" in capsys.readouterr().err


# --- running, with a fake tc/ip ----------------------------------------------------------------

class FakeRunner:
    """Records commands; answers from a table of (predicate, returncode, stderr)."""

    def __init__(self, failures=()):
        self.calls: list[tuple[list[str], str | None]] = []
        self.failures = list(failures)

    def __call__(self, argv, input=None, **_):
        self.calls.append((list(argv), input))
        for pred, rc, err in self.failures:
            if pred(argv, input):
                return subprocess.CompletedProcess(argv, rc, "", err)
        return subprocess.CompletedProcess(argv, 0, "", "")


def test_apply_clears_then_feeds_the_batch():
    cfg = tc.TcConfig(dev="eth0", rate_bps=1e6, priority_dscp=True)
    run = FakeRunner(failures=[(lambda a, i: a[:3] == ["ip", "link", "show"], 1, "does not exist")])
    plan = tc.apply(cfg, runner=run, check_host=False)
    argvs = [c[0] for c in run.calls]
    assert argvs[0] == ["tc", "qdisc", "del", "dev", "eth0", "root"]
    assert argvs[1] == ["tc", "qdisc", "del", "dev", "eth0", "ingress"]
    assert argvs[-1] == ["tc", "-batch", "-"]
    assert run.calls[-1][1] == plan.batch()


def test_missing_netem_module_is_named_with_the_modprobe_command():
    cfg = tc.TcConfig(dev="eth0", rate_bps=1e6, priority_dscp=True, loss=parse_loss_spec("ge10"))
    run = FakeRunner(failures=[
        (lambda a, i: a[:3] == ["ip", "link", "show"], 1, "does not exist"),
        (lambda a, i: a[:2] == ["tc", "-batch"], 1,
         "Error: Specified qdisc kind is unknown.\nCommand failed -:4\n"),
    ])
    with pytest.raises(tc.TcError) as ei:
        tc.apply(cfg, runner=run, check_host=False)
    msg = str(ei.value)
    assert "sch_netem" in msg and "modprobe sch_netem" in msg and "\n" not in msg
    # rolled back: the device is cleared again after the failure
    argvs = [c[0] for c in run.calls]
    batch_at = argvs.index(["tc", "-batch", "-"])
    assert ["tc", "qdisc", "del", "dev", "eth0", "root"] in argvs[batch_at + 1:]


def test_other_tc_failure_quotes_the_command():
    cfg = tc.TcConfig(dev="eth0", rate_bps=1e6)
    run = FakeRunner(failures=[
        (lambda a, i: a[:3] == ["ip", "link", "show"], 1, "does not exist"),
        (lambda a, i: a[:2] == ["tc", "-batch"], 1, "Error: Exclusivity flag on.\nCommand failed -:2\n"),
    ])
    with pytest.raises(tc.TcError, match="'class add dev eth0 parent 1: classid 1:1 htb.*Exclusivity"):
        tc.apply(cfg, runner=run, check_host=False)


def test_missing_ifb_is_named():
    cfg = tc.TcConfig(dev="eth0", rate_bps=1e6, ingress=True)
    run = FakeRunner(failures=[
        (lambda a, i: a[:3] == ["ip", "link", "show"], 1, "does not exist"),
        (lambda a, i: a[:3] == ["ip", "link", "add"], 2, "Error: Unknown device type.\n"),
    ])
    with pytest.raises(tc.TcError, match="modprobe ifb"):
        tc.apply(cfg, runner=run, check_host=False)


def test_clear_ignores_nothing_to_delete():
    run = FakeRunner(failures=[
        (lambda a, i: a[:3] == ["ip", "link", "show"], 1, "does not exist"),
        (lambda a, i: a[:2] == ["tc", "qdisc"], 2, "Error: Cannot delete qdisc with handle of zero.\n"),
    ])
    assert tc.clear("eth0", runner=run, check_host=False) == []


def test_host_checks(monkeypatch, capsys):
    monkeypatch.setattr(tc, "_has_net_admin", lambda: False)
    assert main(["tc", "apply", "--dev", "lo", "--rate", "1mbit"]) == 2
    err = capsys.readouterr().err
    assert "needs root or CAP_NET_ADMIN" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(tc, "_has_net_admin", lambda: True)
    assert main(["tc", "clear", "--dev", "nosuchdev0"]) == 2
    assert "unknown network device 'nosuchdev0'" in capsys.readouterr().err
    monkeypatch.setattr(tc.shutil, "which", lambda name: None)
    assert main(["tc", "show", "--dev", "lo"]) == 2
    assert "apt-get install iproute2" in capsys.readouterr().err
