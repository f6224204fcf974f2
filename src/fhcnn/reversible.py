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
and DistributedDataParallel work unchanged).

Memory: backward holds one state pair, one gradient pair and one layer's internals. Each
earlier state is reconstructed into the buffer of the state it replaces, gradient pairs are
accumulated in place, and every reconstructed tensor is dropped as soon as it is consumed
(the Function keeps its outputs on ``ctx`` as detached aliases, released in backward). Only
tensors the backward itself allocated are ever written in place; the outputs the caller
sees, the incoming gradients and stored block-mode pairs are never modified.

Correctness under other uses of autograd:

* the parameter tensors the forward pass used, trainable or frozen, are the ones the
  backward uses (also for the reconstruction through learnable wavelets, and when a second
  backward recomputes the outputs), so ``torch.func.functional_call`` and other parameter
  swaps are right, also with tensors that need no gradient;
* the forward pass records the modules' training flags, and every recomputation runs in
  them: ``model.eval()``/``.train()`` between forward and backward changes nothing, and
  running statistics are updated once, by the forward pass, however many backward passes
  follow;
* a parametrized tensor (``torch.nn.utils.parametrize``) of a layer or wavelet is captured
  as the tensor its parametrization computes (once per :func:`run_steps` call) and is an
  input of the Function, so its gradient reaches the originals through the parametrization;
* a parameter or an input modified in place between forward and backward raises, as in
  plain autograd (version counters are checked); an output modified in place (``y.add_(1)``
  before ``backward()``) is recomputed from the input, as after a first backward: the
  backward needs the values the forward pass computed, not the caller's new ones;
* a step that draws random numbers in the forward pass (dropout in a custom step module, a
  hook calling ``torch.rand``) draws the same ones when the backward recomputes it: the
  generators' states before such a step are kept and restored for its recomputation (as
  ``torch.utils.checkpoint`` does), and the caller's random stream continues after the
  backward where the forward pass left it; steps that draw nothing keep nothing;
* a custom step module's other buffers (neither running statistics of a batch norm nor a
  parametrization's) are recomputed with the values its forward pass began with: a buffer the
  forward pass changes (a running average of a custom norm, a counter) is copied before the
  step and each recomputation changes only a copy (updated once, by the forward pass, as
  plain autograd does); one the forward pass leaves alone is read where it is, and modifying
  it in place before the backward raises (version counters are checked);
* double backward (``create_graph=True``) raises: use ``reversible=False`` for gradient
  penalties or meta-learning;
* backward never modifies a module: :class:`fhcnn.layers.SymmetricLayer` and the wavelets
  are evaluated functionally with the captured tensors and modes (batch norms leave running
  statistics alone), so two threads may run backward on one model. Other modules passed to
  :class:`LeapfrogStep` fall back to ``torch.func.functional_call`` and
  :func:`fhcnn.layers.frozen_norm_stats` (their parametrizations recomputed from the
  captured originals, in eval mode, with the buffers the forward pass left), which swap
  attributes on the module for the duration of the call and are not thread-safe;
* the backward scales and accumulates in place only tensors nothing else references (a
  parameter gradient autograd hands back may be the incoming gradient itself).

This module knows nothing about network layout; :mod:`fhcnn.network` builds the steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .layers import frozen_norm_stats
from .memory import note_kept

__all__ = ["LeapfrogStep", "Pair", "ReversibleFunction", "TransitionStep", "internal_format", "run_steps"]

Pair = tuple[Tensor, Tensor]
_Grads = dict[int, Tensor]
Params = dict[str, Tensor]
#: training flags of a module and its submodules, by ``named_modules()`` name
Modes = dict[str, bool]


def _is_parametrized(m: nn.Module) -> bool:
    """``parametrize.is_parametrized(m)``, fast when it is not (the attribute lookup that
    function makes raises and catches an exception on every plain module)."""
    return "parametrizations" in m._modules and parametrize.is_parametrized(m)


def _tensors(module: nn.Module, computed: bool) -> Params:
    """The parameter tensors ``module`` computes with now, by name, trainable or frozen
    (``requires_grad=False``): the backward recomputes with exactly these, so a tensor
    swapped in by ``torch.func.functional_call`` is used there even when it needs no
    gradient (the module's own, restored by then, would give another function).

    ``computed=False``: its parameters (a parametrized tensor's originals included, by their
    names ``parametrizations.weight.original``, which ``functional_call`` evaluates the
    parametrization on). ``computed=True`` (a module evaluated through its own functional
    form, ``neg_forward`` or ``functional``): a parametrized tensor (``torch.nn.utils.
    parametrize``: weight norm, spectral norm, ...) is given instead as the tensor its
    parametrization computes now, by the parametrized name (``"weight"``): the backward uses
    exactly that tensor (never computing it again: spectral norm's power iteration would
    run again), and autograd carries its gradient through the parametrization to the
    originals (the ordinary path, as for any tensor computed before the Function)."""
    if not computed or not _parametrized(module):
        return dict(module.named_parameters())
    hidden: set[int] = set()
    evaluated: Params = {}
    for prefix, m in module.named_modules():
        if _is_parametrized(m):
            for name, plist in m.parametrizations.items():  # type: ignore[union-attr]
                hidden.update(id(t) for t in plist.parameters())
                evaluated[f"{prefix}.{name}" if prefix else name] = getattr(m, name)
    params: Params = {n: p for n, p in module.named_parameters() if id(p) not in hidden}
    params.update(evaluated)
    return params


