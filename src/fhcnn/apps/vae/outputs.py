"""What the autoencoder writes: image grids, the summary figure, the normality report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...atomic import atomic_path, atomic_write_text, make_dir
from ...models.autoencoder import HyperbolicAutoencoder, energy_distance
from .evaluation import latents

__all__ = ["grid_array", "save_grid", "save_figure", "interpolate_latents", "normality_report"]


def _to_uint8(x: Tensor) -> np.ndarray:
    """``(N, C, H, W)`` in [0, 1] -> ``(N, H, W, C)`` uint8."""
    return (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def grid_array(x: Tensor, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile images ``(N, C, H, W)`` into one ``uint8`` array ``(rows*H', cols*W', C)``."""
    a = _to_uint8(x)
    n, h, w, c = a.shape
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    out = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 64, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = a[i]
    return out


def save_grid(x: Tensor, path: str | Path, ncol: int | None = None, scale: int = 1) -> Path:
    """Save images ``(N, C, H, W)`` in [0, 1] as one PNG grid (atomically)."""
    from PIL import Image

    a = grid_array(x, ncol)
    im = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return path


@torch.no_grad()
def interpolate_latents(model: Any, xa: Tensor, xb: Tensor, steps: int) -> Tensor:
    """Decode ``steps`` points on the line between the latents of ``xa`` and ``xb``
    (``(1, C, H, W)`` each), endpoints included: ``(steps, C, H, W)``."""
    dev = next(model.parameters()).device
    za, zb = model.encode(xa.to(dev)), model.encode(xb.to(dev))
    t = torch.linspace(0, 1, steps, device=dev)[:, None]
    return model.decode((1 - t) * za + t * zb).cpu()


