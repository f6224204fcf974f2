"""Volumes read by window, never whole: the one reader every dense run trains and predicts from.

An *array-like* is anything with ``.shape``, ``.dtype`` and ``__getitem__`` on a tuple of
slices that returns a numpy array: ``np.ndarray``, ``np.memmap`` (``.npy`` opened with
``mmap_mode="r"``), ``zarr.Array``, ``h5py.Dataset``, nibabel's ``img.dataobj``, or a view of
:mod:`fhcnn.data.volumes`. Only basic slices (step 1) are asked of it, so what a read costs is
what its box holds.

* :class:`LazyVolume`: a ``(C, D, H, W)`` volume over ``C`` array-likes of shape ``(D, H, W)``
  (a volume held in memory is the same object over an ``ndarray``), read by box or by window
  continued by reflection past its ends (``numpy.pad(mode="reflect")``).
* :func:`iter_slabs`: the boxes of a bounded-memory pass over an array, in storage order.
* :class:`PassShare`: the slabs one process of several reads in a pass they make together
  (``torchrun``): each reads a contiguous block, and every process gets the result of the whole
  pass, equal to one process's.
* :func:`stream_stats`: mean, standard deviation, range and NaN count, streamed by slabs.
* :func:`scan_labels`: one streamed pass over a label volume: every value checked, class counts,
  labelled voxels per slice of every axis, and a capped sample of labelled positions per class.
* :func:`copy_to_zarr`: a chunked copy of a slow-to-slice array in one pass.

Example:
    >>> v = LazyVolume.from_array(np.arange(2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 4, 5, 6))
    >>> v.shape, v.window((-1, 0, 4), (3, 2, 4)).shape
    ((2, 4, 5, 6), (2, 3, 2, 4))
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from .. import atomic
from ..errors import InputError

__all__ = ["MovedAxes", "StagedCopy", "staged_copies", "remove_stale_staged", "AxisPick", "expand_key",
           "ChannelView", "Moments",
           "Standardized", "float32_safe", "standardize_channels",
           "ArrayLike", "LazyVolume", "StreamStats", "LabelScan", "Unmapped", "release_pages",
           "reflect_indices", "read_window", "iter_slabs", "whole_slabs", "stream_stats", "scan_labels", "copy_to_zarr",
           "chunk_boxes", "storage_order",
           "PassShare", "ONE_PROCESS",
           "SLAB_BYTES", "MAX_POINTS"]

#: Bytes of one streamed read (statistics, label scans, copies) in float64: the reader's memory
#: bound (a pass holds a few such buffers).
SLAB_BYTES = 16 * 2**20
#: Labelled positions kept per class for window sampling (an evenly strided sample beyond).
MAX_POINTS = 1 << 20


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


def whole_slabs(shape: Sequence[int], itemsize: int, max_bytes: int = SLAB_BYTES) -> list[slice]:
    """Slices along axis 0 of an array of ``shape``, every other axis whole, each at most
    ``max_bytes`` at ``itemsize`` bytes per element but never less than one slice (unlike
    :func:`iter_slabs`, which cuts a slice larger than the budget)."""
    n = int(shape[0])
    per_slice = max(1, int(itemsize) * int(np.prod([int(k) for k in shape[1:]], dtype=np.int64)))
    step = max(1, int(max_bytes) // per_slice)
    return [slice(z, min(n, z + step)) for z in range(0, n, step)]


def storage_order(shape: Sequence[int], axis: int | Sequence[int]) -> list[int]:
    """Every axis of ``shape``, slowest first, for a pass in storage order along ``axis``: an
    axis (the others by their distance from it, the nearest first: C order for ``axis=0``,
    Fortran order for the last axis), or the whole order itself (e.g. ``(2, 0, 1)`` for a
    band-first ``(B, H, W)`` file read as ``(H, W, B)``)."""
    nd = len(shape)
    if isinstance(axis, (int, np.integer)):
        if not 0 <= axis < nd:
            raise ValueError(f"axis {axis} is outside the {nd} axes of shape {tuple(shape)}")
        return [int(axis)] + sorted((a for a in range(nd) if a != axis), key=lambda a: abs(a - axis))
    order = [int(a) for a in axis]
    if sorted(order) != list(range(nd)):
        raise ValueError(f"axis order {tuple(order)} is not an order of the {nd} axes of shape {tuple(shape)}")
    return order


def iter_slabs(shape: Sequence[int], itemsize: int, max_bytes: int = SLAB_BYTES,
               axis: int | Sequence[int] = 0) -> Iterator[tuple[slice, ...]]:
    """Boxes covering an array of ``shape`` in storage order, each at most ``max_bytes`` (at
    ``itemsize`` bytes per element) but never less than one element: the boxes of
    :func:`chunk_boxes` with chunks of one element.

    Slabs are whole slices along ``axis``, several at a time; when one slice is larger than
    ``max_bytes`` it is cut along the other axes too, the nearest to ``axis`` first (for
    ``axis=0`` of a 3D array rows of axis 1, for ``axis=2`` rows of axis 1), or in the order
    given (``axis`` a sequence of every axis, slowest first: :func:`storage_order`).
    """
    yield from chunk_boxes(shape, [1] * len(shape), itemsize, max_bytes, axis)


@dataclass(frozen=True)
class PassShare:
    """One process's share of a streamed pass (statistics, label scan) that several processes
    make together: of the pass's ``n`` slabs, process ``rank`` of ``processes`` reads the
    contiguous block :meth:`block`; ``gather`` hands every process's partial result, in rank
    order, to every process (e.g. ``torch.distributed.all_gather_object``), which merges them
    in slab order: the result is the one process's, bit for bit. The default is one process.
    """

    rank: int = 0
    processes: int = 1
    gather: Callable[[Any], list[Any]] | None = None

    def block(self, n: int) -> range:
        """This process's slabs of ``n``."""
        return range(n * self.rank // self.processes, n * (self.rank + 1) // self.processes)

    def combine(self, part: Any) -> list[Any]:
        """Every process's ``part``, in rank order."""
        if self.processes == 1:
            return [part]
        assert self.gather is not None, "a pass shared by several processes needs gather"
        return self.gather(part)


ONE_PROCESS = PassShare()


@dataclass(frozen=True)
class StreamStats:
    """Statistics of the finite voxels of one channel.

    Attributes:
        count: finite voxels.
        mean, std: over the finite voxels (population std), float64 accumulation.
        min, max: over the finite voxels (``nan`` when there are none).
        nonfinite: NaN and inf voxels.
        first_nonfinite: the position of one of them (the first slab's first), or ``None``.
    """

    count: int
    mean: float
    std: float
    min: float
    max: float
    nonfinite: int = 0
    first_nonfinite: tuple[int, ...] | None = None

    @property
    def finite(self) -> bool:
        return self.nonfinite == 0


#: Windows are read as float32 (24 significant bits). A channel whose values lie more than this
#: many standard deviations from zero (a large offset: float64 ``1e9 + noise``, int64 counts near
#: ``2**40``) would lose its contrast in that cast, and is standardized in float64 first.
FLOAT32_SPREAD = 2.0**12
#: Magnitudes beyond this (float32 ends near 3.4e38; the augmentation scales values further) or
#: standard deviations below ``FLOAT32_TINY`` (subnormal float32) are standardized too.
FLOAT32_HUGE = 1e30
FLOAT32_TINY = 1e-30
#: Magnitudes beyond this overflow the float64 statistics (squares past 1e308): refused.
FLOAT64_HUGE = 1e150


class Standardized:
    """A ``(D, H, W)`` channel read as float32 ``(x - offset) / scale``, computed in float64, so
    that the float32 windows keep the contrast of a float64 or 64-bit integer volume."""

    def __init__(self, array: Any, offset: float, scale: float) -> None:
        self.array, self.offset, self.scale = array, float(offset), float(scale)
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(np.float32)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        x = np.asarray(self.array[key], dtype=np.float64)
        return ((x - self.offset) / self.scale).astype(np.float32)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def stats(self, s: StreamStats) -> StreamStats:
        """The statistics of this view from those ``s`` of the stored channel."""
        def f(v: float) -> float:
            return (v - self.offset) / self.scale

        return StreamStats(s.count, f(s.mean), s.std / self.scale, f(s.min), f(s.max), s.nonfinite, s.first_nonfinite)


def float32_safe(s: StreamStats) -> bool:
    """Whether a channel of statistics ``s`` keeps its contrast when read as float32 (see
    :data:`FLOAT32_SPREAD`); a channel with NaN or infinite values is refused elsewhere."""
    if not s.finite or s.count == 0:
        return True
    big = max(abs(s.min), abs(s.max))
    if big > FLOAT32_HUGE:
        return False
    if s.std == 0:
        return True
    return s.std >= FLOAT32_TINY and big <= FLOAT32_SPREAD * s.std


def standardize_channels(channels: Sequence[Any], stats: Sequence[StreamStats],
                         names: Sequence[str] | None = None) -> tuple[list[Any], list[StreamStats]]:
    """The channels with every one that is not :func:`float32_safe` read through
    :class:`Standardized` (offset its mean, scale its standard deviation, or 1 for a channel of
    one value), and the statistics of what is then read (the others unchanged).

    Raises:
        InputError: a channel with values beyond :data:`FLOAT64_HUGE` (its statistics overflow).
    """
    out, out_stats = [], []
    for i, (c, s) in enumerate(zip(channels, stats)):
        big = max(abs(s.min), abs(s.max)) if s.count else 0.0
        if s.finite and big > FLOAT64_HUGE:
            name = names[i] if names else f"channel {i}"
            raise InputError(f"{name} holds values up to {big:.3g}: beyond {FLOAT64_HUGE:.0e} its "
                             f"statistics overflow float64; rescale it first")
        if np.dtype(c.dtype).itemsize > 2 and not float32_safe(s):
            view = Standardized(c, s.mean, s.std if s.std > 0 else 1.0)
            out.append(view)
            out_stats.append(view.stats(s))
        else:
            out.append(c)
            out_stats.append(s)
    return out, out_stats


class Moments:
    """Count, mean and sum of squared deviations merged slab by slab (Chan et al.): over every
    value, or per band (``per_band``: one value per entry of the last axis)."""

    def __init__(self) -> None:
        self.n: int = 0
        self.mean: Any = 0.0
        self.m2: Any = 0.0

    def add(self, x: np.ndarray, per_band: bool = False) -> None:
        if per_band:
            x = x.reshape(-1, x.shape[-1])
        k = x.shape[0] if per_band else x.size
        if k == 0:
            return
        mb = x.mean(0) if per_band else x.mean()
        m2b = np.square(x - mb).sum(0) if per_band else np.square(x - mb).sum()
        self.add_part(k, mb, m2b)

    def add_part(self, k: int, mb: Any, m2b: Any) -> None:
        """Merge the count, mean and sum of squared deviations of ``k`` more values."""
        if k == 0:
            return
        tot = self.n + k
        delta = mb - self.mean
        self.mean = self.mean + delta * k / tot
        self.m2 = self.m2 + (m2b + delta * delta * self.n * k / tot)
        self.n = tot

    @property
    def std(self) -> Any:
        """Population standard deviation."""
        return np.sqrt(self.m2 / max(self.n, 1))


def stream_stats(array: ArrayLike, max_bytes: int = SLAB_BYTES, slab_axis: int = 0,
                 share: PassShare = ONE_PROCESS) -> StreamStats:
    """Mean, std, min, max and NaN/inf count of an array-like, read slab by slab.

    Slabs hold at most ``max_bytes`` of float64 (the working copy); per-slab means and sums of
    squared deviations are merged exactly (Chan et al.) in slab order, so the result equals the
    whole-array float64 computation to rounding. With ``share``, this process reads only its
    block of the slabs and the result is the same as one process's, bit for bit.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # values past FLOAT64_HUGE: refused by their max
        return _stream_stats(array, max_bytes, slab_axis, share)


def _stream_stats(array: ArrayLike, max_bytes: int, slab_axis: int, share: PassShare) -> StreamStats:
    boxes = list(iter_slabs(array.shape, 8, max_bytes, slab_axis))
    floating = np.dtype(array.dtype).kind in "fc"
    parts = []
    for i in share.block(len(boxes)):
        box = boxes[i]
        x = np.asarray(array[box], dtype=np.float64)
        nb, first = 0, None
        if floating:
            ok = np.isfinite(x)
            nb = int(x.size - np.count_nonzero(ok))
            if nb:
                where = np.argwhere(~ok)[0]
                first = tuple(int(w + s.start) for w, s in zip(where, box))
                x = x[ok]
        if x.size == 0:
            parts.append((0, 0.0, 0.0, math.inf, -math.inf, nb, first))
            continue
        mb = x.mean()
        parts.append((x.size, mb, np.square(x - mb).sum(), float(x.min()), float(x.max()), nb, first))
    moments = Moments()
    lo, hi = math.inf, -math.inf
    bad, first_bad = 0, None
    for k, mb, m2b, plo, phi, nb, first in (p for part in share.combine(parts) for p in part):
        bad += nb
        first_bad = first_bad if first_bad is not None else first
        if k:
            moments.add_part(k, mb, m2b)
            lo, hi = min(lo, plo), max(hi, phi)
    if moments.n == 0:
        return StreamStats(0, math.nan, math.nan, math.nan, math.nan, bad, first_bad)
    return StreamStats(moments.n, float(moments.mean), float(moments.std), lo, hi, bad, first_bad)


class LazyVolume:
    """A ``(C, D, H, W)`` volume over ``C`` array-likes of shape ``(D, H, W)``, read by box or
    window as float32; nothing is read until asked.

    Args:
        channels: one array-like ``(D, H, W)`` per channel, all of the same shape.
        coords: append two channels holding each voxel's normalized ``h`` and ``w`` position
            (``-1`` to ``1``, ``torch.linspace``), computed, not stored.
        names: optional channel names (for messages).
        slab_axes: per channel, the axis its storage reads fastest by slab (streamed passes go
            along it; e.g. 2 for a NIfTI file); default 0.

    Raises:
        ValueError: no channel, a channel that is not 3D, or channels of different shapes.
    """

    def __init__(self, channels: Sequence[ArrayLike], coords: bool = False,
                 names: Sequence[str] | None = None, slab_axes: Sequence[int] | None = None) -> None:
        if not channels:
            raise ValueError("a volume needs at least one channel")
        shapes = {tuple(int(n) for n in c.shape) for c in channels}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise ValueError(f"every channel must be (D, H, W) of one shape, got {sorted(shapes)}")
        self.channels = list(channels)
        self.coords = bool(coords)
        self.names = list(names) if names is not None else [f"channel {i}" for i in range(len(channels))]
        self.slab_axes = list(slab_axes) if slab_axes is not None else [0] * len(self.channels)
        self._coord_axes: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_array(cls, volume: Any, coords: bool = False) -> LazyVolume:
        """A volume held in memory: ``(C, D, H, W)`` ndarray or tensor (no copy of an ndarray)."""
        a = volume.detach().cpu().numpy() if hasattr(volume, "detach") else np.asarray(volume)
        if a.ndim != 4:
            raise ValueError(f"volume must have shape (C, D, H, W), got {tuple(a.shape)}")
        return cls(list(a), coords=coords)

    def with_coords(self, coords: bool) -> LazyVolume:
        """The same channels, with or without the coordinate channels."""
        if coords == self.coords:
            return self
        return LazyVolume(self.channels, coords=coords, names=self.names, slab_axes=self.slab_axes)

    @property
    def data_channels(self) -> int:
        """Channels read from the arrays (without the coordinate channels)."""
        return len(self.channels)

    @property
    def spatial(self) -> tuple[int, int, int]:
        d, h, w = (int(n) for n in self.channels[0].shape)
        return d, h, w

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.data_channels + (2 if self.coords else 0), *self.spatial)

    def _coordinates(self, rows: np.ndarray, cols: np.ndarray, depth: int) -> np.ndarray:
        if self._coord_axes is None:
            import torch

            _, h, w = self.spatial
            self._coord_axes = (torch.linspace(-1, 1, h).numpy(), torch.linspace(-1, 1, w).numpy())
        ys, xs = self._coord_axes
        out = np.empty((2, depth, len(rows), len(cols)), np.float32)
        out[0] = ys[rows][None, :, None]
        out[1] = xs[cols][None, None, :]
        return out

    def read(self, box: Sequence[slice]) -> np.ndarray:
        """``(C, d, h, w)`` float32 of the box ``(slice_d, slice_h, slice_w)`` (inside the volume)."""
        key = tuple(box) + (slice(None),) * (3 - len(box))
        data = [np.asarray(c[key], dtype=np.float32) for c in self.channels]
        if self.coords:
            _, h, w = self.spatial
            (r0, r1, _), (c0, c1, _) = key[1].indices(h), key[2].indices(w)
            data.extend(self._coordinates(np.arange(r0, r1), np.arange(c0, c1), data[0].shape[0]))
        return np.stack(data)

    def window(self, starts: Sequence[int], sizes: Sequence[int]) -> np.ndarray:
        """``(C, *sizes)`` float32 window at ``starts`` (may be negative or run past the end),
        the volume continued by reflection (see :func:`read_window`)."""
        data = [read_window(c, starts, sizes).astype(np.float32, copy=False) for c in self.channels]
        if self.coords:
            _, h, w = self.spatial
            data.extend(self._coordinates(reflect_indices(starts[1], sizes[1], h),
                                          reflect_indices(starts[2], sizes[2], w), int(sizes[0])))
        return np.stack(data)

    def channel_stats(self, max_bytes: int = SLAB_BYTES, share: PassShare = ONE_PROCESS) -> list[StreamStats]:
        """:func:`stream_stats` of every data channel (along its slab axis)."""
        return [stream_stats(c, max_bytes, a, share) for c, a in zip(self.channels, self.slab_axes)]


@dataclass
class LabelScan:
    """What one streamed pass over a label volume found.

    Attributes:
        counts: ``(limit,)`` int64 labelled voxels of each class value.
        unlabelled: voxels equal to the ignore value.
        per_slice: for each axis, the labelled voxels of each slice along it (int64 arrays).
        positions: for each class ``c`` in ``0 .. max``, an ``(n_c, ndim)`` int32 array of
            labelled positions in scan order: all of them while there are at most
            ``max_points``, else every ``s``-th of the class within each slab of the pass (the
            first of the slab included), ``s`` the smallest power of two that brings them under it
            (or, where more slabs than ``max_points`` hold the class, that keeps one a slab).
    """

    counts: np.ndarray
    unlabelled: int
    per_slice: list[np.ndarray]
    positions: list[np.ndarray]

    def classes(self) -> list[int]:
        """Class values with at least one voxel."""
        return np.flatnonzero(self.counts).tolist()

    def labelled_slices(self, axis: int) -> list[int]:
        """Slices along ``axis`` holding at least one labelled voxel."""
        return [int(i) for i in np.flatnonzero(self.per_slice[axis])]


def _first(bad: np.ndarray, x: np.ndarray, box: Sequence[slice]) -> tuple[tuple[int, ...], Any]:
    where = np.argwhere(bad)[0]
    v = x[tuple(where)]
    return tuple(int(w + s.start) for w, s in zip(where, box)), (v.item() if hasattr(v, "item") else v)


def unlabelled(x: np.ndarray, ignore: int) -> np.ndarray:
    """The voxels of a block ``x`` of labels that are unlabelled: equal to ``ignore``, or NaN
    in float labels (as the label maps and masks of the other commands read it)."""
    out = x == ignore
    if x.dtype.kind == "f":
        out |= np.isnan(x)
    return np.asarray(out)


def scan_labels(labels: ArrayLike, ignore: int = 255, *, limit: int = 256, max_points: int = MAX_POINTS,
                max_bytes: int = SLAB_BYTES, slab_axis: int = 0, what: str = "labels",
                share: PassShare = ONE_PROCESS) -> LabelScan:
    """Check and scan an integer label array-like (any number of axes) in one pass of slabs of
    at most ``max_bytes``.

    Args:
        labels: integer, bool or float (integral values) labels.
        ignore: the value of unlabelled voxels.
        limit: class values run ``0 .. limit - 1``.
        max_points: labelled positions kept per class (see :class:`LabelScan`).
        what: the name in messages (``"labels x.nii.gz"``).
        share: this process's share of a pass several processes make (:class:`PassShare`); the
            scan, and the first bad value refused, are those of one process.

    Raises:
        InputError: a value that is neither a class nor ``ignore`` (a negative, a non-integer, a
            NaN, one of ``limit`` or more), naming it and its position (the first in slab order).
    """
    shape = tuple(int(n) for n in labels.shape)
    boxes = list(iter_slabs(shape, 8, max_bytes, slab_axis))
    part = _scan_slabs(labels, boxes, share.block(len(boxes)), ignore, limit, max_points, what)
    return _merge_scans(share.combine(part), shape, limit, max_points)


@dataclass
class _ScanPart:
    """What one process's block of slabs holds: the sums of :class:`LabelScan`, the kept positions
    of each class per slab (``(slab, positions)``, every ``stride[c]``-th labelled voxel of the
    class within the slab, in scan order) and the first refused value (``(slab, message)``)."""

    counts: np.ndarray
    unlabelled: int
    per: list[np.ndarray]
    kept: list[list[tuple[int, np.ndarray]]]
    stride: np.ndarray
    error: tuple[int, str] | None = None


def _scan_slabs(labels: ArrayLike, boxes: Sequence[tuple[slice, ...]], block: range, ignore: int, limit: int,
                max_points: int, what: str) -> _ScanPart:
    shape = tuple(int(n) for n in labels.shape)
    nd = len(shape)
    part = _ScanPart(np.zeros(limit, np.int64), 0, [np.zeros(n, np.int64) for n in shape],
                     [[] for _ in range(limit)], np.ones(limit, np.int64))
    n_kept = np.zeros(limit, np.int64)
    floating = np.dtype(labels.dtype).kind == "f"
    for i in block:
        box = boxes[i]
        x = np.asarray(labels[box])
        if x.dtype == bool:
            x = x.view(np.uint8)
        if floating:
            bad = np.isinf(x) | (np.isfinite(x) & (x != np.round(x)))
            if bad.any():
                pos, v = _first(bad, x, box)
                part.error = (i, f"{what} hold the value {v} at voxel {pos}: labels are integers (classes 0, 1, "
                                 f"... and --ignore {ignore} or NaN; floats with integral values are accepted)")
                break
        unl = unlabelled(x, ignore)
        lab = ~unl
        bad = lab & ((x < 0) | (x >= limit))
        if bad.any():
            pos, v = _first(bad, x, box)
            part.error = (i, f"{what} hold the value {v} at voxel {pos}, which is neither a class "
                             f"(0..{limit - 1}) nor the --ignore value {ignore}")
            break
        part.unlabelled += int(np.count_nonzero(unl))
        xi = np.where(unl, -1, x).astype(np.int64, copy=False) if floating else x.astype(np.int64, copy=False)
        part.counts += np.bincount(xi[lab], minlength=limit)[:limit]
        for a in range(nd):
            other = tuple(b for b in range(nd) if b != a)
            part.per[a][box[a]] += np.count_nonzero(lab, axis=other) if other else lab
        if not lab.any():
            continue
        origin = np.array([s.start for s in box], np.int32)
        for c in np.unique(xi[lab]).tolist():
            take = np.argwhere(xi == c)[::part.stride[c]].astype(np.int32) + origin
            part.kept[c].append((i, take))
            n_kept[c] += len(take)
            while n_kept[c] > max_points and any(len(p) > 1 for _, p in part.kept[c]):
                # every other kept voxel of each slab (its first stays): twice the stride
                part.kept[c] = [(j, p[::2].copy()) for j, p in part.kept[c]]  # copies, so the longer arrays are freed
                part.stride[c] *= 2
                n_kept[c] = sum(len(p) for _, p in part.kept[c])
    return part


def _merge_scans(parts: Sequence[_ScanPart], shape: tuple[int, ...], limit: int, max_points: int) -> LabelScan:
    """The :class:`LabelScan` of the processes' parts, in slab order: the first refused value,
    the sums, and each class's positions at the smallest power-of-two stride (at least every
    part's) that keeps at most ``max_points``."""
    errors = [p.error for p in parts if p.error is not None]
    if errors:
        raise InputError(min(errors)[1])
    counts = np.sum([p.counts for p in parts], axis=0)
    per = [np.sum([p.per[a] for p in parts], axis=0) for a in range(len(shape))]
    top = int(np.flatnonzero(counts).max()) if counts.any() else -1
    positions = []
    for c in range(top + 1):
        stride = max(int(p.stride[c]) for p in parts)
        while True:
            taken = [(j, pos[::stride // int(p.stride[c])]) for p in parts for j, pos in p.kept[c]]
            if sum(len(t) for _, t in taken) <= max_points or all(len(t) <= 1 for _, t in taken):
                break
            stride *= 2
        arrays = [t for _, t in sorted(taken, key=lambda jt: jt[0])]
        positions.append(np.concatenate(arrays) if arrays else np.zeros((0, len(shape)), np.int32))
    return LabelScan(counts, int(sum(p.unlabelled for p in parts)), per, positions)


def chunk_boxes(shape: Sequence[int], chunks: Sequence[int], itemsize: int, max_bytes: int = SLAB_BYTES,
                axis: int | Sequence[int] = 0) -> Iterator[tuple[slice, ...]]:
    """Boxes of whole chunks of the grid ``chunks`` covering an array of ``shape``, in storage
    order along ``axis`` like :func:`iter_slabs` (slabs along ``axis``, cut along the other axes,
    the nearest to ``axis`` first, only where a slab one chunk thick exceeds the budget), each
    at most ``max_bytes`` at ``itemsize`` bytes per element but never less than one chunk.
    Writing such boxes to a zarr array chunked ``chunks`` writes every chunk once, whole.

    Example:
        >>> [b[0] for b in chunk_boxes((10, 4, 4), (2, 4, 4), 1, max_bytes=64)]
        [slice(0, 4, None), slice(4, 8, None), slice(8, 10, None)]
    """
    sizes = [int(n) for n in shape]
    grid = [max(1, min(int(c), n)) for c, n in zip(chunks, sizes)]
    nd = len(sizes)
    order = storage_order(sizes, axis)
    budget = max(1, max_bytes // max(1, itemsize))
    step = grid.copy()
    box = math.prod(grid)
    for a in reversed(order):  # the innermost axes (cut last) grow first, in whole chunks
        others = box // step[a]
        whole = others * sizes[a] <= budget
        step[a] = sizes[a] if whole else min(sizes[a], grid[a] * max(1, budget // (others * grid[a])))
        box = others * step[a]
        if step[a] < sizes[a]:
            break

    def boxes(level: int, box: list[slice]) -> Iterator[tuple[slice, ...]]:
        if level == nd:
            yield tuple(box)
            return
        a = order[level]
        for s in range(0, sizes[a], step[a]):
            box[a] = slice(s, min(s + step[a], sizes[a]))
            yield from boxes(level + 1, box)

    yield from boxes(0, [slice(0, 0)] * nd)


def copy_to_zarr(array: ArrayLike, path: str | Path, chunks: Sequence[int], axis: int | Sequence[int] = 0,
                 max_bytes: int = SLAB_BYTES, dtype: Any = None) -> Any:
    """Copy ``array`` into a new zarr array at ``path`` chunked ``chunks`` (each chunk written
    once, whole), reading the source once, in storage order along ``axis`` (the axis the
    source reads fastest by slab: the last one of a NIfTI file, the first of a TIFF stack or a
    video; or the whole order, slowest axis first, where the source is a view with its axes
    moved: :func:`storage_order`), in boxes of at most ``max_bytes``. Returns the zarr array
    (opened read-only).

    Where a slab one chunk thick along ``axis`` fits in ``max_bytes`` the copy is one pass of
    such slabs. Where it does not (large slices, or fewer slices than a chunk) the source is read
    in the boxes of :func:`iter_slabs` into a raw staging file beside ``path``
    (``<path>.staging``, in that storage order: disk for the whole volume uncompressed, for the
    length of the copy; its space is reserved first, so a full disk is an :class:`InputError`
    naming it, not a crash of the process in the middle of the copy), copied from there box by
    box of whole chunks (:func:`chunk_boxes`), and the staging file removed. The copy's chunks
    are the same either way, so what reads it later costs the same; the staging costs a second
    write and read of the volume (in the page cache, not this process's memory:
    :func:`release_pages` after every box).
    """
    import zarr

    shape = tuple(int(n) for n in array.shape)
    dt = np.dtype(dtype if dtype is not None else array.dtype)
    chunks = tuple(min(int(c), n) for c, n in zip(chunks, shape))
    # the storage order of iter_slabs and chunk_boxes: their boxes are contiguous runs of it
    layout = storage_order(shape, axis)
    slow = layout[0]
    out = zarr.open_array(str(path), mode="w", shape=shape, chunks=chunks, dtype=dt)
    if dt.itemsize * math.prod(shape) // max(shape[slow], 1) * chunks[slow] <= max_bytes:
        for box in chunk_boxes(shape, chunks, dt.itemsize, max_bytes, layout):
            out[box] = np.asarray(array[box], dtype=dt)
        return zarr.open_array(str(path), mode="r")
    back = tuple(int(a) for a in np.argsort(layout))
    with atomic.scratch(f"{path}.staging") as staging:  # in a run folder: recorded while it exists
        _reserve(staging, dt.itemsize * math.prod(shape))
        raw = np.memmap(staging, dtype=dt, mode="r+", shape=tuple(shape[a] for a in layout))
        view = raw.transpose(back)
        for box in iter_slabs(shape, dt.itemsize, max_bytes, layout):
            view[box] = np.asarray(array[box], dtype=dt)
            release_pages(view)
        del raw, view
        stage = Unmapped(np.memmap(staging, dtype=dt, mode="r", shape=tuple(shape[a] for a in layout)).transpose(back))
        for box in chunk_boxes(shape, chunks, dt.itemsize, max_bytes, layout):
            out[box] = stage[box]
        del stage
    return zarr.open_array(str(path), mode="r")


def _reserve(path: Path, size: int) -> None:
    """Create ``path`` with ``size`` bytes of disk reserved (``posix_fallocate``): writing a
    memory map of a sparse file on a full disk kills the process with ``SIGBUS`` (no error,
    no clean-up), so a disk without room for it is refused here, in one line naming it."""
    with open(path, "wb") as f:
        if size <= 0:
            return
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except AttributeError:  # no posix_fallocate (macOS): a sparse file, unreserved
            f.truncate(size)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                f.truncate(size)  # a file system without fallocate: a sparse file, unreserved
                return
            free = shutil.disk_usage(path.parent).free
            raise InputError(f"no room for the staging file {path} of the one-time copy: it needs "
                             f"{size / 2**30:.2f} GiB (the volume uncompressed, besides the copy), "
                             f"{free / 2**30:.2f} GiB are free there; free space on that disk "
                             f"({e.strerror or e})") from None


#: Name of a :class:`StagedCopy`'s private folder (+ random characters), and of the lock file
#: its process holds there while it lives.
STAGED_PREFIX, STAGED_LOCK = "fhcnn-staged-", "owner.lock"


def _hold(folder: Path) -> int | None:
    """An open descriptor holding the exclusive ``flock`` of ``folder/STAGED_LOCK``, which marks
    ``folder`` as this process's for as long as the descriptor is open: the kernel releases the
    lock when the process ends, however it ends (SIGKILL too). The file is locked under a
    temporary name first and then renamed, so it never exists unlocked while its process lives.
    ``None`` where there are no locks (the folder is then never taken for a stale one)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    tmp = folder / f".{STAGED_LOCK}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # no locks on this file system
        os.close(fd)
        tmp.unlink()
        return None
    os.rename(tmp, folder / STAGED_LOCK)
    return fd


def _release(folder: str, fd: int | None) -> None:
    """Remove a private folder, then let go of its lock."""
    shutil.rmtree(folder, True)
    if fd is not None:
        os.close(fd)


def remove_stale_staged(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the private folders of :class:`StagedCopy` that processes which ended without
    removing them (killed, SIGKILL) left in ``root`` (default the system's temporary folder,
    ``TMPDIR``); returns them. A folder goes only when fhcnn can prove it is such a leftover:
    named ``fhcnn-staged-*``, a real folder (no link) of this user, holding the lock file
    :data:`STAGED_LOCK`, and that lock is free (a living process holds the lock of each of its
    folders; the kernel releases it when the process ends). Anything else stays: a folder
    without the lock file, another user's, a living process's."""
    try:
        import fcntl
    except ImportError:  # not POSIX: nothing can be proved
        return []
    import glob
    import tempfile

    removed = []
    for folder in sorted(Path(root if root is not None else tempfile.gettempdir()).glob(
            glob.escape(STAGED_PREFIX) + "*")):
        try:
            st = os.lstat(folder)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            fd = os.open(folder / STAGED_LOCK, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # still the folder's lock file (not one another cleaner removed meanwhile)
            if os.fstat(fd).st_ino == os.lstat(folder / STAGED_LOCK).st_ino:
                shutil.rmtree(folder, True)
                removed.append(folder)
        except OSError:  # held: its process lives (or no locks here)
            pass
        finally:
            os.close(fd)
    return removed


class StagedCopy:
    """An array-like that is slow to read by window (a compressed file decoded page by page),
    copied once, in one streamed pass of slabs along ``axis`` (:func:`copy_to_zarr`), into a
    zarr array in a private folder of the system's temporary folder (``TMPDIR``,
    ``fhcnn-staged-*``), and read from that copy: before a run folder exists, every check and
    statistic reads it fast. The run then makes its own copy (in the run folder, listed in
    ``run.json``) and adopts it (:meth:`adopt`); the private folder is removed then, or when this
    object is collected, or when the process ends. A process killed before that leaves its
    folder: the next :class:`StagedCopy` (of any fhcnn process of the same user) first removes
    such folders of processes that have ended (:func:`remove_stale_staged`; the process holds a
    lock in its folder while it lives).
    """

    def __init__(self, source: ArrayLike, axis: int | Sequence[int], chunks: Sequence[int], dtype: Any = None) -> None:
        import tempfile
        import weakref

        remove_stale_staged()
        folder = tempfile.mkdtemp(prefix=STAGED_PREFIX)
        try:
            fd = _hold(Path(folder))
        except BaseException:
            shutil.rmtree(folder, True)
            raise
        self._remove = weakref.finalize(self, _release, folder, fd)
        self.folder = Path(folder)
        self.array: Any = copy_to_zarr(source, self.folder / "copy.zarr", chunks, axis=axis, dtype=dtype)
        self.shape, self.dtype, self.ndim = tuple(self.array.shape), np.dtype(self.array.dtype), self.array.ndim

    def adopt(self, copy: ArrayLike) -> None:
        """Read ``copy`` (the same values) from now on and remove the private folder."""
        if tuple(copy.shape) != self.shape:
            raise ValueError(f"the adopted copy is {tuple(copy.shape)}, not {self.shape}")
        self.array = copy
        self._remove()

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.array[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def staged_copies(*arrays: Any) -> list[StagedCopy]:
    """The distinct :class:`StagedCopy` objects behind ``arrays`` (found through the ``.array``
    of views such as :class:`ChannelView` and :class:`MovedAxes`)."""
    found: dict[int, StagedCopy] = {}
    for a in arrays:
        while a is not None:
            if isinstance(a, StagedCopy):
                found.setdefault(id(a), a)
                break
            a = getattr(a, "array", None)
    return list(found.values())