@dataclass(frozen=True)
class Recorded:
    """What a step's module was in the forward pass besides its parameter tensors: the
    training flags of it and its submodules (``modes``, by ``named_modules()`` name), for a
    module recomputed through ``functional_call``, copies of its parametrizations' buffers
    after the forward pass (``buffers``, e.g. spectral norm's vectors, by buffer name), and
    whether the forward pass evaluated it through its own functional form (``functional``),
    and copies of the running statistics its batch norms in eval mode normalized with
    (``stats``, by buffer name, e.g. ``norm.running_mean``): the recomputation normalizes with
    these, not with the module's buffers then (swapped by ``functional_call`` in the forward
    pass, or updated since by a forward pass in training mode, or loaded)."""

    modes: Modes
    buffers: Params
    functional: bool = True
    stats: Params = field(default_factory=dict)
    entry: EntryBuffers | None = None


def _other_buffers(module: nn.Module) -> Params:
    """The buffers of ``module`` (by ``named_buffers()`` name) that neither the batch-norm
    handling (running statistics, left alone by recomputations, see
    :func:`fhcnn.layers.frozen_norm_stats`) nor the parametrization handling (``Recorded.buffers``)
    covers: what a custom module may read and change as it likes (a running average, a counter,
    a constant filter)."""
    skip = set(_parametrization_prefixes(module))
    for n, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            skip |= {f"{n}.{k}" if n else k for k in ("running_mean", "running_var", "num_batches_tracked")}
    return {n: b for n, b in module.named_buffers() if n not in skip and not n.startswith(tuple(skip))}


@dataclass(frozen=True)
class EntryBuffers:
    """The other buffers (:func:`_other_buffers`) of a step's module, recomputed through
    ``functional_call``, as its forward pass began: ``same`` holds those the forward pass left
    alone (the tensor and its version counter then), ``copies`` a copy of each one it changed
    (in place, or by assigning another tensor)."""

    same: dict[str, tuple[Tensor, int]]
    copies: Params

    @staticmethod
    def before(module: nn.Module) -> tuple[Params, dict[str, int], Params]:
        """Just before the step's forward pass: the buffers, their versions and copies."""
        now = _other_buffers(module)
        return now, {n: b._version for n, b in now.items()}, {n: b.clone() for n, b in now.items()}

    @classmethod
    def after(cls, module: nn.Module, began: tuple[Params, dict[str, int], Params]) -> EntryBuffers:
        """Just after it: a copy is kept only of the buffers the forward pass changed."""
        bufs, versions, copies = began
        now = _other_buffers(module)
        same = {n: (b, versions[n]) for n, b in bufs.items() if now.get(n) is b and b._version == versions[n]}
        return cls(same, {n: t for n, t in copies.items() if n not in same})

    def tensors(self, what: str) -> Params:
        """The values for a recomputation (a fresh copy of each changed one, which the
        recomputation may change in its turn). A buffer modified in place since the forward pass
        raises: its values then are gone, and the backward would recompute with others."""
        for n, (t, v) in self.same.items():
            if t._version != v:
                raise RuntimeError(
                    f"buffer {n!r} of {what} was modified in place between the forward pass and "
                    f"the backward (version {t._version}, expected {v}): the reversible backward "
                    f"recomputes the step with the values its forward pass read, which are gone; "
                    f"change it after backward(), or use reversible=False")
        return {**{n: t for n, (t, _) in self.same.items()}, **{n: t.clone() for n, t in self.copies.items()}}

    def kept(self) -> list[Tensor]:
        return list(self.copies.values())


