"""Reading and validating the inputs of ``fhcnn volume``: images (one or more channels), the
sparse label volume, the optional full evaluation labels. Everything is checked here and in the
run plan (:func:`~fhcnn.apps.volume.pipeline.plan_volume`), before any output exists; each
refusal is one :class:`~fhcnn.errors.InputError` line.

The files are read by :mod:`fhcnn.data.volumes` (NIfTI, TIFF, zarr, HDF5, SEG-Y, ``.npy``), lazily:
nothing here holds a whole image. Refused here: images whose spatial shapes differ (from each
other or from the labels), a channel axis that cannot be told (``--channel-axis`` decides), a
label value that is neither a class nor ``--ignore``, a non-integer label, a class (below the
largest one, in the labels or the evaluation labels) without a labelled voxel, fewer than two
labelled classes, a file whose header promises more data than it holds; in the plan: a
non-finite voxel; below: a volume of one value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ...data.lazy import ONE_PROCESS, PassShare, unlabelled
from ...data.volumes import LabelSummary, open_images, open_label_volume, summarize_labels
from ...errors import InputError
from ...options import IGNORE

__all__ = ["VolumeInputs", "load_volume_inputs", "inputs_from_arrays", "AXIS_NAMES", "Relabelled", "HeldOut"]

#: Names of the spatial axes (D, H, W) in log lines.
AXIS_NAMES = ("D", "H", "W")


class Relabelled:
    """A ``(D, H, W)`` label array-like read as uint8 with ``ignore`` (and NaN in float labels)
    turned into ``IGNORE`` (255)."""

    def __init__(self, array: Any, ignore: int) -> None:
        self.array, self.ignore = array, int(ignore)
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        x = np.asarray(self.array[key])
        if self.ignore == IGNORE and x.dtype == np.uint8:
            return x
        return np.where(unlabelled(x, self.ignore), IGNORE, x).astype(np.uint8)


class HeldOut:
    """The evaluation labels where the training labels are unlabelled (``IGNORE`` elsewhere): what
    every score of a run is computed on. An array-like ``(D, H, W)`` uint8."""

    def __init__(self, labels: Any, truth: Any) -> None:
        self.labels, self.truth = labels, truth
        self.shape = tuple(int(n) for n in labels.shape)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.where(np.asarray(self.labels[key]) == IGNORE, np.asarray(self.truth[key]), IGNORE).astype(np.uint8)


@dataclass
class VolumeInputs:
    """Validated inputs.

    Attributes:
        channels: ``C`` lazy array-likes ``(D, H, W)``.
        labels: ``(D, H, W)`` uint8 array-like, classes ``0 .. K-1``, ``255`` = unlabelled
            (``--ignore`` mapped to 255).
        eval_labels: like ``labels`` (255 = not scored), or ``None``.
        num_classes: ``K``.
        summary: the labels' :class:`~fhcnn.data.volumes.LabelSummary`.
        spacing: voxel size along (D, H, W) from the file (``None``: the format has none).
        geometry: the first image's :class:`~fhcnn.data.volumes.VolumeGeometry` (``None`` for
            in-memory arrays), kept for the prediction.
        format: the first image's format (``"npy"``, ``"nifti"``, ``"zarr"`` ...).
        sources: ``{"images": [...], "labels": ..., "eval_labels": ...}``.
        names: a name per channel (log lines).
        slab_axes: per channel, the axis its file reads fastest by slab.
        compressed: per channel, and then for the labels and the evaluation labels, whether the
            file is slow to read by window (compressed or sequential: copied once into the run
            folder before training).
        label_slab_axes: for the labels, and then the evaluation labels, the axis their file
            reads fastest by slab (what a copy of a compressed one streams along).
        vertical_axis: the ``(D, H, W)`` axis that points down where the input says which (a
            SEG-Y cube's samples; ``vertical_axis`` of :func:`inputs_from_arrays`), else ``None``.
        notes: lines for the log about what the label files may not mean (chunks never written,
            read as a class: :func:`~fhcnn.data.volumes.labels.unwritten_note`), and about what
            a file other than the first image holds that is taken as no spacing
            (``VolumeGeometry.spacing_note``).
    """

    channels: list[Any]
    labels: Any
    eval_labels: Any | None
    num_classes: int
    summary: LabelSummary
    spacing: tuple[float, float, float] | None = None
    geometry: Any = None
    format: str = "npy"
    sources: dict[str, Any] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    slab_axes: list[int] = field(default_factory=list)
    compressed: list[bool] = field(default_factory=list)
    label_slab_axes: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    vertical_axis: int | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.labels.shape)  # type: ignore[return-value]

    def held_out(self) -> HeldOut | None:
        """The evaluation labels where ``labels`` is unlabelled, or ``None``."""
        return None if self.eval_labels is None else HeldOut(self.labels, self.eval_labels)


def load_volume_inputs(images: Sequence[str], labels: str, eval_labels: str | None = None, *,
                       ignore: int = IGNORE, channel_axis: int | None = None,
                       share: PassShare = ONE_PROCESS) -> VolumeInputs:
    """Open and check everything ``fhcnn volume`` reads (see the module docstring); ``share``:
    this process's share of the label scans (under ``torchrun``, :class:`~fhcnn.data.lazy.PassShare`).

    Raises:
        InputError: one line naming the problem.
    """
    if not -2**31 <= ignore <= 65535:
        raise InputError(f"--ignore {ignore}: use a label value -2147483648..65535 (default 255; e.g. -1 for "
                         f"signed labels)")
    channels, geom, opened = open_images(list(images), channel_axis)
    shape = tuple(int(n) for n in opened[0].shape)
    lab = open_label_volume(labels, shape, ignore, what="labels", share=share, grid=opened[0])
    k = lab.summary.num_classes
    if k > IGNORE:
        raise InputError(f"labels {labels}: {k} classes; at most {IGNORE} (0..{IGNORE - 1}) fit the prediction")
    ev = None
    if eval_labels is not None:
        ev = open_label_volume(eval_labels, shape, ignore, what="--eval-labels", num_classes=IGNORE, share=share,
                               grid=opened[0])
        _check_eval_classes(ev.summary, k, f"labels {labels}", f"--eval-labels {eval_labels}")
    names = [n for v in opened for n in v.names]
    # what the other files hold that is taken as no spacing (the first image's: the spacing line)
    files = [("image", v) for v in opened[1:]] + [("labels", lab.opened)] \
        + ([("--eval-labels", ev.opened)] if ev is not None else [])
    unstated = [f"{role} {v.spec}: {v.geometry.spacing_note} (not compared with image {opened[0].spec}'s)"
                for role, v in files if v.geometry.spacing_note]
    return VolumeInputs(channels, Relabelled(lab, ignore), None if ev is None else Relabelled(ev, ignore), k,
                        lab.summary, geom.spacing, geom, str(opened[0].format),
                        {"images": list(images), "labels": labels,
                         **({"eval_labels": eval_labels} if eval_labels else {})}, names,
                        [v.slab_axis for v in opened for _ in v.channels],
                        [v.compressed for v in opened for _ in v.channels]
                        + [lab.opened.compressed] + ([ev.opened.compressed] if ev is not None else []),
                        [lab.opened.slab_axis] + ([ev.opened.slab_axis] if ev is not None else []),
                        [x.note for x in (lab, ev) if x is not None and x.note] + unstated, geom.vertical_axis)


def _check_eval_classes(summary: LabelSummary, k: int, labels: str, eval_labels: str) -> None:
    """Refuse evaluation labels (their :class:`LabelSummary`) holding a class the ``k`` classes
    of the training labels do not reach: the network would never predict it."""
    extra = [c for c, n in enumerate(summary.counts) if n and c >= k]
    if extra:
        raise InputError(f"{labels}: no labelled voxel of class {extra[0]}, which occurs in {eval_labels} "
                         f"(the labels run 0..{k - 1}): label some voxels of every class")


def inputs_from_arrays(channels: Sequence[np.ndarray], labels: np.ndarray, eval_labels: np.ndarray | None = None,
                       *, spacing: Sequence[float] | None = None, vertical_axis: int | None = None,
                       name: str = "array") -> VolumeInputs:
    """:class:`VolumeInputs` of in-memory arrays (benchmarks, notebooks): ``channels`` each
    ``(D, H, W)``, ``labels`` ``(D, H, W)`` of classes ``0..K-1`` and 255 (or NaN) = unlabelled,
    any integer or float dtype, optional full ``eval_labels``; checked like files, before they
    become uint8: one shape, no value that is neither a class nor 255 (a negative, a fraction,
    one of 256 or more), every class below the largest labelled, and no class in
    ``eval_labels`` that the labels do not reach. ``vertical_axis``: the axis that points down
    (0, 1, 2), where the arrays have one (a seismic cube's time or depth), as a SEG-Y file's
    samples say it.

    Raises:
        InputError: one line naming the problem.
    """
    if isinstance(vertical_axis, bool) or vertical_axis not in (None, 0, 1, 2):
        raise ValueError(f"vertical_axis must be 0, 1, 2 or None, got {vertical_axis!r}")
    raw = np.asarray(labels)
    for c, ch in enumerate(channels):
        if tuple(ch.shape) != raw.shape:
            raise InputError(f"channel {c} of {name} has shape {tuple(ch.shape)}, the labels {raw.shape}")
    summary = summarize_labels(raw, IGNORE, what=f"labels of {name}")  # type: ignore[arg-type]
    lab = Relabelled(raw, IGNORE)[...]
    ev = None
    if eval_labels is not None:
        ev_raw = np.asarray(eval_labels)
        if ev_raw.shape != raw.shape:
            raise InputError(f"the eval labels of {name} have shape {ev_raw.shape}, the labels {raw.shape}")
        _check_eval_classes(summarize_labels(ev_raw, IGNORE, num_classes=IGNORE,  # type: ignore[arg-type]
                                             what=f"eval labels of {name}"),
                            summary.num_classes, f"labels of {name}", f"the eval labels of {name}")
        ev = Relabelled(ev_raw, IGNORE)[...]
    return VolumeInputs(list(channels), lab, ev, summary.num_classes, summary,
                        None if spacing is None else tuple(float(s) for s in spacing),  # type: ignore[arg-type]
                        None, "npy", {"images": [name], "labels": name},
                        [f"{name}[channel {c}]" for c in range(len(channels))], vertical_axis=vertical_axis)
