"""One training loop for every application: optimizer, schedule, clipping, autocast, logging,
validation, crash-safe checkpoints, exact resume and DistributedDataParallel.

Reproducibility contract: step ``s`` (1-based) draws its batch from
``batch_fn(s, generator)`` with a CPU ``torch.Generator`` seeded from ``(seed, s)``, and the
global torch RNG (dropout, random initializations inside the step) is re-seeded from
``(seed, s, rank)`` before each step. Nothing else carries randomness from one step to the
next, and optimizer, scheduler, grad-scaler and RNG states are checkpointed, so a run that is
killed (even with SIGKILL) and resumed ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from .. import log as _log
from ..atomic import append_text, atomic_write_text, make_dir
from ..errors import InputError
from .checkpoint import MANIFEST_FILE, CheckpointManager, list_checkpoints
from .device import CpuThreads, resolve_device
from .distributed import all_reduce_mean, barrier, broadcast_object, init_distributed, params_in_sync, shard_batch
from .progress import Progress

__all__ = ["TrainConfig", "Trainer", "NonFiniteLossError", "TrainingError", "step_seed",
           "step_generator", "seed_everything", "unwrap_model", "move_to_device",
           "make_optimizer", "make_scheduler", "lr_factor"]

BatchFn = Callable[[int, torch.Generator], Any]
LossFn = Callable[[nn.Module, Any], "tuple[Tensor, Mapping[str, float]] | Tensor"]
ValFn = Callable[[nn.Module], "Mapping[str, float] | None"]


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
        deterministic: ``torch.use_deterministic_algorithms`` (warn-only) during ``fit``.
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


class TrainingError(RuntimeError):
    """Training could not continue (not an input problem)."""


class NonFiniteLossError(TrainingError):
    """The loss (or, with clipping, the gradient norm) became NaN/Inf; nothing was updated.

    Attributes: ``step`` (1-based), ``value``, ``what`` (``"loss"`` or ``"gradient norm"``),
    ``checkpoint`` (the last checkpoint folder written, or ``None``).
    """

    def __init__(self, step: int, value: float, what: str = "loss",
                 checkpoint: Path | None = None, hint: str = "") -> None:
        self.step, self.value, self.what, self.checkpoint = step, value, what, checkpoint
        where = (f"; the last checkpoint is {checkpoint} (resume from it with a lower train.lr "
                 f"or a train.grad_clip)") if checkpoint else \
            "; try a lower train.lr or set train.grad_clip"
        super().__init__(f"non-finite {what} ({value}) at step {step}; training stopped before "
                         f"updating the weights{where}{hint}")


# ---------------------------------------------------------------- seeding helpers
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed derived from ``(seed, step, stream)`` (independent streams)."""
    x = _splitmix64(seed & _MASK64)
    x = _splitmix64(x ^ (step & _MASK64))
    x = _splitmix64(x ^ (stream & _MASK64))
    return x & ((1 << 63) - 1)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator the trainer passes to ``batch_fn(step, generator)``."""
    return torch.Generator().manual_seed(step_seed(seed, step, 0))


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (all devices): call before building a model."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or DataParallel) wrapper."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors (and NumPy arrays, converted) in nested tuples / lists / dicts moved to ``device``
    (other leaves kept)."""
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(np.ascontiguousarray(batch))
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


# ---------------------------------------------------------------- optimizer and schedule
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


# ---------------------------------------------------------------- RNG state
def _rng_state() -> dict[str, Any]:
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))  # type: ignore[arg-type]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [str(np_state[0]), torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def _determinism(enabled: bool, device: torch.device) -> Iterator[None]:
    if not enabled:
        yield
        return
    prev = (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled())
    prev_cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev_cudnn


def _to_float(v: Any, name: str) -> float:
    if isinstance(v, Tensor):
        if v.numel() != 1:
            raise TypeError(f"metric {name!r} must be a number or a one-element tensor, "
                            f"got a tensor of shape {tuple(v.shape)}")
        return float(v.detach().float().item())
    try:
        return float(v)
    except (TypeError, ValueError):
        raise TypeError(f"metric {name!r} must be a number, got {type(v).__name__}") from None


