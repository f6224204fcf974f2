"""Reversible gradients under the less common uses of autograd: each is right, or a clear error.

Parameter swaps (``torch.func.functional_call``), double backward, in-place changes between
forward and backward, ``retain_graph``, several threads, ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fhcnn import HyperbolicNetwork
from fhcnn.memory import saved_tensor_bytes
from tests.conftest import rel_err

UNITS = [(2, "down"), (1, "down"), (1, "up"), (2, "up")]
MODES = [True, "block"]


def _net(mode, **kw):
    torch.manual_seed(0)
    return HyperbolicNetwork(4, UNITS, dim=2, reversible=mode, **kw).double()


def _x(batch=2):
    return torch.randn(batch, 4, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def _loss(y):
    w = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(5))
    return (w * y).sum() + 0.5 * y.square().sum()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wavelet", ["learnable", "haar"])
def test_functional_call_with_swapped_parameters(mode, wavelet):
    """Gradients w.r.t. parameters passed through ``functional_call`` (angles far from the
    module's own) equal plain autograd's: the backward reconstructs with the tensors the
    forward used, through layers and learnable transitions alike."""
    kw = {"wavelet": wavelet, "wavelet_init": "db2"}
    ref_net, net = _net(False, **kw), _net(mode, **kw)
    g = torch.Generator().manual_seed(11)
    swapped = {n: (p.detach() + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype)).requires_grad_()
               for n, p in net.named_parameters()}
    out = {}
    for key, m in (("plain", ref_net), ("rev", net)):
        x = _x().requires_grad_()
        ps = {n: t.detach().clone().requires_grad_() for n, t in swapped.items()}
        loss = _loss(torch.func.functional_call(m, ps, (x,)))
        grads = torch.autograd.grad(loss, [x, *ps.values()])
        out[key] = dict(zip(["x", *ps], grads))
    for name, ref in out["plain"].items():
        assert rel_err(out["rev"][name], ref) < 1e-9, (name, rel_err(out["rev"][name], ref))


@pytest.mark.parametrize("mode", MODES)
def test_double_backward_raises_a_clear_error(mode):
    """``create_graph=True`` (gradient penalties): plain autograd gives d/dW ||dL/dx||^2; the
    reversible backward is not differentiable and says so instead of returning a wrong value."""
    x = _x().requires_grad_()
    plain = _net(False)
    (gx,) = torch.autograd.grad(_loss(plain(x)), x, create_graph=True)
    gx.square().sum().backward()
    assert plain.layers[0].weight.grad.abs().sum() > 0
    net = _net(mode)
    with pytest.raises(RuntimeError, match="create_graph=True.*reversible=False"):
        torch.autograd.grad(_loss(net(x)), x, create_graph=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("which", ["layer", "wavelet"])
def test_parameter_changed_in_place_before_backward_raises(mode, which):
    """Like plain autograd, which raises for a weight saved for backward."""
    for m in (False, mode):
        net = _net(m, wavelet="learnable")
        param = net.layers[1].weight if which == "layer" else net.transitions[0].theta
        loss = _loss(net(_x()))
        with torch.no_grad():
            param.add_(0.01)
        if which == "wavelet" and m is False:
            continue  # plain autograd saves cos/sin of the angles, not the angles
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["recorded", "no_grad"])
def test_output_changed_in_place_before_backward(mode, how):
    """An output modified in place before backward: recorded by autograd (``y.add_(1)``, then
    the loss), or under ``no_grad`` after a loss that does not need its values. The backward
    refused both (its reconstruction starts from the outputs' values), though plain autograd
    gives the first; it now recomputes the outputs from the input and gives the gradients of
    the unmodified forward, on a second backward too."""
    out = {}
    for m, modify in ((False, False), (mode, True)):
        net = _net(m, wavelet="learnable")
        x = _x().requires_grad_()
        yp, yc = net.forward_pair(x)
        if how == "recorded":
            if modify:
                yc.add_(1)
                yp.mul_(2)
            else:
                yc, yp = yc + 1, yp * 2
            loss = _loss(yc) + yp.sum()
        else:
            loss = _loss(yc) + yp.sum()
            if modify:
                with torch.no_grad():
                    yp.mul_(2)  # yc.add_(1) would be refused by the loss, which saved yc
        loss.backward(retain_graph=True)
        first = {"x": x.grad.clone(), **{n: p.grad.clone() for n, p in net.named_parameters()}}
        loss.backward()
        out[m] = first, {"x": x.grad, **{n: p.grad for n, p in net.named_parameters()}}
    for got, ref in zip(out[mode], out[False]):
        _assert_same(got, ref)


@pytest.mark.parametrize("mode", MODES)
def test_retain_graph_backward_twice(mode):
    """A second backward through the same graph (the first released the outputs) recomputes
    them and accumulates the same gradients again, as plain autograd does."""
    grads = {}
    for m in (False, mode):
        net = _net(m, wavelet="learnable")
        x = _x().requires_grad_()
        loss = _loss(net(x))
        loss.backward(retain_graph=True)
        first = [t.grad.clone() for t in (x, *net.parameters())]
        loss.backward()
        grads[m] = [(t.grad, f) for t, f in zip((x, *net.parameters()), first)]
    for (g_ref, _), (g, f) in zip(grads[False], grads[mode]):
        assert rel_err(g, 2 * f) < 1e-12 and rel_err(g, g_ref) < 1e-9


@pytest.mark.parametrize("bad", [1.0, 0, 1, "yes", None, 0.0])
def test_reversible_setter_validates(bad):
    net = _net(True)
    with pytest.raises(ValueError, match="reversible must be True, False or 'block'"):
        net.reversible = bad
    with pytest.raises(ValueError, match="reversible must be True, False or 'block'"):
        HyperbolicNetwork(4, UNITS, reversible=bad)
    assert net.reversible is True


def test_backward_never_modifies_a_module(monkeypatch):
    """The backward evaluates layers and wavelets functionally with the captured tensors: no
    ``functional_call`` (which swaps parameters on the module) and no toggling of batch-norm
    flags, so concurrent backward passes on one model cannot see each other's state."""
    import fhcnn.reversible as rev

    def forbidden(*args, **kwargs):
        raise AssertionError("backward modified a module")

    net = _net(True, norm="batch", wavelet="learnable")
    x = _x()
    loss = _loss(net(x))
    monkeypatch.setattr(rev, "frozen_norm_stats", forbidden)
    monkeypatch.setattr(torch.func, "functional_call", forbidden)
    loss.backward()
    stats = net.layers[0].norm.num_batches_tracked.item()
    assert stats == 1  # updated once, in the forward pass


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_two_threads_backward_on_one_model(norm):
    """Two threads run forward and backward on one model at once (different inputs); each
    gets the gradients a sequential run gives."""
    net = _net(True, norm=norm, wavelet="learnable")
    net.eval() if norm == "batch" else None  # running statistics fixed: both runs see the same ones
    params = list(net.parameters())
    xs = [_x(1), _x(3)]

    def grads(x):
        return torch.autograd.grad(_loss(net(x)), params)

    expected = [grads(x) for x in xs]
    for _ in range(3):
        got: list = [None, None]
        barrier = threading.Barrier(2)

        def work(i, barrier=barrier, got=got):
            barrier.wait()
            got[i] = grads(xs[i])
        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for g, e in zip(got, expected):
            for a, b in zip(g, e):
                assert rel_err(a, b) < 1e-12


def test_torch_compile_layer_and_networks():
    """``torch.compile`` of a layer, and of the network in plain and reversible mode, gives
    eager's gradients (the reversible Function runs eagerly inside the compiled program)."""
    torch._dynamo.reset()
    from fhcnn.layers import SymmetricLayer

    layer = SymmetricLayer(4, 8, dim=2).double()
    y = _x()
    assert torch.allclose(torch.compile(layer)(y), layer(y), atol=1e-12)
    x = _x(1)
    units = [(1, "down"), (1, "up")]

    def net(mode):
        torch.manual_seed(0)
        return HyperbolicNetwork(4, units, dim=2, reversible=mode).double()
    plain = net(False)
    ref = torch.autograd.grad(_loss(plain(x)), list(plain.parameters()))
    for mode in (False, True):
        m = net(mode)
        compiled = torch.compile(m)
        got = torch.autograd.grad(_loss(compiled(x)), list(m.parameters()))
        for a, b in zip(got, ref):
            assert rel_err(a, b) < 1e-9, mode
        if mode is True:  # still memory-free: saves exactly what the eager network saves
            assert saved_tensor_bytes(lambda m=compiled: m(x))[0] == saved_tensor_bytes(lambda m=m: m(x))[0]


# ------------------------------------------------------------------------------------------
# Rarer uses: state captured at forward time (parameters, modes), parametrizations, running
# statistics under a repeated backward, custom steps whose gradients alias the incoming ones.

def _digest(*ts):
    """A hash of tensors' values (to show that a caller's tensor is unchanged)."""
    h = hashlib.sha256()
    for t in ts:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _grads_and_stats(net, x, backwards=1, between=None):
    """Gradients (input and every parameter, accumulated over ``backwards`` passes with
    ``retain_graph``) and the buffers after them; ``between(net)`` runs after the forward."""
    x = x.clone().requires_grad_()
    loss = _loss(net(x))
    if between is not None:
        between(net)
    for k in range(backwards):
        loss.backward(retain_graph=k < backwards - 1)
    grads = {"x": x.grad, **{n: p.grad for n, p in net.named_parameters()}}
    return grads, {n: b.clone() for n, b in net.named_buffers()}


def _assert_same(got, ref, tol=1e-9):
    assert got.keys() == ref.keys()
    for name, r in ref.items():
        g = got[name]
        assert (g is None) == (r is None), name
        if r is not None and r.is_floating_point():
            assert rel_err(g, r) < tol, (name, rel_err(g, r))
        elif r is not None:
            assert torch.equal(g, r), (name, g, r)


@pytest.mark.parametrize("mode", MODES)
def test_functional_call_then_a_second_backward(mode):
    """Forward under ``functional_call`` with swapped tensors, then two backward passes
    (``retain_graph``): the second one recomputes the released outputs, with the tensors the
    forward used (not the module's own, restored when ``functional_call`` returned)."""
    kw = {"wavelet": "learnable", "wavelet_init": "db2"}
    g = torch.Generator().manual_seed(11)
    out = {}
    for m in (False, mode):
        net = _net(m, **kw)
        swapped = {n: (p.detach() + 0.3 * torch.randn(p.shape, generator=g.manual_seed(11 + i),
                                                       dtype=p.dtype)).requires_grad_()
                   for i, (n, p) in enumerate(net.named_parameters())}
        x = _x().requires_grad_()
        loss = _loss(torch.func.functional_call(net, swapped, (x,)))
        first = torch.autograd.grad(loss, [x, *swapped.values()], retain_graph=True)
        second = torch.autograd.grad(loss, [x, *swapped.values()])
        out[m] = dict(zip(["x", *swapped], first)), dict(zip(["x", *swapped], second))
    for got, ref in zip(out[mode], out[False]):
        _assert_same(got, ref)


@pytest.mark.parametrize("mode", MODES)
def test_parameters_reassigned_between_forward_and_backward(mode):
    """New Parameter objects assigned to the modules after the forward pass (e.g. loading
    another state by assignment) change nothing for that forward's gradients, also on a
    second backward: they go to the tensors the forward used."""
    out = {}
    for m in (False, mode):
        net = _net(m, wavelet="learnable", wavelet_init="db2")
        used = dict(net.named_parameters())
        x = _x().requires_grad_()
        loss = _loss(net(x))
        for name, p in list(net.named_parameters()):
            owner, attr = net.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]
            setattr(owner, attr, torch.nn.Parameter(p.detach() * 1.5 + 0.1))
        loss.backward(retain_graph=True)
        loss.backward()
        out[m] = {"x": x.grad, **{n: p.grad for n, p in used.items()}}
    _assert_same(out[mode], out[False])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("switch", ["eval", "train"])
@pytest.mark.parametrize("backwards", [1, 2])
def test_train_eval_switch_between_forward_and_backward(mode, switch, backwards):
    """``model.eval()`` (or ``.train()``) between forward and backward: batch norm keeps the
    statistics of the forward pass (batch or running) in the backward's recomputation, as
    plain autograd does."""
    out = {}
    for m in (False, mode):
        net = _net(m, norm="batch", wavelet="learnable", wavelet_init="db2")
        with torch.no_grad():  # running statistics unlike the batch's
            net(_x(3) * 2 + 1)
        net.train(switch == "eval")
        out[m] = _grads_and_stats(net, _x(), backwards, lambda n: getattr(n, switch)())
    for got, ref in zip(out[mode], out[False]):
        _assert_same(got, ref)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("switch", ["eval", "train"])
def test_train_eval_switch_split_batch_norm(mode, switch):
    """The same with the split batch norm of :mod:`fhcnn.spatial` (one slab)."""
    from fhcnn.spatial import SpatialSplit, split_module

    out = {}
    for m in (False, mode):
        torch.manual_seed(0)
        net = HyperbolicNetwork(2, [(1, "down"), (1, "up"), (1, None)], dim=3, hidden=4, norm="batch",
                                wavelet="learnable", wavelet_init="db2", h=0.5, reversible=m).double()
        split_module(net, SpatialSplit(3, (0, 2), (1, 1)))
        x = torch.randn(2, 2, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            net(x * 2 + 1)
        net.train(switch == "eval")
        out[m] = _grads_and_stats(net, x, 2, lambda n: getattr(n, switch)())
    for got, ref in zip(out[mode], out[False]):
        _assert_same(got, ref)


class _Scaled(torch.nn.Module):
    """A parametrization with a learnable parameter of its own: ``w -> s * w``."""

    def __init__(self) -> None:
        super().__init__()
        self.s = torch.nn.Parameter(torch.tensor(1.3, dtype=torch.float64))

    def forward(self, w):
        return self.s * w


def _parametrize(net, kind):
    """Parametrize every layer's weight (and, for ``custom``, the wavelet angles too)."""
    from torch.nn.utils import parametrizations, parametrize

    torch.manual_seed(7)  # spectral norm's power-iteration vectors
    for layer in net.layers:
        if kind == "weight_norm":
            parametrizations.weight_norm(layer, "weight")
        elif kind == "spectral_norm":
            parametrizations.spectral_norm(layer, "weight")
        else:
            parametrize.register_parametrization(layer, "weight", _Scaled())
    if kind == "custom":
        for t in net.transitions:
            if hasattr(t, "theta"):
                parametrize.register_parametrization(t, "theta", _Scaled())
    return net


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm", "custom"])
def test_parametrized_weights_train(mode, kind):
    """``torch.nn.utils.parametrize`` on the layers' weights (weight norm, spectral norm, a
    parametrization with parameters of its own, also on the wavelet angles): every original
    tensor gets plain autograd's gradient (also on a second backward), the power iterations
    of spectral norm run as often as in plain autograd, and a few optimizer steps give the
    same weights."""
    out = {}
    for m in (False, mode):
        net = _parametrize(_net(m, wavelet="learnable", wavelet_init="db2"), kind)
        grads, buffers = _grads_and_stats(net, _x(), backwards=2)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3)
        for _ in range(3):
            opt.zero_grad()
            _loss(net(_x())).backward()
            opt.step()
        out[m] = grads, buffers, {n: p.detach().clone() for n, p in net.named_parameters()}
    for got, ref in zip(out[mode], out[False]):
        _assert_same(got, ref)
    assert all(g is not None and g.abs().sum() > 0 for n, g in out[mode][0].items()), out[mode][0].keys()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backwards", [2, 3])
def test_running_statistics_updated_once_under_repeated_backward(mode, backwards):
    """``retain_graph`` and several backward passes: the running statistics (and
    ``num_batches_tracked``) are updated once, by the forward pass, as in plain autograd."""
    out = {}
    for m in (False, mode):
        out[m] = _grads_and_stats(_net(m, norm="batch"), _x(), backwards)
    for got, ref in zip(out[mode], out[False]):
        _assert_same(got, ref)
    assert out[mode][1]["layers.0.norm.num_batches_tracked"].item() == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("norm", ["group", "batch"])
def test_forward_hooks_on_layers_run_and_count_in_the_gradient(mode, norm):
    """Forward hooks on a layer and on its normalization run in every mode (a hook on
    ``net.layers[i]`` used never to run) and one that changes the norm's output changes the
    function the reversible backward differentiates too: gradients and running statistics
    equal plain autograd's, and the inverse stays exact."""
    out, seen = {}, {}
    for m in (False, mode):
        net = _net(m, norm=norm)
        net.layers[1].norm.register_forward_hook(lambda mod, inp, o: 1.5 * o + 0.1)
        calls = seen.setdefault(m, [])
        net.layers[2].register_forward_hook(lambda mod, inp, o, calls=calls: calls.append(o.shape))
        out[m] = _grads_and_stats(net, _x(), backwards=2)
        with torch.no_grad():
            net.eval()
            x = _x()
            assert rel_err(net.inverse(*net.forward_pair(x)), x) < 1e-12
    for got, ref in zip(out[mode], out[False]):
        _assert_same(got, ref)
    assert seen[False] and seen[mode]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("where", ["hook", "step"])
def test_random_draws_in_a_step_are_drawn_again_the_same(mode, where):
    """A step that draws random numbers in the forward pass (dropout in a hook on a layer's
    norm, or an ``nn.Dropout`` in a custom step module): the backward's recomputation draws
    the same numbers, so gradients (a second backward included) equal plain autograd's; they
    were 30-50 % off, as the recomputed masks differed. The caller's random stream continues
    after the backward where plain autograd leaves it."""
    from fhcnn.reversible import LeapfrogStep, run_steps

    out = {}
    for m in (False, mode):
        torch.manual_seed(0)
        if where == "hook":
            net = _net(m)
            net.layers[1].norm.register_forward_hook(
                lambda mod, inp, o: torch.nn.functional.dropout(o, 0.5, training=True))
            x = _x().requires_grad_()
            loss = _loss(net(x))
            params = dict(net.named_parameters())
        else:
            f = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Tanh(),
                                    torch.nn.Dropout(0.5)).double()
            steps = [LeapfrogStep(f, 0.5, name=f"s{i}") for i in range(3)]
            x = _x().requires_grad_()
            yp, yc = run_steps(steps, x, x, m)
            loss = _loss(yc) + (yp * yc).sum()
            params = dict(f.named_parameters())
        loss.backward(retain_graph=True)
        loss.backward()
        out[m] = {"x": x.grad, **{n: t.grad for n, t in params.items()}}, torch.rand(5)
    _assert_same(out[mode][0], out[False][0])
    assert torch.equal(out[mode][1], out[False][1])