class _RandomDraws:
    """The random number generators' states before each step that drew random numbers in the
    forward pass (by step index), so that recomputing the step draws the same numbers.

    The generators are the CPU one and, for a state pair on an accelerator, that device's.
    :meth:`recording` wraps one step of the forward pass and keeps the states it started
    from only if the step changed them; :meth:`replaying` restores the caller's states on exit.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device if device.type != "cpu" else None
        self.before: dict[int, tuple[Tensor, ...]] = {}

    def _states(self) -> tuple[Tensor, ...]:
        if self.device is None:
            return (torch.get_rng_state(),)
        module = torch.get_device_module(self.device.type)
        return torch.get_rng_state(), module.get_rng_state(self.device)

    def _set(self, states: tuple[Tensor, ...]) -> None:
        torch.set_rng_state(states[0])
        if self.device is not None:
            torch.get_device_module(self.device.type).set_rng_state(states[1], self.device)

    @contextmanager
    def recording(self, i: int) -> Iterator[None]:
        """Around step ``i`` of the forward pass: keeps the states it started from if it drew
        random numbers."""
        start = self._states()
        yield
        if not all(torch.equal(a, b) for a, b in zip(start, self._states())):
            self.before[i] = start

    def restore(self, i: int) -> None:
        """Set the generators to the states step ``i`` started from, if it drew random
        numbers (call inside :meth:`replaying`)."""
        if i in self.before:
            self._set(self.before[i])

    @contextmanager
    def replaying(self) -> Iterator[None]:
        """Around a recomputation: the generators' states are those of the caller again
        afterwards. Without recorded draws, nothing is touched."""
        if not self.before:
            yield
            return
        saved = self._states()
        try:
            yield
        finally:
            self._set(saved)

    def kept(self) -> list[Tensor]:
        return [t for states in self.before.values() for t in states]


def _parametrization_prefixes(module: nn.Module) -> list[str]:
    """Names of the ``parametrizations`` containers in ``module`` (with a trailing dot)."""
    return [f"{n}.parametrizations." if n else "parametrizations."
            for n, m in module.named_modules() if _is_parametrized(m)]


def _record(module: nn.Module, functional: bool) -> Recorded:
    modes = {n: m.training for n, m in module.named_modules()}
    buffers: Params = {}
    if not functional:
        prefixes = _parametrization_prefixes(module)
        if prefixes:
            buffers = {n: b.clone() for n, b in module.named_buffers() if n.startswith(tuple(prefixes))}
    stats: Params = {}
    for n, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training:
            for k in ("running_mean", "running_var"):
                t = getattr(m, k)
                if t is not None:
                    stats[f"{n}.{k}" if n else k] = t.clone()
    return Recorded(modes, buffers, functional, stats)


def _recompute_call(module: nn.Module, target: nn.Module, prefix: str, params: Mapping[str, Tensor],
                    rec: Recorded | None, args: tuple[Tensor, ...], what: str = "") -> Tensor:
    """``target(*args)`` (``target`` is ``module`` or a wrapper holding it as ``prefix``) via
    ``torch.func.functional_call`` with ``params`` (names in ``module``) and the forward
    pass's state ``rec``: its modes, running statistics left alone, parametrizations in eval
    mode (no state update: spectral norm uses the vectors the forward pass ended with, which
    ``rec.buffers`` holds), other buffers as the step's forward pass began (``rec.entry``) so
    they compute what they computed in the forward pass. ``what`` names the step in errors."""
    modes: dict[str, bool] | None = None
    tensors: dict[str, Tensor] = dict(params)
    if rec is not None:
        prefixes = tuple(_parametrization_prefixes(module))
        modes = {n: flag and not f"{n}.".startswith(prefixes) for n, flag in rec.modes.items()}
        entry = rec.entry.tensors(what or type(module).__name__) if rec.entry is not None else {}
        tensors = {**rec.buffers, **rec.stats, **entry, **tensors}
    with frozen_norm_stats(module, modes):
        return torch.func.functional_call(target, {prefix + n: t for n, t in tensors.items()}, args,
                                          strict=False)


def _global_hooks() -> bool:
    """Whether global module hooks are registered (``torch.nn.modules.module.
    register_module_forward_hook``, ``register_module_forward_pre_hook``,
    ``register_module_full_backward_hook`` and the like): they run on every module call."""
    g = nn.modules.module
    return bool(g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks
                or g._global_backward_pre_hooks)


def _hooked(module: nn.Module) -> bool:
    """Whether a call of ``module`` runs hooks: forward (pre-)hooks or module backward hooks
    (``register_forward_hook`` and the like) on it or a submodule, or global module hooks
    (:func:`_global_hooks`). Only a module call runs them."""
    return _global_hooks() or any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                                  or m._backward_pre_hooks for m in module.modules())


def _backward_hooked(module: nn.Module) -> bool:
    """Whether a call of ``module`` runs module backward hooks (``register_full_backward_hook``
    and the like, on it or a submodule, or global ones)."""
    g = nn.modules.module
    return bool(g._global_backward_hooks or g._global_backward_pre_hooks) or any(
        m._backward_hooks or m._backward_pre_hooks for m in module.modules())


def _parametrized(module: nn.Module) -> bool:
    return any(_is_parametrized(m) for m in module.modules())


def _requiring_grad(params: Params) -> Params:
    """The tensors of ``params`` that need a gradient (frozen ones are used, not differentiated)."""
    return {n: t for n, t in params.items() if t.requires_grad}


def _same_values(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` have the same shape, dtype and values (NaN equal to NaN)."""
    return (a.shape == b.shape and a.dtype == b.dtype
            and bool(((a == b) | (a.isnan() & b.isnan())).all()))


def _storage(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _shares_storage(t: Tensor, others: Iterable[Tensor | None]) -> bool:
    ptr = _storage(t)
    return any(o is not None and _storage(o) == ptr for o in others)


def _writable(t: Tensor, *others: Tensor | None) -> bool:
    """Whether ``t`` (a result computed in backward) may be overwritten in place: dense and
    not sharing storage with any of ``others`` (autograd may hand back a gradient that *is*
    the incoming one, or a view of it)."""
    return _dense(t) and not _shares_storage(t, others)


def _dense(t: Tensor) -> bool:
    return (t.is_contiguous() or t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
            or t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d))


def internal_format(t: Tensor) -> torch.memory_format | None:
    """The layout the steps compute in: channels-last for 2D/3D states (oneDNN convolutions
    then need no layout reorders, which cost memory and time), ``None`` (as is) for 1D."""
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.dim())


def _layout(t: Tensor) -> torch.memory_format:
    """The memory format ``t`` is in (contiguous unless it is only channels-last)."""
    fmt = internal_format(t)
    if fmt is not None and not t.is_contiguous() and t.is_contiguous(memory_format=fmt):
        return fmt
    return torch.contiguous_format


def _to(t: Tensor, fmt: torch.memory_format | None) -> Tensor:
    return t if fmt is None else t.contiguous(memory_format=fmt)


def _empty(t: Tensor, fmt: torch.memory_format | None) -> Tensor:
    return torch.empty_like(t, memory_format=torch.preserve_format if fmt is None else fmt)


def _step_sum(shared: Tensor, other: Tensor, g: Tensor, a: float, fresh: bool,
              fmt: torch.memory_format | None) -> Tensor:
    """A leapfrog step's new state ``shared + ((shared - other) + a g)`` in one new tensor (in
    layout ``fmt``), bit for bit the out-of-place expression's values (each sum rounded as
    there); ``g`` is scaled in place if ``fresh`` (nothing else references it)."""
    new = torch.sub(shared, other, out=_empty(shared, fmt))
    new += g.mul_(a) if fresh else a * g
    new += shared
    return new


def _accumulate(store: _Grads, params: Sequence[Tensor], grads: Sequence[Tensor | None],
                scale: float = 1.0, avoid: Sequence[Tensor | None] = ()) -> None:
    """Add ``scale * grads[i]`` to ``store[id(params[i])]``. A gradient is adopted (and scaled
    in place) only if it shares storage with none of ``avoid`` (the incoming gradient, the
    state's gradient from the same vector-Jacobian product: autograd may hand back a tensor
    itself, e.g. for ``f(y) = tanh(y) + b``) nor with another gradient of ``grads``."""
    taken = {_storage(t) for t in avoid if t is not None}
    seen: set[int] = set()
    for g in grads:
        if g is not None:
            ptr = _storage(g)
            (taken if ptr in seen else seen).add(ptr)  # shared by two gradients: taken
    for p, g in zip(params, grads):
        if g is None:
            continue
        key = id(p)
        if key in store:
            store[key].add_(g, alpha=scale)  # a tensor this backward owns (below)
        elif _dense(g) and _storage(g) not in taken:
            store[key] = g.mul_(scale) if scale != 1.0 else g
        else:
            store[key] = g * scale


