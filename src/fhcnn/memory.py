"""Deterministic memory accounting: bytes that autograd keeps for the backward pass.

:func:`saved_tensor_bytes` counts every tensor packed for backward (``save_for_backward``
in custom Functions included) while a closure runs, de-duplicated by storage, so the
number is exact and independent of allocator behaviour or machine load.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["saved_tensor_bytes", "SavedTensorCounter", "tensor_bytes", "cuda_peak_bytes"]


def tensor_bytes(t: Tensor) -> int:
    """Bytes of the storage behind ``t`` (what keeping ``t`` alive costs)."""
    return t.untyped_storage().nbytes()


class SavedTensorCounter:
    """Context manager that records the storages autograd saves for backward.

    Attributes after exit: ``bytes`` (unique storages, parameters excluded unless
    ``include_parameters``), ``count`` (number of pack calls).

    Example:
        >>> import torch
        >>> w = torch.randn(3, 3, requires_grad=True)
        >>> with SavedTensorCounter() as c:
        ...     y = (torch.randn(4, 3) @ w).tanh().sum()
        >>> c.bytes > 0
        True
    """

    def __init__(self, include_parameters: bool = False) -> None:
        self.include_parameters = include_parameters
        self._storages: dict[int, int] = {}
        self.count = 0

    def _pack(self, t: Tensor) -> Tensor:
        self.count += 1
        if self.include_parameters or not isinstance(t, torch.nn.Parameter):
            if t.device.type != "meta":
                st = t.untyped_storage()
                self._storages[st.data_ptr()] = st.nbytes()
        return t

    @staticmethod
    def _unpack(t: Tensor) -> Tensor:
        return t

    @property
    def bytes(self) -> int:
        return sum(self._storages.values())

    def __enter__(self) -> "SavedTensorCounter":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


def saved_tensor_bytes(fn: Callable[[], Any], include_parameters: bool = False) -> tuple[int, Any]:
    """Run ``fn()`` and return ``(bytes saved for backward, fn's result)``."""
    with SavedTensorCounter(include_parameters) as counter:
        out = fn()
    return counter.bytes, out


def cuda_peak_bytes(fn: Callable[[], Any], device: torch.device | str | None = None) -> tuple[int, Any]:
    """Run ``fn()`` and return ``(peak CUDA memory allocated while it ran, above what was
    allocated before it, fn's result)``: ``torch.cuda.max_memory_allocated`` after a reset,
    with the device synchronized before and after. Needs CUDA. Unlike
    :func:`saved_tensor_bytes` it depends on the allocator (workspaces, transient buffers)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before, out
