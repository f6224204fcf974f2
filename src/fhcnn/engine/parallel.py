"""One volume split in space over the processes of a ``torchrun`` job (``parallel.space``).

The glue between the dense engine and :mod:`fhcnn.spatial` (issue #17, step two): with
``parallel.space: S > 1`` the ``W`` processes form a ``data x space`` mesh of ``W / S``
data-parallel replicas of ``S`` processes each (replica ``d`` owns ranks ``d*S .. d*S+S-1``).

* **Training.** Every process draws the same global batch of windows (the trainer seeds it
  from ``(seed, step)``); a replica keeps its share of the batch, and each process of the
  replica its slab of every window (:meth:`SpaceRun.shard`). The network
  (:class:`~fhcnn.engine.models.VolumeSegmenter` around a
  :class:`~fhcnn.models.DenseHyperbolicModel`) is converted by
  :func:`~fhcnn.spatial.split_module`: halos are exchanged (by the layers and the conv head),
  normalization sums all-reduced. Input normalization, opening, 1x1 classifier and the loss
  are pointwise and stay local: each process back-propagates its *part* of the whole batch's
  loss (:class:`SplitSegmentationLoss`: its labelled voxels' weighted cross entropy over the
  total weight of the whole batch's, the Dice sums all-reduced over every process, scaled by
  :func:`~fhcnn.engine.losses.shared_segmentation_loss`), and
  :func:`~fhcnn.spatial.reduce_gradients` sums the gradients over the slabs and averages them
  over the replicas instead of DistributedDataParallel (which must not wrap a split model):
  the gradient of the whole batch's loss on one process. The loss the trainer logs is the whole
  batch's. Without a split, :func:`data_parallel_loss` does the same for the replicas of
  DistributedDataParallel.
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
import copy
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch.distributed as dist
from torch import Tensor, nn

from ..errors import InputError
from .config import ParallelConfig
from .losses import BatchShare, SegmentationLoss, shared_segmentation_loss
from .sizes import round_up, training_window

if TYPE_CHECKING:  # pragma: no cover
    from ..spatial import SpatialSplit
    from .models import VolumeSegmenter

__all__ = ["ParallelConfig", "SpaceRun", "SplitSegmentationLoss", "mesh_share", "world_share", "data_parallel_loss",
           "SplitError", "check_space_split", "fix_sets", "fix_text", "prediction_windows", "follow_prediction"]

_AXES = ("D", "H", "W")
_WINDOW_KEYS = ("window_depth", "window_height", "window_width")
_PREDICT_KEYS = ("predict_depth", "predict_height", "predict_width")


def prediction_windows(size: Sequence[int], window: Sequence[int], multiple: int, shifts: int,
                       shift_depth: bool) -> list[tuple[int, int, int]]:
    """The distinct window sizes a prediction of a volume of ``size`` ``(D, H, W)`` evaluates
    (:func:`~fhcnn.engine.sizes.prediction_tilings`)."""
    from .sizes import distinct_windows, prediction_tilings

    return distinct_windows(prediction_tilings(size, window, multiple, shifts, shift_depth, None))


#: One change a split error offers: config keys -> values, and ``"processes"``: the number of
#: processes to launch (``torchrun --nproc-per-node``).
Fix = dict[str, Any]


class SplitError(InputError):
    """A ``parallel`` section that cannot split this run (one line, :func:`check_space_split`).

    ``fixes``: the changes the message offers, each one checked to pass
    :func:`check_space_split` when applied alone (config keys -> values; ``"processes"``: the
    number of processes to launch)."""

    def __init__(self, message: str, fixes: list[Fix]) -> None:
        super().__init__(message)
        self.fixes = fixes


@dataclass
class _Problem:
    """The first thing :func:`check_space_split` refuses: its text, and the candidate fixes in
    groups (of each group, the first candidate that passes the whole check is offered)."""

    text: str
    groups: list[list[Fix]] = field(default_factory=list)
    end: str = ""  # said after the fixes (what else would work)


def _value_text(v: Any) -> str:
    return "[" + ",".join(str(x) for x in v) + "]" if isinstance(v, (list, tuple)) else str(v)


def fix_sets(fix: Fix) -> list[str]:
    """The config changes of ``fix`` as ``--set`` arguments (``key=value``)."""
    return [f"{k}={_value_text(v)}" for k, v in fix.items() if k != "processes"]


def fix_text(fix: Fix) -> str:
    """How a user applies ``fix``: ``--set key=value ...`` and/or ``torchrun --nproc-per-node N``."""
    sets = " ".join(f"--set {s}" for s in fix_sets(fix))
    launch = f"torchrun --nproc-per-node {fix['processes']}" if "processes" in fix else ""
    return " with ".join(t for t in (sets, launch) if t)


def _apply(cfg: Any, fix: Fix) -> Any | None:
    """A copy of ``cfg`` with the config keys of ``fix`` set (each changed section rebuilt and
    validated); ``None`` if a section refuses the values."""
    changes: dict[str, dict[str, Any]] = {}
    for key, value in fix.items():
        if key != "processes":
            section, name = key.split(".")
            changes.setdefault(section, {})[name] = value
    new = copy.copy(cfg)
    for section, values in changes.items():
        try:
            setattr(new, section, replace(getattr(cfg, section), **values))
        except (ValueError, TypeError):
            return None
    return new


def _axis_problem(cfg: Any, what: str, key: str | None, axis: int, size: int, asked: int,
                  world: int, predict: bool) -> _Problem:
    """A window whose length ``size`` along the split ``axis`` does not cut into the axis's
    slabs; ``key``: the config key that sets it (``None``: the whole depth, not settable),
    ``asked``: the value it asked for (candidates are tried nearest to it first)."""
    from .models import size_multiple_of

    p: ParallelConfig = cfg.parallel
    m = size_multiple_of(cfg.model)
    grid = list(p.split_grid)
    i = list(p.axes).index(axis)
    parts = grid[i]
    step = parts * m
    groups: list[list[Fix]] = []
    if key is not None:  # another window length: whole multiples of parts * m, the nearest first
        top = round_up(max(size, asked, 1), step) + step
        values = list(range(step, top + 1, step)) + ([0] if predict else [])
        groups.append([{key: v} for v in sorted(values, key=lambda v: (abs((v or size) - asked), v))])
    if predict and cfg.data.predict_shifts > 1:
        groups.append([{"data.predict_shifts": 1}])
    replicas = world // p.space if world % p.space == 0 else 1
    slabs = []  # another number of slabs along this axis (another number of processes)
    for k in sorted(range(1, max(size // m, 1) + 1), key=lambda k: (abs(k - parts), k)):
        g = grid[:i] + [k] + grid[i + 1:]
        space = math.prod(g)
        if k == parts or space == 1:
            continue
        fix: Fix = {"parallel.space": space, "processes": space * replicas}
        if len(g) > 1:
            fix["parallel.grid"] = g
        slabs.append(fix)
    groups.append(slabs)
    if len(p.axes) == 1:  # the same number of slabs along another axis
        for b in range(3):
            if b != axis:
                groups.append([{"parallel.axes": [b]}])
    return _Problem(f"parallel.space: {what}: spatial axis {axis} ({_AXES[axis]}) of size {size} cannot be "
                    f"split into {parts} slabs that are whole multiples of {m} (2**coarsenings of "
                    f"the network)", groups)


def _problem(cfg: Any, shape: Sequence[int], reduce_depth: bool, world: int) -> _Problem | None:
    """The first thing that keeps ``cfg.parallel`` from splitting this run on ``world``
    processes, or ``None``."""
    p: ParallelConfig = cfg.parallel
    if p.space == 1:
        if world > 1 and cfg.data.batch_size % world:  # every process a data-parallel replica
            return _Problem(f"data.batch_size={cfg.data.batch_size} is not divisible by the {world} "
                            f"data-parallel processes", [[{"data.batch_size": round_up(cfg.data.batch_size, world)}]])
        return None
    from .models import size_multiple_of
    from .sizes import prediction_window_of

    axes = list(p.axes)
    if cfg.model.arch != "hyperbolic":
        return _Problem(f"parallel.space={p.space}: only the hyperbolic network can be split in "
                        f"space; model.arch={cfg.model.arch} cannot",
                        [[{"parallel.space": 1}, {"parallel.space": 1,
                                                  "data.batch_size": round_up(cfg.data.batch_size, world)}]])
    if cfg.model.spectral_head > 0 and 0 in axes:
        other = [[{"parallel.axes": [b if a == 0 else a for a in axes]}] for b in (1, 2) if b not in axes]
        return _Problem(f"parallel.axes={_value_text(axes)}: model.spectral_head reads the whole depth "
                        f"axis of each pixel, so the depth axis 0 is not split with it",
                        other + [[{"model.spectral_head": 0}]])
    if cfg.data.unlabelled != "none" and cfg.data.unlabelled_weight > 0:
        return _Problem(f"parallel.space={p.space}: data.unlabelled={cfg.data.unlabelled} is not "
                        f"supported on a volume split in space", [[{"data.unlabelled": "none"}]])
    if reduce_depth and 0 in axes and len(axes) > 1:
        i = axes.index(0)
        g0 = p.split_grid[i]
        alone: Fix = {"parallel.axes": [0], "parallel.grid": [], "parallel.space": g0}
        if world % p.space == 0:
            alone["processes"] = g0 * (world // p.space)
        other = [[{"parallel.axes": [b if a == 0 else a for a in axes]}] for b in (1, 2) if b not in axes]
        return _Problem(f"parallel.axes={_value_text(axes)}: with one 2D label map for the whole depth "
                        f"(data.reduce_depth, change.target=mean) the depth axis 0 can be split only "
                        f"alone or not at all", other + [[alone]])
    m = size_multiple_of(cfg.model)
    d = cfg.data
    asked_train = (d.window_depth, d.window_height, d.window_width)
    win = training_window(asked_train, shape, m, whole_depth=reduce_depth)
    for a, g in zip(p.axes, p.split_grid):
        if win[a] % (g * m):
            key = None if (reduce_depth and a == 0) else "data." + _WINDOW_KEYS[a]
            what = f"training window {tuple(win)}" + (" (the whole depth)" if key is None else "")
            return _axis_problem(cfg, what, key, a, win[a], asked_train[a] or win[a], world, False)
    pwin = prediction_window_of((d.predict_depth, d.predict_height, d.predict_width), win, reduce_depth)
    for wins in prediction_windows(shape, pwin, m, d.predict_shifts, not reduce_depth):
        for a, g in zip(p.axes, p.split_grid):
            if wins[a] % (g * m):
                return _axis_problem(
                    cfg, f"prediction window {tuple(wins)} (of the volume {tuple(shape)} continued to a "
                    f"multiple of {m}, data.predict_shifts={d.predict_shifts})",
                    "data." + _PREDICT_KEYS[a], a, wins[a], pwin[a] or wins[a], world, True)
    if world % p.space:
        return _Problem(f"parallel.space={p.space} splits each volume over {p.space} processes, but "
                        f"this run has {world}", [[{"processes": p.space}]],
                        f" (or a multiple of {p.space}, for data-parallel replicas)")
    replicas = world // p.space
    if d.batch_size % replicas:
        return _Problem(f"data.batch_size={d.batch_size} is not divisible by the {replicas} "
                        f"data-parallel replicas ({world} processes / parallel.space={p.space})",
                        [[{"data.batch_size": round_up(d.batch_size, replicas)}], [{"processes": p.space}]])
    return None


def _passes(cfg: Any, fix: Fix, shape: Sequence[int], reduce_depth: bool, world: int) -> bool:
    new = _apply(cfg, fix)
    return new is not None and _problem(new, shape, reduce_depth, int(fix.get("processes", world))) is None


def check_space_split(cfg: Any, shape: Sequence[int], reduce_depth: bool = False) -> None:
    """Refuse, in one line, a ``parallel`` section that cannot split this run.

    Args:
        cfg: a config with ``model``, ``data``, ``train`` and ``parallel`` sections
            (:class:`~fhcnn.engine.config.SegmentConfig`, ``ChangeConfig``).
        shape: ``(D, H, W)`` of the volume the network sees (after ``data.scale``).
        reduce_depth: the labels are one 2D map (the loss on the depth-mean logits).

    Raises:
        SplitError: the U-Net or an unlabelled-voxel term with ``space > 1``; a training or
            prediction window whose slab along a split axis is not a whole multiple of the
            network's size multiple (naming the axis); a world size that is not a multiple of
            ``space``; a batch that the replicas cannot share. The message offers what works:
            only changes that, applied alone, pass this check (``SplitError.fixes``).
    """
    from ..training.distributed import world_size

    world = world_size()
    problem = _problem(cfg, shape, reduce_depth, world)
    if problem is None:
        return
    fixes = []
    for group in problem.groups:
        found = next((f for f in group if _passes(cfg, f, shape, reduce_depth, world)), None)
        if found is not None and found not in fixes:
            fixes.append(found)
    offer = ("; what works: " + "; or ".join(fix_text(f) for f in fixes) + problem.end if fixes
             else "; no single setting fixes it (see docs/spatial.md, Rules and errors)")
    raise SplitError(problem.text + offer, fixes)


class SplitSegmentationLoss(SegmentationLoss):
    """This process's part of :class:`~fhcnn.engine.losses.SegmentationLoss` of the whole batch,
    on its slab of its replica's windows (:func:`~fhcnn.engine.losses.shared_segmentation_loss`
    over the mesh, :func:`mesh_share`).

    Cross entropy: the weighted sum over this slab's labelled voxels divided by the total
    weight of the whole batch's labelled voxels (all-reduced over every process, a constant);
    soft Dice: the per-class sums all-reduced over every process (differentiably). The parts,
    their gradients summed over the slabs and averaged over the replicas, give the whole
    batch's loss and its gradient. With ``reduce_depth`` and the depth axis split, the depth
    mean of the logits is all-reduced first; the 2D map is then the same on every process of
    the replica, and its sums count each pixel once a process.

    Returns a tensor whose *value* is the whole batch's loss (for logging and the non-finite
    check) and whose *gradient* is this process's part.
    """

    def __init__(self, base: SegmentationLoss, split: SpatialSplit, depth_split: bool) -> None:
        super().__init__(base.weight, base.dice, base.reduce_depth)
        self.split, self.depth_split = split, depth_split

    def __call__(self, logits: Tensor, y: Tensor) -> Tensor:
        from ..spatial import all_reduce_sum

        split = self.split
        lo = logits.float()
        replicated = 1
        if self.reduce_depth:
            lo = lo.mean(2)
            if self.depth_split:  # the slabs' depth means -> the global one, on every process
                lo = all_reduce_sum(lo, split) / split.size
                replicated = split.size
        return shared_segmentation_loss(lo, y, self.weight, self.dice, mesh_share(split), replicated)


def mesh_share(split: SpatialSplit) -> BatchShare:
    """The :class:`~fhcnn.engine.losses.BatchShare` of a ``data x space`` mesh: sums over the
    space group, then over the data group; ``R`` = the data replicas, ``W`` = every process."""
    from ..spatial import all_reduce_sum
    from ..spatial.halo import AllReduceSum

    def summed(x: Tensor) -> Tensor:
        x = all_reduce_sum(x, split)
        return AllReduceSum.apply(x, split.data_group) if split.data_size > 1 else x

    total = _summed_without_gradient(((split.group, split.size), (split.data_group, split.data_size)))
    return BatchShare(split.data_size, split.data_size * split.size, total, summed)


def world_share() -> BatchShare | None:
    """The :class:`~fhcnn.engine.losses.BatchShare` of data-parallel processes (every process a
    replica: DistributedDataParallel, no split in space), or ``None`` on one process."""
    from ..spatial.halo import AllReduceSum

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        return None

    total = _summed_without_gradient(((None, world),))
    return BatchShare(world, world, total, lambda x: AllReduceSum.apply(x, None))


def _summed_without_gradient(groups: Sequence[tuple[Any, int]]) -> Callable[[Tensor], Tensor]:
    """``total`` of a :class:`~fhcnn.engine.losses.BatchShare`: a detached copy of ``x``
    summed over each ``(group, size)`` in turn (``None`` the default group; size 1 skipped)."""

    def total(x: Tensor) -> Tensor:
        out = x.detach().clone()
        for group, size in groups:
            if size > 1:
                dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    return total


def data_parallel_loss(base: SegmentationLoss) -> SegmentationLoss:
    """``base`` for a run whose processes are data-parallel replicas (DistributedDataParallel,
    no split in space): on more than one process (:func:`world_share`), each takes its part of
    the whole batch's loss (:func:`~fhcnn.engine.losses.shared_segmentation_loss`), so the
    averaged gradients are those of one process with the same global batch; on one process,
    ``base``'s value exactly."""
    return _DataParallelLoss(base.weight, base.dice, base.reduce_depth)


class _DataParallelLoss(SegmentationLoss):
    def __call__(self, logits: Tensor, y: Tensor) -> Tensor:
        share = world_share()
        if share is None:
            return super().__call__(logits, y)
        return shared_segmentation_loss(self.reduced(logits.float()), y, self.weight, self.dice, share)


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
        info = init_distributed(device.type, float(cfg.train.peer_timeout))
        split = init_spatial(3, tuple(p.axes), p.split_grid, data=info.world_size // p.space,
                             timeout=float(cfg.train.peer_timeout))
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
