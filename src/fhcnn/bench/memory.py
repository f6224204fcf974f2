"""Figure 1 of the paper, measured: training memory vs depth, input size and coarsenings.

For plain autograd, block-reversible and fully reversible networks this records

* ``saved``: bytes autograd keeps for the backward pass (:func:`fhcnn.memory.saved_tensor_bytes`,
  exact and deterministic);
* ``analytic``: the same number from a formula (per layer ``(C + 2M) V`` floats -- the conv
  input, the conv output kept by the normalization and the activation output kept by the
  adjoint conv -- plus the flipped copy of ``K`` and the normalization statistics; block:
  the pair entering every transition plus the last pair plus the input; reversible: the last
  pair plus the input, usually the caller's batch, which is held anyway);
* ``paper_model``: the paper's model, state size x number of states stored (plain: one state
  per layer, block: two per transition plus the last pair, reversible: the last pair);
* ``peak``: measured peak memory of one training step in a fresh process above its idle
  baseline (CPU: peak resident set with ``MALLOC_MMAP_THRESHOLD_``; CUDA: peak allocated).
  It includes the transient memory of the backward pass (gradients, one layer's internals).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..memory import saved_tensor_bytes
from ._common import (
    MiB,
    Spec,
    build_net,
    clean,
    environment,
    forward_method,
    hidden_for,
    make_input,
    measured_activation_peaks,
    pyplot,
    save_figure,
    save_result,
    spatial_of,
    spec_units,
    state_numel,
    unit_levels,
)

__all__ = ["METHODS", "analytic_saved", "paper_model_bytes", "run", "sweeps", "work"]

METHODS = ("plain", "block", "reversible")
NAME = "memory"


def _group_count(channels: int, norm: str) -> int:
    if norm == "group":
        return next(g for g in range(min(8, channels), 0, -1) if channels % g == 0)
    if norm == "instance":
        return channels
    return 0


def analytic_saved(spec: Spec, method: str, itemsize: int = 4) -> int:
    """Bytes saved for backward by ``method`` according to the formula (see module doc)."""
    units = spec_units(spec)
    n_batch, dim, k = spec.get("batch", 1), spec["dim"], spec.get("kernel_size", 3)
    E = state_numel(spec)
    transitions = sum(1 for _, t in units if t is not None)
    # reversible modes also keep the input (one storage: the pair starts at (x, x)), which a
    # second backward (retain_graph=True) recomputes the released outputs from
    if method == "reversible":
        return 3 * E * itemsize
    if method == "block":
        # the pair entering a first transition after 0 (1) layers is (x, x) ((x, Y_1)), x in
        # the computing layout: a channels-last copy in 2D/3D (one storage for (x, x)), the
        # input itself in 1D (2 (1) storages shared with the input)
        first_n, first_t = units[0]
        if first_t is None or first_n > 1:
            shared = 0
        elif dim in (2, 3):
            shared = 1 if first_n == 0 else 0
        else:
            shared = 2 - first_n
        return (2 * E * (transitions + 1) + E - E * shared) * itemsize
    if method != "plain":
        raise ValueError(f"no formula for {method!r}")
    vox = math.prod(spatial_of(spec)) * n_batch
    total = 0
    hidden = hidden_for(spec) if "hidden_cap" in spec else [None] * len(units)
    for (n, _), level, m in zip(units, unit_levels(units), hidden):
        f = 2 ** (dim * abs(level))
        c = spec["channels"] * f if level >= 0 else spec["channels"] // f
        m = c if m is None else m
        v = vox // f if level >= 0 else vox * f
        norm = spec.get("norm", "group")
        stats = 2 * n_batch * _group_count(m, norm) if norm in ("group", "instance") else 0
        if norm == "batch":
            stats = 2 * m
        total += n * ((c + 2 * m) * v + m * c * k**dim + stats)
    return total * itemsize


def paper_model_bytes(spec: Spec, method: str, itemsize: int = 4) -> int:
    """The paper's model: state size x number of states stored."""
    E = state_numel(spec) * itemsize
    units = spec_units(spec)
    if method == "plain":
        return E * sum(n for n, _ in units)
    if method == "block":
        return 2 * E * (sum(1 for _, t in units if t is not None) + 1)
    return 2 * E


