"""The hyperbolic autoencoder: exactness, group-norm prox/pruning, energy distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fhcnn.memory import saved_tensor_bytes
from fhcnn.models import ConvVAE, HyperbolicAutoencoder
from fhcnn.models.autoencoder import energy_distance, group_norm_12, prox_group_l12


def _ae(**kw):
    torch.manual_seed(0)
    opts = dict(hidden=8)
    opts.update(kw)
    return HyperbolicAutoencoder(1, (16, 16), [(2, "down"), (2, "down"), (2, None)], **opts)


# ------------------------------------------------------------------ exactness with P = I
@pytest.mark.parametrize("p_init", ["identity", "orthogonal"])
def test_exact_reconstruction_with_square_P(p_init):
    ae = _ae(p_init=p_init, mean=0.3, std=0.4)
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        z = ae.encode(x)
        assert z.shape == (4, 256)
        err = (ae.decode(z) - x).abs().max().item()
    assert err <= 1e-5


def test_F_is_a_bijection_in_both_orders_float64():
    ae = _ae().double()
    x = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    f = torch.randn(3, 256, dtype=torch.float64)
    with torch.no_grad():
        assert (ae.untransform(ae.transform(x)) - x).abs().max() < 1e-12
        assert (ae.transform(ae.untransform(f)) - f).abs().max() < 1e-10


def test_rgb_and_mean_image_exact():
    torch.manual_seed(0)
    ae = HyperbolicAutoencoder(3, (8, 16), [(1, "down"), (1, None)], hidden=8,
                               mean=torch.rand(3, 8, 16), std=[0.2, 0.3, 0.4])
    x = torch.rand(2, 3, 8, 16)
    with torch.no_grad():
        assert (ae.decode(ae.encode(x)) - x).abs().max() < 1e-5


def test_pca_init_keeps_exactness_and_sorts_energy():
    ae = _ae()
    x = torch.rand(64, 1, 16, 16)
    ev = ae.init_pca(x)
    assert torch.all(ev[:-1] >= ev[1:] - 1e-6)
    assert torch.allclose(ae.P.T @ ae.P, torch.eye(256), atol=1e-4)
    with torch.no_grad():
        z = ae.encode(x)
        assert (ae.decode(z) - x).abs().max() < 1e-4
        # the columns are sorted by the energy they carry (their eigenvalue)
        e = z.double().square().mean(0)
        assert torch.allclose(e, ev.double(), rtol=1e-3, atol=1e-4)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="divisible"):
        HyperbolicAutoencoder(1, (12, 12), [(1, "down"), (1, "down"), (1, None)])
    ae = _ae()
    with pytest.raises(ValueError, match="shape"):
        ae.encode(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="latents"):
        ae.decode(torch.rand(2, 3))


# ------------------------------------------------------------------ group norm and prox
def test_group_norm_is_sum_of_column_norms():
    p = torch.randn(7, 5)
    assert torch.isclose(group_norm_12(p), torch.tensor(sum(np.linalg.norm(p.numpy(), axis=0))))


def test_prox_is_group_soft_threshold():
    torch.manual_seed(0)
    p = torch.randn(6, 8)
    p[:, 2] *= 0.01
    p[:, 5] *= 0.05
    before = p.norm(dim=0)
    tau = 0.1
    q = p.clone()
    keep = prox_group_l12(q, tau)
    after = q.norm(dim=0)
    for j in range(8):
        if before[j] <= tau:
            assert not keep[j] and torch.all(q[:, j] == 0)
        else:
            assert keep[j]
            assert torch.isclose(after[j], before[j] - tau, atol=1e-6)
            # direction unchanged
            assert torch.allclose(q[:, j] / after[j], p[:, j] / before[j], atol=1e-6)


def test_prox_prunes_exactly_the_columns_under_the_threshold():
    torch.manual_seed(1)
    norms = torch.tensor([2.0, 5e-4, 0.3, 9.9e-4, 1.01e-3, 1e-5, 0.0, 1.5])
    direction = torch.randn(10, 8)
    p = direction / direction.norm(dim=0) * norms
    keep = prox_group_l12(p, 0.0, threshold=1e-3)
    assert keep.tolist() == [True, False, True, False, True, False, False, True]
    assert torch.all(p[:, ~keep] == 0)
    assert torch.allclose(p.norm(dim=0)[keep], norms[keep], rtol=1e-5)
    # the model's prox step switches columns off for good and prunes them away
    ae = _ae()
    with torch.no_grad():
        ae.P.mul_(torch.linspace(0, 1, 256)[None] * 0.01)  # column j has norm j/255 * 0.01
    before = ae.P.detach().norm(dim=0)
    k = ae.prox_step(0.0)
    expected = int((before >= 1e-3).sum())
    assert k == expected == ae.latent_dim
    assert torch.all(ae.P[:, ~ae.alive] == 0)
    with torch.no_grad():
        ae.P[:, 0] = 1.0  # a dead column cannot come back
    ae.prox_step(0.0)
    assert ae.latent_dim == expected and torch.all(ae.P[:, 0] == 0)
    ae.prune()
    assert ae.P.shape == (256, expected) and ae.encode(torch.rand(2, 1, 16, 16)).shape == (2, expected)


def test_pruned_state_dict_loads_into_a_fresh_model():
    ae = _ae()
    with torch.no_grad():
        ae.P[:, 10:] = 0
    ae.prox_step(0.0)
    ae.prune()
    fresh = _ae()
    fresh.load_state_dict(ae.state_dict())
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert fresh.latent_dim == 10
        assert torch.allclose(fresh.encode(x), ae.encode(x))


def test_pruned_float64_state_dict_loads_in_the_models_dtype():
    """A float64 model loading a pruned checkpoint (or one with a mean image) keeps float64:
    ``P`` and ``mean`` were remade in the default dtype, rounding ``P`` to float32 and then
    failing in ``encode`` with a dtype mismatch."""
    ae = _ae(mean=torch.rand(1, 16, 16).tolist()).double()
    with torch.no_grad():
        ae.P[:, 10:] = 0
    ae.prox_step(0.0)
    ae.prune()
    fresh = _ae().double()
    fresh.load_state_dict(ae.state_dict())
    assert fresh.P.dtype == fresh.mean.dtype == torch.float64
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(fresh.P, ae.P) and torch.equal(fresh.mean, ae.mean)
        assert torch.equal(fresh.encode(x), ae.encode(x))


# ------------------------------------------------------------------ energy distance
def _energy_numpy(x: np.ndarray, y: np.ndarray) -> float:
    def d(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    n, m = len(x), len(y)
    return float(2 * d(x, y).mean() - d(x, x).sum() / (n * (n - 1)) - d(y, y).sum() / (m * (m - 1)))


def test_energy_distance_equals_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5)), rng.normal(1.0, 2.0, size=(30, 5))
    got = energy_distance(torch.tensor(x), torch.tensor(y)).item()
    assert got == pytest.approx(_energy_numpy(x, y), rel=1e-9, abs=1e-9)
    got32 = energy_distance(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    assert got32.item() == pytest.approx(_energy_numpy(x, y), rel=1e-4)


def test_energy_distance_near_zero_for_matching_and_positive_for_shifted():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(600, 8, generator=g, dtype=torch.float64) * 2
    b = torch.randn(600, 8, generator=g, dtype=torch.float64) * 2
    same = energy_distance(a, b).item()
    shifted = energy_distance(a, b + 1.0).item()
    scaled = energy_distance(a, b * 2).item()
    assert abs(same) < 0.05
    assert shifted > 0.3 and shifted > 10 * abs(same)
    assert scaled > 0.3


def test_energy_distance_gradient_is_finite():
    z = torch.randn(16, 4, requires_grad=True)
    z2 = torch.cat([z, z[:2]])  # duplicated rows: zero distances
    energy_distance(z2, torch.randn(10, 4)).backward()
    assert torch.isfinite(z.grad).all()


# ------------------------------------------------------------------ training path
def test_loss_backward_reaches_P_and_network():
    ae = _ae()
    with torch.no_grad():
        ae.P.mul_(0.9)
    x = torch.rand(8, 1, 16, 16)
    loss, parts = ae.loss(x, alpha=0.1, beta=1.0, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert ae.P.grad is not None and ae.P.grad.abs().sum() > 0
    assert all(p.grad is not None for p in ae.net.parameters())
    assert set(parts) >= {"recon", "group_norm", "energy", "latent_dim"}


def test_reversible_gradients_match_plain_autograd():
    ae = _ae().double()
    with torch.no_grad():
        ae.P.mul_(0.8)
    x = torch.rand(4, 1, 16, 16, dtype=torch.float64)
    prior = torch.randn(4, 256, dtype=torch.float64)
    grads = []
    for mode in (True, False):
        ae.zero_grad()
        ae.net.reversible = mode
        ae.loss(x, 0.1, 1.0, prior=prior)[0].backward()
        grads.append([p.grad.clone() for p in ae.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)


def test_training_memory_constant_in_depth():
    x = torch.rand(4, 1, 16, 16)
    sizes = []
    for n in (2, 6):
        torch.manual_seed(0)
        ae = HyperbolicAutoencoder(1, (16, 16), [(n, "down"), (n, "down"), (n, None)], hidden=8)
        with torch.no_grad():
            ae.P.mul_(0.9)
        nbytes, _ = saved_tensor_bytes(lambda: ae.loss(x)[0])
        sizes.append(nbytes)
    # saved tensors do not grow with the number of layers (P, its products and the
    # boundary pairs only)
    assert sizes[1] <= sizes[0] * 1.05 + 4096


def test_conv_vae_baseline_shapes_and_loss():
    torch.manual_seed(0)
    vae = ConvVAE(1, (16, 16), latent_dim=6, width=8)
    x = torch.rand(5, 1, 16, 16)
    loss, parts = vae.loss(x, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert vae.encode(x).shape == (5, 6) and vae.decode(torch.randn(3, 6)).shape == (3, 1, 16, 16)
    assert vae.sample(4).shape == (4, 1, 16, 16) and parts["kl"] >= 0
    with pytest.raises(ValueError, match=r"images must have shape \(N, 1, 16, 16\), got \(5, 1, 8, 8\)"):
        vae.encode(torch.rand(5, 1, 8, 8))
    with pytest.raises(ValueError, match=r"images must have shape \(N, 1, 16, 16\), got \(5, 3, 16, 16\)"):
        vae.loss(torch.rand(5, 3, 16, 16))
    with pytest.raises(ValueError, match=r"latents must have shape \(N, 6\), got \(3, 4\)"):
        vae.decode(torch.randn(3, 4))


def test_sample_counts_are_named():
    """``sample(n)`` and ``prior_sample(n)`` of both autoencoders name a bad ``n`` in one line
    (``sample(-1)`` raised PyTorch's 'Trying to create tensor with negative dimension -1')."""
    vae = ConvVAE(1, (16, 16), latent_dim=6, width=8)
    for model in (_ae(), vae):
        assert model.sample(0).shape == (0, 1, 16, 16)
        for method in (model.sample, model.prior_sample):
            for bad in (-1, 2.5, True):
                with pytest.raises(ValueError, match=rf"^n must be an int >= 0, got {bad!r}$"):
                    method(bad)


def test_image_size_takes_whole_numbers_only():
    from fhcnn.models import HyperbolicAutoencoder

    for bad in ((16.7, 16), (16, True)):
        with pytest.raises(ValueError, match="image_size must be an int >= 1"):
            HyperbolicAutoencoder(1, bad, [(1, "down"), (1, None)])


def test_scalar_options_that_would_give_nans_or_never_prune_are_refused():
    """``sigma="1"`` failed with ``'>' not supported between instances of 'str' and 'int'``,
    ``image_size=8`` with ``object of type 'int' has no len()``; ``prune_threshold=nan`` was
    accepted and never pruned a column, ``std=nan`` or ``mean=inf`` gave a model whose every
    output is NaN. Each is one ValueError naming the option."""
    from fhcnn.models import HyperbolicAutoencoder

    units = [(1, "down"), (1, None)]
    cases = [({"sigma": "1"}, "sigma must be a finite number > 0, got '1'"),
             ({"sigma": float("inf")}, "sigma must be a finite number > 0"),
             ({"sigma": 0.0}, "sigma must be a finite number > 0"),
             ({"prune_threshold": float("nan")}, "prune_threshold must be a finite number >= 0, got nan"),
             ({"std": float("nan")}, "std must be finite and > 0"),
             ({"mean": [0.0, float("inf"), 0.0]}, "mean must be finite")]
    for options, shown in cases:
        with pytest.raises(ValueError, match=shown):
            HyperbolicAutoencoder(3, (8, 8), units, **options)
    with pytest.raises(ValueError, match=r"image_size must be \(H, W\), got 8"):
        HyperbolicAutoencoder(1, 8, units)  # type: ignore[arg-type]
    ae = HyperbolicAutoencoder(3, (8, 8), units, sigma=np.float64(0.5), prune_threshold=0)
    assert ae.sigma == 0.5 and ae.prune_threshold == 0.0
