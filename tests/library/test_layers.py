"""The symmetric layer f(Y) = -K^T sigma(N(K Y + b))."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fhcnn.layers import SymmetricLayer, conv, frozen_norm_stats
from tests.conftest import rel_err


@pytest.mark.parametrize("dim", [2, 3])
def test_adjoint_conv_equals_conv_transpose_and_is_the_adjoint(dim):
    layer = SymmetricLayer(5, 7, dim=dim).double()
    ref = SymmetricLayer(5, 7, dim=dim, adjoint="conv_transpose").double()
    ref.load_state_dict(layer.state_dict())
    size = (6,) * dim
    x = torch.randn(2, 5, *size, dtype=torch.float64)
    z = torch.randn(2, 7, *size, dtype=torch.float64)
    assert rel_err(layer.conv_adjoint(z), ref.conv_adjoint(z)) < 1e-13
    kx = layer.conv(x) - layer.bias.view(1, -1, *[1] * dim) if layer.bias is not None else layer.conv(x)
    assert torch.isclose((kx * z).sum(), (x * layer.conv_adjoint(z)).sum(), rtol=1e-12)
    assert rel_err(layer(x), ref(x)) < 1e-13


def test_jacobian_is_symmetric_negative_semidefinite_without_norm():
    layer = SymmetricLayer(3, 4, dim=2, norm="none").double()
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda y: layer(y).reshape(-1), x).reshape(75, 75)
    assert torch.allclose(J, J.T, atol=1e-12)
    assert torch.linalg.eigvalsh(J).max() < 1e-10


@pytest.mark.parametrize("norm", ["none", "batch", "group", "instance"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "silu", "leaky_relu"])
def test_options_shapes(norm, activation):
    layer = SymmetricLayer(6, 12, dim=3, norm=norm, activation=activation)
    x = torch.randn(2, 6, 4, 4, 4)
    assert layer(x).shape == x.shape
    assert "norm=" in repr(layer)


def test_frozen_norm_stats_leaves_running_statistics_untouched():
    layer = SymmetricLayer(3, 4, dim=2, norm="batch")
    x = torch.randn(4, 3, 6, 6)
    bn = layer.norm
    with frozen_norm_stats(layer):
        y_frozen = layer(x)
    assert torch.equal(bn.running_mean, torch.zeros(4)) and bn.num_batches_tracked.item() == 0
    y = layer(x)
    assert torch.allclose(y, y_frozen)  # same batch statistics are used
    assert bn.num_batches_tracked.item() == 1 and bn.track_running_stats


def test_bad_options():
    with pytest.raises(ValueError, match="norm"):
        SymmetricLayer(3, norm="layer")
    with pytest.raises(ValueError, match="activation"):
        SymmetricLayer(3, activation="swish2")
    with pytest.raises(ValueError, match="kernel_size"):
        SymmetricLayer(3, kernel_size=2)


@pytest.mark.parametrize("scale", [float("inf"), float("nan"), -1.0, "1", True])
def test_bad_init_scale_is_refused(scale):
    """``init_scale=inf`` gave infinite weights and a NaN network without an error; a negative
    or NaN scale failed inside ``normal_`` ("normal expects std >= 0.0")."""
    with pytest.raises(ValueError, match="init_scale must be a finite number >= 0"):
        SymmetricLayer(3, init_scale=scale)


# one 3D sample on the CPU: `conv` runs it as two halves (a batch of 2, PyTorch's oneDNN kernel)
_ONE_SAMPLE_CASES = [((16, 64, 64), 6, 8, 1),     # the video net's full resolution
                     ((8, 32, 32), 48, 16, 1),
                     ((5, 7, 3), 4, 3, 1),        # odd lengths: the second half gets a dummy output
                     ((3, 4, 9), 2, 2, (0, 1, 1)),  # no padding on one axis (a split layer's halo)
                     ((6, 6, 6), 3, 2, 0),
                     ((1, 1, 1), 3, 2, 1)]        # one output: nothing to split


@pytest.mark.parametrize("size,cin,cout,padding", _ONE_SAMPLE_CASES)
def test_conv_of_one_sample_equals_the_direct_convolution(size, cin, cout, padding):
    x = torch.randn(1, cin, *size, requires_grad=True)
    w = torch.randn(cout, cin, 3, 3, 3, requires_grad=True)
    b = torch.randn(cout, requires_grad=True)
    ref = [t.detach().double().requires_grad_() for t in (x, w, b)]
    expected = F.conv3d(*ref, padding=padding)
    got = conv(x, w, b, padding=padding)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert rel_err(got.double(), expected) < 1e-5
    g = torch.randn(got.shape, dtype=torch.float64)
    for a, e in zip(torch.autograd.grad(got, (x, w, b), g.float()), torch.autograd.grad(expected, ref, g)):
        assert rel_err(a.double(), e) < 1e-5


def _kernels(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch build")
def test_conv_of_one_sample_avoids_the_slow_reference_kernel():
    x = torch.randn(1, 6, 16, 32, 32, requires_grad=True)
    w = torch.randn(8, 6, 3, 3, 3, requires_grad=True)
    direct = _kernels(lambda: F.conv3d(x, w, padding=1).sum().backward())
    if not any("slow_conv3d" in k for k in direct):
        pytest.skip("this torch no longer takes slow_conv3d for one sample")
    routed = _kernels(lambda: conv(x, w, padding=1).sum().backward())
    assert not any("slow_conv3d" in k for k in routed), sorted(routed)
    assert "aten::mkldnn_convolution" in routed


def test_conv_of_a_batch_and_of_doubles_is_the_direct_call():
    for x in (torch.randn(2, 3, 6, 6, 6), torch.randn(1, 3, 6, 6, 6, dtype=torch.float64)):
        w = torch.randn(4, 3, 3, 3, 3, dtype=x.dtype)
        assert torch.equal(conv(x, w, padding=1), F.conv3d(x, w, padding=1))
    x2, w2 = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
    assert torch.equal(conv(x2, w2, padding=1), F.conv2d(x2, w2, padding=1))


def _saved_bytes(fn) -> int:
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_conv_of_one_sample_keeps_what_the_direct_call_keeps_and_has_its_second_derivative():
    x = torch.randn(1, 6, 12, 20, 20, requires_grad=True)
    w = torch.randn(8, 6, 3, 3, 3, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    assert _saved_bytes(lambda: conv(x, w, b, padding=1)) == _saved_bytes(lambda: F.conv3d(x, w, b, padding=1))

    def second(f):  # d/dw of |d<f(x), g>/dx|^2: a second derivative through the convolution
        g = torch.ones(1, 8, 12, 20, 20)
        (gx,) = torch.autograd.grad(f(x, w, b, padding=1), x, g, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), w)[0]

    assert rel_err(second(conv), second(F.conv3d)) < 1e-5
