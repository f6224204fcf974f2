"""The halo exchange and the differentiable all-reduce: the only communication of a split net.

:func:`halo_pad` extends a slab along its split axes by ``lo`` planes from the previous slab
and ``hi`` planes from the next one (zeros past the global ends, or the far end of the volume
when ``periodic``), so a convolution of the padded slab without padding along those axes
equals the global convolution restricted to the slab. Several axes are exchanged one after
the other, each on the tensor already padded along the earlier ones, which carries the corner
(edge) blocks to the diagonal neighbours without extra messages.

Its backward is the adjoint: the gradient of each halo goes back to the process it came from
and is *added* into that process's edge planes (a reverse exchange with addition).

Both ends use ``torch.distributed`` point-to-point calls (``isend``/``irecv``; Gloo on CPUs,
NCCL on GPUs). :data:`COMM` counts the bytes sent, for the benchmark.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .split import SpatialSplit

__all__ = ["COMM", "AllReduceSum", "HaloExchange", "all_reduce_sum", "count_comm", "halo_pad"]

# bytes sent by this process: halo point-to-point messages and all-reduce inputs
COMM: dict[str, int] = {"halo": 0, "allreduce": 0, "messages": 0}

# tags keep the two directions apart when both neighbours are the same process (grid of 2)
_TAG_LEFTWARD, _TAG_RIGHTWARD = 0, 1


@contextlib.contextmanager
def count_comm() -> Iterator[dict[str, int]]:
    """Within the block, count the bytes this process sends; yields the running dict."""
    start = dict(COMM)
    out = {k: 0 for k in COMM}
    try:
        yield out
    finally:
        for k, v in COMM.items():
            out[k] = v - start[k]


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _swap(split: SpatialSplit, sends: list[tuple[int, Tensor, int]],
          recvs: list[tuple[int, Tensor, int]]) -> None:
    """Exchange ``(group rank, tensor, tag)`` messages in one ``batch_isend_irecv`` (a group of
    point-to-point calls, which NCCL needs to avoid a send/receive deadlock) and wait.

    Callers post sends to the next slab before sends to the previous one, and receives from the
    previous slab before receives from the next one, so messages match in posting order too
    (NCCL ignores tags; with two slabs and a periodic axis both neighbours are one process).
    """
    ops = [dist.P2POp(dist.irecv, t, split.global_rank(r), split.group, tag) for r, t, tag in recvs]
    for r, t, tag in sends:
        ops.append(dist.P2POp(dist.isend, t, split.global_rank(r), split.group, tag))
        COMM["halo"] += _nbytes(t)
        COMM["messages"] += 1
    if ops:
        for q in dist.batch_isend_irecv(ops):
            q.wait()


def _exchange(x: Tensor, split: SpatialSplit, i: int, lo: int, hi: int, periodic: bool) -> Tensor:
    """``x`` padded along ``2 + axes[i]`` with ``lo`` planes before and ``hi`` after."""
    d = 2 + split.axes[i]
    n = x.shape[d]
    left, right = split.neighbour(i, -1, periodic), split.neighbour(i, +1, periodic)
    if split.grid[i] == 1:  # the whole axis is here: wrap locally or pad with zeros
        if periodic:
            return torch.cat([x.narrow(d, n - lo, lo), x, x.narrow(d, 0, hi)], dim=d)
        left = right = None
    halo_lo = x.new_zeros(*x.shape[:d], lo, *x.shape[d + 1:])
    halo_hi = x.new_zeros(*x.shape[:d], hi, *x.shape[d + 1:])
    sends, recvs = [], []
    if right is not None and lo:  # the next slab's lower halo is my last ``lo`` planes
        sends.append((right, x.narrow(d, n - lo, lo).contiguous(), _TAG_RIGHTWARD))
    if left is not None and hi:  # the previous slab's upper halo is my first ``hi`` planes
        sends.append((left, x.narrow(d, 0, hi).contiguous(), _TAG_LEFTWARD))
    if left is not None and lo:
        recvs.append((left, halo_lo, _TAG_RIGHTWARD))
    if right is not None and hi:
        recvs.append((right, halo_hi, _TAG_LEFTWARD))
    _swap(split, sends, recvs)
    return torch.cat([halo_lo, x, halo_hi], dim=d)


def _exchange_adjoint(g: Tensor, split: SpatialSplit, i: int, lo: int, hi: int, periodic: bool) -> Tensor:
    """Adjoint of :func:`_exchange`: halo gradients go home and are added into edge planes."""
    d = 2 + split.axes[i]
    n = g.shape[d] - lo - hi
    out = g.narrow(d, lo, n).clone()
    g_lo, g_hi = g.narrow(d, 0, lo), g.narrow(d, lo + n, hi)
    if split.grid[i] == 1:
        if periodic:
            out.narrow(d, n - lo, lo).add_(g_lo)
            out.narrow(d, 0, hi).add_(g_hi)
        return out
    left, right = split.neighbour(i, -1, periodic), split.neighbour(i, +1, periodic)
    sends: list[tuple[int, Tensor, int]] = []
    recvs: list[tuple[int, Tensor, int]] = []
    from_left = out.new_empty(*out.shape[:d], hi, *out.shape[d + 1:]) if left is not None and hi else None
    from_right = out.new_empty(*out.shape[:d], lo, *out.shape[d + 1:]) if right is not None and lo else None
    if right is not None and hi:  # my upper halo came from the next slab's first planes
        sends.append((right, g_hi.contiguous(), _TAG_RIGHTWARD))
    if left is not None and lo:  # my lower halo came from the previous slab's last planes
        sends.append((left, g_lo.contiguous(), _TAG_LEFTWARD))
    if from_left is not None and left is not None:  # gradient of the previous slab's upper halo
        recvs.append((left, from_left, _TAG_RIGHTWARD))
    if from_right is not None and right is not None:
        recvs.append((right, from_right, _TAG_LEFTWARD))
    _swap(split, sends, recvs)
    if from_left is not None:
        out.narrow(d, 0, hi).add_(from_left)
    if from_right is not None:
        out.narrow(d, n - lo, lo).add_(from_right)
    return out


class HaloExchange(torch.autograd.Function):
    """``apply(x, split, i, lo, hi, periodic)``: pad ``x`` along ``2 + split.axes[i]`` with the
    neighbours' planes; backward is the reverse exchange with addition. Saves no tensors."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, split: SpatialSplit, i: int, lo: int, hi: int,  # type: ignore[override]
                periodic: bool) -> Tensor:
        ctx.args = (split, i, lo, hi, periodic)
        return _exchange(x, split, i, lo, hi, periodic)

    @staticmethod
    def backward(ctx: Any, g: Tensor):  # type: ignore[override]
        return _exchange_adjoint(g, *ctx.args), None, None, None, None, None


