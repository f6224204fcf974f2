"""Split counterparts of the symmetric layer and the learnable wavelet.

* :class:`SplitSymmetricLayer`: ``K`` and ``K^T`` pad the slab with ``kernel_size // 2``
  halo planes from the neighbours (zeros at the volume's ends) and convolve without padding
  along the split axes, so the result is the global operator on this slab; the normalization
  is the global one (:mod:`fhcnn.spatial.norm`). Being a :class:`~fhcnn.layers.SymmetricLayer`
  with the same parameter names, it runs unchanged inside the reversible backward, which
  evaluates it through its own ``neg_forward(y, params, modes)`` with the tensors and modes
  of the forward pass; the exchanges happen again for the reconstruction and, reversed, for
  the vector-Jacobian product.
* :class:`SplitConv`: a stride-1 convolution with "same" zero padding (the conv head of a dense
  model) pads the slab with ``kernel_size // 2`` halo planes the same way.
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
from torch.autograd.function import FunctionCtx

from ..layers import _CONV, _CONV_T, SymmetricLayer, conv
from ..wavelets import LearnableWavelet
from .halo import HaloExchange, halo_pad
from .norm import split_norm
from .split import SpatialSplit

__all__ = ["SplitConv", "SplitLearnableWavelet", "SplitSymmetricLayer", "splittable_conv"]

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
        return _axis_padding(self.split, self.dim, pad, split_pad)

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


def _axis_padding(split: SpatialSplit, dim: int, pad: int, split_pad: int = 0) -> tuple[int, ...]:
    """A convolution's padding on a slab: ``split_pad`` along the split axes (whose halo planes
    came from the neighbours), ``pad`` along the others."""
    return tuple(split_pad if a in split.axes else pad for a in range(dim))


def splittable_conv(m: nn.Module) -> bool:
    """Whether ``m`` is a convolution :class:`SplitConv` computes on slabs: stride 1, no
    dilation, an odd cubic kernel and "same" zero padding."""
    if not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return False
    k = set(m.kernel_size)
    return (len(k) == 1 and k.pop() % 2 == 1 and set(m.stride) == {1} and set(m.dilation) == {1}
            and m.padding_mode == "zeros" and m.padding == tuple(n // 2 for n in m.kernel_size))


class SplitConv(nn.Module):
    """A stride-1 "same" convolution (:func:`splittable_conv`) on one slab of a split volume:
    halo planes from the neighbours (zeros at the volume's ends), no padding along the split
    axes. Shares the convolution's ``weight`` and ``bias`` (same state-dict names).

    Shapes: ``(N, C_in, *S_local) -> (N, C_out, *S_local)``.
    """

    def __init__(self, module: nn.Conv1d | nn.Conv2d | nn.Conv3d, split: SpatialSplit) -> None:
        super().__init__()
        if not splittable_conv(module):
            raise TypeError(f"{module}: only a stride-1 convolution with an odd cubic kernel and 'same' "
                            f"zero padding is split")
        self.dim = len(module.kernel_size)
        if split.dim != self.dim:
            raise ValueError(f"the split is {split.dim}D but the convolution is {self.dim}D")
        self.weight, self.bias = module.weight, module.bias
        self.groups, self.split = module.groups, split
        self.pad = module.kernel_size[0] // 2

    def forward(self, x: Tensor) -> Tensor:
        return _HaloConv.apply(x, self.weight, self.bias, self)  # type: ignore[no-any-return]

    def padded_conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The convolution of the slab ``x`` padded with its halo planes."""
        y = halo_pad(x, self.split, self.pad)
        padding = _axis_padding(self.split, self.dim, self.pad)
        if self.groups == 1:
            return conv(y, weight, bias, padding=padding)
        return _CONV[self.dim](y, weight, bias, padding=padding, groups=self.groups)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel {self.weight.shape[2]}, "
                f"split={self.split.grid} on axes {self.split.axes}")


class _HaloConv(torch.autograd.Function):
    """:meth:`SplitConv.padded_conv` that keeps only the slab (as the convolution of the whole
    volume keeps the volume, so the bytes kept split with the volume) and, in the backward,
    exchanges the halo again (every process of the split runs the same backward)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None,  # type: ignore[override]
                module: SplitConv) -> Tensor:
        ctx.save_for_backward(x, weight, bias)  # type: ignore[arg-type]
        ctx.module = module  # type: ignore[attr-defined]
        with torch.no_grad():
            return module.padded_conv(x, weight, bias)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight, bias = ctx.saved_tensors  # type: ignore[attr-defined]
        need = ctx.needs_input_grad[:3]  # type: ignore[attr-defined]
        ins = [t.detach().requires_grad_(n) if t is not None else None for t, n in zip((x, weight, bias), need)]
        with torch.enable_grad():
            y = ctx.module.padded_conv(*ins)  # type: ignore[attr-defined]
        wanted = [t for t, n in zip(ins, need) if n and t is not None]
        got = iter(torch.autograd.grad(y, wanted, grad) if wanted else ())
        return (*(next(got) if n and t is not None else None for t, n in zip(ins, need)), None)


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
