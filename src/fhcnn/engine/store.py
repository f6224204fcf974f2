"""Predictions written by chunk, never held whole: the blend accumulator and its sinks.

A prediction adds each window's blended class probabilities into a :class:`BlendStore`: a grid
of chunks of a ``(K, D, H, W)`` float32 sum, kept in memory while they are being filled and
spilled to a zarr array on disk (a private folder, removed when the prediction ends) when more
than ``cache_bytes`` are open: inside the run folder (:func:`spill_folder`, scratch of the run)
when there is one, else in the system's temporary folder (``TMPDIR``). The store knows from
the tilings how many windows touch each chunk; when the last one has been added, the chunk is
*finished*: divided by the number of tilings and handed to the sinks, then dropped. Peak
memory is therefore set by the windows in flight and ``cache_bytes``, never by the volume.

Sinks receive ``(box, prob)``: ``box`` a ``(slice, slice, slice)`` of the output volume and
``prob`` its ``(K, d, h, w)`` float32 probabilities:

* :class:`LabelSink` writes ``argmax`` labels into any array with ``__setitem__`` (a numpy
  array, an ``np.memmap``, a zarr array, a format writer); with ``reduce_depth`` the argmax of
  the depth mean into a 2D map;
* :class:`ProbabilitySink` writes the probabilities (e.g. float16 zarr, ``--save-probs``);
* :class:`ConfusionSink` scores against a truth volume, chunk by chunk;
* :class:`TensorSink` collects everything into one in-memory tensor (the in-memory API).

:class:`Resized` puts a sink behind the resize from the network's ``(h, w)`` back to the
input's ``(H, W)`` (``data.scale``; chunks then hold whole planes).
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch

from .. import atomic
from ..options import IGNORE
from ..training.distributed import barrier, broadcast_object, is_main_process
from .metrics import confusion_matrix
from .sizes import Tiling, resize_back

__all__ = ["Sink", "BlendStore", "LabelSink", "ProbabilitySink", "ConfusionSink", "TensorSink", "Resized",
           "DepthMeanSink", "CACHE_BYTES", "spill_folder", "SPILL_PREFIX"]

#: Default bytes of open chunks a store keeps in memory before it spills to disk. The open
#: chunks form a front about one chunk thick across the volume's cross-section (3 classes, windows
#: 32 x 64 x 64: 21 MiB at 128^3, 222 MiB at 512^3, 822 MiB at 512 x 1024 x 1024), so a large
#: volume spills; a spilled chunk is written and read back a few times, small against the network.
CACHE_BYTES = 64 * 2**20

#: Name of a prediction's spill folder in a run folder: ``.spill.`` + 8 random characters +
#: ``.tmp`` (:func:`fhcnn.atomic.scratch_name`).
SPILL_PREFIX = ".spill."

Box = tuple[slice, slice, slice]


@contextlib.contextmanager
def spill_folder(out: Path | None, *, every_process: bool = False) -> Iterator[Path | None]:
    """The ``work`` folder of the stores of one prediction (:class:`BlendStore`) in the run
    folder ``out``: a hidden scratch folder (:data:`SPILL_PREFIX`, :func:`fhcnn.atomic.begin_scratch`)
    recorded in ``run.json`` before it exists and removed when the block ends, or, if the run is
    killed meanwhile, by the next ``--resume`` or ``--overwrite`` of ``out``. Each store makes its
    own private folder inside it, so the processes of a run split in space never share one.

    ``every_process``: every process of a ``torchrun`` job enters the block (a prediction all of
    them take part in): rank 0 makes the folder and sends its path to the others, and removes it
    once every process has left the block. Otherwise only rank 0 gets a folder.
    ``None`` (no run folder, or a process that gets none): the stores spill to ``TMPDIR``."""
    if out is None:
        yield None
        return
    main = is_main_process()
    path: Path | None = None
    if main:
        path = atomic.begin_scratch(atomic.scratch_name(out, SPILL_PREFIX))
        path.mkdir()
    try:
        if every_process:
            path = broadcast_object(path)
        yield path
        if every_process:
            barrier()  # every process's stores are closed before rank 0 removes the folder
    finally:
        if main and path is not None:
            atomic.end_scratch(path)


class Sink(Protocol):
    """Receives finished chunks of probabilities."""

    def write(self, box: Box, prob: np.ndarray) -> None: ...


def _edges(n: int, c: int, start: int = 0) -> list[int]:
    return list(range(start, start + n, c)) + [start + n]


class BlendStore:
    """The ``(K, D, H, W)`` blended sum of a prediction over the region ``origin + shape`` of
    the volume, by chunk (see the module docstring).

    Args:
        shape: ``(d, h, w)`` of the region this store owns (the whole volume, or this process's
            slab of it).
        num_classes: ``K``.
        chunks: chunk shape (see :func:`~fhcnn.engine.sizes.chunk_shape`).
        tilings: every tiling of the prediction (each window that meets a chunk is counted).
        volume: ``(D, H, W)`` of the whole volume (the tilings' frame).
        sinks: where finished chunks go, with boxes in volume coordinates.
        origin: the region's first voxel in the volume.
        work: where the private folder of spilled chunks is made (when first needed; removed
            by :meth:`close`): in a run folder its :func:`spill_folder`; default the system's
            temporary folder (``TMPDIR``).
        cache_bytes: open chunks kept in memory before spilling to disk.
    """

    def __init__(self, shape: Sequence[int], num_classes: int, chunks: Sequence[int],
                 tilings: Sequence[Tiling], volume: Sequence[int], sinks: Sequence[Sink], *,
                 origin: Sequence[int] = (0, 0, 0), work: Path | None = None,
                 cache_bytes: int = CACHE_BYTES) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.origin = tuple(int(o) for o in origin)
        self.k, self.chunks = int(num_classes), tuple(int(c) for c in chunks)
        self.sinks, self.work, self.cache_bytes = list(sinks), work, int(cache_bytes)
        self.edges = [_edges(n, c, o) for n, c, o in zip(self.shape, self.chunks, self.origin)]
        self.pending = np.zeros([len(e) - 1 for e in self.edges], np.int64)
        for t in tilings:
            per_axis = [t.covering(a, int(volume[a]), self.edges[a]) for a in range(3)]
            self.pending += per_axis[0][:, None, None] * per_axis[1][None, :, None] * per_axis[2][None, None, :]
        self.runs = len(tilings)
        self.open: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self.spilled: set[tuple[int, int, int]] = set()
        self._disk: Any = None
        self._spill_dir: Path | None = None
        self.finished = 0
        self.peak_open_bytes = 0
        for idx in zip(*np.nonzero(self.pending == 0)):  # chunks no window meets (cannot happen
            self._finish(tuple(int(i) for i in idx), np.zeros(self._chunk_shape(idx), np.float32))  # for a real tiling)

    def _chunk_box(self, idx: Sequence[int]) -> Box:
        return tuple(slice(e[i], e[i + 1]) for e, i in zip(self.edges, idx))  # type: ignore[return-value]

    def _chunk_shape(self, idx: Sequence[int]) -> tuple[int, ...]:
        return (self.k,) + tuple(e[i + 1] - e[i] for e, i in zip(self.edges, idx))

    def _disk_array(self) -> Any:
        if self._disk is None:
            import tempfile

            import zarr

            self._spill_dir = Path(tempfile.mkdtemp(prefix="fhcnn-blend-", dir=self.work))
            self._disk = zarr.open_array(str(self._spill_dir / "blend.zarr"), mode="w", shape=(self.k, *self.shape),
                                         chunks=(self.k, *self.chunks), dtype=np.float32, fill_value=0.0)
        return self._disk

    def _local(self, box: Box) -> tuple[slice, ...]:
        return (slice(None),) + tuple(slice(b.start - o, b.stop - o) for b, o in zip(box, self.origin))

    def _get(self, idx: tuple[int, int, int]) -> np.ndarray:
        buf = self.open.get(idx)
        if buf is not None:
            self.open.move_to_end(idx)
            return buf
        if idx in self.spilled:
            buf = np.asarray(self._disk_array()[self._local(self._chunk_box(idx))], np.float32)
            self.spilled.discard(idx)
        else:
            buf = np.zeros(self._chunk_shape(idx), np.float32)
        self.open[idx] = buf
        self._evict()
        return buf

    def _open_bytes(self) -> int:
        return sum(b.nbytes for b in self.open.values())

    def _evict(self) -> None:
        nbytes = self._open_bytes()
        self.peak_open_bytes = max(self.peak_open_bytes, nbytes)
        while nbytes > self.cache_bytes and len(self.open) > 1:
            idx, buf = self.open.popitem(last=False)
            self._disk_array()[self._local(self._chunk_box(idx))] = buf
            self.spilled.add(idx)
            nbytes -= buf.nbytes

    def add(self, box: Sequence[tuple[int, int]], values: np.ndarray) -> None:
        """Add ``values`` ``(K, *sizes)`` (one window's weighted probabilities) at ``box``
        (per axis ``(lo, hi)`` in volume coordinates; the part outside this store's region is
        skipped) and finish every chunk this was the last window of."""
        parts = []
        for a, (lo, hi) in enumerate(box):
            e = self.edges[a]
            lo2, hi2 = max(lo, e[0]), min(hi, e[-1])
            if lo2 >= hi2:
                return
            first = int(np.searchsorted(e, lo2, side="right")) - 1
            last = int(np.searchsorted(e, hi2, side="left")) - 1
            parts.append([(i, max(lo2, e[i]), min(hi2, e[i + 1])) for i in range(first, last + 1)])
        for (i, d0, d1) in parts[0]:
            for (j, h0, h1) in parts[1]:
                for (k, w0, w1) in parts[2]:
                    idx = (i, j, k)
                    buf = self._get(idx)
                    ed, eh, ew = self.edges[0][i], self.edges[1][j], self.edges[2][k]
                    (bd, _), (bh, _), (bw, _) = box
                    buf[:, d0 - ed:d1 - ed, h0 - eh:h1 - eh, w0 - ew:w1 - ew] += \
                        values[:, d0 - bd:d1 - bd, h0 - bh:h1 - bh, w0 - bw:w1 - bw]
                    self.pending[idx] -= 1
                    if self.pending[idx] == 0:
                        self._finish(idx, self.open.pop(idx))

    def _finish(self, idx: tuple[int, ...], buf: np.ndarray) -> None:
        buf /= self.runs
        box = self._chunk_box(idx)
        for s in self.sinks:
            s.write(box, buf)
        self.finished += 1

    @property
    def done(self) -> bool:
        """Every chunk finished."""
        return self.finished == self.pending.size

    @property
    def spilled_to(self) -> Path | None:
        """The private folder of spilled chunks (``None`` while nothing was spilled)."""
        return self._spill_dir

    def close(self) -> None:
        """Remove the spill folder; raises if a chunk was never finished."""
        if self._spill_dir is not None:
            shutil.rmtree(self._spill_dir, ignore_errors=True)
            self._disk = None
        if not self.done:
            raise RuntimeError(f"{self.pending.size - self.finished} prediction chunks were never finished")


class LabelSink:
    """``target[box] = argmax`` labels (uint8); with ``reduce_depth`` (chunks spanning the whole
    depth) ``target[box_h, box_w] = argmax`` of the depth-mean probability."""

    def __init__(self, target: Any, reduce_depth: bool = False) -> None:
        self.target, self.reduce_depth = target, reduce_depth

    def write(self, box: Box, prob: np.ndarray) -> None:
        if self.reduce_depth:
            self.target[box[1:]] = prob.mean(1).argmax(0).astype(np.uint8)
        else:
            self.target[box] = prob.argmax(0).astype(np.uint8)


class ProbabilitySink:
    """``target[:, box] = prob`` cast to ``target.dtype`` (e.g. a float16 zarr array)."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def write(self, box: Box, prob: np.ndarray) -> None:
        self.target[(slice(None),) + tuple(box)] = prob.astype(self.target.dtype)


class ConfusionSink:
    """Confusion matrix ``(K, K)`` of the argmax labels against ``truth`` (an array-like shaped
    like the output, ``IGNORE`` = not scored; ``(H, W)`` with ``reduce_depth``), chunk by chunk."""

    def __init__(self, truth: Any, num_classes: int, reduce_depth: bool = False, ignore: int = IGNORE) -> None:
        self.truth, self.k, self.reduce_depth, self.ignore = truth, num_classes, reduce_depth, ignore
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def write(self, box: Box, prob: np.ndarray) -> None:
        if self.reduce_depth:
            pred, key = prob.mean(1).argmax(0), tuple(box[1:])
        else:
            pred, key = prob.argmax(0), tuple(box)
        self.matrix += confusion_matrix(pred, np.asarray(self.truth[key]), self.k, self.ignore)


class TensorSink:
    """All of it, in memory: ``.tensor`` ``(K, D, H, W)`` float32."""

    def __init__(self, num_classes: int, size: Sequence[int]) -> None:
        self.array = np.zeros((num_classes, *size), np.float32)

    def write(self, box: Box, prob: np.ndarray) -> None:
        self.array[(slice(None),) + tuple(box)] = prob

    @property
    def tensor(self) -> torch.Tensor:
        return torch.from_numpy(self.array)


class Resized:
    """A sink behind the bilinear resize of whole ``(h, w)`` planes back to ``size`` ``(H, W)``
    (:func:`~fhcnn.engine.sizes.resize_back`); chunks must hold whole planes unless the sizes
    are equal (then chunks pass through as they are)."""

    def __init__(self, sink: Sink, size: Sequence[int], scaled: Sequence[int]) -> None:
        self.sink, self.size, self.scaled = sink, tuple(int(n) for n in size), tuple(int(n) for n in scaled)

    def write(self, box: Box, prob: np.ndarray) -> None:
        if self.size == self.scaled:  # nothing to resize: any chunk
            self.sink.write(box, prob)
            return
        if (box[1].stop - box[1].start, box[2].stop - box[2].start) != self.scaled:
            raise ValueError(f"a resized chunk must hold whole {self.scaled} planes, got {box}")
        full = resize_back(torch.from_numpy(np.ascontiguousarray(prob)), self.size).numpy()
        self.sink.write((box[0], slice(0, self.size[0]), slice(0, self.size[1])), full)


class DepthMeanSink:
    """``target[:, H, W] += `` each chunk's share of the mean over the ``depth`` depth slices of
    the probabilities (``target`` starts at zero; chunks of any depth add up to the mean), or
    with ``index`` the probabilities of that one depth slice; resized back from the network's
    ``scaled`` ``(h, w)`` to ``size`` ``(H, W)`` (chunks then hold whole planes; the resize is
    linear, so resizing each share equals resizing the mean). E.g. ``(K, H, W)`` class
    probabilities of one 2D label map, or of a change scene's band mean or one band."""

    def __init__(self, target: Any, size: Sequence[int], scaled: Sequence[int], depth: int,
                 index: int | None = None) -> None:
        self.target, self.size, self.scaled = target, tuple(int(n) for n in size), tuple(int(n) for n in scaled)
        self.depth, self.index = int(depth), index

    def write(self, box: Box, prob: np.ndarray) -> None:
        if self.index is None:
            plane = prob.sum(1, dtype=np.float64).astype(np.float32) / np.float32(self.depth)
        elif box[0].start <= self.index < box[0].stop:
            plane = prob[:, self.index - box[0].start]
        else:
            return
        if self.size != self.scaled:
            plane = resize_back(torch.from_numpy(np.ascontiguousarray(plane)), self.size).numpy()
            box = (box[0], slice(0, self.size[0]), slice(0, self.size[1]))
        key = (slice(None),) + tuple(box[1:])
        if self.index is None:
            self.target[key] += plane
        else:
            self.target[key] = plane


def blend_factor(tiling: Tiling, start: Sequence[int], factors: Sequence[dict[int, np.ndarray]]) -> np.ndarray:
    """``(d, h, w)`` float32 weight-over-coverage of the window at ``start`` (outer product of the
    per-axis ``factors`` of :meth:`Tiling.factors`)."""
    f0, f1, f2 = (factors[a][start[a]] for a in range(3))
    return (f0[:, None, None] * f1[None, :, None] * f2[None, None, :]).astype(np.float32)


def estimate_chunks(shape: Sequence[int], chunks: Sequence[int]) -> int:
    """Number of chunks of ``chunks`` in a region of ``shape``."""
    return math.prod(-(-int(n) // int(c)) for n, c in zip(shape, chunks))
