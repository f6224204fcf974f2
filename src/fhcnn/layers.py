"""The symmetric layer ``f(Y) = -K^T sigma(N(K Y + b))`` and its normalizations.

``K`` is a 3x3 (2D) or 3x3x3 (3D) stride-1 "same" convolution from ``C`` channels to a
hidden width ``M``; ``K^T`` is its adjoint with the *same* weights, computed as an ordinary
convolution with ``K.transpose(0, 1).flip(spatial dims)`` (on CPU several times faster
than ``conv_transpose3d``; both agree exactly, see the tests).

Shapes: ``(N, C, *S) -> (N, C, *S)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from .wavelets import check_count, check_dim, check_like_parameters, check_number

__all__ = ["ACTIVATIONS", "NORMS", "Activation", "Norm", "SymmetricLayer", "conv", "frozen_norm_stats"]

Norm = Literal["none", "batch", "group", "instance"]
Activation = Literal["relu", "leaky_relu", "tanh", "silu", "gelu", "softplus"]

NORMS: tuple[str, ...] = ("none", "batch", "group", "instance")
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
}

_CONV = {2: F.conv2d, 3: F.conv3d, 1: F.conv1d}
_CONV_T = {2: F.conv_transpose2d, 3: F.conv_transpose3d, 1: F.conv_transpose1d}

#: PyTorch's own bound (``ConvParams::use_mkldnn``): with one sample, a 3x3x3 kernel and
#: ``N * C * D * H`` at most this, a CPU convolution runs in the reference ``slow_conv3d``.
_ONEDNN_MIN_NCDH = 20480


def _one_sample_slow_on_cpu(x: Tensor, weight: Tensor) -> bool:
    """Whether ``F.conv3d(x, weight)`` would take PyTorch's slow reference kernel: one float32
    sample on the CPU with few ``C x D x H`` (measured: up to 19x slower per window than the
    oneDNN kernel it uses for a batch of 2, forward and backward)."""
    return (x.dim() == 5 and x.shape[0] == 1 and x.device.type == "cpu" and x.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and bool(torch.backends.mkldnn.enabled)
            and x.shape[1] * x.shape[2] * x.shape[3] <= _ONEDNN_MIN_NCDH
            and not (weight.shape[-1] > 3 and weight.shape[-2] > 3))


def conv(x: Tensor, weight: Tensor, bias: Tensor | None = None,
         padding: int | tuple[int, ...] = 0) -> Tensor:
    """Stride-1 convolution ``F.conv{1,2,3}d(x, weight, bias, padding=padding)`` (zero padding).

    One 3D sample on the CPU is computed as a batch of two: the two halves of the longest output
    axis, each cut from the zero-padded input with its ``kernel - 1`` halo, run together (so
    PyTorch takes the oneDNN kernel, which it uses from a batch of 2 on, instead of its slow
    reference kernel) and joined. Same values as the direct call (up to float rounding) and the
    same gradients; autograd keeps the same tensors as for the direct call (``x`` and
    ``weight``: the backward recomputes the halves), so memory counts do not change. A second
    derivative (``create_graph=True``) is taken through the direct call.

    Shapes: ``x`` ``(N, C, *S)``, ``weight`` ``(M, C, *k)`` -> ``(N, M, *S_out)``.
    """
    dim = x.dim() - 2
    pads = (padding,) * dim if isinstance(padding, int) else tuple(padding)
    out = [x.shape[2 + a] + 2 * pads[a] - weight.shape[2 + a] + 1 for a in range(dim)]
    if not _one_sample_slow_on_cpu(x, weight) or max(out) < 2:
        return _CONV[dim](x, weight, bias, padding=pads)
    y: Tensor = _ConvHalves.apply(x, weight, pads)
    return y if bias is None else y + bias.view(-1, *[1] * dim)


def _conv_halves(x: Tensor, weight: Tensor, pads: tuple[int, ...]) -> Tensor:
    """``F.conv3d(x, weight, padding=pads)`` of one sample ``x`` as a batch of its two halves
    along the longest output axis (see :func:`conv`)."""
    k = weight.shape[2:]
    out = [x.shape[2 + i] + 2 * pads[i] - k[i] + 1 for i in range(3)]
    a = max(range(3), key=lambda i: out[i])      # split the longest output axis
    half = (out[a] + 1) // 2                     # outputs per piece (the 2nd may get a dummy)
    width = [0, 0] * (2 - a) + [pads[a], pads[a] + 2 * half - out[a]]
    xp = F.pad(x, width) if any(width) else x    # pads along axis a only
    piece = half + k[a] - 1                      # input length behind `half` outputs
    both = torch.cat([xp.narrow(2 + a, 0, piece), xp.narrow(2 + a, half, piece)])
    y = F.conv3d(both, weight, padding=tuple(0 if i == a else pads[i] for i in range(3)))
    return torch.cat([y[:1], y[1:]], dim=2 + a).narrow(2 + a, 0, out[a])


class _ConvHalves(torch.autograd.Function):
    """:func:`_conv_halves` that saves only ``x`` and ``weight`` (as ``F.conv3d`` does) and
    recomputes the halves in the backward."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, pads: tuple[int, ...]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.pads = pads  # type: ignore[attr-defined]
        return _conv_halves(x, weight, pads)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        need = ctx.needs_input_grad[:2]  # type: ignore[attr-defined]
        if torch.is_grad_enabled():  # create_graph: differentiate the direct call, twice if asked
            y = F.conv3d(x, weight, padding=ctx.pads)  # type: ignore[attr-defined]
        else:
            x, weight = x.detach().requires_grad_(need[0]), weight.detach().requires_grad_(need[1])
            with torch.enable_grad():
                y = _conv_halves(x, weight, ctx.pads)  # type: ignore[attr-defined]
        wanted = [t for t, n in zip((x, weight), need) if n]
        got = iter(torch.autograd.grad(y, wanted, grad, create_graph=torch.is_grad_enabled()))
        return (next(got) if need[0] else None, next(got) if need[1] else None, None)


