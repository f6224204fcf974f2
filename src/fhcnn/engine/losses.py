"""The segmentation loss on sparse labels: class-weighted cross entropy plus a soft Dice term.

Unlabelled voxels (``IGNORE``) get no gradient; a class absent from a batch adds no Dice term.
Class weights ``count**-balance`` (normalized to average 1 over the present classes) keep a
rare foreground from sinking into "all background".

Several processes (``torchrun``) hold parts of one batch: :func:`shared_segmentation_loss` (and
:class:`UnlabelledTerm` with a :class:`BatchShare`) gives each its part of the whole batch's loss,
so that the gradients the optimizer applies are one process's with the same batch.

:class:`UnlabelledTerm` adds a loss on the unlabelled voxels (entropy minimization, confident
pseudo-labels, or a mean teacher's confident predictions), for scenes where the labels are a
small fraction of the volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..options import IGNORE

__all__ = ["class_weights", "weights_of_counts", "segmentation_loss", "SegmentationLoss", "BatchShare",
           "shared_segmentation_loss", "UnlabelledTerm"]


def class_weights(labels: Tensor, num_classes: int, balance: float) -> Tensor:
    """``(K,)`` weights ``count**-balance`` of the labelled voxels (0 for an absent class),
    scaled so the present classes' weights average 1."""
    counts = torch.bincount(labels[labels != IGNORE].flatten().long(), minlength=num_classes)
    return weights_of_counts(counts, balance)


def weights_of_counts(counts: Tensor, balance: float) -> Tensor:
    """``(K,)`` class weights ``count**-balance`` from ``(K,)`` labelled-voxel counts (0 for a
    class with no voxel), scaled so the present classes' weights average 1."""
    counts = counts.float()
    w = torch.where(counts > 0, counts.clamp_min(1) ** -balance, torch.zeros(()))
    return w * (counts > 0).sum() / w.sum()


def segmentation_loss(logits: Tensor, y: Tensor, weight: Tensor, dice: float) -> Tensor:
    """Weighted cross entropy of ``logits`` ``(N, K, *S)`` against ``y`` ``(N, *S)`` (``IGNORE``
    skipped) plus ``dice`` times the mean soft Dice loss of the classes present in ``y``."""
    loss = F.cross_entropy(logits.float(), y, weight=weight.to(logits.device), ignore_index=IGNORE)
    if dice > 0:
        keep = (y != IGNORE).unsqueeze(1)
        prob = torch.softmax(logits.float(), 1) * keep
        onehot = F.one_hot(y.clamp_max(logits.shape[1] - 1), logits.shape[1]).movedim(-1, 1) * keep
        dims = (0,) + tuple(range(2, logits.dim()))
        inter, total = (prob * onehot).sum(dims), (prob + onehot).sum(dims)
        present = onehot.sum(dims) > 0
        d = 1 - (2 * inter + 1) / (total + 1)
        loss = loss + dice * d[present].mean()
    return loss


class SegmentationLoss:
    """The loss of one training step: :func:`segmentation_loss` with fixed class weights.

    With ``reduce_depth`` the logits ``(N, K, D, h, w)`` are averaged over depth first, to meet
    2D labels ``(N, h, w)``.
    """

    def __init__(self, weight: Tensor, dice: float, reduce_depth: bool = False) -> None:
        self.weight, self.dice, self.reduce_depth = weight, dice, reduce_depth

    def reduced(self, logits: Tensor) -> Tensor:
        """``logits`` averaged over depth with ``reduce_depth``, else as they are."""
        return _reduce(logits, self.reduce_depth)

    def __call__(self, logits: Tensor, y: Tensor) -> Tensor:
        return segmentation_loss(self.reduced(logits), y, self.weight, self.dice)


@dataclass(frozen=True)
class BatchShare:
    """How one process's part of a training batch makes up the whole batch of a multi-process
    run (``torchrun``): ``processes`` hold disjoint parts of it (data-parallel replicas, each
    possibly split in space), and the optimizer applies the gradients summed within a replica
    and averaged over the ``replicas`` (DistributedDataParallel averages over every process).

    Attributes:
        replicas: ``R``, the replicas the gradients are averaged over.
        processes: ``W``, every process holding a part of the batch.
        total: the sum of a tensor over the ``W`` processes, detached (a constant of the loss).
        summed: the same sum, differentiable (its adjoint sums the output gradients).
    """

    replicas: int
    processes: int
    total: Callable[[Tensor], Tensor]
    summed: Callable[[Tensor], Tensor]


