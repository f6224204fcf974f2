"""False-colour display of hyperspectral cubes."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["false_color", "read_bands"]


def read_bands(cube: Any, bands: Sequence[int]) -> np.ndarray:
    """``(H, W, len(bands))`` float64: the ``bands`` of an ``(H, W, B)`` array-like, read one at
    a time (any array-like: a memory map, an HDF5 dataset, a zarr array)."""
    return np.stack([np.asarray(cube[:, :, int(k)], np.float64) for k in bands], -1)


def false_color(cube: Any, bands: Sequence[int] | None = None,
                lo_hi: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``(H, W, 3)`` float image in [0, 1] from three bands (default: near 3/4, 1/2, 1/4 of
    the band range, i.e. a NIR-red-green style composite), 2-98 % stretched per band.
    Pass the same ``lo_hi`` for both dates so their colours compare."""
    b = cube.shape[-1]
    if bands is None:
        bands = [min(b - 1, int(b * f)) for f in (0.75, 0.5, 0.25)] if b >= 3 else [0] * 3
    rgb = read_bands(cube, bands)
    if lo_hi is None:
        lo_hi = (np.percentile(rgb, 2, axis=(0, 1)), np.percentile(rgb, 98, axis=(0, 1)))
    lo, hi = lo_hi
    return np.clip((rgb - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
