"""Seeds and random state: per-step seeds derived from ``(seed, step, stream)``, and the
global RNG state a checkpoint saves and a resume restores (Python, NumPy, torch, CUDA).

The trainer's reproducibility contract rests on these: step ``s`` draws its batch from a
generator seeded by :func:`step_seed` ``(seed, s)`` and re-seeds torch from ``(seed, s, rank)``,
so a killed and resumed run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any, Iterator, Mapping

import numpy as np
import torch

__all__ = ["step_seed", "step_generator", "seed_everything", "rng_state", "set_rng_state", "determinism"]


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


def rng_state() -> dict[str, Any]:
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


def set_rng_state(state: Mapping[str, Any]) -> None:
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
def determinism(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic PyTorch kernels (warn-only, cuDNN without benchmarking) while open, if
    ``enabled``; the settings found are restored on exit.

    PyTorch's ``fill_uninitialized_memory`` (on with deterministic algorithms) is turned off
    meanwhile: it writes NaN into every tensor ``torch.empty`` makes, which the kernels then
    overwrite whole: no value depends on it, and it cost about 4 % of a ``volume`` training
    step on a CPU (every activation, gradient and wavelet buffer written twice).
    """
    if not enabled:
        yield
        return
    prev = (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled())
    prev_cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.utils.deterministic.fill_uninitialized_memory = prev_fill  # type: ignore[attr-defined]
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev_cudnn
