"""Volumes read by window, never whole: the one reader every dense run trains and predicts from.

An *array-like* is anything with ``.shape``, ``.dtype`` and ``__getitem__`` on a tuple of
slices that returns a numpy array: ``np.ndarray``, ``np.memmap`` (``.npy`` opened with
``mmap_mode="r"``), ``zarr.Array``, ``h5py.Dataset``, nibabel's ``img.dataobj``, or the small
views below (:class:`AxesView`, :class:`ChannelView`). Only basic slices (step 1) are asked
of it, so what a read costs is what its box holds.

:class:`LazyVolume` is a ``(C, D, H, W)`` volume made of ``C`` such arrays of shape
``(D, H, W)`` (one per channel; a volume held in memory is the same object over an
``ndarray``). It reads boxes and windows continued by reflection past the volume's ends
(``numpy.pad(mode="reflect")``), and streams per-channel statistics in bounded memory.
:func:`scan_labels` streams a label volume once (class counts, labelled slices per axis and a
capped sample of labelled positions per class); :func:`copy_to_zarr` makes a chunked copy of a
slow-to-slice array (a compressed NIfTI, a TIFF or a video) in one pass.

Example:
    >>> v = LazyVolume.from_array(np.arange(2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 4, 5, 6))
    >>> v.shape, v.window((-1, 0, 4), (3, 2, 4)).shape
    ((2, 4, 5, 6), (2, 3, 2, 4))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

__all__ = ["ArrayLike", "AxesView", "ChannelView", "LazyVolume", "ChannelStats", "LabelScan",
           "reflect_indices", "read_window", "iter_slabs", "scan_labels", "copy_to_zarr",
           "SLAB_BYTES"]

#: Bytes of one streamed read (statistics, label scans, copies): the reader's memory bound.
SLAB_BYTES = 64 * 2**20


class ArrayLike(Protocol):
    """What a volume reader hands out: a shape, a dtype and basic slicing."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> Any: ...

    def __getitem__(self, key: Any) -> Any: ...


def _full_key(key: Any, ndim: int) -> tuple[slice, ...]:
    """``key`` (a slice or tuple of slices, possibly short) as ``ndim`` step-1 slices."""
    if not isinstance(key, tuple):
        key = (key,)
    if len(key) > ndim or any(not isinstance(k, slice) or k.step not in (None, 1) for k in key):
        raise TypeError(f"only step-1 slices are supported on a lazy array, got {key!r}")
    return tuple(key) + (slice(None),) * (ndim - len(key))


class AxesView:
    """A lazy transpose: ``AxesView(a, axes)[key] == np.transpose(a, axes)[key]``, reading only
    the box ``key`` selects from ``a``.

    Args:
        array: any array-like.
        axes: a permutation of ``range(a.ndim)``: axis ``i`` of the view is axis ``axes[i]`` of
            ``array``.
    """

    def __init__(self, array: ArrayLike, axes: Sequence[int]) -> None:
        axes = tuple(int(a) for a in axes)
        if sorted(axes) != list(range(len(array.shape))):
            raise ValueError(f"axes {axes} is not a permutation of the {len(array.shape)} axes of the array")
        self.array, self.axes = array, axes

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(self.array.shape[a]) for a in self.axes)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.axes)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _full_key(key, self.ndim)
        src: list[slice] = [slice(None)] * self.ndim
        for view_axis, source_axis in enumerate(self.axes):
            src[source_axis] = key[view_axis]
        return np.asarray(self.array[tuple(src)]).transpose(self.axes)


class ChannelView:
    """One index along one axis of an array-like, lazily: ``ChannelView(a, axis, i)[key] ==
    np.take(a, i, axis)[key]``."""

    def __init__(self, array: ArrayLike, axis: int, index: int) -> None:
        n = len(array.shape)
        if not -n <= axis < n:
            raise ValueError(f"axis {axis} is outside the {n} axes of the array")
        self.array, self.axis, self.index = array, axis % n, int(index)
        if not 0 <= self.index < array.shape[self.axis]:
            raise ValueError(f"index {index} is outside axis {axis} of size {array.shape[self.axis]}")

    @property
    def shape(self) -> tuple[int, ...]:
        s = tuple(int(n) for n in self.array.shape)
        return s[:self.axis] + s[self.axis + 1:]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = list(_full_key(key, self.ndim))
        key.insert(self.axis, slice(self.index, self.index + 1))
        return np.take(np.asarray(self.array[tuple(key)]), 0, axis=self.axis)


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


