"""Memory-free gradients (reversible and block modes) equal plain autograd."""

from __future__ import annotations

import pytest
import torch

from fhcnn import HyperbolicNetwork
from tests.conftest import rel_err, taylor_slopes

UNITS_2D = [(3, "down"), (3, "down"), (2, None), (3, "up"), (3, "up")]
UNITS_3D = [(2, "down"), (2, "down"), (2, "up"), (2, "up")]


def _net(mode, dim=2, dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    units = UNITS_2D if dim == 2 else UNITS_3D
    return HyperbolicNetwork(4, units, dim=dim, reversible=mode, **kw).to(dtype)


def _loss(yp, yc):
    """A loss that no orthogonal map of the output leaves invariant (fixed random weights)."""
    g = torch.Generator().manual_seed(7)
    w1, w2, w3 = (torch.randn(yc.shape, generator=g, dtype=yc.dtype).to(yc.device) for _ in range(3))
    return (w1 * yc).sum() + 0.5 * (w2.abs() * yc.square()).sum() + (w3 * yp * yc).sum()


def _grads(net, x, loss_fn=_loss):
    x = x.clone().requires_grad_(True)
    yp, yc = net.forward_pair(x)
    loss = loss_fn(yp, yc)
    net.zero_grad()
    loss.backward()
    return {"input": x.grad, **{n: p.grad for n, p in net.named_parameters()}}


def _input(dim, dtype):
    return torch.randn(2, 4, *([16, 16] if dim == 2 else [8, 8, 8]), dtype=dtype)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("norm", ["none", "batch", "group", "instance"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-9)])
def test_reversible_and_block_equal_plain_autograd(dim, norm, dtype, tol):
    x = _input(dim, dtype)
    ref = _grads(_net(False, dim, dtype, norm=norm), x)
    for mode in (True, "block"):
        got = _grads(_net(mode, dim, dtype, norm=norm), x)
        assert got.keys() == ref.keys()
        for name in ref:
            assert got[name] is not None, name
            assert rel_err(got[name], ref[name]) <= tol, (mode, name, rel_err(got[name], ref[name]))


@pytest.mark.parametrize("dim", [2, 3])
def test_learnable_wavelet_gradients(dim):
    """fp64: equal to plain autograd to 1e-9. fp32: every gradient, the wavelet angles included,
    is within 1e-4 of the fp64 truth, or no further from it than 3x plain fp32 autograd is
    (the angle gradients sum many cancelling terms, so fp32 plain autograd itself is only
    accurate to ~1e-5..1e-4 there)."""
    x = _input(dim, torch.float64)
    kw = {"wavelet": "learnable", "wavelet_init": "db2"}
    truth = _grads(_net(False, dim, torch.float64, **kw), x)
    for mode in (True, "block"):
        got = _grads(_net(mode, dim, torch.float64, **kw), x)
        for name in truth:
            assert rel_err(got[name], truth[name]) <= 1e-9, (mode, name)
    plain32 = _grads(_net(False, dim, torch.float32, **kw), x.float())
    for mode in (True, "block"):
        got = _grads(_net(mode, dim, torch.float32, **kw), x.float())
        for name in truth:
            err = rel_err(got[name], truth[name])
            assert err <= max(1e-4, 3 * rel_err(plain32[name], truth[name])), (mode, name, err)
        assert got["transitions.0.theta"].abs().sum() > 0


def test_gradcheck_tiny_network():
    net = HyperbolicNetwork(2, [(2, "down"), (1, "up")], dim=2, reversible=True, norm="group").double()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: net.forward_pair(t), (x,))
    names, params = zip(*[(n, p.detach().clone().requires_grad_()) for n, p in net.named_parameters()])

    def by_params(*ps):
        return torch.func.functional_call(net, dict(zip(names, ps)), (x.detach(),))
    assert torch.autograd.gradcheck(by_params, params, fast_mode=True)
    y = net.forward_pair(x.detach())
    yp, yc = (t.detach().requires_grad_() for t in y)
    assert torch.autograd.gradcheck(lambda a, b: net.inverse(a, b, return_pair=True), (yp, yc))


