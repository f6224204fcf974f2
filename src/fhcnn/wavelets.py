"""Orthogonal, separable, periodic discrete wavelet transforms (1D, 2D, 3D).

A one-level transform ``T`` maps ``(N, C, S_1, ..., S_d) -> (N, 2**d * C, S_1/2, ..., S_d/2)``.
It applies a two-channel orthogonal filter bank along every spatial axis with periodic
boundaries, so ``T`` is an orthogonal matrix: ``T^-1 = T^T`` exactly, ``||T x|| = ||x||``.

Output channel layout (subband-major): along each axis the low band is concatenated before
the high band on the channel axis, axes processed first to last. The first ``C`` output
channels are therefore the all-low-pass (coarse approximation) subband.

The filter bank is the lattice ``R(theta_2) Lambda(z) R(theta_1)`` on the polyphase
components ``(x[2k], x[2k+1])``:

    a, b   = R(theta_1) (x_even, x_odd)       rotation
    b[k]  <- b[k+1]                           one-sample delay of the second channel
    lo, hi = R(theta_2) (a, b)                rotation

Each step is orthogonal, so the transform is orthogonal for *every* pair of angles.
The equivalent low-pass taps are ``(c1 c2, s1 c2, -s1 s2, c1 s2)``; ``theta = (pi/4, 0)``
is Haar (two taps, no delay needed), ``theta = (pi/3, -pi/12)`` is Daubechies-4 (db2).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, cast

import torch
from torch import Tensor, nn

__all__ = [
    "HaarDWT",
    "LearnableWavelet",
    "WaveletTransform",
    "check_count",
    "check_dim",
    "is_count",
    "check_divisible",
    "check_like_parameters",
    "check_number",
    "lattice_filters",
    "nearest_valid_size",
]

_HAAR_ANGLES = (math.pi / 4, 0.0)
_DB2_ANGLES = (math.pi / 3, -math.pi / 12)


def nearest_valid_size(size: int, factor: int) -> int:
    """The multiple of ``factor`` nearest to ``size`` (ties go up, never 0)."""
    down = (size // factor) * factor
    up = down + factor
    if down == 0:
        return up
    return down if size - down < up - size else up


def check_dim(dim: object) -> int:
    """``dim`` as an ``int`` if it is the integer 1, 2 or 3 (a Python or numpy integer; not
    ``True``, not ``2.0``); otherwise a ``ValueError``."""
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or int(dim) not in (1, 2, 3):
        raise ValueError(f"dim must be 1, 2 or 3, got {dim!r}")
    return int(dim)


def check_count(name: str, value: object, least: int = 1, why: str = "") -> int:
    """``value`` as an ``int`` if it is an integer (a Python or numpy integer, not a ``bool``)
    of at least ``least``; otherwise a ``ValueError`` naming ``name``, the bound and ``why``.

    Example:
        >>> check_count("levels", 2)
        2
    """
    if not is_count(value, least):
        raise ValueError(f"{name} must be an int >= {least}{why}, got {value!r}")
    return int(cast(numbers.Integral, value))


def check_number(name: str, value: object, positive: bool = False) -> float:
    """``value`` as a ``float`` if it is a finite real number (a Python or numpy number, not a
    ``bool``) ``>= 0`` (``> 0`` with ``positive``); otherwise a ``ValueError`` naming ``name``.

    Example:
        >>> check_number("sigma", 0.5, positive=True)
        0.5
    """
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value))
            or float(value) < 0 or (positive and float(value) == 0)):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def is_count(value: object, least: int = 1) -> bool:
    """Whether ``value`` is an integer (a Python or numpy integer, not a ``bool``) of at least
    ``least``: what :func:`check_count` accepts."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and int(value) >= least


def check_divisible(spatial: Sequence[int], levels: int, what: str = "input") -> None:
    """Raise a ``ValueError`` unless every spatial size is divisible by ``2**levels``.

    Args:
        spatial: the spatial sizes ``(S_1, ..., S_d)``.
        levels: number of halvings the sizes must survive.
        what: name used in the message.

    Raises:
        ValueError: naming the first offending axis, its size and the nearest valid size.
    """
    factor = 2**levels
    for axis, size in enumerate(spatial):
        if size % factor != 0 or size == 0:
            raise ValueError(
                f"{what}: spatial axis {axis} has size {size}, which is not divisible by "
                f"2**{levels}={factor} (needed for {levels} wavelet level(s)); nearest valid "
                f"size is {nearest_valid_size(size, factor)}. Pad or crop the input."
            )


