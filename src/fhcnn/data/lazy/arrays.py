"""Array-likes read on demand: what a volume reader hands out, and views of it that read only
the box asked.

* :class:`ArrayLike`: a shape, a dtype and basic slicing (``np.ndarray``, ``np.memmap``,
  ``zarr.Array``, ``h5py.Dataset``, nibabel's ``img.dataobj``, the views below).
* :func:`release_pages` and :class:`Unmapped`: memory-mapped files read without keeping their
  pages in the process's resident set.
* :class:`AxisPick`, :class:`ChannelView`, :class:`MovedAxes` (with :func:`expand_key`): an
  array-like with axes held at one index, or in another order, read on demand.
* :func:`reflect_indices` and :func:`read_window`: one window of an array-like, continued by
  reflection past its ends, read as one box.
"""

from __future__ import annotations

import mmap
from typing import Any, Protocol, Sequence

import numpy as np


class ArrayLike(Protocol):
    """What a volume reader hands out: a shape, a dtype and basic slicing."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> Any: ...

    def __getitem__(self, key: Any) -> Any: ...


def release_pages(array: Any) -> None:
    """Drop the pages of a memory-mapped array (``np.memmap``) from this process's resident set:
    written pages are flushed first, then ``madvise(MADV_DONTNEED)`` (the file's data stays in
    the page cache). Nothing for other arrays or where the platform lacks ``madvise``."""
    mm = getattr(array, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    if getattr(array, "mode", "r") != "r":
        mm.flush()
    mm.madvise(mmap.MADV_DONTNEED)


class Unmapped:
    """A memory-mapped array read by copy: every read is copied out and the mapping's pages
    released (:func:`release_pages`), so a streamed pass over a large ``.npy`` or TIFF file does
    not leave the whole file in the process's resident set."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape, self.dtype, self.ndim = tuple(array.shape), np.dtype(array.dtype), array.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        out = np.array(self.array[key], copy=True)
        release_pages(self.array)
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


class AxisPick:
    """A lazy view of an array-like with some axes held at one index (a channel, or an axis
    of length 1): ``AxisPick(a, {3: 1})[s] == a[..., 1][s]``.

    Args:
        array: any array-like.
        fixed: ``{stored axis: index}``; the other axes stay, in their order.
    """

    def __init__(self, array: ArrayLike, fixed: dict[int, int]) -> None:
        self.array = array
        self.fixed = dict(fixed)
        self.shape = tuple(int(n) for ax, n in enumerate(array.shape) if ax not in self.fixed)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = expand_key(key, self.ndim)
        it = iter(key)
        full = tuple(self.fixed[ax] if ax in self.fixed else next(it) for ax in range(len(self.array.shape)))
        return np.asarray(self.array[full])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"AxisPick({type(self.array).__name__}{tuple(self.array.shape)}, fixed={self.fixed})"


def expand_key(key: Any, ndim: int) -> tuple[Any, ...]:
    """A full tuple of ``ndim`` slices/ints from a basic index (slices, ints, one Ellipsis)."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1:]
    if len(key) > ndim:
        raise IndexError(f"{len(key)} indices for an array of {ndim} axes")
    return tuple(key) + (slice(None),) * (ndim - len(key))


class ChannelView(AxisPick):
    """Channel ``index`` of an array-like that holds its channels along ``axis``, as an array-like
    without that axis (e.g. one colour of ``(T, H, W, 3)`` frames, one channel of a ``(C, D, H, W)``
    zarr array): an :class:`AxisPick` of one axis."""

    def __init__(self, array: Any, index: int, axis: int = 0) -> None:
        super().__init__(array, {axis % len(array.shape): int(index)})
        self.index, self.axis = int(index), axis % len(array.shape)


class MovedAxes:
    """An array-like with its axes in another order, read on demand: ``MovedAxes(a, order)[key]``
    equals ``np.transpose(a, order)[key]`` for a basic index (slices and ints per axis), and
    reads only that box of ``a`` (e.g. a band-first ``(B, H, W)`` TIFF as ``(H, W, B)``)."""

    def __init__(self, array: Any, order: Sequence[int]) -> None:
        self.array, self.order = array, tuple(int(o) for o in order)
        self.shape = tuple(int(array.shape[o]) for o in self.order)
        self.dtype, self.ndim = np.dtype(array.dtype), len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = expand_key(key, self.ndim)
        stored: list[Any] = [None] * self.ndim
        for k, o in zip(key, self.order):
            stored[o] = k
        out = np.asarray(self.array[tuple(stored)])
        kept = [o for k, o in zip(key, self.order) if isinstance(k, slice)]  # in this view's order
        return out.transpose([sorted(kept).index(o) for o in kept])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def reflect_indices(start: int, length: int, n: int) -> np.ndarray:
    """Indices ``start .. start+length-1`` folded into ``[0, n)`` by reflection (no edge repeat,
    like ``numpy.pad(mode="reflect")``, for any overshoot)."""
    idx = np.arange(start, start + length, dtype=np.int64)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * n - 2
    idx = np.remainder(idx, period)
    return np.where(idx >= n, period - idx, idx)


def read_window(array: ArrayLike, starts: Sequence[int], sizes: Sequence[int], lead: int = 0) -> np.ndarray:
    """The window of ``array`` at ``starts`` with ``sizes`` along its last ``len(starts)`` axes
    (the first ``lead`` axes are read whole), continued by reflection past the ends.

    Reads one box: the window's own box when it lies inside, else the smallest box holding
    its reflected indices (never more than the window's extent per axis).
    """
    shape = tuple(int(n) for n in array.shape)
    nd = len(starts)
    if len(shape) != lead + nd:
        raise ValueError(f"array of shape {shape} has no {nd} window axes after {lead} leading axes")
    box: list[slice] = [slice(None)] * lead
    picks: list[np.ndarray | None] = []
    for s, w, n in zip(starts, sizes, shape[lead:]):
        s, w = int(s), int(w)
        if 0 <= s and s + w <= n:
            box.append(slice(s, s + w))
            picks.append(None)
        else:
            idx = reflect_indices(s, w, n)
            lo, hi = int(idx.min()), int(idx.max()) + 1
            box.append(slice(lo, hi))
            picks.append(idx - lo)
    out = np.asarray(array[tuple(box)])
    for k, pick in enumerate(picks):
        if pick is not None:
            out = np.take(out, pick, axis=lead + k)
    return out