@pytest.mark.parametrize("mode", MODES)
def test_step_module_that_modifies_its_input_in_place_is_refused(mode):
    """``nn.ReLU(inplace=True)`` first in a custom step changes the state the backward
    reconstructs the earlier states from (the backward failed with PyTorch's "a leaf Variable
    that requires grad is being used in an in-place operation", naming nothing): refused in
    the forward pass, naming the step and the fix. Plain autograd (``mode=False``) runs it as
    written."""
    from fhcnn.reversible import LeapfrogStep, run_steps

    f = torch.nn.Sequential(torch.nn.ReLU(inplace=True), torch.nn.Conv2d(4, 4, 3, padding=1)).double()
    steps = [LeapfrogStep(f, 0.5, name=f"s{i}") for i in range(2)]
    x = _x().requires_grad_()
    yp, _ = run_steps(steps, x * 1, x * 1, False)
    yp.sum().backward()
    with pytest.raises(RuntimeError, match=r"^s0 \(Sequential\) modified its input in place"):
        run_steps(steps, x * 1, x * 1, mode)


@contextlib.contextmanager
def _global_hooks(*registrations):
    """Global module hooks (``(register_module_..., hook)`` pairs) for the block, then removed."""
    handles = [register(hook) for register, hook in registrations]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("mode", MODES)
