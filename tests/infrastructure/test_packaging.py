"""What ``pip install fhcnn`` brings is what the code imports: every third-party module the
package imports is declared in ``pyproject.toml`` (a dependency or an extra), and every module
the shared engine imports (the run folder, the chunked stores, training, configs; used by every
command on plain inputs) is a dependency, never only an extra."""

from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "fhcnn"
#: Import names whose distribution is named otherwise.
DISTRIBUTION = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn", "skimage": "scikit-image"}
#: The engine every command runs on (paths under src/fhcnn).
ENGINE = ("engine/", "training/", "data/lazy/", "rundir/", "atomic.py", "config.py", "resources.py")
#: Peers the benchmarks compare with when they are installed (never needed).
OPTIONAL_PEERS = {"memcnn", "iunets"}


def _requirements() -> tuple[set[str], set[str]]:
    """``(dependencies, extras)``: distribution names, lower case."""
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower() for r in reqs}

    extras = set().union(*(names(v) for v in project["optional-dependencies"].values()))
    return names(project["dependencies"]), extras


def _imports() -> dict[str, set[str]]:
    """Third-party top-level modules imported anywhere in the package -> the files importing them."""
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top not in sys.stdlib_module_names and top != "fhcnn":
                    found.setdefault(top, set()).add(path.relative_to(SRC).as_posix())
    return found


def test_every_imported_module_is_declared_and_the_engines_are_dependencies():
    deps, extras = _requirements()
    imports = _imports()
    assert {"torch", "numpy", "zarr"} <= imports.keys()  # the scan sees the package
    for module, files in sorted(imports.items()):
        if module in OPTIONAL_PEERS:
            assert all(f.startswith("bench/") for f in files), (module, files)
            continue
        dist = DISTRIBUTION.get(module, module).lower()
        assert dist in deps | extras, f"{module} (imported by {sorted(files)}) is not in pyproject.toml"
        engine = sorted(f for f in files if f.startswith(ENGINE))
        assert not engine or dist in deps, f"{module} is imported by the engine ({engine}) but is only an extra"


def test_a_type_checker_refuses_a_misspelt_public_name(tmp_path):
    # `import fhcnn` imports its public names when first used (a module __getattr__); a type
    # checker that saw that __getattr__ took every attribute of fhcnn as Any, a typo included
    api = pytest.importorskip("mypy.api")
    user = tmp_path / "user.py"
    user.write_text("import fhcnn\nfrom fhcnn import HaarDWT, LearnableWavelet\n\nnet: fhcnn.HyperbolicNetwork\n"
                    "haar: HaarDWT = fhcnn.HaarDWT(2)\nfhcnn.HyperbolicNetwrok\n")
    ini = tmp_path / "mypy.ini"  # fhcnn of this checkout; torch's own code is not what is checked
    ini.write_text(f"[mypy]\nmypy_path = {SRC.parent}\nignore_missing_imports = True\n"
                   "[mypy-torch.*]\nfollow_imports = skip\n")
    out, err, status = api.run([str(user), "--config-file", str(ini), "--no-incremental", "--cache-dir", os.devnull,
                                "--no-error-summary", "--hide-error-context"])
    assert (out.strip(), err, status) == (
        f'{user}:6: error: Module has no attribute "HyperbolicNetwrok"; maybe "HyperbolicNetwork"?  [attr-defined]',
        "", 1)
