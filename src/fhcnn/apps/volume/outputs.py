"""What ``fhcnn volume`` writes into its run folder besides the prediction file and the
probabilities (written chunk by chunk by the pipeline's sinks): ``metrics.json``,
``figure.png`` (three orthogonal slices through image, annotation and prediction, the paper's
Figure 5) and the model's weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...atomic import atomic_path, atomic_write_text
from ...options import IGNORE
from ...training.checkpoint import save_weights
from .inputs import AXIS_NAMES, VolumeInputs

__all__ = ["write_outputs", "centre_slices", "figure_steps", "slice_figure", "class_colours", "FIGURE_SIDE"]

_COLOURS = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                     [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]],
                    np.float32) / 255


def class_colours(num_classes: int) -> np.ndarray:
    """``(K, 3)`` RGB in [0, 1], one distinct colour a class: class 0 black, the nine after it
    the fixed colours of :data:`_COLOURS`, more classes evenly spaced hues (alternately bright
    and dark) after them."""
    if num_classes <= len(_COLOURS):
        return _COLOURS[:max(num_classes, 1)]
    from matplotlib.colors import hsv_to_rgb

    n = num_classes - len(_COLOURS)
    hsv = np.stack([np.arange(n) / n, np.ones(n), np.where(np.arange(n) % 2, 0.6, 1.0)], 1)
    return np.concatenate([_COLOURS, hsv_to_rgb(hsv).astype(np.float32)])


#: Longest side of a slice drawn in ``figure.png`` (the figure is 800 pixels wide): longer axes are
#: drawn every ``s``-th voxel (:func:`figure_steps`), so the figure's memory does not grow with the volume.
FIGURE_SIDE = 512
#: Voxels of a slice :func:`centre_slices` reads at a time (before subsampling).
_SLICE_BLOCK = 1 << 20


def figure_steps(shape: Sequence[int], side: int = FIGURE_SIDE) -> tuple[int, ...]:
    """Per axis of ``shape``, the smallest stride that leaves at most ``side`` voxels."""
    return tuple(max(1, -(-int(n) // side)) for n in shape)


def centre_slices(array: Any, centre: Sequence[int], steps: Sequence[int] | None = None) -> list[np.ndarray]:
    """The three orthogonal slices of a ``(D, H, W)`` array-like through ``centre``, every
    ``steps[a]``-th voxel along each axis ``a`` in their plane (default :func:`figure_steps`),
    read in blocks of rows of at most about :data:`_SLICE_BLOCK` voxels (never a whole slice)."""
    shape = tuple(int(n) for n in array.shape)
    steps = figure_steps(shape) if steps is None else tuple(int(s) for s in steps)
    out = []
    for j in range(3):
        r, c = (a for a in range(3) if a != j)
        rows_per = steps[r] * max(1, _SLICE_BLOCK // (shape[c] * steps[r]))  # a multiple of the stride
        parts = []
        for r0 in range(0, shape[r], rows_per):
            box: list[Any] = [slice(None)] * 3
            box[j] = slice(int(centre[j]), int(centre[j]) + 1)
            box[r] = slice(r0, min(shape[r], r0 + rows_per))
            block = np.take(np.asarray(array[tuple(box)]), 0, axis=j)
            parts.append(block[::steps[r], ::steps[c]])
        out.append(np.concatenate(parts, 0))
    return out


def slice_figure(path: Path, rows: list[tuple[str, list[np.ndarray]]], centre: Sequence[int],
                 spacing: Sequence[float] | None, num_classes: int, steps: Sequence[int] | None = None) -> None:
    """One column per axis (the slice through ``centre``), one row per entry of ``rows``: the
    first the image (grey, 1-99 % percentiles), the others label slices coloured over it
    (``annotation``: every labelled voxel; others: every class but 0; a colour a class,
    :func:`class_colours`), drawn with the voxel aspect of ``spacing`` (and of ``steps``: the
    stride each axis of the slices was taken with, :func:`centre_slices`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sp = [1.0, 1.0, 1.0] if spacing is None else [float(s) for s in spacing]
    sp = [v * int(k) for v, k in zip(sp, steps or (1, 1, 1))]
    colours = class_colours(num_classes)
    image = rows[0][1]
    lo, hi = np.percentile(np.concatenate([s.ravel() for s in image]), [1, 99])
    fig, axes = plt.subplots(len(rows), 3, figsize=(10, 3.1 * len(rows)), squeeze=False)
    for j in range(3):
        rest = [a for a in range(3) if a != j]
        aspect = sp[rest[0]] / sp[rest[1]]
        grey = np.repeat(np.clip((image[j] - lo) / max(hi - lo, 1e-12), 0, 1)[..., None], 3, -1)
        for i, (name, slices) in enumerate(rows):
            ax = axes[i, j]
            if i == 0:
                shown = grey
            else:
                sl = slices[j]
                a = ((sl != IGNORE) if name == "annotation" else (sl != IGNORE) & (sl > 0))[..., None] * 0.55
                shown = grey * (1 - a) + colours[np.where(sl == IGNORE, 0, sl) % len(colours)] * a
            ax.imshow(shown, aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{AXIS_NAMES[j]} = {centre[j]}  ({AXIS_NAMES[rest[0]]} down, "
                             f"{AXIS_NAMES[rest[1]]} across)", fontsize=9)
            if j == 0:
                ax.set_ylabel(name)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def write_outputs(out: Path, inputs: VolumeInputs, image: Any, pred_slices: list[np.ndarray], result: Any,
                  metrics: dict[str, Any], spacing: Sequence[float] | None) -> None:
    """``figure.png``, ``model.safetensors`` and ``metrics.json`` of a ``fhcnn volume`` run;
    ``image``: the first channel ``(D, H, W)`` as the network reads it; ``pred_slices``: the
    prediction's :func:`centre_slices` through the volume's centre."""
    centre = [n // 2 for n in inputs.shape]
    steps = figure_steps(inputs.shape)
    rows = [("image", [s.astype(np.float32) for s in centre_slices(image, centre)]),
            ("annotation", centre_slices(inputs.labels, centre)), ("prediction", pred_slices)]
    if inputs.eval_labels is not None:
        rows.append(("truth", centre_slices(inputs.eval_labels, centre)))
    slice_figure(out / "figure.png", rows, centre, spacing, inputs.num_classes, steps)
    save_weights(out / "model.safetensors", result.model,
                 {"num_classes": str(inputs.num_classes), "arch": result.config.model.arch})
    atomic_write_text(out / "metrics.json", json.dumps(
        {k: v for k, v in metrics.items() if k != "prediction"}, indent=1) + "\n")
