"""Benchmarks: memory (Figure 1), Table 1, time, numerical drift, peers, and the backward peak.

Each benchmark is a module with ``run(out_dir, quick=False, device="cpu", tick=None) -> dict``
that writes ``<name>.json`` (raw numbers, environment) and ``<name>.png`` (plot) into
``out_dir``, and ``work(quick) -> int``, the number of ``tick`` calls it makes (for a
progress bar). Run them with ``fhcnn bench NAME --out DIR`` (NAME: memory, time, drift, table1,
peers, spatial, backward, volume_memory, copy_memory or all) or :func:`run_benchmarks` (``all``
runs every one but ``volume_memory`` and ``copy_memory``).

The environment every result records (CPU model, threads, load, and the time of a fixed
reference workload measured in the same process) is :func:`fhcnn.bench.reference.environment`.
The tables that the docs show are made from these files by ``benchmarks/report.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["BENCHMARKS", "IN_ALL", "load", "run_benchmarks", "run_command"]

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
    "copy_memory": "fhcnn.bench.copy_memory",
}
#: Run by ``all`` (``volume_memory`` writes and segments volumes of up to half a billion voxels,
#: ``copy_memory`` writes compressed volumes of up to 256 MiB: run them by name).
IN_ALL: tuple[str, ...] = ("memory", "table1", "peers", "time", "drift", "spatial", "backward")


def load(name: str) -> ModuleType:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)} or all")
    return importlib.import_module(BENCHMARKS[name])


def run_benchmarks(names: list[str], out_dir: str | Path, quick: bool = False, device: str = "cpu",
                   tick: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``names`` in order; returns ``{name: result dict}``."""
    return {n: load(n).run(out_dir, quick=quick, device=device, tick=tick) for n in names}


def run_command(which: str, out: str, *, quick: bool = False, device: str = "cpu", threads: int = 1,
                quiet: bool = False, overwrite: bool = False) -> Path:
    """``fhcnn bench``: check the device and threads, make (or gather into) the results folder
    ``out``, run ``which`` (a name, or ``all``: :data:`IN_ALL`) with a progress bar (none with
    ``quiet``), and print a line naming the files of each benchmark (``quiet`` too). Returns
    the folder."""
    import time

    import torch
    from tqdm import tqdm

    from ..resources import check_threads
    from ..rundir import prepare_output_dir
    from ..training.device import resolve_device

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
    if device.startswith("cuda"):  # 'cuda:x', 'cudax', an index past the GPUs: one line, before --out
        device = str(resolve_device(device, local_rank=0))
    if threads < 0:
        raise ValueError(f"--threads must be >= 0, got {threads}")
    check_threads(threads, "--threads")  # not more than the CPUs this process may use
    if threads:
        torch.set_num_threads(threads)
    names = list(IN_ALL) if which == "all" else [which]
    mods = {n: load(n) for n in names}
    # a results folder gathers the benchmarks' files: this run's are the only ones it replaces
    folder = Path(prepare_output_dir(out, overwrite=overwrite, tool="bench", collect=True,
                                     outputs=[f"{m.NAME}{e}" for m in mods.values() for e in (".json", ".png")],
                                     resumable=False))
    total = sum(m.work(quick) for m in mods.values())
    t0 = time.perf_counter()
    with tqdm(total=total, desc="bench", unit="step", disable=quiet, dynamic_ncols=True) as bar:
        def tick(msg: str) -> None:
            bar.set_postfix_str(msg, refresh=False)
            bar.update(1)

        for name, mod in mods.items():
            bar.set_description(name)
            mod.run(folder, quick=quick, device=device if name != "drift" else "cpu", tick=tick)
            # a result, shown with --quiet too (it hides the progress, not what was written)
            bar.write(f"{name}: wrote {folder / (mod.NAME + '.json')} and {folder / (mod.NAME + '.png')}")
    if not quiet:
        print(f"done in {time.perf_counter() - t0:.0f} s")
    return folder