def shared_segmentation_loss(logits: Tensor, y: Tensor, weight: Tensor, dice: float, share: BatchShare,
                             replicated: int = 1) -> Tensor:
    """This process's part of :func:`segmentation_loss` of the whole batch of a multi-process run.

    Cross entropy: the weighted sum over this process's labelled voxels divided by the total
    weight of the whole batch's (summed over the processes: a constant); soft Dice: the
    per-class sums summed over the processes (differentiably), divided by ``replicated`` where
    every voxel is held that many times. Each part is scaled so that the gradients the optimizer
    applies (summed within a replica, averaged over the replicas) are those of the whole batch's
    loss on one process: the cross-entropy part by ``R``, the Dice term by ``R / W``.

    Args:
        logits: ``(n, K, *S)`` float32 (depth-reduced already where the labels are 2D).
        y: ``(n, *S)`` labels (``IGNORE`` skipped).

    Returns:
        a scalar whose *value* is the whole batch's loss (the same on every process: for
        logging and the non-finite check) and whose *gradient* is this process's part.
    """
    k = logits.shape[1]
    w = weight.to(logits.device)
    keep = y != IGNORE
    nll = F.cross_entropy(logits, y, weight=w, ignore_index=IGNORE, reduction="sum")
    total_weight = share.total(w[y.clamp(0, k - 1)][keep].sum())
    part = nll / total_weight * share.replicas
    if dice > 0:
        keep1 = keep.unsqueeze(1)
        prob = torch.softmax(logits, 1) * keep1
        onehot = (F.one_hot(y.clamp(0, k - 1), k).movedim(-1, 1) * keep1).to(prob.dtype)
        dims = (0,) + tuple(range(2, logits.dim()))
        sums = torch.stack([(prob * onehot).sum(dims), (prob + onehot).sum(dims), onehot.sum(dims)])
        inter, total, count = share.summed(sums) / replicated
        d = 1 - (2 * inter + 1) / (total + 1)
        part = part + dice * d[count.detach() > 0].mean() * share.replicas / share.processes
    return _whole(part, share)


def _whole(part: Tensor, share: BatchShare) -> Tensor:
    """``part`` with the value of the whole batch's term (the parts summed, over the replicas)."""
    whole = share.total(part.detach()) / share.replicas
    return part + (whole - part).detach()


def _reduce(logits: Tensor, reduce_depth: bool) -> Tensor:
    return logits.mean(2) if reduce_depth else logits