def test_global_module_hooks_on_layers_count_in_the_gradient(mode):
    """Global module hooks (``register_module_forward_hook`` and its pre-hook) run on every
    module call: one that changes the output of each group norm and one that changes the
    input of each layer change the function the reversible backward differentiates (they were
    skipped by the layers' functional path and the recomputation): gradients equal plain
    autograd's and the inverse stays exact."""
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    from fhcnn.layers import SymmetricLayer

    def norm_out(mod, inp, o):
        return 1.5 * o + 0.1 if isinstance(mod, torch.nn.GroupNorm) else None

    def layer_in(mod, inp):
        return (1.2 * inp[0],) if isinstance(mod, SymmetricLayer) else None

    out = {}
    with _global_hooks((register_module_forward_hook, norm_out), (register_module_forward_pre_hook, layer_in)):
        for m in (False, mode):
            net = _net(m)
            out[m] = _grads_and_stats(net, _x())[0]
            with torch.no_grad():
                x = _x()
                assert rel_err(net.inverse(*net.forward_pair(x)), x) < 1e-12
    plain = _grads_and_stats(_net(False), _x())[0]
    _assert_same(out[mode], out[False])
    assert rel_err(plain["layers.0.weight"], out[False]["layers.0.weight"]) > 0.01  # the hooks matter


