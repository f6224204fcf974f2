"""The baselines every scored ``fhcnn volume`` run reports beside fhcnn, on the same annotation.

``copy``: each unlabelled voxel takes the label of the nearest labelled voxel (Euclidean distance
in physical units: the voxel spacing applied; of several equally near, the one first in C order).
With complete annotated slices this is copying the nearest annotated slice: a voxel takes the
label at its own in-plane position on the annotated slice nearest to it, whichever axis that
slice is on.

``forest``: a random forest (scikit-learn) on each voxel's channels (standardized), fitted on a
class-balanced sample of the labelled voxels.

``unet``: the 3D U-Net (``model.arch=unet``) trained by the same engine on the same labels with
the same windows, steps and schedule (in :mod:`.pipeline`, which owns the engine calls).

Like fhcnn's prediction, none holds a volume: ``copy`` and ``forest`` are array-likes read box by
box (:class:`NearestLabel`, :class:`ForestPrediction`), scored slab by slab
(:func:`confusion_by_slabs`); their memory is set by the labelled voxels
(:func:`baseline_bytes`) and the slab.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np

from ...data.lazy import iter_slabs
from ...engine.metrics import confusion_matrix
from ...options import IGNORE

__all__ = ["NearestLabel", "ForestPrediction", "copy_nearest_label", "forest_baseline", "labelled_voxels",
           "confusion_by_slabs", "baseline_bytes", "SLAB_VOXELS"]

#: Voxels of one slab the baselines read, predict and score at a time.
SLAB_VOXELS = 1 << 20


def baseline_bytes(labelled: int, names: Sequence[str]) -> int:
    """Least memory of the baselines ``names`` for ``labelled`` labelled voxels: the labelled
    voxels' flat indices and labels (9 bytes each), with ``copy`` their coordinates and the
    k-d tree over them (about 48 bytes each more); the slabs add :data:`SLAB_VOXELS` voxels'
    worth of channels, features and queries."""
    return labelled * (9 + (48 if "copy" in names else 0)) + SLAB_VOXELS * 64


def _flat_start(box: tuple[slice, ...], shape: Sequence[int]) -> int:
    """The C-order flat index of the first voxel of ``box``."""
    return int(np.ravel_multi_index(tuple(sl.start for sl in box), tuple(shape)))


def labelled_voxels(labels: Any, slab_voxels: int = SLAB_VOXELS) -> tuple[np.ndarray, np.ndarray]:
    """``(flat indices int64, labels uint8)`` of every labelled voxel (not ``IGNORE``) of the
    ``(D, H, W)`` array-like ``labels``, in C order, read in boxes of at most ``slab_voxels``
    voxels (:func:`~fhcnn.data.lazy.iter_slabs`: slabs along axis 0, planes cut into rows where
    one is larger; each box a contiguous run of C order)."""
    shape = tuple(int(n) for n in labels.shape)
    idx, val = [], []
    for box in iter_slabs(shape, 1, slab_voxels):
        lab = np.asarray(labels[box]).reshape(-1)
        where = np.flatnonzero(lab != IGNORE)
        idx.append(where + _flat_start(box, shape))
        val.append(lab[where].astype(np.uint8))
    return np.concatenate(idx), np.concatenate(val)


class NearestLabel:
    """``copy`` as a ``(D, H, W)`` uint8 array-like: every voxel gets the label of the nearest
    labelled voxel of ``labels`` (itself if labelled; distances in units of ``spacing``, default
    isotropic; of several equally near, the first in C order), computed for the box asked for
    from a k-d tree over the labelled voxels (scipy; queried on ``threads`` threads).

    Example:
        >>> lab = np.full((5, 1, 2), 255, np.uint8); lab[0] = [[0, 1]]; lab[4] = [[1, 1]]
        >>> NearestLabel(lab)[:, 0].tolist()
        [[0, 1], [0, 1], [0, 1], [1, 1], [1, 1]]
    """

    def __init__(self, labels: Any, spacing: Sequence[float] | None = None,
                 voxels: tuple[np.ndarray, np.ndarray] | None = None, threads: int = 1) -> None:
        from scipy.spatial import cKDTree

        self.shape = tuple(int(n) for n in labels.shape)
        self.dtype, self.ndim = np.dtype(np.uint8), 3
        self.scale = np.ones(3) if spacing is None else np.asarray(spacing, np.float64)
        idx, self.values = voxels if voxels is not None else labelled_voxels(labels)
        if not idx.size:
            raise ValueError("no labelled voxel to copy from")
        # an unbalanced tree with leaves of 64 answers these queries (points on a few planes)
        # about twice as fast as scipy's default
        self.tree = cKDTree(np.stack(np.unravel_index(idx, self.shape), 1) * self.scale, leafsize=64,
                            balanced_tree=False)
        self.threads = int(threads)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        ranges = [range(*k.indices(n)) if isinstance(k, slice) else range(int(k) % n, int(k) % n + 1)
                  for k, n in zip(key, self.shape)]
        grid = np.stack(np.meshgrid(*[np.asarray(r, np.float64) for r in ranges], indexing="ij"), -1)
        points = grid.reshape(-1, 3) * self.scale
        dist, near = self.tree.query(points, k=min(2, self.tree.n), workers=self.threads)
        if near.ndim == 2:
            tied = dist[:, 0] == dist[:, 1]
            near = near[:, 0]
            if tied.any():
                near[tied] = self._first_of_equally_near(points[tied])
        out = self.values[near].reshape([len(r) for r in ranges])
        return out[tuple(slice(None) if isinstance(k, slice) else 0 for k in key)]

    def _first_of_equally_near(self, points: np.ndarray) -> np.ndarray:
        """The index (the first in C order: the tree's points are in C order) of the first of
        all the labelled voxels equally nearest to each of ``points``: the ``k`` nearest,
        ``k`` growing eightfold for the points whose ``k`` nearest are all equally near."""
        out = np.empty(len(points), np.int64)
        todo = np.arange(len(points))
        k = 8
        while todo.size:
            k = min(k, self.tree.n)
            dist, near = self.tree.query(points[todo], k=k, workers=self.threads)
            equal = dist == dist[:, :1]
            out[todo] = np.where(equal, near, self.tree.n).min(1)
            todo = todo[equal[:, -1]] if k < self.tree.n else todo[:0]
            k *= 8
        return out


def copy_nearest_label(labels: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """``(D, H, W)`` uint8: the whole of :class:`NearestLabel` (every voxel gets the label of the
    nearest labelled voxel)."""
    return NearestLabel(labels, spacing)[:, :, :]


class ForestPrediction:
    """``forest`` as a ``(D, H, W)`` uint8 array-like: a random forest fitted on up to ``samples``
    labelled voxels (the same number from each class where it has that many, drawn with
    ``seed``; ``trees`` trees on balanced subsamples, leaves of at least 2), features the
    channel values standardized over the volume (streamed slab by slab); the box asked for is
    predicted from its channels. ``fit_voxels``, ``fit_time_s`` and ``predict_time_s`` (summed
    over the boxes read) say what it cost.

    Args:
        channels: ``C`` array-likes ``(D, H, W)``.
        labels: ``(D, H, W)`` array-like, ``IGNORE`` = unlabelled.
        voxels: :func:`labelled_voxels` of ``labels``, if already read.
    """

    def __init__(self, channels: Sequence[Any], labels: Any, num_classes: int, *, trees: int = 100,
                 samples: int = 20000, seed: int = 0, threads: int = 1, slab_voxels: int = SLAB_VOXELS,
                 voxels: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        from sklearn.ensemble import RandomForestClassifier

        self.channels = list(channels)
        self.shape = tuple(int(n) for n in labels.shape)
        self.dtype, self.ndim = np.dtype(np.uint8), 3
        flat_idx, flat_val = voxels if voxels is not None else labelled_voxels(labels, slab_voxels)
        rng = np.random.default_rng(seed)
        per = max(1, samples // num_classes)
        pick = []
        for k in range(num_classes):
            where = flat_idx[flat_val == k]
            if where.size:
                pick.append(where if where.size <= per else rng.choice(where, per, replace=False))
        idx = np.sort(np.concatenate(pick))
        target = flat_val[np.searchsorted(flat_idx, idx)]
        feats = np.empty((idx.size, len(self.channels)), np.float32)
        s1 = np.zeros(len(self.channels))
        s2 = np.zeros(len(self.channels))
        for box in iter_slabs(self.shape, 1, slab_voxels):  # contiguous runs of C order
            start = _flat_start(box, self.shape)
            lo, hi = np.searchsorted(idx, [start, start + math.prod(sl.stop - sl.start for sl in box)])
            for c, ch in enumerate(self.channels):
                x = np.asarray(ch[box], np.float64).reshape(-1)
                s1[c] += x.sum()
                s2[c] += (x * x).sum()
                feats[lo:hi, c] = x[idx[lo:hi] - start]
        n = float(np.prod(self.shape))
        self.mu = s1 / n
        self.sd = np.sqrt(np.maximum(s2 / n - self.mu * self.mu, 0)) + 1e-12
        t0 = time.perf_counter()
        self.forest = RandomForestClassifier(trees, class_weight="balanced_subsample", n_jobs=threads,
                                             random_state=seed, min_samples_leaf=2)
        self.forest.fit((feats - self.mu) / self.sd, target)
        self.fit_voxels, self.fit_time_s, self.predict_time_s = int(idx.size), time.perf_counter() - t0, 0.0

    def __getitem__(self, key: Any) -> np.ndarray:
        t0 = time.perf_counter()
        blocks = [np.asarray(ch[key], np.float64) for ch in self.channels]
        x = np.stack([b.reshape(-1) for b in blocks], 1)
        out = self.forest.classes_[self.forest.predict_proba((x - self.mu) / self.sd).argmax(1)]
        self.predict_time_s += time.perf_counter() - t0
        return out.astype(np.uint8).reshape(blocks[0].shape)

    def costs(self) -> dict[str, Any]:
        return {"fit_voxels": self.fit_voxels, "fit_time_s": round(self.fit_time_s, 2),
                "predict_time_s": round(self.predict_time_s, 2)}


def forest_baseline(channels: Sequence[Any], labels: Any, num_classes: int, **options: Any
                    ) -> tuple[np.ndarray, dict[str, Any]]:
    """The whole of :class:`ForestPrediction` ``(D, H, W)`` uint8, predicted slab by slab, and
    its costs."""
    forest = ForestPrediction(channels, labels, num_classes, **options)
    out = np.empty(forest.shape, np.uint8)
    for box in iter_slabs(forest.shape, 1, SLAB_VOXELS):
        out[box] = forest[box]
    return out, forest.costs()


def confusion_by_slabs(pred: Any, truth: Any, num_classes: int, slab_voxels: int = SLAB_VOXELS) -> np.ndarray:
    """``(K, K)`` confusion matrix of the array-like prediction ``pred`` against ``truth``
    (``IGNORE`` = not scored), box by box: slabs of at most ``slab_voxels`` voxels, planes cut
    into rows where one is larger (:func:`~fhcnn.data.lazy.iter_slabs`); boxes with nothing to
    score are not predicted."""
    shape = tuple(int(n) for n in truth.shape)
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for box in iter_slabs(shape, 1, slab_voxels):
        t = np.asarray(truth[box])
        if (t != IGNORE).any():
            matrix += confusion_matrix(np.asarray(pred[box]), t, num_classes)
    return matrix
