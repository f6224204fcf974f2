"""Benchmarks: memory (Figure 1), Table 1, time, numerical drift, peers, and the backward peak.

Each benchmark is a module with ``run(out_dir, quick=False, device="cpu", tick=None) -> dict``
that writes ``<name>.json`` (raw numbers, environment) and ``<name>.png`` (plot) into
``out_dir``, and ``work(quick) -> int``, the number of ``tick`` calls it makes (for a
progress bar). Run them with ``fhcnn bench [memory|time|drift|table1|peers|spatial|backward|volume_memory|all]
--out DIR`` or :func:`run_benchmarks` (``all`` runs every one but ``volume_memory``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["BENCHMARKS", "IN_ALL", "load", "run_benchmarks"]

# name -> module (``time`` lives in ``timing`` so it does not shadow the standard library)
BENCHMARKS: dict[str, str] = {
    "memory": "fhcnn.bench.memory",
    "table1": "fhcnn.bench.table1",
    "peers": "fhcnn.bench.peers",
    "time": "fhcnn.bench.timing",
    "drift": "fhcnn.bench.drift",
    "spatial": "fhcnn.bench.spatial",
    "backward": "fhcnn.bench.backward",
    "volume_memory": "fhcnn.bench.volume_memory",
}
#: Run by ``all`` (``volume_memory`` writes and segments volumes of up to half a billion voxels:
#: run it by name).
IN_ALL: tuple[str, ...] = ("memory", "table1", "peers", "time", "drift", "spatial", "backward")


def load(name: str) -> ModuleType:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)} or all")
    return importlib.import_module(BENCHMARKS[name])


def run_benchmarks(names: list[str], out_dir: str | Path, quick: bool = False, device: str = "cpu",
                   tick: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``names`` in order; returns ``{name: result dict}``."""
    return {n: load(n).run(out_dir, quick=quick, device=device, tick=tick) for n in names}
