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

import contextlib
import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .. import log as _log
from ..data.lazy import LazyVolume
from ..memory import SavedTensorCounter
from ..options import IGNORE
from ..rundir import check_inputs_unchanged
from ..training import Trainer
from ..training.device import CpuThreads
from ..training.distributed import shard_batch
from .config import SegmentConfig
from .inference import labels_of, predict_into
from .losses import SegmentationLoss, UnlabelledTerm, weights_of_counts
from .metrics import scores_of_confusion
from .models import DepthMean, VolumeSegmenter, build_model
from .parallel import SpaceRun, data_parallel_loss, world_share
from .plan import CHUNK, DenseInputs, RunPlan, class_positions, prepare
from .sampling import WindowSampler
from .sizes import Tiling, chunk_shape, prediction_tilings
from .store import CACHE_BYTES, BlendStore, ConfusionSink, Sink, TensorSink, spill_folder

__all__ = ["SegmentationResult", "train", "train_segmentation", "activation_bytes", "num_classes_of"]


def num_classes_of(labels: np.ndarray | Tensor) -> int:
    """Classes in a label volume: largest label other than ``IGNORE`` plus one (at least 2)."""
    lab = torch.as_tensor(np.asarray(labels))
    vals = lab[lab != IGNORE]
    return max(2, int(vals.max()) + 1) if vals.numel() else 2


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
    """What :func:`train` returns.

    Attributes:
        model: the trained :class:`VolumeSegmenter` (on ``device``, eval mode); with
            ``data.reduce_depth`` a :class:`DepthMean` around it (depth-mean logits broadcast
            over depth).
        config: the resolved :class:`SegmentConfig`.
        num_classes: ``K``.
        history: per-step dicts ``{"step", "loss", "time_s"}`` (training time, evaluation
            excluded) and, at evaluations, ``"miou"`` etc.
        train_time_s: wall time of training of the whole run (evaluations excluded; a resumed
            run's includes the time before it was stopped, as its checkpoint counted it).
        window: the training window ``(d, h, w)`` actually used.
        activation_bytes: bytes saved for backward by one training step (one window batch),
            counted during the first training step (no extra forward pass).
        device: where it trained.
        plan: the :class:`~fhcnn.engine.plan.RunPlan` it trained from.
        space: the split in space (``parallel.space > 1``), else ``None``.
    """

    model: VolumeSegmenter | DepthMean
    config: SegmentConfig
    num_classes: int
    history: list[dict[str, Any]] = field(default_factory=list)
    train_time_s: float = 0.0
    window: tuple[int, int, int] = (0, 0, 0)
    activation_bytes: int = 0
    device: torch.device = torch.device("cpu")
    plan: RunPlan | None = None
    space: SpaceRun | None = None

    @property
    def predict_window(self) -> tuple[int, int, int]:
        """The prediction window ``(d, h, w)``: the config's ``predict_*`` with ``-1`` replaced by
        the training window (``0`` = whole axis)."""
        assert self.plan is not None
        return self.plan.predict_window

    def tilings(self, size: tuple[int, int, int], shifts: int | None = None) -> list[Tiling]:
        """The prediction tilings of a volume of ``size`` ``(D, h, w)`` (the plan's for its own
        volume; ``shifts`` overrides ``data.predict_shifts``)."""
        plan, d = self.plan, self.config.data
        assert plan is not None
        if shifts is None and size == plan.volume.spatial:
            return plan.tilings
        return prediction_tilings(size, plan.predict_window, plan.geometry.multiple,
                                  d.predict_shifts if shifts is None else shifts, not d.reduce_depth,
                                  d.prediction_mirror, d.predict_overlap)

    def predict_into(self, volume: LazyVolume, sinks: Sequence[Sink], *, shifts: int | None = None,
                     work: Path | None = None, cache_bytes: int = CACHE_BYTES,
                     owned: tuple[Sequence[int], Sequence[int]] | None = None) -> BlendStore:
        """Predict ``volume`` (at the network's resolution, channels as trained) chunk by chunk
        into ``sinks`` (see :mod:`fhcnn.engine.store`), with the config's shifts, flip, window
        and batch of windows, on a CPU with the config's ``train.threads``.

        ``owned``: ``(origin, shape)`` of the region this process accumulates and finishes (a
        split run: every process runs every window, each finishes its own region); default
        the whole volume. Chunks spill to ``work`` beyond ``cache_bytes``."""
        plan, d = self.plan, self.config.data
        assert plan is not None
        size = volume.spatial
        tilings = self.tilings(size, shifts)
        chunks = plan.chunks if size == plan.volume.spatial else \
            chunk_shape(size, CHUNK, (d.reduce_depth, False, False))
        origin, shape = owned if owned is not None else ((0, 0, 0), size)

        def make(k: int) -> BlendStore:
            return BlendStore(shape, k, chunks, tilings, size, sinks, origin=origin, work=work,
                              cache_bytes=cache_bytes)

        threads = self.config.train.threads if self.device.type == "cpu" else None
        with CpuThreads(threads, log=_log.info, what=" (prediction)") as t, \
                (self.space.predicting() if self.space is not None else contextlib.nullcontext()):
            store = predict_into(self.model, volume, tilings, make, device=self.device, batch=d.predict_batch,
                                 each_batch=t.check, split=self.space.split if self.space is not None else None)
        store.close()
        return store

    def predict_proba(self, volume: np.ndarray | Tensor | LazyVolume, shifts: int | None = None) -> Tensor:
        """``(K, D, H, W)`` probabilities of a ``(C, D, H, W)`` volume (same channels as trained),
        in memory.

        With ``data.reduce_depth`` every depth slice holds the softmax of the depth-mean logits
        (identical slices unless ``predict_depth`` cuts the depth axis into several windows);
        ``.mean(1)`` gives the ``(K, H, W)`` map :meth:`predict` takes its argmax of."""
        vol = volume if isinstance(volume, LazyVolume) else LazyVolume.from_array(volume, self.config.data.coords)
        sink = TensorSink(self.num_classes, vol.spatial)
        self.predict_into(vol, [sink], shifts=shifts)
        return sink.tensor

    def predict(self, volume: np.ndarray | Tensor | LazyVolume) -> np.ndarray:
        """``(D, H, W)`` uint8 label volume; with ``data.reduce_depth`` the ``(H, W)`` label map
        (argmax of the depth-mean probability), shaped like the labels it was trained on."""
        return labels_of(self.predict_proba(volume), self.config.data.reduce_depth).numpy().astype(np.uint8)


