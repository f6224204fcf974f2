"""Prediction of a whole volume: windows, blending, shift/flip averaging, written by chunk.

:func:`predict_into` owns the loop, as in MONAI's sliding-window inference: it reads each
window of every tiling (:func:`~fhcnn.engine.sizes.prediction_tilings`: sizes come from
:mod:`fhcnn.engine.sizes` only) from a :class:`~fhcnn.data.lazy.LazyVolume`, runs the network
on batches of windows and adds each window's weighted probabilities to a
:class:`~fhcnn.engine.store.BlendStore`, which finishes the output chunk by chunk into its
sinks. Windows are visited block by block, every tiling's windows of a block together, so the
chunks in flight stay near the current block. :func:`predict_volume` is the in-memory form
(a tensor in, a tensor out).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..data.lazy import LazyVolume
from .sizes import Tiling, chunk_shape, prediction_tilings
from .store import CACHE_BYTES, BlendStore, Sink, TensorSink, blend_factor

if TYPE_CHECKING:  # pragma: no cover
    from ..spatial import SpatialSplit

__all__ = ["predict_volume", "predict_into", "labels_of"]


def _jobs(tilings: Sequence[Tiling], size: Sequence[int]) -> list[tuple[int, tuple[int, int, int]]]:
    """``(tiling index, window start)`` of every window that holds a voxel of the volume, in
    block order: windows are grouped by the block (of twice the window) their start falls in,
    every tiling's windows of one block together."""
    jobs = []
    for i, t in enumerate(tilings):
        for s0 in t.starts[0]:
            for s1 in t.starts[1]:
                for s2 in t.starts[2]:
                    start = (s0, s1, s2)
                    if t.volume_box(start, size) is not None:
                        jobs.append((i, start))

    def key(job: tuple[int, tuple[int, int, int]]) -> tuple[int, ...]:
        t = tilings[job[0]]
        block = tuple((s - o) // max(2 * w, 1) for s, o, w in zip(job[1], t.offset, t.window))
        return (*block, job[0], *job[1])

    return sorted(jobs, key=key)


@torch.no_grad()
def predict_into(model: nn.Module, volume: LazyVolume, tilings: Sequence[Tiling],
                 store: BlendStore | Callable[[int], BlendStore], *, device: torch.device | str | None = None,
                 batch: int = 4, each_batch: Callable[[], None] | None = None,
                 split: SpatialSplit | None = None) -> BlendStore:
    """Predict every window of ``tilings`` over ``volume`` (``(C, D, H, W)``) into ``store``
    (or into ``store(K)``, made when the first output shows the number of classes ``K``);
    returns the store.

    Up to ``batch`` windows of the same size (from one tiling or the next) go through the
    network in one call: the result is the same as one window at a time (every normalization
    of the network is per window) up to floating-point rounding, and on a CPU several times
    faster. ``each_batch`` is called after every network call (e.g. to adjust the CPU threads).
    The model is put in eval mode for the call and restored after.

    With ``split`` (a model split in space, in its :meth:`~fhcnn.engine.parallel.SpaceRun.predicting`
    mode) each process reads only its slab of every window, and gets the whole window's
    probabilities back from the model (all-gathered).
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    size = volume.spatial
    factors = [[t.factors(a) for a in range(3)] for t in tilings]
    was_training = model.training
    model.eval()
    pending: list[tuple[int, tuple[int, int, int]]] = []
    made: list[BlendStore] = [store] if isinstance(store, BlendStore) else []

    def run() -> None:
        xs = []
        for i, start in pending:
            t = tilings[i]
            first = [s - o for s, o in zip(start, t.offset)]
            size_ = list(t.window)
            if split is not None:  # this process's slab, in the (possibly mirrored) window's frame
                for a, sl in enumerate(split.local_slices(t.window)):
                    lo, hi, _ = sl.indices(t.window[a])
                    first[a] += t.window[a] - hi if a == t.mirror else lo
                    size_[a] = hi - lo
            x = volume.window(first, size_)
            xs.append(x if t.mirror is None else np.flip(x, t.mirror - 3))
        xb = torch.from_numpy(np.ascontiguousarray(np.stack(xs))).to(device)
        prob = torch.softmax(model(xb).float(), 1).cpu().numpy()
        if each_batch is not None:
            each_batch()
        if not made:
            made.append(store(prob.shape[1]))  # type: ignore[operator]
        for (i, start), p in zip(pending, prob):
            t = tilings[i]
            if t.mirror is not None:
                p = np.flip(p, t.mirror - 3)
            box = t.volume_box(start, size)
            assert box is not None
            inner = tuple(slice(lo - (s - o), hi - (s - o)) for (lo, hi), s, o in zip(box, start, t.offset))
            weighted = p * blend_factor(t, start, factors[i])
            made[0].add(box, weighted[(slice(None),) + inner])
        pending.clear()

    try:
        for job in _jobs(tilings, size):
            if pending and (len(pending) == batch or tilings[pending[0][0]].window != tilings[job[0]].window):
                run()
            pending.append(job)
        if pending:
            run()
    finally:
        if was_training:
            model.train()
    if not made:
        raise RuntimeError("no prediction window was evaluated")
    return made[0]


def predict_volume(model: nn.Module, volume: Tensor | LazyVolume, *, shifts: int = 1, flip: bool = False,
                   mirror_axis: int = 2,
                   window: Sequence[int] = (0, 0, 0), overlap: float = 0.5,
                   device: torch.device | str | None = None,
                   shift_depth: bool = True, batch: int = 4,
                   each_batch: Callable[[], None] | None = None, work: Path | None = None,
                   cache_bytes: int = CACHE_BYTES, sinks: Sequence[Sink] = (), chunk: int = 64
                   ) -> Tensor | None:
    """Class probabilities ``(K, D, H, W)`` (float32, CPU) of a whole volume ``(C, D, H, W)``.

    The volume is continued by reflection to a multiple of ``model.size_multiple`` (any size
    works), cut into windows of ``window`` voxels (0 = whole axis; overlapping by ``overlap``
    of a window, about half by default, blended
    with weights ``sin(pi (i + 1/2) / w)`` along each cut axis, so a voxel's prediction comes
    mostly from windows that hold it near their centre, where the net sees its context), and
    the softmax averaged over ``shifts`` tilings offset by ``i * multiple / shifts`` voxels on
    every axis (only H and W if not ``shift_depth``; and, if ``flip``, over their mirror images
    along the spatial axis ``mirror_axis``: 0 = D, 1 = H, 2 = W); cropped back to ``(D, H, W)``.
    See :func:`predict_into` for ``batch`` and ``each_batch``.

    With ``sinks`` the finished chunks (of ``chunk`` voxels a side) go to them and nothing is
    returned (``None``): spilled to ``work`` beyond ``cache_bytes`` of open chunks, so memory
    stays bounded whatever the volume's size. Without, the probabilities are returned.
    """
    vol = volume if isinstance(volume, LazyVolume) else LazyVolume.from_array(volume)
    if len(vol.shape) != 4:
        raise ValueError(f"volume must have shape (C, D, H, W), got {tuple(vol.shape)}")
    m = int(getattr(model, "size_multiple", 1))
    size = vol.spatial
    tilings = prediction_tilings(size, window, m, shifts, shift_depth, mirror_axis if flip else None, overlap)
    collect: list[TensorSink] = []

    def make(k: int) -> BlendStore:
        if not sinks:
            collect.append(TensorSink(k, size))
        return BlendStore(size, k, chunk_shape(size, chunk), tilings, size, list(sinks) or collect,
                          work=work, cache_bytes=cache_bytes)

    predict_into(model, vol, tilings, make, device=device, batch=batch, each_batch=each_batch).close()
    return collect[0].tensor if collect else None


def labels_of(prob: Tensor, reduce_depth: bool) -> Tensor:
    """Argmax labels of ``(K, D, H, W)`` probabilities: ``(D, H, W)``, or ``(H, W)`` (argmax of
    the depth-mean probability) if ``reduce_depth``."""
    return (prob.mean(1) if reduce_depth else prob).argmax(0)
