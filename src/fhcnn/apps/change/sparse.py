"""Sparse training labels drawn from a (partial) reference: the few labels a user would give.

``sparse_labels(reference, density, pattern, seed)`` keeps ``density`` of the *scene's* pixels
(not of the reference's) as training labels, either spread at random (stratified by class) or
in spatial clusters (the way an analyst labels: a few patches), and returns the rest of the
reference as the held-out set. ``per_class_labels(reference, n, seed)`` keeps ``n`` pixels
of every class instead (the "few labelled pixels per class" of a classification scene). Used by
``benchmarks/sparse_labels.py`` and ``benchmarks/sparse_hsi.py``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ...options import IGNORE

__all__ = ["SparsePattern", "per_class_labels", "sparse_labels"]

#: How sparse labels are placed: uniformly at random, or in spatial clusters.
SparsePattern = Literal["random", "clustered"]


def sparse_labels(reference: np.ndarray, density: float, pattern: SparsePattern = "random",
                  seed: int = 0, cluster_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split a reference map into sparse training labels and the held-out rest.

    Args:
        reference: ``(H, W)`` uint8 labels (``IGNORE`` = 255 where there is no reference).
        density: fraction of the scene's ``H * W`` pixels to label, in ``(0, 1]`` (capped at the
            number of reference pixels).
        pattern: ``"random"``: drawn uniformly from the reference, each class in proportion to
            its share of the reference (at least one pixel per class); ``"clustered"``: patches
            of ``cluster_size`` reference pixels, each the reference pixels nearest to a random
            reference pixel, until the count is reached (a class no patch hit gets one patch
            centred on it).
        seed: seed of ``numpy.random.default_rng``.
        cluster_size: pixels per patch (default ``max(8, count // 20)``: about 20 patches).

    Returns:
        ``(train, held_out)``: two uint8 maps like ``reference``; each reference pixel is in
        exactly one of them (255 elsewhere).

    Raises:
        ValueError: ``density`` outside ``(0, 1]``, an unknown ``pattern``, or a reference with
            fewer than two classes.

    Example:
        >>> ref = np.zeros((20, 20), np.uint8); ref[:5] = 1
        >>> train, held = sparse_labels(ref, 0.05, "clustered", seed=0)
        >>> int((train != 255).sum()), sorted(np.unique(train[train != 255]).tolist())
        (28, [0, 1])

        (20 pixels asked; whole patches of 8, and one more patch for the class the first ones
        missed.)
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if pattern not in ("random", "clustered"):
        raise ValueError(f"pattern must be 'random' or 'clustered', got {pattern!r}")
    ref = np.asarray(reference)
    flat = ref.reshape(-1)
    idx = np.flatnonzero(flat != IGNORE)
    classes = np.unique(flat[idx])
    if classes.size < 2:
        raise ValueError(f"the reference must hold at least two classes, found {classes.tolist()}")
    rng = np.random.default_rng(seed)
    n = min(idx.size, max(classes.size, int(round(density * flat.size))))
    if pattern == "random":
        pick = []
        for c in classes:
            ci = idx[flat[idx] == c]
            k = min(ci.size, max(1, int(round(n * ci.size / idx.size))))
            pick.append(rng.choice(ci, size=k, replace=False))
        chosen = np.concatenate(pick)
    else:
        from scipy.spatial import cKDTree

        size = int(cluster_size) if cluster_size else max(8, n // 20)
        coords = np.stack(np.unravel_index(idx, ref.shape), 1)
        tree = cKDTree(coords)
        taken = np.zeros(idx.size, bool)

        def patch(centre: int, k: int) -> None:
            # the k untaken reference pixels nearest the centre
            want = k
            while True:
                _, near = tree.query(coords[centre], k=min(idx.size, want + int(taken.sum())))
                near = np.atleast_1d(near)
                free = near[~taken[near]][:k]
                if free.size >= k or near.size >= idx.size:
                    taken[free] = True
                    return
                want *= 2

        while taken.sum() < n:
            free = np.flatnonzero(~taken)
            patch(int(rng.choice(free)), min(size, n - int(taken.sum())))
        for c in classes:
            if not (flat[idx[taken]] == c).any():
                ci = np.flatnonzero((flat[idx] == c) & ~taken)
                patch(int(rng.choice(ci)), min(size, ci.size))
        chosen = idx[taken]
    train = np.full(flat.shape, IGNORE, np.uint8)
    train[chosen] = flat[chosen]
    held = flat.copy()
    held[chosen] = IGNORE
    return train.reshape(ref.shape), held.reshape(ref.shape)


def per_class_labels(reference: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Keep ``n`` reference pixels of every class (drawn uniformly at random within the class) as
    training labels; the rest of the reference is held out.

    Args:
        reference: ``(H, W)`` uint8 labels (``IGNORE`` = 255 where there is no reference).
        n: labelled pixels per class, at least 1 (a class with fewer pixels keeps all but one,
            so that each class is also scored).
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        ``(train, held_out)`` as :func:`sparse_labels`: each reference pixel is in exactly one.

    Raises:
        ValueError: ``n < 1`` or a reference with fewer than two classes.

    Example:
        >>> ref = np.zeros((10, 10), np.uint8); ref[:3] = 1; ref[9, :2] = 2
        >>> train, held = per_class_labels(ref, 5, seed=0)
        >>> np.bincount(train[train != 255]).tolist(), int((held != 255).sum())
        ([5, 5, 1], 89)
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    flat = np.asarray(reference).reshape(-1)
    idx = np.flatnonzero(flat != IGNORE)
    classes = np.unique(flat[idx])
    if classes.size < 2:
        raise ValueError(f"the reference must hold at least two classes, found {classes.tolist()}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        ci = idx[flat[idx] == c]
        chosen.append(rng.choice(ci, size=min(n, max(1, ci.size - 1)), replace=False))
    pick = np.concatenate(chosen)
    train = np.full(flat.shape, IGNORE, np.uint8)
    train[pick] = flat[pick]
    held = flat.astype(np.uint8, copy=True)
    held[pick] = IGNORE
    return train.reshape(np.shape(reference)), held.reshape(np.shape(reference))
