"""Step time of reversible and block-reversible training relative to plain autograd.

Theory: a reversible step evaluates every layer's ``f`` twice in the forward sense (once in
the forward pass, once in backward, where it serves both the reconstruction and the local
vector-Jacobian product) plus one backward, against one forward and one backward for plain
autograd: about ``(1 + 1 + 2) / (1 + 2) = 4/3``. Timed interleaved (round-robin with a
rotating start), median of the repeats.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._common import (
    Spec,
    build_net,
    environment,
    forward_method,
    make_input,
    median,
    pyplot,
    save_figure,
    save_result,
    time_interleaved,
    train_step,
)

__all__ = ["METHODS", "TARGET", "configs", "run", "work"]

METHODS = ("plain", "block", "reversible")
NAME = "time"
TARGET = 1.4


def configs(quick: bool) -> tuple[list[Spec], int]:
    if quick:
        base = {"dim": 2, "channels": 16, "size": 64, "stages": 0}
        return [dict(base, depth=d) for d in (4, 8, 16)], 3
    base = {"dim": 2, "channels": 32, "size": 128, "stages": 0}
    specs = [dict(base, depth=d) for d in (4, 8, 16, 32)]
    specs += [dict(base, depth=36, stages=2, hidden_cap=32)]
    return specs, 5


def work(quick: bool) -> int:
    specs, repeats = configs(quick)
    return len(specs) * repeats


def _step(net: Any, x: Any, method: str) -> float:
    return train_step(net, x, functools.partial(forward_method, net, x, method))


def run(out_dir: str | Path, quick: bool = False, device: str = "cpu",
        tick: Callable[[str], None] | None = None,
        configs_override: tuple[list[Spec], int] | None = None) -> dict[str, Any]:
    """Writes ``time.json`` and ``time.png``."""
    tick = tick or (lambda msg: None)
    specs, repeats = configs_override or configs(quick)
    rows = []
    for spec in specs:
        net = build_net(spec, device)
        x = make_input(spec, device)
        fns = {m: functools.partial(_step, net, x, m) for m in METHODS}
        raw = time_interleaved(fns, repeats, warmup=1, device=device,  # type: ignore[arg-type]
                               progress=functools.partial(tick, f"time depth={spec['depth']}"))
        med = {m: median(raw[m]) for m in METHODS}
        rows.append({"spec": spec, "depth": spec["depth"], "seconds": raw, "median": med,
                     "ratio": {m: med[m] / med["plain"] for m in METHODS}})
    result = {"benchmark": NAME, "quick": quick, "environment": environment(device),
              "methods": list(METHODS), "repeats": repeats, "theory": 4 / 3, "target": TARGET,
              "rows": rows}
    return save_result(out_dir, NAME, result, plot)


def plot(result: dict[str, Any], path: str | Path) -> Path:
    from .memory import COLORS

    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    rows = [r for r in result["rows"] if r["spec"].get("stages", 0) == 0]
    d = [r["depth"] for r in rows]
    for m in result["methods"]:
        a1.plot(d, [r["median"][m] for r in rows], "o-", color=COLORS[m], label=m)
        a2.plot(d, [r["ratio"][m] for r in rows], "o-", color=COLORS[m], label=f"{m} / plain")
    for r in result["rows"]:
        if r["spec"].get("stages", 0):
            for m in ("block", "reversible"):
                a2.plot([r["depth"]], [r["ratio"][m]], "*", ms=11, color=COLORS[m],
                        label=f"{m}, {r['spec']['stages']} coarsen + refine stages")
    a2.axhline(result["theory"], color="gray", ls="--", lw=1, label="theory 4/3")
    a2.axhline(result["target"], color="black", ls=":", lw=1, label=f"target {result['target']}")
    for a in (a1, a2):
        a.set_xlabel("layers")
        a.set_xscale("log", base=2)
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=8)
    a1.set_yscale("log")
    a1.set_ylabel("seconds per training step (median)")
    a2.set_ylabel("step time relative to plain autograd")
    s = rows[0]["spec"] if rows else result["rows"][0]["spec"]
    env = result["environment"]
    fig.suptitle(f"Step time, {s['dim']}D, {s['channels']} channels, {s['size']}$^2$, "
                 f"{env['device']}, {env['torch_threads']} thread(s), median of {result['repeats']}",
                 fontsize=10)
    return save_figure(fig, path)
