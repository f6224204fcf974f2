"""Group and batch normalization whose statistics are reduced over the slabs of a split volume.

Each process sums over its own voxels only (never a halo); the sums are all-reduced over the
space group (:class:`~fhcnn.spatial.halo.AllReduceSum`, whose backward all-reduces the
gradient terms), so the statistics, the output and every gradient are the global ones. Mean
and variance take two passes (the sum, then the sum of squared deviations), as accurate as
the single-process kernels. Parameters and buffers keep their names (state-dict compatible).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .halo import all_reduce_sum
from .split import SpatialSplit

__all__ = ["SplitBatchNorm", "SplitGroupNorm", "global_mean_std", "split_norm"]


def _moments(x: Tensor, split: SpatialSplit, dims: tuple[int, ...], count: int
             ) -> tuple[Tensor, Tensor, Tensor]:
    """Global mean, deviation ``x - mean`` and biased variance over ``dims`` of ``x``."""
    mean = all_reduce_sum(x.sum(dims, keepdim=True), split) / count
    dev = x - mean
    var = all_reduce_sum((dev * dev).sum(dims, keepdim=True), split) / count
    return mean, dev, var


class SplitGroupNorm(nn.GroupNorm):
    """:class:`torch.nn.GroupNorm` over a volume split by ``split`` (also instance norm, one
    group per channel). Shapes: ``(N, C, *S_local) -> (N, C, *S_local)``."""

    def __init__(self, num_groups: int, num_channels: int, split: SpatialSplit, eps: float = 1e-5,
                 affine: bool = True) -> None:
        super().__init__(num_groups, num_channels, eps, affine)
        self.split = split

    @classmethod
    def from_module(cls, m: nn.GroupNorm, split: SpatialSplit) -> SplitGroupNorm:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.num_groups, new.num_channels, new.eps, new.affine = m.num_groups, m.num_channels, m.eps, m.affine
        new.weight, new.bias = m.weight, m.bias  # the same Parameter objects
        new.train(m.training)
        new.split = split
        return new

    def forward(self, x: Tensor) -> Tensor:
        return self.functional(x, self.weight, self.bias)

    def functional(self, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                   training: bool | None = None) -> Tensor:
        """The global group norm with the given affine tensors (used by the reversible
        backward's recomputation, :func:`fhcnn.layers._functional_norm`); the same in either
        mode (``training`` is accepted for the common signature)."""
        n, c = x.shape[:2]
        xg = x.reshape(n, self.num_groups, -1)
        count = xg.shape[-1] * self.split.size
        _, dev, var = _moments(xg, self.split, (2,), count)
        y = (dev * torch.rsqrt(var + self.eps)).reshape(x.shape)
        if self.affine and weight is not None and bias is not None:
            shape = (1, c) + (1,) * (x.dim() - 2)
            y = y * weight.reshape(shape) + bias.reshape(shape)
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", split={self.split.grid} on axes {self.split.axes}"


class SplitBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm with statistics over the batch and the *whole* split volume (reduced over the
    space group; data-parallel replicas keep their own statistics, as under DDP without
    ``SyncBatchNorm``). Running statistics are updated with the global mean and the unbiased
    global variance; in eval mode the running statistics are used (pointwise, local).
    Still a ``_BatchNorm``, so :func:`fhcnn.layers.frozen_norm_stats` freezes it in the
    reversible backward. Shapes: ``(N, C, *S_local) -> (N, C, *S_local)``."""

    split: SpatialSplit

    @classmethod
    def from_module(cls, m: nn.modules.batchnorm._BatchNorm, split: SpatialSplit) -> SplitBatchNorm:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for k in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
            setattr(new, k, getattr(m, k))
        new.weight, new.bias = m.weight, m.bias
        for k in ("running_mean", "running_var", "num_batches_tracked"):
            new.register_buffer(k, getattr(m, k))
        new.train(m.training)
        new.split = split
        return new

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 3:
            raise ValueError(f"expected (N, C, *S) input, got shape {tuple(x.shape)}")

    def functional(self, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                   training: bool | None = None,
                   stats: tuple[Tensor | None, Tensor | None] | None = None) -> Tensor:
        """The global batch norm with the given affine tensors and no running-statistics update
        (batch statistics in training mode, running ones in eval mode; ``training``: the mode
        to evaluate in, ``None`` the module's mode now; ``stats``: the running mean and
        variance to use, ``None`` the module's): the reversible backward's recomputation
        (:func:`fhcnn.layers._functional_norm`), in the mode and with the statistics of the
        forward pass."""
        self._check_input_dim(x)
        training = self.training if training is None else training
        mean, var = (self.running_mean, self.running_var) if stats is None else stats
        use_batch = training or (mean is None and var is None)
        if not use_batch:
            return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)
        dims = (0, *range(2, x.dim()))
        count = math.prod(x.shape[d] for d in dims) * self.split.size
        _, dev, var = _moments(x, self.split, dims, count)
        y = dev * torch.rsqrt(var + self.eps)
        if self.affine and weight is not None and bias is not None:
            shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
            y = y * weight.reshape(shape) + bias.reshape(shape)
        return y

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        if not use_batch:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        dims = (0, *range(2, x.dim()))
        count = math.prod(x.shape[d] for d in dims) * self.split.size
        mean, dev, var = _moments(x, self.split, dims, count)
        y = dev * torch.rsqrt(var + self.eps)
        shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
        if self.training and self.track_running_stats and self.running_mean is not None \
                and self.running_var is not None:
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.reshape(-1), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.reshape(-1) * (count / max(count - 1, 1)),
                                                       alpha=factor)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", split={self.split.grid} on axes {self.split.axes}"


def global_mean_std(x: Tensor, split: SpatialSplit) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (unbiased) standard deviation of the *global* volume from this
    process's slab ``(N, C, *S_local)`` (two all-reduces), for input standardization
    ``(x - mean) / std``, which is then pointwise and local. Not differentiable (statistics of
    data). Returns two tensors of shape ``(C,)``."""
    with torch.no_grad():
        dims = (0, *range(2, x.dim()))
        count = math.prod(x.shape[d] for d in dims) * split.size
        mean, _, var = _moments(x, split, dims, count)
    return mean.reshape(-1), (var.reshape(-1) * (count / max(count - 1, 1))).sqrt()


def split_norm(m: nn.Module, split: SpatialSplit) -> nn.Module:
    """The split counterpart of a normalization module (sharing its parameters and buffers);
    ``Identity`` stays as it is.

    Raises:
        TypeError: for a normalization this package does not know how to split.
    """
    if isinstance(m, (SplitGroupNorm, SplitBatchNorm, nn.Identity)):
        return m
    if isinstance(m, nn.GroupNorm):
        return SplitGroupNorm.from_module(m, split)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return SplitBatchNorm.from_module(m, split)
    raise TypeError(f"cannot split the normalization {type(m).__name__}; supported: GroupNorm, "
                    f"BatchNorm1d/2d/3d, Identity")