def _num_groups(channels: int, target: int = 8) -> int:
    """Largest divisor of ``channels`` that is <= ``target``."""
    for g in range(min(target, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def make_norm(kind: str, channels: int, dim: int) -> nn.Module:
    """Normalization over the hidden channels: ``none | batch | group | instance``.

    ``instance`` is GroupNorm with one group per channel (affine, no running statistics),
    so it behaves identically in train and eval mode and for any batch size.
    """
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dim](channels)
    if kind == "group":
        return nn.GroupNorm(_num_groups(channels), channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


@contextlib.contextmanager
def frozen_norm_stats(module: nn.Module, modes: Mapping[str, bool] | None = None) -> Iterator[None]:
    """Within the block, batch norms in ``module`` use batch statistics (in training mode)
    but do not update their running statistics or ``num_batches_tracked``.

    Used when a layer is re-evaluated during a memory-free backward pass, so running
    statistics are updated exactly once per training step.

    Args:
        module: the module to evaluate within the block.
        modes: optional training flags by submodule name (as ``module.named_modules()`` names
            them, ``""`` for ``module`` itself), e.g. those of the forward pass being
            recomputed: the submodules are in these modes within the block. Every flag and
            attribute changed is restored on exit.
    """
    subs = dict(module.named_modules())
    training = {n: m.training for n, m in subs.items()}
    if modes is not None:
        for n, flag in modes.items():
            if n in subs:
                subs[n].training = flag
    bns = [m for m in subs.values() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.track_running_stats for m in bns]
    for m in bns:
        if m.training:
            m.track_running_stats = False
    try:
        yield
    finally:
        for m, s in zip(bns, saved):
            m.track_running_stats = s
        for n, flag in training.items():
            subs[n].training = flag


def _get(params: Mapping[str, Tensor], name: str, owner: nn.Module, attr: str) -> Tensor | None:
    """``params[name]`` if given, else ``owner.<attr>``. Not ``params.get(name, owner.<attr>)``:
    a parametrized tensor (``torch.nn.utils.parametrize``) is computed on every access, and
    spectral norm's power iteration would then run again."""
    return params[name] if name in params else getattr(owner, attr)


def _functional_norm(norm: nn.Module, z: Tensor, params: Mapping[str, Tensor],
                     training: bool | None = None) -> Tensor:
    """``norm(z)`` with ``norm.weight``/``norm.bias`` taken from ``params`` (names
    ``norm.weight``, ``norm.bias``; a batch norm's running statistics too, ``norm.running_mean``
    and ``norm.running_var``, where given) and no running-statistics update. ``training``: the
    mode to evaluate in (batch statistics or running ones for a batch norm; ``None``: the
    module's mode now). A normalization module with a ``functional(z, weight, bias,
    training)`` method (e.g. the split norms of :mod:`fhcnn.spatial`; a batch norm's also
    takes ``stats``, the running mean and variance) computes it itself."""
    if isinstance(norm, nn.Identity):
        return z
    weight = _get(params, "norm.weight", norm, "weight")
    bias = _get(params, "norm.bias", norm, "bias")
    own: Callable[..., Tensor] | None = getattr(norm, "functional", None)
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        mean = _get(params, "norm.running_mean", norm, "running_mean")
        var = _get(params, "norm.running_var", norm, "running_var")
        if own is not None:
            return own(z, weight, bias, training, stats=(mean, var))
        batch_stats = (norm.training if training is None else training) or mean is None
        return F.batch_norm(z, None if batch_stats else mean, None if batch_stats else var, weight, bias,
                            training=batch_stats, momentum=0.0, eps=norm.eps)
    if own is not None:
        return own(z, weight, bias, training)
    if isinstance(norm, nn.GroupNorm):
        return F.group_norm(z, norm.num_groups, weight, bias, norm.eps)
    raise TypeError(f"no functional form for normalization {type(norm).__name__}")


class SymmetricLayer(nn.Module):
    """``f(Y) = -K^T sigma(N(K Y + b))`` with ``K^T`` the adjoint of ``K`` (same weights).

    The Jacobian ``-K^T D N' K`` is symmetric negative semi-definite for monotone
    ``sigma`` without normalization, which makes the leapfrog network ``Y'' = f(Y)``
    oscillatory (conservative) rather than dissipative or explosive.

    Args:
        channels: ``C``, channels of the state.
        hidden: ``M``, channels of ``K Y`` (default ``C``).
        dim: 1, 2 or 3 spatial axes.
        kernel_size: odd kernel size (default 3).
        norm: ``"none" | "batch" | "group" | "instance"`` applied to ``K Y + b``.
        activation: one of ``ACTIVATIONS``.
        adjoint: ``"conv"`` (flipped-kernel convolution, fast on CPU) or
            ``"conv_transpose"`` (reference); both compute exactly ``K^T``.
        init_scale: the weights are Kaiming-normal times this factor.

    Shapes: ``(N, C, *S) -> (N, C, *S)``.
    """

    def __init__(
        self,
        channels: int,
        hidden: int | None = None,
        dim: int = 2,
        kernel_size: int = 3,
        norm: Norm = "group",
        activation: Activation = "relu",
        adjoint: Literal["conv", "conv_transpose"] = "conv",
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        dim = check_dim(dim)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size % 2 != 1 or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if adjoint not in ("conv", "conv_transpose"):
            raise ValueError(f"adjoint must be 'conv' or 'conv_transpose', got {adjoint!r}")
        init_scale = check_number("init_scale", init_scale)
        channels = check_count("channels", channels)
        hidden = channels if hidden is None else check_count("hidden", hidden)
        self.channels, self.hidden, self.dim = channels, hidden, dim
        self.kernel_size, self.adjoint = kernel_size, adjoint
        self.norm_kind, self.activation_kind = norm, activation
        self.weight = nn.Parameter(torch.empty(hidden, channels, *([kernel_size] * dim)))
        # a bias before a normalization is cancelled by it (the paper drops it with batch norm)
        self.bias = nn.Parameter(torch.zeros(hidden)) if norm == "none" else None
        self.norm = make_norm(norm, hidden, dim)
        self.act = ACTIVATIONS[activation]()
        fan_in = channels * kernel_size**dim
        with torch.no_grad():
            self.weight.normal_(0.0, init_scale * math.sqrt(2.0 / fan_in))

    def conv(self, y: Tensor) -> Tensor:
        """``K y + b``: ``(N, C, *S) -> (N, M, *S)``."""
        return self._conv_with(y, self.weight, self.bias)

    def conv_adjoint(self, z: Tensor) -> Tensor:
        """``K^T z``: ``(N, M, *S) -> (N, C, *S)`` with the same weights as :meth:`conv`."""
        return self._conv_adjoint_with(z, self.weight)

    def _conv_with(self, y: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``K y + b`` with the given tensors (the one place a subclass changes the padding,
        e.g. :class:`fhcnn.spatial.SplitSymmetricLayer`'s halo exchange)."""
        return conv(y, weight, bias, padding=self.kernel_size // 2)

    def _conv_adjoint_with(self, z: Tensor, weight: Tensor) -> Tensor:
        """``K^T z`` with the given weight (see :meth:`_conv_with`)."""
        pad = self.kernel_size // 2
        if self.adjoint == "conv_transpose":
            return _CONV_T[self.dim](z, weight, padding=pad)
        return conv(z, weight.transpose(0, 1).flip(list(range(2, 2 + self.dim))), padding=pad)

    def forward(self, y: Tensor) -> Tensor:
        """``f(y)``: ``(N, C, *S) -> (N, C, *S)``; an input of another rank, channel count, dtype
        or device than the layer's is a ``TypeError`` or ``ValueError`` naming it."""
        if not isinstance(y, Tensor) or not y.is_floating_point():
            raise TypeError("SymmetricLayer input must be a floating-point torch.Tensor, got "
                            + (f"dtype {y.dtype}" if isinstance(y, Tensor) else type(y).__name__))
        if y.dim() != self.dim + 2 or y.shape[1] != self.channels:
            axes = {1: "L", 2: "H, W", 3: "D, H, W"}[self.dim]
            raise ValueError(f"SymmetricLayer input must be (N, {self.channels}, {axes}) for channels="
                             f"{self.channels}, dim={self.dim}, got {tuple(y.shape)}")
        check_like_parameters(self, y)
        return -self.neg_forward(y)

    def neg_forward(self, y: Tensor, params: Mapping[str, Tensor] | None = None,
                    modes: Mapping[str, bool] | None = None) -> Tensor:
        """``-f(y) = K^T sigma(N(K y + b))``, optionally with other parameter tensors.

        Args:
            y: ``(N, C, *S)``.
            params: ``None`` (the module's own parameters; batch norms update their running
                statistics as in :meth:`forward`), or tensors by parameter name (missing names
                fall back to the module's own; a parametrized weight is given by its name,
                ``"weight"``, as the tensor the parametrization computed; a batch norm's running
                statistics may be given too, ``"norm.running_mean"``). With ``params`` the
                evaluation is purely functional: nothing on the module is read-modified-written,
                batch norms never update their running statistics and use batch statistics in
                training mode, running ones in eval mode (what a recomputation in a memory-free
                backward needs; safe to run from several threads at once).
            modes: with ``params``, the training flags by submodule name (as
                ``named_modules()`` names them) to evaluate in, e.g. those of the forward pass
                being recomputed (``None``: the modes now). Only the normalization's matters.

        Returns:
            ``(N, C, *S)``; ``forward(y) == -neg_forward(y)`` bit for bit. ``K`` and ``K^T``
            use one weight tensor: a parametrized weight is computed once per call.
        """
        weight: Tensor
        if params is None:
            weight = self.weight
            return self._conv_adjoint_with(self.act(self.norm(self._conv_with(y, weight, self.bias))), weight)
        weight = params["weight"] if "weight" in params else self.weight
        bias = _get(params, "bias", self, "bias")
        training = None if modes is None else modes.get("norm")
        z = self.act(_functional_norm(self.norm, self._conv_with(y, weight, bias), params, training))
        return self._conv_adjoint_with(z, weight)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, hidden={self.hidden}, dim={self.dim}, "
                f"kernel_size={self.kernel_size}, norm={self.norm_kind!r}, "
                f"activation={self.activation_kind!r}")
