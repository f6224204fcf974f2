"""What ``fhcnn change`` writes: the change map (``.npy``, ``.png``), the change probability,
the training and scored labels, the paper's Figure 4, the model's weights, ``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...atomic import atomic_path, atomic_save_npy, atomic_write_text
from ...data.hyperspectral.colour import false_color, read_bands
from ...engine import segmentation_metrics
from ...options import IGNORE
from ...training.checkpoint import save_weights

__all__ = ["change_metrics", "write_figure", "write_outputs"]


def change_metrics(pred: Any, truth: Any) -> dict[str, Any]:
    """mIoU, positive (changed) and negative (unchanged) IoU of ``pred`` on pixels where
    ``truth`` is 0/1 (255 = not scored)."""
    m = segmentation_metrics(pred, truth, 2, per_frame=False)
    return {"miou": m["miou"], "iou_positive": m["iou"][1], "iou_negative": m["iou"][0],
            "accuracy": m["accuracy"], "scored_pixels": m["scored_voxels"], "confusion": m["confusion"]}


def write_figure(path: Path, before: Any, after: Any, truth: Any, pred: Any, scored: Any,
                 title: str = "") -> None:
    """The paper's Figure 4: the two dates (false colour), truth, prediction and error."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = before.shape[-1]
    bands = [min(b - 1, int(b * f)) for f in (0.75, 0.5, 0.25)] if b >= 3 else [0, 0, 0]
    both = np.concatenate([read_bands(before, bands), read_bands(after, bands)], 0)
    lo_hi = (np.percentile(both, 2, axis=(0, 1)), np.percentile(both, 98, axis=(0, 1)))
    truth_img = np.full(truth.shape + (3,), 0.5)
    truth_img[truth == 0] = 0.0
    truth_img[truth == 1] = 1.0
    err = np.full(pred.shape + (3,), 0.35)               # not scored: dark grey
    s = scored != IGNORE
    err[s & (pred == scored)] = 1.0                      # correct: white
    err[s & (pred == 1) & (scored == 0)] = (0.85, 0.1, 0.1)   # false change: red
    err[s & (pred == 0) & (scored == 1)] = (0.1, 0.3, 0.9)    # missed change: blue
    panels = [(false_color(before, bands, lo_hi), f"(a) before (bands {bands})"),
              (false_color(after, bands, lo_hi), "(b) after"),
              (truth_img, "labels (white 1, black 0, grey none)"),
              (pred, "prediction (white = change)"),
              (err, "error: red false, blue missed, grey unscored")]
    fig, axes = plt.subplots(1, 5, figsize=(20, 4.4))
    for ax, (img, name) in zip(axes, panels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def write_outputs(out: Path, inputs: Any, fit: dict[str, Any], metrics: dict[str, Any],
                  show_eval: bool) -> None:
    """Write every output of a change run into ``out`` (``inputs``: the
    :class:`~fhcnn.apps.change.inputs.ChangeInputs`; ``fit``: what ``fit_change`` returned)."""
    from PIL import Image

    pred, train2d, scored = fit["pred"], inputs.train, inputs.scored
    atomic_save_npy(out / "prediction.npy", pred)
    atomic_save_npy(out / "change_probability.npy", fit["prob"].astype(np.float32))
    atomic_save_npy(out / "labels_train.npy", train2d)
    atomic_save_npy(out / "labels_scored.npy", scored)
    with atomic_path(out / "prediction.png") as tmp:
        Image.fromarray(pred * 255).save(tmp, format="PNG")
    truth_show = np.where(scored != IGNORE, scored, train2d) if show_eval else inputs.labels.copy()
    title = (f"mIoU {metrics['miou']:.3f} (positive {metrics['iou_positive']:.3f}, negative "
             f"{metrics['iou_negative']:.3f}) on {metrics['labels']['scored_pixels']} held-out pixels"
             if metrics["heldout"] else "no held-out pixels scored")
    write_figure(out / "figure.png", inputs.before, inputs.after, truth_show, pred, scored, title)
    save_weights(out / "model.safetensors", fit["result"].model)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
