#!/usr/bin/env python3
"""Set up a virtual environment and run fhcnn in it; needs nothing but python3.

    python3 dev.py demo [ARGS]    create .venv (torch==2.13.0 CPU + fhcnn), run `fhcnn demo`
    python3 dev.py test [ARGS]    create .venv with the dev extras, run the test suite (pytest)
    python3 dev.py lint           ruff (lint) and mypy (types), as configured in pyproject.toml
    python3 dev.py fhcnn ARGS     run any fhcnn command in the environment

Set FHCNN_VENV to use another folder than .venv. Installation is skipped when the
environment is already up to date (it re-installs when pyproject.toml changes).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("FHCNN_VENV", ROOT / ".venv"))
TORCH = "torch==2.13.0"  # pinned: an unpinned torch pulls a multi-GB CUDA build


def _bin(name: str) -> Path:
    return VENV / ("Scripts" if os.name == "nt" else "bin") / name


_interrupted = False  # Ctrl-C reached this process


def _call(*cmd: str | Path, cwd: Path | None = None) -> int:
    """Run ``cmd`` and return its exit status. Ctrl-C reaches it too (the terminal sends it to
    every process of the command line) and it answers for itself (``fhcnn``: one line, exit 130;
    pytest: its summary): this process waits for its end instead of printing a traceback."""
    def pressed(signum: int, frame: object) -> None:
        global _interrupted
        _interrupted = True

    # noted, not raised, from before the command starts until it ended: a KeyboardInterrupt
    # inside Popen's start would leave the command unwaited for, and print this line before its
    answer = signal.signal(signal.SIGINT, pressed) if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else None
    try:
        with subprocess.Popen([str(c) for c in cmd], cwd=cwd) as proc:
            return proc.wait()
    finally:
        if answer is not None:
            signal.signal(signal.SIGINT, answer)


def _sh(*cmd: str | Path) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    code = _call(*cmd)
    if code and _interrupted:  # e.g. pip's "Operation cancelled by user"
        raise KeyboardInterrupt
    if code:
        raise subprocess.CalledProcessError(code, [str(c) for c in cmd])


def installed_digest() -> str:
    """What the stamp of an installed environment holds: it is installed again when it changes."""
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH.encode()).hexdigest()


def setup(extras: str) -> None:
    stamp = VENV / f".fhcnn-installed-{extras or 'base'}"
    digest = installed_digest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    if not _bin("python").exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    py = _bin("python")
    _sh(py, "-m", "pip", "install", "-q", "--upgrade", "pip")
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    # the pin in the same resolve as the project: no dependency can swap in another torch build
    _sh(py, "-m", "pip", "install", "-q", TORCH, "-e", target)
    pinned = TORCH.split("==")[1]
    got = subprocess.run([str(py), "-c", "import torch; print(torch.__version__)"], check=True,
                         capture_output=True, text=True).stdout.strip()
    if got.split("+")[0] != pinned:  # e.g. a resolve that swapped in another (CUDA) build
        sys.exit(f"error: {VENV} has torch {got}, not the pinned {pinned}; remove {VENV} and retry")
    stamp.write_text(digest)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "lint", "fhcnn"):
        print(__doc__)
        return 2
    what, rest = argv[0], argv[1:]
    if what == "test":
        setup("dev")
        return _call(_bin("python"), "-m", "pytest", *rest, cwd=ROOT)
    if what == "lint":
        setup("dev")
        py = str(_bin("python"))
        ruff = _call(py, "-m", "ruff", "check", "src", "tests", "benchmarks", "dev.py", cwd=ROOT)
        mypy = _call(py, "-m", "mypy", cwd=ROOT)
        return ruff or mypy
    setup("io")
    args = ["demo", *rest] if what == "demo" else rest
    return _call(_bin("fhcnn"), *args)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # while it sets up the environment (venv, pip)
        print("interrupted (SIGINT)", file=sys.stderr)
        sys.exit(130)
