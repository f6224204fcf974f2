"""Reading and validating the inputs of ``fhcnn volume``: images (one or more channels), the
sparse label volume, the optional full evaluation labels. Everything is checked here, before any
output is created; each refusal is one :class:`~fhcnn.errors.InputError` line.

Refused: images whose spatial shapes differ (from each other or from the labels), a channel axis
that cannot be told (``--channel-axis`` decides), a non-finite voxel, a volume of one value, a
label value that is neither a class (``0 .. 254``) nor ``--ignore``, a non-integer label, a class
(below the largest one, in the labels or the evaluation labels) without a labelled voxel, fewer
than two labelled classes, a file whose header promises more data than it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from ...options import IGNORE

__all__ = ["VolumeInputs", "ChannelStats", "load_volume_inputs", "inputs_from_arrays", "label_summary", "describe_labels",
           "AXIS_NAMES"]

#: Names of the spatial axes (D, H, W) in log lines.
AXIS_NAMES = ("D", "H", "W")
_SLAB_VOXELS = 1 << 24   # voxels read at a time when streaming statistics


@dataclass
class ChannelStats:
    """Statistics of one channel over the whole volume (streamed by slabs, float64 sums)."""

    mean: float
    std: float
    min: float
    max: float


@dataclass
class VolumeInputs:
    """Validated inputs.

    Attributes:
        channels: ``C`` array-likes ``(D, H, W)`` (memory-mapped or lazy; read by slabs).
        labels: ``(D, H, W)`` uint8, classes ``0 .. K-1``, ``255`` = unlabelled (``--ignore``
            mapped to 255).
        eval_labels: ``(D, H, W)`` uint8 like ``labels`` (255 = not scored), or ``None``.
        num_classes: ``K``.
        stats: per-channel :class:`ChannelStats`.
        spacing: voxel size along (D, H, W) from the file (``None``: the format has none).
        geometry: the reader's geometry of the first image (kept for the prediction), or None.
        format: the format of the first image (``"npy"``, ``"nifti"``, ...).
        sources: ``{"images": [...], "labels": ..., "eval_labels": ...}``.
    """

    channels: list[Any]
    labels: np.ndarray
    eval_labels: np.ndarray | None
    num_classes: int
    stats: list[ChannelStats]
    spacing: tuple[float, float, float] | None = None
    geometry: Any = None
    format: str = "npy"
    sources: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.labels.shape)  # type: ignore[return-value]

    def volume(self) -> np.ndarray:
        """``(C, D, H, W)`` float32 in memory (the engine's input today)."""
        out = np.empty((len(self.channels), *self.shape), np.float32)
        for c, ch in enumerate(self.channels):
            for box in _slabs(self.shape):
                out[(c, *box)] = np.asarray(ch[box], np.float32)
        return out


def _slabs(shape: Sequence[int]) -> list[tuple[slice, slice, slice]]:
    """Boxes of whole (H, W) planes, about ``_SLAB_VOXELS`` voxels each, covering ``shape``."""
    d, h, w = (int(n) for n in shape)
    step = max(1, _SLAB_VOXELS // max(1, h * w))
    return [(slice(z, min(d, z + step)), slice(0, h), slice(0, w)) for z in range(0, d, step)]


def _load_npy(spec: str, what: str) -> np.ndarray:
    p = Path(spec).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} {spec} does not exist")
    if p.suffix.lower() != ".npy":
        raise InputError(f"{what} {spec}: this build reads .npy volumes (got {p.suffix or 'no suffix'})")
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        size = p.stat().st_size
        raise InputError(f"{what} {spec}: the .npy header does not match the file ({size} bytes): {e}") from None
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{what} {spec}: dtype {arr.dtype} is not a number type")
    return arr


def _open_images(specs: Sequence[str], channel_axis: int | None, label_shape: tuple[int, ...]
                 ) -> tuple[list[Any], tuple[float, float, float] | None, Any, str]:
    """The image channels (array-likes ``(D, H, W)``), the spacing, the geometry, the format."""
    try:
        from ...data import volumes as _formats  # the format readers (NIfTI, TIFF, zarr, ...)
    except ImportError:
        _formats = None
    if _formats is not None:
        channels, geom, opened = _formats.open_images(list(specs), channel_axis)
        return channels, getattr(geom, "spacing", None), geom, str(opened[0].format)
    channels: list[Any] = []
    for spec in specs:
        arr = _load_npy(spec, "image")
        if arr.ndim == 3:
            if channel_axis is not None and len(specs) == 1:
                raise InputError(f"--channel-axis {channel_axis}: image {spec} has 3 axes {arr.shape}, "
                                 f"no channel axis")
            channels.append(arr)
        elif arr.ndim == 4:
            axis = _channel_axis(spec, arr.shape, channel_axis, label_shape)
            channels.extend(np.moveaxis(arr, axis, 0)[i] for i in range(arr.shape[axis]))
        else:
            raise InputError(f"image {spec} has shape {arr.shape}: a volume needs 3 axes (D, H, W), "
                             f"or 4 with a channel axis")
    return channels, None, None, "npy"


def _channel_axis(spec: str, shape: tuple[int, ...], asked: int | None, label_shape: tuple[int, ...]) -> int:
    """The channel axis of a 4-axis image: ``asked`` (``--channel-axis``, negative from the end),
    else the one axis whose removal leaves the labels' shape."""
    if asked is not None:
        if not -4 <= asked < 4:
            raise InputError(f"--channel-axis {asked} is out of range for image {spec} of shape {shape}")
        return asked % 4
    fits = [a for a in range(4) if shape[:a] + shape[a + 1:] == tuple(label_shape)]
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise InputError(f"image {spec} has shape {shape}; no axis of it can be the channel axis of a "
                         f"volume shaped like the labels {tuple(label_shape)}")
    raise InputError(f"image {spec} has shape {shape}: axes {fits} could each be the channel axis; "
                     f"choose one with --channel-axis")


def channel_stats(channel: Any, name: str) -> ChannelStats:
    """Mean, standard deviation, min and max of one channel, read by slabs (float64 sums).

    Raises:
        InputError: a NaN or infinite voxel (naming how many and the first slice).
    """
    shape = tuple(int(n) for n in channel.shape)
    s = s2 = 0.0
    lo, hi = np.inf, -np.inf
    n = 0
    for box in _slabs(shape):
        x = np.asarray(channel[box], np.float64)
        bad = ~np.isfinite(x)
        if bad.any():
            z = box[0].start + int(np.nonzero(bad.any((1, 2)))[0][0])
            raise InputError(f"{name} holds non-finite values (NaN or inf; {int(bad.sum())} in slices "
                             f"{box[0].start}..{box[0].stop - 1}, the first in slice {z} of axis D): "
                             f"fill or mask them first")
        s += float(x.sum())
        s2 += float((x * x).sum())
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        n += x.size
    mean = s / n
    return ChannelStats(mean, float(np.sqrt(max(s2 / n - mean * mean, 0.0))), lo, hi)


def _read_labels(spec: str, shape: tuple[int, ...] | None, ignore: int, what: str) -> np.ndarray:
    """``(D, H, W)`` uint8 labels (``ignore`` -> 255) from a label file, checked by slabs."""
    try:
        from ...data import volumes as _formats
    except ImportError:
        _formats = None
    if _formats is not None and shape is not None:
        raw: Any = _formats.open_label_volume(spec, tuple(shape), ignore)
    else:
        raw = _load_npy(spec, what)
    if raw.ndim != 3:
        raise InputError(f"{what} {spec} has shape {tuple(raw.shape)}: labels need 3 axes (D, H, W)")
    if shape is not None and tuple(raw.shape) != tuple(shape):
        raise InputError(f"{what} {spec} has shape {tuple(raw.shape)}, the images {tuple(shape)}: "
                         f"they must be the same grid")
    out = np.empty(raw.shape, np.uint8)
    for box in _slabs(raw.shape):
        x = np.asarray(raw[box])
        if x.dtype.kind == "f":
            bad = ~np.isfinite(x) | (x != np.round(x))
            if bad.any():
                raise InputError(f"{what} {spec} holds non-integer values (e.g. {x[bad].flat[0]!r}): "
                                 f"labels are classes 0, 1, ... and {ignore} for unlabelled")
        if x.dtype.kind not in "biuf":
            raise InputError(f"{what} {spec}: dtype {x.dtype} is not a number type")
        xi = x.astype(np.int64)
        unl = xi == ignore
        bad = ~unl & ((xi < 0) | (xi >= IGNORE))
        if bad.any():
            raise InputError(f"{what} {spec}: label value {int(xi[bad].flat[0])} is neither a class "
                             f"(0..{IGNORE - 1}) nor --ignore {ignore}")
        out[box] = np.where(unl, IGNORE, xi).astype(np.uint8)
    return out


def load_volume_inputs(images: Sequence[str], labels: str, eval_labels: str | None = None, *,
                       ignore: int = IGNORE, channel_axis: int | None = None) -> VolumeInputs:
    """Read and validate everything ``fhcnn volume`` needs (see the module docstring).

    Raises:
        InputError / FileNotFoundError: one line naming the problem.
    """
    if not images:
        raise InputError("give at least one IMAGE")
    if not 0 <= ignore <= 65535:
        raise InputError(f"--ignore {ignore}: use a label value 0..65535 (default 255)")
    lab_shape = tuple(int(n) for n in _peek_shape(labels))
    channels, spacing, geom, fmt = _open_images(images, channel_axis, lab_shape)
    shapes = [tuple(int(n) for n in ch.shape) for ch in channels]
    for spec, shp in zip(images, shapes):
        if shp != shapes[0]:
            raise InputError(f"the images have different shapes: {images[0]} {shapes[0]}, {spec} {shp}")
    shape = shapes[0]
    lab = _read_labels(labels, shape, ignore, "labels")
    ev = _read_labels(eval_labels, shape, ignore, "--eval-labels") if eval_labels is not None else None
    present = np.bincount(lab[lab != IGNORE].ravel(), minlength=IGNORE)[:IGNORE]
    k = int(np.nonzero(present)[0].max()) + 1 if present.any() else 0
    if ev is not None:
        ev_vals = np.unique(ev[ev != IGNORE])
        k = max(k, int(ev_vals.max()) + 1 if ev_vals.size else 0)
    if (present > 0).sum() < 2:
        raise InputError(f"labels {labels}: at least two classes must be labelled; found "
                         f"{int((present > 0).sum())} ({', '.join(str(c) for c in np.nonzero(present)[0])})")
    missing = [c for c in range(k) if present[c] == 0]
    if missing:
        where = " (it occurs in --eval-labels)" if ev is not None and (ev == missing[0]).any() else ""
        raise InputError(f"labels {labels}: no labelled voxel of class {missing[0]}{where}; classes are "
                         f"0..{k - 1}: label some voxels of every class, or renumber the classes")
    names = [f"image {s}" for s in images] if len(images) == len(channels) else \
        [f"channel {c} of {images[0]}" for c in range(len(channels))]
    stats = [channel_stats(ch, nm) for ch, nm in zip(channels, names)]
    if all(st.max == st.min for st in stats):
        raise InputError(f"every voxel of {', '.join(images)} has the value {stats[0].min:g}: nothing to segment")
    return VolumeInputs(channels, lab, ev, k, stats, spacing, geom, fmt,
                        {"images": list(images), "labels": labels,
                         **({"eval_labels": eval_labels} if eval_labels else {})})


def _peek_shape(spec: str) -> tuple[int, ...]:
    """The shape of a label file without reading its data (to tell a channel axis)."""
    try:
        from ...data import volumes as _formats
    except ImportError:
        _formats = None
    if _formats is not None and not str(spec).endswith(".npy"):
        return tuple(_formats.open_volume(spec, what="labels").channels[0].shape)
    return tuple(_load_npy(spec, "labels").shape)


def label_summary(labels: np.ndarray, num_classes: int, threshold: float = 0.5) -> dict[str, Any]:
    """What is labelled: voxels per class, the annotated slices of each axis (slices at least
    ``threshold`` labelled), and the labelled voxels outside them (scribbles).

    Example:
        >>> lab = np.full((4, 3, 3), 255, np.uint8); lab[1] = 0; lab[1, 0, 0] = 1
        >>> s = label_summary(lab, 2); s["voxels"], s["slices"]
        ([8, 1], {'D': [1], 'H': [], 'W': []})
    """
    known = labels != IGNORE
    counts = np.bincount(labels[known].ravel(), minlength=num_classes)[:num_classes]
    slices: dict[str, list[int]] = {}
    in_slice = np.zeros(labels.shape, bool)
    for a, name in enumerate(AXIS_NAMES):
        other = tuple(b for b in range(3) if b != a)
        frac = known.mean(axis=other)
        idx = [int(i) for i in np.nonzero(frac >= threshold)[0]]
        slices[name] = idx
        if idx:
            sl: list[Any] = [slice(None)] * 3
            sl[a] = idx
            in_slice[tuple(sl)] = True
    return {"voxels": [int(c) for c in counts], "labelled": int(known.sum()),
            "fraction": float(known.mean()), "slices": slices,
            "outside_slices": int((known & ~in_slice).sum())}


def describe_labels(summary: dict[str, Any]) -> str:
    """One log line of :func:`label_summary`."""
    per = ", ".join(f"class {c}: {n}" for c, n in enumerate(summary["voxels"]))
    parts = []
    for name, idx in summary["slices"].items():
        if idx:
            shown = ", ".join(str(i) for i in idx[:12]) + (", ..." if len(idx) > 12 else "")
            parts.append(f"{len(idx)} slice{'s' if len(idx) > 1 else ''} of axis {name} ({shown})")
    where = "; ".join(parts) if parts else "no complete slice"
    extra = f"; {summary['outside_slices']} voxels outside them" if summary["outside_slices"] else ""
    return (f"labelled voxels {summary['labelled']} ({100 * summary['fraction']:.2f} % of the volume; "
            f"{per}) on {where}{extra}")


def inputs_from_arrays(channels: Sequence[np.ndarray], labels: np.ndarray, eval_labels: np.ndarray | None = None,
                       *, spacing: Sequence[float] | None = None, name: str = "array") -> VolumeInputs:
    """:class:`VolumeInputs` of in-memory arrays (benchmarks, notebooks): ``channels`` each
    ``(D, H, W)``, ``labels`` ``(D, H, W)`` (255 = unlabelled), optional full ``eval_labels``;
    the classes are those of the labels and the evaluation labels."""
    lab = np.asarray(labels, np.uint8)
    vals = [lab[lab != IGNORE]] + ([np.asarray(eval_labels)[np.asarray(eval_labels) != IGNORE]]
                                   if eval_labels is not None else [])
    k = max(2, max(int(v.max()) + 1 for v in vals if v.size))
    stats = [channel_stats(c, f"{name} channel {i}") for i, c in enumerate(channels)]
    return VolumeInputs(list(channels), lab, None if eval_labels is None else np.asarray(eval_labels, np.uint8),
                        k, stats, None if spacing is None else tuple(float(s) for s in spacing),  # type: ignore[arg-type]
                        None, "npy", {"images": [name], "labels": name})
