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


def _imports(path: Path) -> list[str]:
    """Every ``fhcnn`` module ``path`` imports, at any depth (function-level imports too)."""
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
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
                if target == "fhcnn" and node.level:  # ``from .. import log`` names a module
                    out += [f"fhcnn.{a.name}" if a.name in LAYERS else "fhcnn" for a in node.names]
                else:
                    out.append(target)
    return out


FILES = sorted(SRC.rglob("*.py"))


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
