"""What a run may ask of the machine: memory, time and CPU threads, checked before it starts.

Every check raises :class:`~fhcnn.errors.InputError` (one line naming the limit) before the
output folder exists:

* **memory**: an estimate of the least memory a request needs (a lower bound: what must be
  held at once, never a guess at the peak) against what the machine has *available* now
  (``psutil.virtual_memory().available``, else ``os.sysconf``), or the free memory of the GPU
  for a CUDA device (``torch.cuda.mem_get_info``). Only what cannot fit is refused.
* **time**: no training step takes less than :data:`MIN_STEP_SECONDS` (one optimizer update
  of the smallest network fhcnn builds, on any device); a run whose steps at that rate would
  take longer than :data:`MAX_RUN_SECONDS` (one year) is refused.
* **threads**: at most the logical CPUs this process may run on (``os.sched_getaffinity``),
  since more threads than CPUs only make every parallel region wait (and a huge count makes
  OpenMP abort the process).
"""

from __future__ import annotations

import os
from typing import Any

from .errors import InputError

__all__ = ["available_memory", "check_memory", "check_steps", "check_threads", "logical_cpus",
           "MIN_STEP_SECONDS", "MAX_RUN_SECONDS"]

#: The least time one training step takes (seconds).
MIN_STEP_SECONDS = 1e-3
#: The longest run fhcnn starts (seconds): one year.
MAX_RUN_SECONDS = 365 * 24 * 3600


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.0f} MiB"


def available_memory() -> tuple[int, str]:
    """``(bytes available to a new allocation now, where the number comes from)``."""
    try:
        import psutil

        return int(psutil.virtual_memory().available), "available RAM (psutil)"
    except ImportError:  # pragma: no cover - psutil is a dependency
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "free RAM (sysconf)"
    except (OSError, ValueError, AttributeError):  # pragma: no cover - not POSIX
        return 1 << 62, "unknown"


def _device_memory(device: Any) -> tuple[int, str] | None:
    """Free memory of a CUDA device, ``None`` for any other device."""
    import torch

    dev = torch.device(device) if device is not None else None
    if dev is None or dev.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(dev)
    return int(free), f"free memory of {dev}"


def check_memory(nbytes: float, what: str, how: str = "", device: Any = None) -> None:
    """Refuse ``what`` when its least memory ``nbytes`` exceeds what is available (RAM, or the
    GPU's for a CUDA ``device``); ``how`` says how the bytes were counted."""
    limit, source = _device_memory(device) or available_memory()
    if nbytes > limit:
        raise InputError(f"{what} needs at least {_gib(nbytes)}{' (' + how + ')' if how else ''}, "
                         f"more than the {_gib(limit)} of {source}; choose a smaller size")


def check_steps(steps: int, key: str = "train.steps") -> None:
    """Refuse a run that would take more than a year even at :data:`MIN_STEP_SECONDS` a step."""
    if steps * MIN_STEP_SECONDS > MAX_RUN_SECONDS:
        years = steps * MIN_STEP_SECONDS / (365 * 24 * 3600)
        raise InputError(f"{key}={steps} would take at least {years:,.0f} years at "
                         f"{MIN_STEP_SECONDS * 1e3:g} ms a step (no step is faster); fhcnn starts "
                         f"runs of at most {int(MAX_RUN_SECONDS * (1 / MIN_STEP_SECONDS)):,} steps "
                         f"(one year)")


def logical_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def check_threads(threads: int | None, key: str = "train.threads") -> None:
    """Refuse a thread count below -1 or above the CPUs this process may use."""
    if threads is None:
        return
    if not isinstance(threads, int) or threads < -1:
        raise InputError(f"{key} must be >= 0 (0 = the free physical cores), -1 or null (torch's "
                         f"default), got {threads!r}")
    n = logical_cpus()
    if threads > n:
        raise InputError(f"{key}={threads} is more than the {n} CPU(s) this process may use; "
                         f"give at most {n}, or 0 to follow the free cores")
