"""Streaming statistics of a volume (mean, std, min, max, NaN/inf), by slabs: bounded memory
whatever the volume's size. Used for per-channel normalization and to refuse NaN volumes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ...errors import InputError
from ._common import DEFAULT_MAX_BYTES, ArrayLike, OpenedVolume, iter_slabs

__all__ = ["StreamStats", "stream_stats", "image_stats"]


@dataclass(frozen=True)
class StreamStats:
    """Statistics of the finite voxels of one channel.

    Attributes:
        count: finite voxels.
        mean, std: over the finite voxels (population std), float64 accumulation.
        min, max: over the finite voxels (``nan`` when there are none).
        nonfinite: NaN and inf voxels.
        first_nonfinite: the ``(d, h, w)`` of one of them (the first slab's first), or ``None``.
    """

    count: int
    mean: float
    std: float
    min: float
    max: float
    nonfinite: int = 0
    first_nonfinite: tuple[int, int, int] | None = None

    @property
    def finite(self) -> bool:
        return self.nonfinite == 0


def stream_stats(array: ArrayLike, max_bytes: int = DEFAULT_MAX_BYTES, slab_axis: int = 0) -> StreamStats:
    """Mean, std, min, max and NaN/inf count of a ``(D, H, W)`` array-like, read slab by slab.

    Slabs hold at most ``max_bytes`` of float64 (the working copy); per-slab means and sums
    of squared deviations are merged exactly (Chan et al.), so the result equals the
    whole-array float64 computation to rounding.
    """
    n, mean, m2 = 0, 0.0, 0.0
    lo, hi = math.inf, -math.inf
    bad, first = 0, None
    floating = np.dtype(array.dtype).kind == "f"
    for box in iter_slabs(array.shape, 8, max_bytes, slab_axis):
        x = np.asarray(array[box], dtype=np.float64)
        if floating:
            ok = np.isfinite(x)
            nb = int(x.size - np.count_nonzero(ok))
            if nb:
                if first is None:
                    where = np.argwhere(~ok)[0]
                    first = tuple(int(w + s.start) for w, s in zip(where, box))
                bad += nb
                x = x[ok]
        k = x.size
        if k == 0:
            continue
        mb = float(x.mean())
        m2b = float(np.square(x - mb).sum())
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        tot = n + k
        delta = mb - mean
        mean += delta * k / tot
        m2 += m2b + delta * delta * n * k / tot
        n = tot
    if n == 0:
        return StreamStats(0, math.nan, math.nan, math.nan, math.nan, bad, first)  # type: ignore[arg-type]
    return StreamStats(n, mean, math.sqrt(m2 / n), lo, hi, bad, first)  # type: ignore[arg-type]


def image_stats(volumes: Sequence[OpenedVolume], max_bytes: int = DEFAULT_MAX_BYTES) -> list[StreamStats]:
    """:func:`stream_stats` of every channel of every volume, in order (one pass each).

    Raises:
        InputError: a channel holding NaN or inf voxels (naming the file, the count and one
            position).
    """
    out = []
    for v in volumes:
        for name, ch in zip(v.names, v.channels):
            s = stream_stats(ch, max_bytes, v.slab_axis)
            if s.nonfinite:
                raise InputError(f"image {name} holds {s.nonfinite:,} NaN or infinite voxels (one at "
                                 f"{s.first_nonfinite}); fill them before segmenting")
            out.append(s)
    return out
