"""The optimizer and the learning-rate schedule of a :class:`~fhcnn.training.config.TrainConfig`."""

from __future__ import annotations

import math
from typing import Any

import torch

from .config import TrainConfig

__all__ = ["make_optimizer", "make_scheduler", "lr_factor"]


def make_optimizer(params: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based count of finished steps)."""
    total, warm = cfg.steps, cfg.warmup_steps
    if cfg.schedule == "onecycle":
        warm = warm or max(1, int(0.3 * total))
        start, end = 1 / 25, 1e-4
        if step < warm:
            return start + (1 - start) * step / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "cosine":
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


class _LRLambda:
    """Picklable schedule function (so LambdaLR's state_dict stays plain)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def __call__(self, step: int) -> float:
        return lr_factor(self.cfg, step)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _LRLambda(cfg))
