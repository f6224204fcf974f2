"""Worker of tests/library/spatial/test_modules.py: each module of ``fhcnn.spatial`` on its own,
2 processes (Gloo, CPU), every result compared on rank 0 with the same operation on the whole
tensor. Writes ``OUT/result.json``: ``{check: max abs error}`` (or ``{"error": traceback}``)."""

from __future__ import annotations

import datetime
import json
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _gather(x: torch.Tensor, split, axis: int) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(split.size)]
    dist.all_gather(parts, x.contiguous(), group=split.group)
    return torch.cat(parts, 2 + axis)


def checks(rank: int) -> dict[str, float]:
    from fhcnn.layers import SymmetricLayer
    from fhcnn.spatial import (
        SpatialSplit,
        all_reduce_sum,
        global_mean_std,
        halo_pad,
        reduce_gradients,
        split_module,
        split_norm,
    )
    from fhcnn.wavelets import LearnableWavelet

    torch.manual_seed(0)  # the same global tensors on both processes
    out: dict[str, float] = {}
    split = SpatialSplit(3, (0,), (2,))
    x = torch.randn(2, 3, 8, 5, 6, dtype=torch.float64, requires_grad=True)
    local = x.detach()[:, :, 4 * rank:4 * rank + 4].clone().requires_grad_()
    # split.py: the slabs partition the volume; scatter is this process's slab
    out["split: scatter"] = (split.scatter(x.detach(), 1) - local.detach()).abs().max().item()
    # halo.py: the padded slab is the zero-padded whole volume's window; the backward is its adjoint
    padded = halo_pad(local, split, 1)
    whole = F.pad(x.detach(), (0, 0, 0, 0, 1, 1))
    out["halo: forward"] = (padded.detach() - whole[:, :, 4 * rank:4 * rank + 6]).abs().max().item()
    w = torch.randn_like(padded)
    (padded * w).sum().backward()
    ref = F.pad(x, (0, 0, 0, 0, 1, 1))
    y = torch.zeros_like(ref)
    y[:, :, 4 * rank:4 * rank + 6] = w  # each process's weights of its padded window
    parts = [torch.empty_like(y) for _ in range(2)]
    dist.all_gather(parts, y)
    (ref * sum(parts)).sum().backward()
    out["halo: adjoint"] = (local.grad - x.grad[:, :, 4 * rank:4 * rank + 4]).abs().max().item()
    # halo.py: the all-reduce sums, and its gradient sums the output gradients
    v = torch.full((3,), float(rank + 1), dtype=torch.float64, requires_grad=True)
    s = all_reduce_sum(v, split)
    (s * (rank + 1)).sum().backward()
    out["halo: all_reduce_sum"] = max((s - 3).abs().max().item(), (v.grad - 3).abs().max().item())
    # norm.py: group and batch norm over the slabs equal the whole volume's, forward and input gradient
    for name, norm in (("group", nn.GroupNorm(1, 3)), ("batch", nn.BatchNorm3d(3))):
        norm = norm.double()
        xs = local.detach().clone().requires_grad_()
        xw = x.detach().clone().requires_grad_()
        sn = split_norm(norm, split)
        ys = sn(xs)
        yw = norm(xw)
        g = torch.randn_like(yw)
        (yw * g).sum().backward()
        (ys * g[:, :, 4 * rank:4 * rank + 4]).sum().backward()
        out[f"norm: split {name} norm"] = max((_gather(ys.detach(), split, 0) - yw.detach()).abs().max().item(),
                                              (xs.grad - xw.grad[:, :, 4 * rank:4 * rank + 4]).abs().max().item())
    mean, std = global_mean_std(local.detach(), split)
    flat = x.detach().transpose(0, 1).reshape(3, -1)
    out["norm: global_mean_std"] = max((mean - flat.mean(1)).abs().max().item(),
                                       (std - flat.std(1)).abs().max().item())
    # layers.py: the split symmetric layer and learnable wavelet equal the whole ones
    layer = SymmetricLayer(3, 4, dim=3, norm="group").double()
    whole_layer = SymmetricLayer(3, 4, dim=3, norm="group").double()
    whole_layer.load_state_dict(layer.state_dict())
    split_layer = split_module(layer, split)
    out["layers: symmetric layer"] = (_gather(split_layer(local.detach()).detach(), split, 0)
                                      - whole_layer(x.detach()).detach()).abs().max().item()
    wav = LearnableWavelet(3, init="db2").double()
    whole_wav = LearnableWavelet(3, init="db2").double()
    whole_wav.load_state_dict(wav.state_dict())
    split_wav = split_module(wav, split)
    z = torch.randn(1, 2, 8, 4, 4, dtype=torch.float64)
    zl = z[:, :, 4 * rank:4 * rank + 4]
    coarse = split_wav(zl)
    out["layers: learnable wavelet"] = max(
        (_gather(coarse.detach(), split, 0) - whole_wav(z).detach()).abs().max().item(),
        (split_wav.inverse(coarse) - zl).abs().max().item())
    # convert.py: the converted module keeps its state dict; gradients are summed over the slabs
    keys_before = set(whole_layer.state_dict())
    out["convert: state dict"] = float(set(split_layer.state_dict()) != keys_before)
    for p in split_layer.parameters():
        p.grad = torch.full_like(p, float(rank + 1))
    reduce_gradients(split_layer, split)
    out["convert: reduce_gradients"] = max((p.grad - 3).abs().max().item() for p in split_layer.parameters())
    return out


def worker(rank: int, init_file: str, folder: str) -> None:
    from fhcnn.training.distributed import end_spawned_worker

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                                timeout=datetime.timedelta(seconds=120))
    except Exception as e:  # noqa: BLE001 -- the platform cannot run Gloo processes: skip
        Path(folder, f"result-{rank}.json").write_text(json.dumps({"skip": f"{type(e).__name__}: {e}"}))
        return
    try:
        result: dict[str, object] = checks(rank)
        dist.barrier()
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 -- any failure goes to the parent test
        result = {"error": traceback.format_exc()}
    Path(folder, f"result-{rank}.json").write_text(json.dumps(result))
    end_spawned_worker()


if __name__ == "__main__":
    import os
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(os.path.join(tmp, "store"), tmp), nprocs=2)
        print(Path(tmp, "result-0.json").read_text(), file=sys.stderr)
