"""The symmetric layer f(Y) = -K^T sigma(N(K Y + b))."""

from __future__ import annotations

import pytest
import torch

from fhcnn.layers import SymmetricLayer, frozen_norm_stats

from .conftest import rel_err


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
