"""Spatial parallelism on the CPU: weak and strong scaling over N = 1, 2, 4 Gloo processes.

One volume is split along ``D`` into N slabs (:mod:`fhcnn.spatial`). For every N this records,
per reversible training step (forward, memory-free backward, gradient all-reduce):

* ``step_s``: median wall time of the step (the slowest process), after a warm-up step;
* ``saved_bytes``: bytes autograd keeps per process (:func:`fhcnn.memory.saved_tensor_bytes`;
  the last pair of slabs, so 1/N of the single-process figure at a fixed volume);
* ``halo_bytes``: bytes of halo planes sent per step, summed over the processes, against
  ``halo_analytic``: every layer exchanges one plane of its ``C``-channel input (``K``) and of
  its ``M``-channel hidden state (``K^T``) with each neighbour, three times per step (forward,
  the backward's recomputation, the reverse exchange of the vector-Jacobian product):
  ``3 (C + M) * plane * 2 (N - 1)`` values per layer;
* ``allreduce_bytes``: bytes entering all-reduces per process (normalization sums and the
  parameter gradients).

Weak scaling keeps the slab per process fixed (volume grows with N); strong scaling keeps the
volume fixed. Each N runs in freshly spawned processes (``torch.multiprocessing``), one
thread each. On a shared 2-core machine 4 processes contend for 2 cores: step times show the
communication and overhead, not the speed-up a machine with a core (or GPU) per process gives.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ._common import MiB, environment, pyplot, save_figure, write_json

__all__ = ["NS", "analytic_halo_bytes", "configs", "run", "work"]

NAME = "spatial"
NS = (1, 2, 4)


def configs(quick: bool) -> dict[str, Any]:
    """Network and volumes. ``units`` coarsen twice, so slabs are multiples of 4 along D."""
    if quick:
        return {"channels": 4, "hidden": 8, "units": [(1, "down"), (1, None), (1, "up")],
                "strong": (16, 16, 16), "weak_slab": (4, 16, 16), "repeats": 3, "batch": 1}
    return {"channels": 8, "hidden": 16, "units": [(2, "down"), (2, "down"), (2, None), (2, "up"), (2, "up")],
            "strong": (32, 48, 48), "weak_slab": (8, 48, 48), "repeats": 5, "batch": 1}


def work(quick: bool) -> int:
    return 2 * len(NS)


def _net(cfg: dict[str, Any]):
    from ..network import HyperbolicNetwork

    torch.manual_seed(0)
    return HyperbolicNetwork(cfg["channels"], cfg["units"], dim=3, hidden=cfg["hidden"], h=0.2,
                             norm="group", reversible=True)


def analytic_halo_bytes(cfg: dict[str, Any], volume: tuple[int, ...], n: int, itemsize: int = 4) -> int:
    """Halo bytes of one reversible step summed over ``n`` processes (split along D)."""
    if n == 1:
        return 0
    net = _net(cfg)
    total = 0
    c, level = net.channels, 0
    li = 0
    for n_layers, transition in net.units:
        plane = volume[1] * volume[2] // 4**level  # H * W at this level
        for _ in range(n_layers):
            m = net.layers[li].hidden
            total += 3 * (c + m) * plane * cfg["batch"] * 2 * (n - 1)
            li += 1
        if transition == "down":
            c, level = c * 8, level + 1
        elif transition == "up":
            c, level = c // 8, level - 1
    return total * itemsize


def _worker(rank: int, world: int, init_file: str, out: str, cfg: dict[str, Any],
            volume: tuple[int, ...]) -> None:
    import torch.distributed as dist

    from ..memory import saved_tensor_bytes
    from ..spatial import (
        COMM,
        SpatialSplit,
        reduce_gradients,
        size_multiple,
        split_module,
    )
    from ..training.distributed import end_spawned_worker

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    split = SpatialSplit(3, (0,), (world,))
    net = split_module(_net(cfg), split)
    g = torch.Generator().manual_seed(1)
    x = split.scatter(torch.randn(cfg["batch"], cfg["channels"], *volume, generator=g), size_multiple(net))

    def step() -> int:
        for p in net.parameters():
            p.grad = None
        saved, y = saved_tensor_bytes(lambda: net(x))
        y.square().sum().backward()
        reduce_gradients(net, split)
        return saved

    step()  # warm-up
    times, comm = [], []
    saved = 0
    for _ in range(cfg["repeats"]):
        if world > 1:
            dist.barrier()
        before = dict(COMM)
        t0 = time.perf_counter()
        saved = step()
        dt = torch.tensor([time.perf_counter() - t0])
        sent = torch.tensor([COMM[k] - before[k] for k in ("halo", "allreduce")], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(dt, op=dist.ReduceOp.MAX)
            dist.all_reduce(sent, op=dist.ReduceOp.SUM)
        times.append(float(dt))
        comm.append(sent.tolist())
    if rank == 0:
        Path(out).write_text(json.dumps({
            "step_s": statistics.median(times), "step_s_all": times, "saved_bytes": saved,
            "halo_bytes": comm[-1][0], "allreduce_bytes": comm[-1][1] / world,
            "local_volume": list(split.local_shape(volume))}))
    if world > 1:
        dist.destroy_process_group()
        end_spawned_worker()  # a spawned process: no interpreter teardown (Gloo's threads)


def _measure(cfg: dict[str, Any], volume: tuple[int, ...], n: int) -> dict[str, Any]:
    from ..training.distributed import spawn_workers

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "row.json")
        if sys.platform.startswith("linux"):  # loopback: independent of the host name's address
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        if n == 1:
            _worker(0, 1, "", out, cfg, volume)
        else:
            spawn_workers(_worker, (n, os.path.join(tmp, "store"), out, cfg, volume), n)
        return json.loads(Path(out).read_text())


def run(out_dir: str | Path, quick: bool = False, device: str = "cpu",
        tick: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Writes ``spatial.json`` and ``spatial.png``. Runs on the CPU (Gloo) whatever ``device``
    says (recorded as ``requested_device``): several processes cannot share one GPU usefully."""
    tick = tick or (lambda msg: None)
    cfg = configs(quick)
    threads = torch.get_num_threads()
    rows = []
    for scaling in ("weak", "strong"):
        for n in NS:
            if scaling == "strong":
                volume = tuple(cfg["strong"])
            else:
                slab = cfg["weak_slab"]
                volume = (slab[0] * n, *slab[1:])
            row = {"scaling": scaling, "processes": n, "volume": list(volume), **_measure(cfg, volume, n)}
            row["halo_analytic"] = analytic_halo_bytes(cfg, volume, n)
            rows.append(row)
            tick(f"spatial {scaling} N={n}")
    torch.set_num_threads(threads)
    base = {r["scaling"]: r for r in rows if r["processes"] == 1}
    for r in rows:
        b = base[r["scaling"]]
        r["saved_ratio"] = r["saved_bytes"] / b["saved_bytes"]
        r["time_ratio"] = r["step_s"] / b["step_s"]
        r["halo_matches_analytic"] = r["halo_bytes"] == r["halo_analytic"]
    result = {"benchmark": NAME, "quick": quick, "config": {k: v for k, v in cfg.items()},
              "split_axis": "D", "requested_device": device, "rows": rows, "environment": environment("cpu"),
              "gpu": "none: no GPU was lent to this session; CPU (Gloo) only",
              "note": ("step_s: median over repeats of the slowest process; on a shared 2-core "
                       "machine N=4 processes contend for 2 cores")}
    out = Path(out_dir)
    write_json(out / f"{NAME}.json", result)
    _plot(rows, out / f"{NAME}.png")
    return result


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    for scaling, mark in (("weak", "o-"), ("strong", "s-")):
        rs = [r for r in rows if r["scaling"] == scaling]
        n = [r["processes"] for r in rs]
        ax[0].plot(n, [r["step_s"] for r in rs], mark, label=f"{scaling} scaling")
        ax[1].plot(n, [r["saved_bytes"] / MiB for r in rs], mark, label=f"{scaling}: saved per process")
        ax[2].plot(n, [r["halo_bytes"] / MiB for r in rs], mark, label=f"{scaling}: halo, measured")
        ax[2].plot(n, [r["halo_analytic"] / MiB for r in rs], "k:", alpha=0.6)
    strong = [r for r in rows if r["scaling"] == "strong"]
    ax[1].plot([r["processes"] for r in strong], [strong[0]["saved_bytes"] / MiB / r["processes"]
                                                  for r in strong], "k:", label="1/N")
    ax[0].set(xlabel="processes N", ylabel="s per reversible step", title="step time (CPU, Gloo)")
    ax[1].set(xlabel="processes N", ylabel="MiB", title="saved for backward, per process")
    ax[2].set(xlabel="processes N", ylabel="MiB per step (all processes)",
              title="halo bytes: measured vs analytic (dotted)")
    for a in ax:
        a.set_xticks(list(NS))
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    save_figure(fig, path)
