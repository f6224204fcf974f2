"""Numerical drift of the exact inverse and of the memory-free gradient with depth.

A stack of ``depth`` leapfrog layers (no transitions; transitions are orthogonal and add
only rounding) is run forward in float32 and float64 for several step sizes ``h``; then

* ``inverse``: the input is reconstructed from the last pair, ``||X_rec - X|| / ||X||``,
  at every depth of a geometric grid up to ``max_depth`` (1024);
* ``state_growth``: ``||Y_L|| / ||X||`` -- the leapfrog scheme is only conditionally stable,
  and reconstruction error grows with the states;
* ``gradient``: the relative error (over the input gradient and all parameter gradients,
  concatenated) of reversible and of plain-autograd gradients against float64 plain
  autograd, and of reversible against plain autograd in the same precision.

``init_scale`` multiplies the Kaiming initialization of ``K``; trained weights are larger
or smaller than that, and ``h**2 ||K||**2`` is what governs stability, so a sweep over
``init_scale`` at ``h = 0.2`` is recorded as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..reversible import run_steps
from ._common import (
    DTYPES,
    build_net,
    clean,
    environment,
    make_input,
    net_steps,
    pyplot,
    save_figure,
    save_result,
    step_params,
)

__all__ = ["THRESHOLD", "run", "settings", "usable_depth", "work"]

NAME = "drift"
THRESHOLD = 1e-4
HS = (0.05, 0.1, 0.2, 0.5, 1.0)


def settings(quick: bool) -> dict[str, Any]:
    base = {"dim": 2, "channels": 4, "size": 16, "stages": 0, "norm": "group", "init_scale": 1.0,
            "batch": 1, "seed": 0}
    if quick:
        return {"spec": base, "hs": list(HS), "max_depth": 256, "grad_depths": [1, 4, 16, 64],
                "init_scales": []}
    return {"spec": base, "hs": list(HS), "max_depth": 1024,
            "grad_depths": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
            "init_scales": [0.25, 0.5, 1.0, 2.0, 4.0]}


def depth_grid(max_depth: int) -> list[int]:
    """Geometric grid 1, 2, 3, 4, 6, 8, 11, 16, ... up to ``max_depth`` (about 2 per octave)."""
    out = {1}
    k = 0.0
    while 2**k <= max_depth:
        out.add(round(2**k))
        k += 0.5
    out.add(max_depth)
    return sorted(d for d in out if d <= max_depth)


def work(quick: bool) -> int:
    s = settings(quick)
    return len(s["hs"]) * 3 + len(s["init_scales"])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    den = float(b.double().norm())
    return float((a.double() - b.double()).norm()) / den if den > 0 else float("nan")


@torch.no_grad()
def inverse_errors(spec: dict[str, Any], dtype: str, depths: Sequence[int]) -> dict[str, list]:
    """Reconstruction error and state growth at each depth (one forward, one inverse each)."""
    spec = dict(spec, depth=max(depths), dtype=dtype)
    net = build_net(spec)
    steps = net_steps(net)
    x = make_input(spec)
    p, c = x, x
    errs, growth = [], []
    done = 0
    for d in depths:
        for s in steps[done:d]:
            p, c = s.apply(p, c)
        done = d
        growth.append(clean(float(c.double().norm() / x.double().norm())))
        q, r = p, c
        for s in reversed(steps[:d]):
            q, r = s.inverted().apply(q, r)
        e = _rel(r, x)
        errs.append(clean(e) if math.isfinite(e) else None)
    return {"depth": list(depths), "error": errs, "state_growth": growth}


def _grads(steps: Sequence[Any], params: Sequence[torch.Tensor], x: torch.Tensor, w: torch.Tensor,
           mode: bool) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    for p in params:
        p.grad = None
    _, c = run_steps(steps, x, x, mode)
    (c * w).sum().backward()
    return torch.cat([x.grad.flatten(), *[p.grad.flatten() for p in params]])  # type: ignore[union-attr]


def gradient_errors(spec: dict[str, Any], depths: Sequence[int]) -> dict[str, list]:
    """Gradient errors against float64 plain autograd at each depth."""
    out: dict[str, list] = {"depth": list(depths), "reversible_fp32": [], "plain_fp32": [],
                            "reversible_fp64": [], "reversible_vs_plain_fp32": []}
    nets = {dt: build_net(dict(spec, depth=max(depths), dtype=dt)) for dt in ("float32", "float64")}
    for d in depths:
        g = {}
        for dt, net in nets.items():
            steps = net_steps(net)[:d]
            params = step_params(steps)
            x = make_input(dict(spec, dtype=dt))
            w = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
            w = w.to(DTYPES[dt]) / x.numel()
            for mode in (False, True):
                g[(dt, mode)] = _grads(steps, params, x, w, mode)
        ref = g[("float64", False)]

        def err(a: torch.Tensor, b: torch.Tensor = ref) -> float | None:
            return clean(_rel(a, b))

        out["reversible_fp32"].append(err(g[("float32", True)]))
        out["plain_fp32"].append(err(g[("float32", False)]))
        out["reversible_fp64"].append(err(g[("float64", True)]))
        out["reversible_vs_plain_fp32"].append(err(g[("float32", True)], g[("float32", False)]))
    return out


def usable_depth(depths: Sequence[int], errors: Sequence[float | None], threshold: float = THRESHOLD
                 ) -> int | None:
    """First depth whose error exceeds ``threshold`` (or is not finite); None if none does."""
    for d, e in zip(depths, errors):
        if e is None or e > threshold:
            return d
    return None


def run(out_dir: str | Path, quick: bool = False, device: str = "cpu",
        tick: Callable[[str], None] | None = None, settings_override: dict[str, Any] | None = None
        ) -> dict[str, Any]:
    """Writes ``drift.json`` and ``drift.png`` (CPU only: it is about rounding, not speed)."""
    tick = tick or (lambda msg: None)
    st = settings_override or settings(quick)
    spec, depths = st["spec"], depth_grid(st["max_depth"])
    inverse: dict[str, dict[str, Any]] = {"float32": {}, "float64": {}}
    gradient: dict[str, Any] = {}
    first_above: dict[str, dict[str, int | None]] = {"inverse_float32": {}, "inverse_float64": {},
                                                     "gradient_reversible_fp32": {}}
    for h in st["hs"]:
        sp = dict(spec, h=h)
        for dt in ("float32", "float64"):
            inverse[dt][str(h)] = r = inverse_errors(sp, dt, depths)
            first_above[f"inverse_{dt}"][str(h)] = usable_depth(r["depth"], r["error"])
            tick(f"drift inverse h={h} {dt}")
        gradient[str(h)] = r = gradient_errors(sp, st["grad_depths"])
        first_above["gradient_reversible_fp32"][str(h)] = usable_depth(r["depth"], r["reversible_fp32"])
        tick(f"drift gradient h={h}")
    scales: dict[str, Any] = {}
    for sc in st["init_scales"]:
        scales[str(sc)] = inverse_errors(dict(spec, h=0.2, init_scale=sc), "float32", depths)
        tick(f"drift init_scale={sc}")
    result = {"benchmark": NAME, "quick": quick, "environment": environment("cpu"),
              "spec": spec, "hs": st["hs"], "threshold": THRESHOLD, "inverse": inverse,
              "gradient": gradient, "init_scale_sweep": {"h": 0.2, "dtype": "float32", "runs": scales},
              "first_depth_above_threshold": first_above}
    return save_result(out_dir, NAME, result, plot)


def _loglog(ax: Any, title: str, ylabel: str, thr: float | None = THRESHOLD) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("layers")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    if thr is not None:
        ax.axhline(thr, color="black", ls=":", lw=1)
        ax.text(1, thr * 1.4, f"{thr:g}: usable limit", fontsize=7)


def plot(result: dict[str, Any], path: str | Path) -> Path:
    plt = pyplot()
    hs = result["hs"]
    cmap = plt.get_cmap("viridis")
    col = {str(h): cmap(i / max(1, len(hs) - 1)) for i, h in enumerate(hs)}
    has_scales = bool(result["init_scale_sweep"]["runs"])
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    (a_inv32, a_inv64, a_grow), (a_g32, a_g64, a_sc) = axes
    floor = {"float32": 2.0**-24, "float64": 2.0**-53}
    for dt, ax in (("float32", a_inv32), ("float64", a_inv64)):
        for h in hs:
            r = result["inverse"][dt][str(h)]
            ax.plot(r["depth"], [e if e else float("nan") for e in r["error"]],
                    "o-", ms=3, color=col[str(h)], label=f"h = {h:g}")
        ax.axhline(floor[dt], color="gray", lw=0.8, ls="--")
        _loglog(ax, f"inverse reconstruction error, {dt}", r"$\|X_{rec}-X\| / \|X\|$",
                THRESHOLD if dt == "float32" else None)
        ax.legend(fontsize=8, title="step size", loc="lower right")
    for h in hs:
        r = result["inverse"]["float64"][str(h)]
        a_grow.plot(r["depth"], [g if g is not None else float("nan") for g in r["state_growth"]],
                    "o-", ms=3, color=col[str(h)], label=f"h = {h:g}")
    _loglog(a_grow, "state growth (float64)", r"$\|Y_L\| / \|X\|$", None)
    a_grow.legend(fontsize=8)
    def nan(v: list[float | None]) -> list[float]:
        return [x if x is not None else float("nan") for x in v]

    for h in hs:
        r = result["gradient"][str(h)]
        a_g32.plot(r["depth"], nan(r["reversible_fp32"]), "o-", ms=3, color=col[str(h)],
                   label=f"reversible, h = {h:g}")
        a_g32.plot(r["depth"], nan(r["plain_fp32"]), "x--", ms=4, lw=0.8, color=col[str(h)],
                   label=f"plain autograd, h = {h:g}")
        a_g64.plot(r["depth"], nan(r["reversible_fp64"]), "o-", ms=3, color=col[str(h)],
                   label=f"h = {h:g}")
    _loglog(a_g32, "gradient error, float32 (vs float64 plain autograd)", "relative error")
    _loglog(a_g64, "gradient error, float64 reversible vs float64 plain", "relative error", None)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=col[str(h)], marker="o", ms=3, label=f"h = {h:g}") for h in hs]
    handles += [Line2D([], [], color="gray", marker="o", ms=3, label="reversible (ours)"),
                Line2D([], [], color="gray", marker="x", ls="--", lw=0.8, label="plain autograd")]
    a_g32.legend(handles=handles, fontsize=7, loc="lower right")
    a_g64.legend(fontsize=8)
    if has_scales:
        runs = result["init_scale_sweep"]["runs"]
        sc_cmap = plt.get_cmap("plasma")
        for i, (sc, r) in enumerate(runs.items()):
            a_sc.plot(r["depth"], [e if e is not None else float("nan") for e in r["error"]], "o-",
                      ms=3, color=sc_cmap(i / max(1, len(runs) - 1) * 0.85), label=f"init_scale {sc}")
        _loglog(a_sc, "inverse error vs weight scale (h = 0.2, float32)", "relative error")
        a_sc.legend(fontsize=8, loc="lower right")
    else:
        a_sc.axis("off")
    s = result["spec"]
    fig.suptitle(f"Numerical drift: {s['dim']}D leapfrog stack, {s['channels']} channels, "
                 f"{s['size']}$^2$, norm={s['norm']}, Kaiming init x {s['init_scale']}; "
                 "gray dashed: unit roundoff", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)
