"""Training windows from one volume with sparse labels, and their augmentation.

Windows are cut at *any* position around a randomly chosen labelled voxel (class-balanced
choice: first a class, then one of its voxels), the volume continued by reflection, so every
labelled voxel is seen at every position modulo the network's stride ``2**levels``; otherwise
slices at positions no label shares get garbage from a strided (wavelet or pooling) network.
With ``data.context_windows`` a fraction of each batch is placed uniformly at random instead
(unlabelled context, for the unlabelled loss term).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.lazy import ArrayLike, LazyVolume, read_window
from .config import DataConfig

__all__ = ["WindowSampler", "rotate_zoom"]


def rotate_zoom(x: Tensor, y: Tensor, degrees: float, zoom: float) -> tuple[Tensor, Tensor]:
    """Rotate every (h, w) slice of a window ``x`` ``(C, d, h, w)`` and its labels ``y`` ``(d, h, w)``
    (or ``(1, h, w)``: one label map for all slices) by ``degrees`` and magnify by ``zoom``
    (content continued by reflection)."""
    _, d, h, w = x.shape
    a = math.radians(degrees)
    # affine_grid works in normalized coordinates: the aspect factors keep the rotation rigid
    theta = torch.tensor([[math.cos(a), -math.sin(a) * h / w, 0.0],
                          [math.sin(a) * w / h, math.cos(a), 0.0]], dtype=x.dtype) / zoom
    grid = F.affine_grid(theta.expand(d, 2, 3), [d, 1, h, w], align_corners=False)
    xs = F.grid_sample(x.transpose(0, 1), grid, mode="bilinear", padding_mode="reflection",
                       align_corners=False).transpose(0, 1)
    ys = F.grid_sample(y[:, None].to(x.dtype), grid[: y.shape[0]], mode="nearest", padding_mode="reflection",
                       align_corners=False)[:, 0].round().long()
    return xs.contiguous(), ys


class WindowSampler:
    """``sampler(step, generator) -> (x, y)``: a batch of augmented training windows.

    Windows are read from the volume and the labels as they are drawn (nothing else of either
    is held in memory).

    Args:
        volume: ``(C, D, H, W)`` inputs (the first ``data_channels`` are data, the rest e.g.
            coordinate channels that are not jittered).
        labels: ``(D, H, W)`` labels, or ``(H, W)`` with ``data.reduce_depth`` (any array-like).
        window: ``(d, h, w)`` window size (see :func:`fhcnn.engine.sizes.training_window`).
        data: the :class:`DataConfig` (batch size, flips, rotation/zoom, jitter, noise).
        std: ``(C_data,)`` per-channel standard deviation of the volume (jitter/noise unit).
        positions: for each class that has labelled voxels, their ``(n, ndim)`` positions
            (:func:`~fhcnn.data.lazy.scan_labels`).

    Returns (per call): ``x`` ``(N, C, d, h, w)`` float32 and ``y`` ``(N, d, h, w)`` (or
    ``(N, h, w)``) int64, deterministic given the generator's state.
    """

    def __init__(self, volume: LazyVolume, labels: ArrayLike, window: Sequence[int], data: DataConfig,
                 std: Tensor, positions: Sequence[Any]) -> None:
        self.volume, self.labels, self.window, self.data = volume, labels, tuple(window), data
        self.reduce = bool(data.reduce_depth)
        self.lab_axes = (1, 2) if self.reduce else (0, 1, 2)
        self.by_class = [torch.as_tensor(p) for p in positions]
        self.std = std.view(-1, 1, 1, 1)
        self.nchan = self.std.shape[0]

    def window_at(self, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """One window around a labelled voxel of a random class, at a random offset."""
        pts = self.by_class[int(torch.randint(len(self.by_class), (1,), generator=gen))]
        p = pts[int(torch.randint(len(pts), (1,), generator=gen))]
        starts = [0, 0, 0]
        for j, a in enumerate(self.lab_axes):
            starts[a] = int(p[j]) - int(torch.randint(self.window[a], (1,), generator=gen))
        return self._read(starts)

    def _read(self, starts: Sequence[int]) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(self.volume.window(starts, self.window))
        y = read_window(self.labels, [starts[a] for a in self.lab_axes], [self.window[a] for a in self.lab_axes])
        return x, torch.from_numpy(y.astype(np.int64))

    def augment(self, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Flips, rotation/zoom, brightness/contrast jitter and noise of one window."""
        d = self.data
        r = torch.rand(5, generator=gen)
        if d.flip_width and r[0] < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if d.flip_height and r[1] < 0.5:
            x, y = x.flip(-2), y.flip(-2)
        if d.reverse_depth and not self.reduce and r[2] < 0.5:
            x, y = x.flip(-3), y.flip(-3)
        if d.rotate > 0 or d.zoom > 0:
            y = y[None] if self.reduce else y
            x, y = rotate_zoom(x, y, float(r[3] * 2 - 1) * d.rotate, (1 + d.zoom) ** float(r[4] * 2 - 1))
            y = y[0] if self.reduce else y
        if d.jitter > 0 or d.noise > 0:
            x = x.clone()
            n = self.nchan
            xc = x[:n]
            u = (torch.rand(2, n, 1, 1, 1, generator=gen) * 2 - 1) * d.jitter
            mu = xc.mean((1, 2, 3), keepdim=True)
            xc = mu + (xc - mu) * (1 + u[0]) + self.std * u[1]
            if d.noise > 0:
                xc = xc + self.std * d.noise * torch.randn(xc.shape, generator=gen)
            x[:n] = xc
        return x, y

    def window_anywhere(self, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """One window at a uniformly random position (mostly unlabelled context)."""
        starts = [0, 0, 0]
        for a in self.lab_axes:
            n = self.volume.spatial[a]
            centre = int(torch.randint(n, (1,), generator=gen))
            starts[a] = centre - int(torch.randint(self.window[a], (1,), generator=gen))
        return self._read(starts)

    @property
    def context_count(self) -> int:
        """Windows per batch placed at random (``data.context_windows`` of the batch, rounded,
        at most ``batch_size - 1``)."""
        n = self.data.batch_size
        return min(n - 1, int(round(self.data.context_windows * n)))

    def __call__(self, step: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        xs, ys = [], []
        n_label = self.data.batch_size - self.context_count
        for i in range(self.data.batch_size):
            x, y = self.augment(*(self.window_at(gen) if i < n_label else self.window_anywhere(gen)), gen)
            xs.append(x)
            ys.append(y)
        return torch.stack(xs), torch.stack(ys)