class _StepLoss:
    """The trainer's ``loss_fn``: the loss of one batch, a history record per step, and the
    activation memory counted during the first step (no extra forward pass).

    ``clock()`` is the run's training time so far, each record's ``time_s``: the trainer's
    :attr:`~fhcnn.training.Trainer.train_time_s` (set once the trainer is made; it keeps the time
    in its checkpoints and leaves its validations, the evaluations, out)."""

    def __init__(self, loss: SegmentationLoss, history: list[dict[str, Any]],
                 unlabelled: UnlabelledTerm | None = None) -> None:
        self.loss, self.history, self.unlabelled = loss, history, unlabelled
        self.clock: Callable[[], float] = lambda: 0.0
        self.step = 0
        self.activation_bytes: int | None = None

    def state_dict(self) -> dict[str, Any]:
        """What the trainer's checkpoints keep of the loss: the history records so far (a resumed
        run reports every step, not only its own) and the unlabelled term's state (the mean
        teacher)."""
        state: dict[str, Any] = {"history": [dict(r) for r in self.history]}
        if self.unlabelled is not None:
            state["unlabelled"] = self.unlabelled.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.unlabelled is not None and "unlabelled" in state:
            self.unlabelled.load_state_dict(state["unlabelled"])
        if "history" in state:
            self.history[:] = [dict(r) for r in state["history"]]

    def batches(self, sampler: Callable[[int, torch.Generator], Any]) -> Callable[[int, torch.Generator], Any]:
        """The trainer's ``batch_fn``: ``sampler``'s batch of each step, the step noted first, so
        that the records and the unlabelled term's ramp count the run's steps (a resumed run
        continues at its checkpoint's step, not at 1)."""

        def batch(step: int, gen: torch.Generator) -> Any:
            self.step = step - 1
            return sampler(step, gen)

        return batch

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
            loss = loss + self.unlabelled(model, x, logits, y, self.step, world_share())  # not split in space
            extra = self.unlabelled.last
        self.step += 1
        value = float(loss.detach())
        self.history.append({"step": self.step, "loss": value, "time_s": round(self.clock(), 3), **extra})
        return loss, {"loss": value}