def _clamped(grads):
    """A backward hook's result: each gradient clamped (not linear, so scaling matters)."""
    return tuple(None if g is None else g.clamp(-1e-3, 1e-3) for g in grads)


@pytest.mark.parametrize("mode", MODES)
def test_backward_hooks_on_layers_see_plain_autograds_gradients(mode):
    """Module backward hooks on a layer, its norm and its activation run in the reversible
    backward (through the recomputation's module call) with the gradients plain autograd hands
    them: the layer's output gradient is ``h^2`` times the next state's (it used to be handed
    the latter, unscaled), so a hook that clamps a gradient or reads it saw other values and
    gradients differed from plain autograd's."""
    out, seen = {}, {}
    for m in (False, mode):
        net = _net(m)
        log = seen.setdefault(m, [])
        net.layers[1].register_full_backward_hook(lambda mod, gi, go: _clamped(gi))
        net.layers[2].norm.register_full_backward_pre_hook(lambda mod, go: _clamped(go))
        net.layers[3].act.register_full_backward_hook(
            lambda mod, gi, go, log=log: log.append((gi[0].norm().item(), go[0].norm().item())))
        out[m] = _grads_and_stats(net, _x())[0]
    _assert_same(out[mode], out[False])
    assert len(seen[mode]) == len(seen[False]) == 1
    assert seen[mode][0] == pytest.approx(seen[False][0], rel=1e-12)


