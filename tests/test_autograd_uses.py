"""Reversible gradients under the less common uses of autograd: each is right, or a clear error.

Parameter swaps (``torch.func.functional_call``), double backward, in-place changes between
forward and backward, ``retain_graph``, several threads, ``torch.compile``.
"""

from __future__ import annotations

import threading

import pytest
import torch

from fhcnn import HyperbolicNetwork
from fhcnn.memory import saved_tensor_bytes

from .conftest import rel_err

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
def test_output_changed_in_place_before_backward_raises(mode):
    net = _net(mode)
    yp, yc = net.forward_pair(_x())
    loss = _loss(yc) + yp.sum()
    with torch.no_grad():
        yp.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


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
