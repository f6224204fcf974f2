"""Every size decision of the dense engine, in one place (after MONAI's sliding window).

A volume is ``(C, D, H, W)``; labels are ``(D, H, W)`` (or one ``(H, W)`` map). The engine

* **scales** the volume's ``(H, W)`` by ``data.scale`` before training (:func:`scaled_size`,
  :func:`resize_volume`, :func:`resize_labels`) and resizes predicted probabilities back to
  the input size (:func:`resize_back`);
* **pads** by reflection to a multiple of the network's ``size_multiple`` (:func:`padded_shape`,
  :func:`gather`: a window at any start, reflected past either end) and **crops** back;
* cuts **training windows** (:func:`training_window`) rounded up to that multiple;
* lays out the **prediction tilings** (:func:`prediction_tilings`: the shifted, flipped
  tilings of the padded volume, their windows, blending weights and coverage) and the
  **chunks** predictions are written in (:func:`chunk_shape`).

Nothing else in the package computes a padded, scaled, window or tiling size.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.lazy import reflect_indices as _reflect
from ..options import IGNORE

__all__ = ["round_up", "reflect_indices", "gather", "padded_shape", "beyond_one_coarse_voxel", "training_window",
           "scaled_size", "source_box", "resize_box", "resize_volume", "resize_labels", "resize_back", "ResizedPlanes",
           "Geometry",
           "Tiling", "prediction_tilings", "window_starts", "blend_weights_1d", "prediction_window_of",
           "chunk_shape", "distinct_windows"]


def round_up(n: int, m: int) -> int:
    """Smallest multiple of ``m`` that is ``>= n``."""
    return -(-n // m) * m


def reflect_indices(start: int, length: int, n: int) -> Tensor:
    """Indices ``start .. start+length-1`` folded into ``[0, n)`` by reflection (no edge repeat,
    like ``numpy.pad(mode="reflect")``, for any overshoot); see :func:`fhcnn.data.lazy.reflect_indices`."""
    return torch.from_numpy(_reflect(start, length, n))


def gather(x: Tensor, starts: Sequence[int], sizes: Sequence[int]) -> Tensor:
    """Window of ``x`` (``(..., *S)``, ``len(S) == len(starts)``) at ``starts`` with ``sizes``,
    the volume continued by reflection past its ends (starts may be negative)."""
    nd = len(starts)
    for k, (s, w) in enumerate(zip(starts, sizes)):
        axis = x.dim() - nd + k
        x = x.index_select(axis, reflect_indices(s, w, x.shape[axis]))
    return x


def padded_shape(shape: Sequence[int], multiple: int) -> tuple[int, ...]:
    """Each size rounded up to ``multiple`` (what the network is given; cropped back after).
    A shape the network would see as one voxel at its coarsest level (every size within one
    multiple) has its last axis at two multiples: a normalization there would have one value
    a channel, which it refuses.

    Example:
        >>> padded_shape((5, 9, 2), 4), padded_shape((2, 2, 2), 2)
        ((8, 12, 4), (2, 2, 4))
    """
    return beyond_one_coarse_voxel([round_up(int(n), multiple) for n in shape], multiple)


def beyond_one_coarse_voxel(sizes: Sequence[int], multiple: int,
                            limits: Sequence[int] | None = None) -> tuple[int, ...]:
    """``sizes`` (multiples of ``multiple``), or, if the network would see them as one voxel at
    its coarsest level (every size within one multiple), the last axis whose limit allows it
    (``limits``, default none) at two multiples."""
    out = [int(n) for n in sizes]
    if all(n <= multiple for n in out):
        ok = [a for a in range(len(out)) if limits is None or limits[a] >= 2 * multiple]
        if ok:
            out[ok[-1]] = 2 * multiple
    return tuple(out)


def training_window(window: Sequence[int], shape: Sequence[int], multiple: int,
                    whole_depth: bool = False) -> tuple[int, int, int]:
    """The training window ``(d, h, w)``: ``window`` (0 = the whole axis) rounded up to
    ``multiple``; with ``whole_depth`` the depth is always the whole (rounded-up) axis; never
    one voxel at the network's coarsest level (:func:`beyond_one_coarse_voxel`)."""
    win = [round_up(w if w > 0 else n, multiple) for w, n in zip(window, shape)]
    if whole_depth:
        win[0] = round_up(int(shape[0]), multiple)
    d, h, w = beyond_one_coarse_voxel(win, multiple)
    return d, h, w