def check_like_parameters(module: nn.Module, x: Tensor, what: str = "input") -> None:
    """Raise a ``ValueError`` unless ``x`` is on the device of every parameter of ``module`` and,
    outside ``torch.autocast`` (which casts inside each operation), of its dtype: a float64
    batch into a float32 network, or a CPU batch into a CUDA one, is named here instead of
    failing deep inside a convolution (``expected scalar type Double but found Float``).
    Parameters swapped in by ``torch.func.functional_call`` are the ones compared."""
    autocast = torch.amp.is_autocast_available(x.device.type) and torch.is_autocast_enabled(x.device.type)
    owner = type(module).__name__
    for name, p in module.named_parameters():
        if p.device != x.device:
            raise ValueError(f"{what} is on {x.device}, but {owner}'s parameter {name} is on {p.device}: "
                             f"move one to the other (.to({str(x.device)!r}) or .to({str(p.device)!r}))")
        if p.dtype != x.dtype and not autocast:
            raise ValueError(f"{what} is {x.dtype}, but {owner}'s parameter {name} is {p.dtype}: "
                             f"convert one to the other (.to({x.dtype}) or .to({p.dtype}))")


def lattice_filters(theta1: Tensor, theta2: Tensor) -> tuple[Tensor, Tensor]:
    """Low- and high-pass analysis taps (4 each) of the lattice with angles ``theta``.

    ``lo[k] = sum_i h[i] x[2k+i]``, ``hi[k] = sum_i g[i] x[2k+i]`` (periodic).
    """
    c1, s1, c2, s2 = torch.cos(theta1), torch.sin(theta1), torch.cos(theta2), torch.sin(theta2)
    h = torch.stack([c1 * c2, s1 * c2, -s1 * s2, c1 * s2])
    g = torch.stack([-c1 * s2, -s1 * s2, -s1 * c2, c1 * c2])
    return h, g


#: ``roll(t, axis, step)``: the periodic shift of ``t`` by ``step`` (+-1) along ``axis`` that
#: the lattice's delay stage applies (a split volume shifts across its slabs instead)
Roll = Callable[[Tensor, int, int], Tensor]


def _periodic_roll(t: Tensor, axis: int, step: int) -> Tensor:
    return torch.roll(t, shifts=step, dims=axis)


