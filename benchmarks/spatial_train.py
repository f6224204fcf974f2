"""Train a dense hyperbolic segmentation model on volumes split in space (library-level example).

Every process holds one slab of every volume (and of every state of the network); with
``--data`` > 1 the processes also form data-parallel replicas (a ``data x space`` mesh), each
replica taking its share of the global batch. The same command on one process is the
reference: the weights after training agree to rounding (``tests/library/spatial/test_network_split.py``).

    # 4 processes: 2 replicas x 2 slabs along D (Gloo on CPUs)
    torchrun --standalone --nproc-per-node 4 benchmarks/spatial_train.py \\
        --data 2 --grid 2 --axes 0 --out runs/spatial
    # the same training on one process, the whole volume
    python benchmarks/spatial_train.py --out runs/single

The data are synthetic (a smooth random field, labelled by its sign), drawn from
``(seed, step)`` so every process sees the same global batch and keeps its part.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fhcnn.models import DenseHyperbolicModel
from fhcnn.spatial import (
    SpatialSplit,
    count_comm,
    global_sum,
    init_spatial,
    reduce_gradients,
    size_multiple,
    split_module,
)

UNITS = [(1, "down"), (1, "up"), (1, "up"), (1, None)]


def batch(step: int, size: int, shape: Sequence[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step``: ``x (B, 1, *shape)``, labels ``(B, *shape)`` in {0, 1}."""
    g = torch.Generator().manual_seed(seed * 100_003 + step)
    x = torch.randn(size, 1, *shape, generator=g)
    smooth = F.avg_pool3d(F.pad(x, [1] * 6, mode="circular"), 3, stride=1)
    return x, (smooth > 0).long()[:, 0]


def build(seed: int = 0) -> DenseHyperbolicModel:
    torch.manual_seed(seed)
    return DenseHyperbolicModel(1, 2, 8, UNITS, dim=3, pre_levels=1, opening="conv", hidden=8,
                                h=0.5, norm="group")


def train(split: SpatialSplit, steps: int = 5, shape: Sequence[int] = (8, 8, 8), batch_size: int = 2,
          lr: float = 0.1, seed: int = 0) -> dict[str, Any]:
    """Train on this process's slabs; returns the final state dict, the losses and timings.

    SGD with momentum: Adam divides by the root of the squared gradient, which turns the
    rounding noise of a near-zero gradient entry into a step of size ``lr`` and would hide
    how closely the split run follows the single-process one.
    """
    model = split_module(build(seed), split)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if batch_size % split.data_size:
        raise ValueError(f"batch size {batch_size} is not divisible by the {split.data_size} replicas")
    per = batch_size // split.data_size
    voxels = float(torch.Size(shape).numel())
    losses, times = [], []
    with count_comm() as comm:
        for step in range(steps):
            t0 = time.perf_counter()
            x, y = batch(step, batch_size, shape, seed)
            x, y = x[split.data_rank * per:(split.data_rank + 1) * per], y[split.data_rank * per:
                                                                              (split.data_rank + 1) * per]
            x = split.scatter(x, size_multiple(model))
            y = split.scatter(y[:, None], 1)[:, 0]
            opt.zero_grad(set_to_none=True)
            # this slab's part of the mean over the replica's samples and the whole volume
            loss = F.cross_entropy(model(x), y, reduction="sum") / (per * voxels)
            loss.backward()
            reduce_gradients(model, split)
            opt.step()
            losses.append(float(global_sum(loss, split, data=True)))
            times.append(time.perf_counter() - t0)
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "losses": losses, "step_s": times, "comm_bytes": dict(comm)}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", type=int, nargs="+", default=[1], help="slabs along each split axis")
    p.add_argument("--axes", type=int, nargs="+", default=[0], help="split spatial axes (0 = D)")
    p.add_argument("--data", type=int, default=1, help="data-parallel replicas")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--size", type=int, nargs=3, default=[8, 8, 8], help="global volume D H W")
    p.add_argument("--batch", type=int, default=2, help="global batch size")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    split = init_spatial(3, args.axes, args.grid, data=args.data)
    result = train(split, args.steps, args.size, args.batch)
    rank = dist.get_rank() if dist.is_initialized() else 0
    args.out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        from safetensors.torch import save_file

        from fhcnn.bench.reference import environment

        save_file({k: v.contiguous() for k, v in result["state"].items()}, str(args.out / "model.safetensors"))
        (args.out / "train.json").write_text(json.dumps(
            {"losses": result["losses"], "step_s": result["step_s"], "comm_bytes_rank0": result["comm_bytes"],
             "split": split.describe(), "environment": environment()}, indent=1))
        print(f"{split.describe()}: losses {[f'{v:.4f}' for v in result['losses']]}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