def param_bytes(net: torch.nn.Module) -> int:
    """Bytes of the parameters (= of their gradients, which every method allocates)."""
    return sum(p.numel() * p.element_size() for p in net.parameters() if p.requires_grad)


def add_param_bytes(result: dict[str, Any]) -> dict[str, Any]:
    """Fill ``param_bytes`` and ``peak_minus_param_grads`` of a result (e.g. an older JSON)."""
    for rec in result["sweeps"].values():
        rec["param_bytes"] = [param_bytes(build_net(s)) for s in rec["specs"]]
        rec["peak_minus_param_grads"] = {
            m: [None if p is None else p - b for p, b in zip(rec["peak"][m], rec["param_bytes"])]
            for m in result["methods"]}
    return result


def sweeps(quick: bool) -> dict[str, list[Spec]]:
    """The three sweeps of Figure 1: depth, input size, number of coarsenings."""
    if quick:
        base = {"dim": 2, "channels": 4, "size": 64, "stages": 4, "depth": 18, "hidden_cap": 8}
        depths, sizes, stages, fixed_depth = [9, 18, 36], [32, 64, 128], [0, 2, 4], 18
    else:
        base = {"dim": 2, "channels": 8, "size": 256, "stages": 4, "depth": 36, "hidden_cap": 16}
        depths, sizes, stages, fixed_depth = [9, 18, 36, 72, 144], [64, 128, 256, 512], \
            [0, 1, 2, 3, 4, 5], 44
    return {
        "depth": [dict(base, depth=d) for d in depths],
        "size": [dict(base, size=s) for s in sizes],
        "stages": [dict(base, stages=s, depth=fixed_depth) for s in stages],
    }


def work(quick: bool, measure_peaks: bool = True) -> int:
    sw = sweeps(quick)
    n = sum(len(v) for v in sw.values())
    if measure_peaks and quick:
        return n + len(sw["depth"])
    return n * (2 if measure_peaks else 1)


def _x_of(sweep: str, spec: Spec) -> int:
    return {"depth": spec["depth"], "size": spatial_of(spec)[0], "stages": spec["stages"]}[sweep]


def run(out_dir: str | Path, quick: bool = False, device: str = "cpu",
        tick: Callable[[str], None] | None = None, measure_peaks: bool = True,
        sweeps_override: dict[str, list[Spec]] | None = None) -> dict[str, Any]:
    """Run the three sweeps; writes ``memory.json`` and ``memory.png`` to ``out_dir``.

    With ``quick``, peaks are measured for the depth sweep only.
    """
    tick = tick or (lambda msg: None)
    sw = sweeps_override or sweeps(quick)
    result: dict[str, Any] = {"benchmark": NAME, "quick": quick, "environment": environment(device),
                              "methods": list(METHODS), "units": "bytes", "sweeps": {}}
    for sweep, specs in sw.items():
        rec: dict[str, Any] = {"x_name": sweep, "x": [], "specs": specs, "state_bytes": [],
                               "param_bytes": [], "peak_minus_param_grads": {m: [] for m in METHODS},
                               "saved": {m: [] for m in METHODS},
                               "analytic": {m: [] for m in METHODS},
                               "paper_model": {m: [] for m in METHODS},
                               "peak": {m: [] for m in METHODS}}
        for spec in specs:
            rec["x"].append(_x_of(sweep, spec))
            rec["state_bytes"].append(state_numel(spec) * 4)
            net = build_net(spec, device)
            x = make_input(spec, device)
            rec["param_bytes"].append(param_bytes(net))
            for m in METHODS:
                b, _ = saved_tensor_bytes(functools.partial(forward_method, net, x, m))
                rec["saved"][m].append(b)
                rec["analytic"][m].append(analytic_saved(spec, m))
                rec["paper_model"][m].append(paper_model_bytes(spec, m))
            del net, x
            tick(f"memory {sweep}={rec['x'][-1]} saved")
            if measure_peaks and (not quick or sweep == "depth"):
                peaks = measured_activation_peaks(spec, METHODS, device)
                for m in METHODS:
                    rec["peak"][m].append(clean(peaks[m]["peak"]))
                tick(f"memory {sweep}={rec['x'][-1]} peak")
            else:
                for m in METHODS:
                    rec["peak"][m].append(None)
        for m in METHODS:
            rec["peak_minus_param_grads"][m] = [None if p is None else p - b for p, b in
                                                zip(rec["peak"][m], rec["param_bytes"])]
        rec["analytic_matches_saved"] = all(
            a == s for m in METHODS for a, s in zip(rec["analytic"][m], rec["saved"][m]))
        result["sweeps"][sweep] = rec
    result["peak_method"] = ("cuda max_memory_allocated during the step" if device.startswith("cuda")
                             else "CPU peak RSS (VmHWM) of a fresh process above its idle baseline, "
                                  "MALLOC_MMAP_THRESHOLD_=65536")
    return save_result(out_dir, NAME, result, plot)


