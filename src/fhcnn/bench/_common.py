"""Shared helpers of the benchmarks: network specs, one training step, timing, output files.

A *spec* is a small JSON-able dict that fully determines a network and its input, so a
fresh subprocess (for peak-memory measurement) can rebuild exactly the same thing::

    {"dim": 2, "channels": 8, "size": 128, "stages": 4, "depth": 36, "hidden_cap": 16,
     "batch": 1, "h": 0.2, "norm": "group", "dtype": "float32", "seed": 0}

``size`` is an int (every spatial axis) or a list. ``stages`` coarsenings are followed by as
many refinements and a last unit at the input resolution; ``depth`` layers are spread as
evenly as possible over the ``2 * stages + 1`` units. ``hidden_cap`` limits the hidden width
``M`` of ``K`` (the state at level ``l`` has ``channels * 2**(dim*l)`` channels).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import atomic_path, atomic_write_text, make_dir
from ..network import HyperbolicNetwork
from ..reversible import LeapfrogStep, TransitionStep, internal_format, run_steps
from .reference import environment

__all__ = [
    "DTYPES",
    "MODES",
    "MiB",
    "Spec",
    "build_net",
    "checkpoint_forward",
    "clean",
    "environment",
    "forward_method",
    "hidden_for",
    "loss_of",
    "make_input",
    "measure_peak",
    "measured_activation_peaks",
    "median",
    "net_steps",
    "pyplot",
    "save_figure",
    "spatial_of",
    "spec_units",
    "state_numel",
    "step_params",
    "time_interleaved",
    "train_step",
    "unit_levels",
    "units_for",
    "write_json",
]

Spec = dict[str, Any]

MODES: dict[str, bool | str] = {"plain": False, "block": "block", "reversible": True}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def units_for(depth: int, stages: int) -> list[tuple[int, str | None]]:
    """``stages`` down units, ``stages`` up units, one last unit; ``depth`` layers spread evenly."""
    n_units = 2 * stages + 1
    base, rem = divmod(depth, n_units)
    kinds: list[str | None] = ["down"] * stages + ["up"] * stages + [None]
    return [(base + (1 if i < rem else 0), kind) for i, kind in enumerate(kinds)]


def unit_levels(units: Sequence[tuple[int, str | None]]) -> list[int]:
    levels, level = [], 0
    for _, kind in units:
        levels.append(level)
        level += 1 if kind == "down" else -1 if kind == "up" else 0
    return levels


def hidden_for(spec: Spec) -> list[int]:
    """Hidden width per unit: the unit's channels, capped at ``spec['hidden_cap']``."""
    units = spec_units(spec)
    cap = spec.get("hidden_cap")
    out = []
    for level in unit_levels(units):
        f = 2 ** (spec["dim"] * abs(level))
        c = spec["channels"] * f if level >= 0 else max(spec["channels"] // f, 1)
        out.append(c if cap is None else min(c, cap))
    return out


def spec_units(spec: Spec) -> list[tuple[int, str | None]]:
    if "units" in spec:
        return [(int(n), t) for n, t in spec["units"]]
    return units_for(spec["depth"], spec.get("stages", 0))


def spatial_of(spec: Spec) -> list[int]:
    size = spec["size"]
    return [int(size)] * spec["dim"] if isinstance(size, (int, float)) else [int(s) for s in size]


def state_numel(spec: Spec) -> int:
    """Elements of one state (the same at every level: wavelets preserve the count)."""
    return spec.get("batch", 1) * spec["channels"] * math.prod(spatial_of(spec))


def build_net(spec: Spec, device: str | torch.device = "cpu") -> HyperbolicNetwork:
    torch.manual_seed(spec.get("seed", 0))
    hidden = spec.get("hidden")
    if hidden is None and "hidden_cap" in spec:
        hidden = hidden_for(spec)
    net = HyperbolicNetwork(spec["channels"], spec_units(spec), dim=spec["dim"], hidden=hidden,  # type: ignore[arg-type]
                            h=spec.get("h", 0.2), norm=spec.get("norm", "group"),
                            init_scale=spec.get("init_scale", 1.0),
                            kernel_size=spec.get("kernel_size", 3))
    return net.to(device=device, dtype=DTYPES[spec.get("dtype", "float32")])


def make_input(spec: Spec, device: str | torch.device = "cpu", spatial: Sequence[int] | None = None
               ) -> Tensor:
    g = torch.Generator().manual_seed(spec.get("seed", 0) + 1)
    shape = (spec.get("batch", 1), spec["channels"], *(spatial or spatial_of(spec)))
    # drawn in float32 and cast, so float32 and float64 runs see the same numbers
    x = torch.randn(shape, generator=g).to(DTYPES[spec.get("dtype", "float32")])
    if spec.get("channels_last") and x.dim() in (4, 5):
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x.to(device)


def net_steps(net: HyperbolicNetwork) -> list[LeapfrogStep | TransitionStep]:
    """The step list of ``net`` rebuilt from its public layout (``units``, ``layers``,
    ``transitions``), for running it through other gradient schemes (checkpointing)."""
    steps: list[LeapfrogStep | TransitionStep] = []
    li = ti = 0
    h2 = net.h ** 2
    for n_layers, kind in net.units:
        for _ in range(n_layers):
            steps.append(LeapfrogStep(net.layers[li], h2))
            li += 1
        if kind is not None:
            steps.append(TransitionStep(net.transitions[ti], inverse=(kind == "up")))
            ti += 1
    return steps


def step_params(steps: Sequence[Any]) -> list[Tensor]:
    """Trainable parameters used by ``steps`` (each once, in order)."""
    seen: dict[int, Tensor] = {}
    for s in steps:
        module = s.f if isinstance(s, LeapfrogStep) else s.wavelet
        for p in module.parameters():
            if p.requires_grad:
                seen.setdefault(id(p), p)
    return list(seen.values())


def loss_of(y: Tensor) -> Tensor:
    """A cheap scalar loss touching every output element."""
    return y.square().mean()


def checkpoint_forward(steps: Sequence[Any], x: Tensor, every: int) -> Tensor:
    """Plain autograd with ``torch.utils.checkpoint`` around every ``every`` consecutive steps."""
    from torch.utils.checkpoint import checkpoint

    def segment(seg: Sequence[Any]) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
        return lambda p, c: run_steps(seg, p, c, mode=False)

    # computed in the network's layout (channels-last in 2D/3D), converted once each way, as
    # the network itself does (each segment would otherwise convert its pair in and out)
    fmt = internal_format(x)
    p = c = x if fmt is None else x.contiguous(memory_format=fmt)
    for i in range(0, len(steps), every):
        p, c = checkpoint(segment(steps[i:i + every]), p, c, use_reentrant=False)
    return c.contiguous()


def forward_method(net: HyperbolicNetwork, x: Tensor, method: str) -> Tensor:
    """``method``: ``plain | block | reversible | checkpoint:K``."""
    if method in MODES:
        net.reversible = MODES[method]  # type: ignore[assignment]
        return net(x)
    if method.startswith("checkpoint:"):
        return checkpoint_forward(net_steps(net), x, int(method.split(":", 1)[1]))
    raise ValueError(f"unknown method {method!r}")


def train_step(model: torch.nn.Module, x: Tensor, forward: Callable[[], Tensor]) -> float:
    """One forward + backward (parameter gradients set to None first); returns the loss."""
    for p in model.parameters():
        p.grad = None
    loss = loss_of(forward())
    loss.backward()
    return float(loss.detach())


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                     device: str | torch.device = "cpu",
                     progress: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Time each function ``repeats`` times, interleaved (round-robin, rotating start), so
    that machine-load drift hits all of them alike. Returns the raw seconds per function."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            sync(device)
            t0 = time.perf_counter()
            fns[n]()
            sync(device)
            out[n].append(time.perf_counter() - t0)
        if progress is not None:
            progress()
    return out


def median(xs: Iterable[float]) -> float:
    return float(statistics.median(list(xs)))


def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    make_dir(path.parent)
    atomic_write_text(path, json.dumps(obj, indent=1, default=_json_default) + "\n")
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def save_result(out_dir: str | Path, name: str, result: dict[str, Any],
                plot: Callable[[dict[str, Any], Path], Any]) -> dict[str, Any]:
    """Write ``out_dir/<name>.json`` and its figure ``out_dir/<name>.png`` (drawn by ``plot``);
    returns ``result``."""
    out = Path(out_dir)
    write_json(out / f"{name}.json", result)
    plot(result, out / f"{name}.png")
    return result


def clean(x: float | None) -> float | None:
    """NaN/inf -> None (JSON null)."""
    return None if x is None or not math.isfinite(x) else float(x)


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    make_dir(path.parent)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


MiB = 2.0 ** 20


def measure_peak(spec: Spec, method: str, device: str = "cpu", idle: bool = False,
                 mmap_threshold: int = 65536, timeout: float = 1800,
                 threads: int | None = None) -> dict[str, Any]:
    """Run :mod:`fhcnn.bench._worker` in a fresh process; returns its JSON result."""
    import subprocess
    import sys

    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    env.setdefault("PYTHONWARNINGS", "ignore")
    job = json.dumps({"spec": spec, "method": method, "device": device, "idle": idle,
                      "threads": threads or torch.get_num_threads()})
    proc = subprocess.run([sys.executable, "-m", "fhcnn.bench._worker", job], check=False, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker failed for {method} on {spec}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measured_activation_peaks(spec: Spec, methods: Sequence[str], device: str = "cpu"
                              ) -> dict[str, dict[str, Any]]:
    """Peak memory of one training step above the idle process, per method (bytes).

    On CUDA the number is ``max_memory_allocated`` during the step minus what was allocated
    before; on CPU ``VmHWM(step) - VmHWM(idle)``, the idle baseline taken in the same fresh
    process after a warm-up step (peak counter reset), or, where the peak counter cannot be
    reset, from a separate idle process per model family.
    """
    out: dict[str, dict[str, Any]] = {}
    idle: dict[str, dict[str, Any]] = {}
    for m in methods:
        fam = m if m in ("memcnn", "iunets") else "fhcnn"
        r = measure_peak(spec, m, device)
        if device.startswith("cuda"):
            out[m] = {"peak": r["cuda_peak"], "raw": r}
            continue
        if r.get("reset"):
            out[m] = {"peak": r["hwm"] - r["baseline"], "hwm": r["hwm"], "idle_hwm": r["baseline"]}
            continue
        if fam not in idle:
            idle[fam] = measure_peak(spec, m, device, idle=True)
        out[m] = {"peak": r["hwm"] - idle[fam]["hwm"], "hwm": r["hwm"], "idle_hwm": idle[fam]["hwm"]}
    return out
