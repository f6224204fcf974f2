"""Peak memory of one training step, measured in a fresh process.

``python -m fhcnn.bench._worker '<json>'`` with ``{"spec": ..., "method": ..., "idle": bool,
"device": "cpu"|"cuda"}`` prints one JSON line::

    {"hwm": peak resident set (bytes), "rss": resident set at the end, "cuda_peak": ...}

The process builds the model and input and runs one warm-up step *at the same size* (the
first step allocates 40-70 MB of one-off kernel caches and thread-pool buffers that would
otherwise swamp small networks). On Linux it then resets the peak-RSS counter
(``/proc/self/clear_refs``), so the process, idle at that point, is its own baseline:
``baseline`` is its peak RSS while idle and ``hwm`` the peak RSS after the measured step;
the activation memory is ``hwm - baseline``. Without ``clear_refs`` the warm-up uses a tiny
input and the caller subtracts an ``idle`` process (same imports and allocations, no step).
Run it with ``MALLOC_MMAP_THRESHOLD_`` set so that freed tensors leave the resident set.
On CUDA, ``cuda_peak`` is ``max_memory_allocated`` during the step minus what was allocated
before it.
"""

from __future__ import annotations

import functools
import gc
import json
import resource
import sys
from typing import Any


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss() -> int:
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def current_rss() -> int:
    return _status_bytes("VmRSS") or 0


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_bytes("VmHWM") is not None
    except OSError:
        return False


def _levels(spec: dict[str, Any]) -> list[int]:
    from ._common import spec_units, unit_levels

    return unit_levels(spec_units(spec))


def build(spec: dict[str, Any], method: str, device: str):
    """Return ``(model, make_x(spatial | None), forward(model, x))`` for ``method``."""
    from ._common import build_net, forward_method, make_input

    if method in ("memcnn", "iunets"):
        from . import peers

        model = peers.build_peer(spec, method).to(device)
        return model, (lambda sp=None: make_input(spec, device, sp)), \
            (lambda m, x: peers.peer_forward(m, x, method))
    net = build_net(spec, device)
    return net, (lambda sp=None: make_input(spec, device, sp)), \
        (lambda m, x: forward_method(m, x, method))


def main(argv: list[str]) -> int:
    import torch

    from ..memory import cuda_peak_bytes
    from ._common import train_step

    job = json.loads(argv[0])
    spec, method, device = job["spec"], job["method"], job.get("device", "cpu")
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    model, make_x, fwd = build(spec, method, device)
    x = make_x()
    can_reset = device == "cpu" and _reset_peak()
    levels = max([0] + [lv for lv in _levels(spec)])
    xw = x if can_reset else make_x([2 ** levels * 2] * spec["dim"])
    train_step(model, xw, functools.partial(fwd, model, xw))
    del xw
    for p in model.parameters():
        p.grad = None
    gc.collect()
    result: dict[str, Any] = {"method": method, "idle": bool(job.get("idle")), "reset": can_reset}
    if can_reset:
        _reset_peak()
        result["baseline"] = peak_rss()

    def step() -> None:
        if not job.get("idle"):
            train_step(model, x, lambda: fwd(model, x))

    if device.startswith("cuda"):
        result["cuda_peak"] = cuda_peak_bytes(step, device)[0]
    else:
        step()
    result["hwm"] = peak_rss()
    result["rss"] = current_rss()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