COLORS = {"plain": "tab:red", "block": "tab:orange", "reversible": "tab:blue",
          "checkpoint": "tab:green", "memcnn": "tab:purple", "iunets": "tab:brown"}
TITLES = {"depth": "vs depth ({stages} coarsen + {stages} refine stages, {size}$^2$)",
          "size": "vs input size (depth {depth}, {stages} stages)",
          "stages": "vs coarsenings (depth {depth}, {size}$^2$)"}
XLABELS = {"depth": "layers", "size": "input side (pixels)", "stages": "number of coarsenings"}


def plot(result: dict[str, Any], path: str | Path) -> Path:
    plt = pyplot()
    sw = result["sweeps"]
    fig, axes = plt.subplots(1, len(sw), figsize=(5.2 * len(sw), 4.4), squeeze=False)
    for ax, (name, rec) in zip(axes[0], sw.items()):
        x = rec["x"]
        for m in result["methods"]:
            c = COLORS[m]
            act = rec.get("peak_minus_param_grads", {}).get(m, [None] * len(x))
            if any(v is not None for v in act):
                ax.plot(x, [None if v is None else max(v, 1) / MiB for v in act], "o-", color=c)
                ax.plot(x, [None if v is None else v / MiB for v in rec["peak"][m]], "-.", lw=0.8,
                        color=c)
            ax.plot(x, [v / MiB for v in rec["saved"][m]], "s--", color=c, ms=4, mfc="none")
            ax.plot(x, [v / MiB for v in rec["paper_model"][m]], ":", color=c, lw=1.5)
        s0 = rec["specs"][-1]
        ax.set_title(TITLES[name].format(stages=s0.get("stages"), size=spatial_of(s0)[0],
                                         depth=s0.get("depth")), fontsize=10)
        ax.set_xlabel(XLABELS[name])
        ax.set_ylabel("MiB")
        ax.set_yscale("log")
        if name in ("depth", "size"):
            ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=COLORS[m], lw=6, label=m) for m in result["methods"]]
    handles += [Line2D([], [], color="gray", marker="o", label="measured peak - parameter gradients"),
                Line2D([], [], color="gray", ls="-.", lw=0.8, label="measured peak (raw)"),
                Line2D([], [], color="gray", ls="--", marker="s", mfc="none", ms=4,
                       label="saved for backward (= formula, exact)"),
                Line2D([], [], color="gray", ls=":", lw=1.5, label="paper model: states x number stored")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.1))
    spec = next(iter(sw.values()))["specs"][0]
    fig.suptitle(f"Training memory, {spec['dim']}D, {spec['channels']} channels, batch "
                 f"{spec.get('batch', 1)}, float32 ({result['peak_method']})", fontsize=10)
    return save_figure(fig, path)