def test_taylor_slopes_in_reversible_mode():
    net = _net(True, 2, torch.float64, norm="group", activation="tanh")  # smooth: slope 2 exactly
    x = _input(2, torch.float64)
    target = torch.randn(2, 4, 16, 16, dtype=torch.float64)
    w = net.layers[4].weight
    def loss():
        return ((net(x) - target) ** 2).sum().item()

    ((net(x) - target) ** 2).sum().backward()
    g, w0, dw = w.grad.clone(), w.detach().clone(), torch.randn_like(w)

    def f(wt):
        with torch.no_grad():
            w.copy_(wt)
        return loss()
    slopes = taylor_slopes(f, w0, dw, g, [1e-2 / 2**k for k in range(4)])
    assert all(1.8 < s < 2.2 for s in slopes), slopes


def test_inverse_has_memory_free_gradients_equal_to_plain():
    torch.manual_seed(1)
    y = [torch.randn(2, 4, 16, 16, dtype=torch.float64) for _ in range(2)]
    out = {}
    for mode in (False, True, "block"):
        net = _net(mode, 2, torch.float64)
        a, b = (t.clone().requires_grad_() for t in y)
        _loss(*net.inverse(a, b, return_pair=True)).backward()
        out[mode] = [a.grad, b.grad] + [p.grad for p in net.parameters()]
    for mode in (True, "block"):
        for got, ref in zip(out[mode], out[False]):
            assert rel_err(got, ref) < 1e-9


def test_batchnorm_running_stats_identical_after_one_step_in_all_modes():
    x = _input(2, torch.float32)
    stats = {}
    for mode in (False, True, "block"):
        net = _net(mode, norm="batch")
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        net(x).square().mean().backward()
        opt.step()
        bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert all(bn.num_batches_tracked.item() == 1 for bn in bns)
        stats[mode] = torch.cat([torch.cat([bn.running_mean, bn.running_var]) for bn in bns])
    assert torch.equal(stats[True], stats[False]) and torch.equal(stats["block"], stats[False])


def test_parameters_get_gradients_through_normal_autograd_path():
    net = _net(True)
    seen = []
    net.layers[0].weight.register_hook(lambda g: seen.append(g.norm().item()))
    x = _input(2, torch.float32)
    net(x).square().mean().backward()
    assert len(seen) == 1 and seen[0] > 0
    total = torch.nn.utils.clip_grad_norm_(net.parameters(), 1e-3)
    assert total > 1e-3
    assert torch.nn.utils.get_total_norm([p.grad for p in net.parameters()]) <= 1e-3 * 1.0001
    # input that does not need a gradient, parameters that do
    net.zero_grad()
    net(x).sum().backward()
    assert net.layers[-1].weight.grad is not None
    # frozen parameters: no gradient, no error
    for p in net.layers[0].parameters():
        p.requires_grad_(False)
    net.zero_grad()
    net(x.requires_grad_()).sum().backward()
    assert net.layers[0].weight.grad is None and x.grad is not None


def test_autocast_bfloat16_cpu():
    x = _input(2, torch.float32)
    grads = {}
    for mode in (False, True):
        net = _net(mode)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x)
        assert y.dtype == torch.float32  # the state stays float32; f runs in bfloat16
        y.square().mean().backward()
        grads[mode] = torch.cat([p.grad.flatten() for p in net.parameters()])
    assert torch.isfinite(grads[True]).all()
    assert rel_err(grads[True], grads[False]) < 0.05  # bfloat16 has 3 significant digits


def test_no_graph_when_nothing_needs_gradients():
    net = _net(True)
    for p in net.parameters():
        p.requires_grad_(False)
    y = net(_input(2, torch.float32))
    assert y.grad_fn is None


@pytest.mark.parametrize("mode", [True, "block"])
def test_f_evaluated_once_per_layer_in_backward(mode, monkeypatch):
    """Backward evaluates each layer's f once (reconstruction and local gradient share it)."""
    from fhcnn.layers import SymmetricLayer

    net = _net(mode)
    calls = []
    original = SymmetricLayer.neg_forward

    def counting(self, y, params=None, modes=None):
        calls.append(params is not None)
        return original(self, y, params, modes)
    monkeypatch.setattr(SymmetricLayer, "neg_forward", counting)
    loss = net(_input(2, torch.float32)).square().sum()
    assert calls == [False] * net.depth  # forward: once per layer, with the module's parameters
    loss.backward()
    assert calls[net.depth:] == [True] * net.depth  # backward: once per layer, captured tensors
