"""Deterministic memory accounting: bytes that autograd keeps for the backward pass.

:func:`saved_tensor_bytes` counts every tensor packed for backward (``save_for_backward``
in custom Functions included) while a closure runs, de-duplicated by storage, so the
number is exact and independent of allocator behaviour or machine load.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "LiveBytesTracker",
    "SavedTensorCounter",
    "cuda_peak_bytes",
    "live_bytes_peak",
    "note_kept",
    "saved_tensor_bytes",
    "tensor_bytes",
]


def tensor_bytes(t: Tensor) -> int:
    """Bytes of the storage behind ``t`` (what keeping ``t`` alive costs).

    Raises:
        TypeError: ``t`` is not a ``torch.Tensor``.
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
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
        if (self.include_parameters or not isinstance(t, torch.nn.Parameter)) and t.device.type != "meta":
                st = t.untyped_storage()
                self._storages[st.data_ptr()] = st.nbytes()
        return t

    @staticmethod
    def _unpack(t: Tensor) -> Tensor:
        return t

    @property
    def bytes(self) -> int:
        return sum(self._storages.values())

    def __enter__(self) -> SavedTensorCounter:  # noqa: PYI034
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        _active_counters().append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _active_counters().remove(self)
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


class LiveBytesTracker:
    """Context manager that records every CPU/CUDA allocation and free made by PyTorch's
    allocators while it is active (``torch.profiler`` memory events) and replays them in
    time order: ``peak`` is the largest number of bytes live at once, above what was live
    on entry; ``timeline()`` the running total after each event.

    Unlike the resident set size this counts exactly the tensor bytes PyTorch allocates, so
    it is deterministic for a given program (single-threaded), and can be asserted in tests.
    Marks made with :meth:`mark` (``torch.profiler.record_function``) split the timeline.

    Example:
        >>> import torch
        >>> with LiveBytesTracker() as t:
        ...     y = torch.ones(1000) * 2
        ...     del y
        >>> t.peak >= 4000
        True
    """

    def __init__(self) -> None:
        self._events: list[tuple[int, int]] = []
        self._marks: list[tuple[int, str]] = []
        self._ranges: list[tuple[int, int, str]] = []

    def __enter__(self) -> LiveBytesTracker:  # noqa: PYI034
        from torch.profiler import ProfilerActivity, profile

        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._prof.__exit__(*exc)
        events = self._prof.profiler.kineto_results.events()  # type: ignore[union-attr]
        self._events = sorted((e.start_ns(), e.nbytes()) for e in events  # type: ignore[union-attr]
                              if e.name() == "[memory]")
        self._marks = sorted((e.start_ns(), e.name()[5:]) for e in events
                             if e.name().startswith("mark:"))
        self._ranges = sorted((e.start_ns(), e.end_ns(), e.name()) for e in events
                              if e.name().startswith("fhcnn."))

    @staticmethod
    def mark(name: str) -> Any:
        """A context manager marking the start of a named phase (``with tracker.mark("x"):``)."""
        return torch.profiler.record_function("mark:" + name)

    def timeline(self) -> list[tuple[int, int]]:
        """``(time in ns, live bytes above the start)`` after each allocation or free."""
        out, live = [], 0
        for t, n in self._events:
            live += n
            out.append((t, live))
        return out

    @property
    def peak(self) -> int:
        return max([0] + [v for _, v in self.timeline()])

    def marks(self) -> list[tuple[int, str]]:
        """``(time in ns, name)`` of every :meth:`mark`, in time order."""
        return list(self._marks)

    def ranges(self, prefix: str = "fhcnn.") -> list[tuple[int, int, str]]:
        """``(start ns, end ns, name)`` of the ``torch.profiler.record_function`` ranges
        whose name starts with ``prefix`` (fhcnn's reversible backward names one per step:
        ``fhcnn.backward.step:<i>``)."""
        return [r for r in self._ranges if r[2].startswith(prefix)]

    def live_at(self, t_ns: int) -> int:
        """Live bytes (above the start) just before time ``t_ns``."""
        live = 0
        for t, n in self._events:
            if t >= t_ns:
                break
            live += n
        return live


def live_bytes_peak(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Run ``fn()`` and return ``(peak bytes allocated by PyTorch at once while it ran, above
    what was allocated before it, fn's result)``; see :class:`LiveBytesTracker`."""
    with LiveBytesTracker() as t:
        out = fn()
    return t.peak, out


_LOCAL = threading.local()  # like saved_tensors_hooks, counters are per thread


def _active_counters() -> list[SavedTensorCounter]:
    if not hasattr(_LOCAL, "counters"):
        _LOCAL.counters = []
    return _LOCAL.counters


def note_kept(tensors: list[Tensor]) -> None:
    """Called by :class:`fhcnn.reversible.ReversibleFunction`, which keeps its outputs (and
    block-mode pairs) on ``ctx`` instead of ``save_for_backward`` (so backward can release
    them early): active :class:`SavedTensorCounter` s count them as saved."""
    for counter in _active_counters():
        for t in tensors:
            counter._pack(t)
