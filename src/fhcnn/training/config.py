"""The ``train:`` section of every application's config (:class:`TrainConfig`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .distributed import DEFAULT_PEER_TIMEOUT

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Settings of the training loop (the ``train:`` section of every app config).

    Attributes:
        steps: optimizer steps in total.
        lr: peak learning rate.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (with ``momentum``).
        weight_decay: L2 (adam, sgd) or decoupled (adamw) weight decay.
        momentum: SGD momentum.
        schedule: ``"constant"``, ``"cosine"`` (to 0 at ``steps``) or ``"onecycle"`` (linear
            warm-up from ``lr/25`` over ``warmup_steps``, or 30% of the run if 0, then cosine
            down to ``lr/1e4``).
        warmup_steps: linear warm-up from ``lr/warmup_steps`` (constant and cosine schedules).
        grad_clip: clip the global gradient norm to this value (``None``: no clipping).
        autocast: ``"none"``, ``"bf16"`` (CPU or GPU) or ``"fp16"`` (CUDA, with loss scaling).
        seed: seeds the batches (``(seed, step)``) and the per-step RNG.
        device: ``"auto"`` (cuda, then mps, then cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
        deterministic: ``torch.use_deterministic_algorithms`` (warn-only, new tensors not filled with
            NaN) during ``fit``.
        log_every: steps between lines in ``metrics.jsonl`` (and progress updates).
        val_every: steps between validations (``0``: only at the end; needs ``val_fn``).
        checkpoint_every: steps between checkpoints (``0``: only at the end).
        keep_last: complete checkpoints to keep (plus the best one).
        best_metric: metric that picks the best checkpoint: a ``val_fn`` key, else a training
            metric (``"loss"`` or a ``loss_fn`` key); ``None``: no best tracking.
        best_mode: ``"min"`` or ``"max"`` for ``best_metric``.
        find_unused_parameters: passed to DistributedDataParallel (set it if some parameters
            get no gradient in a step).
        threads: torch CPU threads during ``fit`` on a CPU (see
            :class:`~fhcnn.training.device.CpuThreads`): ``0`` = as many as physical cores
            not kept busy by other processes, re-checked as the load changes, and logged;
            ``N`` = exactly N; ``None`` or ``-1`` = leave torch's setting alone. The thread
            count found at the start is restored at the end.
        peer_timeout: seconds a process of a multi-process run waits for another (to join the
            group, in every collective) before the run stops with one line naming the process
            that stopped answering, the last completed step and the last intact checkpoint
            (``--resume`` continues from it). Every such wait counts: a validation or a
            checkpoint on rank 0 that takes longer needs a larger value.
    """

    steps: int = 1000
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    warmup_steps: int = 0
    grad_clip: float | None = None
    autocast: Literal["none", "bf16", "fp16"] = "none"
    seed: int = 0
    device: str = "auto"
    deterministic: bool = True
    log_every: int = 10
    val_every: int = 0
    checkpoint_every: int = 100
    keep_last: int = 3
    best_metric: str | None = None
    best_mode: Literal["min", "max"] = "min"
    find_unused_parameters: bool = False
    threads: int | None = None
    peer_timeout: float = DEFAULT_PEER_TIMEOUT

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)
        need(isinstance(self.steps, int) and self.steps >= 1, f"steps must be >= 1, got {self.steps!r}")
        need(isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0,
             f"lr must be a positive number, got {self.lr!r}")
        need(self.optimizer in ("adam", "adamw", "sgd"),
             f"optimizer must be 'adam', 'adamw' or 'sgd', got {self.optimizer!r}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}")
        need(self.schedule in ("constant", "cosine", "onecycle"),
             f"schedule must be 'constant', 'cosine' or 'onecycle', got {self.schedule!r}")
        need(isinstance(self.warmup_steps, int) and 0 <= self.warmup_steps <= self.steps,
             f"warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps!r}")
        need(self.grad_clip is None or (math.isfinite(self.grad_clip) and self.grad_clip > 0),
             f"grad_clip must be a positive number or null, got {self.grad_clip!r}")
        need(self.autocast in ("none", "bf16", "fp16"),
             f"autocast must be 'none', 'bf16' or 'fp16', got {self.autocast!r}")
        need(isinstance(self.device, str) and self.device.strip() != "",
             f"device must be a non-empty string, got {self.device!r}")
        need(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every!r}")
        need(self.val_every >= 0, f"val_every must be >= 0 (0 = only at the end), got {self.val_every!r}")
        need(self.checkpoint_every >= 0,
             f"checkpoint_every must be >= 0 (0 = only at the end), got {self.checkpoint_every!r}")
        need(self.keep_last >= 1, f"keep_last must be >= 1, got {self.keep_last!r}")
        need(self.best_mode in ("min", "max"), f"best_mode must be 'min' or 'max', got {self.best_mode!r}")
        need(self.threads is None or (isinstance(self.threads, int) and self.threads >= -1),
             f"threads must be >= 0 (0 = the free physical cores), -1 or null (torch's default), "
             f"got {self.threads!r}")
        need(isinstance(self.peer_timeout, (int, float)) and math.isfinite(self.peer_timeout)
             and self.peer_timeout > 0,
             f"peer_timeout must be a positive number of seconds, got {self.peer_timeout!r}")