@dataclass
class _State:
    """The pair and its gradient pair while backward walks the steps; ``owned[i]`` /
    ``grad_owned[i]``: the tensor was allocated by this backward and may be overwritten."""

    pair: list[Tensor]
    grad: list[Tensor | None]
    owned: list[bool]
    grad_owned: list[bool]
    fmt: torch.memory_format | None = None


class LeapfrogStep:
    """One leapfrog layer ``(p, c) -> (c, 2c - p + h2 * f(c))`` (or its inverse if ``flip``).

    Both the forward and the flipped map have the form ``new = 2*shared - other + h2*f(shared)``;
    only the position of ``shared`` and ``new`` in the pair differs. A module with a
    ``neg_forward(y, params=None, modes=None)`` method (``-f(y)``; with ``params``, purely
    functional with those tensors, in the training flags ``modes`` (by ``named_modules()``
    name) and without updating running statistics, like
    :class:`fhcnn.layers.SymmetricLayer`) is evaluated through it: no negation is stored or
    differentiated, and backward never touches the module. Its parametrized tensors are
    passed to ``neg_forward`` computed, by their parametrized names. A module with hooks (on
    it or a submodule, e.g. ``register_forward_hook``, or global module hooks such as
    ``torch.nn.modules.module.register_module_forward_hook``) is called as a module instead,
    in the forward pass and in the recomputation alike, so its hooks run (and may change
    outputs) as with plain autograd.
    """

    def __init__(self, f: nn.Module, h2: float, flip: bool = False, name: str = "") -> None:
        self.f, self.h2, self.flip, self.name = f, h2, flip, name

    def _functional(self) -> bool:
        # ``neg_forward`` with given tensors evaluates the norm functionally, past its hooks
        return hasattr(self.f, "neg_forward") and not _hooked(self.f)

    def params(self) -> Params:
        return _tensors(self.f, self._functional())

    def record(self) -> Recorded:
        return _record(self.f, self._functional())

    def module(self) -> nn.Module | None:
        """The module a recomputation evaluates through ``functional_call`` (``None`` when it
        is evaluated through its own functional form)."""
        return None if self._functional() else self.f

    def parametrized(self) -> bool:
        return _parametrized(self.f)

    def inverted(self) -> LeapfrogStep:
        return LeapfrogStep(self.f, self.h2, not self.flip, self.name)

    def _g(self, y: Tensor, params: Params | None = None, rec: Recorded | None = None
           ) -> tuple[Tensor, float, bool]:
        """``(g, a, fresh)`` with ``h2 f(y) = a g``; ``fresh``: ``g`` is a new tensor that
        nothing else references. ``params`` given: a recomputation with those tensors and the
        forward pass's state ``rec`` (its modes), without updating running statistics."""
        functional = self._functional() if rec is None else rec.functional
        neg: Callable[..., Tensor] | None = getattr(self.f, "neg_forward", None) if functional else None
        if neg is not None:
            if params is not None and rec is not None:
                g = neg(y, {**rec.stats, **params}, rec.modes)
            else:
                g = neg(y) if params is None else neg(y, params)
            return g, -self.h2, True
        if params is None:
            return self.f(y), self.h2, False
        what = f"{self.name} ({type(self.f).__name__})" if self.name else type(self.f).__name__
        return _recompute_call(self.f, self.f, "", params, rec, (y,), what), self.h2, False

    def _split(self, p: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        return (p, c) if self.flip else (c, p)

    def apply(self, p: Tensor, c: Tensor, fmt: torch.memory_format | None = None) -> Pair:
        """The step with out-of-place operations (plain autograd records it); with autograd
        off (a prediction) the same values computed as :meth:`apply_` does, in one new tensor
        (in layout ``fmt``) instead of four."""
        shared, other = self._split(p, c)
        g, a, fresh = self._g(shared)
        if torch.is_grad_enabled():
            # ``c + ((c - p) + h2 f(c))`` equals ``2c - p + h2 f(c)``; the difference of two
            # nearby states is exact in floating point, so this form rounds slightly less.
            new = shared + ((shared - other) + a * g)
        else:
            new = _step_sum(shared, other, g, a, fresh, fmt)
        return (new, shared) if self.flip else (shared, new)

    def apply_(self, p: Tensor, c: Tensor, fmt: torch.memory_format | None = None,
               params: Params | None = None, rec: Recorded | None = None) -> Pair:
        """:meth:`apply` without autograd, one new tensor (in layout ``fmt``) allocated; bit
        for bit the same values. With ``params`` (and ``rec``): the recomputation of an
        earlier forward pass with its tensors and state (see :meth:`_g`). A module that
        modifies its input in place (``nn.ReLU(inplace=True)`` as its first operation) is
        refused: the backward reconstructs the earlier states from that input."""
        shared, other = self._split(p, c)
        version = shared._version
        g, a, fresh = self._g(shared, params, rec)
        if shared._version != version:
            what = self.name or type(self.f).__name__
            raise RuntimeError(
                f"{what} ({type(self.f).__name__}) modified its input in place (e.g. "
                f"nn.ReLU(inplace=True) as its first operation): the reversible backward "
                f"reconstructs the earlier states from that input; make the operation out of "
                f"place, or use reversible=False")
        new = _step_sum(shared, other, g, a, fresh, fmt)
        del g
        return (new, shared) if self.flip else (shared, new)

    def backward(self, st: _State, known_input: Pair | None, params: Params, grads: _Grads,
                 rec: Recorded | None = None) -> None:
        """Turn ``st`` (the step's output pair and its gradients) into its input pair and
        gradients, in place.

        ``f(shared)`` is evaluated once, with autograd, and serves both the reconstruction
        and the vector-Jacobian product. Gradients w.r.t. ``params`` (the tensors used in the
        forward pass, whose state ``rec`` recorded) are added to ``grads``, keyed by ``id``.
        """
        i_sh, i_new = (1, 0) if self.flip else (0, 1)
        if st.fmt is not None:  # e.g. the Function's outputs, in the caller's layout
            t: Tensor | None = st.pair[i_sh]
            if t is not None and not t.is_contiguous(memory_format=st.fmt):
                st.pair[i_sh], st.owned[i_sh] = _to(t, st.fmt), True
            t = st.grad[i_new]
            if t is not None and not t.is_contiguous(memory_format=st.fmt):
                st.grad[i_new], st.grad_owned[i_new] = _to(t, st.fmt), True
            del t
        shared, g_new, g_shared = st.pair[i_sh], st.grad[i_new], st.grad[i_sh]
        local = {n: t.detach().requires_grad_(g_new is not None and t.requires_grad) for n, t in params.items()}
        with torch.enable_grad() if g_new is not None else torch.no_grad():
            s = shared.detach().requires_grad_(g_new is not None)
            g, a, fresh = self._g(s, local, rec)
        v: Tensor | None = None
        # ``neg_forward``'s product is scaled afterwards; a module call is differentiated with
        # the gradient plain autograd hands it, ``a g_new``, which its backward hooks see
        scale = a if fresh else 1.0
        if g_new is not None:
            g_out = g_new.to(g.dtype) if fresh else (a * g_new).to(g.dtype)
            trained = _requiring_grad(params)
            vjp = torch.autograd.grad(g, [s, *(local[n] for n in trained)], grad_outputs=g_out,
                                      allow_unused=True)
            del g_out
            _accumulate(grads, list(trained.values()), vjp[1:], scale, avoid=(g_new, vjp[0]))
            v = vjp[0]
            del vjp
        del s, local
        g = g.detach()
        fresh = fresh and _writable(g, shared, g_new)
        # reconstruct the other member (same operations, same order as ``apply``), into the
        # buffer of the member it replaces when this backward owns that buffer
        if known_input is not None:
            other, other_owned = known_input[i_sh], False
        else:
            with torch.no_grad():
                new = st.pair[i_new]
                if st.owned[i_new]:
                    other = new.sub_(shared).neg_()
                else:
                    other = torch.sub(shared, new, out=_empty(shared, st.fmt))
                del new
                st.pair[i_new] = other  # drop the caller's reference to the old member
                other += g.mul_(a) if fresh else a * g
                other += shared
            other_owned = True
        del g
        # g_shared_in = g_shared + 2 g_new + a J_g^T g_new;  g_other_in = -g_new
        g_shared_in: Tensor | None = None
        if v is not None:
            v = v.to(shared.dtype)
            if _writable(v, g_new, g_shared):
                g_shared_in = v.mul_(scale) if scale != 1.0 else v
            else:
                g_shared_in = scale * v
        del v
        for t, alpha in ((g_new, 2.0), (g_shared, 1.0)):
            if t is None:
                continue
            if g_shared_in is None:
                g_shared_in = t * alpha if alpha != 1.0 or not st.grad_owned[i_sh] else t
            else:
                g_shared_in.add_(t, alpha=alpha)
        g_other_in: Tensor | None = None
        if g_new is not None:
            g_other_in = g_new.neg_() if st.grad_owned[i_new] else -g_new
        del g_new, g_shared
        st.pair[i_sh], st.pair[i_new] = other, shared
        st.owned[i_sh], st.owned[i_new] = other_owned, st.owned[i_sh]
        st.grad[i_sh], st.grad[i_new] = g_other_in, g_shared_in
        st.grad_owned[i_sh], st.grad_owned[i_new] = True, True


class TransitionStep:
    """``(p, c) -> (W p, W c)`` with ``W`` an orthogonal wavelet (``inverse=False``) or ``W^-1``.

    ``W`` is a module call (``wavelet(x)``: its hooks run, as in plain autograd), ``W^-1`` the
    wavelet's ``inverse`` method (no hooks run). The reversible backward reconstructs a
    step's input from its output by the inverse map, so in the reversible forward pass a hook
    that changes the input or output of ``W`` (a pre-hook returning another input or
    modifying it in place, a forward hook returning another output or modifying it in place;
    the wavelet's own or a global one) is refused with a ``RuntimeError`` naming the step
    (``name``, e.g. ``"transitions.0"``); hooks that change nothing run as usual.
    """

    def __init__(self, wavelet: nn.Module, inverse: bool = False, name: str = "") -> None:
        self.wavelet, self.inverse, self.name = wavelet, inverse, name

    def _functional(self) -> bool:
        return hasattr(self.wavelet, "functional") and not self._vjp_by_call()

    def _vjp_by_call(self) -> bool:
        """Whether the backward differentiates ``W`` through a module call: a step applying
        ``W`` (a module call in the forward pass) whose wavelet has module backward hooks (its
        own or global ones), which plain autograd runs with the gradients of ``W``."""
        return not self.inverse and _backward_hooked(self.wavelet)

    def params(self) -> Params:
        return _tensors(self.wavelet, self._functional())

    def record(self) -> Recorded:
        return _record(self.wavelet, self._functional())

    def module(self) -> nn.Module | None:
        """As :meth:`LeapfrogStep.module`."""
        return None if self._functional() else self.wavelet

    def parametrized(self) -> bool:
        return _parametrized(self.wavelet)

    def inverted(self) -> TransitionStep:
        return TransitionStep(self.wavelet, not self.inverse, self.name)

    def _call(self, x: Tensor) -> Tensor:
        """``W x`` in the reversible forward pass: a module call (its hooks run), refused if a
        hook changed ``x`` or the output, which must be exactly the bare transform of ``x``
        for the backward's reconstruction ``x = W^-1 (W x)`` to hold."""
        if not _hooked(self.wavelet):
            return self.wavelet(x)
        expected = self.wavelet.forward(x)  # no hooks
        version = x._version
        y = self.wavelet(x)
        if x._version != version or not isinstance(y, Tensor) or not _same_values(y, expected):
            what = f"{self.name} ({type(self.wavelet).__name__})" if self.name else type(self.wavelet).__name__
            raise RuntimeError(
                f"{what}: a hook changed the input or output of this wavelet transition (a forward "
                f"pre-hook or forward hook, its own or a global one, returned another tensor or "
                f"modified one in place). The reversible backward reconstructs the transition's "
                f"input from its output by the inverse transform, which would then be wrong: "
                f"remove the hook, make it change nothing, or use reversible=False")
        return y

    def _map(self, x: Tensor, inverse: bool, params: Mapping[str, Tensor] | None = None,
             rec: Recorded | None = None, hooks: bool = False) -> Tensor:
        """``W x`` or ``W^-1 x``; with ``params``, with those tensors and without touching the
        module (``functional`` if the forward pass used it, else ``torch.func.functional_call``
        with the forward pass's state ``rec``, see :func:`_recompute_call`; ``W`` as a module
        call, which runs its hooks, if ``hooks``, else the bare ``forward``)."""
        if params is None:
            return self.wavelet.inverse(x) if inverse else self.wavelet(x)  # type: ignore[operator]
        functional = self._functional() if rec is None else rec.functional
        if functional:
            return self.wavelet.functional(x, params, inverse=inverse)  # type: ignore[operator]
        method = "inverse" if inverse else "__call__" if hooks else "forward"
        what = f"{self.name} ({type(self.wavelet).__name__})" if self.name else type(self.wavelet).__name__
        return _recompute_call(self.wavelet, _Method(self.wavelet, method), "wavelet.", params, rec, (x,), what)

    def apply(self, p: Tensor, c: Tensor, fmt: torch.memory_format | None = None) -> Pair:
        return _to(self._map(p, self.inverse), fmt), _to(self._map(c, self.inverse), fmt)

    def apply_(self, p: Tensor, c: Tensor, fmt: torch.memory_format | None = None,
               params: Params | None = None, rec: Recorded | None = None) -> Pair:
        """:meth:`apply` in the reversible forward pass (hooks that change ``W`` refused, see
        :meth:`_call`); with ``params`` (and ``rec``) a recomputation (see :meth:`_map`)."""
        if params is None and not self.inverse:
            return _to(self._call(p), fmt), _to(self._call(c), fmt)
        return (_to(self._map(p, self.inverse, params, rec), fmt),
                _to(self._map(c, self.inverse, params, rec), fmt))

    def backward(self, st: _State, known_input: Pair | None, params: Params, grads: _Grads,
                 rec: Recorded | None = None) -> None:
        """Like :meth:`LeapfrogStep.backward`: reconstruct (with the parameter tensors the
        forward pass used) and pull the gradients back, one member at a time."""
        for i in range(2):
            out, g_out = st.pair[i], st.grad[i]
            if known_input is not None:
                x, owned = known_input[i], False
            else:
                with torch.no_grad():
                    x, owned = _to(self._map(out, not self.inverse, params, rec), st.fmt), True
            st.pair[i], st.owned[i] = x, owned
            del out
            if g_out is None:
                continue
            call = self._vjp_by_call()
            trained = _requiring_grad(params)
            if not trained and not call:
                # W is orthogonal: its adjoint is its inverse
                with torch.no_grad():
                    st.grad[i] = None
                    st.grad[i] = _to(self._map(g_out, not self.inverse, params, rec), st.fmt)
                st.grad_owned[i] = True
                continue
            local = {n: t.detach().requires_grad_(t.requires_grad) for n, t in params.items()}
            with torch.enable_grad():
                xd = x.detach().requires_grad_(True)
                y = self._map(xd, self.inverse, local, rec, hooks=call)
            vjp = torch.autograd.grad(y, [xd, *(local[n] for n in trained)], grad_outputs=g_out.to(y.dtype),
                                      allow_unused=True)
            del y, xd
            _accumulate(grads, list(trained.values()), vjp[1:], avoid=(g_out, vjp[0]))
            st.grad[i] = _to(vjp[0].to(x.dtype), st.fmt)
            st.grad_owned[i] = not _shares_storage(vjp[0], (g_out,))
            del vjp


class _Method(nn.Module):
    """``wavelet.<method>`` as a module's forward (for ``functional_call``); ``"__call__"``:
    the module call, which runs the wavelet's hooks."""

    def __init__(self, wavelet: nn.Module, method: str) -> None:
        super().__init__()
        self.wavelet, self.method = wavelet, method

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self.wavelet, self.method)(x)