def scaled_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    """``(H, W)`` resized by ``scale`` (rounded, at least 1 pixel)."""
    h, w = size
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def _shrinks(source: Sequence[int], size: Sequence[int]) -> bool:
    """Whether a ``source`` ``(H, W)`` plane resized to ``size`` is area averaged (fewer pixels)."""
    return int(size[0]) * int(size[1]) < int(source[0]) * int(source[1])


def _area_bins(n: int, m: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Source ``[start, end)`` of the outputs ``lo .. hi-1`` of ``n`` pixels area averaged to ``m``
    (torch's adaptive average pooling: ``floor(i n / m)`` to ``ceil((i + 1) n / m)``)."""
    i = np.arange(lo, hi, dtype=np.int64)
    return (i * n) // m, -((-(i + 1) * n) // m)


def _linear_taps(n: int, m: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The two source pixels and their weights of the outputs ``lo .. hi-1`` of ``n`` pixels
    resized bilinearly to ``m`` (``align_corners=False``, torch's: source ``(i + 1/2) n / m - 1/2``
    clamped at 0; the upper tap is the last pixel again at the end), in float32."""
    if n == m:  # the pixel itself (no second tap: any box reads only itself)
        i = np.arange(lo, hi, dtype=np.int64)
        return i, i, np.ones(hi - lo, np.float32), np.zeros(hi - lo, np.float32)
    scale = np.float32(n) / np.float32(m)
    src = np.maximum(scale * (np.arange(lo, hi).astype(np.float32) + np.float32(0.5)) - np.float32(0.5),
                     np.float32(0))
    i0 = src.astype(np.int64)
    l1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    return i0, np.minimum(i0 + 1, n - 1), np.float32(1) - l1, l1


def _label_taps(n: int, m: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the label cells ``lo .. hi-1`` of ``n`` pixels resized to ``m``: the first and last + 1
    source pixel voting for each (pixel ``y`` votes for cell ``y m // n``; empty when enlarging
    leaves a cell none) and the pixel at each cell's centre (``(i + 1/2) n / m``)."""
    i = np.arange(lo, hi, dtype=np.int64)
    centre = np.minimum(((i + 0.5) * n / m).astype(np.int64), n - 1)
    return -((-i * n) // m), -((-(i + 1) * n) // m), centre


def source_box(source: Sequence[int], size: Sequence[int], box: Sequence[tuple[int, int]],
               labels: bool = False) -> tuple[tuple[int, int], tuple[int, int]]:
    """Per axis ``(lo, hi)`` of the source ``(H, W)`` pixels the ``box`` (per axis ``(lo, hi)``,
    non-empty) of a plane resized to ``size`` depends on: the area bins or bilinear taps of its
    pixels (:func:`resize_volume`), or its cells' voters and centres (:func:`resize_labels`)."""
    out = []
    for n, m, (lo, hi) in zip(source, size, box):
        n, m = int(n), int(m)
        if n == m:
            out.append((lo, hi))
        elif labels:
            first, end, centre = _label_taps(n, m, lo, hi)
            out.append((int(min(first.min(), centre.min())), int(max(end.max(), centre.max() + 1))))
        elif _shrinks(source, size):
            start, end = _area_bins(n, m, lo, hi)
            out.append((int(start.min()), int(end.max())))
        else:
            i0, i1, _, _ = _linear_taps(n, m, lo, hi)
            out.append((int(i0.min()), int(i1.max()) + 1))
    return out[0], out[1]


def resize_box(block: np.ndarray, source: Sequence[int], size: Sequence[int],
               box: Sequence[tuple[int, int]]) -> np.ndarray:
    """The ``box`` (per axis ``(lo, hi)``) of float planes ``(..., H, W)`` = ``source`` resized to
    ``size`` (:func:`resize_volume`), from ``block``: the planes' :func:`source_box` alone.

    Area averaging reproduces torch's (each pixel the float32 sum of its bin in row-major order,
    divided by the bin's height then width; a ``1 x 1`` result is torch's mean): the same bits as
    resizing the whole planes. Bilinear (enlarging) is this function's own, the taps and weights
    of torch's in float32 (torch's kernels differ from it and among themselves by rounding)."""
    (h0, h1), (w0, w1) = ((int(a), int(b)) for a, b in box)
    (r0, _), (c0, _) = source_box(source, size, box)
    x = np.asarray(block, np.float32)
    if tuple(int(n) for n in source) == tuple(int(n) for n in size):
        return x.copy()
    if _shrinks(source, size):
        if tuple(size) == (1, 1):
            return torch.from_numpy(np.ascontiguousarray(x)).mean((-2, -1), keepdim=True).numpy()
        ys, ye = _area_bins(int(source[0]), int(size[0]), h0, h1)
        xs, xe = _area_bins(int(source[1]), int(size[1]), w0, w1)
        acc = np.zeros((*x.shape[:-2], h1 - h0, w1 - w0), np.float32)
        for a in range(int((ye - ys).max())):
            rows, rok = np.minimum(ys + a, ye - 1) - r0, ys + a < ye
            for b in range(int((xe - xs).max())):
                cols, cok = np.minimum(xs + b, xe - 1) - c0, xs + b < xe
                acc += np.where(rok[:, None] & cok[None, :], x[..., rows[:, None], cols[None, :]], np.float32(0))
        return acc / (ye - ys).astype(np.float32)[:, None] / (xe - xs).astype(np.float32)[None, :]
    y0, y1, a0, a1 = _linear_taps(int(source[0]), int(size[0]), h0, h1)
    x0, x1, b0, b1 = _linear_taps(int(source[1]), int(size[1]), w0, w1)

    def row(r: np.ndarray) -> np.ndarray:
        plane = x[..., r - r0, :]
        return plane[..., x0 - c0] * b0 + plane[..., x1 - c0] * b1

    return row(y0) * a0[:, None] + row(y1) * a1[:, None]


def resize_volume(volume: np.ndarray | Tensor, size: Sequence[int]) -> np.ndarray:
    """``(C, D, H, W)`` float volume with ``(H, W)`` resized to ``size``: area averaging when
    shrinking (torch's), bilinear when enlarging (:func:`resize_box`'s); unchanged (float32) at
    the same size. Any box of the result is :func:`resize_box` of its :func:`source_box`."""
    v = torch.as_tensor(np.asarray(volume), dtype=torch.float32)
    if tuple(v.shape[2:]) == tuple(size):
        return v.numpy()
    if not _shrinks(v.shape[2:], size):
        whole = ((0, int(size[0])), (0, int(size[1])))
        (r0, r1), (c0, c1) = source_box(v.shape[2:], size, whole)
        return resize_box(v.numpy()[..., r0:r1, c0:c1], v.shape[2:], size, whole)
    c, d = v.shape[:2]
    out = F.interpolate(v.reshape(c * d, 1, *v.shape[2:]), size=tuple(size), mode="area")
    return out.reshape(c, d, *size).contiguous().numpy()


def resize_labels(labels: np.ndarray, size: Sequence[int], num_classes: int | None = None,
                  box: Sequence[tuple[int, int]] | None = None, source: Sequence[int] | None = None
                  ) -> np.ndarray:
    """Labels ``(..., H, W)`` (``IGNORE`` = unlabelled) on a ``size`` grid: every labelled pixel
    votes for the target cell it falls in and the majority wins (ties stay unlabelled), so
    sparse labels are never dropped by a nearest-neighbour pick; a cell no pixel falls in
    (when enlarging) takes the label of the pixel at its centre.

    With ``box`` (per axis ``(lo, hi)`` of the result) and ``source`` (the planes' ``(H, W)``),
    ``labels`` holds only the planes' :func:`source_box` and the result is that box (each cell
    depends on its voters and centre alone: the same labels as cutting the whole result)."""
    lab = np.asarray(labels)
    src = tuple(int(n) for n in (source if source is not None else lab.shape[-2:]))
    (h0, h1), (w0, w1) = box if box is not None else ((0, int(size[0])), (0, int(size[1])))
    if src == tuple(int(n) for n in size):
        return lab.astype(np.uint8, copy=True)
    (r0, _), (c0, _) = source_box(src, size, ((h0, h1), (w0, w1)), labels=True)
    lead = lab.shape[:-2]
    flat = lab.reshape(-1, *lab.shape[-2:])
    th, tw = int(size[0]), int(size[1])
    valid = flat != IGNORE
    k = num_classes or (int(flat[valid].max()) + 1 if valid.any() else 1)
    ty = (np.arange(r0, r0 + flat.shape[1]) * th) // src[0] - h0  # each pixel's cell in the box
    tx = (np.arange(c0, c0 + flat.shape[2]) * tw) // src[1] - w0
    yfirst, yend, cy = _label_taps(src[0], th, h0, h1)
    xfirst, xend, cx = _label_taps(src[1], tw, w0, w1)
    hit = (yend > yfirst)[:, None] & (xend > xfirst)[None, :]
    inside = ((ty >= 0) & (ty < h1 - h0))[:, None] & ((tx >= 0) & (tx < w1 - w0))[None, :]
    out = np.full((flat.shape[0], h1 - h0, w1 - w0), IGNORE, np.uint8)
    for i, sl in enumerate(flat):
        votes = np.zeros((k, h1 - h0, w1 - w0), np.int64)
        yy, xx = np.nonzero((sl != IGNORE) & inside)
        np.add.at(votes, (sl[yy, xx].astype(np.int64), ty[yy], tx[xx]), 1)
        best = votes.argmax(0)
        top = np.take_along_axis(votes, best[None], 0)[0]
        won = (top > 0) & ((votes == top[None]).sum(0) == 1)
        out[i][won] = best[won]
        out[i][~hit] = sl[np.ix_(cy - r0, cx - c0)][~hit]
    return out.reshape(*lead, h1 - h0, w1 - w0)


class ResizedPlanes:
    """A ``(D, H, W)`` array-like seen as ``(D, h, w)``: every plane resized on read, by
    :func:`resize_volume` (float32 values) or :func:`resize_labels` (uint8 labels).

    Reads take basic slices (step 1) or integers per axis; every read equals the same box of
    the whole array resized at once. Where the whole source planes a read spans fit in
    ``cache_bytes`` (as float32), they are read and resized whole, and the last planes resized
    are kept up to ``cache_bytes``, so windows that share planes resize them once (fast: the
    windows of a video at ``--scale 0.2``). Larger planes are never read whole: such a read
    reads from the source only the rows and columns its box depends on (:func:`source_box`:
    the area bins, bilinear taps or label voters of its pixels) and resizes them
    (:func:`resize_box`, :func:`resize_labels`). Either way a read holds at most about
    ``cache_bytes`` besides its box and the box's source.
    """

    def __init__(self, source: Any, size: Sequence[int], *, labels: bool = False,
                 num_classes: int | None = None, cache_bytes: int = 64 * 2**20) -> None:
        if len(source.shape) != 3:
            raise ValueError(f"ResizedPlanes needs a (D, H, W) array, got shape {tuple(source.shape)}")
        self.source, self.labels, self.num_classes = source, labels, num_classes
        self.source_size = (int(source.shape[1]), int(source.shape[2]))
        self.size = (int(size[0]), int(size[1]))
        self.shape = (int(source.shape[0]), *self.size)
        self.dtype = np.dtype(np.uint8 if labels else np.float32)
        self.ndim = 3
        self.cache_bytes = int(cache_bytes)
        self._keep = self.cache_bytes // (self.dtype.itemsize * self.size[0] * self.size[1])
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def _whole(self, planes: int) -> bool:
        """Whether ``planes`` whole source planes (as float32) fit in ``cache_bytes``, and one
        resized plane in the cache."""
        return self._keep >= 1 and planes * 4 * self.source_size[0] * self.source_size[1] <= self.cache_bytes

    def _resize(self, block: np.ndarray) -> np.ndarray:
        if self.labels:
            return resize_labels(block, self.size, self.num_classes)
        return resize_volume(block[None], self.size)[0]

    def _planes(self, lo: int, hi: int) -> list[np.ndarray]:
        """Planes ``lo .. hi-1`` resized whole: the missing ones read in one block of whole
        planes; the last ``cache_bytes`` of resized planes kept."""
        with self._lock:
            missing = [i for i in range(lo, hi) if i not in self._cache]
        fresh: dict[int, np.ndarray] = {}
        if missing:
            a, b = missing[0], missing[-1] + 1
            block = self._resize(np.asarray(self.source[a:b]))
            fresh = {a + j: block[j] for j in range(b - a)}
        with self._lock:
            out = [self._cache[i] if i in self._cache else fresh[i] for i in range(lo, hi)]
            for i, plane in zip(range(lo, hi), out):
                self._cache[i] = plane
                self._cache.move_to_end(i)
            while len(self._cache) > self._keep:
                self._cache.popitem(last=False)
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        boxes, squeeze = [], []
        for k, n in zip(key, self.shape):
            if isinstance(k, (int, np.integer)):
                i = int(k) + (n if k < 0 else 0)
                boxes.append((i, i + 1))
                squeeze.append(True)
            else:
                lo, hi, step = k.indices(n)
                if step != 1:
                    raise IndexError("ResizedPlanes reads boxes (slices of step 1)")
                boxes.append((lo, max(lo, hi)))
                squeeze.append(False)
        (d0, d1), (h0, h1), (w0, w1) = boxes
        if d1 > d0 and h1 > h0 and w1 > w0 and self._whole(d1 - d0):
            out = np.stack([p[h0:h1, w0:w1] for p in self._planes(d0, d1)])
        elif d1 > d0 and h1 > h0 and w1 > w0:
            (r0, r1), (c0, c1) = source_box(self.source_size, self.size, boxes[1:], self.labels)
            block = np.asarray(self.source[d0:d1, r0:r1, c0:c1])
            out = (resize_labels(block, self.size, self.num_classes, boxes[1:], self.source_size) if self.labels
                   else resize_box(block, self.source_size, self.size, boxes[1:]))
        else:
            out = np.zeros((d1 - d0, h1 - h0, w1 - w0), self.dtype)
        return out[tuple(0 if s else slice(None) for s in squeeze)]


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
        """One log line: scaling, padding and cropping (padding only where a size is not a
        multiple of the network's)."""
        (h0, w0), (h, w) = self.size, self.scaled
        scaled = f"resized to {h}x{w}" if (h, w) != (h0, w0) else "at full size"
        if self.padded == (self.depth, h, w):
            fit = f"sizes the network takes as they are (multiples of {self.multiple})"
        else:
            fit = (f"continued by reflection to {self.padded} for the network (sizes must be multiples of "
                   f"{self.multiple}) and cropped back")
        return (f"(D, H, W) = ({self.depth}, {h0}, {w0}) {scaled}; {fit}"
                + (f"; predictions resized back to {h0}x{w0}" if (h, w) != (h0, w0) else ""))

    def volume(self, volume: np.ndarray | Tensor) -> np.ndarray:
        """``(C, D, H, W)`` input -> ``(C, D, h, w)`` float32."""
        return resize_volume(volume, self.scaled)

    def lazy_planes(self, array: Any, *, labels: bool = False, num_classes: int | None = None) -> ResizedPlanes:
        """A ``(D, H, W)`` array-like (a channel, or labels) seen at ``(D, h, w)``, each plane
        resized as it is read (:class:`ResizedPlanes`: equal to :meth:`volume` / :meth:`labels`)."""
        return ResizedPlanes(array, self.scaled, labels=labels, num_classes=num_classes)

    def labels(self, labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
        """Labels ``(..., H, W)`` -> ``(..., h, w)`` (see :func:`resize_labels`)."""
        return resize_labels(labels, self.scaled, num_classes)

    def back(self, prob: Tensor) -> Tensor:
        """Probabilities ``(K, ..., h, w)`` -> ``(K, ..., H, W)``."""
        return resize_back(prob, self.size)


def window_starts(padded: int, win: int, multiple: int, overlap: float = 0.5) -> list[int]:
    """Prediction window starts along one axis of ``padded`` voxels: overlapping by about
    ``overlap`` of the window (a stride of ``(1 - overlap) * win`` rounded down to ``multiple``,
    at least ``multiple``; ``0``: side by side), the last one flush with the end."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    stride = max(multiple, int(win * (1 - overlap) + 1e-9) // multiple * multiple)
    st = list(range(0, padded - win + 1, stride))
    if st[-1] != padded - win:
        st.append(padded - win)
    return st


def blend_weights_1d(win: int, padded: int) -> np.ndarray:
    """``(win,)`` float64 blending weights of a window along one axis: ``sin(pi (i + 1/2) / win)``
    where the window cuts the axis (``win < padded``), else ones."""
    if win >= padded:
        return np.ones(win)
    return np.sin(np.pi * (np.arange(win) + 0.5) / win)


@dataclass(frozen=True)
class Tiling:
    """One tiling of a prediction: the volume ``(D, H, W)`` shifted by ``offset`` voxels (a voxel
    at ``v`` sits at ``v + offset``), continued by reflection to ``padded`` (a multiple of the
    network's), cut into windows of ``window`` voxels at ``starts`` (one tuple per axis; every
    combination is a window), in the unflipped coordinates of the padded volume; with
    ``mirror`` (a spatial axis: 0 = D, 1 = H, 2 = W) the network sees each window mirrored
    along that axis (and its output is mirrored back).

    The tiling's prediction at a voxel is the blend ``sum_k b_k p_k / sum_k b_k`` over the windows
    ``k`` holding it, with separable weights ``b`` (:func:`blend_weights_1d`); as the weights and
    the window grid are separable, so is the coverage ``sum_k b_k``, and each window contributes
    ``p_k * factor(starts)`` on its own.
    """

    offset: tuple[int, int, int]
    padded: tuple[int, int, int]
    window: tuple[int, int, int]
    mirror: int | None
    starts: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]

    @property
    def count(self) -> int:
        """Windows in the tiling."""
        return len(self.starts[0]) * len(self.starts[1]) * len(self.starts[2])

    def coverage(self, axis: int) -> np.ndarray:
        """``(padded[axis],)`` float64 sum of the windows' weights along ``axis``."""
        w, p = self.window[axis], self.padded[axis]
        b = blend_weights_1d(w, p)
        cov = np.zeros(p)
        for s in self.starts[axis]:
            cov[s:s + w] += b
        return cov

    def factors(self, axis: int) -> dict[int, np.ndarray]:
        """``{start: (window,) float64}`` weight over coverage of each window start along ``axis``."""
        w, p = self.window[axis], self.padded[axis]
        b, cov = blend_weights_1d(w, p), self.coverage(axis)
        return {s: b / cov[s:s + w] for s in self.starts[axis]}

    def volume_box(self, start: Sequence[int], size: Sequence[int]) -> tuple[tuple[int, int], ...] | None:
        """Per axis ``(lo, hi)`` of the volume voxels (of ``size``) the window at ``start`` covers;
        ``None`` when it lies wholly in the reflected continuation."""
        box = []
        for s, w, o, n in zip(start, self.window, self.offset, size):
            lo, hi = max(0, s - o), min(int(n), s - o + w)
            if lo >= hi:
                return None
            box.append((lo, hi))
        return tuple(box)

    def covering(self, axis: int, size: int, edges: Sequence[int]) -> np.ndarray:
        """``(len(edges) - 1,)`` number of windows along ``axis`` whose volume part meets each
        interval ``[edges[i], edges[i+1])`` of the volume's axis of ``size`` voxels."""
        w, o = self.window[axis], self.offset[axis]
        out = np.zeros(len(edges) - 1, np.int64)
        for s in self.starts[axis]:
            lo, hi = max(0, s - o), min(size, s - o + w)
            for i in range(len(edges) - 1):
                if lo < hi and lo < edges[i + 1] and edges[i] < hi:
                    out[i] += 1
        return out


def prediction_tilings(size: Sequence[int], window: Sequence[int], multiple: int, shifts: int,
                       shift_depth: bool, mirror: int | None, overlap: float = 0.5) -> list[Tiling]:
    """The tilings a prediction of a volume of ``size`` ``(D, H, W)`` evaluates: ``shifts``
    offsets ``i * multiple / shifts`` (rounded, distinct; on every axis, only H and W if not
    ``shift_depth``), each continued by reflection to a multiple of ``multiple``, cut into
    windows of ``window`` voxels (``0``, or more than the padded axis: the whole axis; else
    rounded up to ``multiple``; never one voxel at the network's coarsest level), overlapping by
    about ``overlap`` (:func:`window_starts`); each also mirrored along the spatial axis
    ``mirror`` (0 = D, 1 = H, 2 = W; ``None``: none), as
    :attr:`~fhcnn.engine.config.DataConfig.mirror_axis` chooses it."""
    if isinstance(mirror, bool) or mirror not in (None, 0, 1, 2):
        raise ValueError(f"mirror must be a spatial axis 0, 1, 2 or None, got {mirror!r}")
    m = multiple
    offsets = sorted({int(round(i * m / max(shifts, 1))) % m for i in range(max(shifts, 1))})
    out = []
    for o in offsets:
        oo = tuple(o if (axis > 0 or shift_depth) else 0 for axis in range(3))
        padded = padded_shape([int(n) + oa for n, oa in zip(size, oo)], m)
        win = beyond_one_coarse_voxel([min(p if (w <= 0 or w >= p) else round_up(w, m), p)
                                       for w, p in zip(window, padded)], m, padded)
        starts = tuple(tuple(window_starts(p, w, m, overlap)) for p, w in zip(padded, win))
        for axis in ([None, mirror] if mirror is not None else [None]):
            st = list(starts)
            if axis is not None:  # the mirrored tiling's windows, in unflipped coordinates
                st[axis] = tuple(sorted(padded[axis] - s - win[axis] for s in starts[axis]))
            out.append(Tiling(oo, padded, win, axis, tuple(st)))  # type: ignore[arg-type]
    return out


def distinct_windows(tilings: Sequence[Tiling]) -> list[tuple[int, int, int]]:
    """The distinct window shapes of ``tilings``, in order (what a prediction evaluates: the
    memory checks and a split in space need each once)."""
    return list(dict.fromkeys(t.window for t in tilings))


def prediction_window_of(asked: Sequence[int], train_window: Sequence[int], reduce_depth: bool
                         ) -> tuple[int, int, int]:
    """The prediction window: ``asked`` (``data.predict_*``) with ``-1`` replaced by the
    training window; with ``reduce_depth`` a ``-1`` depth is ``0`` (the whole axis, as in
    training: one depth window, so the depth mean is the same at every depth)."""
    train = (0 if reduce_depth else train_window[0],) + tuple(train_window[1:])
    d, h, w = (int(t) if a < 0 else int(a) for a, t in zip(asked, train))
    return d, h, w


def chunk_shape(size: Sequence[int], target: int, whole: Sequence[bool] = (False, False, False)
                ) -> tuple[int, int, int]:
    """Chunks of prediction output over a volume of ``size`` ``(D, H, W)``: cubes of ``target``
    voxels a side (clipped to the volume), the whole axis where ``whole`` says so (a depth
    mean needs every depth of a pixel; resizing back needs whole ``(H, W)`` planes). Chunks
    of whole planes are as deep as ``target**3`` voxels allow (at least one plane), so a
    chunk holds no more than a cube's voxels however large the planes (or one plane)."""
    out = [int(n) if wh else max(1, min(int(n), int(target))) for n, wh in zip(size, whole)]
    if whole[1] and whole[2] and not whole[0]:
        out[0] = max(1, min(out[0], int(target) ** 3 // max(1, out[1] * out[2])))
    return tuple(out)  # type: ignore[return-value]