class _Evaluator:
    """Scores the plan's evaluation labels (and/or calls ``eval_fn``) on the current model into
    the last history record, chunk by chunk (:class:`~fhcnn.engine.store.ConfusionSink`,
    spilling into a scratch folder of the run folder ``out``); as the trainer's validation its
    time is not training time. ``scored_step``: the step of the record it last scored."""

    def __init__(self, result: SegmentationResult, eval_fn: Callable[[SegmentationResult], dict[str, float]] | None,
                 out: Path | None = None) -> None:
        self.result, self.eval_fn, self.out = result, eval_fn, out
        self.scored_step: int | None = None

    @property
    def truth(self) -> Any:
        return self.result.plan.eval_labels if self.result.plan is not None else None

    @property
    def active(self) -> bool:
        return self.truth is not None or self.eval_fn is not None

    def done(self, history: Sequence[dict[str, Any]]) -> bool:
        """Whether the last record of ``history`` is scored: by this evaluator (the trainer's
        validation of the last step), or, of the plan's evaluation labels, by the run a
        checkpoint continues (its ``miou``)."""
        return bool(history) and (self.scored_step == history[-1]["step"]
                                  or (self.truth is not None and "miou" in history[-1]))

    def __call__(self, model: nn.Module | None = None) -> dict[str, float]:
        out: dict[str, float] = {}
        r = self.result
        if self.truth is not None:
            assert r.plan is not None
            sink = ConfusionSink(self.truth, r.num_classes, r.config.data.reduce_depth)
            # in the run folder's scratch; every process of a split takes part in the prediction
            with spill_folder(self.out, every_process=r.space is not None) as work:
                r.predict_into(r.plan.volume, [sink], work=work)
            met = scores_of_confusion(sink.matrix)
            out = {"miou": met["miou"], **{f"iou_{c}": v for c, v in enumerate(met["iou"]) if v is not None}}
        if self.eval_fn is not None:
            out.update(self.eval_fn(r))
        if r.history:
            r.history[-1].update(out)
            self.scored_step = r.history[-1]["step"]
        return out


