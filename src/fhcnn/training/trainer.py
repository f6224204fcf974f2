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
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from .. import log as _log
from ..atomic import append_text, atomic_write_text, make_dir
from ..errors import InputError
from .checkpoint import MANIFEST_FILE, CheckpointManager, list_checkpoints
from .config import TrainConfig
from .device import CpuThreads, move_to_device, resolve_device
from .distributed import (
    all_reduce_mean,
    barrier,
    broadcast_object,
    init_distributed,
    note_progress,
    params_in_sync,
    peer_failure,
    shard_batch,
)
from .optim import make_optimizer, make_scheduler
from .progress import Progress
from .seeding import determinism, rng_state, set_rng_state, step_generator, step_seed

__all__ = ["Trainer", "NonFiniteLossError", "TrainingError"]

BatchFn = Callable[[int, torch.Generator], Any]
LossFn = Callable[[nn.Module, Any], "tuple[Tensor, Mapping[str, float]] | Tensor"]
ValFn = Callable[[nn.Module], "Mapping[str, float] | None"]


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
            (its ``forward``) for everything that needs gradients. A metric that is NaN or
            infinite at a step was not measured there: the logged value is the mean over the
            steps (and processes) that measured it, ``null`` in ``metrics.jsonl`` if none did.
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
        reports_progress: whether a lost process's message (:class:`~fhcnn.training.PeerLostError`)
            names this training's last step and checkpoints; ``False`` for a side training of a
            run that writes no checkpoints (a baseline), so the message names the run's own.

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
                 val_all_ranks: bool = False, reports_progress: bool = True) -> None:
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
        self.quiet, self.reports_progress = quiet, reports_progress
        self.out_dir = Path(out_dir) if out_dir is not None else None
        # space-parallel runs (#17, fhcnn.engine.parallel): own sharding and gradient reduction
        self.shard_fn, self.grad_reduce, self.val_all_ranks = shard_fn, grad_reduce, val_all_ranks

        # join torchrun's process group (if any) before choosing the device
        pre = resolve_device(config.device)
        self.dist = init_distributed(pre.type, float(config.peer_timeout))
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
        # the steps since the last metrics.jsonl line (sums and counts of their metrics): kept in
        # checkpoints, so that the first line after a resume averages the same steps as it would
        # have in an uninterrupted run
        self._window: dict[str, Any] = {"sums": {}, "counts": {}, "count": 0}
        self._threads: CpuThreads | None = None
        # training time of the run: the seconds of the steps before this process (from the
        # checkpoint resumed) plus those of this process's loop (validation excluded)
        self._time_before = 0.0
        self._time_start: float | None = None

    # --------------------------------------------------------------- properties
    @property
    def model(self) -> nn.Module:
        """The trained model (not wrapped by DDP)."""
        return self._model

    @property
    def train_time_s(self) -> float:
        """Seconds of training of the whole run so far: the time its checkpoint had counted
        when this process resumed it (so a killed and resumed run reports about what an
        uninterrupted one does, not only its own part) plus this process's training loop,
        validation excluded. Frozen when :meth:`fit` returns."""
        if self._time_start is None:
            return self._time_before
        return self._time_before + time.perf_counter() - self._time_start

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
        # strict JSON: a metric no step of the window measured (NaN) is written as null
        record = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
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
            "train_time_s": self.train_time_s,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"},
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "best": self.best,
            "history": {"train": self.history["train"], "val": self.history["val"]},
            "config": asdict(self.config),
            "world_size": self.world_size,
            # a loss with a state of its own (e.g. a mean teacher): ``loss_fn.state_dict()``
            "loss_fn": self.loss_fn.state_dict() if hasattr(self.loss_fn, "state_dict") else {},
            "log_window": {"sums": dict(self._window["sums"]), "counts": dict(self._window["counts"]),
                           "count": int(self._window["count"])},
        }

    def _load_state(self, model_state: dict[str, Tensor], state: dict[str, Any]) -> None:
        self._model.load_state_dict({k: v.to(self.device) for k, v in model_state.items()})
        self.optimizer.load_state_dict(state["optimizer"])
        sched = dict(state["scheduler"])
        sched["lr_lambdas"] = [None] * len(self.optimizer.param_groups)  # ours are pure functions
        self.scheduler.load_state_dict(sched)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        if state.get("loss_fn") and hasattr(self.loss_fn, "load_state_dict"):
            self.loss_fn.load_state_dict(state["loss_fn"])
        self.step = int(state["step"])
        self._time_before = float(state.get("train_time_s") or 0.0)  # absent in older checkpoints
        window = state.get("log_window") or {}  # absent in checkpoints of older versions
        self._window = {"sums": {str(k): float(v) for k, v in dict(window.get("sums") or {}).items()},
                        "counts": {str(k): int(v) for k, v in dict(window.get("counts") or {}).items()},
                        "count": int(window.get("count") or 0)}
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

    @contextlib.contextmanager
    def _not_timed(self) -> Iterator[None]:
        """Keep the time of the block (a validation) out of :attr:`train_time_s`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self._time_start is not None:
                self._time_start += time.perf_counter() - t0

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
            "checkpoint": str | None, "train_time_s": float}``: the last logged training
            metrics (averaged over the last ``log_every`` steps and all ranks), the last
            validation, and :attr:`train_time_s` (the whole run's, a resumed one's included).

        Raises:
            NonFiniteLossError: the loss became NaN/Inf (the weights are not updated by that
                step; checkpoints up to the previous ``checkpoint_every`` are intact).
            CheckpointError: ``resume`` but every checkpoint present is corrupt.
            PeerLostError: another process of a multi-process run stopped answering within
                ``peer_timeout`` or disappeared (the message names it, the last completed step
                and the last intact checkpoint).
        """
        try:
            return self._fit(resume)
        except Exception as e:
            lost = peer_failure(e) if self.dist.enabled else None
            if lost is None or lost is e:
                raise
            raise lost from e

    def _note(self, step: int, new_run: bool = False) -> None:
        """Record this training's progress for the message of a lost process (its last completed
        step and, from a new run, its checkpoints folder), unless it does not report progress: a
        side training of a run (a baseline, no checkpoints) leaves the run's own record, so the
        message names the run's last intact checkpoint, not "no checkpoint was written yet"."""
        if self.reports_progress:
            note_progress(step, self.checkpoints.root if self.checkpoints is not None else None, new_run=new_run)

    def _fit(self, resume: bool) -> dict[str, Any]:
        cfg = self.config
        if resume and self.out_dir is None:
            raise ValueError("resume=True needs an out_dir")
        if self.out_dir is not None and self.is_main:
            make_dir(self.out_dir)
        self._note(0, new_run=True)
        with determinism(cfg.deterministic, self.device):
            if resume:
                assert self.checkpoints is not None
                ckpt = self.checkpoints.latest(map_location="cpu", max_step=None)
                if ckpt is not None:
                    self._load_state(ckpt.model_state, ckpt.state)
                    self.last_checkpoint = ckpt.path
                    self._note(self.step)
                    if self.is_main and not self.quiet:
                        was = int(ckpt.state.get("world_size", self.world_size))
                        moved = (f"; written by {was} process{'es' if was > 1 else ''}, continued on "
                                 f"{self.world_size}" if was != self.world_size else "")
                        print(f"resuming from {ckpt.path} (step {self.step}{moved})", file=sys.stderr,
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
        # a resumed run continues the window of steps its checkpoint had not logged yet
        sums: dict[str, float] = dict(self._window["sums"])
        counts: dict[str, int] = dict(self._window["counts"])
        count = int(self._window["count"])
        t_last, step_last = time.perf_counter(), start
        self._time_start = t_last
        val: dict[str, float] = dict(self.history.get("val") or {})
        train_avg: dict[str, float] = dict(self.history.get("train") or {})
        try:
            while self.step < cfg.steps:
                step = self.step + 1
                loss, metrics, grad_norm = self._train_step(model, step)
                if self._threads is not None:
                    self._threads.check()
                self.step = step
                self._note(step)
                sums["loss"] = sums.get("loss", 0.0) + loss
                # a metric is averaged over the steps (and processes) that measured it: a NaN or
                # infinite value is a step that did not (e.g. a loss term that starts later)
                step_values = {k: v for k, v in metrics.items() if k != "loss"}  # "loss": the trainer's
                if grad_norm is not None:
                    step_values["grad_norm"] = grad_norm
                for k, v in step_values.items():
                    measured = math.isfinite(v)
                    sums[k] = sums.get(k, 0.0) + (v if measured else 0.0)
                    counts[k] = counts.get(k, 0) + measured
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
                    names = sorted(counts)
                    local = torch.tensor([sums[k] for k in names] + [counts[k] for k in names], dtype=torch.float64)
                    avg = all_reduce_mean(local.to(self.device) if self.device.type == "cuda" else local).tolist()
                    n = len(names)
                    train_avg = {k: avg[i] / avg[n + i] if avg[n + i] else math.nan for i, k in enumerate(names)}
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
                    sums, counts, count = {}, {}, 0
                self._progress.update(1)
                improved = False
                if self.val_fn is not None and ((cfg.val_every and step % cfg.val_every == 0) or last):
                    with self._not_timed():
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
                    self._window = {"sums": dict(sums), "counts": dict(counts), "count": count}
                    self._save_checkpoint({"train": train_avg, "val": val}, best=improved)
        finally:
            self._progress.close()
            self._progress = None
            self._time_before, self._time_start = self.train_time_s, None
        barrier()
        self.history.update(step=self.step, train=dict(train_avg), val=dict(val), best=self.best,
                            checkpoint=str(self.last_checkpoint) if self.last_checkpoint else None,
                            train_time_s=self.train_time_s)
        if self.step == start and start > 0 and self.val_fn is not None and not val:
            self.history["val"] = self._validate()
        return dict(self.history)