Step = LeapfrogStep | TransitionStep


def _check_version(t: Tensor, expected: int, what: str) -> None:
    if t._version != expected:
        raise RuntimeError(
            f"one of the variables needed for gradient computation has been modified by an "
            f"inplace operation: {what} [{t.type()} {list(t.shape)}] is at version {t._version}; "
            f"expected version {expected} instead (fhcnn's reversible backward reads it; do not "
            f"modify it, e.g. with optimizer.step(), between forward and backward)")


class ReversibleFunction(torch.autograd.Function):
    """Runs ``steps`` keeping only the final pair (and the input pairs of ``store`` steps).

    ``apply(steps, step_params, store, p, c, *params)``: ``step_params[i]`` are the parameter
    tensors step ``i`` uses (by name, frozen ones included), ``params`` all of them,
    de-duplicated; those that require grad receive their gradients as ordinary
    Function-input gradients. The backward is not differentiable
    (no ``create_graph``); it may run again (``retain_graph=True``), recomputing the outputs
    (it releases them the first time) from the inputs, which it keeps; so it does when the
    caller has modified an output in place.

    Everything the backward evaluates is evaluated with the state of the forward pass: the
    tensors in ``step_params`` (not the modules' attributes then, which ``functional_call`` or
    an assignment may have changed) and the training flags the modules had in the forward
    pass (recorded there; batch norms keep batch or running statistics accordingly). Only the
    forward pass updates running statistics.
    """

    @staticmethod
    def forward(ctx, steps: Sequence[Step], step_params: Sequence[Params], store: frozenset[int],
                p: Tensor, c: Tensor, *params: Tensor) -> Pair:  # type: ignore[override]
        device_type = p.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type),
                        torch.get_autocast_dtype(device_type))
        ctx.steps, ctx.step_params, ctx.params = steps, step_params, params
        ctx.param_versions = [t._version for t in params]
        # kept tensors are detached aliases (no reference cycle through grad_fn; released in
        # backward) whose version counters are checked there
        ctx.kept = {}
        # the inputs (usually the caller's batch) let a second backward (retain_graph=True,
        # e.g. gradcheck) recompute the outputs, which the first backward releases
        ctx.inp = ((p.detach(), c.detach()), (p._version, c._version))
        ctx.fmt, ctx.out_fmt = internal_format(c), _layout(c)

        def keep(i: int, p: Tensor, c: Tensor) -> None:
            if i in store:
                ctx.kept[i] = ((p.detach(), c.detach()), (p._version, c._version))
        ctx.draws = _RandomDraws(p.device)
        entries: list[EntryBuffers | None] = []
        p, c = _forward_no_grad(steps, p, c, ctx.fmt, ctx.out_fmt, keep, draws=ctx.draws, entries=entries)
        # the modes (and buffers) the forward ended with; other buffers as each step began
        ctx.recorded = [replace(s.record(), entry=e) for s, e in zip(steps, entries)]
        ctx.out = ((p.detach(), c.detach()), (p._version, c._version))
        note_kept([p, c, *ctx.inp[0], *(t for pair, _ in ctx.kept.values() for t in pair),
                   *(t for r in ctx.recorded for t in r.stats.values()),
                   *(t for e in entries if e is not None for t in e.kept()), *ctx.draws.kept()])
        ctx.set_materialize_grads(False)  # an unused output (often Y_prev) costs no zero tensor
        return p, c

    @staticmethod
    def backward(ctx, g_p: Tensor | None, g_c: Tensor | None):  # type: ignore[override]
        if torch.is_grad_enabled():
            raise RuntimeError(
                "double backward (create_graph=True) through a reversible HyperbolicNetwork is "
                "not supported: its backward recomputes states outside the graph. Use "
                "reversible=False for gradient penalties, meta-learning or Hessian products.")
        names = {id(t): f"parameter {n!r}" for sp in ctx.step_params for n, t in sp.items()}
        for t, v in zip(ctx.params, ctx.param_versions):
            _check_version(t, v, names.get(id(t), "a parameter"))
        (in_p, in_c), (v_p, v_c) = ctx.inp
        _check_version(in_p, v_p, "input p")
        _check_version(in_c, v_c, "input c")
        if ctx.out is not None and any(t._version != v for t, v in zip(*ctx.out)):
            # the caller modified an output in place (``y.add_(1)``): its old values are gone,
            # and what autograd hands in is the gradient w.r.t. them; recompute them
            ctx.out = None
        if ctx.out is None:  # a second backward: recompute the outputs the first one released
            with torch.no_grad(), ctx.draws.replaying():
                p, c = _forward_no_grad(ctx.steps, in_p, in_c, ctx.fmt, ctx.out_fmt,
                                        recompute=(ctx.step_params, ctx.recorded), draws=ctx.draws)
            ctx.out = ((p, c), (p._version, c._version))
            del p, c
        del in_p, in_c
        (out_p, out_c), _ = ctx.out
        for (kp, kc), (vp, vc) in ctx.kept.values():
            _check_version(kp, vp, "a stored pair (block mode)")
            _check_version(kc, vc, "a stored pair (block mode)")
        st = _State([out_p, out_c], [g_p, g_c], [False, False], [False, False], ctx.fmt)
        ctx.out = None
        del out_p, out_c, g_p, g_c
        grads: _Grads = {}
        device_type, enabled, dtype = ctx.autocast
        with torch.autocast(device_type, dtype=dtype, enabled=enabled), ctx.draws.replaying():
            for i in reversed(range(len(ctx.steps))):
                ctx.draws.restore(i)
                known = ctx.kept[i][0] if i in ctx.kept else None
                # named ranges for torch.profiler (fhcnn.memory.LiveBytesTracker reads them)
                with torch.profiler.record_function(f"fhcnn.backward.step:{i}"):
                    ctx.steps[i].backward(st, known, ctx.step_params[i], grads, ctx.recorded[i])
                del known
        param_grads = tuple(grads.pop(id(t), None) for t in ctx.params)
        g_in = st.grad
        del st
        return (None, None, None, g_in[0], g_in[1], *param_grads)


