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


def test_errors():
    with pytest.raises(ValueError, match="end at the input resolution"):
        DenseHyperbolicModel(3, 2, 16, [(2, "down")], dim=2)
    with pytest.raises(ValueError, match="smaller than the 24 channels"):
        DenseHyperbolicModel(6, 2, 16, [(1, "up")], dim=2, pre_levels=1)
    m = DenseHyperbolicModel(3, 2, 8, [(1, "down"), (1, "up")], dim=2)
    with pytest.raises(ValueError, match="input must be"):
        m(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="axis 0 has size 7"):
        m(torch.randn(1, 3, 7, 8))
