"""The label scan: one streamed pass over a label volume (:func:`scan_labels`) that checks
every value, counts each class and the labelled voxels of every slice along every axis, and
keeps a capped sample of labelled positions per class (:data:`MAX_POINTS`): a
:class:`LabelScan`. :func:`unlabelled` is what counts as unlabelled (the ignore value, NaN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from .arrays import ArrayLike
from .slabs import ONE_PROCESS, SLAB_BYTES, PassShare, iter_slabs

#: Labelled positions kept per class for window sampling (an evenly strided sample beyond).
MAX_POINTS = 1 << 20


@dataclass
class LabelScan:
    """What one streamed pass over a label volume found.

    Attributes:
        counts: ``(limit,)`` int64 labelled voxels of each class value.
        unlabelled: voxels equal to the ignore value.
        per_slice: for each axis, the labelled voxels of each slice along it (int64 arrays).
        positions: for each class ``c`` in ``0 .. max``, an ``(n_c, ndim)`` int32 array of
            labelled positions in scan order: all of them while there are at most
            ``max_points``, else every ``s``-th of the class within each slab of the pass (the
            first of the slab included), ``s`` the smallest power of two that brings them under it
            (or, where more slabs than ``max_points`` hold the class, that keeps one a slab).
    """

    counts: np.ndarray
    unlabelled: int
    per_slice: list[np.ndarray]
    positions: list[np.ndarray]

    def classes(self) -> list[int]:
        """Class values with at least one voxel."""
        return np.flatnonzero(self.counts).tolist()

    def labelled_slices(self, axis: int) -> list[int]:
        """Slices along ``axis`` holding at least one labelled voxel."""
        return [int(i) for i in np.flatnonzero(self.per_slice[axis])]


def _first(bad: np.ndarray, x: np.ndarray, box: Sequence[slice]) -> tuple[tuple[int, ...], Any]:
    where = np.argwhere(bad)[0]
    v = x[tuple(where)]
    return tuple(int(w + s.start) for w, s in zip(where, box)), (v.item() if hasattr(v, "item") else v)


def unlabelled(x: np.ndarray, ignore: int) -> np.ndarray:
    """The voxels of a block ``x`` of labels that are unlabelled: equal to ``ignore``, or NaN
    in float labels (as the label maps and masks of the other commands read it)."""
    out = x == ignore
    if x.dtype.kind == "f":
        out |= np.isnan(x)
    return np.asarray(out)


def scan_labels(labels: ArrayLike, ignore: int = 255, *, limit: int = 256, max_points: int = MAX_POINTS,
                max_bytes: int = SLAB_BYTES, slab_axis: int = 0, what: str = "labels",
                share: PassShare = ONE_PROCESS) -> LabelScan:
    """Check and scan an integer label array-like (any number of axes) in one pass of slabs of
    at most ``max_bytes``.

    Args:
        labels: integer, bool or float (integral values) labels.
        ignore: the value of unlabelled voxels.
        limit: class values run ``0 .. limit - 1``.
        max_points: labelled positions kept per class (see :class:`LabelScan`).
        what: the name in messages (``"labels x.nii.gz"``).
        share: this process's share of a pass several processes make (:class:`PassShare`); the
            scan, and the first bad value refused, are those of one process.

    Raises:
        InputError: a value that is neither a class nor ``ignore`` (a negative, a non-integer, a
            NaN, one of ``limit`` or more), naming it and its position (the first in slab order).
    """
    shape = tuple(int(n) for n in labels.shape)
    boxes = list(iter_slabs(shape, 8, max_bytes, slab_axis))
    part = _scan_slabs(labels, boxes, share.block(len(boxes)), ignore, limit, max_points, what)
    return _merge_scans(share.combine(part), shape, limit, max_points)


@dataclass
class _ScanPart:
    """What one process's block of slabs holds: the sums of :class:`LabelScan`, the kept positions
    of each class per slab (``(slab, positions)``, every ``stride[c]``-th labelled voxel of the
    class within the slab, in scan order) and the first refused value (``(slab, message)``)."""

    counts: np.ndarray
    unlabelled: int
    per: list[np.ndarray]
    kept: list[list[tuple[int, np.ndarray]]]
    stride: np.ndarray
    error: tuple[int, str] | None = None


def _scan_slabs(labels: ArrayLike, boxes: Sequence[tuple[slice, ...]], block: range, ignore: int, limit: int,
                max_points: int, what: str) -> _ScanPart:
    shape = tuple(int(n) for n in labels.shape)
    nd = len(shape)
    part = _ScanPart(np.zeros(limit, np.int64), 0, [np.zeros(n, np.int64) for n in shape],
                     [[] for _ in range(limit)], np.ones(limit, np.int64))
    n_kept = np.zeros(limit, np.int64)
    floating = np.dtype(labels.dtype).kind == "f"
    for i in block:
        box = boxes[i]
        x = np.asarray(labels[box])
        if x.dtype == bool:
            x = x.view(np.uint8)
        if floating:
            bad = np.isinf(x) | (np.isfinite(x) & (x != np.round(x)))
            if bad.any():
                pos, v = _first(bad, x, box)
                part.error = (i, f"{what} hold the value {v} at voxel {pos}: labels are integers (classes 0, 1, "
                                 f"... and --ignore {ignore} or NaN; floats with integral values are accepted)")
                break
        unl = unlabelled(x, ignore)
        lab = ~unl
        bad = lab & ((x < 0) | (x >= limit))
        if bad.any():
            pos, v = _first(bad, x, box)
            part.error = (i, f"{what} hold the value {v} at voxel {pos}, which is neither a class "
                             f"(0..{limit - 1}) nor the --ignore value {ignore}")
            break
        part.unlabelled += int(np.count_nonzero(unl))
        xi = np.where(unl, -1, x).astype(np.int64, copy=False) if floating else x.astype(np.int64, copy=False)
        part.counts += np.bincount(xi[lab], minlength=limit)[:limit]
        for a in range(nd):
            other = tuple(b for b in range(nd) if b != a)
            part.per[a][box[a]] += np.count_nonzero(lab, axis=other) if other else lab
        if not lab.any():
            continue
        origin = np.array([s.start for s in box], np.int32)
        for c in np.unique(xi[lab]).tolist():
            take = np.argwhere(xi == c)[::part.stride[c]].astype(np.int32) + origin
            part.kept[c].append((i, take))
            n_kept[c] += len(take)
            while n_kept[c] > max_points and any(len(p) > 1 for _, p in part.kept[c]):
                # every other kept voxel of each slab (its first stays): twice the stride
                part.kept[c] = [(j, p[::2].copy()) for j, p in part.kept[c]]  # copies, so the longer arrays are freed
                part.stride[c] *= 2
                n_kept[c] = sum(len(p) for _, p in part.kept[c])
    return part


def _merge_scans(parts: Sequence[_ScanPart], shape: tuple[int, ...], limit: int, max_points: int) -> LabelScan:
    """The :class:`LabelScan` of the processes' parts, in slab order: the first refused value,
    the sums, and each class's positions at the smallest power-of-two stride (at least every
    part's) that keeps at most ``max_points``."""
    errors = [p.error for p in parts if p.error is not None]
    if errors:
        raise InputError(min(errors)[1])
    counts = np.sum([p.counts for p in parts], axis=0)
    per = [np.sum([p.per[a] for p in parts], axis=0) for a in range(len(shape))]
    top = int(np.flatnonzero(counts).max()) if counts.any() else -1
    positions = []
    for c in range(top + 1):
        stride = max(int(p.stride[c]) for p in parts)
        while True:
            taken = [(j, pos[::stride // int(p.stride[c])]) for p in parts for j, pos in p.kept[c]]
            if sum(len(t) for _, t in taken) <= max_points or all(len(t) <= 1 for _, t in taken):
                break
            stride *= 2
        arrays = [t for _, t in sorted(taken, key=lambda jt: jt[0])]
        positions.append(np.concatenate(arrays) if arrays else np.zeros((0, len(shape)), np.int32))
    return LabelScan(counts, int(sum(p.unlabelled for p in parts)), per, positions)
