"""Worker for tests/test_spatial.py: one process of a split network (Gloo on CPU).

Spawned by the test with ``torch.multiprocessing.spawn`` (4 processes: the 2-process cases
run on a group of ranks 0 and 1, then the 4-process cases on all). Every process builds the same
network from a seed; rank 0 also runs the single-process network on the whole volume and
compares forward, inverse and every gradient (input and parameters) with the slabs gathered
from all processes, for each case, gradient mode and dtype. Rank 0 writes the maximum relative
errors and the saved bytes to ``OUT/result.json``.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from fhcnn import HyperbolicNetwork
from fhcnn.memory import saved_tensor_bytes
from fhcnn.models import DenseHyperbolicModel
from fhcnn.spatial import (
    SpatialSplit,
    global_mean_std,
    reduce_gradients,
    size_multiple,
    split_module,
)
from fhcnn.training.distributed import end_spawned_worker

MODES: dict[str, Any] = {"true": True, "block": "block", "false": False}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# a 3D net with two coarsenings and two refinements
UNITS = [(1, "down"), (1, "down"), (1, None), (1, "up"), (1, "up"), (1, None)]

BOTH, FP64 = ("float32", "float64"), ("float64",)
# world size -> list of (name, axes, grid, global spatial shape, network kind, dtypes); the
# variants beyond the 3D net split along one and two axes run in float64 only (to save time)
CASES: dict[int, list[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...], str,
                            tuple[str, ...]]]] = {
    2: [("D/2 haar group", (0,), (2,), (8, 8, 4), "haar-group", BOTH),
        ("W/2 learnable batch", (2,), (2,), (8, 8, 8), "learnable-batch", BOTH),
        ("D/2 dense model, conv head", (0,), (2,), (8, 4, 4), "dense", FP64),
        ("2D W/2 learnable group", (1,), (2,), (8, 8), "learnable-group", FP64),
        ("D/2 kernel 5, conv_transpose adjoint", (0,), (2,), (16, 4, 4), "k5-transpose", FP64)],
    4: [("D/4 haar group", (0,), (4,), (16, 4, 4), "haar-group", BOTH),
        ("DxH 2x2 learnable group", (0, 1), (2, 2), (8, 8, 4), "learnable-group", BOTH),
        ("HxW 2x2 haar batch", (1, 2), (2, 2), (4, 8, 8), "haar-batch", FP64)],
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def build(kind: str, dtype: torch.dtype, dim: int = 3) -> torch.nn.Module:
    torch.manual_seed(3)
    if kind == "dense":
        model: torch.nn.Module = DenseHyperbolicModel(
            2, 3, 16, [(1, "down"), (1, "up"), (1, "up"), (1, None)], dim=3, pre_levels=1,
            opening="conv", hidden=4, h=0.5, head_channels=3)
    elif kind == "k5-transpose":  # 2-plane halos; K^T as a transposed convolution
        model = HyperbolicNetwork(2, [(1, "down"), (1, "up"), (1, None)], dim=3, hidden=4, h=0.5,
                                  kernel_size=5)
        for layer in model.layers:
            layer.adjoint = "conv_transpose"
    else:
        wavelet, norm = kind.split("-")
        model = HyperbolicNetwork(2, UNITS, dim=dim, hidden=4, h=0.5, norm=norm, wavelet=wavelet,
                                  wavelet_init="db2")
    return model.to(dtype)


def set_mode(model: torch.nn.Module, mode: Any) -> None:
    net = model.net if isinstance(model, DenseHyperbolicModel) else model
    net.reversible = mode


def run_once(model: torch.nn.Module, x: torch.Tensor, w: torch.Tensor, wp: torch.Tensor):
    """Forward (the pair of a network, logits for a dense model), a weighted-sum loss, backward.
    Returns (outputs, input gradient, parameter gradients, saved bytes)."""
    for p in model.parameters():
        p.grad = None
    x = x.clone().requires_grad_(True)
    if isinstance(model, DenseHyperbolicModel):
        saved, y = saved_tensor_bytes(lambda: model(x))
        outs = (y,)
        loss = (y * w).sum()
    else:
        saved, outs = saved_tensor_bytes(lambda: model.forward_pair(x))
        loss = (outs[1] * w).sum() + (outs[0] * wp).sum()
    loss.backward()
    return [o.detach() for o in outs], x.grad, {n: p.grad for n, p in model.named_parameters()}, saved


def check_case(split: SpatialSplit, kind: str, shape: tuple[int, ...], dtype: torch.dtype,
               rank: int) -> dict[str, Any]:
    ref = build(kind, dtype, len(shape))
    model = split_module(copy.deepcopy(ref), split)
    g = torch.Generator().manual_seed(7)
    n_out = 3 if kind == "dense" else 2
    x = torch.randn(2, 2, *shape, generator=g).to(dtype)
    w = torch.randn(2, n_out, *shape, generator=g).to(dtype)
    wp = torch.randn(2, n_out, *shape, generator=g).to(dtype)
    mult = size_multiple(model)
    xl, wl, wpl = (split.scatter(t, mult) for t in (x, w, wp))
    res: dict[str, Any] = {}
    mean, std = global_mean_std(xl, split)
    if rank == 0:  # input standardization statistics of the whole volume
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        res["standardize"] = {"errors": {"mean": rel(mean, flat.mean(1)), "std": rel(std, flat.std(1))}}
    for mname, mode in MODES.items():
        set_mode(ref, mode)
        set_mode(model, mode)
        outs, gx, gp, saved = run_once(model, xl, wl, wpl)
        reduce_gradients(model, split)
        outs = [split.gather(o) for o in outs]
        gx = split.gather(gx)
        inv = None
        if kind != "dense":
            with torch.no_grad():
                inv = split.gather(model.inverse(split.scatter(outs[0]), split.scatter(outs[1])))
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        if rank != 0:
            continue
        r_outs, r_gx, r_gp, r_saved = run_once(ref, x, w, wp)
        errs = {"forward": max(rel(a, b) for a, b in zip(outs, r_outs)), "input_grad": rel(gx, r_gx),
                "param_grad": max(rel(gp[n], r_gp[n]) for n in r_gp),
                "param_grad_all": rel(torch.cat([gp[n].reshape(-1) for n in r_gp]),
                                      torch.cat([r_gp[n].reshape(-1) for n in r_gp]))}
        if inv is not None:
            with torch.no_grad():
                errs["inverse"] = rel(inv, ref.inverse(*r_outs))
        if buffers:  # batch-norm running statistics
            errs["buffers"] = max(rel(b, dict(ref.named_buffers())[n]) for n, b in buffers.items()
                                  if b.is_floating_point())
        res[mname] = {"errors": errs, "saved_split": saved, "saved_single": r_saved,
                      "worst_param": max(r_gp, key=lambda n: rel(gp[n], r_gp[n]))}
    return res


def worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    result: dict[str, Any] = {}
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=120))
    except Exception as e:  # noqa: BLE001 -- the platform cannot run Gloo processes: skip
        Path(out, f"result-{rank}.json").write_text(json.dumps({"skip": f"{type(e).__name__}: {e}"}))
        return
    try:
        for size, cases in CASES.items():  # the 2-process cases on ranks 0 and 1 of one spawn
            if size > world:
                continue
            group = dist.new_group(list(range(size))) if size < world else None
            if rank < size:
                for name, axes, grid, shape, kind, dtypes in cases:
                    split = SpatialSplit(len(shape), axes, grid, group=group)
                    for dname in dtypes:
                        result[f"{size} processes: {name} {dname}"] = check_case(
                            split, kind, shape, DTYPES[dname], rank)
            dist.barrier()
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 -- any failure goes to the parent test, which reports it
        result = {"error": traceback.format_exc()}
    if rank == 0 or "error" in result:
        Path(out, f"result-{rank}.json").write_text(json.dumps(result))
    end_spawned_worker()


if __name__ == "__main__":  # manual run: python tests/_spatial_worker.py WORLD
    import tempfile

    import torch.multiprocessing as mp

    world = int(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(world, os.path.join(tmp, "store"), tmp), nprocs=world)
        print(Path(tmp, "result-0.json").read_text())
