"""Where the peak of a reversible training step goes, in states, and the Table-2-shaped ratio.

Two measurements, side by side:

* ``decomposition``: one training step (reversible) replayed with
  :class:`fhcnn.memory.LiveBytesTracker` (every byte PyTorch allocates and frees, in order;
  deterministic). At the step's peak, the live bytes are split into

  - the **saved pair**: the state pair backward is at (2 states),
  - the **gradient pair**: the gradients of that pair (2 states; 1 in the first step, where the
    unused output ``Y_prev`` has none),
  - **layer internals**: what the step of backward that holds the peak allocated on top of
    what was live when it started (one layer's intermediate tensors for its vector-Jacobian
    product, and their gradients),
  - **parameter gradients** accumulated so far (every method holds these),
  - **everything else** (the rest: e.g. the output gradient autograd holds while the
    reversible backward runs).

  Everything is relative to the moment before the forward pass (the input and the
  parameters are not counted) and reported in bytes and in states.
* ``rss``: peak resident memory of one training step above the idle process (the measure of
  :mod:`fhcnn.bench.peers`) for plain autograd and the reversible network on the same net,
  and their ratio.

Default nets: the peers benchmark's (2D, 8 channels, 256^2, 30 layers, 2 coarsenings) and a
Table-2-shaped one (2D, 96 channels at 256^2, units ``5 up, 6 up, 8``, default hidden width).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..memory import LiveBytesTracker
from ._common import (
    Spec,
    build_net,
    environment,
    forward_method,
    loss_of,
    make_input,
    measured_activation_peaks,
    pyplot,
    save_figure,
    save_result,
    state_numel,
)
from .peers import configs as peer_configs

__all__ = ["configs", "decompose", "run", "work"]

NAME = "backward_peak"
TABLE2_SHAPED: Spec = {"dim": 2, "channels": 96, "size": 256,
                       "units": [[5, "up"], [6, "up"], [8, None]]}


def configs(quick: bool) -> dict[str, Spec]:
    if quick:
        return {"peers": dict(peer_configs(True)["spec"]),
                "table2_shaped": dict(TABLE2_SHAPED, size=32)}
    return {"peers": dict(peer_configs(False)["spec"]), "table2_shaped": dict(TABLE2_SHAPED)}


def work(quick: bool) -> int:
    return 3 * len(configs(quick))


def decompose(spec: Spec, device: str = "cpu") -> dict[str, Any]:
    """Decompose the peak of one reversible training step (see the module doc)."""
    if device != "cpu":
        raise ValueError("the decomposition replays CPU allocator events; use device='cpu'")
    net = build_net(spec, device)
    x = make_input(spec, device)
    state = state_numel(spec) * x.element_size()
    # warm-up step (one-off caches), then the measured one
    for _ in range(2):
        for p in net.parameters():
            p.grad = None
        with LiveBytesTracker() as t:
            with t.mark("forward"):
                loss = loss_of(forward_method(net, x, "reversible"))
            with t.mark("backward"):
                loss.backward()
            del loss
    timeline = t.timeline()
    t_bwd = next(ts for ts, n in t.marks() if n == "backward")
    forward_peak = max([v for ts, v in timeline if ts < t_bwd] + [0])
    t_peak, peak = max(((ts, v) for ts, v in timeline if ts >= t_bwd), key=lambda e: e[1])
    steps = [r for r in t.ranges("fhcnn.backward.step:") if r[0] <= t_peak <= r[1]]
    if not steps:
        raise RuntimeError("the backward peak lies outside every step of the reversible backward")
    s0, _, name = steps[0]
    index = int(name.rsplit(":", 1)[1])
    first = index == max(int(r[2].rsplit(":", 1)[1]) for r in t.ranges("fhcnn.backward.step:"))
    at_start = t.live_at(s0)
    # parameter gradients live at the start of step `index`: those of the later steps
    schedule = net._steps()
    later: dict[int, torch.Tensor] = {}
    for s in schedule[index + 1:]:
        for w in s.params().values():
            if w.requires_grad:
                later[id(w)] = w
    param_grads = sum(w.numel() * w.element_size() for w in later.values())
    parts = {"saved_pair": 2 * state, "gradient_pair": (1 if first else 2) * state,
             "layer_internals": peak - at_start, "parameter_gradients": param_grads}
    parts["everything_else"] = peak - sum(parts.values())
    return {"spec": spec, "state_bytes": state, "peak_bytes": peak, "forward_peak_bytes": forward_peak,
            "peak_step": index, "peak_step_kind": type(schedule[index]).__name__,
            "parts_bytes": parts, "parts_states": {k: v / state for k, v in parts.items()},
            "peak_states": peak / state}


def run(out_dir: str | Path, quick: bool = False, device: str = "cpu",
        tick: Callable[[str], None] | None = None,
        configs_override: dict[str, Spec] | None = None) -> dict[str, Any]:
    """Writes ``backward_peak.json`` and ``backward_peak.png``."""
    tick = tick or (lambda msg: None)
    nets = configs_override or configs(quick)
    rows: dict[str, Any] = {}
    for key, spec in nets.items():
        row = {"decomposition": decompose(spec)}
        tick(f"backward {key} decomposition")
        peaks = measured_activation_peaks(spec, ["plain", "reversible"], device)
        tick(f"backward {key} rss")
        state = row["decomposition"]["state_bytes"]
        row["rss"] = {m: {"peak_bytes": peaks[m]["peak"], "peak_states": peaks[m]["peak"] / state}
                      for m in peaks}
        rev = peaks["reversible"]["peak"]  # process RSS: a tiny net may stay within pages already held
        row["rss"]["plain_over_reversible"] = peaks["plain"]["peak"] / rev if rev > 0 else None
        tick(f"backward {key} done")
        rows[key] = row
    result = {"benchmark": NAME, "quick": quick, "environment": environment(device), "rows": rows,
              "notes": "decomposition: LiveBytesTracker (allocator events, deterministic), one "
                       "reversible training step, relative to before the forward pass; rss: peak "
                       "resident memory above the idle process (fresh process per method)"}
    return save_result(out_dir, NAME, result, plot)


PARTS = ("saved_pair", "gradient_pair", "layer_internals", "parameter_gradients", "everything_else")
COLORS = ("#4c72b0", "#55a868", "#c44e52", "#8172b2", "#999999")


def plot(result: dict[str, Any], path: str | Path) -> Path:
    plt = pyplot()
    rows = result["rows"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(rows)
    for i, n in enumerate(names):
        bottom = 0.0
        for part, color in zip(PARTS, COLORS):
            v = rows[n]["decomposition"]["parts_states"][part]
            a1.bar(i, v, bottom=bottom, color=color, edgecolor="black", lw=0.5,
                   label=part.replace("_", " ") if i == 0 else None)
            if v > 0.3:
                a1.text(i, bottom + v / 2, f"{v:.2f}", ha="center", va="center", fontsize=8)
            bottom += v
    a1.set_xticks(range(len(names)))
    a1.set_xticklabels(names)
    a1.set_ylabel("states")
    a1.set_title("reversible backward peak (allocator events)", fontsize=10)
    a1.legend(fontsize=7)
    for i, n in enumerate(names):
        r = rows[n]["rss"]
        a2.bar([3 * i, 3 * i + 1], [r["plain"]["peak_states"], r["reversible"]["peak_states"]],
               color=["#dd8452", "#4c72b0"], edgecolor="black", lw=0.5)
        a2.text(3 * i + 0.5, r["plain"]["peak_states"], f"{r['plain_over_reversible'] or float('nan'):.2f}x",
                ha="center", va="bottom", fontsize=9)
    a2.set_xticks([3 * i + k for i in range(len(names)) for k in (0, 1)])
    a2.set_xticklabels([f"{n}\n{m}" for n in names for m in ("plain", "reversible")], fontsize=8)
    a2.set_ylabel("peak RSS above idle / one state")
    a2.set_title("one training step, peak resident memory", fontsize=10)
    for a in (a1, a2):
        a.grid(True, axis="y", alpha=0.3)
    return save_figure(fig, path)
