"""Sparse label volumes: ``0..K-1`` are classes, ``ignore`` (255) marks unlabelled voxels.

One streaming pass (bounded memory) checks every value and counts, per class, the
labelled voxels and, per axis, the labelled voxels of each slice; that summary names the
annotation in the log ("axis 2 slices [10, 40, 70]; scribbles elsewhere").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from ..lazy import ONE_PROCESS, SLAB_BYTES, ArrayLike, LabelScan, PassShare, iter_slabs, scan_labels, unlabelled
from ._common import OpenedVolume

__all__ = ["LabelSummary", "LabelVolume", "summarize_labels", "open_label_volume", "unwritten_note",
           "MAX_CLASSES", "DENSE_FRACTION"]

#: Label values at or above this (other than the ignore value) are refused.
MAX_CLASSES = 256
#: A slice counts as annotated when at least this fraction of its voxels is labelled.
DENSE_FRACTION = 0.5


@dataclass(frozen=True)
class LabelSummary:
    """What a label volume holds.

    Attributes:
        shape: ``(D, H, W)``.
        counts: labelled voxels of each class ``0..K-1`` (``K = len(counts)``).
        unlabelled: voxels equal to the ignore value.
        per_slice: for each axis, the labelled voxels of each slice along it (int64 arrays
            of lengths D, H, W).
        dense: for each axis, the slices at least ``DENSE_FRACTION`` labelled.
        elsewhere: labelled voxels outside every dense slice (scribbles, partial slices).
        scan: the pass it was made from (:func:`~fhcnn.data.lazy.scan_labels`, with the sampled
            positions training draws windows around), so a run does not read the labels again.
    """

    shape: tuple[int, int, int]
    counts: tuple[int, ...]
    unlabelled: int
    per_slice: tuple[np.ndarray, np.ndarray, np.ndarray]
    dense: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    elsewhere: int
    scan: LabelScan | None = None

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    @property
    def labelled(self) -> int:
        return int(sum(self.counts))

    def labelled_slices(self, axis: int) -> list[int]:
        """Slices along ``axis`` holding at least one labelled voxel."""
        return [int(i) for i in np.flatnonzero(self.per_slice[axis])]

    def describe(self, max_listed: int = 10) -> str:
        """One log line, e.g. ``labelled: class 0 12,345 voxels, class 1 678 (0.52 % of
        2,500,000); axis 2 slices [10, 40, 70]; scribbles elsewhere (1,204 voxels)``."""
        total = int(np.prod(self.shape, dtype=np.int64))
        parts = [f"class {c} {n:,}" + (" voxels" if c == 0 else "") for c, n in enumerate(self.counts)]
        line = f"labelled: {', '.join(parts)} ({100 * self.labelled / total:.2g} % of {total:,})"
        axes = [f"axis {a} slices {_listed(list(d), max_listed)}" for a, d in enumerate(self.dense) if d]
        if axes:
            line += "; " + "; ".join(axes)
            if self.elsewhere:
                line += f"; scribbles elsewhere ({self.elsewhere:,} voxel{'s' if self.elsewhere != 1 else ''})"
        else:
            a = int(np.argmin([len(self.labelled_slices(a)) for a in range(3)]))
            line += f"; scribbles on axis {a} slices {_listed(self.labelled_slices(a), max_listed)}"
        return line

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (for ``run.json``/``metrics.json``)."""
        return {"shape": list(self.shape), "counts": list(self.counts), "unlabelled": self.unlabelled,
                "dense_slices": [list(d) for d in self.dense], "elsewhere": self.elsewhere,
                "labelled_slices": [self.labelled_slices(a) for a in range(3)]}


def _listed(items: list[int], n: int, noun: str = "slices") -> str:
    if len(items) <= n:
        return "[" + ", ".join(map(str, items)) + "]"
    return "[" + ", ".join(map(str, items[:n])) + f", ... ({len(items)} {noun})]"