class UnlabelledTerm:
    """A loss on the *unlabelled* voxels of a training batch (``y == IGNORE``), added to the
    labelled loss; labelled voxels get no gradient from it.

    Kinds:
        ``"entropy"``: the mean softmax entropy of the unlabelled voxels (entropy minimization:
            push the decision boundary away from the unlabelled data).
        ``"pseudo"``: confident pseudo-labels from the same forward pass: where the detached
            softmax exceeds ``threshold``, class-weighted cross entropy against its argmax.
        ``"teacher"``: mean teacher: an exponential moving average (decay ``ema``) of the
            model's weights predicts the batch mirrored along the spatial axis ``mirror`` (0 = D,
            1 = H, 2 = W: a second view of the window, mirrored back; ``None``: the batch as it
            is); where it is confident (``> threshold``), class-weighted
            cross entropy of the student against the teacher's argmax. One extra forward pass
            without gradient per step.

    The weight ramps linearly from 0 at ``start`` to ``weight`` at ``full`` (steps): early on the
    network's own guesses are noise. With ``reduce_depth`` the logits ``(N, K, D, h, w)`` are
    averaged over depth first, as for the labels ``(N, h, w)``.

    Call: ``term(model, x, logits, y, step) -> scalar tensor``.
    """

    def __init__(self, kind: str, weight: float, class_weight: Tensor, *, threshold: float = 0.9,
                 ema: float = 0.99, start: int = 0, full: int = 0, reduce_depth: bool = False,
                 mirror: int | None = 2) -> None:
        if kind not in ("entropy", "pseudo", "teacher"):
            raise ValueError(f"kind must be 'entropy', 'pseudo' or 'teacher', got {kind!r}")
        self.kind, self.weight, self.class_weight = kind, weight, class_weight
        self.threshold, self.ema, self.start, self.full = threshold, ema, start, max(full, start)
        self.reduce_depth, self.mirror = reduce_depth, mirror
        self.teacher: torch.nn.Module | None = None
        self._restored: dict[str, Tensor] | None = None  # the teacher of a checkpoint, until made
        self.last: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps to continue exactly: the mean teacher's weights (once made)."""
        if self.teacher is None:
            return {}
        return {"teacher": {k: v.detach().cpu().clone() for k, v in self.teacher.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`: the teacher is made from the checkpoint's weights
        at the next step, then updated as every step updates it."""
        self._restored = state.get("teacher")

    def ramp(self, step: int) -> float:
        """The weight at ``step``: 0 before ``start``, ``weight`` from ``full`` on, linear between."""
        if step < self.start:
            return 0.0
        if self.full <= self.start:
            return self.weight
        return self.weight * min(1.0, (step - self.start) / (self.full - self.start))

    @torch.no_grad()
    def _update_teacher(self, model: torch.nn.Module) -> torch.nn.Module:
        made = self.teacher is None
        if self.teacher is None:
            import copy

            self.teacher = copy.deepcopy(model).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        if self._restored is not None:  # resumed: the checkpoint's teacher, then this step's update
            self.teacher.load_state_dict(self._restored)
            self._restored, made = None, False
        if not made:
            for t, s in zip(self.teacher.parameters(), model.parameters()):
                t.mul_(self.ema).add_(s.detach(), alpha=1 - self.ema)
            for tb, sb in zip(self.teacher.buffers(), model.buffers()):
                tb.copy_(sb)
        return self.teacher

    def __call__(self, model: torch.nn.Module, x: Tensor, logits: Tensor, y: Tensor, step: int,
                 share: BatchShare | None = None) -> Tensor:
        """The term of this batch; with ``share`` (data-parallel processes), this process's part
        of the whole batch's term (means over the whole batch's unlabelled voxels, scaled as in
        :func:`shared_segmentation_loss`; the value is the whole term on every process)."""
        if self.kind == "teacher":
            teacher = self._update_teacher(model)   # kept up to date from the first step on
        w = self.ramp(step)
        unl = y == IGNORE
        if w == 0 or (share is None and not unl.any()):
            self.last = {}
            return logits.sum() * 0
        z = _reduce(logits, self.reduce_depth).float()
        if self.kind == "entropy":
            logp = torch.log_softmax(z, 1)
            ent = -(logp.exp() * logp).sum(1)
            if share is None:
                self.last = {"unlabelled_entropy": float(ent[unl].mean().detach())}
                return w * ent[unl].mean()
            n = share.total(unl.sum().double())
            self.last = {"unlabelled_entropy": float(share.total(ent[unl].sum().detach().double()) / n.clamp_min(1))}
            return _whole(w * ent[unl].sum() / n.clamp_min(1).float() * share.replicas, share)
        if self.kind == "pseudo":
            ref = torch.softmax(z.detach(), 1)
        else:
            with torch.no_grad():
                dims = [] if self.mirror is None else [self.mirror - 3]
                ref = torch.softmax(_reduce(teacher(x.flip(dims)), self.reduce_depth).float(), 1).flip(dims)
        conf, target = ref.max(1)
        use = unl & (conf > self.threshold)
        if share is None:
            self.last = {"pseudo_fraction": float(use.sum()) / max(1, int(unl.sum()))}
            if not use.any():
                return logits.sum() * 0
            target = torch.where(use, target, torch.full_like(target, IGNORE))
            return w * F.cross_entropy(z, target, weight=self.class_weight.to(z.device), ignore_index=IGNORE)
        counts = share.total(torch.stack([use.sum(), unl.sum()]).double())
        self.last = {"pseudo_fraction": float(counts[0] / counts[1].clamp_min(1))}
        cw = self.class_weight.to(z.device)
        target = torch.where(use, target, torch.full_like(target, IGNORE))
        nll = F.cross_entropy(z, target, weight=cw, ignore_index=IGNORE, reduction="sum")
        total_weight = share.total(cw[target.clamp(0, z.shape[1] - 1)][use].sum())
        return _whole(w * nll / total_weight.clamp_min(1e-12) * share.replicas, share)
