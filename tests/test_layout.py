"""The package's layout is its architecture: imports only run down the layers.

    0  errors, atomic, log, signals              plumbing
    1  wavelets, layers, reversible, network,    the library (and the option types beside it)
       memory, models, options, spatial
    2  config, rundir, data, training,           infrastructure
       resources, outcome
    3  engine                                    the dense engine
    4  apps                                      segment, change, vae
    5  cli, bench, __main__                      command line and benchmarks
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fhcnn"

LAYERS = {
    "errors": 0, "atomic": 0, "log": 0, "signals": 0,
    "fhcnn": 1, "wavelets": 1, "layers": 1, "reversible": 1, "network": 1, "memory": 1,
    "models": 1, "options": 1, "spatial": 1,
    "config": 2, "rundir": 2, "data": 2, "training": 2, "resources": 2, "outcome": 2,
    "engine": 3,
    "apps": 4,
    "cli": 5, "bench": 5, "__main__": 5,
}


def _top(module: str) -> str:
    """``fhcnn.engine.sizes`` -> ``engine``; ``fhcnn`` -> ``fhcnn``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _module_of(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, submodules: bool = False) -> list[str]:
    """Every ``fhcnn`` module ``path`` imports, at any depth (function-level imports too, not
    those under ``if TYPE_CHECKING:``). With ``submodules``, ``from package import name`` names
    the submodule ``package.name`` where there is one."""
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "fhcnn"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "fhcnn":
                if submodules:
                    out += [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]
                elif target == "fhcnn" and node.level:  # ``from .. import log`` names a module
                    out += [f"fhcnn.{a.name}" if a.name in LAYERS else "fhcnn" for a in node.names]
                else:
                    out.append(target)
    return out


FILES = sorted(SRC.rglob("*.py"))
MODULES = {_module_of(p) for p in FILES}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph`` (module -> modules it imports): its strongly connected
    components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            if comp:
                out.append(sorted([v, *comp]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_circles_are_found():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    """No module imports, directly or through others, a module that imports it (function-level
    imports count: a circle hidden inside a function is still a circle)."""
    graph = {_module_of(p): {m for m in _imports(p, submodules=True) if m in MODULES} - {_module_of(p)}
             for p in FILES}
    assert not _circles(graph), f"import circles: {_circles(graph)}"


def test_every_top_level_module_has_a_layer():
    tops = {_top(_module_of(p)) for p in FILES}
    assert tops <= set(LAYERS), f"modules without a layer: {sorted(tops - set(LAYERS))}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_run_down_the_layers(path: Path):
    mine = _top(_module_of(path))
    up = [m for m in _imports(path) if LAYERS[_top(m)] > LAYERS[mine]]
    assert not up, f"{path.relative_to(SRC)} (layer {LAYERS[mine]}) imports higher layers: {up}"


#: Where a command's work lives: a CLI function calls at most one function from these.
WORK = ("fhcnn.apps", "fhcnn.engine", "fhcnn.bench", "fhcnn.rundir", "fhcnn.training", "fhcnn.data",
        "fhcnn.config")


def _work_calls(path: Path) -> dict[str, set[str]]:
    """For each function of a CLI module, the names it calls that it imported from :data:`WORK`."""
    module = _module_of(path)
    package = module.rsplit(".", 1)[0]
    out: dict[str, set[str]] = {}
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, ast.FunctionDef):
            continue
        imported = set()
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                if target.startswith(WORK):
                    imported |= {a.asname or a.name for a in node.names}
        called = {n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        out[fn.name] = called & imported
    return out


def test_cli_modules_hold_no_run_flow():
    """A CLI module parses arguments, calls one function that does the command's work (an
    application's, the benchmarks') and prints: no function of it calls two."""
    flows = {f"{p.name}:{fn}": sorted(names) for p in (SRC / "cli").glob("*.py")
             for fn, names in _work_calls(p).items() if len(names) > 1}
    assert not flows, f"CLI functions calling more than one work function (move the flow into fhcnn.apps): {flows}"


def test_the_run_flow_check_sees_a_flow(tmp_path, monkeypatch):
    text = ("def run(args):\n    from ..apps.segment import load_video_inputs, segment_video\n"
            "    from ._options import config_from_args\n"
            "    inputs = load_video_inputs(args.video)\n    return segment_video(inputs, config_from_args(args))\n")
    fake = tmp_path / "fhcnn" / "cli" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path / "fhcnn")
    assert _work_calls(fake) == {"run": {"load_video_inputs", "segment_video"}}


def test_nothing_outside_the_cli_imports_it():
    """Tests and benchmarks run the command line through ``fhcnn.cli.main`` (and parse command
    lines with ``fhcnn.cli.build_parser``, and test its shared options); no pipeline lives in a
    CLI module, so nothing else imports one (the CLI's own tests, ``tests/cli/``, may)."""
    root = SRC.parents[1]
    allowed = {"fhcnn.cli", "fhcnn.cli._options"}
    bad = []
    files = [p for p in root.joinpath("tests").rglob("*.py") if p.parent.name != "cli"]
    assert len(files) > 40  # the check sees the tests in their layer folders
    for p in [*files, *root.joinpath("benchmarks").glob("*.py")]:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fhcnn.cli"):
                if node.module not in allowed or (node.module == "fhcnn.cli" and
                                                  {a.name for a in node.names} - {"main", "build_parser"}):
                    bad.append(f"{p.name}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                bad += [f"{p.name}: import {a.name}" for a in node.names
                        if a.name.startswith("fhcnn.cli.") and a.name not in allowed]
    assert not bad, bad


def test_the_repository_tracks_no_log_file():
    # two shell logs of a helper's run ('./frun.sh: No such file or directory') were committed
    # at the root by accident (39fb0ad); *.log is ignored
    root = SRC.parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout (an sdist): nothing is tracked")
    tracked = subprocess.run(["git", "ls-files", "--", "*.log"], cwd=root, capture_output=True, text=True, check=True)
    assert tracked.stdout.split() == []
