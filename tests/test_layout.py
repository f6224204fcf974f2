"""The package's layout is its architecture: imports only run down the layers.

    0  errors, atomic, log                       plumbing
    1  wavelets, layers, reversible, network,    the library (and the option types beside it)
       memory, models, options, spatial
    2  config, rundir, data, training,           infrastructure
       resources
    3  engine                                    the dense engine
    4  apps                                      segment, change, vae
    5  cli, bench, __main__                      command line and benchmarks
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fhcnn"

LAYERS = {
    "errors": 0, "atomic": 0, "log": 0,
    "fhcnn": 1, "wavelets": 1, "layers": 1, "reversible": 1, "network": 1, "memory": 1,
    "models": 1, "options": 1, "spatial": 1,
    "config": 2, "rundir": 2, "data": 2, "training": 2, "resources": 2,
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


def test_cli_modules_only_parse_and_print():
    long = {p.name: n for p in (SRC / "cli").glob("*.py") if (n := len(p.read_text().splitlines())) >= 100}
    assert not long, f"CLI modules of 100 lines or more (move the work into fhcnn.apps): {long}"


def test_nothing_outside_the_cli_imports_it():
    """Tests and benchmarks run the command line through ``fhcnn.cli.main`` (and test its shared
    options); no pipeline lives in a CLI module, so nothing else imports one (the CLI's own
    tests, ``tests/test_cli_*.py``, may)."""
    root = SRC.parents[1]
    allowed = {"fhcnn.cli", "fhcnn.cli._options"}
    bad = []
    files = [p for p in root.joinpath("tests").glob("*.py") if not p.name.startswith("test_cli")]
    for p in [*files, *root.joinpath("benchmarks").glob("*.py")]:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fhcnn.cli"):
                if node.module not in allowed or (node.module == "fhcnn.cli" and
                                                  {a.name for a in node.names} - {"main"}):
                    bad.append(f"{p.name}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                bad += [f"{p.name}: import {a.name}" for a in node.names
                        if a.name.startswith("fhcnn.cli.") and a.name not in allowed]
    assert not bad, bad
