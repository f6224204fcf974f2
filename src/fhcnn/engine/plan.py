"""A dense run worked out once: :func:`prepare` turns inputs and a config into a :class:`RunPlan`.

Every setting a run derives, every size it uses (scale, padding, windows, tilings, chunks)
and every check it needs (labels, statistics, device, model, the split in space) happens
here, once, before the output folder exists; :func:`fhcnn.engine.run.run` then trains and
predicts from the plan alone. The applications (``segment``, ``change``, ``volume``) differ
only in how they read their inputs and write their outputs.

Reading is lazy: the volume is a :class:`~fhcnn.data.lazy.LazyVolume` (an in-memory array is
the same path), its normalization statistics are streamed and the labels are scanned once;
nothing here holds a whole volume; with ``data.scale`` every plane is resized as it is read
(:class:`~fhcnn.engine.sizes.ResizedPlanes`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..data.lazy import (
    ArrayLike,
    LabelScan,
    LazyVolume,
    Standardized,
    StreamStats,
    scan_labels,
    standardize_channels,
)
from ..errors import InputError
from ..options import IGNORE
from .config import SegmentConfig
from .models import size_multiple_of
from .sizes import (
    Geometry,
    Tiling,
    chunk_shape,
    distinct_windows,
    prediction_tilings,
    prediction_window_of,
    training_window,
)

__all__ = ["DenseInputs", "RunPlan", "prepare", "check_resources", "CHUNK"]

#: Side of the cubic chunks predictions are written in (clipped to the volume).
CHUNK = 64


@dataclass
class DenseInputs:
    """What an application hands the engine.

    Attributes:
        volume: ``(C, D, H, W)`` raw values (normalization is the engine's), a
            :class:`~fhcnn.data.lazy.LazyVolume` or an in-memory array.
        labels: ``(D, H, W)`` integers, ``IGNORE`` = unlabelled; one ``(H, W)`` map with
            ``data.reduce_depth``. An array-like (read by slab) or an array.
        num_classes: ``K`` (default: the largest label + 1, at least 2).
        eval_labels: optional truth shaped like ``labels`` (``IGNORE`` = not scored), scored
            during training (``data.eval_every``) and at the end; never trained on.
        stats: the volume's per-channel statistics if already streamed (else they are).
        label_scan: the labels' :func:`~fhcnn.data.lazy.scan_labels` if already made (a checked
            label volume's), so the labels are read once.
    """

    volume: Any
    labels: Any
    num_classes: int | None = None
    eval_labels: Any = None
    stats: list[StreamStats] | None = None
    label_scan: LabelScan | None = None


@dataclass
class RunPlan:
    """Everything a run needs, derived once (see :func:`prepare`).

    Attributes:
        config: the resolved config the run trains with.
        geometry: input size, the network's ``(h, w)`` (``data.scale``) and size multiple.
        volume: the ``(C, D, h, w)`` volume the network sees (coordinate channels appended
            with ``data.coords``).
        labels, eval_labels: at the network's resolution.
        num_classes: ``K``.
        scan: the labels' class counts, labelled slices and sampled positions.
        stats: the statistics of each data channel (the model's input normalization).
        train_window, predict_window: ``(d, h, w)`` (``0`` = whole axis in the latter).
        tilings: the prediction's tilings (:func:`~fhcnn.engine.sizes.prediction_tilings`).
        chunks: the chunk shape predictions are finished in.
        standardized: per data channel, the ``(offset, scale)`` it is read through
            (:class:`~fhcnn.data.lazy.Standardized`: a channel whose contrast a float32 read
            would lose), or ``None``.
    """

    config: SegmentConfig
    geometry: Geometry
    volume: LazyVolume
    labels: ArrayLike
    eval_labels: ArrayLike | None
    num_classes: int
    scan: LabelScan
    stats: list[StreamStats]
    train_window: tuple[int, int, int]
    predict_window: tuple[int, int, int]
    tilings: list[Tiling]
    chunks: tuple[int, int, int]
    notes: list[str] = field(default_factory=list)
    standardized: list[tuple[float, float] | None] = field(default_factory=list)

    @property
    def reduce_depth(self) -> bool:
        return bool(self.config.data.reduce_depth)

    @property
    def present(self) -> list[int]:
        """Classes with at least one labelled voxel."""
        return [c for c in range(self.num_classes) if self.scan.counts[c] > 0]

    @property
    def class_counts(self) -> np.ndarray:
        """``(K,)`` labelled voxels per class."""
        return self.scan.counts[:self.num_classes].copy()

    @property
    def distinct_windows(self) -> list[tuple[int, int, int]]:
        """The distinct window shapes of the prediction's tilings."""
        return distinct_windows(self.tilings)

    @property
    def prediction_windows(self) -> int:
        """Network calls (windows) of one prediction, every tiling together."""
        return sum(t.count for t in self.tilings)

    def read_from(self, channels: Sequence[ArrayLike]) -> None:
        """Read the volume from other arrays holding the same raw ``(D, H, W)`` channels (e.g. a
        chunked copy in the run folder); resized on read as before with ``data.scale``."""
        g = self.geometry
        if any(tuple(c.shape) != (g.depth, *g.size) for c in channels) or len(channels) != self.volume.data_channels:
            raise ValueError(f"read_from: {len(channels)} channel(s) of shapes {[tuple(c.shape) for c in channels]} "
                             f"cannot replace {self.volume.data_channels} of {(g.depth, *g.size)}")
        channels = self.as_read(channels)
        if g.scaled != g.size:
            channels = [g.lazy_planes(c) for c in channels]
        self.volume = LazyVolume(channels, coords=self.volume.coords, names=self.volume.names)

    def as_read(self, channels: Sequence[ArrayLike]) -> list[Any]:
        """The raw ``(D, H, W)`` data channels ``channels`` (as stored, or a copy of them) as this
        plan reads them: each one ``prepare`` standardized (:attr:`standardized`) through
        :class:`~fhcnn.data.lazy.Standardized`, the others unchanged; at the stored resolution."""
        return [c if how is None else Standardized(c, *how)
                for c, how in zip(channels, self.standardized or [None] * len(channels))]

    def describe(self) -> str:
        """One log line: scaling, padding, windows and tilings."""
        t = self.tilings[0]
        return (self.geometry.describe() + f"; training windows {self.train_window}; prediction: "
                f"{len(self.tilings)} tiling(s) of {t.count} window(s) of {t.window}")


def _as_volume(volume: Any, coords: bool) -> LazyVolume:
    if isinstance(volume, LazyVolume):
        if coords and not volume.coords:
            return LazyVolume(volume.channels, coords=True, names=volume.names)
        return volume
    return LazyVolume.from_array(volume, coords=coords)


def _labels_array(labels: Any) -> Any:
    if hasattr(labels, "detach"):
        return labels.detach().cpu().numpy()
    return labels if hasattr(labels, "shape") and hasattr(labels, "dtype") else np.asarray(labels)


def prepare(inputs: DenseInputs, config: SegmentConfig) -> RunPlan:
    """Derive and check a whole run before anything is written.

    Raises:
        InputError: labels of the wrong shape, values outside ``[0, K)`` and ``IGNORE``, fewer
            than two labelled classes, a volume with NaN or infinite values, a config whose
            model cannot be built for these inputs, a split in space that cannot work.
    """
    cfg = copy.deepcopy(config)
    d = cfg.data
    reduce = bool(d.reduce_depth)
    raw = _as_volume(inputs.volume, coords=False)
    stats = inputs.stats if inputs.stats is not None else raw.channel_stats()
    # a channel whose contrast a float32 read would lose (float64 1e9 + noise, int64 near 2**40,
    # magnitudes past 1e30) is read standardized in float64
    channels, stats = standardize_channels(raw.channels, stats, raw.names)
    standardized = [(c.offset, c.scale) if isinstance(c, Standardized) and c is not r else None
                    for c, r in zip(channels, raw.channels)]
    if any(standardized):
        raw = LazyVolume(channels, names=raw.names, slab_axes=raw.slab_axes)
    multiple = size_multiple_of(cfg.model)
    geom = Geometry.of(raw.spatial, d.scale, multiple)
    labels = full_labels = _labels_array(inputs.labels)
    want = geom.size if reduce else (geom.depth, *geom.size)
    if tuple(labels.shape) != tuple(want):
        hint = (" (2D (H, W) labels need data.reduce_depth=true)"
                if not reduce and tuple(labels.shape) == geom.size else "")
        raise InputError(f"labels shape {tuple(labels.shape)} must equal the volume's "
                         f"{'(H, W)' if reduce else '(D, H, W)'} = {tuple(want)}{hint}")
    truth = _labels_array(inputs.eval_labels) if inputs.eval_labels is not None else None
    if truth is not None and tuple(truth.shape) != tuple(labels.shape):
        raise InputError(f"eval_labels shape {tuple(truth.shape)} must equal labels shape {tuple(labels.shape)}")
    if geom.scaled != geom.size:  # every plane resized on read, never the whole volume at once
        volume = LazyVolume([geom.lazy_planes(c) for c in raw.channels], coords=d.coords, names=raw.names)
        labels, truth = (None if a is None else geom.labels(np.asarray(a[...]), inputs.num_classes) if reduce
                         else geom.lazy_planes(a, labels=True, num_classes=inputs.num_classes)
                         for a in (labels, truth))
    else:
        volume = _as_volume(raw, coords=d.coords)
    scan = inputs.label_scan if inputs.label_scan is not None and labels is inputs.labels \
        else scan_labels(labels, IGNORE, limit=inputs.num_classes or 256)
    top = max(scan.classes(), default=-1)
    k = inputs.num_classes or max(2, top + 1)
    present = [c for c in range(k) if scan.counts[c]]
    if len(present) < 2:
        if geom.scaled != geom.size:  # did the resize leave too few? (then say so, not just "one class")
            full = inputs.label_scan if inputs.label_scan is not None else \
                scan_labels(full_labels, IGNORE, limit=inputs.num_classes or 256)
            if len(full.classes()) >= 2:
                (h0, w0), (h, w) = geom.size, geom.scaled
                raise InputError(f"data.scale={d.scale:g} (--scale) resizes the {h0}x{w0} (H x W) input to "
                                 f"{h}x{w}, where the labels keep "
                                 + (f"only class {present[0]}" if present else "no labelled pixel")
                                 + f" (at full size they hold classes {full.classes()}); use a larger scale")
        raise InputError(f"the labels must contain at least two classes; found only {present}")
    bad_c = [f"{name} ({s.nonfinite:,} voxels, one at {s.first_nonfinite})"
             for name, s in zip(raw.names, stats) if not s.finite]
    if bad_c:
        raise InputError(f"the volume holds NaN or infinite values in {', '.join(bad_c)}: fill or mask them first")
    win = training_window((d.window_depth, d.window_height, d.window_width), volume.spatial, multiple,
                          whole_depth=reduce)
    pwin = prediction_window_of((d.predict_depth, d.predict_height, d.predict_width), win, reduce)
    tilings = prediction_tilings(volume.spatial, pwin, multiple, d.predict_shifts, not reduce, d.prediction_mirror,
                                 d.predict_overlap)
    chunks = chunk_shape(volume.spatial, CHUNK, (reduce, geom.scaled != geom.size, geom.scaled != geom.size))
    plan = RunPlan(cfg, geom, volume, labels, truth, k, scan, stats, win, pwin, tilings, chunks,
                   standardized=standardized)
    _check_setup(plan)
    return plan


def check_resources(cfg: Any, in_channels: int, num_classes: int, train_window: Sequence[int],
                    predict_windows: Sequence[Sequence[int]]) -> None:
    """Refuse, before the output folder exists, a run that cannot fit the machine (see
    :mod:`fhcnn.resources`): ``train.threads`` above the CPUs, ``train.steps`` beyond a year,
    and a training batch or prediction batch whose least memory exceeds what is available.

    The least memory of a batch counts, in float32 per voxel of its windows: the input channels,
    the network's state after the opening (``width / 8**pre_levels`` values; ``unet_base`` for the
    U-Net) twice with its gradient twice (a reversible step holds two states), the conv head's
    channels (``model.conv_head``) with their gradient, and the logits with their gradient;
    prediction counts the input, two states, the conv head and the probabilities.
    """
    from ..resources import check_memory, check_steps, check_threads
    from ..training.device import resolve_device

    check_threads(cfg.train.threads)
    check_steps(cfg.train.steps)
    d = cfg.data
    state = cfg.model.width / 8 ** cfg.model.pre_levels if cfg.model.arch == "hyperbolic" \
        else float(cfg.model.unet_base)
    head = cfg.model.conv_head if cfg.model.arch == "hyperbolic" else 0
    device = resolve_device(cfg.train.device)
    win = train_window
    per_voxel = in_channels + 4 * state + 2 * head + 2 * num_classes
    check_memory(4 * d.batch_size * math.prod(win) * per_voxel,
                 f"a training batch of {d.batch_size} window(s) of {win[0]}x{win[1]}x{win[2]} voxels "
                 f"(data.batch_size, data.window_depth/height/width)",
                 f"{per_voxel:g} float32 values per voxel: input, network state and logits with "
                 f"gradients", device)
    per_voxel = in_channels + 2 * state + head + num_classes
    for pred in predict_windows:
        check_memory(4 * d.predict_batch * math.prod(pred) * per_voxel,
                     f"a prediction batch of {d.predict_batch} window(s) of {pred[0]}x{pred[1]}x{pred[2]} "
                     f"voxels (data.predict_batch, data.predict_depth/height/width)",
                     f"{per_voxel:g} float32 values per voxel: input, network state and probabilities",
                     device)


def _check_setup(plan: RunPlan) -> None:
    """The device, the machine's resources, the model built for these inputs (on the meta
    device: every shape check, no memory), and the split in space."""
    from ..training.device import resolve_device
    from .models import build_model, check_spectral_head
    from .parallel import check_space_split

    cfg = plan.config
    resolve_device(cfg.train.device)
    check_resources(cfg, plan.volume.shape[0], plan.num_classes, plan.train_window, plan.distinct_windows)
    try:
        check_spectral_head(cfg, plan.reduce_depth)
        with torch.device("meta"):
            build_model(cfg.model, plan.volume.shape[0], plan.num_classes,
                        depth=plan.train_window[0] if plan.reduce_depth else None)
    except InputError:
        raise
    except (ValueError, TypeError, RuntimeError) as e:
        raise InputError(f"the model of the config cannot be built: {e}") from None
    check_space_split(cfg, plan.volume.spatial, plan.reduce_depth)


def class_positions(plan: RunPlan) -> Sequence[np.ndarray]:
    """Labelled positions of each present class (for window sampling)."""
    return [plan.scan.positions[c] for c in plan.present]
