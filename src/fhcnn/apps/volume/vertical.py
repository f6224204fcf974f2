"""The axis along which a volume's classes are layers, and the training flips it rules out.

Where the classes are layers ordered along an axis (the formations of a seismic cube, in depth),
a window turned over along it shows them in the reverse order, with their labels: a volume that
contradicts the annotation. The labels tell such an axis (:func:`label_order`): from each
labelled voxel to the next labelled voxel of its column along it, the class changes one way
(rises, or falls) at least :data:`LAYERED_SHARE` of the times it changes, a split that changes
made at random either way would give with a chance below :data:`LAYERED_CHANCE` (a fold, a
fault or an annotation error may turn a few the other way). Training windows are then never
flipped along that axis, and the mirrored prediction tiling (``data.predict_flip``) flips
another axis the windows are flipped along
(:attr:`~fhcnn.engine.config.DataConfig.mirror_axis`). Classes that are not layers (faults,
cells, tissue) keep every flip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ...data.lazy import SLAB_BYTES
from ...engine.config import FLIP_KEYS, DataConfig
from ...options import IGNORE
from .config import VolumeConfig
from .inputs import AXIS_NAMES, VolumeInputs

__all__ = ["LabelOrder", "label_order", "vertical_axis", "keep_upright", "LAYERED_SHARE", "LAYERED_CHANCE"]

#: The share of the class changes along an axis that go one way, at least, for layers along it
#: (cells, faults and the brain template in the benchmarks: 50 % to 87 %; formations in depth: 97 %
#: to 100 %).
LAYERED_SHARE = 0.9
#: The chance, at most, that changes made either way at random (a fair coin each) split as
#: one-sidedly: a handful of changes, all one way, is not layers.
LAYERED_CHANCE = 1e-3


@dataclass(frozen=True)
class LabelOrder:
    """How the classes change from one labelled voxel to the next labelled voxel of its column,
    along each axis (D, H, W): ``rises[a]`` steps to a higher class, ``falls[a]`` to a lower."""

    rises: tuple[int, int, int]
    falls: tuple[int, int, int]

    def ordered(self, axis: int) -> bool:
        """Whether the classes are layers along ``axis`` (see the module): their changes along it
        go one way at least ``LAYERED_SHARE`` of the times, a split of chance at most
        ``LAYERED_CHANCE`` for changes either way at random."""
        from scipy.stats import binom

        n = self.rises[axis] + self.falls[axis]
        most = max(self.rises[axis], self.falls[axis])
        return n > 0 and most >= LAYERED_SHARE * n and 2 * float(binom.sf(most - 1, n, 0.5)) <= LAYERED_CHANCE

    def describe(self, axis: int) -> str:
        """Why the labels are layers along ``axis``, for the log."""
        up = self.rises[axis] >= self.falls[axis]
        most, few = sorted((self.rises[axis], self.falls[axis]), reverse=True)
        return (f"the labels are layers along it: from one labelled voxel to the next of a column the class "
                f"{'rises' if up else 'falls'} {most:,} times and {'falls' if up else 'rises'} {few:,}")


def _before(x: np.ndarray, axis: int, carry: np.ndarray) -> np.ndarray:
    """For each voxel of the 2D block ``x`` (classes, -1 unlabelled), the class of the nearest
    labelled voxel before it along ``axis`` (``carry``: the last one before the block, along
    the other axis; -1 none)."""
    n = x.shape[axis]
    at = np.arange(n).reshape((n, 1) if axis == 0 else (1, n))
    idx = np.maximum.accumulate(np.where(x >= 0, at, -1), axis=axis)
    head = np.expand_dims(carry, axis)
    filled = np.where(idx >= 0, np.take_along_axis(x, np.maximum(idx, 0), axis), head)
    return np.concatenate([head, np.delete(filled, n - 1, axis)], axis)


def label_order(labels: Any, slices: Sequence[int], axis: int = 0, max_bytes: int = SLAB_BYTES) -> LabelOrder:
    """The :class:`LabelOrder` of ``labels`` (a ``(D, H, W)`` uint8 array-like, ``IGNORE``
    unlabelled), read slice by slice along ``axis`` (the one its file reads fastest by slab),
    only on ``slices``, the slices along it that hold labelled voxels, in order, each in bands
    of rows of at most ``max_bytes`` (as int16): memory is one band and two slices."""
    shape = tuple(int(n) for n in labels.shape)
    p, q = (a for a in range(3) if a != axis)  # a slice's axes: its rows, then its columns
    rises, falls = np.zeros(3, np.int64), np.zeros(3, np.int64)
    last = np.full((shape[p], shape[q]), -1, np.int16)  # along ``axis``: the last labelled class of each column
    rows = max(1, max_bytes // (2 * max(1, shape[q])))

    def count(x: np.ndarray, prev: np.ndarray, along: int) -> None:
        step = (x >= 0) & (prev >= 0)
        rises[along] += int(np.count_nonzero(step & (x > prev)))
        falls[along] += int(np.count_nonzero(step & (x < prev)))

    for i in slices:
        above = np.full(shape[q], -1, np.int16)  # along p: the last labelled class of each column so far
        for r0 in range(0, shape[p], rows):
            key: list[Any] = [slice(None)] * 3
            key[axis], key[p] = int(i), slice(r0, r0 + rows)
            x = np.asarray(labels[tuple(key)]).astype(np.int16)
            x[x == IGNORE] = -1
            count(x, last[r0:r0 + rows], axis)
            last[r0:r0 + rows] = np.where(x >= 0, x, last[r0:r0 + rows])
            count(x, _before(x, 1, np.full(x.shape[0], -1, np.int16)), q)
            before = _before(x, 0, above)
            count(x, before, p)
            above = np.where(x[-1] >= 0, x[-1], before[-1])
    return LabelOrder(tuple(int(v) for v in rises), tuple(int(v) for v in falls))  # type: ignore[arg-type]


def vertical_axis(cfg: VolumeConfig, inputs: VolumeInputs, data: DataConfig) -> tuple[int | None, str]:
    """The axis kept upright (0 = D, 1 = H, 2 = W, or ``None``) and why: ``volume.vertical_axis``,
    or with ``auto`` the axis the labels are layers along (:func:`label_order`), among the axes
    ``data`` flips (only the input's vertical axis where it states one: a SEG-Y cube's samples),
    the one with the most changes where several are."""
    chosen = cfg.volume.vertical_axis
    if chosen == "none":
        return None, "volume.vertical_axis=none"
    if chosen != "auto":
        return AXIS_NAMES.index(chosen), "volume.vertical_axis"
    flipped = data.flipped_axes
    candidates = [a for a in flipped if inputs.vertical_axis in (None, a)]
    if not candidates:
        return None, "no flipped axis to check"
    along = inputs.label_slab_axes[0] if inputs.label_slab_axes else 0
    order = label_order(inputs.labels, inputs.summary.labelled_slices(along), along)
    layered = [a for a in candidates if order.ordered(a)]
    if not layered:
        where = ", ".join(AXIS_NAMES[a] for a in candidates)
        return None, (f"the labels are layers along none of {where}; --set volume.vertical_axis=D, H or W "
                      f"keeps one upright")
    axis = max(layered, key=lambda a: order.rises[a] + order.falls[a])
    return axis, order.describe(axis)


def keep_upright(data: DataConfig, axis: int | None, source: str) -> str:
    """Turn off ``data``'s flip along ``axis`` (in place); one log line saying which flips
    training and the mirrored prediction tiling use."""
    if axis is not None:
        setattr(data, FLIP_KEYS[axis], False)
    flips = [AXIS_NAMES[a] for a in data.flipped_axes]
    mirror = data.prediction_mirror
    head = f"kept upright along {AXIS_NAMES[axis]} ({source})" if axis is not None else \
        f"no axis kept upright ({source})"
    return (f"{head}; training windows flipped along {', '.join(flips) or 'no axis'}; "
            f"mirrored prediction tiling: {AXIS_NAMES[mirror] if mirror is not None else 'none'}")
