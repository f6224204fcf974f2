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

__all__ = ["copy_nearest_label", "forest_baseline", "baseline_bytes"]


def baseline_bytes(voxels: int, names: Sequence[str]) -> int:
    """Least memory of scoring the baselines ``names`` on a volume of ``voxels``: unlike fhcnn's
    prediction they hold whole volumes (the labels and the truth, every baseline's prediction:
    a byte a voxel each; ``copy``'s distance transform: its mask and three int32 indices of the
    nearest labelled voxel, 13 bytes a voxel)."""
    return voxels * (2 + len(names) + (13 if "copy" in names else 0))


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


def _slabs(shape: Sequence[int], voxels: int) -> list[slice]:
    step = max(1, voxels // max(1, int(shape[1]) * int(shape[2])))
    return [slice(z, min(int(shape[0]), z + step)) for z in range(0, int(shape[0]), step)]


def forest_baseline(channels: Sequence[Any], labels: np.ndarray, num_classes: int, *, trees: int = 100,
                    samples: int = 20000, seed: int = 0, threads: int = 1,
                    slab_voxels: int = 1 << 20) -> tuple[np.ndarray, dict[str, Any]]:
    """A pixelwise random forest: ``C`` channels (array-likes ``(D, H, W)``, read by slabs) and
    ``labels`` ``(D, H, W)`` (255 = unlabelled) -> ``(D, H, W)`` uint8 labels.

    Fitted on up to ``samples`` labelled voxels (the same number from each class where it has
    that many, drawn with ``seed``), ``trees`` trees (balanced subsamples, leaves of at least 2),
    features the channel values standardized over the volume; predicted ``slab_voxels`` voxels at
    a time. Returns the labels and ``{"fit_voxels", "fit_time_s", "predict_time_s"}``.
    """
    import time

    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in labels.shape)
    flat_lab = labels.reshape(-1)
    per = max(1, samples // num_classes)
    pick = []
    for k in range(num_classes):
        where = np.flatnonzero(flat_lab == k)
        if where.size:
            pick.append(where if where.size <= per else rng.choice(where, per, replace=False))
    idx = np.sort(np.concatenate(pick))
    plane = shape[1] * shape[2]
    feats = np.empty((idx.size, len(channels)), np.float32)
    s1 = np.zeros(len(channels))
    s2 = np.zeros(len(channels))
    for sl in _slabs(shape, slab_voxels):
        lo, hi = np.searchsorted(idx, [sl.start * plane, sl.stop * plane])
        for c, ch in enumerate(channels):
            x = np.asarray(ch[sl, :, :], np.float64).reshape(-1)
            s1[c] += x.sum()
            s2[c] += (x * x).sum()
            feats[lo:hi, c] = x[idx[lo:hi] - sl.start * plane]
    n = float(np.prod(shape))
    mu = s1 / n
    sd = np.sqrt(np.maximum(s2 / n - mu * mu, 0)) + 1e-12
    t0 = time.perf_counter()
    rf = RandomForestClassifier(trees, class_weight="balanced_subsample", n_jobs=threads, random_state=seed,
                                min_samples_leaf=2)
    rf.fit((feats - mu) / sd, flat_lab[idx])
    t1 = time.perf_counter()
    out = np.empty(shape, np.uint8)
    for sl in _slabs(shape, slab_voxels):
        x = np.stack([np.asarray(ch[sl, :, :], np.float64).reshape(-1) for ch in channels], 1)
        out[sl] = rf.classes_[rf.predict_proba((x - mu) / sd).argmax(1)].reshape(-1, *shape[1:])
    return out, {"fit_voxels": int(idx.size), "fit_time_s": round(t1 - t0, 2),
                 "predict_time_s": round(time.perf_counter() - t1, 2)}
