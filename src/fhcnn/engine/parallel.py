"""One volume split in space over the processes of a ``torchrun`` job (``parallel.space``).

The glue between the dense engine and :mod:`fhcnn.spatial` (issue #17, step two): with
``parallel.space: S > 1`` the ``W`` processes form a ``data x space`` mesh of ``W / S``
data-parallel replicas of ``S`` processes each (replica ``d`` owns ranks ``d*S .. d*S+S-1``).

* **Training.** Every process draws the same global batch of windows (the trainer seeds it
  from ``(seed, step)``); a replica keeps its share of the batch, and each process of the
  replica its slab of every window (:meth:`SpaceRun.shard`). The network
  (:class:`~fhcnn.engine.models.VolumeSegmenter` around a
  :class:`~fhcnn.models.DenseHyperbolicModel`) is converted by
  :func:`~fhcnn.spatial.split_module`: halos are exchanged, normalization sums all-reduced.
  Input normalization, opening, classifier and the loss are pointwise and stay local: each
  process back-propagates its *part* of the replica's loss (:class:`SplitSegmentationLoss`:
  its labelled voxels' weighted cross entropy over the replica's total weight, the Dice sums
  all-reduced), and :func:`~fhcnn.spatial.reduce_gradients` sums the gradients over the slabs
  and averages them over the replicas instead of DistributedDataParallel (which must not wrap
  a split model). The loss the trainer logs is the replica's whole loss.
* **Prediction.** Every process of the space group runs the same tiled prediction
  (:func:`~fhcnn.engine.inference.predict_into`): inside :meth:`SpaceRun.predicting` each reads
  only its slab of every window and the split model all-gathers the window's logits, so every
  process can finish any part of the output; which part is the caller's choice
  (:func:`~fhcnn.engine.run.owned_region`: rank 0 everything, or each process its slab). Outside
  it, the split model in eval mode takes whole windows (each process keeps its slab). The
  result equals the single-process prediction.
* **Checks** (:func:`check_space_split`, one line each, before the output folder exists): the
  U-Net cannot be split; the world size must be a multiple of ``S``; every training and
  prediction window must cut into slabs that are whole multiples of the network's
  ``size_multiple`` along the split axes (the error names the axis and the nearest valid size).

Not split: training windows are read whole by every process (augmentations need the whole
window), and the window's logits are gathered whole on every process during prediction (``K``
channels, small next to the network's states).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..options import IGNORE
from .losses import SegmentationLoss
from .sizes import training_window

if TYPE_CHECKING:  # pragma: no cover
    from ..spatial import SpatialSplit
    from .models import VolumeSegmenter

__all__ = ["ParallelConfig", "SpaceRun", "SplitSegmentationLoss", "check_space_split",
           "prediction_windows", "follow_prediction"]

_AXES = ("D", "H", "W")
_WINDOW_KEYS = ("window_depth", "window_height", "window_width")
_PREDICT_KEYS = ("predict_depth", "predict_height", "predict_width")


@dataclass
class ParallelConfig:
    """The ``parallel:`` section: how one volume is split in space over processes.

    Attributes:
        space: processes per data-parallel replica that share one volume, each holding one
            slab (``1``: no split, today's behaviour exactly). The ``torchrun`` world size
            must be a multiple of it; the quotient is the number of data-parallel replicas.
        axes: the split spatial axes of the ``(D, H, W)`` volume (``0`` = D: frames of a
            video, bands of a hyperspectral scene; ``1`` = H; ``2`` = W).
        grid: processes along each of ``axes`` (product = ``space``); empty: all ``space``
            processes along the single axis in ``axes``.
    """

    space: int = 1
    axes: list[int] = field(default_factory=lambda: [0])
    grid: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.space < 1:
            raise ValueError(f"space must be >= 1 (processes per replica), got {self.space}")
        axes = list(self.axes)
        if not axes or len(set(axes)) != len(axes) or any(a not in (0, 1, 2) for a in axes):
            raise ValueError(f"axes must be distinct spatial axes among 0 (D), 1 (H), 2 (W), got {axes}")
        if self.grid:
            if len(self.grid) != len(axes) or any(g < 1 for g in self.grid):
                raise ValueError(f"grid must give a positive number of processes for each of the axes "
                                 f"{axes}, got {list(self.grid)}")
            if math.prod(self.grid) != self.space:
                raise ValueError(f"grid {list(self.grid)} has {math.prod(self.grid)} processes but "
                                 f"space={self.space}")
        elif len(axes) > 1 and self.space > 1:
            raise ValueError(f"with several split axes {axes} give parallel.grid (processes along "
                             f"each axis, product = space={self.space})")

    @property
    def split_grid(self) -> tuple[int, ...]:
        """Processes along each of :attr:`axes`."""
        if self.grid:
            return tuple(int(g) for g in self.grid)
        return (int(self.space),) + (1,) * (len(self.axes) - 1)

    def describe(self) -> str:
        return " x ".join(f"{_AXES[a]}/{g}" for a, g in zip(self.axes, self.split_grid))


def prediction_windows(size: Sequence[int], window: Sequence[int], multiple: int, shifts: int,
                       shift_depth: bool) -> list[tuple[int, ...]]:
    """The window sizes :func:`~fhcnn.engine.inference.predict_volume` evaluates on a volume of
    ``size`` ``(D, H, W)``: one per shifted tiling (:func:`~fhcnn.engine.inference.tiling_sizes`)."""
    from .sizes import prediction_tilings

    return list(dict.fromkeys(t.window for t in prediction_tilings(size, window, multiple, shifts, shift_depth,
                                                                  flip=False)))


def _axis_error(what: str, key: str | None, axis: int, size: int, parts: int, multiple: int) -> str:
    from ..spatial import nearest_valid_split

    near, ok = nearest_valid_split(size, parts, multiple)
    fix = f" (set {key}={near})" if key else ""
    alt = (f"; or split this axis into {ok[0]} slab(s) (valid: {ok})" if ok
           else f"; no number of slabs works for {size}")
    if key is None:
        alt += " or split H or W instead (parallel.axes=[1] or [2])"
    return (f"parallel.space: {what}: spatial axis {axis} ({_AXES[axis]}) of size {size} cannot be "
            f"split into {parts} slabs that are whole multiples of {multiple} (2**coarsenings of the "
            f"network): nearest valid size for {parts} slabs: {near}{fix}{alt}")


def check_space_split(cfg: Any, shape: Sequence[int], reduce_depth: bool = False, plan: Any = None) -> None:
    """Refuse, in one line, a ``parallel`` section that cannot split this run.

    Args:
        cfg: a config with ``model``, ``data``, ``train`` and ``parallel`` sections
            (:class:`~fhcnn.engine.config.SegmentConfig`, ``ChangeConfig``).
        shape: ``(D, H, W)`` of the volume the network sees (after ``data.scale``).
        reduce_depth: the labels are one 2D map (the loss on the depth-mean logits).
        plan: the run's :class:`~fhcnn.engine.plan.RunPlan`, whose training window and
            prediction tilings are checked (else they are worked out from ``cfg``).

    Raises:
        InputError: the U-Net or an unlabelled-voxel term with ``space > 1``; a world size that is not a multiple of
            ``space``; a batch that the replicas cannot share; a training or prediction
            window whose slab along a split axis is not a whole multiple of the network's
            size multiple (naming the axis and the nearest valid size).
    """
    p: ParallelConfig = cfg.parallel
    if p.space == 1:
        return
    from .models import size_multiple_of
    from .sizes import prediction_window_of

    if cfg.model.arch != "hyperbolic":
        raise InputError(f"parallel.space={p.space}: only the hyperbolic network can be split in "
                         f"space; model.arch={cfg.model.arch} cannot (use parallel.space=1)")
    if cfg.model.spectral_head > 0 and 0 in p.axes:
        raise InputError(f"parallel.axes={list(p.axes)}: model.spectral_head reads the whole depth axis "
                         f"of each pixel, so the depth axis 0 is not split with it (split H or W: "
                         f"parallel.axes=[1] or [2]; or use model.spectral_head=0)")
    if cfg.data.unlabelled != "none" and cfg.data.unlabelled_weight > 0:
        raise InputError(f"parallel.space={p.space}: data.unlabelled={cfg.data.unlabelled} is not "
                         f"supported on a volume split in space (use data.unlabelled=none)")
    from ..training.distributed import world_size

    world = world_size()
    if world % p.space:
        raise InputError(f"parallel.space={p.space} splits each volume over {p.space} processes, but "
                         f"this run has {world}: launch it with torchrun --nproc-per-node {p.space} "
                         f"(or a multiple of {p.space}, for data-parallel replicas)")
    replicas = world // p.space
    if cfg.data.batch_size % replicas:
        raise InputError(f"data.batch_size={cfg.data.batch_size} is not divisible by the {replicas} "
                         f"data-parallel replicas ({world} processes / parallel.space={p.space})")
    if reduce_depth and 0 in p.axes and len(p.axes) > 1:
        raise InputError(f"parallel.axes={list(p.axes)}: with one 2D label map for the whole depth "
                         f"(data.reduce_depth, change.target=mean) the depth axis 0 can be split only "
                         f"alone (parallel.axes=[0]) or not at all (e.g. [1, 2])")
    m = size_multiple_of(cfg.model)
    d = cfg.data
    win = plan.train_window if plan is not None else \
        training_window((d.window_depth, d.window_height, d.window_width), shape, m, whole_depth=reduce_depth)
    grid = p.split_grid
    for a, g in zip(p.axes, grid):
        if win[a] % (g * m):
            key = None if (reduce_depth and a == 0) else "data." + _WINDOW_KEYS[a]
            what = f"training window {tuple(win)}" + (" (the whole depth)" if key is None else "")
            raise InputError(_axis_error(what, key, a, win[a], g, m))
    if plan is not None:
        windows = list(dict.fromkeys(t.window for t in plan.tilings))
    else:
        pwin = prediction_window_of((d.predict_depth, d.predict_height, d.predict_width), win, reduce_depth)
        windows = prediction_windows(shape, pwin, m, d.predict_shifts, not reduce_depth)
    for wins in windows:
        for a, g in zip(p.axes, grid):
            if wins[a] % (g * m):
                raise InputError(_axis_error(
                    f"prediction window {tuple(wins)} (of the volume {tuple(shape)} continued to a "
                    f"multiple of {m}, data.predict_shifts={d.predict_shifts})",
                    "data." + _PREDICT_KEYS[a], a, wins[a], g, m))


class SplitSegmentationLoss(SegmentationLoss):
    """This process's part of :class:`~fhcnn.engine.losses.SegmentationLoss` on its slab.

    Cross entropy: the weighted sum over this slab's labelled voxels divided by the total
    weight of the replica's labelled voxels (all-reduced, a constant); soft Dice: the per-class
    sums all-reduced (differentiably) and the term divided among the processes. The parts sum
    to the replica's loss and their gradients, summed over the slabs, to its gradient. With
    ``reduce_depth`` and the depth axis split, the depth mean of the logits is all-reduced
    first; the 2D map is then the same on every process and each takes ``1/S`` of the loss.

    Returns a tensor whose *value* is the replica's whole loss (for logging and the non-finite
    check) and whose *gradient* is this process's part.
    """

    def __init__(self, base: SegmentationLoss, split: SpatialSplit, depth_split: bool) -> None:
        super().__init__(base.weight, base.dice, base.reduce_depth)
        self.split, self.depth_split = split, depth_split

    def __call__(self, logits: Tensor, y: Tensor) -> Tensor:
        from ..spatial import all_reduce_sum, global_sum

        split = self.split
        lo = logits.float()
        replicated = 1
        if self.reduce_depth:
            lo = lo.mean(2)
            if self.depth_split:  # the slabs' depth means -> the global one, on every process
                lo = all_reduce_sum(lo, split) / split.size
                replicated = split.size
        k = lo.shape[1]
        weight = self.weight.to(lo.device)
        keep = y != IGNORE
        nll = F.cross_entropy(lo, y, weight=weight, ignore_index=IGNORE, reduction="sum")
        total_weight = global_sum(weight[y.clamp(0, k - 1)][keep].sum(), split)
        part = nll / total_weight
        if self.dice > 0:
            keep1 = keep.unsqueeze(1)
            prob = torch.softmax(lo, 1) * keep1
            onehot = (F.one_hot(y.clamp(0, k - 1), k).movedim(-1, 1) * keep1).to(prob.dtype)
            dims = (0,) + tuple(range(2, lo.dim()))
            sums = torch.stack([(prob * onehot).sum(dims), (prob + onehot).sum(dims), onehot.sum(dims)])
            inter, total, count = all_reduce_sum(sums, split) / replicated
            dice = 1 - (2 * inter + 1) / (total + 1)
            part = part + self.dice * dice[count.detach() > 0].mean() / split.size
        whole = global_sum(part, split)
        return part + (whole - part).detach()


class _WholeWindowsInEval:
    """Forward hooks of the split model: in eval mode it takes whole windows (each process
    keeps its slab; or, while ``local_input``, each process's slab already) and returns whole
    logits (all-gathered); in training mode, slabs."""

    def __init__(self, split: SpatialSplit, multiple: int) -> None:
        self.split, self.multiple = split, multiple
        self.local_input = False

    def before(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if module.training or self.local_input:
            return None
        return (self.split.scatter(args[0], self.multiple),) + tuple(args[1:])

    def after(self, module: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor | None:
        if module.training:
            return None
        return self.split.gather(out)


class SpaceRun:
    """A training run of the dense engine split in space (built by :meth:`start`)."""

    def __init__(self, split: SpatialSplit, multiple: int, reduce_depth: bool,
                 hooks: _WholeWindowsInEval | None = None) -> None:
        self.split, self.multiple, self.reduce_depth = split, multiple, reduce_depth
        self.hooks = hooks

    @contextlib.contextmanager
    def predicting(self) -> Iterator[None]:
        """While open, the split model in eval mode takes each process's slab of a window (read
        by :func:`~fhcnn.engine.inference.predict_into` from disk) instead of whole windows."""
        if self.hooks is None:
            yield
            return
        self.hooks.local_input = True
        try:
            yield
        finally:
            self.hooks.local_input = False

    @classmethod
    def start(cls, cfg: Any, seg: VolumeSegmenter, shape: Sequence[int],
              reduce_depth: bool = False) -> SpaceRun | None:
        """Check the split, join the process group, build the ``data x space`` mesh and split
        ``seg`` in place (its state dict is unchanged). ``None`` when ``parallel.space == 1``.

        Args:
            cfg: the run's config (``model``, ``data``, ``train``, ``parallel``).
            seg: the freshly built model, the same on every process (same seed).
            shape: ``(D, H, W)`` of the training volume.
            reduce_depth: one 2D label map for the whole depth.
        """
        p: ParallelConfig | None = getattr(cfg, "parallel", None)
        if p is None or p.space == 1:
            return None
        from ..spatial import init_spatial, split_module
        from ..training import init_distributed, resolve_device

        device = resolve_device(cfg.train.device)
        info = init_distributed(device.type)
        split = init_spatial(3, tuple(p.axes), p.split_grid, data=info.world_size // p.space,
                             device_type=device.type)
        split_module(seg.core, split)
        hooks = _WholeWindowsInEval(split, seg.size_multiple)
        seg.register_forward_pre_hook(hooks.before)
        seg.register_forward_hook(hooks.after)
        return cls(split, seg.size_multiple, reduce_depth, hooks)

    def shard(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """This process's part of a global batch ``(x (N, C, d, h, w), y)``: its replica's share
        of the windows, its slab of each (``y`` ``(N, d, h, w)``, or ``(N, h, w)``)."""
        from ..training import shard_batch

        split = self.split
        x, y = shard_batch(batch, split.data_rank, split.data_size)
        split.check(x.shape[2:], self.multiple, what=f"training window {tuple(x.shape[2:])}")
        sl = split.local_slices(x.shape[2:])
        ys = sl if y.dim() == x.dim() - 1 else sl[1:]
        return (x[(slice(None), slice(None)) + sl].contiguous(), y[(slice(None),) + ys].contiguous())

    def loss(self, base: SegmentationLoss) -> SplitSegmentationLoss:
        return SplitSegmentationLoss(base, self.split, depth_split=0 in self.split.axes)

    def reduce_gradients(self, model: nn.Module) -> None:
        from ..spatial import reduce_gradients

        reduce_gradients(model, self.split)

    def trainer_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~fhcnn.training.Trainer`: shard by replica and slab,
        reduce gradients over the mesh (no DistributedDataParallel), validate on every process
        (prediction needs the whole space group)."""
        return {"shard_fn": self.shard, "grad_reduce": self.reduce_gradients, "val_all_ranks": True}


def follow_prediction(result: Any, volume: Any) -> None:
    """On a process other than rank 0: take part in rank 0's ``result.predict_proba(volume)``
    when the model is split in space (every process of the split computes its slabs); nothing
    otherwise. The probabilities are dropped (rank 0 writes them)."""
    p: ParallelConfig | None = getattr(result.config, "parallel", None)
    if p is not None and p.space > 1:
        result.predict_proba(volume)
