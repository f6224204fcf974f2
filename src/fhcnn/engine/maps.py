"""One 2D label map of a 3D volume: a single-date hyperspectral cube segmented pixel by pixel.

The volume is ``(C, D, H, W)`` (e.g. ``C = 1`` date, ``D`` = spectral bands) and the labels
one ``(H, W)`` map with any number of classes. This is the engine's ``data.reduce_depth`` path
(the loss on the depth-mean of the logits, windows spanning the whole depth, the prediction the
softmax of that mean), with the sizes of :class:`~fhcnn.engine.sizes.Geometry` (``data.scale``,
padding, resizing back), the same path ``fhcnn change`` takes with ``change.target=mean``::

    fit = fit_map(cube_volume(cube), train2d, cfg)     # cube (H, W, B), train2d (H, W) uint8
    fit.pred                                           # (H, W) uint8 argmax of fit.prob
    fit.prob                                           # (K, H, W) float32 class probabilities
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data.lazy import LazyVolume
from ..errors import InputError
from .config import SegmentConfig
from .plan import DenseInputs, RunPlan, prepare
from .run import run
from .sizes import Geometry
from .store import DepthMeanSink
from .train import SegmentationResult

__all__ = ["MapFit", "cube_volume", "fit_map", "map_config"]


def cube_volume(cube: np.ndarray, normalize: bool = True, bands: int = 0, band_index: bool = False
                ) -> np.ndarray:
    """``(1, B, H, W)`` float32 volume of one ``(H, W, B)`` cube (the bands are the depth), each
    band standardized over the scene if ``normalize`` (a constant band becomes 0).

    ``bands > 0`` first averages runs of adjacent bands down to ``bands`` bands (band ``i`` of
    the result is the mean of input bands ``floor(i B / bands)`` to ``floor((i + 1) B / bands) - 1``):
    a shallower volume, cheaper to train on, for smooth spectra. ``band_index`` appends a second
    channel holding each band's position, ``-1`` to ``1`` (``(2, B, H, W)``): the network's
    convolutions along the bands are the same at every band, and this tells them where they are.

    Example:
        >>> cube_volume(np.random.rand(4, 5, 12), bands=3).shape
        (1, 3, 4, 5)
    """
    x = np.asarray(cube, np.float32)
    if x.ndim != 3:
        raise ValueError(f"cube must have shape (H, W, B), got {x.shape}")
    if 0 < bands < x.shape[2]:
        edges = (np.arange(bands + 1) * x.shape[2]) // bands
        x = np.stack([x[..., a:b].mean(-1) for a, b in zip(edges[:-1], edges[1:])], -1)
    if normalize:
        mu = x.mean(axis=(0, 1), keepdims=True)
        sd = x.std(axis=(0, 1), keepdims=True)
        x = (x - mu) / np.where(sd > 1e-12, sd, 1.0)
    vol = x.transpose(2, 0, 1)[None]
    if band_index:
        pos = np.linspace(-1, 1, vol.shape[1], dtype=np.float32)[None, :, None, None]
        vol = np.concatenate([vol, np.broadcast_to(pos, vol.shape)], 0)
    return np.ascontiguousarray(vol)


@dataclass
class MapFit:
    """What :func:`fit_map` returns: ``pred`` ``(H, W)`` uint8, ``prob`` ``(K, H, W)`` float32
    (at the input's size), the engine's ``result``, the ``plan`` and the times."""

    pred: np.ndarray
    prob: np.ndarray
    result: SegmentationResult
    plan: RunPlan
    train_time_s: float
    predict_time_s: float

    @property
    def geometry(self) -> Geometry:
        return self.plan.geometry


def map_config(config: SegmentConfig) -> SegmentConfig:
    """``config`` with ``data.reduce_depth`` set (the labels are one 2D map of the depth mean)."""
    cfg = copy.deepcopy(config)
    cfg.data.reduce_depth = True
    return cfg


def fit_map(volume: Any, labels: Any, config: SegmentConfig, *, num_classes: int | None = None,
            quiet: bool = True, plan: RunPlan | None = None, out_dir: Path | None = None, resume: bool = False,
            eval_fn: Callable[[SegmentationResult], dict[str, float]] | None = None) -> MapFit:
    """Train on ``volume`` ``(C, D, H, W)`` from the 2D ``labels`` ``(H, W)`` (uint8, ``IGNORE`` =
    unlabelled) and predict every pixel's class.

    ``config.data.reduce_depth`` is set (the labels are one map for the depth-mean of the
    logits); ``config.data.scale`` resizes ``(H, W)`` for the network and the probabilities
    are resized back. ``num_classes``: default the largest label + 1. ``plan``: the run, if
    already prepared (:func:`~fhcnn.engine.plan.prepare` of :func:`map_config`); ``out_dir``,
    ``resume``, ``eval_fn``: as :func:`~fhcnn.engine.train.train`.

    Raises:
        InputError: bad shapes or labels (see :func:`~fhcnn.engine.plan.prepare`).
    """
    if plan is None:
        vol = volume if isinstance(volume, LazyVolume) else np.asarray(volume)
        if len(vol.shape) != 4:
            raise InputError(f"volume must have shape (C, D, H, W), got {tuple(vol.shape)}")
        plan = prepare(DenseInputs(vol, labels, num_classes), map_config(config))
    geom = plan.geometry
    prob = np.zeros((plan.num_classes, *geom.size), np.float32)
    sink = DepthMeanSink(prob, geom.size, geom.scaled, plan.volume.spatial[0])
    result, seconds = run(plan, out_dir, lambda r: [sink], eval_fn=eval_fn, quiet=quiet, resume=resume)
    return MapFit(prob.argmax(0).astype(np.uint8), prob, result, plan, result.train_time_s, seconds)
