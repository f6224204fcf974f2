"""The segmentation loss on sparse labels: class-weighted cross entropy plus a soft Dice term.

Unlabelled voxels (``IGNORE``) get no gradient; a class absent from a batch adds no Dice term.
Class weights ``count**-balance`` (normalized to average 1 over the present classes) keep a
rare foreground from sinking into "all background".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..options import IGNORE

__all__ = ["class_weights", "segmentation_loss", "SegmentationLoss"]


def class_weights(labels: Tensor, num_classes: int, balance: float) -> Tensor:
    """``(K,)`` weights ``count**-balance`` of the labelled voxels (0 for an absent class),
    scaled so the present classes' weights average 1."""
    counts = torch.bincount(labels[labels != IGNORE].flatten().long(), minlength=num_classes).float()
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

    def __call__(self, logits: Tensor, y: Tensor) -> Tensor:
        return segmentation_loss(logits.mean(2) if self.reduce_depth else logits, y, self.weight, self.dice)
