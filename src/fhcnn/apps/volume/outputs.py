"""What ``fhcnn volume`` writes into its run folder: the prediction in a format that keeps the
input's geometry, optional class probabilities (float16 zarr), ``metrics.json``, ``figure.png``
(three orthogonal slices through image, annotation and prediction, the paper's Figure 5) and the
model's weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...atomic import atomic_path, atomic_save_npy, atomic_write_text
from ...options import IGNORE
from ...training.checkpoint import save_weights
from .inputs import AXIS_NAMES, VolumeInputs

__all__ = ["write_outputs", "write_prediction", "write_probabilities", "slice_figure"]

_COLOURS = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                     [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]],
                    np.float32) / 255


def write_prediction(out: Path, inputs: VolumeInputs, pred: np.ndarray) -> Path:
    """The ``(D, H, W)`` uint8 prediction in the input's geometry format (through the format
    writers where present: NIfTI in -> ``prediction.nii.gz`` with the input's affine and header;
    zarr, HDF5, TIFF, SEG-Y in -> ``prediction.zarr``; ``.npy`` in -> ``prediction.npy``)."""
    if inputs.format != "npy":
        from ...data.volumes import prediction_sink

        sink = prediction_sink(out, inputs.format, pred.shape, inputs.geometry, dtype=np.uint8)
        for z in range(0, pred.shape[0], max(1, (1 << 24) // max(1, pred[0].size))):
            box = (slice(z, min(pred.shape[0], z + max(1, (1 << 24) // max(1, pred[0].size)))),
                   slice(None), slice(None))
            sink[box] = pred[box]
        return Path(sink.close())
    atomic_save_npy(out / "prediction.npy", pred)
    return out / "prediction.npy"


def write_probabilities(out: Path, probs: torch.Tensor) -> Path:
    """``probabilities.zarr``: ``(K, D, H, W)`` float16, chunked by class and 64^3 blocks."""
    import shutil
    import tempfile

    import zarr

    from ...rundir import RunFolder

    path = out / "probabilities.zarr"
    tmp = Path(tempfile.mkdtemp(prefix=".probabilities.", suffix=".zarr.tmp", dir=out))
    try:
        arr = zarr.create_array(str(tmp), shape=tuple(probs.shape), dtype="float16",
                                chunks=(1, *(min(64, n) for n in probs.shape[1:])), overwrite=True)
        arr[...] = probs.numpy().astype(np.float16)
        if RunFolder.active is not None:   # every file is listed in run.json before it appears
            for f in sorted(q for q in tmp.rglob("*") if q.is_file()):
                RunFolder.active.record(path / f.relative_to(tmp))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def _colour(lab: np.ndarray) -> np.ndarray:
    rgb = _COLOURS[np.where(lab == IGNORE, 0, lab) % len(_COLOURS)]
    return rgb


def slice_figure(path: Path, image: np.ndarray, labels: np.ndarray, pred: np.ndarray,
                 truth: np.ndarray | None, centre: Sequence[int], spacing: Sequence[float] | None) -> None:
    """Three orthogonal slices (through ``centre``, one per axis) of the image (first channel),
    the annotation (labelled voxels coloured over the image), the prediction and, if given, the
    truth; drawn with the voxel aspect of ``spacing``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("image", None), ("annotation", labels), ("prediction", pred)]
    if truth is not None:
        rows.append(("truth", truth))
    sp = [1.0, 1.0, 1.0] if spacing is None else [float(s) for s in spacing]
    fig, axes = plt.subplots(len(rows), 3, figsize=(10, 3.1 * len(rows)), squeeze=False)
    lo, hi = np.percentile(image, [1, 99])
    for j in range(3):
        cut: list[Any] = [slice(None)] * 3
        cut[j] = int(centre[j])
        cut_t = tuple(cut)
        rest = [a for a in range(3) if a != j]
        aspect = sp[rest[0]] / sp[rest[1]]
        img = np.clip((image[cut_t] - lo) / max(hi - lo, 1e-12), 0, 1)
        grey = np.repeat(img[..., None], 3, -1)
        for i, (name, lab) in enumerate(rows):
            ax = axes[i, j]
            if lab is None:
                shown = grey
            else:
                sl = lab[cut_t]
                a = ((sl != IGNORE) & (sl > 0) if name != "annotation" else sl != IGNORE)[..., None] * 0.55
                shown = grey * (1 - a) + _colour(sl) * a
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


def write_outputs(out: Path, inputs: VolumeInputs, pred: np.ndarray, probs: torch.Tensor | None,
                  result: Any, metrics: dict[str, Any], spacing: Sequence[float] | None) -> None:
    """Every output of a ``fhcnn volume`` run into ``out``."""
    path = write_prediction(out, inputs, pred)
    metrics["prediction_file"] = path.name
    if probs is not None:
        metrics["probabilities_file"] = write_probabilities(out, probs).name
    centre = [n // 2 for n in pred.shape]
    truth = inputs.eval_labels
    slice_figure(out / "figure.png", np.asarray(inputs.channels[0], np.float32), inputs.labels, pred,
                 truth, centre, spacing)
    save_weights(out / "model.safetensors", result.model,
                 {"num_classes": str(inputs.num_classes), "arch": result.config.model.arch})
    atomic_write_text(out / "metrics.json", json.dumps(
        {k: v for k, v in metrics.items() if k not in ("prediction", "baseline_predictions")}, indent=1) + "\n")