def _transition_hooks():
    """Hooks that change what a wavelet transition computes: ``(name, register(net))``."""
    from torch.nn.modules.module import register_module_forward_hook

    def scaled(mod, inp, o):
        return 1.5 * o

    def add_to_input(mod, inp, o):
        inp[0].add_(1)

    return [
        ("forward hook", lambda net: net.transitions[0].register_forward_hook(scaled)),
        ("pre-hook", lambda net: net.transitions[0].register_forward_pre_hook(lambda mod, inp: (1.2 * inp[0],))),
        ("in place", lambda net: net.transitions[0].register_forward_hook(lambda mod, inp, o: o.mul_(1.5))),
        ("input in place", lambda net: net.transitions[0].register_forward_hook(add_to_input)),
        ("global", lambda net: register_module_forward_hook(scaled)),
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wavelet", ["haar", "learnable"])
@pytest.mark.parametrize("case", range(5))
def test_hook_that_changes_a_wavelet_transition_is_refused(mode, wavelet, case):
    """The backward reconstructs a transition's input by the inverse transform (block mode
    differentiates the bare transform): a hook that changes its input or output made the
    gradients wrong by ~30% without a word. The forward pass now refuses it, naming the
    transition; plain autograd runs it."""
    what, register = _transition_hooks()[case]
    net = _net(mode, wavelet=wavelet)
    handle = register(net)
    try:
        x = _x().requires_grad_()
        with pytest.raises(RuntimeError, match=r"^transitions\.0 \((HaarDWT|LearnableWavelet)\): a hook changed "
                                               r"the input or output of this wavelet transition.*reversible=False"):
            net(x)
        net.reversible = False
        if "place" not in what:  # plain autograd refuses some changes in place itself
            net(x).sum().backward()
    finally:
        handle.remove()


@pytest.mark.parametrize("mode", MODES)
def test_hooks_that_change_nothing_on_wavelet_transitions_run(mode):
    """Hooks on transitions that change nothing run in the forward pass (once per call, like
    plain autograd) and gradients equal plain autograd's. A hook on an "up" transition does not
    run in any mode (it evaluates the wavelet's ``inverse``), but in ``net.inverse`` it runs and
    one that changes the output is refused there."""
    out, calls = {}, {}
    for m in (False, mode):
        net = _net(m, wavelet="learnable", wavelet_init="db2")
        seen = calls.setdefault(m, [])
        for t in net.transitions:
            t.register_forward_pre_hook(lambda mod, inp, seen=seen: seen.append(("pre", inp[0].shape)))
            t.register_forward_hook(lambda mod, inp, o, seen=seen: seen.append(("out", o.shape)))
        out[m] = _grads_and_stats(net, _x())[0]
    _assert_same(out[mode], out[False])
    assert calls[mode] == calls[False] and len(calls[False]) == 8  # 2 down transitions x 2 members
    net = _net(mode)
    net.transitions[3].register_forward_hook(lambda mod, inp, o: 2 * o)
    yp, yc = net.forward_pair(_x())
    with pytest.raises(RuntimeError, match=r"^transitions\.3 \(HaarDWT\): a hook changed"):
        net.inverse(yp.requires_grad_(), yc)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wavelet", ["haar", "learnable"])
def test_backward_hooks_on_wavelet_transitions_run(mode, wavelet):
    """Module backward hooks on a "down" transition (its own, or global ones on every module)
    run in the reversible backward as in plain autograd, with the same gradients: the backward
    differentiated the bare transform (or took its adjoint), so they never ran and a hook that
    clamps a gradient was ignored (gradients off by orders of magnitude)."""
    from torch.nn.modules.module import register_module_full_backward_hook

    out, seen = {}, {}
    for m in (False, mode):
        net = _net(m, wavelet=wavelet, wavelet_init="db2")
        log = seen.setdefault(m, [])
        net.transitions[0].register_full_backward_hook(lambda mod, gi, go: _clamped(gi))
        net.transitions[1].register_full_backward_pre_hook(
            lambda mod, go, log=log: log.append(round(go[0].norm().item(), 9)))
        out[m] = _grads_and_stats(net, _x())[0]
        with _global_hooks((register_module_full_backward_hook, lambda mod, gi, go: _clamped(gi))):
            out[m, "global"] = _grads_and_stats(net, _x())[0]
    for key in (mode, (mode, "global")):
        _assert_same(out[key], out[False if key == mode else (False, "global")])
    assert sorted(seen[mode]) == sorted(seen[False]) and len(seen[False]) == 4  # 2 members x 2 passes


@pytest.mark.parametrize("mode", MODES)
def test_legacy_spectral_norm_is_refused_and_its_parametrization_is_right(mode):
    """``torch.nn.utils.spectral_norm`` (a forward pre-hook) runs a power iteration on every
    call in training mode, the recomputation in the backward too: gradients were ~30% off
    plain autograd's. The reversible forward refuses it, naming the layer; plain autograd
    runs it; ``parametrizations.spectral_norm`` gives plain autograd's gradients."""
    from torch.nn.utils import parametrizations, spectral_norm

    net = _net(mode)
    spectral_norm(net.layers[2])
    x = _x().requires_grad_()
    with pytest.raises(RuntimeError, match=r"^layers\.2 \(SymmetricLayer\): torch\.nn\.utils\.spectral_norm "
                                           r".*parametrizations\.spectral_norm, or reversible=False"):
        net(x)
    net.reversible = False
    net(x).sum().backward()
    out = {}
    for m in (False, mode):
        net = _net(m)
        parametrizations.spectral_norm(net.layers[2])
        out[m] = _grads_and_stats(net, _x())[0]
    _assert_same(out[mode], out[False])


class _TanhShift(torch.nn.Module):
    """``f(y) = tanh(y) + b`` with ``b`` shaped like one sample ``(1, C, *S)``: with a batch
    of one, autograd hands back the incoming gradient itself as the gradient w.r.t. ``b``."""

    def __init__(self, shape) -> None:
        super().__init__()
        self.b = torch.nn.Parameter(torch.randn(shape, dtype=torch.float64))

    def forward(self, y):
        return torch.tanh(y) + self.b


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("spatial", [(8,), (4, 4)])
def test_custom_step_whose_parameter_gradient_is_the_incoming_gradient(mode, batch, spatial):
    """Custom steps whose parameter gradient aliases the incoming gradient (1D states are
    computed in the caller's layout, so that is the caller's tensor): gradients equal plain
    autograd's and the gradients the caller hands in are unchanged."""
    from fhcnn.reversible import LeapfrogStep, run_steps

    torch.manual_seed(0)
    shape = (3, *spatial)
    fs = [_TanhShift((1, *shape)), _TanhShift((1, *shape))]
    steps = [LeapfrogStep(fs[0], 0.25), LeapfrogStep(fs[1], 0.25, flip=True), LeapfrogStep(fs[0], 0.5)]
    gen = torch.Generator().manual_seed(1)
    p0, c0, gp, gc = (torch.randn(batch, *shape, dtype=torch.float64, generator=gen) for _ in range(4))
    before = _digest(gp, gc)
    params = [f.b for f in fs]
    out = {}
    for m in (False, mode):
        p, c = p0.clone().requires_grad_(), c0.clone().requires_grad_()
        yp, yc = run_steps(steps, p, c, m)
        out[m] = dict(zip("pcab", torch.autograd.grad((yp, yc), [p, c, *params], (gp, gc))))
        assert _digest(gp, gc) == before, m
    _assert_same(out[mode], out[False], 1e-12)


# ------------------------------------------------------------------------------------------
# A generated family: random compositions of the uses above, against plain autograd.

class _ConvBN(torch.nn.Module):
    """A custom step module without ``neg_forward`` (recomputed through ``functional_call``),
    with a batch norm of its own: ``f(y) = tanh(BN(K y))``, ``K`` a 1x1 convolution."""

    def __init__(self, channels, dim) -> None:
        super().__init__()
        conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d}[dim]
        bn = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d}[dim]
        # no bias: before a batch norm its gradient is zero up to rounding
        self.conv, self.bn = conv(channels, channels, 1, bias=False), bn(channels)

    def forward(self, y):
        return torch.tanh(self.bn(self.conv(y)))


class _Composite(torch.nn.Module):
    """A network's steps with custom leapfrog steps inserted where the state has the input's
    shape (before the first and after the last step), run by ``run_steps``."""

    def __init__(self, net, customs, where, mode) -> None:
        super().__init__()
        self.net, self.customs, self.where, self.mode = net, torch.nn.ModuleList(customs), where, mode

    def forward(self, x):
        from fhcnn.reversible import LeapfrogStep, run_steps

        steps = self.net._steps()
        before = [LeapfrogStep(f, h2, flip) for f, (at_end, h2, flip) in zip(self.customs, self.where)
                  if not at_end]
        after = [LeapfrogStep(f, h2, flip) for f, (at_end, h2, flip) in zip(self.customs, self.where)
                 if at_end]
        return run_steps(before + steps + after, x, x, self.mode)


def _build_composite(case, mode):
    from torch.nn.utils import parametrizations, parametrize

    torch.manual_seed(case["seed"])
    c, dim = 2, case["dim"]
    net = HyperbolicNetwork(c, case["units"], dim=dim, hidden=4, norm=case["norm"], wavelet=case["wavelet"],
                            wavelet_init="db2", h=0.5)
    shape = (1, c, *[8] * dim)
    customs = [(_TanhShift(shape) if kind == "shift" else _ConvBN(c, dim)) for kind in case["customs"]]
    model = _Composite(net, customs, case["where"], mode).double()
    for i, (module, name) in enumerate(case["parametrized"]):
        target = [*net.layers, *(m.conv for m in customs if isinstance(m, _ConvBN))]
        owner = target[module % len(target)]
        if parametrize.is_parametrized(owner, "weight"):
            continue
        torch.manual_seed(case["seed"] + i)
        if name == "weight_norm":
            parametrizations.weight_norm(owner, "weight")
        elif name == "spectral_norm":
            parametrizations.spectral_norm(owner, "weight")
        else:
            parametrize.register_parametrization(owner, "weight", _Scaled())
    with torch.no_grad():  # running statistics unlike any batch's
        model(torch.randn(3, c, *[8] * dim, dtype=torch.float64) * 2 + 1)
    model.train(case["training"])
    return model


