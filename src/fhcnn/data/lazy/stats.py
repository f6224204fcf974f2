"""Streamed statistics of a channel, and the float64 standardization of channels a float32 read
would flatten.

* :class:`StreamStats` and :func:`stream_stats`: count, mean, standard deviation, range and
  NaN/inf count of the finite voxels, merged slab by slab (:class:`Moments`) in slab order, the
  same for one process or several sharing the pass.
* :func:`float32_safe`, :class:`Standardized` and :func:`standardize_channels`: a channel whose
  contrast would be lost in a float32 read (see :data:`FLOAT32_SPREAD`) is read as
  ``(x - mean) / std`` computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from .arrays import ArrayLike
from .slabs import ONE_PROCESS, SLAB_BYTES, PassShare, iter_slabs


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
