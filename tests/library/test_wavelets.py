"""Orthogonal wavelet transforms: exact inverse, norm, adjoint, PyWavelets oracle, errors."""

from __future__ import annotations

import math

import pytest
import torch

from fhcnn import HaarDWT, LearnableWavelet
from fhcnn.wavelets import WaveletTransform, check_divisible, lattice_filters, nearest_valid_size
from tests.conftest import rel_err

SHAPES = {1: (2, 3, 16), 2: (2, 3, 8, 12), 3: (2, 3, 8, 4, 6)}


def _transforms(dim: int, levels: int = 1):
    random = LearnableWavelet(dim, "db2", levels=levels)
    with torch.no_grad():
        random.theta.copy_(torch.randn(2) * 3)
    return [HaarDWT(dim, levels), LearnableWavelet(dim, "haar", levels=levels),
            LearnableWavelet(dim, "db2", levels=levels), random]


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("levels", [1, 2])
def test_inverse_norm_and_adjoint(dim, levels):
    shape = SHAPES[dim][:2] + tuple(4 * s for s in SHAPES[dim][2:])
    for T in _transforms(dim, levels):
        x = torch.randn(shape)
        with torch.no_grad():
            y = T(x)
            assert y.shape == (shape[0], shape[1] * 2 ** (dim * levels),
                               *[s // 2**levels for s in shape[2:]])
            assert rel_err(T.inverse(y), x) <= 1e-6
            assert abs(y.norm().item() / x.norm().item() - 1) <= 1e-6
            # adjoint test <T x, z> = <x, T^-1 z> (T^-1 = T^T)
            z = torch.randn_like(y)
            lhs, rhs = (y.double() * z.double()).sum(), (x.double() * T.inverse(z).double()).sum()
            assert abs(lhs - rhs) <= 1e-5 * x.norm() * z.norm()
            # inverse in the other order
            assert rel_err(T(T.inverse(z)), z) <= 1e-6


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_matrix_orthogonal_for_random_angles(dim):
    """Build the full matrix of T and check T^T T = I for perturbed learnable parameters."""
    shape = (1, 1) + (4,) * dim if dim > 1 else (1, 1, 8)
    n = math.prod(shape)
    for _ in range(5):
        T = LearnableWavelet(dim, "db2").double()
        with torch.no_grad():
            T.theta.add_(torch.randn(2, dtype=torch.float64) * 2)
            M = torch.stack([T(e.reshape(shape)).reshape(-1) for e in torch.eye(n, dtype=torch.float64)], 1)
        assert torch.allclose(M.T @ M, torch.eye(n, dtype=torch.float64), atol=1e-12)


def test_filters_stay_orthonormal():
    for _ in range(20):
        t1, t2 = torch.randn(2, dtype=torch.float64) * 4
        h, g = lattice_filters(t1, t2)
        assert torch.isclose(h.square().sum(), torch.tensor(1.0, dtype=torch.float64))
        assert abs(h[0] * h[2] + h[1] * h[3]) < 1e-14  # double-shift orthogonality (eq. 3.8a)
        assert abs(h @ g) < 1e-14 and abs(h[0] * g[2] + h[1] * g[3]) < 1e-14


def test_db2_taps_match_pywavelets():
    pywt = pytest.importorskip("pywt")
    ref = torch.tensor(pywt.Wavelet("db2").dec_lo[::-1], dtype=torch.float64)
    taps = LearnableWavelet(1, "db2").double().filters().detach()
    assert torch.allclose(taps, ref, atol=1e-7)
    haar = LearnableWavelet(1, "haar").filters().detach()
    assert torch.allclose(haar, torch.tensor([2**-0.5, 2**-0.5, 0, 0]), atol=1e-7)


def test_transform_matches_pywavelets_periodization():
    pywt = pytest.importorskip("pywt")
    x = torch.randn(32, dtype=torch.float64)
    lo, hi = HaarDWT(1)(x[None, None])[0]
    cA, cD = pywt.dwt(x.numpy(), "haar", mode="periodization")
    assert torch.allclose(lo, torch.tensor(cA)) and torch.allclose(hi, -torch.tensor(cD))
    # db2: the same transform as PyWavelets' on the signal delayed by one sample
    T = LearnableWavelet(1, "db2").double()
    with torch.no_grad():
        T.theta.copy_(torch.tensor([math.pi / 3, -math.pi / 12], dtype=torch.float64))
        lo, hi = T(torch.roll(x, 1)[None, None])[0]
    cA, cD = pywt.dwt(x.numpy(), "db2", mode="periodization")
    assert torch.allclose(lo, torch.tensor(cA), atol=1e-12)
    assert torch.allclose(hi, -torch.tensor(cD), atol=1e-12)
    # 2D Haar: the four subbands of pywt.dwt2 (up to sign), low band first
    img = torch.randn(8, 8, dtype=torch.float64)
    y = HaarDWT(2)(img[None, None])[0]
    cA, (cH, cV, cDD) = pywt.dwt2(img.numpy(), "haar", mode="periodization")
    assert torch.allclose(y[0], torch.tensor(cA))
    for band in (cH, cV, cDD):
        assert any(torch.allclose(y[k].abs(), torch.tensor(band).abs()) for k in (1, 2, 3))


def test_multilevel_equals_repeated_single_level():
    x = torch.randn(1, 2, 16, 16, 16)
    one = HaarDWT(3)
    assert torch.equal(HaarDWT(3, levels=2)(x), one(one(x)))
    assert HaarDWT(3, levels=2)(x).shape == (1, 2 * 64, 4, 4, 4)


def test_gradients_reach_learnable_parameters():
    T = LearnableWavelet(2, "db2").double()
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    target = torch.randn(1, 4, 4, 4, dtype=torch.float64)
    ((T(x) - target) ** 2).sum().backward()
    assert T.theta.grad is not None and T.theta.grad.abs().sum() > 0
    theta = T.theta.detach().clone().requires_grad_()

    def f(th):
        return torch.func.functional_call(T, {"theta": th}, (x,))
    assert torch.autograd.gradcheck(f, (theta,))


@pytest.mark.parametrize("T", [HaarDWT(2), LearnableWavelet(2), HaarDWT(2, levels=2)])
def test_bad_sizes_rejected_with_message(T):
    with pytest.raises(ValueError, match=r"axis 1 has size 7.*nearest valid size is (8|4)"):
        T(torch.randn(1, 1, 8, 7))
    with pytest.raises(ValueError, match="shape"):
        T(torch.randn(8, 8))
    with pytest.raises(ValueError, match="divisible by 2\\*\\*"):
        HaarDWT(2, levels=2)(torch.randn(1, 1, 8, 6))


@pytest.mark.parametrize("T", [HaarDWT(2), LearnableWavelet(2)])
def test_integer_input_rejected_with_message(T):
    """An integer tensor is refused by name (Haar failed inside PyTorch, the learnable
    wavelet silently returned floats)."""
    x = torch.ones(1, 1, 4, 4, dtype=torch.long)
    with pytest.raises(TypeError, match="wavelet input must be a floating-point tensor, got dtype torch.int64"):
        T(x)
    with pytest.raises(TypeError, match="wavelet inverse input must be a floating-point tensor"):
        T.inverse(torch.ones(1, 4, 2, 2, dtype=torch.uint8))


def test_helpers_and_options():
    assert nearest_valid_size(7, 4) == 8 and nearest_valid_size(9, 4) == 8 and nearest_valid_size(1, 4) == 4
    check_divisible((8, 16), 3)
    with pytest.raises(ValueError):
        check_divisible((8, 12), 3)
    with pytest.raises(ValueError):
        LearnableWavelet(2, init="db4")
    with pytest.raises(ValueError):
        HaarDWT(4)
    with pytest.raises(ValueError, match="channels"):
        HaarDWT(2).inverse(torch.randn(1, 3, 4, 4))


def _layouts(dim):
    fmt = {2: torch.channels_last, 3: torch.channels_last_3d}.get(dim)
    return [torch.contiguous_format] + ([fmt] if fmt is not None else [])


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("levels", [1, 2])
def test_haar_fast_path_equals_lattice_axis_by_axis(dim, levels):
    """HaarDWT's all-axes kernel gives the generic lattice's values and channel order (the
    base class's axis-by-axis level with the Haar coefficients), in either memory layout, and
    keeps the layout."""
    torch.manual_seed(0)
    haar = HaarDWT(dim, levels=levels)
    coeffs = haar._coefficients(torch.zeros(()))

    def generic(t, inverse):
        for _ in range(levels):
            t = WaveletTransform._level(haar, t, coeffs, inverse)
        return t

    shape = (2, 3) + (4, 8, 12)[:dim]
    for fmt in _layouts(dim):
        x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=fmt)
        y = haar(x)
        torch.testing.assert_close(y, generic(x, False), rtol=0, atol=1e-13)
        assert y.is_contiguous(memory_format=fmt)
        back = haar.inverse(y)
        torch.testing.assert_close(back, x, rtol=0, atol=1e-13)
        torch.testing.assert_close(back, generic(y, True), rtol=0, atol=1e-13)
        assert back.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_haar_gradients_and_double_backward(dim):
    """The Haar node's gradient is its transpose (checked against finite differences), and a
    second derivative through it is right too (the backward is itself differentiable)."""
    T = HaarDWT(dim)
    x = torch.randn((1, 2) + (4, 4, 2)[:dim], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(T, (x,))
    assert torch.autograd.gradgradcheck(T, (x,))
    y = torch.randn((1, 2 ** (dim + 1)) + (2, 2, 1)[:dim], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(T.inverse, (y,))
    assert torch.autograd.gradgradcheck(T.inverse, (y,))


def test_haar_output_never_aliases_input():
    """The kernel writes fresh buffers (the reversible backward overwrites states in place)."""
    x = torch.randn(1, 1, 4, 4)
    y = HaarDWT(2)(x)
    assert y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    z = HaarDWT(2).inverse(y)
    assert z.untyped_storage().data_ptr() != y.untyped_storage().data_ptr()
