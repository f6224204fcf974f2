"""The thin dense-prediction wrapper."""

from __future__ import annotations

import pytest
import torch

from fhcnn.memory import saved_tensor_bytes
from fhcnn.models import DenseHyperbolicModel


def test_table2_layout_and_shapes():
    m = DenseHyperbolicModel(6, 2, 384, [(1, "up"), (1, "up"), (1, None)], dim=3, pre_levels=2,
                             hidden=[8, 8, 6])
    x = torch.randn(1, 6, 8, 8, 8)
    assert m(x).shape == (1, 2, 8, 8, 8)
    assert m.size_multiple == 4
    m2 = DenseHyperbolicModel(3, 4, 16, [(2, "down"), (2, "up")], dim=2, opening="conv")
    assert m2(torch.randn(2, 3, 8, 8)).shape == (2, 4, 8, 8)


def test_reversible_model_memory_independent_of_depth():
    sizes = []
    for depth in (2, 8):
        m = DenseHyperbolicModel(3, 2, 8, [(depth, "down"), (depth, "up")], dim=2)
        x = torch.randn(1, 3, 16, 16)
        nbytes, _ = saved_tensor_bytes(lambda: m(x).sum())
        sizes.append(nbytes)
    assert sizes[0] == sizes[1]


def test_conv_head_gradients_equal_autograd_and_memory_independent_of_depth():
    """The 3x3x3 head (``head_channels``) reads the last state: the reversible network's
    gradients equal plain autograd's through it, and what it stores does not grow with depth."""
    torch.manual_seed(0)
    x = torch.randn(2, 2, 8, 8, 8, dtype=torch.float64)
    sizes = []
    for depth in (1, 3):
        m = DenseHyperbolicModel(2, 3, 8, [(depth, "down"), (depth, "up")], dim=3, opening="conv",
                                 head_channels=5).double()
        assert m.conv_head is not None and m.conv_head[0].weight.shape == (5, 8, 3, 3, 3)
        assert m.classifier.weight.shape == (3, 5, 1, 1, 1)
        grads = {}
        for mode in (True, False):
            m.net.reversible = mode
            m.zero_grad()
            nbytes, y = saved_tensor_bytes(lambda: m(x))
            (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
            grads[mode] = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
            if mode is True:
                sizes.append(nbytes)
        assert torch.allclose(grads[True], grads[False], rtol=1e-10, atol=1e-12)
    assert sizes[0] == sizes[1]


def test_errors():
    with pytest.raises(ValueError, match="end at the input resolution"):
        DenseHyperbolicModel(3, 2, 16, [(2, "down")], dim=2)
    with pytest.raises(ValueError, match="head_channels must be an int >= 0"):
        DenseHyperbolicModel(3, 2, 8, [(1, "down"), (1, "up")], dim=2, head_channels=-1)
    with pytest.raises(ValueError, match="smaller than the 24 channels"):
        DenseHyperbolicModel(6, 2, 16, [(1, "up")], dim=2, pre_levels=1)
    m = DenseHyperbolicModel(3, 2, 8, [(1, "down"), (1, "up")], dim=2)
    with pytest.raises(ValueError, match="input must be"):
        m(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="axis 0 has size 7"):
        m(torch.randn(1, 3, 7, 8))


def test_config_conv_head():
    from fhcnn.apps.volume import VolumeConfig
    from fhcnn.config import load_config
    from fhcnn.engine.models import build_model

    cfg = load_config(VolumeConfig, "volume-tiny", ["model.conv_head=6"])
    inner = build_model(cfg.model, 2, 3).core
    assert isinstance(inner, DenseHyperbolicModel) and inner.conv_head[0].out_channels == 6
    assert build_model(load_config(VolumeConfig, "volume-tiny").model, 2, 3).core.conv_head is None
    with pytest.raises(ValueError, match="conv_head must be >= 0"):
        load_config(VolumeConfig, "volume-tiny", ["model.conv_head=-1"])


def test_one_dimensional_model():
    """``dim=1`` (as the network and the wavelets accept) builds 1D convolutions: shapes,
    and the reversible gradients equal plain autograd's."""
    torch.manual_seed(0)
    m = DenseHyperbolicModel(2, 3, 8, [(1, "down"), (1, "up"), (1, "up")], dim=1, pre_levels=1,
                             opening="conv", head_channels=4).double()
    assert m.open.weight.shape == (8, 4, 1) and m.classifier.weight.shape == (3, 4, 1)
    x = torch.randn(2, 2, 16, dtype=torch.float64)
    grads = {}
    for mode in (True, False):
        m.net.reversible = mode
        m.zero_grad()
        y = m(x)
        assert y.shape == (2, 3, 16)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        grads[mode] = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
    assert torch.allclose(grads[True], grads[False], rtol=1e-10, atol=1e-12)
    assert m(x[:1]).shape == (1, 3, 16)
    with pytest.raises(ValueError, match=r"input must be \(N, 2, L\)"):
        m(torch.randn(2, 16))
    with pytest.raises(ValueError, match="dim must be 1, 2 or 3"):
        DenseHyperbolicModel(2, 3, 8, [(1, None)], dim=4)


def test_integer_input_rejected_with_message():
    m = DenseHyperbolicModel(3, 2, 16, [(1, "down"), (1, "up"), (1, "up")], dim=2, pre_levels=1)
    with pytest.raises(TypeError, match="input must be a floating-point torch.Tensor, got Tensor of dtype torch.int64"):
        m(torch.ones(1, 3, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="got list"):
        m([1.0])