def halo_pad(x: Tensor, split: SpatialSplit, width: int | tuple[int, int],
             periodic: bool = False) -> Tensor:
    """Pad ``x`` ``(N, C, *S_local)`` along every split axis with ``width`` planes (or
    ``(lo, hi)``) from the neighbouring slabs: ``(N, C, *S_local) -> (N, C, *S_local + lo + hi)``
    on the split axes, unchanged elsewhere.

    Raises:
        ValueError: if a slab is thinner than the halo it must give away.
    """
    lo, hi = (width, width) if isinstance(width, int) else width
    for i, a in enumerate(split.axes):
        n = x.shape[2 + a]
        if max(lo, hi) > n:
            raise ValueError(f"spatial axis {a} ({split.axis_name(a)}): the slab has {n} plane(s) but "
                             f"the halo needs {max(lo, hi)}; use fewer slabs along this axis")
        x = HaloExchange.apply(x, split, i, lo, hi, periodic)
    return x


class AllReduceSum(torch.autograd.Function):
    """``y = sum over the group of x`` on every process; the adjoint is the same all-reduce of
    the output gradients (each process's ``y`` feeds only its own part of the loss)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: dist.ProcessGroup | None) -> Tensor:  # type: ignore[override]
        ctx.group = group
        out = x.clone()
        COMM["allreduce"] += _nbytes(out)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor):  # type: ignore[override]
        out = g.clone()
        COMM["allreduce"] += _nbytes(out)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=ctx.group)
        return out, None


def all_reduce_sum(x: Tensor, split: SpatialSplit) -> Tensor:
    """Differentiable sum of ``x`` over the space group (identity on one process)."""
    if split.size == 1:
        return x
    return AllReduceSum.apply(x, split.group)
