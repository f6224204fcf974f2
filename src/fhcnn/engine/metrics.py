"""Segmentation scores: confusion matrix, per-class IoU, mIoU, per-frame IoU.

Conventions (the paper's and DAVIS's): ``IoU_k = |pred==k & truth==k| / |pred==k | truth==k|``
over the scored voxels; ``mIoU`` is the mean over classes present in the truth or the
prediction (for a binary problem: the mean of the foreground and the background IoU);
``J`` is the foreground IoU of a binary problem (DAVIS's region similarity). Voxels whose
truth equals ``ignore_index`` (default 255) are not scored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..options import IGNORE

__all__ = ["confusion_matrix", "iou_from_confusion", "scores_of_confusion", "segmentation_metrics"]


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE) -> np.ndarray:
    """``(K, K)`` int64 matrix ``M[t, p]`` = number of voxels with truth ``t`` predicted ``p``.

    Raises:
        ValueError: shapes differ, or a label is outside ``[0, num_classes)`` (ignore aside).
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    keep = truth != ignore_index
    t = truth[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"truth labels must lie in [0, {num_classes}) or be {ignore_index}, "
                         f"got values {np.unique(t)[:10].tolist()}")
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"predicted labels must lie in [0, {num_classes}), got {np.unique(p)[:10].tolist()}")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU ``(K,)``; NaN for a class absent from both truth and prediction."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def scores_of_confusion(cm: np.ndarray) -> dict[str, Any]:
    """JSON-ready scores of a ``(K, K)`` confusion matrix: ``miou``, ``iou`` (per class, ``None``
    where undefined), ``dice`` (per class), ``accuracy``, ``scored_voxels``, ``confusion``; for
    two classes also ``J`` (foreground IoU)."""
    cm = np.asarray(cm, np.int64)
    iou = iou_from_confusion(cm)
    tp = np.diag(cm).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(cm.sum(0) + cm.sum(1) > 0, 2 * tp / np.maximum(cm.sum(0) + cm.sum(1), 1), np.nan)
    out: dict[str, Any] = {
        "miou": _nanmean(iou),
        "iou": [None if np.isnan(v) else float(v) for v in iou],
        "dice": [None if np.isnan(v) else float(v) for v in dice],
        "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "scored_voxels": int(cm.sum()),
        "confusion": cm.tolist(),
    }
    if cm.shape[0] == 2:
        out["J"] = out["iou"][1]
    return out


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, num_classes: int | None = None,
                         ignore_index: int = IGNORE, per_frame: bool = True) -> dict[str, Any]:
    """Scores of a label volume ``pred`` against ``truth`` (same shape, e.g. ``(T, H, W)``).

    Returns a JSON-ready dict (:func:`scores_of_confusion`): ``miou``, ``iou`` and ``dice``
    (per class, ``None`` where undefined), ``accuracy``, ``scored_voxels``, ``confusion``; for
    two classes also ``J`` (foreground IoU); with ``per_frame`` (axis 0 = frames)
    ``per_frame_miou`` and ``per_frame_iou`` (per class), ``None`` for frames with no scored voxel.

    Example:
        >>> t = np.array([[0, 0, 1, 1]]); p = np.array([[0, 1, 1, 1]])
        >>> m = segmentation_metrics(p, t, 2)
        >>> round(m["iou"][0], 3), round(m["iou"][1], 3), round(m["miou"], 3)
        (0.5, 0.667, 0.583)
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if num_classes is None:
        vals = np.concatenate([np.unique(pred), np.unique(truth[truth != ignore_index])])
        num_classes = int(vals.max()) + 1 if vals.size else 1
        num_classes = max(num_classes, 2)
    out = scores_of_confusion(confusion_matrix(pred, truth, num_classes, ignore_index))
    if per_frame and pred.ndim >= 2:
        fm: list[float | None] = []
        fi: list[list[float | None] | None] = []
        for k in range(pred.shape[0]):
            cmk = confusion_matrix(pred[k], truth[k], num_classes, ignore_index)
            if cmk.sum() == 0:
                fm.append(None)
                fi.append(None)
                continue
            ik = iou_from_confusion(cmk)
            fm.append(_nanmean(ik))
            fi.append([None if np.isnan(v) else float(v) for v in ik])
        out["per_frame_miou"] = fm
        out["per_frame_iou"] = fi
    return out