def save_figure(path: Path, originals: Tensor, recons: Tensor, samples: Tensor, interp: Tensor,
                norms_init: np.ndarray, norms_trained: np.ndarray, threshold: float,
                title: str) -> None:
    """The summary figure: reconstructions, samples, interpolation (figs 7-8) and the column
    norms of ``P`` before and after training/pruning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 8.5))
    gs = fig.add_gridspec(2, 3, height_ratios=[1.0, 0.9])

    def show(ax: Any, arr: np.ndarray, name: str) -> None:
        ax.imshow(arr[:, :, 0] if arr.shape[2] == 1 else arr, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")

    n = min(8, len(originals))
    pairs = torch.stack([originals[:n], recons[:n]], 1).flatten(0, 1)
    show(fig.add_subplot(gs[0, 0]), grid_array(pairs, ncol=4), "originals | reconstructions")
    show(fig.add_subplot(gs[0, 1]), grid_array(samples[:64], ncol=8), "samples z ~ N(0, s²I)")
    show(fig.add_subplot(gs[0, 2]), grid_array(interp, ncol=min(8, len(interp))),
         "latent interpolation (one pair per row)")
    ax = fig.add_subplot(gs[1, :])
    k = len(norms_init)
    order = np.argsort(-norms_trained, kind="stable")
    floor = threshold / 10 if threshold > 0 else 1e-6
    ax.semilogy(np.arange(k), np.maximum(np.sort(norms_init)[::-1], floor), "-", color="0.6",
                label="initial P (all columns)")
    ax.semilogy(np.arange(k), np.maximum(norms_trained[order], floor), ".-", color="C0",
                label=f"trained P, before pruning ({int((norms_trained > 0).sum())} non-zero)")
    if threshold > 0:
        ax.axhline(threshold, color="C3", ls="--", lw=1, label=f"pruning threshold {threshold:g}")
    ax.set_xlabel("column of P (sorted by norm)")
    ax.set_ylabel("column norm ||P[:, j]||")
    ax.set_title(f"column norms of P: {int((norms_trained >= max(threshold, 1e-30)).sum())} of {k} survive "
                 f"pruning (the latent dimension); zeros drawn at {floor:g}", fontsize=10)
    ax.legend(fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


@torch.no_grad()
def normality_report(model: HyperbolicAutoencoder, x: Tensor, out_dir: Path | None,
                     seed: int = 1234, directions: int = 16) -> dict[str, Any]:
    """Energy distance of the latents of ``x`` to ``N(0, sigma^2 I)`` (and of the untrained
    baseline of two prior samples), per-dimension mean/std/skew/excess kurtosis, and a
    figure (paper fig. 9): histograms of projections on ``directions`` random unit vectors
    against the prior density, per-dimension histograms and a Q-Q plot."""
    z = latents(model, x).double()
    s = model.sigma
    k = z.shape[1]
    g = torch.Generator().manual_seed(seed)
    prior = torch.randn(z.shape, generator=g, dtype=torch.float64) * s
    ed = float(energy_distance(z, prior))
    floor = float(energy_distance(torch.randn(z.shape, generator=g, dtype=torch.float64) * s, prior))
    zc = z - z.mean(0)
    std = z.std(0)
    skew = (zc**3).mean(0) / std.clamp_min(1e-12) ** 3
    kurt = (zc**4).mean(0) / std.clamp_min(1e-12) ** 4 - 3
    report: dict[str, Any] = {
        "n": int(z.shape[0]), "latent_dim": k, "sigma": s, "energy_distance": ed,
        "energy_distance_prior_vs_prior": floor,
        "mean": z.mean(0).tolist(), "std": std.tolist(), "skew": skew.tolist(),
        "excess_kurtosis": kurt.tolist()}
    if out_dir is None:
        return report
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    dirs = torch.randn(k, directions, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    proj = (z @ dirs).numpy()
    ncol = 8
    nrow_p = int(math.ceil(directions / ncol))
    shown = min(k, 16)  # per-dimension histograms of the first 16 dimensions
    nrow_d = int(math.ceil(shown / ncol))
    fig, axes = plt.subplots(nrow_p + nrow_d + 1, ncol, figsize=(2.0 * ncol, 1.7 * (nrow_p + nrow_d + 1)))
    axes = np.atleast_2d(axes)
    grid = np.linspace(-4 * s, 4 * s, 200)
    pdf = stats.norm.pdf(grid, scale=s)
    for i in range(nrow_p * ncol):
        ax = axes[i // ncol, i % ncol]
        if i < directions:
            ax.hist(proj[:, i], bins=30, density=True, color="C0", alpha=0.7)
            ax.plot(grid, pdf, "k-", lw=1)
            ax.set_title(f"random dir {i}", fontsize=7)
        ax.tick_params(labelsize=6)
    for i in range(nrow_d * ncol):
        ax = axes[nrow_p + i // ncol, i % ncol]
        if i < shown:
            ax.hist(z[:, i].numpy(), bins=30, density=True, color="C1", alpha=0.7)
            ax.plot(grid, pdf, "k-", lw=1)
            ax.set_title(f"z[{i}] std {std[i]:.2f}", fontsize=7)
        else:
            ax.axis("off")
        ax.tick_params(labelsize=6)
    last = axes[-1]
    for ax in last[1:]:
        ax.axis("off")
    ax = last[0]
    q = np.sort(proj.ravel())
    theo = stats.norm.ppf((np.arange(len(q)) + 0.5) / len(q), scale=s)
    ax.plot(theo, q, ".", ms=1)
    ax.plot(theo, theo, "k-", lw=1)
    ax.set_title("Q-Q (projections)", fontsize=7)
    ax.tick_params(labelsize=6)
    fig.suptitle(f"latents vs N(0, {s:g}² I): energy distance {ed:.4f} "
                 f"(two prior samples: {floor:.4f}); blue = random projections, orange = dims",
                 fontsize=9)
    fig.tight_layout()
    make_dir(out_dir)
    with atomic_path(out_dir / "normality.png") as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    atomic_write_text(out_dir / "normality.json", json.dumps(report, indent=2) + "\n")
    return report
