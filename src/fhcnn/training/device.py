"""Device selection: ``auto`` = CUDA, then Apple MPS, then CPU; or an explicit device. CPU
threads: :class:`CpuThreads` (as many as free physical cores)."""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InputError
from .distributed import world_size

__all__ = ["resolve_device", "CpuThreads", "physical_cores", "unwrap_model", "move_to_device"]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(spec: str | torch.device = "auto", local_rank: int | None = None) -> torch.device:
    """Return the ``torch.device`` for ``spec``.

    Args:
        spec: ``"auto"`` (CUDA if available, then MPS, then CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"``, ``"mps"`` or a ``torch.device``.
        local_rank: under multi-process training, the process's rank on its node; a plain
            ``"cuda"`` (or ``"auto"`` resolving to CUDA) then means ``cuda:local_rank``.
            Defaults to the ``LOCAL_RANK`` environment variable set by ``torchrun``.

    Raises:
        InputError: an unknown spec, or a device that is not available here.
    """
    if local_rank is None and "LOCAL_RANK" in os.environ and world_size() > 1:
        local_rank = int(os.environ["LOCAL_RANK"])
    text = str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            text = "cuda"
        elif _mps_available():
            text = "mps"
        else:
            text = "cpu"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise InputError(f"device {spec!r} is not understood; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {spec!r} requested but CUDA is not available on this machine "
                             f"(use --device cpu or auto)")
        index = dev.index if dev.index is not None else (local_rank or 0)
        if index >= torch.cuda.device_count():
            raise InputError(f"device cuda:{index} requested but only {torch.cuda.device_count()} "
                             f"CUDA device(s) are visible")
        return torch.device("cuda", index)
    if dev.type == "mps":
        if not _mps_available():
            raise InputError(f"device {spec!r} requested but MPS is not available on this machine")
        return dev
    if dev.type == "cpu":
        return torch.device("cpu")
    raise InputError(f"device {spec!r} is not supported; use auto, cpu, cuda, cuda:N or mps")


# ---------------------------------------------------------------- CPU threads
def physical_cores() -> int:
    """Physical cores this process may run on (hyperthread siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        topo = f"/sys/devices/system/cpu/cpu{c}/topology/"
        try:
            with open(topo + "physical_package_id") as f1, open(topo + "core_id") as f2:
                cores.add((f1.read().strip(), f2.read().strip()))
        except OSError:
            cores.add(("cpu", str(c)))
    return max(1, len(cores))


def _cpu_busy_seconds() -> float | None:
    """Busy CPU-seconds of the whole machine since boot (Linux ``/proc/stat``), else None."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return (sum(fields[:8]) - idle) / float(os.sysconf("SC_CLK_TCK"))


class CpuThreads:
    """Chooses torch's intra-op CPU threads for a run, and keeps the choice right as the load
    of the machine changes.

    ``requested``: ``N > 0`` = exactly N threads; ``0`` = automatic: the physical cores not
    kept busy by *other* processes (measured from ``/proc/stat`` minus this process's own CPU
    time; a core counts as free when others use less than 30 % of it), at least 1. Running
    more threads than free cores makes every parallel region wait for a descheduled thread:
    on 2 busy cores, 2 threads ran a training step 16x slower than 1. Automatic mode re-checks
    every ``period`` seconds (:meth:`check`). ``None`` or ``-1``: leave torch's setting alone.
    :meth:`close` restores the thread count found at the start. Inside another open
    ``CpuThreads`` (e.g. a prediction run as a validation during training) it does nothing.
    """

    _open = 0

    def __init__(self, requested: int | None, log: Callable[[str], None] | None = None,
                 period: float = 15.0, what: str = "") -> None:
        self.requested = -1 if requested is None or CpuThreads._open else int(requested)
        self._closed = False
        CpuThreads._open += 1
        self.log, self.period, self.what = log, period, what
        self.previous = torch.get_num_threads()
        self.cores = physical_cores()
        self.reason = "torch's default"
        self._mark: tuple[float, float, float] | None = None
        if self.requested > 0:
            self._set(self.requested, f"{self.requested} requested")
        elif self.requested == 0:
            self._mark = self._sample()
            time.sleep(0.25)
            others = self._others()
            self._set(self._auto(others), self._why(others))
        self.chosen = torch.get_num_threads()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        busy = _cpu_busy_seconds()
        return time.perf_counter(), time.process_time(), -1.0 if busy is None else busy

    def _others(self) -> float | None:
        """CPUs kept busy by other processes since the last sample (None: unknown)."""
        now = self._sample()
        if self._mark is None or now[2] < 0 or self._mark[2] < 0:
            self._mark = now
            return None
        wall = now[0] - self._mark[0]
        mine = now[1] - self._mark[1]
        busy = now[2] - self._mark[2]
        self._mark = now
        return max(0.0, (busy - mine) / max(wall, 1e-3))

    def _auto(self, others: float | None) -> int:
        if others is None:
            return self.cores
        return max(1, min(self.cores, math.floor(self.cores - others + 0.3)))

    def _why(self, others: float | None) -> str:
        if others is None:
            return f"auto: {self.cores} physical core(s), load of other processes unknown"
        return (f"auto: {self.cores} physical core(s), other processes busy on {others:.1f}; "
                f"set train.threads=N to fix it")

    def _set(self, n: int, reason: str) -> None:
        torch.set_num_threads(n)
        self.reason = reason
        if self.log is not None:
            self.log(f"torch threads{self.what}: {n} ({reason})")

    def check(self) -> None:
        """In automatic mode, every ``period`` seconds: follow the load of other processes."""
        if self.requested != 0 or self._mark is None or time.perf_counter() - self._mark[0] < self.period:
            return
        others = self._others()
        n = self._auto(others)
        if n != torch.get_num_threads():
            self._set(n, self._why(others))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        CpuThreads._open -= 1
        if self.requested >= 0:
            torch.set_num_threads(self.previous)

    def __enter__(self) -> "CpuThreads":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or DataParallel) wrapper."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors (and NumPy arrays, converted) in nested tuples / lists / dicts moved to ``device``
    (other leaves kept)."""
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(np.ascontiguousarray(batch))
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch
