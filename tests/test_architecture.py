"""The layout's rules (docs/architecture.md), read from the source with ``ast``: which package may
import which, no import cycles, no function longer than 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> import prefix (pyproject's package-dir: the top-level folders live under jscc_stream)
PACKAGES = {"jscc_stream": "jscc_stream", "models": "jscc_stream.models", "netem": "jscc_stream.netem",
            "proto": "jscc_stream.proto", "sender": "jscc_stream.sender", "receiver": "jscc_stream.receiver",
            "relay": "jscc_stream.relay"}
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for folder, prefix in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name.endswith("_pb2.py"):
                continue
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([prefix, *parts])] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> set[str]:
    """Project modules ``name`` imports (at any depth in the file: lazy imports count too)."""
    tree = ast.parse(MODULES[name].read_text())
    base = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = base
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                mod = f"{pkg}.{node.module}" if node.module else pkg
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _is_cli(name: str) -> bool:
    """A command's module: its job is argv -> exit code (and it may import other commands)."""
    return name.endswith(".cli") or name.endswith("__main__") or name in (
        "jscc_stream.demo", "jscc_stream.models.train", "jscc_stream.models.evaluate")


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_graph_sees_the_whole_project():
    assert "jscc_stream.proto.packetizer" in MODULES and "jscc_stream.bench.compare.runner" in MODULES
    assert "jscc_stream.proto.packet" in GRAPH["jscc_stream.proto.packetizer"]


@pytest.mark.parametrize("package", ["jscc_stream.sender", "jscc_stream.receiver", "jscc_stream.relay"])
def test_nothing_imports_sender_or_receiver(package):
    offenders = [f"{m} -> {t}" for m, deps in GRAPH.items() if not _in(m, package) for t in deps if _in(t, package)]
    assert not offenders, offenders


def test_proto_imports_neither_netem_nor_models():
    offenders = [f"{m} -> {t}" for m, deps in GRAPH.items() if _in(m, "jscc_stream.proto") for t in deps
                 if _in(t, "jscc_stream.netem") or _in(t, "jscc_stream.models")]
    assert not offenders, offenders


def test_shared_modules_import_no_daemon_package():
    """jscc_stream's shared pieces (errors, metrics, udp, sources, ...) sit below the folders."""
    shared = [m for m in MODULES if m.count(".") == 1 and m.startswith("jscc_stream.")
              and m not in ("jscc_stream.demo", "jscc_stream.pipeline")]
    offenders = [f"{m} -> {t}" for m in shared for t in GRAPH[m]
                 if any(_in(t, f"jscc_stream.{p}") for p in ("models", "netem", "proto", "sender", "receiver", "relay"))]
    assert not offenders, offenders


def test_only_commands_import_commands():
    offenders = [f"{m} -> {t}" for m, deps in GRAPH.items() if not _is_cli(m) for t in deps if _is_cli(t)]
    assert not offenders, offenders


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(GRAPH[node]):
            if dep == node.rpartition(".")[0] and _is_package(dep):
                continue  # a package's __init__ is not a dependency its modules add
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def test_no_function_longer_than_80_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


# The erasure mask is called ``received`` (1 = arrived) everywhere; the names it had before.
MASK_ALIASES = {"keep", "mask", "masks", "keep_mask", "erasure_mask"}
# Being rewritten at the time of the rename; the next change there takes the one name.
MASK_ALIASES_PENDING: set[str] = set()  # modules still being renamed (none now)


def _mask_aliases(name: str) -> list[str]:
    """Functions of module ``name`` named, or with a parameter named, as the mask used to be."""
    path, out = MODULES[name], []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            out += [f"{path.relative_to(ROOT)}:{node.lineno} {node.name}({a.arg})" for a in args if a.arg in MASK_ALIASES]
            out += [f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] if node.name in MASK_ALIASES else []
    return out


def test_the_erasure_mask_has_one_name():
    offenders = [o for name in MODULES if name not in MASK_ALIASES_PENDING for o in _mask_aliases(name)]
    assert not offenders, offenders


def test_every_receiver_plays_out_by_the_one_rule():
    """jscc-recv's reassembler and the comparison's baseline receiver both call playout_count."""
    callers = {name for name, path in MODULES.items() for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "playout_count"}
    assert {"jscc_stream.proto.reassembly", "jscc_stream.bench.compare.stream"} <= callers, callers


def test_the_relay_forwards_without_the_codecs():
    """The relay reads headers only: it imports neither the codecs nor the network emulator."""
    offenders = [f"{m} -> {t}" for m, deps in GRAPH.items() if _in(m, "jscc_stream.relay") for t in deps
                 if _in(t, "jscc_stream.models") or _in(t, "jscc_stream.netem")]
    assert not offenders, offenders