def _analysis_1d(x: Tensor, axis: int, c1: Tensor | float, s1: Tensor | float,
                 c2: Tensor | float | None, s2: Tensor | float | None,
                 roll: Roll = _periodic_roll) -> Tensor:
    """One level along tensor dimension ``axis``; returns ``cat([lo, hi], dim=1)``."""
    pairs = x.unflatten(axis, (x.shape[axis] // 2, 2))  # even size validated by caller
    xe, xo = pairs.select(axis + 1, 0), pairs.select(axis + 1, 1)
    a = c1 * xe + s1 * xo
    b = c1 * xo - s1 * xe
    if c2 is not None and s2 is not None:
        b = roll(b, axis, -1)
        a, b = c2 * a + s2 * b, c2 * b - s2 * a
    return torch.cat([a, b], dim=1)


def _synthesis_1d(y: Tensor, axis: int, c1: Tensor | float, s1: Tensor | float,
                  c2: Tensor | float | None, s2: Tensor | float | None,
                  roll: Roll = _periodic_roll) -> Tensor:
    """Exact inverse (= transpose) of :func:`_analysis_1d`."""
    a, b = y.chunk(2, dim=1)
    if c2 is not None and s2 is not None:
        a, b = c2 * a - s2 * b, s2 * a + c2 * b
        b = roll(b, axis, 1)
    xe = c1 * a - s1 * b
    xo = s1 * a + c1 * b
    return torch.stack([xe, xo], dim=axis + 1).flatten(axis, axis + 1)


def _is_channels_last(t: Tensor) -> bool:
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.dim())
    return fmt is not None and not t.is_contiguous() and t.is_contiguous(memory_format=fmt)


def _haar_analysis(x: Tensor, dim: int) -> Tensor:
    """One Haar level on all ``dim`` axes at once: ``(N, C, *S) -> (N, 2**dim C, *S/2)``, the
    same values and channel order as :func:`_analysis_1d` axis by axis, in ``dim`` add/sub
    passes into fresh buffers (no autograd graph; the output keeps a channels-last layout)."""
    last = _is_channels_last(x)
    cur = x.movedim(1, -1) if last else x
    first = 1 if last else 2
    for i in range(dim):
        ax = first + 2 * i
        cur = cur.unflatten(ax, (cur.shape[ax] // 2, 2))
    for i in range(dim):
        p = (2 + i) if last else (3 + 2 * i)
        e, o = cur.select(p, 0), cur.select(p, 1)
        q = (e.dim() - 1 - i) if last else 1
        out = e.new_empty(e.shape[:q] + (2,) + e.shape[q:])
        torch.add(e, o, out=out.select(q, 0))
        torch.sub(o, e, out=out.select(q, 1))
        cur = out
    y = cur.flatten(1 + dim).movedim(-1, 1) if last else cur.flatten(1, 1 + dim)
    return y.mul_(2.0 ** (-dim / 2))


def _haar_synthesis(y: Tensor, dim: int) -> Tensor:
    """Exact inverse (= transpose) of :func:`_haar_analysis`."""
    last = _is_channels_last(y)
    c = y.shape[1] // 2 ** dim
    cur = y.movedim(1, -1).unflatten(-1, (2,) * dim + (c,)) if last else y.unflatten(1, (2,) * dim + (c,))
    for k, i in enumerate(reversed(range(dim))):
        bpos = (1 + dim + k) if last else 1
        a, b = cur.select(bpos, 0), cur.select(bpos, 1)
        p = (2 + i) if last else (3 + 2 * i)
        out = a.new_empty(a.shape[:p] + (2,) + a.shape[p:])
        torch.sub(a, b, out=out.select(p, 0))
        torch.add(a, b, out=out.select(p, 1))
        cur = out
    first = 1 if last else 2
    for i in range(dim):
        cur = cur.flatten(first + i, first + i + 1)
    x = cur.movedim(-1, 1) if last else cur
    return x.mul_(2.0 ** (-dim / 2))


class _Haar(torch.autograd.Function):
    """One Haar level as an autograd node: the transform is orthogonal, so the gradient of
    the analysis is the synthesis of the incoming gradient (and vice versa); nothing is saved."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, dim: int, inverse: bool) -> Tensor:
        ctx.dim, ctx.inverse = dim, inverse  # type: ignore[attr-defined]
        return _haar_synthesis(x, dim) if inverse else _haar_analysis(x, dim)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        return _Haar.apply(grad, ctx.dim, not ctx.inverse), None, None  # type: ignore[attr-defined]


class WaveletTransform(nn.Module):
    """Base class: a d-dimensional orthogonal DWT applied ``levels`` times.

    Shapes (one level): ``(N, C, *S) -> (N, 2**dim * C, *S/2)``; ``levels`` levels
    multiply channels by ``2**(dim*levels)`` and divide every spatial axis by ``2**levels``.
    ``inverse`` is the exact inverse and transpose of ``forward``.
    """

    def __init__(self, dim: int, levels: int = 1) -> None:
        super().__init__()
        self.dim = check_dim(dim)
        self.levels = check_count("levels", levels)

    # subclasses return (c1, s1, c2, s2); c2/s2 None means "no delay stage" (Haar);
    # ``params`` (by parameter name) replaces the module's own parameters where given
    def _coefficients(self, ref: Tensor, params: Mapping[str, Tensor] | None = None) -> tuple:
        raise NotImplementedError

    def _check(self, x: Tensor, name: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not (x.is_floating_point() or x.is_complex()):
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != self.dim + 2:
            raise ValueError(
                f"{name} must have shape (N, C, {', '.join(f'S{i}' for i in range(1, self.dim + 1))})"
                f" for a {self.dim}D wavelet, got shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, *S) -> (N, 2**(dim*levels) C, *S / 2**levels)``."""
        return self.functional(x)

    def functional(self, x: Tensor, params: Mapping[str, Tensor] | None = None,
                   inverse: bool = False) -> Tensor:
        """``forward(x)`` (or ``inverse(x)``) with the parameter tensors in ``params`` (by
        name; missing names fall back to the module's own) in place of the module's; nothing
        on the module is modified, so it is safe to call from several threads at once."""
        if inverse:
            return self._inverse(x, params)
        self._check(x, "wavelet input")
        check_divisible(x.shape[2:], self.levels, what=f"{type(self).__name__} {self._piece} {tuple(x.shape)}")
        coeffs = self._coefficients(x, params)
        for _ in range(self.levels):
            x = self._level(x, coeffs, inverse=False)
        return x

    def inverse(self, y: Tensor) -> Tensor:
        """``(N, 2**(dim*levels) C, *S) -> (N, C, *S * 2**levels)``; exact inverse of forward."""
        return self._inverse(y, None)

    def _inverse(self, y: Tensor, params: Mapping[str, Tensor] | None) -> Tensor:
        self._check(y, "wavelet inverse input")
        factor = 2 ** (self.dim * self.levels)
        if y.shape[1] % factor != 0:
            raise ValueError(
                f"{type(self).__name__}.inverse: channels={y.shape[1]} must be divisible by "
                f"2**(dim*levels)={factor}"
            )
        coeffs = self._coefficients(y, params)
        for _ in range(self.levels):
            y = self._level(y, coeffs, inverse=True)
        return y

    def _level(self, x: Tensor, coeffs: tuple, inverse: bool) -> Tensor:
        """One level (analysis, or synthesis if ``inverse``), axis by axis."""
        c1, s1, c2, s2 = coeffs
        if inverse:
            for axis in reversed(range(2, 2 + self.dim)):
                x = _synthesis_1d(x, axis, c1, s1, c2, s2, self._roll)
        else:
            for axis in range(2, 2 + self.dim):
                x = _analysis_1d(x, axis, c1, s1, c2, s2, self._roll)
        return x

    # what the input is called in size errors, and the delay's periodic shift (both replaced
    # by fhcnn.spatial.SplitLearnableWavelet, which works on one slab of a split volume)
    _piece = "input"

    def _roll(self, t: Tensor, axis: int, step: int) -> Tensor:
        return _periodic_roll(t, axis, step)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, levels={self.levels}"


class HaarDWT(WaveletTransform):
    """Orthonormal Haar transform (no parameters).

    Args:
        dim: number of spatial axes (1, 2 or 3).
        levels: how many times to apply it (default 1).

    Example:
        >>> import torch
        >>> T = HaarDWT(2)
        >>> x = torch.randn(1, 3, 8, 8)
        >>> T(x).shape
        torch.Size([1, 12, 4, 4])
        >>> torch.allclose(T.inverse(T(x)), x, atol=1e-6)
        True
    """

    def _coefficients(self, ref: Tensor, params: Mapping[str, Tensor] | None = None) -> tuple:
        r = 1.0 / math.sqrt(2.0)
        return (r, r, None, None)

    def _level(self, x: Tensor, coeffs: tuple, inverse: bool) -> Tensor:
        # all axes in one pass per axis into fresh buffers, gradient by the transpose
        return _Haar.apply(x, self.dim, inverse)

    def filters(self) -> Tensor:
        """The low-pass taps ``(1/sqrt2, 1/sqrt2)``."""
        r = 1.0 / math.sqrt(2.0)
        return torch.tensor([r, r])


class LearnableWavelet(WaveletTransform):
    """4-tap orthogonal wavelet with exactly two learnable angles.

    Orthogonality holds for every value of ``theta`` (it is built into the lattice
    parameterization, not encouraged by a loss).

    Args:
        dim: number of spatial axes (1, 2 or 3).
        init: ``"haar"`` (Haar up to a one-sample shift of the high band) or ``"db2"``
            (Daubechies-4; taps equal PyWavelets' ``db2`` dec_lo reversed).
        levels: number of levels (all share the same filters).

    Shapes: ``(N, C, *S) -> (N, 2**(dim*levels) C, *S / 2**levels)``; ``inverse`` the reverse.

    Example:
        >>> import torch
        >>> T = LearnableWavelet(2, init="db2")
        >>> x = torch.randn(1, 3, 8, 8)
        >>> T(x).shape
        torch.Size([1, 12, 4, 4])
        >>> torch.allclose(T.inverse(T(x)), x, atol=1e-5)
        True
        >>> [round(t, 4) for t in T.filters().tolist()]   # db2's low-pass taps
        [0.483, 0.8365, 0.2241, -0.1294]
    """

    def __init__(self, dim: int, init: Literal["haar", "db2"] = "haar", levels: int = 1) -> None:
        super().__init__(dim, levels)
        angles = {"haar": _HAAR_ANGLES, "db2": _DB2_ANGLES}
        if init not in angles:
            raise ValueError(f"init must be one of {sorted(angles)}, got {init!r}")
        self.init = init
        self.theta = nn.Parameter(torch.tensor(angles[init], dtype=torch.get_default_dtype()))

    def _coefficients(self, ref: Tensor, params: Mapping[str, Tensor] | None = None) -> tuple:
        # ``self.theta`` only when not given: a parametrized angle is computed on each access
        theta = params["theta"] if params is not None and "theta" in params else self.theta
        if theta.dtype != ref.dtype and ref.is_floating_point() and not torch.is_autocast_enabled(ref.device.type):
            theta = theta.to(ref.dtype)
        c, s = torch.cos(theta), torch.sin(theta)
        return (c[0], s[0], c[1], s[1])

    def filters(self) -> Tensor:
        """The 1D low-pass analysis taps, a tensor of 4 (differentiable in ``theta``)."""
        return lattice_filters(self.theta[0], self.theta[1])[0]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, levels={self.levels}, init={self.init!r}"
