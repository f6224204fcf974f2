"""What a measured time is relative to: the machine, its load, and one fixed reference workload.

A wall time means little without the machine it was measured on: the same ``fhcnn demo`` takes
27 s on one 2-core machine and five times that on another. Every benchmark that records a time
also records :func:`environment`: the CPU model, the core and torch thread counts, the load
average, and the wall time of :data:`REFERENCE`, a fixed plain-PyTorch workload measured in the
same process. A time divided by ``environment()["reference_s"]`` (the docs write it as
*N ref*) carries over between machines far better than the seconds themselves, since fhcnn's
time is mostly 3D convolutions forward and backward, which is what the reference runs.

Measure your machine's reference time with::

    python -m fhcnn.bench.reference
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["REFERENCE", "cpu_model", "environment", "reference_seconds"]

#: the workload :func:`reference_seconds` times (recorded beside every time)
REFERENCE = ("forward + backward (input and weight gradients) of a 16 -> 16 channel 3x3x3 conv3d, "
             "padding 1, on a (2, 16, 16, 32, 32) float32 batch; one torch thread; median of 7 "
             "after one warm-up")


def reference_seconds(repeats: int = 7) -> float:
    """Median wall seconds of :data:`REFERENCE` on one torch thread (the thread count is
    restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 16, 16, 32, 32, generator=g, requires_grad=True)
        w = torch.randn(16, 16, 3, 3, 3, generator=g, requires_grad=True)

        def once() -> float:
            t0 = time.perf_counter()
            y = torch.nn.functional.conv3d(x, w, padding=1)
            torch.autograd.grad(y, (x, w), torch.ones_like(y))
            return time.perf_counter() - t0

        once()
        return float(statistics.median(once() for _ in range(repeats)))
    finally:
        torch.set_num_threads(threads)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` says)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: str = "cpu", reference: bool = True) -> dict[str, Any]:
    """The versions, the machine (CPU model, cores, torch threads, 1-minute load average) and,
    with ``reference``, the wall time of :data:`REFERENCE` measured now (``reference_s``)."""
    from .. import __version__

    env: dict[str, Any] = {
        "fhcnn": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "device": str(device), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if torch.device(device).type == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name(0)
    if reference:
        env["reference_s"] = round(reference_seconds(), 4)
        env["reference"] = REFERENCE
    return env


def main() -> None:
    print(json.dumps(environment(), indent=1))


if __name__ == "__main__":
    main()
