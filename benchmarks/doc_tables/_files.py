"""Reading the result JSON files, and the number formats the tables share."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean
from typing import Any

DAVIS_SEQUENCES = ("blackswan", "car-shadow", "cows", "dog", "goat", "horsejump-high",
                   "kite-surf", "parkour")


def load(d: Path, name: str) -> dict[str, Any] | None:
    p = d / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def need(d: Path, name: str) -> dict[str, Any]:
    r = load(d, name)
    if r is None:
        raise FileNotFoundError(f"{d / (name + '.json')} is missing")
    return r


def mib(b: float | None) -> str:
    return "–" if b is None else f"{b / 2**20:.1f}"


def f3(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def ref_units(seconds: float, env: dict[str, Any] | None) -> str:
    """``seconds`` in units of the reference workload measured in the same run
    (:mod:`fhcnn.bench.reference`); "–" where the run did not record it."""
    ref = (env or {}).get("reference_s")
    return "–" if not ref else f"{seconds / ref:,.0f}"


def davis_runs(d: Path, prefix: str) -> dict[str, dict[str, Any]]:
    out = {}
    for seq in DAVIS_SEQUENCES:
        r = load(d, f"{prefix}_{seq}")
        if r is not None:
            out[seq] = r["results"][0]
    return out


def mean_row(runs: dict[str, dict[str, Any]], n: int) -> str:
    if not runs:
        return "–"
    m = f"{mean(x['miou'] for x in runs.values()):.3f}"
    return m if len(runs) == n else f"{m} ({len(runs)} seq.)"


def davis_glob(d: Path, pattern: str) -> dict[str, dict[str, Any]]:
    """The DAVIS results of the files matching ``pattern``, by sequence."""
    runs: dict[str, dict[str, Any]] = {}
    for path in sorted(d.glob(pattern)):
        runs.update({r["name"]: r for r in json.loads(path.read_text())["results"]})
    return runs
