"""Prediction of a whole volume: padding, tiling, blending, shift/flip averaging, cropping.

One function (:func:`predict_volume`) owns the tiling, as in MONAI's sliding-window inference;
sizes come from :mod:`fhcnn.engine.sizes`.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .config import SegmentConfig
from .sizes import gather, round_up

__all__ = ["predict_volume", "prediction_window", "blend_weight", "labels_of", "tiling_sizes"]


def blend_weight(win: Sequence[int], padded: Sequence[int]) -> Tensor:
    """``(d, h, w)`` positive weights of one prediction window: ``sin(pi (i + 1/2) / n)`` along
    each axis the window cuts (smaller than the padded volume), 1 along the others."""
    out = torch.ones(())
    for ax, (w, p) in enumerate(zip(win, padded)):
        v = torch.sin(math.pi * (torch.arange(w) + 0.5) / w) if w < p else torch.ones(w)
        out = out[..., None] * v if ax else v
    return out


def tiling_sizes(size: Sequence[int], window: Sequence[int], multiple: int, shifts: int,
                 shift_depth: bool) -> list[tuple[list[int], list[int], list[int]]]:
    """The shifted tilings :func:`predict_volume` evaluates on a volume of ``size`` ``(D, H, W)``:
    ``(offset, padded, window)`` per tiling, the volume shifted by ``offset`` voxels (on every
    axis, only H and W if not ``shift_depth``), continued by reflection to ``padded`` (a
    multiple of ``multiple``) and cut into windows of ``window`` voxels (0 = the whole axis)."""
    m = multiple
    offsets = sorted({int(round(i * m / max(shifts, 1))) % m for i in range(max(shifts, 1))})
    out = []
    for o in offsets:
        oo = [o if (axis > 0 or shift_depth) else 0 for axis in range(3)]
        padded = [round_up(int(n) + oa, m) for n, oa in zip(size, oo)]
        win = [p if (w <= 0 or w >= p) else round_up(w, m) for w, p in zip(window, padded)]
        out.append((oo, padded, [min(w, p) for w, p in zip(win, padded)]))
    return out


def _starts(padded: int, win: int, multiple: int) -> list[int]:
    """Window starts along one axis: overlapping by about half, the last one flush with the end."""
    stride = max(multiple, (win // 2) // multiple * multiple)
    st = list(range(0, padded - win + 1, stride))
    if st[-1] != padded - win:
        st.append(padded - win)
    return st


class _Tiling:
    """One tiling of the padded volume (one shift, flipped or not): its input, the windows
    still to predict, and the blended sum of their probabilities."""

    def __init__(self, x: Tensor, flipped: bool, crop: Sequence[int], win: Sequence[int],
                 padded: Sequence[int], weight: Tensor, windows: list[tuple[slice, ...]]) -> None:
        self.x, self.flipped, self.crop, self.win = x, flipped, list(crop), tuple(win)
        self.padded, self.weight, self.windows = list(padded), weight, windows
        self.pending = len(windows)
        self.out: Tensor | None = None
        self.cnt = torch.zeros(self.padded)

    def add(self, sl: tuple[slice, ...], prob: Tensor) -> None:
        if self.out is None:
            self.out = torch.zeros((prob.shape[0], *self.padded))
        self.out[(slice(None),) + sl] += prob * self.weight
        self.cnt[sl] += self.weight
        self.pending -= 1

    def result(self, size: Sequence[int]) -> Tensor:
        """``(K, *size)``: the blended probabilities, flipped back and cropped."""
        if self.out is None:
            raise RuntimeError("no prediction window was evaluated")
        out = self.out / self.cnt
        if self.flipped:
            out = out.flip(-1)
        c = self.crop
        return out[:, c[0]:c[0] + size[0], c[1]:c[1] + size[1], c[2]:c[2] + size[2]]


@torch.no_grad()
def predict_volume(model: nn.Module, volume: Tensor, *, shifts: int = 1, flip: bool = False,
                   window: Sequence[int] = (0, 0, 0), device: torch.device | str | None = None,
                   shift_depth: bool = True, batch: int = 4,
                   each_batch: Callable[[], None] | None = None) -> Tensor:
    """Class probabilities ``(K, D, H, W)`` (float32, CPU) of a whole volume ``(C, D, H, W)``.

    The volume is continued by reflection to a multiple of ``model.size_multiple`` (any size
    works), cut into windows of ``window`` voxels (0 = whole axis; overlapping by half, blended
    with weights ``sin(pi (i + 1/2) / w)`` along each cut axis, so a voxel's prediction comes
    mostly from windows that hold it near their centre, where the net sees its context), and
    the softmax averaged over ``shifts`` tilings offset by ``i * multiple / shifts`` voxels on
    every axis (only H and W if not ``shift_depth``; and over a flip of the last axis if
    ``flip``); cropped back to ``(D, H, W)``.

    Up to ``batch`` windows of the same size (from one tiling or the next) go through the
    network in one call: the result is the same as one window at a time (every normalization
    of the network is per window) up to floating-point rounding, and on a CPU several times
    faster (PyTorch runs a 3D convolution of a batch of one through a slow fallback).
    ``each_batch`` is called after every network call (e.g. to adjust the CPU threads).
    """
    if volume.dim() != 4:
        raise ValueError(f"volume must have shape (C, D, H, W), got {tuple(volume.shape)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    m = int(getattr(model, "size_multiple", 1))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    _, *size = volume.shape

    def tilings() -> Iterator[_Tiling]:
        for oo, padded, win in tiling_sizes(size, window, m, shifts, shift_depth):
            x = gather(volume, [-oa for oa in oo], padded)
            starts = [_starts(p, w, m) for p, w in zip(padded, win)]
            windows = [tuple(slice(s, s + w) for s, w in zip(st, win)) for st in itertools.product(*starts)]
            weight = blend_weight(win, padded)
            for flipped in ([False, True] if flip else [False]):
                yield _Tiling(x.flip(-1) if flipped else x, flipped, oo, win, padded, weight, windows)

    acc: Tensor | None = None
    runs = 0
    chunk: list[tuple[_Tiling, tuple[slice, ...]]] = []

    def run_chunk() -> None:
        nonlocal acc, runs
        xb = torch.stack([t.x[(slice(None),) + sl] for t, sl in chunk]).to(device)
        prob = torch.softmax(model(xb).float(), 1).cpu()
        if each_batch is not None:
            each_batch()
        for (t, sl), p in zip(chunk, prob):
            t.add(sl, p)
            if t.pending == 0:
                out = t.result(size)
                acc = out if acc is None else acc + out
                runs += 1
        chunk.clear()

    for tiling in tilings():
        for sl in tiling.windows:
            if chunk and (len(chunk) == batch or chunk[0][0].win != tiling.win):
                run_chunk()
            chunk.append((tiling, sl))
    if chunk:
        run_chunk()
    if was_training:
        model.train()
    if acc is None:
        raise RuntimeError("no prediction tiling was evaluated")
    return acc / runs


def labels_of(prob: Tensor, reduce_depth: bool) -> Tensor:
    """Argmax labels of ``(K, D, H, W)`` probabilities: ``(D, H, W)``, or ``(H, W)`` (argmax of
    the depth-mean probability) if ``reduce_depth``."""
    return (prob.mean(1) if reduce_depth else prob).argmax(0)


def prediction_window(cfg: SegmentConfig, train_window: Sequence[int]) -> tuple[int, int, int]:
    """``cfg.data.predict_*`` with ``-1`` (the default) replaced by ``train_window``; with
    ``data.reduce_depth`` a ``-1`` depth is ``0`` (the whole axis, as in training: one depth
    window, so the depth mean is the same at every depth, whatever the tiling's shift)."""
    d = cfg.data
    asked = (d.predict_depth, d.predict_height, d.predict_width)
    train = (0 if d.reduce_depth else train_window[0],) + tuple(train_window[1:])
    return tuple(int(t) if a < 0 else int(a) for a, t in zip(asked, train))  # type: ignore[return-value]
