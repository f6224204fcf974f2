"""The lazy multi-channel volume: :class:`LazyVolume`, a ``(C, D, H, W)`` volume over ``C``
array-likes of shape ``(D, H, W)``, read by box or by window as float32 (optionally with two
computed coordinate channels); nothing is read until asked.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .arrays import ArrayLike, read_window, reflect_indices
from .slabs import ONE_PROCESS, SLAB_BYTES, PassShare
from .stats import StreamStats, stream_stats


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