class Trainer:
    """Train ``model`` with ``loss_fn`` on batches from ``batch_fn``.

    Args:
        model: the module to train (moved to the device; wrapped in DistributedDataParallel
            when running under ``torchrun`` with several processes).
        config: a :class:`TrainConfig`.
        out_dir: run folder for ``metrics.jsonl`` and ``checkpoints/`` (``None``: write
            nothing, no resume). Only rank 0 writes. Check it first with
            :func:`fhcnn.config.prepare_output_dir`.
        batch_fn: ``batch_fn(step, generator) -> batch``; ``step`` is 1-based and
            ``generator`` a CPU ``torch.Generator`` seeded from ``(seed, step)``: draw ALL
            randomness of the batch from it. The batch (CPU tensors, tuples, lists or dicts
            of them, leading batch dimension) is moved to the device; under DDP each rank
            keeps its contiguous slice of the global batch.
        loss_fn: ``loss_fn(model, batch) -> (loss, {"metric": float, ...})`` or just ``loss``.
            The loss must be a *mean* over the batch (so DDP's gradient averaging equals the
            one-process gradient). ``model`` may be the DDP wrapper: call ``model(...)``
            (its ``forward``) for everything that needs gradients.
        val_fn: ``val_fn(model) -> {"metric": float, ...}`` run every ``val_every`` steps and
            at the end, in eval mode without gradients, on rank 0 (``model`` is unwrapped).
        quiet: no progress output (also none when stderr is not a terminal, except a few
            plain lines).
        shard_fn: ``shard_fn(batch) -> this process's part`` instead of :func:`shard_batch`
            over all ranks (e.g. a replica's share, then a slab of each window:
            :mod:`fhcnn.engine.parallel`).
        grad_reduce: ``grad_reduce(model)`` reduces the gradients across processes after
            ``backward`` (e.g. :func:`fhcnn.spatial.reduce_gradients`); the model is then not
            wrapped in DistributedDataParallel.
        val_all_ranks: run ``val_fn`` on every rank (a model split over processes needs them
            all); rank 0's result is used.

    After :meth:`fit`, :attr:`model` is the trained (unwrapped) model on :attr:`device`.

    Example:
        >>> import torch, tempfile
        >>> from fhcnn.training import TrainConfig, Trainer
        >>> model = torch.nn.Linear(3, 1)
        >>> def batch_fn(step, gen):
        ...     x = torch.randn(8, 3, generator=gen)
        ...     return x, x.sum(1, keepdim=True)
        >>> def loss_fn(model, batch):
        ...     x, y = batch
        ...     return torch.nn.functional.mse_loss(model(x), y), {}
        >>> cfg = TrainConfig(steps=20, lr=0.1, device="cpu", checkpoint_every=10)
        >>> t = Trainer(model, cfg, tempfile.mkdtemp(), batch_fn, loss_fn, quiet=True)
        >>> hist = t.fit()
        >>> hist["step"], hist["train"]["loss"] < 1.0
        (20, True)
    """

    def __init__(self, model: nn.Module, config: TrainConfig, out_dir: str | os.PathLike[str] | None,
                 batch_fn: BatchFn, loss_fn: LossFn, val_fn: ValFn | None = None,
                 quiet: bool = False, *, shard_fn: Callable[[Any], Any] | None = None,
                 grad_reduce: Callable[[nn.Module], None] | None = None,
                 val_all_ranks: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        for name, fn in (("batch_fn", batch_fn), ("loss_fn", loss_fn)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        if val_fn is not None and not callable(val_fn):
            raise TypeError(f"val_fn must be callable or None, got {type(val_fn).__name__}")
        self.config = config
        self.batch_fn, self.loss_fn, self.val_fn = batch_fn, loss_fn, val_fn
        self.quiet = quiet
        self.out_dir = Path(out_dir) if out_dir is not None else None
        # space-parallel runs (#17, fhcnn.engine.parallel): own sharding and gradient reduction
        self.shard_fn, self.grad_reduce, self.val_all_ranks = shard_fn, grad_reduce, val_all_ranks

        # join torchrun's process group (if any) before choosing the device
        pre = resolve_device(config.device)
        self.dist = init_distributed(pre.type)
        self.rank, self.world_size = self.dist.rank, self.dist.world_size
        self.is_main = self.dist.is_main
        self.device = resolve_device(config.device, self.dist.local_rank if self.dist.enabled else None)
        if config.autocast == "fp16" and self.device.type == "cpu":
            raise InputError("train.autocast=fp16 needs a GPU; use bf16 on the CPU")

        self._model = model.to(self.device)
        params = [p for p in self._model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = make_optimizer(params, config)
        self.scheduler = make_scheduler(self.optimizer, config)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.autocast == "fp16")
        self._wrapped: nn.Module | None = None
        self.step = 0
        self.best: dict[str, Any] | None = None
        self.last_checkpoint: Path | None = None
        self.history: dict[str, Any] = {"step": 0, "train": {}, "val": {}, "best": None}
        self.checkpoints = (CheckpointManager(self.out_dir / "checkpoints", config.keep_last,
                                              log=self._warn)
                            if self.out_dir is not None else None)
        self._progress: Progress | None = None
        self._threads: CpuThreads | None = None

    # --------------------------------------------------------------- properties
    @property
    def model(self) -> nn.Module:
        """The trained model (not wrapped by DDP)."""
        return self._model

    @property
    def metrics_path(self) -> Path | None:
        return self.out_dir / "metrics.jsonl" if self.out_dir is not None else None

    def load_best(self, which: str = "best") -> dict[str, Any]:
        """Load the best (or ``"latest"``) verified checkpoint's weights into :attr:`model`.

        Returns the checkpoint manifest. Without ``best_metric`` "best" is the latest.
        """
        if self.out_dir is None:
            raise ValueError("load_best needs an out_dir")
        from .checkpoint import load_weights

        return load_weights(self._model, self.out_dir, which)

    # --------------------------------------------------------------- output
    def _warn(self, msg: str) -> None:
        if not self.is_main:
            return
        text = f"warning: {msg}"
        if self._progress is not None:
            self._progress.write(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def _log_metrics(self, record: dict[str, Any]) -> None:
        if not self.is_main or self.metrics_path is None:
            return
        append_text(self.metrics_path, json.dumps(record, default=float) + "\n")

    def _reset_metrics_file(self, keep_until: int) -> None:
        """Keep only lines of steps <= ``keep_until`` (dropping lines written after the checkpoint
        a resumed run starts from, and a torn last line), rewritten atomically."""
        if not self.is_main or self.metrics_path is None:
            return
        kept: list[str] = []
        if keep_until > 0 and self.metrics_path.exists():
            for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and int(rec.get("step", 0)) <= keep_until:
                    kept.append(line)
        atomic_write_text(self.metrics_path, "".join(k + "\n" for k in kept))

    # --------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything except the weights needed to continue exactly (see checkpoints)."""
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"},
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "best": self.best,
            "history": {"train": self.history["train"], "val": self.history["val"]},
            "config": asdict(self.config),
            "world_size": self.world_size,
        }

    def _load_state(self, model_state: dict[str, Tensor], state: dict[str, Any]) -> None:
        self._model.load_state_dict({k: v.to(self.device) for k, v in model_state.items()})
        self.optimizer.load_state_dict(state["optimizer"])
        sched = dict(state["scheduler"])
        sched["lr_lambdas"] = [None] * len(self.optimizer.param_groups)  # ours are pure functions
        self.scheduler.load_state_dict(sched)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.best = state.get("best")
        hist = state.get("history") or {}
        self.history.update(step=self.step, train=dict(hist.get("train", {})),
                            val=dict(hist.get("val", {})), best=self.best)
        saved = state.get("config") or {}
        changed = [k for k in ("seed", "optimizer", "lr", "schedule", "warmup_steps", "weight_decay",
                               "grad_clip", "autocast")
                   if k in saved and saved[k] != getattr(self.config, k)]
        if changed:
            self._warn("resuming with changed settings " + ", ".join(
                f"train.{k}: {saved[k]!r} -> {getattr(self.config, k)!r}" for k in changed)
                + "; the result will differ from an uninterrupted run")

    def _save_checkpoint(self, metrics: dict[str, Any], best: bool = False) -> None:
        if self.checkpoints is None or not self.is_main:
            return
        best_info = dict(self.best) if best and self.best is not None else None
        self.last_checkpoint = self.checkpoints.save(self.step, self._model, self.state_dict(),
                                                     metrics, best=best_info)

    # --------------------------------------------------------------- steps
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.autocast == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.autocast == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _call_loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        out = self.loss_fn(model, batch)
        if isinstance(out, tuple):
            if len(out) != 2:
                raise TypeError("loss_fn must return loss or (loss, metrics_dict)")
            loss, metrics = out
        else:
            loss, metrics = out, {}
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise TypeError("loss_fn must return a scalar tensor loss (a mean over the batch), got "
                            + (f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor)
                               else type(loss).__name__))
        return loss.reshape(()), {k: _to_float(v, k) for k, v in dict(metrics or {}).items()}

    def _train_step(self, model: nn.Module, step: int) -> tuple[float, dict[str, float], float | None]:
        cfg = self.config
        gen = step_generator(cfg.seed, step)
        torch.manual_seed(step_seed(cfg.seed, step, 1 + self.rank))
        batch = self.batch_fn(step, gen)
        if self.shard_fn is not None:  # #17: e.g. a replica's share, then this process's slab
            batch = self.shard_fn(move_to_device(batch, torch.device("cpu")))
        elif self.world_size > 1:
            batch = shard_batch(move_to_device(batch, torch.device("cpu")), self.rank, self.world_size)
        batch = move_to_device(batch, self.device)
        with self._autocast():
            loss, metrics = self._call_loss(model, batch)
        loss_value = all_reduce_mean(loss.detach().float().reshape(1)).item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(step, loss_value, "loss", self.last_checkpoint)
        self.scaler.scale(loss).backward()
        if self.grad_reduce is not None:  # #17: instead of DistributedDataParallel's all-reduce
            self.grad_reduce(self._model)
        grad_norm = None
        if cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            grad_norm = float(norm)
            if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(step, grad_norm, "gradient norm", self.last_checkpoint)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, metrics, grad_norm

    def _validate(self) -> dict[str, float]:
        if self.val_fn is None:
            return {}
        result: dict[str, float] | None = None
        if self.is_main or self.val_all_ranks:
            was_training = self._model.training
            self._model.eval()
            try:
                with torch.no_grad():
                    raw = self.val_fn(self._model)
            finally:
                self._model.train(was_training)
            result = {k: _to_float(v, k) for k, v in dict(raw or {}).items()}
        return broadcast_object(result) or {}

    def _update_best(self, metrics: Mapping[str, float]) -> bool:
        name = self.config.best_metric
        if name is None or name not in metrics:
            return False
        value = float(metrics[name])
        if not math.isfinite(value):
            return False
        better = (self.best is None or
                  (value < self.best["value"] if self.config.best_mode == "min"
                   else value > self.best["value"]))
        if better:
            self.best = {"metric": name, "value": value, "mode": self.config.best_mode,
                         "step": self.step}
            self.history["best"] = self.best
        return better

    # --------------------------------------------------------------- fit
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to ``config.steps``; with ``resume`` continue from the latest valid checkpoint.

        Returns:
            ``{"step": int, "train": {"loss": ..., "lr": ..., <loss_fn metrics>},
            "val": {<val_fn metrics>}, "best": {"metric", "value", "mode", "step"} | None,
            "checkpoint": str | None}``: the last logged training metrics (averaged over the
            last ``log_every`` steps and all ranks) and the last validation.

        Raises:
            NonFiniteLossError: the loss became NaN/Inf (the weights are not updated by that
                step; checkpoints up to the previous ``checkpoint_every`` are intact).
            CheckpointError: ``resume`` but every checkpoint present is corrupt.
        """
        cfg = self.config
        if resume and self.out_dir is None:
            raise ValueError("resume=True needs an out_dir")
        if self.out_dir is not None and self.is_main:
            make_dir(self.out_dir)
        with _determinism(cfg.deterministic, self.device):
            if resume:
                assert self.checkpoints is not None
                ckpt = self.checkpoints.latest(map_location="cpu", max_step=None)
                if ckpt is not None:
                    self._load_state(ckpt.model_state, ckpt.state)
                    self.last_checkpoint = ckpt.path
                    if self.is_main and not self.quiet:
                        print(f"resuming from {ckpt.path} (step {self.step})", file=sys.stderr,
                              flush=True)
                elif self.is_main and not self.quiet:
                    print("resume: no checkpoint yet, starting from step 0", file=sys.stderr,
                          flush=True)
            elif self.checkpoints is not None:
                taken = self.is_main and any((p / MANIFEST_FILE).exists()
                                             for _, p in list_checkpoints(self.checkpoints.root))
                if broadcast_object(taken):  # every rank stops, none waits for the others
                    raise InputError(f"{self.checkpoints.root} holds checkpoints of another run; "
                                     f"resume it or use a new output folder")
            self._reset_metrics_file(self.step)
            barrier()
            threads = cfg.threads if self.device.type == "cpu" else None
            with CpuThreads(threads, log=_log.info if self.is_main else None) as t:
                self._threads = t
                try:
                    return self._loop()
                finally:
                    self._threads = None

    def _ddp_model(self) -> nn.Module:
        if self._wrapped is None:
            if self.dist.enabled and self.grad_reduce is None:
                from torch.nn.parallel import DistributedDataParallel as DDP

                ids = [self.device.index] if self.device.type == "cuda" else None
                self._wrapped = DDP(self._model, device_ids=ids,
                                    find_unused_parameters=self.config.find_unused_parameters)
            else:
                self._wrapped = self._model
        return self._wrapped

    def _loop(self) -> dict[str, Any]:
        cfg = self.config
        model = self._ddp_model()
        model.train()
        start = self.step
        self._progress = Progress(cfg.steps, start, quiet=self.quiet or not self.is_main)
        sums: dict[str, float] = {}
        count = 0
        t_last, step_last = time.perf_counter(), start
        val: dict[str, float] = dict(self.history.get("val") or {})
        train_avg: dict[str, float] = dict(self.history.get("train") or {})
        try:
            while self.step < cfg.steps:
                step = self.step + 1
                loss, metrics, grad_norm = self._train_step(model, step)
                if self._threads is not None:
                    self._threads.check()
                self.step = step
                sums["loss"] = sums.get("loss", 0.0) + loss
                for k, v in metrics.items():
                    if k != "loss":  # the trainer's own (rank-averaged) loss is logged as "loss"
                        sums[k] = sums.get(k, 0.0) + v
                if grad_norm is not None:
                    sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm
                count += 1
                last = step == cfg.steps
                if self.dist.enabled and (step == start + 1 or step % cfg.log_every == 0 or last) \
                        and not params_in_sync(self._model):
                    raise TrainingError(
                        f"the model's parameters differ between the {self.world_size} processes "
                        f"after step {step}: loss_fn must compute everything that needs gradients "
                        f"by calling model(...) (its forward), not unwrap_model(model) or other "
                        f"methods, so that DistributedDataParallel averages the gradients")
                if step % cfg.log_every == 0 or last:
                    names = sorted(sums)
                    local = torch.tensor([sums[k] / count for k in names], dtype=torch.float64)
                    avg = all_reduce_mean(local.to(self.device) if self.device.type == "cuda" else local)
                    train_avg = {k: float(v) for k, v in zip(names, avg.tolist())}
                    # "loss" is already averaged over ranks each step
                    train_avg["loss"] = sums["loss"] / count
                    train_avg["lr"] = self.optimizer.param_groups[0]["lr"]
                    now = time.perf_counter()
                    rate = (step - step_last) / max(now - t_last, 1e-9)
                    t_last, step_last = now, step
                    self._log_metrics({"step": step, "split": "train", **train_avg,
                                       "steps_per_s": rate, "threads": torch.get_num_threads(),
                                       "time": time.time()})
                    self.history.update(step=step, train=dict(train_avg))
                    shown = {"loss": train_avg["loss"]}
                    extra = [k for k in metrics if k != "loss"]
                    if extra:
                        shown[extra[0]] = train_avg[extra[0]]
                    if val:
                        k0 = cfg.best_metric if cfg.best_metric in val else next(iter(val))
                        shown["val_" + k0] = val[k0]
                    self._progress.update(0, **shown)
                    sums, count = {}, 0
                self._progress.update(1)
                improved = False
                if self.val_fn is not None and ((cfg.val_every and step % cfg.val_every == 0) or last):
                    val = self._validate()
                    self._log_metrics({"step": step, "split": "val", **val, "time": time.time()})
                    self.history["val"] = dict(val)
                    improved = self._update_best(val)
                    if val:
                        k0 = cfg.best_metric if cfg.best_metric in val else next(iter(val))
                        self._progress.update(0, **{"val_" + k0: val[k0]})
                periodic = cfg.checkpoint_every and step % cfg.checkpoint_every == 0
                if self.val_fn is None or cfg.best_metric not in val:
                    if (periodic or last) and cfg.best_metric in train_avg:
                        improved = self._update_best(train_avg) or improved
                if periodic or last or improved:
                    self._save_checkpoint({"train": train_avg, "val": val}, best=improved)
        finally:
            self._progress.close()
            self._progress = None
        barrier()
        self.history.update(step=self.step, train=dict(train_avg), val=dict(val), best=self.best,
                            checkpoint=str(self.last_checkpoint) if self.last_checkpoint else None)
        if self.step == start and start > 0 and self.val_fn is not None and not val:
            self.history["val"] = self._validate()
        return dict(self.history)
