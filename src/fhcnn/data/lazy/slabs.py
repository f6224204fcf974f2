"""Slabs of streamed passes and each process's share of them.

A streamed pass (statistics, label scans, copies) reads an array in boxes of at most
:data:`SLAB_BYTES`, in the storage order of its source (:func:`storage_order`):
:func:`whole_slabs` (whole slices along axis 0), :func:`iter_slabs` (slices, cut where one is
larger than the budget) and :func:`chunk_boxes` (boxes of whole chunks of a grid). Several
processes (``torchrun``) share one pass by :class:`PassShare`: each reads a contiguous block of
its slabs, and every process gets the result of the whole pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

#: Bytes of one streamed read (statistics, label scans, copies) in float64: the reader's memory
#: bound (a pass holds a few such buffers).
SLAB_BYTES = 16 * 2**20


def whole_slabs(shape: Sequence[int], itemsize: int, max_bytes: int = SLAB_BYTES) -> list[slice]:
    """Slices along axis 0 of an array of ``shape``, every other axis whole, each at most
    ``max_bytes`` at ``itemsize`` bytes per element but never less than one slice (unlike
    :func:`iter_slabs`, which cuts a slice larger than the budget)."""
    n = int(shape[0])
    per_slice = max(1, int(itemsize) * int(np.prod([int(k) for k in shape[1:]], dtype=np.int64)))
    step = max(1, int(max_bytes) // per_slice)
    return [slice(z, min(n, z + step)) for z in range(0, n, step)]


def storage_order(shape: Sequence[int], axis: int | Sequence[int]) -> list[int]:
    """Every axis of ``shape``, slowest first, for a pass in storage order along ``axis``: an
    axis (the others by their distance from it, the nearest first: C order for ``axis=0``,
    Fortran order for the last axis), or the whole order itself (e.g. ``(2, 0, 1)`` for a
    band-first ``(B, H, W)`` file read as ``(H, W, B)``)."""
    nd = len(shape)
    if isinstance(axis, (int, np.integer)):
        if not 0 <= axis < nd:
            raise ValueError(f"axis {axis} is outside the {nd} axes of shape {tuple(shape)}")
        return [int(axis)] + sorted((a for a in range(nd) if a != axis), key=lambda a: abs(a - axis))
    order = [int(a) for a in axis]
    if sorted(order) != list(range(nd)):
        raise ValueError(f"axis order {tuple(order)} is not an order of the {nd} axes of shape {tuple(shape)}")
    return order


def iter_slabs(shape: Sequence[int], itemsize: int, max_bytes: int = SLAB_BYTES,
               axis: int | Sequence[int] = 0) -> Iterator[tuple[slice, ...]]:
    """Boxes covering an array of ``shape`` in storage order, each at most ``max_bytes`` (at
    ``itemsize`` bytes per element) but never less than one element: the boxes of
    :func:`chunk_boxes` with chunks of one element.

    Slabs are whole slices along ``axis``, several at a time; when one slice is larger than
    ``max_bytes`` it is cut along the other axes too, the nearest to ``axis`` first (for
    ``axis=0`` of a 3D array rows of axis 1, for ``axis=2`` rows of axis 1), or in the order
    given (``axis`` a sequence of every axis, slowest first: :func:`storage_order`).
    """
    yield from chunk_boxes(shape, [1] * len(shape), itemsize, max_bytes, axis)



def chunk_boxes(shape: Sequence[int], chunks: Sequence[int], itemsize: int, max_bytes: int = SLAB_BYTES,
                axis: int | Sequence[int] = 0) -> Iterator[tuple[slice, ...]]:
    """Boxes of whole chunks of the grid ``chunks`` covering an array of ``shape``, in storage
    order along ``axis`` like :func:`iter_slabs` (slabs along ``axis``, cut along the other axes,
    the nearest to ``axis`` first, only where a slab one chunk thick exceeds the budget), each
    at most ``max_bytes`` at ``itemsize`` bytes per element but never less than one chunk.
    Writing such boxes to a zarr array chunked ``chunks`` writes every chunk once, whole.

    Example:
        >>> [b[0] for b in chunk_boxes((10, 4, 4), (2, 4, 4), 1, max_bytes=64)]
        [slice(0, 4, None), slice(4, 8, None), slice(8, 10, None)]
    """
    sizes = [int(n) for n in shape]
    grid = [max(1, min(int(c), n)) for c, n in zip(chunks, sizes)]
    nd = len(sizes)
    order = storage_order(sizes, axis)
    budget = max(1, max_bytes // max(1, itemsize))
    step = grid.copy()
    box = math.prod(grid)
    for a in reversed(order):  # the innermost axes (cut last) grow first, in whole chunks
        others = box // step[a]
        whole = others * sizes[a] <= budget
        step[a] = sizes[a] if whole else min(sizes[a], grid[a] * max(1, budget // (others * grid[a])))
        box = others * step[a]
        if step[a] < sizes[a]:
            break

    def boxes(level: int, box: list[slice]) -> Iterator[tuple[slice, ...]]:
        if level == nd:
            yield tuple(box)
            return
        a = order[level]
        for s in range(0, sizes[a], step[a]):
            box[a] = slice(s, min(s + step[a], sizes[a]))
            yield from boxes(level + 1, box)

    yield from boxes(0, [slice(0, 0)] * nd)


@dataclass(frozen=True)
class PassShare:
    """One process's share of a streamed pass (statistics, label scan) that several processes
    make together: of the pass's ``n`` slabs, process ``rank`` of ``processes`` reads the
    contiguous block :meth:`block`; ``gather`` hands every process's partial result, in rank
    order, to every process (e.g. ``torch.distributed.all_gather_object``), which merges them
    in slab order: the result is the one process's, bit for bit. The default is one process.
    """

    rank: int = 0
    processes: int = 1
    gather: Callable[[Any], list[Any]] | None = None

    def block(self, n: int) -> range:
        """This process's slabs of ``n``."""
        return range(n * self.rank // self.processes, n * (self.rank + 1) // self.processes)

    def combine(self, part: Any) -> list[Any]:
        """Every process's ``part``, in rank order."""
        if self.processes == 1:
            return [part]
        assert self.gather is not None, "a pass shared by several processes needs gather"
        return self.gather(part)


ONE_PROCESS = PassShare()