def _run_case(case, mode):
    """Gradients and buffers after the case's forward, switch and backward passes; checks
    that the gradients handed in stay unchanged."""
    model = _build_composite(case, mode)
    gen = torch.Generator().manual_seed(case["seed"])
    shape = (case["batch"], 2, *[8] * case["dim"])
    x = torch.randn(shape, dtype=torch.float64, generator=gen).requires_grad_()
    gp, gc = (torch.randn(shape, dtype=torch.float64, generator=gen) for _ in range(2))
    digest = _digest(gp, gc)
    leaves = dict(model.named_parameters())
    if case["functional_call"]:
        leaves = {n: (p.detach() + 0.2 * torch.randn(p.shape, dtype=p.dtype, generator=gen)).requires_grad_()
                  for n, p in leaves.items()}
        yp, yc = torch.func.functional_call(model, leaves, (x,))
    else:
        yp, yc = model(x)
    if case["switch"]:
        model.train(not case["training"])
    for k in range(case["backwards"]):
        torch.autograd.backward((yp, yc), (gp, gc), retain_graph=k < case["backwards"] - 1)
    assert _digest(gp, gc) == digest
    grads = {"x": x.grad, **{n: t.grad for n, t in leaves.items()}}
    return grads, {n: b.clone() for n, b in model.named_buffers()}, {"yp": yp, "yc": yc}


_UNITS = [[(1, "down"), (1, "up")], [(2, None)], [(1, "down"), (1, "up"), (1, None)]]


@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          phases=[Phase.generate],  # a failure names every draw; shrinking would take minutes
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_compositions_equal_plain_autograd(data):
    """Random compositions of a forward under ``functional_call``, parametrized weights
    (weight norm, spectral norm, a learnable parametrization), ``train``/``eval`` switches
    between forward and backward, several backward passes (``retain_graph``) and custom steps
    (one whose parameter gradient is the incoming gradient, one with a batch norm of its own)
    in 1D and 2D: reversible and block gradients, running statistics (and spectral norm's
    vectors) equal plain autograd's, and the gradients handed in are never modified."""
    n_custom = data.draw(st.integers(0, 2), label="custom steps")
    case = {
        "seed": data.draw(st.integers(0, 2**16), label="seed"),
        "dim": data.draw(st.sampled_from([1, 2]), label="dim"),
        "units": data.draw(st.sampled_from(_UNITS), label="units"),
        "norm": data.draw(st.sampled_from(["batch", "group", "none"]), label="norm"),
        "wavelet": data.draw(st.sampled_from(["learnable", "haar"]), label="wavelet"),
        "batch": data.draw(st.sampled_from([1, 2]), label="batch"),
        "customs": data.draw(st.lists(st.sampled_from(["shift", "convbn"]), min_size=n_custom,
                                      max_size=n_custom), label="custom modules"),
        "where": data.draw(st.lists(st.tuples(st.booleans(), st.sampled_from([0.25, 0.5]), st.booleans()),
                                    min_size=n_custom, max_size=n_custom), label="(at end, h2, flip)"),
        "parametrized": data.draw(st.lists(st.tuples(st.integers(0, 7), st.sampled_from(
            ["weight_norm", "spectral_norm", "custom"])), max_size=2, unique_by=lambda t: t[0]),
            label="parametrized weights"),
        "functional_call": data.draw(st.booleans(), label="functional_call"),
        "training": data.draw(st.booleans(), label="forward in training mode"),
        "switch": data.draw(st.booleans(), label="train/eval switch before backward"),
        "backwards": data.draw(st.integers(1, 3), label="backward passes"),
        "mode": data.draw(st.sampled_from(MODES), label="mode"),
    }
    ref = _run_case(case, False)
    got = _run_case(case, case["mode"])
    for g, r in zip(got, ref):
        _assert_same(g, r)


# ------------------------------------------------------------------------------------------
# Frozen tensors: parameters that need no gradient are still the forward pass's tensors.

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("frozen", ["some", "all"])
def test_functional_call_with_tensors_that_need_no_gradient(mode, frozen):
    """``functional_call`` with swapped tensors of which some (or all) do not require grad
    (a frozen part of a model, ``torch.func``-style detached tensors): the backward used the
    module's own tensors for those (restored when ``functional_call`` returned), so the
    gradients of the input and of the trained tensors were off by 30-85%. They equal plain
    autograd's now."""
    out = {}
    for m in (False, mode):
        net = _net(m, wavelet="learnable", wavelet_init="db2")
        g = torch.Generator().manual_seed(11)
        swapped = {n: p.detach() + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype)
                   for n, p in net.named_parameters()}
        trained = [n for i, n in enumerate(swapped) if frozen == "some" and i % 2 == 0]
        for n in trained:
            swapped[n].requires_grad_()
        x = _x().requires_grad_()
        loss = _loss(torch.func.functional_call(net, swapped, (x,)))
        out[m] = dict(zip(["x", *trained], torch.autograd.grad(loss, [x, *(swapped[n] for n in trained)])))
    _assert_same(out[mode], out[False])


@pytest.mark.parametrize("mode", MODES)
def test_frozen_spectral_norm_weight_is_not_computed_again(mode):
    """A frozen layer whose weight is spectrally normalized (training mode: one power iteration
    per forward): the backward read ``layer.weight`` again, which ran the power iteration once
    more (its vectors updated twice a step, the recomputation with another sigma). The
    vectors and gradients equal plain autograd's."""
    from torch.nn.utils import parametrizations

    out = {}
    for m in (False, mode):
        net = _net(m)
        torch.manual_seed(7)
        parametrizations.spectral_norm(net.layers[1], "weight")
        net.layers[1].requires_grad_(False)
        out[m] = _grads_and_stats(net, _x())
    for got, ref in zip(out[mode], out[False]):
        _assert_same(got, ref)


# ------------------------------------------------------------------------------------------
# Running statistics: an eval-mode batch norm is recomputed with the statistics it used.

