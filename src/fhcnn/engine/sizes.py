"""Every size decision of the dense engine, in one place (after MONAI's sliding window).

A volume is ``(C, D, H, W)``; labels are ``(D, H, W)`` (or one ``(H, W)`` map). The engine

* **scales** the volume's ``(H, W)`` by ``data.scale`` before training (:func:`scaled_size`,
  :func:`resize_volume`, :func:`resize_labels`) and resizes predicted probabilities back to
  the input size (:func:`resize_back`);
* **pads** by reflection to a multiple of the network's ``size_multiple`` (:func:`padded_shape`,
  :func:`gather`: a window at any start, reflected past either end) and **crops** back;
* cuts **training windows** (:func:`training_window`) rounded up to that multiple.

Nothing else in the package computes a padded, scaled or window size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..options import IGNORE

__all__ = ["round_up", "reflect_indices", "gather", "padded_shape", "training_window",
           "scaled_size", "resize_volume", "resize_labels", "resize_back", "Geometry"]


def round_up(n: int, m: int) -> int:
    """Smallest multiple of ``m`` that is ``>= n``."""
    return -(-n // m) * m


def reflect_indices(start: int, length: int, n: int) -> Tensor:
    """Indices ``start .. start+length-1`` folded into ``[0, n)`` by reflection (no edge repeat,
    like ``numpy.pad(mode="reflect")``, for any overshoot)."""
    idx = torch.arange(start, start + length)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * n - 2
    idx = idx.remainder(period)
    return torch.where(idx >= n, period - idx, idx)


def gather(x: Tensor, starts: Sequence[int], sizes: Sequence[int]) -> Tensor:
    """Window of ``x`` (``(..., *S)``, ``len(S) == len(starts)``) at ``starts`` with ``sizes``,
    the volume continued by reflection past its ends (starts may be negative)."""
    nd = len(starts)
    for k, (s, w) in enumerate(zip(starts, sizes)):
        axis = x.dim() - nd + k
        x = x.index_select(axis, reflect_indices(s, w, x.shape[axis]))
    return x


def padded_shape(shape: Sequence[int], multiple: int) -> tuple[int, ...]:
    """Each size rounded up to ``multiple`` (what the network is given; cropped back after)."""
    return tuple(round_up(int(n), multiple) for n in shape)


def training_window(window: Sequence[int], shape: Sequence[int], multiple: int,
                    whole_depth: bool = False) -> tuple[int, int, int]:
    """The training window ``(d, h, w)``: ``window`` (0 = the whole axis) rounded up to
    ``multiple``; with ``whole_depth`` the depth is always the whole (rounded-up) axis."""
    win = [round_up(w if w > 0 else n, multiple) for w, n in zip(window, shape)]
    if whole_depth:
        win[0] = round_up(int(shape[0]), multiple)
    return int(win[0]), int(win[1]), int(win[2])


def scaled_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    """``(H, W)`` resized by ``scale`` (rounded, at least 1 pixel)."""
    h, w = size
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def resize_volume(volume: np.ndarray | Tensor, size: Sequence[int]) -> np.ndarray:
    """``(C, D, H, W)`` float volume with ``(H, W)`` resized to ``size``: area averaging when
    shrinking, bilinear when enlarging; unchanged (float32) at the same size."""
    v = torch.as_tensor(np.asarray(volume), dtype=torch.float32)
    if tuple(v.shape[2:]) == tuple(size):
        return v.numpy()
    c, d = v.shape[:2]
    flat = v.reshape(c * d, 1, *v.shape[2:])
    if size[0] * size[1] < v.shape[2] * v.shape[3]:
        out = F.interpolate(flat, size=tuple(size), mode="area")
    else:
        out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(c, d, *size).contiguous().numpy()


def resize_labels(labels: np.ndarray, size: Sequence[int], num_classes: int | None = None) -> np.ndarray:
    """Labels ``(..., H, W)`` (``IGNORE`` = unlabelled) on a ``size`` grid: every labelled pixel
    votes for the target cell it falls in and the majority wins (ties stay unlabelled), so
    sparse labels are never dropped by a nearest-neighbour pick; a cell no pixel falls in
    (when enlarging) takes the label of the pixel at its centre."""
    lab = np.asarray(labels)
    if lab.shape[-2:] == tuple(size):
        return lab.astype(np.uint8, copy=True)
    lead = lab.shape[:-2]
    flat = lab.reshape(-1, *lab.shape[-2:])
    h, w = flat.shape[1:]
    th, tw = int(size[0]), int(size[1])
    valid = flat != IGNORE
    k = num_classes or (int(flat[valid].max()) + 1 if valid.any() else 1)
    ty = np.minimum((np.arange(h) * th) // h, th - 1)
    tx = np.minimum((np.arange(w) * tw) // w, tw - 1)
    cy = np.minimum(((np.arange(th) + 0.5) * h / th).astype(int), h - 1)
    cx = np.minimum(((np.arange(tw) + 0.5) * w / tw).astype(int), w - 1)
    out = np.full((flat.shape[0], th, tw), IGNORE, np.uint8)
    for i, sl in enumerate(flat):
        votes = np.zeros((k, th, tw), np.int64)
        yy, xx = np.nonzero(sl != IGNORE)
        np.add.at(votes, (sl[yy, xx].astype(np.int64), ty[yy], tx[xx]), 1)
        best = votes.argmax(0)
        top = np.take_along_axis(votes, best[None], 0)[0]
        won = (top > 0) & ((votes == top[None]).sum(0) == 1)
        out[i][won] = best[won]
        hit = np.zeros((th, tw), bool)
        hit[np.ix_(np.unique(ty), np.unique(tx))] = True
        out[i][~hit] = sl[np.ix_(cy, cx)][~hit]
    return out.reshape(*lead, th, tw)


def resize_back(prob: Tensor, size: Sequence[int]) -> Tensor:
    """Probabilities ``(K, ..., h, w)`` resized bilinearly to ``(K, ..., H, W)`` = ``size``."""
    if tuple(prob.shape[-2:]) == tuple(size):
        return prob
    lead = prob.shape[:-2]
    flat = prob.reshape(1, -1, *prob.shape[-2:])
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


@dataclass(frozen=True)
class Geometry:
    """The sizes of one run: the input volume's ``(D, H, W)``, the ``(h, w)`` the network trains
    and predicts at (``data.scale``), and the network's size multiple (the engine pads by
    reflection to it and crops back). Both applications go through this one object.

    Example:
        >>> g = Geometry(depth=48, size=(96, 160), scaled=(48, 80), multiple=8)
        >>> g.padded
        (48, 48, 80)
    """

    depth: int
    size: tuple[int, int]
    scaled: tuple[int, int]
    multiple: int

    @classmethod
    def of(cls, shape: Sequence[int], scale: float, multiple: int) -> "Geometry":
        """From a volume shape ``(..., D, H, W)``, ``data.scale`` and the network's multiple."""
        d, h, w = (int(n) for n in shape[-3:])
        return cls(d, (h, w), scaled_size((h, w), scale), int(multiple))

    @property
    def padded(self) -> tuple[int, ...]:
        """``(D, h, w)`` rounded up to the multiple (what the whole volume is padded to)."""
        return padded_shape((self.depth, *self.scaled), self.multiple)

    def describe(self) -> str:
        """One log line: scaling, padding and cropping."""
        (h0, w0), (h, w) = self.size, self.scaled
        scaled = f"resized to {h}x{w}" if (h, w) != (h0, w0) else "at full size"
        return (f"(D, H, W) = ({self.depth}, {h0}, {w0}) {scaled}; continued by reflection to "
                f"{self.padded} for the network (sizes must be multiples of {self.multiple}) and "
                f"cropped back" + (f"; predictions resized back to {h0}x{w0}" if (h, w) != (h0, w0) else ""))

    def volume(self, volume: np.ndarray | Tensor) -> np.ndarray:
        """``(C, D, H, W)`` input -> ``(C, D, h, w)`` float32."""
        return resize_volume(volume, self.scaled)

    def labels(self, labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
        """Labels ``(..., H, W)`` -> ``(..., h, w)`` (see :func:`resize_labels`)."""
        return resize_labels(labels, self.scaled, num_classes)

    def back(self, prob: Tensor) -> Tensor:
        """Probabilities ``(K, ..., h, w)`` -> ``(K, ..., H, W)``."""
        return resize_back(prob, self.size)
