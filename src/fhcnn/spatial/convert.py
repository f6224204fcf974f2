"""Turning a network into its split form, and reducing what each slab computed.

:func:`split_module` replaces, anywhere inside a module, every
:class:`~fhcnn.layers.SymmetricLayer` and :class:`~fhcnn.wavelets.LearnableWavelet` by its
split counterpart (sharing the parameters), and every stride-1 "same" convolution (a dense
model's conv head) by a :class:`~fhcnn.spatial.layers.SplitConv`. Haar transforms and
pointwise parts (1x1 openings and classifiers, activations) need no change. A
:class:`~fhcnn.HyperbolicNetwork` or :class:`~fhcnn.models.DenseHyperbolicModel` then runs on
slabs: ``forward``, ``inverse`` and all three gradient modes.

Parameters are replicated on every process; each process's gradient is its slab's part of
the sum, so :func:`reduce_gradients` all-reduces (sums) them over the space group and
averages them over the data group.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch import distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ..layers import SymmetricLayer
from ..wavelets import LearnableWavelet
from .halo import COMM
from .layers import SplitConv, SplitLearnableWavelet, SplitSymmetricLayer, splittable_conv
from .split import SpatialSplit

__all__ = ["global_sum", "reduce_gradients", "size_multiple", "split_module"]

_KNOWN_NORMS = (nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def _convert(m: nn.Module, split: SpatialSplit) -> nn.Module:
    if isinstance(m, (SplitSymmetricLayer, SplitLearnableWavelet, SplitConv)):
        return m
    if isinstance(m, SymmetricLayer):
        return SplitSymmetricLayer.from_layer(m, split)
    if isinstance(m, LearnableWavelet):
        return SplitLearnableWavelet.from_wavelet(m, split)
    if splittable_conv(m) and any(k > 1 for k in m.kernel_size):  # type: ignore[union-attr]
        return SplitConv(m, split)  # type: ignore[arg-type]
    return m


def split_module(module: nn.Module, split: SpatialSplit) -> nn.Module:
    """Convert ``module`` (in place, like ``SyncBatchNorm.convert_sync_batchnorm``) to run on
    the slabs of ``split``; returns it (or its replacement if it is itself a layer).

    The parameters are the same tensors, so an optimizer built before stays valid and the
    state dict is unchanged. Every process must hold the same parameters (same seed or a
    broadcast).

    Raises:
        ValueError: when the module's spatial dimension differs from the split's.
        TypeError: for a normalization or a neighbour-looking module this package cannot
            split (a convolution with a kernel larger than 1, outside a symmetric layer, that
            is not stride-1 with an odd cubic kernel and "same" zero padding).
    """
    new = _convert(module, split)
    if new is not module:
        return new
    for name, child in list(module.named_children()):
        if isinstance(child, _KNOWN_NORMS) and not isinstance(module, (SymmetricLayer,)):
            raise TypeError(f"{name}: a normalization outside a symmetric layer is not split; "
                            f"apply fhcnn.spatial.split_norm to it explicitly")
        if (isinstance(child, nn.modules.conv._ConvNd) and any(k > 1 for k in child.kernel_size)
                and not splittable_conv(child)):
            raise TypeError(f"{name}: a {child.kernel_size} convolution outside a symmetric layer "
                            f"looks at neighbours and is not split")
        converted = split_module(child, split)
        if converted is not child:
            setattr(module, name, converted)
    return module


def size_multiple(module: nn.Module) -> int:
    """What every slab's length must be a multiple of: ``2**coarsenings`` of a
    :class:`~fhcnn.HyperbolicNetwork` (or a dense model's ``size_multiple``); 1 otherwise."""
    if hasattr(module, "size_multiple"):
        return int(module.size_multiple)  # type: ignore[arg-type]
    if hasattr(module, "max_level"):
        return 2 ** int(module.max_level)  # type: ignore[arg-type]
    return 1


def reduce_gradients(module: nn.Module, split: SpatialSplit) -> None:
    """Sum every parameter gradient over the space group and average it over the data group
    (call after ``backward``, before the optimizer step). One all-reduce per group on a
    flattened buffer; parameters without a gradient are skipped (they must be the same on
    every process)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads or (split.size == 1 and split.data_size == 1):
        return
    flat = _flatten_dense_tensors(grads)
    if split.size > 1:
        COMM["allreduce"] += flat.numel() * flat.element_size()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=split.group)
    if split.data_size > 1:
        COMM["allreduce"] += flat.numel() * flat.element_size()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=split.data_group)
        flat /= split.data_size
    for g, r in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(r)


def global_sum(x: Tensor, split: SpatialSplit, data: bool = False) -> Tensor:
    """The (detached) sum of ``x`` over the space group, and averaged over the data group if
    ``data``: the global value of a per-slab loss term, for logging."""
    out = x.detach().clone()
    if split.size > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=split.group)
    if data and split.data_size > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=split.data_group)
        out /= split.data_size
    return out