def _bn_net(mode, split):
    """A batch-norm network with running statistics unlike any batch's, in eval mode;
    ``split``: with the split batch norm of :mod:`fhcnn.spatial` (one slab)."""
    from fhcnn.spatial import SpatialSplit, split_module

    torch.manual_seed(0)
    net = HyperbolicNetwork(4, UNITS, dim=2, norm="batch", wavelet="learnable", reversible=mode).double()
    if split:
        split_module(net, SpatialSplit(2, (0,), (1,)))
    with torch.no_grad():
        net(_x(3) * 2 + 1)
    return net.eval()


def _grads(net, x, loss):
    """``loss.backward()``; the gradients of ``x`` and of every parameter."""
    loss.backward()
    return {"x": x.grad, **{n: p.grad for n, p in net.named_parameters()}}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("split", [False, True])
def test_functional_call_with_swapped_running_statistics(mode, split):
    """``functional_call(net, (params, buffers))`` with other running statistics, in eval mode
    (the ``torch.func`` way of evaluating a model with given state): the backward normalized
    with the module's own statistics, so gradients were 5-70% off plain autograd's."""
    out = {}
    for m in (False, mode):
        net = _bn_net(m, split)
        buffers = {n: b * 1.7 + 0.3 if b.is_floating_point() else b for n, b in net.named_buffers()}
        x = _x().requires_grad_()
        y = torch.func.functional_call(net, (dict(net.named_parameters()), buffers), (x,))
        out[m] = _grads(net, x, _loss(y))
    _assert_same(out[mode], out[False])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("split", [False, True])
def test_running_statistics_updated_between_forward_and_backward(mode, split):
    """An eval-mode forward, then a training-mode forward (which updates the running
    statistics in place), then the first forward's backward: the recomputation normalized with
    the updated statistics (the input's gradient 4% off). It now uses those of its forward pass: the
    gradients are those of a backward right after it. (Plain autograd reads the updated
    statistics too, without a word: 27% off.)"""
    x0 = _x()
    net = _bn_net(False, split)
    x = x0.clone().requires_grad_()
    ref = _grads(net, x, _loss(net(x)))
    net = _bn_net(mode, split)
    x = x0.clone().requires_grad_()
    loss = _loss(net(x))
    net.train()
    with torch.no_grad():
        net(_x(3) * 3)
    _assert_same(_grads(net, x, loss), ref)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("which", ["input", "parameter"])
def test_inference_tensor_is_refused_naming_it(mode, which):
    """An input (or a parameter) made under ``torch.inference_mode``, then a forward pass with
    gradients: plain autograd refuses to save it; the reversible forward failed with
    'Inference tensors do not track version counter', which names neither the tensor nor the
    fix. The error now names both. A forward under ``inference_mode`` or ``no_grad`` first
    changes nothing for the gradient-enabled one after it."""
    net = _net(mode, norm="batch")
    with torch.inference_mode():
        x = _x()
        net(x)
    if which == "parameter":
        with torch.inference_mode():
            net.layers[1].weight = torch.nn.Parameter(net.layers[1].weight.clone())
        x = x.clone()
    with pytest.raises(RuntimeError, match=r"^(the input|layers\.1\.weight) is an inference tensor .*clone it"):
        net(x)
    with torch.no_grad():
        net(_x())
    out = {}
    for m in (False, mode):
        net = _net(m, norm="batch")
        with torch.inference_mode():
            net(_x(3))
        with torch.no_grad():
            net(_x(3) * 2)
        x = _x().requires_grad_()
        out[m] = _grads(net, x, _loss(net(x)))
    _assert_same(out[mode], out[False])


def _checkpointed(net, x, reentrant):
    import torch.utils.checkpoint as cp

    return cp.checkpoint(net, x, use_reentrant=reentrant)


