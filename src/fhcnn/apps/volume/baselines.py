"""The baselines every scored ``fhcnn volume`` run reports beside fhcnn, on the same annotation.

``copy``: each unlabelled voxel takes the label of the nearest labelled voxel (Euclidean distance
in physical units: the voxel spacing applied; ties go to the lower index, as
:func:`scipy.ndimage.distance_transform_edt` returns them). With complete annotated slices this is
copying the nearest annotated slice: a voxel takes the label at its own in-plane position on the
annotated slice nearest to it, whichever axis that slice is on.

``forest``: a random forest (scikit-learn) on each voxel's channels (standardized), fitted on a
class-balanced sample of the labelled voxels and predicted slab by slab (bounded memory).

``unet``: the 3D U-Net (``model.arch=unet``) trained by the same engine on the same labels with
the same windows, steps and schedule (in :mod:`.pipeline`, which owns the engine calls).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...options import IGNORE

__all__ = ["copy_nearest_label", "forest_baseline"]


def copy_nearest_label(labels: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """``(D, H, W)`` uint8: every voxel gets the label of the nearest labelled voxel (itself if
    labelled); ``spacing`` the voxel size along (D, H, W) (default isotropic).

    Example:
        >>> lab = np.full((5, 1, 2), 255, np.uint8); lab[0] = [[0, 1]]; lab[4] = [[1, 1]]
        >>> copy_nearest_label(lab)[:, 0].tolist()
        [[0, 1], [0, 1], [0, 1], [1, 1], [1, 1]]
    """
    from scipy import ndimage

    unl = labels == IGNORE
    if not unl.any():
        return labels.copy()
    idx = ndimage.distance_transform_edt(unl, sampling=None if spacing is None else tuple(spacing),
                                         return_distances=False, return_indices=True)
    return labels[tuple(idx)]


def forest_baseline(channels: np.ndarray, labels: np.ndarray, num_classes: int, *, trees: int = 100,
                    samples: int = 20000, seed: int = 0, threads: int = 1,
                    slab_voxels: int = 1 << 20) -> tuple[np.ndarray, dict[str, Any]]:
    """A pixelwise random forest: ``channels`` ``(C, D, H, W)`` -> ``(D, H, W)`` uint8 labels.

    Fitted on up to ``samples`` labelled voxels (the same number from each class where it has
    that many, drawn with ``seed``), ``trees`` trees (balanced subsamples), features the
    standardized channel values; predicted ``slab_voxels`` voxels at a time.
    Returns the labels and ``{"fit_voxels", "fit_time_s", "predict_time_s"}``.
    """
    import time

    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    c = channels.shape[0]
    flat_lab = labels.reshape(-1)
    per = max(1, samples // num_classes)
    pick = []
    for k in range(num_classes):
        where = np.flatnonzero(flat_lab == k)
        if where.size:
            pick.append(where if where.size <= per else rng.choice(where, per, replace=False))
    idx = np.sort(np.concatenate(pick))
    flat = channels.reshape(c, -1)
    mu = flat.mean(1, dtype=np.float64)[:, None].astype(np.float32)
    sd = np.maximum(flat.std(1, dtype=np.float64), 1e-12)[:, None].astype(np.float32)
    t0 = time.perf_counter()
    rf = RandomForestClassifier(trees, class_weight="balanced_subsample", n_jobs=threads, random_state=seed,
                                min_samples_leaf=2)
    rf.fit(((flat[:, idx] - mu) / sd).T, flat_lab[idx])
    t1 = time.perf_counter()
    out = np.empty(flat.shape[1], np.uint8)
    for s in range(0, flat.shape[1], slab_voxels):
        x = ((flat[:, s:s + slab_voxels] - mu) / sd).T
        out[s:s + slab_voxels] = rf.classes_[rf.predict_proba(x).argmax(1)]
    return out.reshape(labels.shape), {"fit_voxels": int(idx.size), "fit_time_s": round(t1 - t0, 2),
                                       "predict_time_s": round(time.perf_counter() - t1, 2)}