def _normalization(plan: RunPlan) -> tuple[Tensor, Tensor]:
    """``(C,)`` mean and (population) standard deviation the model normalizes its input with: the
    streamed statistics of the data channels, and those of ``linspace(-1, 1, n)`` over the
    volume for the coordinate channels (``data.coords``)."""
    vol = plan.volume
    parts_m = [torch.tensor([s.mean for s in plan.stats], dtype=torch.float32)]
    parts_s = [torch.tensor([s.std for s in plan.stats], dtype=torch.float32)]
    if vol.coords:  # each value of linspace(-1, 1, n) repeated over the volume's other axes
        total = math.prod(vol.spatial)
        for n in vol.spatial[1:]:
            lin = torch.linspace(-1, 1, n, dtype=torch.float64)
            m = lin.mean()
            ss = (lin - m).square().sum() * (total // n)
            parts_m.append(m.float()[None])
            parts_s.append((ss / total).sqrt().float()[None])
    return torch.cat(parts_m), torch.cat(parts_s)


def train(plan: RunPlan, out_dir: str | Path | None = None, *,
          eval_fn: Callable[[SegmentationResult], dict[str, float]] | None = None,
          quiet: bool = False, resume: bool = False, reports_progress: bool = True) -> SegmentationResult:
    """Train the plan's model on its volume from its sparse labels.

    Args:
        plan: from :func:`~fhcnn.engine.plan.prepare` (inputs and config, checked).
        out_dir: where the trainer writes ``metrics.jsonl`` and ``checkpoints/`` (None: nothing
            is written).
        eval_fn: a custom evaluation ``result -> {"name": value}`` called every
            ``data.eval_every`` steps and at the end (as the plan's ``eval_labels`` are).
        quiet: no progress output.
        resume: continue the run in ``out_dir`` from its latest checkpoint.
        reports_progress: see :class:`~fhcnn.training.Trainer` (``False``: a baseline's training
            beside the run's, whose steps and checkpoints a lost process's message names).

    Returns:
        :class:`SegmentationResult` (``.model``, ``.predict(volume)``, ``.history`` ...).
    """
    cfg = copy.deepcopy(plan.config)
    d = cfg.data
    reduce = plan.reduce_depth
    k, win, vol = plan.num_classes, plan.train_window, plan.volume
    torch.manual_seed(cfg.train.seed)
    seg = build_model(cfg.model, vol.shape[0], k, depth=win[0] if reduce else None)
    seg.set_normalization(*_normalization(plan))
    model: VolumeSegmenter | DepthMean = DepthMean(seg) if reduce else seg
    space = SpaceRun.start(cfg, seg, vol.spatial, reduce)  # parallel.space > 1: split `seg` in place
    sampler = WindowSampler(vol, plan.labels, win, d, seg.std[:vol.data_channels], class_positions(plan))
    history: list[dict[str, Any]] = []
    weight = weights_of_counts(torch.as_tensor(plan.class_counts), d.balance)
    unlabelled = None
    if d.unlabelled != "none" and d.unlabelled_weight > 0:  # refused with a split (check_space_split)
        n = cfg.train.steps
        unlabelled = UnlabelledTerm(d.unlabelled, d.unlabelled_weight, weight, threshold=d.pseudo_threshold,
                                    ema=d.teacher_ema, start=round(d.unlabelled_start * n),
                                    full=round(d.unlabelled_full * n), reduce_depth=reduce,
                                    mirror=d.mirror_axis)
    seg_loss = SegmentationLoss(weight, d.dice, reduce)
    step_loss = _StepLoss(space.loss(seg_loss) if space else data_parallel_loss(seg_loss), history, unlabelled)
    result = SegmentationResult(model=model, config=cfg, num_classes=k, history=history, window=win,
                                plan=plan, space=space)
    evaluate = _Evaluator(result, eval_fn, Path(out_dir) if out_dir is not None else None)
    if evaluate.active and d.eval_every > 0:
        cfg.train.val_every = d.eval_every

    trainer = Trainer(model, cfg.train, Path(out_dir) if out_dir is not None else None,
                      batch_fn=step_loss.batches(sampler), loss_fn=step_loss,
                      val_fn=evaluate if evaluate.active and d.eval_every > 0 else None, quiet=quiet,
                      reports_progress=reports_progress, **(space.trainer_options() if space else {}))
    step_loss.clock = lambda: trainer.train_time_s
    trainer.fit(resume=resume)
    check_inputs_unchanged("during training", collective=True)  # every process trains: all say it
    result.device = trainer.device
    result.train_time_s = trainer.train_time_s
    result.model = model.to(result.device)
    if step_loss.activation_bytes is None:  # nothing left to train (a finished run resumed)
        x0, y0 = sampler(0, torch.Generator().manual_seed(0))
        if space:  # this process's slab
            x0, y0 = space.shard((x0, y0))
        elif trainer.world_size > 1:  # this process's share of the batch, as each step takes it
            x0, y0 = shard_batch((x0, y0), trainer.rank, trainer.world_size)
        step_loss.activation_bytes = activation_bytes(model, x0.to(result.device), y0.to(result.device),
                                                      step_loss.loss)
    result.activation_bytes = step_loss.activation_bytes
    # where the trainer validates (rank 0; every process of a split model): a data-parallel
    # replica's score would go nowhere, its prediction of the volume wasted
    if evaluate.active and (trainer.is_main or trainer.val_all_ranks) and not evaluate.done(history):
        evaluate()
    model.eval()
    return result


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
    """Train ``config.model`` on one volume from sparse labels: :func:`train` of the
    :func:`~fhcnn.engine.plan.prepare`-d run.

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
        InputError: bad shapes, labels outside ``[0, K)``, fewer than two labelled classes (see
            :func:`~fhcnn.engine.plan.prepare`).
    """
    plan = prepare(DenseInputs(volume, labels, num_classes, eval_labels),
                   config if config is not None else SegmentConfig())
    return train(plan, out_dir, eval_fn=eval_fn, quiet=quiet, resume=resume)