def summarize_labels(labels: ArrayLike, ignore: int = 255, *, num_classes: int | None = None,
                     what: str = "labels", slab_axis: int = 0,
                     max_bytes: int = SLAB_BYTES, share: PassShare = ONE_PROCESS) -> LabelSummary:
    """Check and summarize a ``(D, H, W)`` label array-like in one pass
    (:func:`~fhcnn.data.lazy.scan_labels`; two when dense slices lie along more than one axis),
    by slabs of at most ``max_bytes``.

    Args:
        labels: integer, bool or float (integral values) labels.
        ignore: the value of unlabelled voxels.
        num_classes: the classes are ``0..num_classes-1`` (classes without a voxel allowed:
            evaluation labels); ``None``: ``K`` is the largest class + 1, at least 2, and
            every class below it must have a voxel (training labels).
        what: the name in messages (``"labels x.nii.gz"``).
        share: this process's share of the passes several processes make together
            (:class:`~fhcnn.data.lazy.PassShare`); the summary is one process's.

    Raises:
        InputError: a value that is neither a class nor ``ignore`` (a negative, a non-integer,
            a NaN, one above the classes) with its position; no labelled voxel; a class below
            the largest without a voxel; a single class.
    """
    shape = tuple(int(n) for n in labels.shape)
    if len(shape) != 3:
        raise InputError(f"{what} has shape {shape}; a label volume has three axes")
    limit = num_classes if num_classes is not None else MAX_CLASSES
    scan = scan_labels(labels, ignore, limit=limit, max_bytes=max_bytes, slab_axis=slab_axis, what=what,
                       share=share)
    counts, per, unlabelled = scan.counts, scan.per_slice, scan.unlabelled
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        raise InputError(f"{what} hold no labelled voxel (every voxel is the --ignore value {ignore})")
    k = num_classes if num_classes is not None else int(nz[-1]) + 1
    if num_classes is None:
        missing = [c for c in range(k) if counts[c] == 0]
        if missing:
            why = (f"; --ignore {ignore} is one of them: the classes are 0..K-1, so the value of unlabelled "
                   f"voxels lies above the largest class (e.g. 255)") if ignore in missing else ""
            if not why and len(missing) > k // 2 and k > 16:  # values spread thin: not class indices
                why = (f"; {k - len(missing)} values spread over 0..{k - 1} look like grey levels (an antialiased "
                       f"or smoothly resized mask, or an image) rather than classes 0..K-1: save the labels "
                       f"as class indices with hard edges")
            raise InputError(f"{what} have no voxel of class {_listed(missing, 6, 'classes')[1:-1]} (the classes "
                             f"run 0..{k - 1}): every class below the largest needs labelled voxels{why}")
        if k < 2:
            raise InputError(f"{what} hold only class 0; at least two classes need labelled voxels")
    size = [int(np.prod(shape, dtype=np.int64)) // n for n in shape]
    dense = tuple(tuple(int(i) for i in np.flatnonzero(per[a] >= DENSE_FRACTION * size[a])) for a in range(3))
    labelled = int(counts.sum())
    axes = [a for a in range(3) if dense[a]]
    if not axes:
        elsewhere = labelled
    elif len(axes) == 1:
        elsewhere = labelled - int(per[axes[0]][list(dense[axes[0]])].sum())
    else:
        elsewhere = _outside(labels, ignore, dense, shape, slab_axis, max_bytes, share)
    return LabelSummary(shape=shape, counts=tuple(int(c) for c in counts[:k]), unlabelled=unlabelled,  # type: ignore[arg-type]
                        per_slice=(per[0], per[1], per[2]), dense=dense, elsewhere=elsewhere,  # type: ignore[arg-type]
                        scan=scan)


def _outside(labels: ArrayLike, ignore: int, dense: Sequence[Sequence[int]], shape: tuple[int, ...],
             slab_axis: int, max_bytes: int, share: PassShare) -> int:
    """Labelled voxels outside the union of the dense slices (a second pass, shared as the first)."""
    masks = []
    for a in range(3):
        m = np.zeros(shape[a], dtype=bool)
        m[list(dense[a])] = True
        masks.append(m)
    n = 0
    boxes = list(iter_slabs(shape, 8, max_bytes, slab_axis))
    for box in (boxes[i] for i in share.block(len(boxes))):
        x = np.asarray(labels[box])
        if x.dtype == bool:
            x = x.view(np.uint8)
        inside = masks[0][box[0], None, None] | masks[1][None, box[1], None] | masks[2][None, None, box[2]]
        n += int(np.count_nonzero(~unlabelled(x, ignore) & ~inside))
    return sum(share.combine(n))


class LabelVolume:
    """A checked label volume: an array-like ``(D, H, W)`` of integers (floats with integral
    values come back as int32, their NaN as ``ignore``; bool as uint8) with its :class:`LabelSummary`.

    Attributes:
        opened: the file (``opened.compressed``, ``opened.geometry`` ...).
        summary: the summary of :func:`summarize_labels`.
        note: a line for the log about what the file may not mean (chunks never written, read
            as a class: :func:`unwritten_note`), or ``None``.
    """

    def __init__(self, opened: OpenedVolume, summary: LabelSummary, note: str | None = None,
                 ignore: int = 255) -> None:
        self.opened = opened
        self.ignore = int(ignore)  # what NaN (unlabelled) of float labels comes back as
        self.array = opened.channels[0]
        self.summary = summary
        self.note = note
        self.shape = tuple(int(n) for n in self.array.shape)
        self.ndim = 3
        kind = np.dtype(self.array.dtype).kind
        self.dtype = np.dtype(np.int32) if kind == "f" else np.dtype(np.uint8) if kind == "b" \
            else np.dtype(self.array.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        x = np.asarray(self.array[key])
        if x.dtype.kind == "f":
            x = np.where(np.isnan(x), self.ignore, x)
        return x.astype(self.dtype, copy=False)


def open_label_volume(spec: str, shape: Sequence[int], ignore: int = 255, *, num_classes: int | None = None,
                      what: str = "labels", max_bytes: int = SLAB_BYTES, share: PassShare = ONE_PROCESS,
                      grid: OpenedVolume | None = None) -> LabelVolume:
    """Open, check and summarize a label volume for images of spatial ``shape``.

    Args:
        spec: any format :func:`open_volume` reads; one channel.
        shape: the images' ``(D, H, W)``.
        ignore, num_classes: see :func:`summarize_labels` (``--eval-labels``: pass the
            training labels' ``num_classes``).
        what: the role in messages (``"labels"``, ``"--eval-labels"``).
        share: this process's share of the summary's passes (:func:`summarize_labels`).
        grid: the (first) image's file: labels placed elsewhere in the world are refused
            (:func:`~fhcnn.data.volumes.grid.check_same_grid`) before they are read.

    Raises:
        InputError: as :func:`open_volume`; several channels; a shape other than ``shape``
            (naming both); another grid than ``grid``'s; a non-numeric dtype; any value
            :func:`summarize_labels` refuses.
    """
    from .opening import check_same_grid, open_volume

    v = open_volume(spec, what=what, allow_channels=False)
    if tuple(v.shape) != tuple(int(n) for n in shape):
        raise InputError(f"{what} {spec} have shape {v.shape} but the images have {tuple(shape)}; "
                         f"labels share the images' grid")
    if grid is not None:
        check_same_grid(grid, v, what)
    summary = summarize_labels(v.channels[0], ignore, num_classes=num_classes, what=f"{what} {spec}",
                               slab_axis=v.slab_axis, max_bytes=max_bytes, share=share)
    return LabelVolume(v, summary, unwritten_note(v, ignore, f"{what} {spec}"), ignore)


def unwritten_note(v: OpenedVolume, ignore: int, what: str) -> str | None:
    """A line naming the chunks of the label file ``v`` (zarr or HDF5) that were never written
    when they read as a class: their fill value is not ``ignore`` (zarr's default fill value 0
    and its ``null``, read as 0, are class 0), or ``None``. Counted from the store's keys (and
    each shard's index), or the dataset's chunk index, not from the data
    (:func:`~fhcnn.data.volumes.stores.never_written`).

    A note, not a refusal: zarr 3 does not write a chunk that holds only the fill value
    (``write_empty_chunks`` is off by default), so dense labels whose background chunks are
    class 0 lack those chunks too, and are right; labels written as a few annotated slices
    into a fresh array are not, and only their author knows which they are."""
    if v.format not in ("zarr", "hdf5"):
        return None
    from .stores import never_written

    gap = never_written(v.stored)
    if gap is None or gap.fill == ignore:
        return None
    fill = f"{gap.fill:g}" + (" (its fill value null)" if gap.stated is None else "")
    how = (f"fill_value in its {'zarr.json' if _zarr_format(v.stored) == 3 else '.zarray'}" if v.format == "zarr"
           else f"an HDF5 dataset's is fixed when it is made: write the dataset anew with fillvalue={ignore}")
    return (f"{what}: {gap.missing:,} of its {gap.total:,} {gap.unit} were never written (about "
            f"{100 * gap.missing / gap.total:.2g} % of the volume) and read as {fill}, which is class {gap.fill:g}; "
            f"if those voxels are unlabelled, set the array's fill value to the --ignore value {ignore} ({how})")


def _zarr_format(array: Any) -> int:
    return int(getattr(getattr(array, "metadata", None), "zarr_format", 2))
