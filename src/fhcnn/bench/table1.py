"""Table 1 of the paper: activation memory of the Table 2 networks, exactly.

Networks (paper, Table 2): the data (6 channels; hyperspectral 304x240x152, video
240x424x72) goes through two 3D Haar transforms in front (384 channels at 1/4 of every
axis), then ``HyperbolicNetwork(384, [(5, "up"), (6, "up"), (8, None)], dim=3)``: 5 layers
at 384 channels, 6 at 48, 8 at 6, 3x3x3 kernels. Hidden width = channels (the paper does not
state it), group norm, float32, batch 1.

* ``exact``: bytes saved for backward from the formula of :func:`fhcnn.bench.memory.analytic_saved`,
  which is checked to equal :func:`fhcnn.memory.saved_tensor_bytes` *exactly* on the same
  network at reduced spatial sizes (all saved tensors are per-voxel or constant, so the
  count is ``a * voxels + b``; the check confirms that law at several sizes);
* ``paper_model``: states only, float32 -- what the paper's numbers match (see ``notes``);
* ``measured``: peak memory of a real training step at reduced sizes, with
  ``peak / state size`` so it scales to the full size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..memory import saved_tensor_bytes
from ._common import (
    MiB,
    Spec,
    build_net,
    environment,
    forward_method,
    make_input,
    measured_activation_peaks,
    pyplot,
    save_figure,
    save_result,
    state_numel,
)
from .memory import analytic_saved

__all__ = ["PAPER", "run", "table_spec", "work"]

NAME = "table1"
UNITS = [[5, "up"], [6, "up"], [8, None]]
# data size (full resolution, 6 channels) of the paper's two examples
DATA = {"hyperspectral": [304, 240, 152], "video": [240, 424, 72]}
PAPER = {"hyperspectral": {"reversible": 798, "plain": 5057},
         "video": {"reversible": 528, "plain": 3693}}  # MB as printed in the paper's Table 1


def table_spec(coarse: list[int], dtype: str = "float32") -> Spec:
    """The Table 2 network on a coarse grid ``coarse`` (the data grid / 4 on every axis)."""
    return {"dim": 3, "channels": 384, "size": list(coarse), "units": UNITS, "batch": 1,
            "norm": "group", "dtype": dtype}


def _sizes(quick: bool) -> tuple[list[list[int]], list[list[int]]]:
    """(sizes for the exact saved-bytes check, sizes for measured peaks) on the coarse grid."""
    if quick:
        return [[2, 2, 2], [4, 2, 2], [4, 4, 2]], [[4, 4, 2]]
    return [[2, 2, 2], [4, 2, 2], [4, 4, 2], [6, 4, 4]], [[8, 8, 4], [16, 12, 8]]


def work(quick: bool) -> int:
    a, b = _sizes(quick)
    return len(a) + len(b)


def run(out_dir: str | Path, quick: bool = False, device: str = "cpu",
        tick: Callable[[str], None] | None = None, measure_peaks: bool = True,
        sizes_override: tuple[list[list[int]], list[list[int]]] | None = None) -> dict[str, Any]:
    """Writes ``table1.json`` and ``table1.png``."""
    tick = tick or (lambda msg: None)
    check_sizes, peak_sizes = sizes_override or _sizes(quick)
    methods = ("plain", "block", "reversible")
    checks = []
    for coarse in check_sizes:
        spec = table_spec(coarse)
        net = build_net(spec)
        x = make_input(spec)
        row: dict[str, Any] = {"coarse": coarse, "voxels": math.prod(coarse)}
        for m in methods:
            b, _ = saved_tensor_bytes(functools.partial(forward_method, net, x, m))
            row[m] = {"saved": b, "formula": analytic_saved(spec, m)}
        checks.append(row)
        tick(f"table1 check {coarse}")
    formula_exact = all(r[m]["saved"] == r[m]["formula"] for r in checks for m in methods)
    # scaling law: saved = a * voxels + b, from the first two sizes, predicts the others
    law: dict[str, Any] = {}
    for m in methods:
        (v0, b0), (v1, b1) = [(r["voxels"], r[m]["saved"]) for r in checks[:2]]
        a = (b1 - b0) // (v1 - v0)
        b = b0 - a * v0
        law[m] = {"bytes_per_coarse_voxel": a, "constant_bytes": b,
                  "predicts_all_sizes": all(a * r["voxels"] + b == r[m]["saved"] for r in checks)}
    measured: list[Any] = []
    if measure_peaks:
        for coarse in peak_sizes:
            spec = table_spec(coarse)
            peaks = measured_activation_peaks(spec, ("plain", "reversible"), device)
            state = state_numel(spec) * 4
            measured.append({"coarse": coarse, "state_bytes": state,
                             **{m: {"peak": peaks[m]["peak"], "peak_in_states": peaks[m]["peak"] / state}
                                for m in ("plain", "reversible")}})
            tick(f"table1 peak {coarse}")
    rows = {}
    for name, data in DATA.items():
        coarse = [s // 4 for s in data]
        spec = table_spec(coarse)
        state = state_numel(spec) * 4
        row = {"data": data, "coarse": coarse, "state_bytes": state, "paper_MB": PAPER[name]}
        for m in methods:
            row[m] = {"exact_saved_bytes": analytic_saved(spec, m),
                      "law_bytes": law[m]["bytes_per_coarse_voxel"] * math.prod(coarse)
                      + law[m]["constant_bytes"]}
            row[m]["exact_saved_MB"] = row[m]["exact_saved_bytes"] / 1e6
            row[m]["exact_saved_states"] = row[m]["exact_saved_bytes"] / state
        row["paper_in_states"] = {m: PAPER[name][m] * 1e6 / state for m in ("plain", "reversible")}
        if len(measured) >= 2:  # peak = a * voxels + b (b: parameter gradients, kernel copies)
            m0, m1 = measured[0], measured[-1]
            v0, v1 = math.prod(m0["coarse"]), math.prod(m1["coarse"])
            row["predicted_peak_bytes"] = {}
            for m in ("plain", "reversible"):
                a = (m1[m]["peak"] - m0[m]["peak"]) / (v1 - v0)
                row["predicted_peak_bytes"][m] = a * math.prod(coarse) + (m0[m]["peak"] - a * v0)
        rows[name] = row
    result = {
        "benchmark": NAME, "quick": quick, "environment": environment(device),
        "network": {"channels": 384, "units": UNITS, "dim": 3, "hidden": "= channels",
                    "norm": "group", "dtype": "float32", "pre_transforms": "2 x 3D Haar"},
        "checks": checks, "formula_equals_saved_tensor_bytes": formula_exact, "scaling_law": law,
        "measured": measured, "rows": rows,
        "notes": ("MB = 1e6 bytes as in the paper. The paper's numbers are states only in float32: "
                  "reversible = 3 states (the last pair plus one more, e.g. the state being "
                  "computed or the gradient), plain = one state per layer (19 for hyperspectral; "
                  "the video row corresponds to 21 states). Real autograd also keeps, per layer, "
                  "the conv output (for the normalization) and the activation output (for K^T): "
                  "(C + 2M) V floats per layer, so plain autograd stores about 3x the paper's "
                  "count with M = C; our reversible network saves exactly 2 states, and its peak "
                  "adds the transient memory of one layer's backward."),
    }
    return save_result(out_dir, NAME, result, plot)


def plot(result: dict[str, Any], path: str | Path) -> Path:
    from .memory import COLORS

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = list(result["rows"])
    bars = [("paper, non-reversible", lambda r: r["paper_MB"]["plain"] * 1e6, "tab:red", "//"),
            ("ours, plain autograd (saved)", lambda r: r["plain"]["exact_saved_bytes"], COLORS["plain"], ""),
            ("ours, block (saved)", lambda r: r["block"]["exact_saved_bytes"], COLORS["block"], ""),
            ("paper, reversible", lambda r: r["paper_MB"]["reversible"] * 1e6, "tab:blue", "//"),
            ("ours, reversible (saved)", lambda r: r["reversible"]["exact_saved_bytes"], COLORS["reversible"], "")]
    if all("predicted_peak_bytes" in result["rows"][n] for n in names):
        bars.append(("ours, reversible (peak, scaled)",
                     lambda r: r["predicted_peak_bytes"]["reversible"], "tab:cyan", ".."))
        bars.append(("ours, plain (peak, scaled)",
                     lambda r: r["predicted_peak_bytes"]["plain"], "salmon", ".."))
    width = 0.8 / len(bars)
    for i, (label, fn, color, hatch) in enumerate(bars):
        vals = [fn(result["rows"][n]) / MiB / 1024 for n in names]
        pos = [k + (i - len(bars) / 2 + 0.5) * width for k in range(len(names))]
        ax.bar(pos, vals, width, label=label, color=color, hatch=hatch, edgecolor="black", lw=0.5)
        for p, v in zip(pos, vals):
            ax.text(p, v, f"{v:.1f}", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{n}\n{'x'.join(map(str, result['rows'][n]['data']))}x6" for n in names])
    ax.set_ylabel("GiB (float32, batch 1)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("Table 1: activation memory of the paper's Table 2 networks", fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    return save_figure(fig, path)
