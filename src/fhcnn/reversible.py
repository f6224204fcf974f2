"""Memory-free gradients for a sequence of invertible pair steps (the paper's Algorithm 5.1).

A network is a list of *steps*, each mapping a state pair ``(Y_prev, Y_cur)`` to the next:

* :class:`LeapfrogStep` -- ``(p, c) -> (c, 2c - p + h^2 f(c))``; with ``flip=True`` it is the
  exact inverse map ``(c, n) -> (2c - n + h^2 f(c), c)``.
* :class:`TransitionStep` -- ``(p, c) -> (W p, W c)`` with ``W`` an orthogonal wavelet
  transform or its inverse.

:func:`run_steps` evaluates the list either with plain autograd, or through
:class:`ReversibleFunction`, which keeps only the final pair (plus, in block mode, the pair
entering chosen steps). Its backward walks the steps in reverse, reconstructing every
earlier pair from the later one through layers *and* wavelet transitions, and evaluates
``f`` once per layer, with autograd, for both the reconstruction and the local
vector-Jacobian product. Parameters enter the Function as explicit inputs, so their
gradients arrive through the ordinary autograd path (optimizers, hooks, gradient clipping
and DistributedDataParallel work unchanged). Batch-norm running statistics are updated in
the forward pass only (see :func:`fhcnn.layers.frozen_norm_stats`).

This module knows nothing about network layout; :mod:`fhcnn.network` builds the steps.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from .layers import frozen_norm_stats

__all__ = ["LeapfrogStep", "TransitionStep", "ReversibleFunction", "run_steps", "Pair"]

Pair = tuple[Tensor, Tensor]
_Grads = dict[int, Tensor]


Params = dict[str, Tensor]


def _trainable(module: nn.Module) -> Params:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def _call_with_detached_params(module: nn.Module, params: Params, *args: Tensor) -> tuple[object, list[Tensor]]:
    """Evaluate ``module(*args)`` with detached copies of ``params`` (the tensors the forward
    pass used, captured then: this stays right under ``torch.func.functional_call``).

    The local vector-Jacobian product is taken w.r.t. these copies, so hooks registered on
    the real parameters (``register_hook``, DDP) fire once per backward, with the final
    gradient, exactly as under plain autograd.
    """
    local = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    out = torch.func.functional_call(module, local, args, strict=False)
    return out, list(local.values())


def _accumulate(store: _Grads, params: Sequence[Tensor], grads: Iterable[Tensor | None]) -> None:
    for p, g in zip(params, grads):
        if g is None:
            continue
        key = id(p)
        store[key] = g if key not in store else store[key] + g


class LeapfrogStep:
    """One leapfrog layer ``(p, c) -> (c, 2c - p + h2 * f(c))`` (or its inverse if ``flip``).

    Both the forward and the flipped map have the form ``new = 2*shared - other + h2*f(shared)``;
    only the position of ``shared`` and ``new`` in the pair differs.
    """

    def __init__(self, f: nn.Module, h2: float, flip: bool = False) -> None:
        self.f, self.h2, self.flip = f, h2, flip

    def params(self) -> Params:
        return _trainable(self.f)

    def inverted(self) -> "LeapfrogStep":
        return LeapfrogStep(self.f, self.h2, not self.flip)

    def apply(self, p: Tensor, c: Tensor) -> Pair:
        # ``c + ((c - p) + h2 f(c))`` equals ``2c - p + h2 f(c)``; the difference of two nearby
        # states is exact in floating point, so this form rounds slightly less.
        if self.flip:
            return p + ((p - c) + self.h2 * self.f(p)), p
        return c, c + ((c - p) + self.h2 * self.f(c))

    def backward(self, out: Pair, grad: Pair, known_input: Pair | None, params: Params,
                 grads: _Grads) -> tuple[Pair, Pair]:
        """Reconstruct the input pair from ``out`` and pull ``grad`` back through the step.

        ``f(shared)`` is evaluated once, with autograd, and serves both the reconstruction
        and the vector-Jacobian product. Gradients w.r.t. ``params`` (the tensors used in the
        forward pass) are added to ``grads``, keyed by ``id``.
        """
        if self.flip:
            (new, shared), (g_new, g_shared) = out, grad
        else:
            (shared, new), (g_shared, g_new) = out, grad
        with torch.enable_grad(), frozen_norm_stats(self.f):
            s = shared.detach().requires_grad_(True)
            fs, local = _call_with_detached_params(self.f, params, s)
        g_s = None
        if g_new is not None:
            vjp = torch.autograd.grad(fs, [s, *local], grad_outputs=(self.h2 * g_new).to(fs.dtype),
                                      allow_unused=True)
            _accumulate(grads, list(params.values()), vjp[1:])
            g_s = vjp[0]
            del vjp
        del s, local
        fs = fs.detach()
        # reconstruct after the VJP, when the layer's graph is already freed (lower peak memory);
        # same operations in the same order as ``apply``, in place on a fresh tensor
        if known_input is not None:
            other = known_input[1] if self.flip else known_input[0]
        else:
            with torch.no_grad():
                other = torch.sub(shared, new)
                other += self.h2 * fs
                other += shared
        del fs
        # g_shared_in = g_shared + 2 g_new + J^T (h2 g_new), accumulated in one fresh tensor
        g_shared_in = None if g_s is None else g_s.to(shared.dtype)
        for t, alpha in ((g_new, 2.0), (g_shared, 1.0)):
            if t is None:
                continue
            if g_shared_in is None:
                g_shared_in = t * alpha
            else:
                g_shared_in.add_(t, alpha=alpha)
        g_other_in = None if g_new is None else -g_new
        if self.flip:
            return (shared, other), (g_shared_in, g_other_in)
        return (other, shared), (g_other_in, g_shared_in)


class TransitionStep:
    """``(p, c) -> (W p, W c)`` with ``W`` an orthogonal wavelet (``inverse=False``) or ``W^-1``."""

    def __init__(self, wavelet: nn.Module, inverse: bool = False) -> None:
        self.wavelet, self.inverse = wavelet, inverse

    def params(self) -> Params:
        return _trainable(self.wavelet)

    def inverted(self) -> "TransitionStep":
        return TransitionStep(self.wavelet, not self.inverse)

    def _map(self, x: Tensor, inverse: bool) -> Tensor:
        return self.wavelet.inverse(x) if inverse else self.wavelet(x)

    def apply(self, p: Tensor, c: Tensor) -> Pair:
        return self._map(p, self.inverse), self._map(c, self.inverse)

    def backward(self, out: Pair, grad: Pair, known_input: Pair | None, params: Params,
                 grads: _Grads) -> tuple[Pair, Pair]:
        if known_input is None:
            with torch.no_grad():
                known_input = (self._map(out[0], not self.inverse), self._map(out[1], not self.inverse))
        if not params:
            # W is orthogonal: its adjoint is its inverse (a missing gradient stays missing)
            with torch.no_grad():
                g_in = tuple(None if g is None else self._map(g, not self.inverse) for g in grad)
            return known_input, (g_in[0], g_in[1])
        with torch.enable_grad():
            ins = [t.detach().requires_grad_(True) for t in known_input]
            inv = "inverse" if self.inverse else "forward"
            both = {f"wavelet.{n}": t for n, t in params.items()}
            outs, local = _call_with_detached_params(_Both(self.wavelet, inv), both, *ins)
        grad = tuple(torch.zeros_like(o) if g is None else g for o, g in zip(outs, grad))
        vjp = torch.autograd.grad(outs, [*ins, *local], grad_outputs=grad, allow_unused=True)
        _accumulate(grads, list(params.values()), vjp[2:])
        return known_input, (vjp[0], vjp[1])


class _Both(nn.Module):
    """Applies ``wavelet.<method>`` to both members of a pair (for ``functional_call``)."""

    def __init__(self, wavelet: nn.Module, method: str) -> None:
        super().__init__()
        self.wavelet, self.method = wavelet, method

    def forward(self, p: Tensor, c: Tensor) -> Pair:
        fn = getattr(self.wavelet, self.method)
        return fn(p), fn(c)


Step = LeapfrogStep | TransitionStep


class ReversibleFunction(torch.autograd.Function):
    """Runs ``steps`` keeping only the final pair (and the input pairs of ``store`` steps).

    ``apply(steps, step_params, store, p, c, *params)``: ``step_params[i]`` are the trainable
    tensors step ``i`` uses (by name), ``params`` all of them, de-duplicated; they receive
    their gradients as ordinary Function-input gradients.
    """

    @staticmethod
    def forward(ctx, steps: Sequence[Step], step_params: Sequence[Params], store: frozenset[int],
                p: Tensor, c: Tensor, *params: Tensor) -> Pair:  # type: ignore[override]
        device_type = p.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type),
                        torch.get_autocast_dtype(device_type))
        ctx.steps, ctx.step_params, ctx.params = steps, step_params, params
        stored: list[Tensor] = []
        ctx.stored_at = []
        x_p, x_c = p, c
        for i, step in enumerate(steps):
            if i in store:
                stored.extend((p, c))
                ctx.stored_at.append(i)
            p, c = step.apply(p, c)
        # outputs must be new tensors, never the inputs themselves
        if p is x_p or p is x_c:
            p = p.clone()
        if c is x_p or c is x_c or c is p:
            c = c.clone()
        ctx.save_for_backward(p, c, *stored)
        ctx.set_materialize_grads(False)  # an unused output (often Y_prev) costs no zero tensor
        return p, c

    @staticmethod
    def backward(ctx, g_p: Tensor, g_c: Tensor):  # type: ignore[override]
        saved = ctx.saved_tensors
        known = {i: (saved[2 + 2 * k], saved[3 + 2 * k]) for k, i in enumerate(ctx.stored_at)}
        grads: _Grads = {}
        device_type, enabled, dtype = ctx.autocast
        pair, g = (saved[0], saved[1]), (g_p, g_c)
        del saved
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            for i in reversed(range(len(ctx.steps))):
                pair, g = ctx.steps[i].backward(pair, g, known.get(i), ctx.step_params[i], grads)
        param_grads = tuple(grads.get(id(t)) for t in ctx.params)
        return (None, None, None, g[0], g[1], *param_grads)


def run_steps(steps: Sequence[Step], p: Tensor, c: Tensor, mode: bool | str = True) -> Pair:
    """Run ``steps`` on the pair ``(p, c)``.

    Args:
        steps: the step list.
        p, c: the input pair (the same tensor twice is allowed).
        mode: ``False`` plain autograd; ``True`` fully reversible (only the final pair is kept);
            ``"block"`` reversible between transitions, the pair entering each
            :class:`TransitionStep` stored.

    Returns:
        The output pair. Gradients (if needed) equal those of plain autograd up to
        floating-point rounding in the reconstruction.
    """
    step_params = [s.params() for s in steps]
    params = list({id(t): t for sp in step_params for t in sp.values()}.values())
    needs_grad = torch.is_grad_enabled() and (p.requires_grad or c.requires_grad or bool(params))
    if mode is False or not needs_grad:
        for step in steps:
            p, c = step.apply(p, c)
        return p, c
    if mode is True:
        store: frozenset[int] = frozenset()
    elif mode == "block":
        store = frozenset(i for i, s in enumerate(steps) if isinstance(s, TransitionStep))
    else:
        raise ValueError(f"mode must be True, False or 'block', got {mode!r}")
    out = ReversibleFunction.apply(steps, step_params, store, p, c, *params)
    return out[0], out[1]
