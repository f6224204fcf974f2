"""Split counterparts of the symmetric layer and the learnable wavelet.

* :class:`SplitSymmetricLayer`: ``K`` and ``K^T`` pad the slab with ``kernel_size // 2``
  halo planes from the neighbours (zeros at the volume's ends) and convolve without padding
  along the split axes, so the result is the global operator on this slab; the normalization
  is the global one (:mod:`fhcnn.spatial.norm`). Being a :class:`~fhcnn.layers.SymmetricLayer`
  with the same parameter names, it runs unchanged inside the reversible backward, which
  evaluates it through its own ``neg_forward(y, params, modes)`` with the tensors and modes
  of the forward pass; the exchanges happen again for the reconstruction and, reversed, for
  the vector-Jacobian product.
* :class:`SplitLearnableWavelet`: the lattice's one-sample delay is a periodic shift of the
  second polyphase channel; along a split axis it takes one plane from the next slab
  (analysis) or the previous one (synthesis), the last slab wrapping to the first.

Haar transforms need nothing: kernel = stride = 2 is local when every slab's length is a
multiple of ``2**levels``.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor, nn

from ..layers import _CONV_T, SymmetricLayer, conv
from ..wavelets import LearnableWavelet
from .halo import HaloExchange, halo_pad
from .norm import split_norm
from .split import SpatialSplit

__all__ = ["SplitLearnableWavelet", "SplitSymmetricLayer"]

_M = TypeVar("_M", bound=nn.Module)


def _clone_as(module: nn.Module, cls: type[_M], split: SpatialSplit, kind: str) -> _M:
    """A shallow copy of ``module`` (a ``kind`` with the split's spatial dimension) of class
    ``cls`` on ``split``, with its own module registries, sharing the parameter and buffer
    tensors (so optimizers built on the original stay valid)."""
    if split.dim != module.dim:
        raise ValueError(f"the split is {split.dim}D but the {kind} is {module.dim}D")
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = dict(module._modules)
    new.split = split  # type: ignore[assignment]
    return new


class SplitSymmetricLayer(SymmetricLayer):
    """:class:`~fhcnn.layers.SymmetricLayer` on one slab of a split volume (see module doc).

    Build it with :meth:`from_layer` (or :func:`fhcnn.spatial.split_module`).
    Shapes: ``(N, C, *S_local) -> (N, C, *S_local)``.
    """

    split: SpatialSplit

    @classmethod
    def from_layer(cls, layer: SymmetricLayer, split: SpatialSplit) -> SplitSymmetricLayer:
        new = _clone_as(layer, cls, split, "layer")
        new.norm = split_norm(layer.norm, split)
        return new

    def _padding(self, pad: int, split_pad: int) -> tuple[int, ...]:
        return tuple(split_pad if a in self.split.axes else pad for a in range(self.dim))

    def _conv_with(self, y: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``K y + b`` on the slab: ``(N, C, *S_local) -> (N, M, *S_local)``."""
        p = self.kernel_size // 2
        y = halo_pad(y, self.split, p)
        return conv(y, weight, bias, padding=self._padding(p, 0))

    def _conv_adjoint_with(self, z: Tensor, weight: Tensor) -> Tensor:
        """``K^T z`` on the slab: ``(N, M, *S_local) -> (N, C, *S_local)``."""
        p = self.kernel_size // 2
        z = halo_pad(z, self.split, p)
        if self.adjoint == "conv_transpose":
            # the full transposed convolution of the padded slab, cropped by 2p on split axes
            return _CONV_T[self.dim](z, weight, padding=self._padding(p, 2 * p))
        w = weight.transpose(0, 1).flip(list(range(2, 2 + self.dim)))
        return conv(z, w, padding=self._padding(p, 0))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", split={self.split.grid} on axes {self.split.axes}"


def _shift(b: Tensor, axis: int, split: SpatialSplit, step: int) -> Tensor:
    """``torch.roll(b, step, axis)`` of the *global* periodic tensor (``step`` = +-1)."""
    i = split.split_index(axis)
    if i is None:
        return torch.roll(b, shifts=step, dims=axis)
    n = b.shape[axis]
    # roll by -1 takes one plane from the next slab; roll by +1 one from the previous
    lo, hi = (0, 1) if step < 0 else (1, 0)
    padded = HaloExchange.apply(b, split, i, lo, hi, True)
    return padded.narrow(axis, 1 if step < 0 else 0, n)


class SplitLearnableWavelet(LearnableWavelet):
    """:class:`~fhcnn.wavelets.LearnableWavelet` on one slab of a split volume (periodic across
    the slabs). Same parameters (``theta``). Shapes as the single-process transform, on slabs.
    """

    split: SpatialSplit

    @classmethod
    def from_wavelet(cls, w: LearnableWavelet, split: SpatialSplit) -> SplitLearnableWavelet:
        return _clone_as(w, cls, split, "wavelet")

    _piece = "slab"

    def _roll(self, t: Tensor, axis: int, step: int) -> Tensor:
        """The delay's shift of the *global* periodic tensor: across the slabs (see module doc);
        forward, inverse and ``functional`` are the lattice's own, with this shift."""
        return _shift(t, axis, self.split, step)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", split={self.split.grid} on axes {self.split.axes}"