def iter_slabs(shape: Sequence[int], itemsize: int, max_bytes: int = SLAB_BYTES, axis: int = 0
               ) -> list[slice]:
    """Slabs along ``axis`` of an array of ``shape`` whose reads stay under ``max_bytes``
    (at least one index each)."""
    shape = [int(n) for n in shape]
    per = max(1, itemsize * math.prod(shape) // max(shape[axis], 1))
    step = max(1, max_bytes // per)
    return [slice(a, min(a + step, shape[axis])) for a in range(0, shape[axis], step)]


def _slab(axis: int, sl: slice, ndim: int) -> tuple[slice, ...]:
    key = [slice(None)] * ndim
    key[axis] = sl
    return tuple(key)


@dataclass
class ChannelStats:
    """Per-channel statistics of a volume, streamed (float64 sums; ``std`` with ``n - 1``, as
    ``torch.std``). ``finite[c]`` is False when channel ``c`` holds a NaN or an infinity (its
    other statistics are then those of its finite values)."""

    mean: np.ndarray
    std: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    finite: np.ndarray
    count: int


def _channel_stats(array: ArrayLike, max_bytes: int) -> tuple[float, float, float, float, bool, int]:
    n_all, mean, m2 = 0, 0.0, 0.0
    lo, hi, finite = math.inf, -math.inf, True
    shape = tuple(int(n) for n in array.shape)
    for sl in iter_slabs(shape, max(np.dtype(array.dtype).itemsize, 8), max_bytes):
        a = np.asarray(array[_slab(0, sl, len(shape))], dtype=np.float64).ravel()
        ok = np.isfinite(a)
        if not ok.all():
            finite = False
            a = a[ok]
        if a.size == 0:
            continue
        n, m = a.size, float(a.mean())
        s2 = float(np.square(a - m).sum())
        delta = m - mean
        total = n_all + n
        mean += delta * n / total            # Chan et al.: merge the slab's mean and M2
        m2 += s2 + delta * delta * n_all * n / total
        n_all = total
        lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    std = math.sqrt(m2 / (n_all - 1)) if n_all > 1 else 0.0
    return mean, std, lo, hi, finite, n_all


class LazyVolume:
    """A ``(C, D, H, W)`` volume over ``C`` array-likes of shape ``(D, H, W)``, read by box or
    window as float32; nothing is read until asked.

    Args:
        channels: one array-like ``(D, H, W)`` per channel, all of the same shape.
        coords: append two channels holding each voxel's normalized ``h`` and ``w`` position
            (``-1`` to ``1``, ``torch.linspace``), computed, not stored.
        names: optional channel names (for logs).

    Raises:
        ValueError: no channel, a channel that is not 3D, or channels of different shapes.
    """

    def __init__(self, channels: Sequence[ArrayLike], coords: bool = False,
                 names: Sequence[str] | None = None) -> None:
        if not channels:
            raise ValueError("a volume needs at least one channel")
        shapes = {tuple(int(n) for n in c.shape) for c in channels}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise ValueError(f"every channel must be (D, H, W) of one shape, got {sorted(shapes)}")
        self.channels = list(channels)
        self.coords = bool(coords)
        self.names = list(names) if names is not None else [f"channel {i}" for i in range(len(channels))]
        self._coord_axes: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_array(cls, volume: Any, coords: bool = False) -> "LazyVolume":
        """A volume held in memory: ``(C, D, H, W)`` ndarray or tensor (no copy of an ndarray)."""
        a = volume.detach().cpu().numpy() if hasattr(volume, "detach") else np.asarray(volume)
        if a.ndim != 4:
            raise ValueError(f"volume must have shape (C, D, H, W), got {tuple(a.shape)}")
        return cls(list(a), coords=coords)

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
        key = _full_key(tuple(box), 3)
        data = [np.asarray(c[key], dtype=np.float32) for c in self.channels]
        if self.coords:
            d, h, w = self.spatial
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

    def channel_stats(self, max_bytes: int = SLAB_BYTES) -> ChannelStats:
        """Mean, standard deviation, range and finiteness of each data channel, streamed in
        slabs along ``D`` of at most ``max_bytes`` (float64 sums, merged slab by slab)."""
        rows = [_channel_stats(c, max_bytes) for c in self.channels]
        m, s, lo, hi, fin, n = (np.array(v) for v in zip(*rows))
        return ChannelStats(m, s, lo, hi, fin.astype(bool), int(n[0]))


@dataclass
class LabelScan:
    """What one streamed pass over a label volume found.

    Attributes:
        counts: ``(256,)`` int64 voxels of each label value (``counts[ignore]`` = unlabelled).
        slices: for each axis, the indices of the slices (planes across that axis) holding at
            least one labelled voxel.
        positions: for each class ``c`` in ``0 .. max``, a ``(n_c, ndim)`` int64 array of labelled
            positions: all of them, or an evenly strided sample of ``max_points`` when there are
            more (the sample is the same on every call).
    """

    counts: np.ndarray
    slices: list[np.ndarray]
    positions: list[np.ndarray]

    def classes(self, ignore: int) -> list[int]:
        """Label values other than ``ignore`` with at least one voxel."""
        return [v for v in np.flatnonzero(self.counts).tolist() if v != ignore]


def scan_labels(labels: ArrayLike, ignore: int = 255, max_points: int = 1 << 22,
                max_bytes: int = SLAB_BYTES) -> LabelScan:
    """Stream an integer label volume (any number of axes) once, in slabs along its first axis.

    Values outside ``0..255`` are counted as 0 in ``counts`` and reported by raising
    :class:`ValueError` (naming one); ``positions`` holds every labelled voxel of a class while
    it has at most ``max_points`` of them, else every ``ceil(n / max_points)``-th in scan order.
    """
    shape = tuple(int(n) for n in labels.shape)
    nd = len(shape)
    counts = np.zeros(256, np.int64)
    hit = [np.zeros(n, bool) for n in shape]
    slabs = iter_slabs(shape, max(np.dtype(labels.dtype).itemsize, 8), max_bytes)
    for sl in slabs:  # first pass: counts (to know each class's stride)
        a = np.asarray(labels[_slab(0, sl, nd)])
        if a.dtype.kind == "f":
            if not np.isfinite(a).all() or (a != np.round(a)).any():
                raise ValueError("labels must be whole numbers (found a fractional or NaN value)")
        bad = (a < 0) | (a > 255)
        if bad.any():
            raise ValueError(f"label value {a[bad].flat[0]} is outside 0..255")
        counts += np.bincount(a.astype(np.int64, copy=False).ravel(), minlength=256)[:256]
    stride = [max(1, -(-int(n) // max_points)) for n in counts]
    seen = np.zeros(256, np.int64)
    found: list[list[np.ndarray]] = [[] for _ in range(256)]
    for sl in slabs:
        a = np.asarray(labels[_slab(0, sl, nd)]).astype(np.int64, copy=False)
        mask = a != ignore
        if not mask.any():
            continue
        for axis in range(nd):
            others = tuple(k for k in range(nd) if k != axis)
            got = mask.any(axis=others) if others else mask
            if axis == 0:
                hit[0][sl] |= got
            else:
                hit[axis] |= got
        for c in np.unique(a[mask]).tolist():
            pos = np.argwhere(a == c)
            pos[:, 0] += sl.start
            first = (-seen[c]) % stride[c]  # keep global indices 0, s, 2s, ... of this class
            found[c].append(pos[first::stride[c]])
            seen[c] += len(pos)
    top = max([c for c in range(256) if c != ignore and counts[c]] or [-1])
    positions = [np.concatenate(found[c]) if found[c] else np.zeros((0, nd), np.int64) for c in range(top + 1)]
    return LabelScan(counts, [np.flatnonzero(h) for h in hit], positions)


def copy_to_zarr(array: ArrayLike, path: str | Path, chunks: Sequence[int], axis: int = 0,
                 max_bytes: int = SLAB_BYTES, dtype: Any = None) -> Any:
    """Copy ``array`` into a new zarr array at ``path`` (chunked ``chunks``) in one pass of slabs
    along ``axis`` (the axis the source reads fastest by slab: the last one of a NIfTI file, the
    first of a TIFF stack or a video). Returns the zarr array (opened read-only)."""
    import zarr

    shape = tuple(int(n) for n in array.shape)
    dt = np.dtype(dtype if dtype is not None else array.dtype)
    chunks = tuple(min(int(c), n) for c, n in zip(chunks, shape))
    out = zarr.open_array(str(path), mode="w", shape=shape, chunks=chunks, dtype=dt)
    step = max(chunks[axis], 1)
    per = max(1, dt.itemsize * math.prod(shape) // max(shape[axis], 1))
    step *= max(1, max_bytes // (per * step))
    for a in range(0, shape[axis], step):
        key = _slab(axis, slice(a, min(a + step, shape[axis])), len(shape))
        out[key] = np.asarray(array[key], dtype=dt)
    return zarr.open_array(str(path), mode="r")