_WRAPPED_USES = {
    "checkpoint": lambda net, x: _loss(_checkpointed(net, x, False)),
    "checkpoint, reentrant": lambda net, x: _loss(_checkpointed(net, x, True)),
    "anomaly detection": lambda net, x: _loss(net(x)),
    "applied twice, output used twice": lambda net, x: _loss(net(x)) + _loss(net(net(x) + x)) + net(x).sum(),
    "a view, non-contiguous": lambda net, x: _loss(net(torch.cat([x, x], 3)[..., ::2].transpose(2, 3))),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("use", list(_WRAPPED_USES))
def test_wrapping_uses_equal_plain_autograd(mode, use):
    """``torch.utils.checkpoint`` around the network, anomaly detection, one network applied
    twice in one graph (weights tied, its output used twice and as its input) and a
    non-contiguous view as input: input and parameter gradients equal plain autograd's."""
    out = {}
    for m in (False, mode):
        net = _net(m, wavelet="learnable", wavelet_init="db2")
        x = _x().requires_grad_()
        with torch.autograd.detect_anomaly() if use == "anomaly detection" else contextlib.nullcontext():
            out[m] = _grads(net, x, _WRAPPED_USES[use](net, x))
    _assert_same(out[mode], out[False])


@pytest.mark.parametrize("mode", MODES)
def test_deepcopy_replicas_equal_plain_autograd(mode):
    """``copy.deepcopy`` replicas (as ``DataParallel`` makes) each get their own gradients."""
    import copy

    out = {}
    for m in (False, mode):
        net = _net(m, wavelet="learnable")
        replica = copy.deepcopy(net)
        x = _x().requires_grad_()
        (_loss(net(x[:1])) + 2 * _loss(replica(x[1:]))).backward()
        out[m] = {"x": x.grad, **{n: p.grad for n, p in net.named_parameters()},
                  **{"replica." + n: p.grad for n, p in replica.named_parameters()}}
    _assert_same(out[mode], out[False])


@pytest.mark.parametrize("mode", MODES)
def test_functorch_transforms_and_forward_ad_are_refused(mode):
    """``torch.func`` transforms (``grad``, ``vmap``, ``jvp``, ``jacrev``) and forward-mode AD
    raise (PyTorch's errors: the reversible Function defines no ``setup_context`` or ``jvp``)
    instead of returning a wrong derivative."""
    import torch.autograd.forward_ad as fwad

    net = _net(mode)
    params = {n: p.detach() for n, p in net.named_parameters()}
    with pytest.raises(RuntimeError, match="setup_context"):
        torch.func.grad(lambda ps, x: _loss(torch.func.functional_call(net, ps, (x,))))(params, _x())
    with pytest.raises(RuntimeError, match="setup_context"):
        torch.func.jvp(net, (_x(),), (_x(),))
    with fwad.dual_level(), pytest.raises(NotImplementedError, match="jvp"):
        net(fwad.make_dual(_x(), _x()))


# ------------------------------------------------------------------------------------------
# Buffers of custom step modules (neither batch-norm statistics nor parametrizations).

class _RunningShift(torch.nn.Module):
    """``f(y) = tanh(K y + s)`` with a buffer ``s`` that the forward pass in training mode moves
    after reading it (half-way to the batch mean of ``K y``, a custom norm's running average);
    ``big`` is a constant buffer of a sample's size it multiplies by (a fixed mask)."""

    def __init__(self, spatial=(8, 8)) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.register_buffer("shift", torch.zeros(1, 4, 1, 1))
        self.register_buffer("big", 1 + torch.rand(1, 4, *spatial, generator=torch.Generator().manual_seed(7)))

    def forward(self, y):
        z = self.conv(y)
        out = torch.tanh(z * self.big + self.shift)
        if self.training:
            with torch.no_grad():
                self.shift.mul_(0.5).add_(z.mean((0, 2, 3), keepdim=True), alpha=0.5)
        return out


def _running_shift_run(mode, between=None, backwards=1, training=True):
    """Three steps sharing one ``_RunningShift`` (float64) in training mode or not; gradients
    of ``x`` and ``K``, and the buffer afterwards."""
    from fhcnn.reversible import LeapfrogStep, run_steps

    torch.manual_seed(0)
    f = _RunningShift().double().train(training)
    steps = [LeapfrogStep(f, 0.5, name=f"s{i}") for i in range(3)]
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    yp, yc = run_steps(steps, x, x, mode)
    loss = _loss(yc) + (yp * yc).sum()
    if between is not None:
        between(f)
    for k in range(backwards):
        loss.backward(retain_graph=k + 1 < backwards)
    return {"x": x.grad, "w": f.conv.weight.grad, "shift": f.shift.clone()}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backwards", [1, 2])
def test_custom_step_buffer_its_forward_changes(mode, backwards):
    """A custom step module whose forward pass reads a buffer and then changes it (a running
    average): the backward recomputes each step with the value that step's forward read, so the
    gradients equal plain autograd's (they were 6 % off: the recomputation read the moved
    values), and the buffer is moved once per forward pass, however many backward passes
    follow (each recomputation moved it again)."""
    ref = _running_shift_run(False, backwards=backwards)
    got = _running_shift_run(mode, backwards=backwards)
    _assert_same(got, ref, 1e-12)
    assert not torch.equal(ref["shift"], torch.zeros_like(ref["shift"]))  # the forward did move it


@pytest.mark.parametrize("mode", MODES)
def test_custom_step_buffer_reassigned_between_forward_and_backward(mode):
    """Assigning another tensor to a buffer after the forward pass (``module.big = ...``, as
    ``load_state_dict`` of another object would): the backward uses the tensor the forward
    read, as plain autograd does."""

    def reassign(f):
        f.big = torch.full_like(f.big, 3.0)
        f.shift = torch.full_like(f.shift, -1.0)

    ref = _running_shift_run(False, between=reassign)
    got = _running_shift_run(mode, between=reassign)
    _assert_same(got, ref, 1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name, training", [("big", True), ("shift", False)])
def test_custom_step_buffer_modified_in_place_before_backward_raises(mode, name, training):
    """A buffer the forward pass read and left alone, modified in place between forward and
    backward (``module.big.fill_(3)``; the running shift in eval mode): the values the forward
    pass read are gone and the backward would recompute the steps with others (gradients 35-180 %
    off, without a word): refused naming the buffer and the step."""

    def fill(f):
        with torch.no_grad():
            getattr(f, name).fill_(3.0)

    with pytest.raises(RuntimeError, match=rf"^buffer '{name}' of s2 \(_RunningShift\) was modified in place"):
        _running_shift_run(mode, between=fill, training=training)


@pytest.mark.parametrize("mode", MODES)
def test_custom_step_buffer_its_forward_changed_modified_before_backward(mode):
    """A buffer the forward pass changed is kept as it was before each step: modifying it in
    place afterwards changes no gradient (as in plain autograd, where ``tanh(z + s)`` keeps no
    ``s``)."""

    def fill(f):
        with torch.no_grad():
            f.shift.fill_(3.0)

    _assert_same(_running_shift_run(mode, between=fill), _running_shift_run(False, between=fill), 1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_constant_buffers_of_a_custom_step_keep_no_copy(mode):
    """A buffer the forward pass leaves alone is read where it is: the reversible forward keeps
    no copy of it (the bytes kept for backward are the same with a sample-sized constant buffer
    as with a one-number one), and a buffer it changes is kept as one copy a step."""
    from fhcnn.reversible import LeapfrogStep, run_steps

    def kept(spatial, training):
        torch.manual_seed(0)
        f = _RunningShift(spatial).double().train(training)
        steps = [LeapfrogStep(f, 0.5, name=f"s{i}") for i in range(3)]
        x = torch.randn(2, 4, 8, 8, dtype=torch.float64).requires_grad_()
        return saved_tensor_bytes(lambda: run_steps(steps, x, x, mode))[0]

    assert kept((8, 8), False) == kept((1, 1), False)
    assert kept((8, 8), True) == kept((1, 1), True) == kept((1, 1), False) + 3 * 4 * 8  # 3 copies of shift


class _Signs(torch.nn.Module):
    """An orthogonal transition without a functional form: ``x * s`` with a buffer ``s`` of
    signs, its own inverse."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("s", torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64).view(1, 4, 1, 1))

    def forward(self, x):
        return x * self.s

    def inverse(self, x):
        return x * self.s


@pytest.mark.parametrize("mode", MODES)
def test_custom_transition_buffer_modified_in_place_before_backward_raises(mode):
    """The same for a wavelet transition recomputed through ``functional_call``: unchanged, its
    gradients equal plain autograd's; its buffer flipped in place before backward is refused."""
    from fhcnn.reversible import LeapfrogStep, TransitionStep, run_steps

    def run(m, flip):
        torch.manual_seed(0)
        f, w = _RunningShift().double().eval(), _Signs()
        steps = [LeapfrogStep(f, 0.5), TransitionStep(w, name="transitions.0"), LeapfrogStep(f, 0.5)]
        x = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_()
        yp, yc = run_steps(steps, x, x, m)
        if flip:
            w.s.neg_()
        _loss(yc).backward()
        return {"x": x.grad, "w": f.conv.weight.grad}

    _assert_same(run(mode, False), run(False, False), 1e-12)
    with pytest.raises(RuntimeError, match=r"^buffer 's' of transitions.0 \(_Signs\) was modified in place"):
        run(mode, True)
