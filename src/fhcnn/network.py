"""The fully hyperbolic network: leapfrog layers with orthogonal wavelet transitions.

State pair ``(Y_prev, Y_cur)``, started at ``(X, X)``. A layer maps
``(p, c) -> (c, 2c - p + h^2 f_j(c))`` with ``f_j(Y) = -K_j^T sigma(N_j(K_j Y + b_j))``;
a transition applies a wavelet transform ``T`` ("down": channels x 2**dim, every spatial
axis halved) or ``T^-1`` ("up") to both members of the pair. Every step is exactly
invertible, so any earlier pair (and finally ``X``) can be recomputed from the last pair.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .layers import ACTIVATIONS, NORMS, Activation, Norm, SymmetricLayer
from .reversible import LeapfrogStep, TransitionStep, run_steps
from .wavelets import (
    HaarDWT,
    LearnableWavelet,
    check_count,
    check_dim,
    check_divisible,
    check_like_parameters,
    is_count,
)

__all__ = ["HyperbolicNetwork", "ReversibleMode", "Transition", "Unit"]

Transition = Literal["down", "up"] | None
Unit = tuple[int, Transition]
ReversibleMode = bool | Literal["block"]


def _check_pair(first: str, a: Tensor, second: str, b: Tensor) -> None:
    """Raise a ``ValueError`` unless the two members of a pair agree in shape, dtype and device."""
    if a.shape != b.shape:
        raise ValueError(f"{first} {tuple(a.shape)} and {second} {tuple(b.shape)} differ in shape")
    if a.dtype != b.dtype or a.device != b.device:
        raise ValueError(f"{first} ({a.dtype}, {a.device}) and {second} ({b.dtype}, {b.device}) "
                         f"differ in dtype or device")


def _check_autocast_state(x: Tensor, what: str) -> None:
    """Raise a ``ValueError`` if ``x`` is a 16-bit float other than the dtype ``torch.autocast``
    computes in on its device (``float16`` under ``bfloat16``, or the reverse): each layer's
    ``f`` then returns the autocast dtype, and the update ``2 Y_cur - Y_prev + h**2 f(Y_cur)``
    mixes two 16-bit types, which plain autograd promotes to ``float32`` while the reversible
    pass keeps the state's dtype, so the modes would differ in the output's dtype and values."""
    device = x.device.type
    if not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)):
        return
    computes = torch.get_autocast_dtype(device)
    if x.is_floating_point() and x.dtype.itemsize == 2 and computes.itemsize == 2 and x.dtype != computes:
        raise ValueError(f"{what} is {x.dtype}, but torch.autocast computes in {computes}: the state update "
                         f"would mix the two 16-bit types; give a {computes} or torch.float32 {what}")


def _check_step(h: object, where: str = "") -> None:
    """Raise a ``ValueError`` unless ``h`` is a positive real number (not a ``bool``) whose square,
    the factor of ``f`` in every layer, is a finite float."""
    if not (isinstance(h, (int, float)) and not isinstance(h, bool) and 0 < h
            and math.isfinite(float(h) * float(h))):
        raise ValueError(f"h must be a positive number whose square is finite, got {h!r}{where}")


@dataclass(frozen=True)
class _Stage:
    """Resolution bookkeeping for one unit (for ``describe`` and validation)."""

    n_layers: int
    channels: int
    level: int  # number of net coarsenings relative to the input (negative = finer)
    transition: Transition


class HyperbolicNetwork(nn.Module):
    """Fully reversible leapfrog CNN with wavelet coarsening/refinement.

    Args:
        channels: channels ``C`` of the input state.
        units: list of ``(n_layers, transition)``; ``transition`` is applied after the unit's
            layers: ``"down"`` (coarsen, channels x 2**dim), ``"up"`` (refine, channels /
            2**dim) or ``None``. E.g. the paper's Table 2 net: ``channels=384, dim=3,
            units=[(5, "up"), (6, "up"), (8, None)]``.
        dim: 2 (``(N, C, H, W)``) or 3 (``(N, C, D, H, W)``); 1 is accepted too.
        reversible: ``True`` memory-free gradients (only the last pair is kept);
            ``"block"`` reversible between transitions, the pair before each transition
            stored; ``False`` plain autograd. Can be changed after construction.
        hidden: hidden width of each layer's ``K``: ``None`` (= the unit's channels), an int
            for all units, or one int per unit.
        h: leapfrog step size (the state update uses ``h**2 * f``).
        norm: normalization of ``K Y + b``: ``"group"`` (default: batch-size independent,
            identical in train and eval mode, no running statistics, so forward, inverse and
            recomputation always agree), ``"batch"``, ``"instance"`` or ``"none"``.
        activation: one of ``fhcnn.layers.ACTIVATIONS`` (default ``"relu"``).
        wavelet: ``"haar"`` (default) or ``"learnable"`` (one learnable 4-tap wavelet per
            transition, initialized to ``wavelet_init``).
        wavelet_init: ``"haar"`` or ``"db2"`` for learnable wavelets.
        kernel_size: odd convolution size (default 3).
        init_scale: factor on the Kaiming-normal initialization of ``K``.

    Shapes:
        ``forward``: ``(N, C, *S) -> (N, C_out, *S * 2**(ups - downs))``.

    Example:
        >>> import torch
        >>> from fhcnn import HyperbolicNetwork
        >>> net = HyperbolicNetwork(8, [(2, "down"), (2, "up"), (2, None)], dim=2)
        >>> x = torch.randn(1, 8, 16, 16)
        >>> yp, yc = net.forward_pair(x)
        >>> torch.allclose(net.inverse(yp, yc), x, atol=1e-4)
        True
    """

    def __init__(
        self,
        channels: int,
        units: Sequence[Unit],
        dim: int = 2,
        reversible: ReversibleMode = True,
        *,
        hidden: int | Sequence[int] | None = None,
        h: float = 0.1,
        norm: Norm = "group",
        activation: Activation = "relu",
        wavelet: Literal["haar", "learnable"] = "haar",
        wavelet_init: Literal["haar", "db2"] = "haar",
        kernel_size: int = 3,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        channels = check_count("channels", channels)
        dim = check_dim(dim)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if wavelet not in ("haar", "learnable"):
            raise ValueError(f"wavelet must be 'haar' or 'learnable', got {wavelet!r}")
        if wavelet_init not in ("haar", "db2"):
            raise ValueError(f"wavelet_init must be 'haar' or 'db2', got {wavelet_init!r}")
        _check_step(h)
        if isinstance(units, (str, bytes)) or not isinstance(units, Iterable):
            raise ValueError(f"units must be a list of (n_layers, transition) pairs, got {units!r}")
        units = list(units)
        if not units:
            raise ValueError("units must hold at least one (n_layers, transition) pair")
        for u in units:
            if (isinstance(u, (str, bytes)) or not isinstance(u, Sequence) or len(u) != 2
                    or not is_count(u[0], least=0) or u[1] not in ("down", "up", None)):
                raise ValueError(
                    f"each unit must be (n_layers >= 0, 'down' | 'up' | None), got {u!r}")
        units = [tuple(u) for u in units]  # type: ignore[misc]
        if sum(u[0] for u in units) < 1:
            raise ValueError("the network needs at least one layer")
        if isinstance(hidden, str):
            raise ValueError(f"hidden must be None, an int or one int per unit, got {hidden!r}")
        if isinstance(hidden, Sequence) and len(hidden) != len(units):
            raise ValueError(f"hidden has {len(hidden)} entries but there are {len(units)} units")
        for width in hidden if isinstance(hidden, Sequence) else [hidden]:
            if width is not None:
                check_count("hidden", width)
        self.channels, self.dim, self.h = channels, dim, float(h)
        self.units = units
        self.reversible = reversible
        self.norm_kind, self.activation_kind, self.wavelet_kind = norm, activation, wavelet

        self.layers = nn.ModuleList()
        self.transitions = nn.ModuleList()
        self._schedule: list[tuple[str, int]] = []  # ("layer"|"down"|"up", module index)
        self.stages: list[_Stage] = []
        c, level = channels, 0
        for k, (n_layers, transition) in enumerate(units):
            width = hidden[k] if isinstance(hidden, Sequence) else hidden
            self.stages.append(_Stage(n_layers, c, level, transition))
            for _ in range(n_layers):
                self._schedule.append(("layer", len(self.layers)))
                self.layers.append(SymmetricLayer(c, width, dim, kernel_size, norm, activation,
                                                  init_scale=init_scale))
            if transition is None:
                continue
            if transition == "up":
                if c % 2**dim:
                    raise ValueError(f"unit {k}: 'up' needs channels divisible by 2**dim={2**dim}, "
                                     f"but the state has {c} channels there")
                c, level = c // 2**dim, level - 1
            else:
                c, level = c * 2**dim, level + 1
            self._schedule.append((transition, len(self.transitions)))
            self.transitions.append(LearnableWavelet(dim, wavelet_init) if wavelet == "learnable"
                                    else HaarDWT(dim))
        self.out_channels = c
        self.out_level = level
        self.max_level = max(0, max(s.level for s in self.stages), level)

    # ----------------------------------------------------------------- layout
    @property
    def reversible(self) -> ReversibleMode:
        return self._reversible

    @reversible.setter
    def reversible(self, mode: ReversibleMode) -> None:
        # identity, not equality: 1, 1.0, 0 and numpy booleans compare equal to True/False
        if mode is not True and mode is not False and not (isinstance(mode, str) and mode == "block"):
            raise ValueError(f"reversible must be True, False or 'block', got {mode!r}")
        self._reversible = mode

    @property
    def depth(self) -> int:
        """Total number of leapfrog layers."""
        return len(self.layers)

    def _steps(self) -> list[LeapfrogStep | TransitionStep]:
        _check_step(self.h, " (net.h, set after construction)")
        h2 = self.h**2
        out: list[LeapfrogStep | TransitionStep] = []
        for kind, i in self._schedule:
            if kind == "layer":
                out.append(LeapfrogStep(self.layers[i], h2, name=f"layers.{i}"))
            else:
                out.append(TransitionStep(self.transitions[i], inverse=(kind == "up"), name=f"transitions.{i}"))
        return out

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of ``forward(x)`` for ``x`` of ``input_shape`` ``(N, C, *S)`` (validated).

        Raises:
            TypeError: ``input_shape`` is not a sequence.
            ValueError: a size is not an int (``N >= 0``, the others ``>= 1``), or the shape does
                not fit the network (see :meth:`forward`).
        """
        if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
            raise TypeError(f"input_shape must be a sequence of ints (N, C, *S), got {input_shape!r}")
        shape = tuple(check_count(f"input_shape[{i}]", s, least=0 if i == 0 else 1)
                      for i, s in enumerate(input_shape))
        self._check_input(None, shape)
        n, _, *spatial = shape
        scale = 2.0 ** (-self.out_level)
        return (n, self.out_channels, *[int(s * scale) for s in spatial])

    def describe(self) -> str:
        """A table of the resolution schedule: layers, channels and resolution per unit."""
        lines = [(f"HyperbolicNetwork: dim={self.dim}, depth={self.depth}, h={self.h}, "
                  f"norm={self.norm_kind}, wavelet={self.wavelet_kind}, reversible={self.reversible}")]
        for k, s in enumerate(self.stages):
            res = "input" if s.level == 0 else (f"input / 2**{s.level}" if s.level > 0
                                                 else f"input * 2**{-s.level}")
            lines.append(f"  unit {k}: {s.n_layers:3d} layers @ {s.channels:5d} channels, "
                         f"resolution {res}" + (f", then {s.transition}" if s.transition else ""))
        lines.append(f"  output: {self.out_channels} channels")
        return "\n".join(lines)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, units={self.units}, dim={self.dim}, h={self.h}, "
                f"reversible={self.reversible!r}")

    # ------------------------------------------------------------- validation
    def _check_input(self, x: Tensor | None, shape: Sequence[int] | None = None,
                     channels: int | None = None, what: str = "input", inverse: bool = False) -> None:
        """Validate a forward input (or, with ``inverse``, a member of the output pair)."""
        if x is not None:
            if not isinstance(x, Tensor):
                raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
            if not x.is_floating_point():
                raise TypeError(f"{what} must be a floating-point tensor, got dtype {x.dtype}")
            shape = tuple(x.shape)
        if shape is None:
            raise TypeError("_check_input needs a tensor or a shape")
        channels = self.channels if channels is None else channels
        axes = ("H", "W") if self.dim == 2 else ("D", "H", "W") if self.dim == 3 else ("L",)
        if len(shape) != self.dim + 2:
            raise ValueError(f"{what} must have shape (N, C, {', '.join(axes)}) for dim={self.dim}, "
                             f"got {tuple(shape)}")
        if shape[1] != channels:
            raise ValueError(f"{what} has {shape[1]} channels, but the network expects {channels}")
        # coarsenings still ahead: from the input, or back from the output level
        levels = self.max_level - self.out_level if inverse else self.max_level
        check_divisible(shape[2:], levels,
                        what=f"{what} {tuple(shape)} (the network coarsens it {levels} time(s))")

    # ---------------------------------------------------------------- compute
    def forward_pair(self, x: Tensor, x_cur: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run the network and return the last pair ``(Y_prev, Y_cur)``.

        Args:
            x: ``(N, C, *S)``; the pair starts at ``(x, x)`` (zero velocity).
            x_cur: optional second member, so the pair starts at ``(x, x_cur)`` (e.g. an
                input split into two halves, making ``x -> pair`` a bijection).
        """
        self._check_input(x)
        if x_cur is None:
            x_cur = x
        else:
            if not isinstance(x_cur, Tensor):
                raise TypeError(f"x_cur must be a torch.Tensor, got {type(x_cur).__name__}")
            _check_pair("x", x, "x_cur", x_cur)
        check_like_parameters(self, x)
        _check_autocast_state(x, "input")
        return run_steps(self._steps(), x, x_cur, self.reversible)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, *S) -> Y_cur``, the last state."""
        return self.forward_pair(x)[1]

    def inverse(self, y_prev: Tensor, y_cur: Tensor, return_pair: bool = False
                ) -> Tensor | tuple[Tensor, Tensor]:
        """Recover the input from the last pair: exact up to floating-point rounding.

        Differentiable; in reversible modes the inverse itself has memory-free gradients
        (it is a leapfrog network run backwards). Returns the second member of the
        reconstructed initial pair (``x``), or the whole pair if ``return_pair``.
        """
        for name, t in (("y_prev", y_prev), ("y_cur", y_cur)):
            self._check_input(t, channels=self.out_channels, what=f"inverse {name}", inverse=True)
        _check_pair("y_prev", y_prev, "y_cur", y_cur)
        check_like_parameters(self, y_prev, "inverse y_prev")
        _check_autocast_state(y_prev, "inverse y_prev")
        steps = [s.inverted() for s in reversed(self._steps())]
        p, c = run_steps(steps, y_prev, y_cur, self.reversible)
        return (p, c) if return_pair else c