def _forward_no_grad(steps: Sequence[Step], p: Tensor, c: Tensor, fmt: torch.memory_format | None,
                     out_fmt: torch.memory_format,
                     keep: Callable[[int, Tensor, Tensor], None] | None = None,
                     recompute: tuple[Sequence[Params], Sequence[Recorded]] | None = None,
                     draws: _RandomDraws | None = None,
                     entries: list[EntryBuffers | None] | None = None) -> Pair:
    """The forward pass inside :class:`ReversibleFunction`: steps computed in layout ``fmt``,
    outputs returned in ``out_fmt`` (the input's), always new tensors. ``recompute``: the
    tensors and state of each step in an earlier forward pass, to evaluate it again with them
    (functionally: no running-statistics update). ``draws``: without ``recompute``, records
    the random number generators' states of steps that draw random numbers; with it, restores
    them before each such step (the caller restores its own states afterwards). ``entries``:
    without ``recompute``, gets each step's :class:`EntryBuffers` (``None`` for a step evaluated
    through its own functional form, or whose module has no other buffers)."""
    x_p, x_c = p, c
    p, c = (_to(p, fmt), _to(c, fmt)) if p is not c else (_to(p, fmt),) * 2
    for i, step in enumerate(steps):
        if keep is not None:
            keep(i, p, c)
        if recompute is None:
            module = step.module() if entries is not None else None
            began = EntryBuffers.before(module) if module is not None else None
            with draws.recording(i) if draws is not None else nullcontext():
                p, c = step.apply_(p, c, fmt)
            if entries is not None:
                entries.append(EntryBuffers.after(module, began) if module is not None and began
                               and began[0] else None)
        else:
            if draws is not None:
                draws.restore(i)
            p, c = step.apply_(p, c, fmt, recompute[0][i], recompute[1][i])
    p, c = p.contiguous(memory_format=out_fmt), c.contiguous(memory_format=out_fmt)
    # outputs must be new tensors, never the inputs themselves
    if p is x_p or p is x_c:
        p = p.clone()
    if c is x_p or c is x_c or c is p:
        c = c.clone()
    return p, c


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

    A step module with parametrized tensors (``torch.nn.utils.parametrize``) has each computed
    once for the whole call (``parametrize.cached``), in every mode: the reversible modes pass
    that tensor to the Function, and a layer uses one weight for ``K`` and ``K^T``.
    """
    if mode is not True and mode is not False and mode != "block":
        raise ValueError(f"mode must be True, False or 'block', got {mode!r}")
    if any(s.parametrized() for s in steps):
        with parametrize.cached():
            return _run_steps(steps, p, c, mode)
    return _run_steps(steps, p, c, mode)


def _run_steps(steps: Sequence[Step], p: Tensor, c: Tensor, mode: bool | str) -> Pair:
    step_params = [s.params() for s in steps]
    params = list({id(t): t for sp in step_params for t in sp.values()}.values())
    needs_grad = torch.is_grad_enabled() and (p.requires_grad or c.requires_grad
                                              or any(t.requires_grad for t in params))
    if mode is False or not needs_grad:
        # same layouts as the reversible path: computed channels-last, returned as given
        fmt, out_fmt = internal_format(c), _layout(c)
        p, c = (_to(p, fmt), _to(c, fmt)) if p is not c else (_to(p, fmt),) * 2
        for step in steps:
            p, c = step.apply(p, c, fmt)
        return p.contiguous(memory_format=out_fmt), c.contiguous(memory_format=out_fmt)
    if mode is True:
        store: frozenset[int] = frozenset()
    else:
        store = frozenset(i for i, s in enumerate(steps) if isinstance(s, TransitionStep))
    for s in steps:
        _refuse_legacy_spectral_norm(s.f if isinstance(s, LeapfrogStep) else s.wavelet, s.name)
    _refuse_inference_tensors(steps, step_params, p, c)
    out = _apply_eagerly(steps, step_params, store, p, c, params)
    return out[0], out[1]


def _refuse_legacy_spectral_norm(module: nn.Module, name: str) -> None:
    """A ``RuntimeError`` if ``module`` or a submodule has the legacy spectral norm
    (``torch.nn.utils.spectral_norm``, a forward pre-hook): in training mode it runs a power
    iteration on every call, so the recomputation in the reversible backward would divide by
    another sigma (and update its vectors again). Its parametrization
    (``torch.nn.utils.parametrizations.spectral_norm``) is computed once per forward pass and
    is right."""
    from torch.nn.utils.spectral_norm import SpectralNorm

    for sub, m in module.named_modules():
        if any(isinstance(h, SpectralNorm) for h in m._forward_pre_hooks.values()):
            what = ".".join(n for n in (name, sub) if n) or type(module).__name__
            raise RuntimeError(
                f"{what} ({type(m).__name__}): torch.nn.utils.spectral_norm runs its power "
                f"iteration again when the reversible backward recomputes the module, so the "
                f"gradient would be wrong; use torch.nn.utils.parametrizations.spectral_norm, "
                f"or reversible=False")


def _refuse_inference_tensors(steps: Sequence[Step], step_params: Sequence[Params], p: Tensor, c: Tensor
                              ) -> None:
    """A ``RuntimeError`` naming the tensor if the input pair or a step's tensor is an
    inference tensor (made under ``torch.inference_mode``): the backward keeps it and checks
    that it is unchanged, and such a tensor has no version counter. Plain autograd cannot save
    it for backward either."""
    named = [("the input", p), ("the input", c)]
    named += [(f"{s.name}.{n}" if s.name else n, t) for s, sp in zip(steps, step_params) for n, t in sp.items()]
    for what, t in named:
        if t.is_inference():
            raise RuntimeError(
                f"{what} is an inference tensor (made under torch.inference_mode), which the reversible "
                f"backward cannot keep for the gradient (nor can plain autograd save it): make it, "
                f"or clone it (x.clone()), outside inference mode, or run the network under "
                f"torch.inference_mode or torch.no_grad if no gradient is needed")


#: ``torch.compiler.disable`` imports ``torch._dynamo`` where it is applied (1.3 s of the 2.9 s of
#: ``import fhcnn``, paid by every command that never runs a network: a refusal, ``--help``, a
#: worker that only copies or waits); PyTorch's lazy form of it imports that at the first call
#: (private: where a torch lacks it, the public decorator)
_run_eagerly = getattr(torch, "_disable_dynamo", None) or torch.compiler.disable


@_run_eagerly
def _apply_eagerly(steps: Sequence[Step], step_params: Sequence[Params], store: frozenset[int],
                   p: Tensor, c: Tensor, params: Sequence[Tensor]) -> Pair:
    """Under ``torch.compile`` the Function runs eagerly (one graph break): its forward and
    backward manage buffers by hand, which tracing would neither speed up nor keep."""
    return ReversibleFunction.apply(steps, step_params, store, p, c, *params)
