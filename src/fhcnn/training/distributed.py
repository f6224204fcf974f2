"""Multi-process training helpers (``torch.distributed``, launched by ``torchrun``).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_distributed` then joins the process group (``nccl`` on CUDA,
``gloo`` on CPU). Every rank builds the same global batch from the ``(seed, step)``
generator and keeps its slice (:func:`shard_batch`), so a run on ``W`` processes computes the
same gradient as a run on one process with the same global batch.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "dist_info", "init_distributed", "cleanup_distributed", "exit_program", "is_main_process",
           "world_size",
           "shard_batch", "all_reduce_mean", "broadcast_object", "barrier", "params_in_sync"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def dist_info() -> DistInfo:
    """Rank, world size and local rank of this process (``(0, 1, 0)`` without a group)."""
    if _initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    return DistInfo(0, 1, 0)


def init_distributed(device_type: str | None = None) -> DistInfo:
    """Join the process group if launched by ``torchrun`` with ``WORLD_SIZE > 1``.

    Does nothing when a group is already initialized (e.g. by the caller) or when the
    environment describes a single process. Backend: ``nccl`` for CUDA, else ``gloo``.
    """
    if _initialized():
        return dist_info()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():  # pragma: no cover
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return dist_info()


def cleanup_distributed() -> None:
    """Leave the process group (call once at the very end of a program)."""
    if _initialized():
        dist.destroy_process_group()


def exit_program(code: int) -> NoReturn:
    """End a command-line program with exit status ``code``. After a distributed run (a process
    group was joined) the group is destroyed and the interpreter's teardown skipped: torch's
    Gloo threads sometimes abort the process there ("terminate called without an active
    exception", after every output is written and ``destroy_process_group`` has returned),
    which would turn a finished run into a failed ``torchrun`` launch."""
    if not _initialized():
        sys.exit(code)
    cleanup_distributed()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def world_size() -> int:
    """Processes of the run: of the initialized process group, else of the ``torchrun``
    environment (``WORLD_SIZE``), so it is right before the group is joined too."""
    if _initialized():
        return int(dist.get_world_size())
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """Whether this process is rank 0: of the initialized process group, else of the
    ``torchrun`` environment (``RANK``), so it is right before the group is joined too."""
    if _initialized():
        return dist.get_rank() == 0
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


def barrier() -> None:
    if _initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _leading(batch: Any, sizes: set[int]) -> None:
    if isinstance(batch, torch.Tensor):
        if batch.dim() > 0:
            sizes.add(batch.shape[0])
    elif isinstance(batch, dict):
        for v in batch.values():
            _leading(v, sizes)
    elif isinstance(batch, (list, tuple)):
        for v in batch:
            _leading(v, sizes)


def _slice(batch: Any, start: int, stop: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[start:stop] if batch.dim() > 0 else batch
    if isinstance(batch, dict):
        return {k: _slice(v, start, stop) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_slice(v, start, stop) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_slice(v, start, stop) for v in batch)
    return batch


def shard_batch(batch: Any, rank: int, world_size: int) -> Any:
    """This rank's contiguous slice of a global batch (tensors / tuples / lists / dicts).

    Every tensor with a leading dimension is cut along it; they must all have the same
    leading size ``N``, divisible by ``world_size`` (so every rank's mean loss has the
    same weight and the averaged gradient equals the one-process gradient).
    """
    if world_size <= 1:
        return batch
    sizes: set[int] = set()
    _leading(batch, sizes)
    if len(sizes) != 1:
        raise ValueError(f"cannot split the batch over {world_size} processes: its tensors have "
                         f"different leading (batch) sizes {sorted(sizes)}")
    n = sizes.pop()
    if n % world_size:
        raise ValueError(f"global batch size {n} is not divisible by the {world_size} processes; "
                         f"choose a batch size that is a multiple of the world size")
    per = n // world_size
    return _slice(batch, rank * per, (rank + 1) * per)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over all ranks (identity without a group). Returns a new tensor."""
    out = values.detach().clone()
    if _initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects)."""
    if _initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def params_in_sync(module: torch.nn.Module) -> bool:
    """True if every rank holds bitwise the same parameters (checksum compared by all-reduce).

    Under DistributedDataParallel every rank applies the same averaged gradient, so the
    parameters stay identical; they drift apart when the loss bypasses DDP's ``forward``.
    """
    if not (_initialized() and dist.get_world_size() > 1):
        return True
    params = [p.detach() for p in module.parameters()]
    if not params:
        return True
    with torch.no_grad():
        # a position-weighted sum in float64 so that swapped values do not cancel
        total = torch.zeros((), dtype=torch.float64, device=params[0].device)
        for i, p in enumerate(params):
            flat = p.reshape(-1).double()
            w = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
            total = total + (i + 1) * (flat * w).sum()
        hi, lo = total.reshape(1).clone(), total.reshape(1).clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return bool((hi == lo).item())
