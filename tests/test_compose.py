"""docker-compose.yml and the Dockerfile agree with the package: real entry points, matching
ports, and every service's command answers --help outside Docker (no Docker engine needed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extra: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[1]
CORE = ("sender", "shim", "receiver")


def _interpolate(text: str) -> str:
    """Compose's ${VAR:-default} / ${VAR}: the defaults, as a fresh checkout runs them."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(_interpolate((ROOT / "docker-compose.yml").read_text()))


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _options(command: list[str]) -> dict[str, str]:
    """--name=value and --name value pairs of a command line."""
    out: dict[str, str] = {}
    it = iter(range(len(command)))
    for i in it:
        tok = command[i]
        if not tok.startswith("--"):
            continue
        if "=" in tok:
            k, v = tok[2:].split("=", 1)
            out[k] = v
        elif i + 1 < len(command) and not command[i + 1].startswith("--"):
            out[tok[2:]] = command[i + 1]
            next(it, None)
        else:
            out[tok[2:]] = ""
    return out


def _port(hostport: str) -> int:
    return int(hostport.rsplit(":", 1)[1])


def _command(service: dict) -> list[str]:
    cmd = service["command"]
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def test_services_and_entry_points(compose, scripts):
    services = compose["services"]
    assert set(CORE) <= set(services)
    for name, svc in services.items():
        cmd = _command(svc)
        assert cmd[0] in scripts, f"service {name} runs {cmd[0]!r}, not a console script of the package"
        assert "build" in svc or "image" in svc
    assert _command(services["sender"])[0] == "jscc-send"
    assert _command(services["shim"])[0] == "jscc-netem"
    assert _command(services["receiver"])[0] == "jscc-recv"


def test_ports_agree_between_services(compose):
    s = {k: _options(_command(v)) for k, v in compose["services"].items() if k in CORE}
    send, shim, recv = s["sender"], s["shim"], s["receiver"]
    assert _port(send["dest"]) == _port(shim["listen"]), "sender must send into the shim"
    assert _port(shim["forward"]) == _port(recv["listen"]), "the shim must forward to the receiver"
    assert urlparse(recv["web-shim"]).port == _port(shim["control"]), "viewer controls -> shim control API"
    assert send["source"].startswith("webrtc:")
    assert urlparse(recv["web-sender"]).port == _port(send["source"]), "page camera -> sender signalling"
    # all on the same host network (the WebRTC leg needs it): loopback addresses must then agree too
    for svc in compose["services"].values():
        assert svc.get("network_mode") == "host"
    assert send["dest"].rsplit(":", 1)[0] in ("127.0.0.1", "localhost")


def test_kernel_tc_service_has_net_admin(compose):
    for name, svc in compose["services"].items():
        cmd = _command(svc)
        if len(cmd) > 1 and cmd[:2] == ["jscc-netem", "tc"]:
            assert "NET_ADMIN" in svc.get("cap_add", []), f"{name} runs tc without NET_ADMIN"
            assert svc.get("profiles"), f"{name} changes the host's qdiscs: it must be opt-in (a profile)"


def test_dockerfile_builds_cpu_torch_by_default_and_cuda_by_arg():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert re.search(r'^ARG TORCH_INDEX="?https://download\.pytorch\.org/whl/cpu', text, re.M)
    assert 'pip install "${TORCH_SPEC}" --index-url "${TORCH_INDEX}"' in text
    copied = set(re.findall(r"^COPY (\w+) ", text, re.M))
    pkg_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    assert set(pkg_dirs) <= copied, "every package folder must be copied into the image"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not set(pkg_dirs) & set(ignored)


@pytest.mark.parametrize("service", CORE + ("tc",))
def test_each_command_answers_help(compose, service):
    cmd = _command(compose["services"][service])
    exe = shutil.which(cmd[0]) or str(Path(sys.executable).with_name(cmd[0]))
    assert Path(exe).exists(), f"{cmd[0]} is not installed (pip install -e .)"
    # the service's own subcommand path (jscc-netem tc apply), then --help
    words = [c for c in cmd[1:] if not c.startswith("-")]
    res = subprocess.run([exe, *words, "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "usage:" in res.stdout
    # every option the service passes is one the command knows
    for opt in _options(cmd):
        assert f"--{opt}" in res.stdout, f"{service}: {cmd[0]} has no option --{opt}"
