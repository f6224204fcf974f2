"""Train a dense 3D network on ONE volume from sparse labels, and predict the whole volume.

The volume is ``(C, D, H, W)`` (video: RGB x time x height x width; hyperspectral: dates x
bands x height x width), the labels ``(D, H, W)`` with ``IGNORE = 255`` for unlabelled voxels.
What makes a strided (wavelet or pooling) network work from a few labelled slices:

* training windows are cut at *any* position around a labelled voxel (:mod:`.sampling`);
* prediction averages class probabilities over several shifted tilings and a flip
  (:mod:`.inference`);
* the loss is class-balanced (:mod:`.losses`), else it sits at "all background".

With ``data.reduce_depth`` the labels are a 2D ``(H, W)`` map instead (e.g. a change map of a
hyperspectral scene whose bands are the depth): the loss is taken on the depth-mean of the
logits, training windows span the whole depth axis, and the model (:class:`DepthMean`) returns
the depth-mean logits broadcast over depth, so :func:`predict_volume` works unchanged.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from .. import log as _log
from ..memory import SavedTensorCounter
from ..options import IGNORE
from ..training import Trainer
from ..training.device import CpuThreads
from .config import SegmentConfig
from .inference import labels_of, predict_volume
from .losses import SegmentationLoss, UnlabelledTerm, class_weights
from .metrics import segmentation_metrics
from .models import DepthMean, VolumeSegmenter, build_model, check_spectral_head, size_multiple_of
from .parallel import SpaceRun
from .sampling import WindowSampler
from .sizes import prediction_window_of, training_window

__all__ = ["SegmentationResult", "train_segmentation", "prepare_inputs", "activation_bytes",
           "num_classes_of"]


def num_classes_of(labels: np.ndarray | Tensor) -> int:
    """Classes in a label volume: largest label other than ``IGNORE`` plus one (at least 2)."""
    lab = torch.as_tensor(np.asarray(labels))
    vals = lab[lab != IGNORE]
    return max(2, int(vals.max()) + 1) if vals.numel() else 2


def prepare_inputs(volume: np.ndarray | Tensor, coords: bool = False) -> Tensor:
    """``(C, D, H, W)`` float32 tensor, with two normalized (h, w) coordinate channels appended
    if ``coords``."""
    v = torch.as_tensor(np.asarray(volume), dtype=torch.float32)
    if v.dim() != 4:
        raise ValueError(f"volume must have shape (C, D, H, W), got {tuple(v.shape)}")
    if coords:
        _, d, h, w = v.shape
        yy = torch.linspace(-1, 1, h).view(1, 1, h, 1).expand(1, d, h, w)
        xx = torch.linspace(-1, 1, w).view(1, 1, 1, w).expand(1, d, h, w)
        v = torch.cat([v, yy, xx], 0)
    return v


def activation_bytes(model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
                     ) -> int:
    """Bytes autograd keeps for the backward pass of one training step on ``(x, y)``, measured
    on a copy of ``model``: the model itself (its batch-norm statistics, its parameters) is
    not touched."""
    probe = copy.deepcopy(model).train()
    with SavedTensorCounter() as counter:
        loss = loss_fn(probe(x), y)
    del loss, probe
    return counter.bytes


@dataclass
class SegmentationResult:
    """What :func:`train_segmentation` returns.

    Attributes:
        model: the trained :class:`VolumeSegmenter` (on ``device``, eval mode); with
            ``data.reduce_depth`` a :class:`DepthMean` around it (depth-mean logits broadcast
            over depth).
        config: the resolved :class:`SegmentConfig`.
        num_classes: ``K``.
        history: per-step dicts ``{"step", "loss", "time_s"}`` (training time, evaluation
            excluded) and, at evaluations, ``"miou"`` etc.
        train_time_s: wall time of training (evaluations excluded).
        window: the training window ``(d, h, w)`` actually used.
        activation_bytes: bytes saved for backward by one training step (one window batch),
            counted during the first training step (no extra forward pass).
        device: where it trained.
    """

    model: VolumeSegmenter | DepthMean
    config: SegmentConfig
    num_classes: int
    history: list[dict[str, Any]] = field(default_factory=list)
    train_time_s: float = 0.0
    window: tuple[int, int, int] = (0, 0, 0)
    activation_bytes: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def predict_window(self) -> tuple[int, int, int]:
        """The prediction window ``(d, h, w)``: the config's ``predict_*`` with ``-1`` replaced by
        the training window (``0`` = whole axis)."""
        d = self.config.data
        return prediction_window_of((d.predict_depth, d.predict_height, d.predict_width), self.window,
                                    d.reduce_depth)

    def predict_proba(self, volume: np.ndarray | Tensor, shifts: int | None = None) -> Tensor:
        """``(K, D, H, W)`` probabilities of a ``(C, D, H, W)`` volume (same channels as trained).

        With ``data.reduce_depth`` every depth slice holds the softmax of the depth-mean logits
        (identical slices unless ``predict_depth`` cuts the depth axis into several windows);
        ``.mean(1)`` gives the ``(K, H, W)`` map :meth:`predict` takes its argmax of."""
        return self.predict_prepared(prepare_inputs(volume, self.config.data.coords), shifts)

    def predict_prepared(self, v: Tensor, shifts: int | None = None) -> Tensor:
        """:meth:`predict_proba` of an input already through :func:`prepare_inputs`, with the
        config's shifts, flip, window and batch of windows; on a CPU with the config's
        ``train.threads`` (see :class:`~fhcnn.training.device.CpuThreads`)."""
        d = self.config.data
        threads = self.config.train.threads if self.device.type == "cpu" else None
        with CpuThreads(threads, log=_log.info, what=" (prediction)") as t:
            return predict_volume(self.model, v, shifts=d.predict_shifts if shifts is None else shifts,
                                  flip=d.predict_flip, window=self.predict_window,
                                  shift_depth=not d.reduce_depth, batch=d.predict_batch,
                                  each_batch=t.check)

    def predict(self, volume: np.ndarray | Tensor) -> np.ndarray:
        """``(D, H, W)`` uint8 label volume; with ``data.reduce_depth`` the ``(H, W)`` label map
        (argmax of the depth-mean probability), shaped like the labels it was trained on."""
        return labels_of(self.predict_proba(volume), self.config.data.reduce_depth).numpy().astype(np.uint8)


def _check_labels(vol: Tensor, lab: Tensor, k: int, reduce: bool) -> list[int]:
    """Validate labels against the volume; returns the classes present."""
    if reduce and lab.shape != vol.shape[2:]:
        raise ValueError(f"labels shape {tuple(lab.shape)} must equal the volume's (H, W) = "
                         f"{tuple(vol.shape[2:])}: with data.reduce_depth the labels are one 2D "
                         f"map for the depth-mean of the logits")
    if not reduce and lab.shape != vol.shape[1:]:
        hint = (" (2D (H, W) labels need data.reduce_depth=true)"
                if lab.shape == vol.shape[2:] else "")
        raise ValueError(f"labels shape {tuple(lab.shape)} must equal the volume's (D, H, W) = "
                         f"{tuple(vol.shape[1:])}{hint}")
    bad = (lab != IGNORE) & ((lab < 0) | (lab >= k))
    if bad.any():
        raise ValueError(f"labels must lie in [0, {k}) or be {IGNORE}; found {lab[bad].unique()[:5].tolist()}")
    present = [c for c in range(k) if (lab == c).any()]
    if len(present) < 2:
        raise ValueError(f"the labels must contain at least two classes; found only {present}")
    return present


class _StepLoss:
    """The trainer's ``loss_fn``: the loss of one batch, a history record per step, and the
    activation memory counted during the first step (no extra forward pass)."""

    def __init__(self, loss: SegmentationLoss, history: list[dict[str, Any]], clock: "_Clock",
                 unlabelled: UnlabelledTerm | None = None) -> None:
        self.loss, self.history, self.clock, self.unlabelled = loss, history, clock, unlabelled
        self.step = 0
        self.activation_bytes: int | None = None

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        x, y = batch
        if self.activation_bytes is None:
            with SavedTensorCounter() as counter:
                logits = model(x)
                loss = self.loss(logits, y)
            self.activation_bytes = counter.bytes
        else:
            logits = model(x)
            loss = self.loss(logits, y)
        extra: dict[str, float] = {}
        if self.unlabelled is not None:
            loss = loss + self.unlabelled(model, x, logits, y, self.step)
            extra = self.unlabelled.last
        self.step += 1
        value = float(loss.detach())
        self.history.append({"step": self.step, "loss": value, "time_s": round(self.clock.now(), 3), **extra})
        return loss, {"loss": value}


class _Clock:
    """Training wall time with evaluations excluded."""

    def __init__(self) -> None:
        self.start, self.excluded = time.perf_counter(), 0.0

    def now(self) -> float:
        return time.perf_counter() - self.start - self.excluded


class _Evaluator:
    """Scores ``eval_labels`` (and/or calls ``eval_fn``) on the current model into the last
    history record; its time is excluded from the training clock."""

    def __init__(self, result: SegmentationResult, vol: Tensor, truth: Tensor | None,
                 eval_fn: Callable[[SegmentationResult], dict[str, float]] | None, clock: _Clock) -> None:
        self.result, self.vol, self.truth, self.eval_fn, self.clock = result, vol, truth, eval_fn, clock

    @property
    def active(self) -> bool:
        return self.truth is not None or self.eval_fn is not None

    def __call__(self, model: nn.Module | None = None) -> dict[str, float]:
        t0 = time.perf_counter()
        out: dict[str, float] = {}
        r = self.result
        if self.truth is not None:
            pred = labels_of(r.predict_prepared(self.vol), r.config.data.reduce_depth)
            met = segmentation_metrics(pred.numpy(), self.truth.numpy(), r.num_classes, per_frame=False)
            out = {"miou": met["miou"], **{f"iou_{c}": v for c, v in enumerate(met["iou"]) if v is not None}}
        if self.eval_fn is not None:
            out.update(self.eval_fn(r))
        if r.history:
            r.history[-1].update(out)
        self.clock.excluded += time.perf_counter() - t0
        return out


def train_segmentation(
    volume: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    config: SegmentConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    num_classes: int | None = None,
    eval_labels: np.ndarray | Tensor | None = None,
    eval_fn: Callable[[SegmentationResult], dict[str, float]] | None = None,
    quiet: bool = False,
    resume: bool = False,
) -> SegmentationResult:
    """Train ``config.model`` on one volume from sparse labels.

    Args:
        volume: ``(C, D, H, W)`` float (raw values: normalization is learned from the volume
            and stored in the model).
        labels: ``(D, H, W)`` integer labels in ``[0, K)``, ``255`` = unlabelled; at least two
            classes must be labelled somewhere. With ``config.data.reduce_depth``: an ``(H, W)``
            map, matched by the depth-mean of the logits.
        config: :class:`SegmentConfig` (default: the ``video`` defaults).
        out_dir: where the trainer writes ``metrics.jsonl`` and ``checkpoints/`` (None: nothing
            is written).
        num_classes: ``K`` (default: largest label + 1).
        eval_labels: optional truth shaped like ``labels`` (255 = not scored) scored every
            ``config.data.eval_every`` steps and at the end into ``history`` (never trained on);
            with ``reduce_depth`` the argmax of the depth-mean probability is scored.
        eval_fn: alternative custom evaluation ``result -> {"name": value}`` called likewise.
        quiet: no progress output.
        resume: continue the run in ``out_dir`` from its latest checkpoint.

    Returns:
        :class:`SegmentationResult` (``.model``, ``.predict(volume)``, ``.history`` ...).

    Raises:
        ValueError: bad shapes, labels outside ``[0, K)``, fewer than two labelled classes.
    """
    cfg = copy.deepcopy(config) if config is not None else SegmentConfig()
    d = cfg.data
    reduce = bool(d.reduce_depth)
    vol = prepare_inputs(volume, d.coords)
    lab = torch.as_tensor(np.asarray(labels)).long()
    k = num_classes or num_classes_of(lab)
    present = _check_labels(vol, lab, k, reduce)
    truth = torch.as_tensor(np.asarray(eval_labels)).long() if eval_labels is not None else None
    if truth is not None and truth.shape != lab.shape:
        raise ValueError(f"eval_labels shape {tuple(truth.shape)} must equal labels shape {tuple(lab.shape)}")

    torch.manual_seed(cfg.train.seed)
    win = training_window((d.window_depth, d.window_height, d.window_width), vol.shape[1:],
                          size_multiple_of(cfg.model), whole_depth=reduce)
    check_spectral_head(cfg, reduce)
    seg = build_model(cfg.model, vol.shape[0], k, depth=win[0] if reduce else None)
    flat = vol.flatten(1)
    seg.set_normalization(flat.mean(1), flat.std(1))
    model: VolumeSegmenter | DepthMean = DepthMean(seg) if reduce else seg
    # #17: parallel.space > 1 splits `seg` over the processes in space (None: no split)
    space = SpaceRun.start(cfg, seg, tuple(vol.shape[1:]), reduce)
    data_channels = vol.shape[0] - (2 if d.coords else 0)
    sampler = WindowSampler(vol, lab, win, d, seg.std[:data_channels], present)
    history: list[dict[str, Any]] = []
    clock = _Clock()
    weight = class_weights(lab, k, d.balance)
    unlabelled = None
    if d.unlabelled != "none" and d.unlabelled_weight > 0:  # refused with a split (check_space_split)
        n = cfg.train.steps
        unlabelled = UnlabelledTerm(d.unlabelled, d.unlabelled_weight, weight, threshold=d.pseudo_threshold,
                                    ema=d.teacher_ema, start=round(d.unlabelled_start * n),
                                    full=round(d.unlabelled_full * n), reduce_depth=reduce)
    seg_loss = SegmentationLoss(weight, d.dice, reduce)
    step_loss = _StepLoss(space.loss(seg_loss) if space else seg_loss, history, clock, unlabelled)
    result = SegmentationResult(model=model, config=cfg, num_classes=k, history=history, window=win)
    evaluate = _Evaluator(result, vol, truth, eval_fn, clock)
    if evaluate.active and d.eval_every > 0:
        cfg.train.val_every = d.eval_every

    trainer = Trainer(model, cfg.train, Path(out_dir) if out_dir is not None else None,
                      batch_fn=sampler, loss_fn=step_loss,
                      val_fn=evaluate if evaluate.active and d.eval_every > 0 else None, quiet=quiet,
                      **(space.trainer_options() if space else {}))
    clock.start = time.perf_counter()
    trainer.fit(resume=resume)
    result.device = trainer.device
    result.train_time_s = clock.now()
    result.model = model.to(result.device)
    if step_loss.activation_bytes is None:  # nothing left to train (a finished run resumed)
        x0, y0 = sampler(0, torch.Generator().manual_seed(0))
        if space:  # #17: this process's slab
            x0, y0 = space.shard((x0, y0))
        step_loss.activation_bytes = activation_bytes(model, x0.to(result.device), y0.to(result.device),
                                                      step_loss.loss)
    result.activation_bytes = step_loss.activation_bytes
    if evaluate.active and (not history or "miou" not in history[-1] or truth is None):
        evaluate()
    model.eval()
    return result
