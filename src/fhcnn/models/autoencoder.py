"""Hyperbolic autoencoder / VAE (paper section 4): encoder ``Z = P^T F(X)``, decoder ``F^-1(P Z)``.

``F`` is a fully reversible :class:`~fhcnn.HyperbolicNetwork` made into an exact bijection of
``R^D`` with ``D = C H W`` (the number of pixels times channels):

    X (N, C, H, W), normalized by (mean, std)
      -> k Haar transforms (``pre_levels``)        (N, 4**k C, H/2**k, W/2**k)   orthogonal
      -> split the channels in two halves           a = first half, b = second half
      -> the network started at the pair (a, a + h b)  (``forward_pair(a, x_cur=a + h*b)``)
      -> the last pair (Y_prev, Y_cur) -> (Y_cur, (Y_cur - Y_prev) / h), concatenated on the
         channel axis and flattened
    F(X) (N, D)

The state pair is read as *position and velocity* of the ODE ``Y'' = f(Y)`` that the
leapfrog network discretizes with step ``h``: the first channel half is the initial state
``Y(0) = a``, the second its initial velocity ``Y'(0) = b``, and the output is the final
position and velocity. Every step is invertible (orthogonal transforms, a split, two
triangular linear maps, leapfrog layers run backwards), so ``F^-1`` is exact:
``net.inverse(Y_prev, Y_cur, return_pair=True)`` gives back ``(a, a + h b)``. Starting the
pair from two *different* halves (rather than ``(X, X)``) is what makes ``X -> F(X)`` a
bijection of the same size (with ``(X, X)`` the output pair would be twice the input).
Reading the pair as position/velocity rather than feeding ``(a, b)`` directly keeps ``F``
well conditioned: the leapfrog preserves the difference of the pair, so ``(a, b)`` would
drift to ``a + depth (b - a)`` and ``F`` would amplify the input about ``depth`` times,
whereas here the drift is ``depth * h * b``. The Haar transform before the split puts the
coarse approximation and the detail subbands in the channels, so both halves see the
whole image.

The projection ``P`` (``D x D``, initialized to the identity or a random orthogonal matrix)
makes it an autoencoder: with ``P = I`` it is exact. Training minimizes

    ||F^-1(P P^T F(X)) - X||^2 + alpha ||P||_{1,2} + beta E(P^T F(X))

with ``||P||_{1,2} = sum_j ||P[:, j]||_2`` (the 1-2 group norm over columns) and ``E`` the
energy distance of Szekely & Rizzo between the batch of latents and samples of
``N(0, sigma^2 I)``. The group norm is applied as a *proximal* step after each optimizer step
(:func:`prox_group_l12`, a group soft-threshold that produces exact zeros); columns whose norm
falls below ``prune_threshold`` are switched off for good (the ``alive`` mask) and finally
removed by :meth:`HyperbolicAutoencoder.prune`. The latent dimension is the number of
surviving columns. Training memory is constant in the depth of ``F`` (reversible network;
the decoder ``F^-1`` is a reversible network too).

:class:`ConvVAE` is a conventional convolutional VAE (Kingma & Welling), the baseline.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn

from ..network import HyperbolicNetwork, Unit
from ..wavelets import HaarDWT, check_count, check_divisible, check_like_parameters, check_number

__all__ = [
    "HyperbolicAutoencoder",
    "ConvVAE",
    "energy_distance",
    "group_norm_12",
    "prox_group_l12",
]


# ------------------------------------------------------------------ group norm and its prox
def group_norm_12(p: Tensor) -> Tensor:
    """``||P||_{1,2} = sum_j ||P[:, j]||_2``: the sum of the column 2-norms of ``P`` (D, k)."""
    return p.norm(dim=0).sum()


@torch.no_grad()
def prox_group_l12(p: Tensor, tau: float, threshold: float = 0.0) -> Tensor:
    """Proximal operator of ``tau ||P||_{1,2}``, in place: group soft-thresholding of columns.

    Every column is scaled by ``max(0, 1 - tau / ||p_j||)``: columns with norm ``<= tau``
    become exactly zero, the others shrink by ``tau`` in norm. Afterwards columns whose norm
    is below ``threshold`` are set to zero as well (the pruning rule).

    Args:
        p: ``(D, k)`` matrix, modified in place.
        tau: step size times the group-norm weight (``lr * alpha``), ``>= 0``.
        threshold: prune columns with a norm below this after shrinking.

    Returns:
        Boolean mask ``(k,)`` of the columns that are non-zero afterwards.

    Example:
        >>> p = torch.tensor([[3.0, 0.1], [4.0, 0.0]])
        >>> prox_group_l12(p, 0.5).tolist(), p[:, 0].norm().item()
        ([True, False], 4.5)
    """
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    norms = p.norm(dim=0)
    scale = torch.clamp(1 - tau / norms.clamp_min(torch.finfo(p.dtype).tiny), min=0.0)
    p.mul_(scale)
    keep = (norms * scale) >= threshold
    keep &= scale > 0
    p[:, ~keep] = 0
    return keep


# -------------------------------------------------------------------------- energy distance
def _pairwise_distances(x: Tensor, y: Tensor) -> Tensor:
    """Euclidean distances ``(n, m)``, with a zero-safe square root (finite gradients)."""
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    eps = 1e-12 if x.dtype == torch.float64 else 1e-8
    d2 = d2.clamp_min(0)
    # sqrt(d2 + eps) - sqrt(eps): exact 0 at 0, gradient finite everywhere
    return torch.sqrt(d2 + eps) - math.sqrt(eps)


def energy_distance(x: Tensor, y: Tensor) -> Tensor:
    """Energy distance (Szekely & Rizzo) between samples ``x`` (n, d) and ``y`` (m, d).

    ``E = 2 mean_ij |x_i - y_j| - mean_{i != j} |x_i - x_j| - mean_{i != j} |y_i - y_j|``
    (the within-sample means exclude the diagonal: an unbiased U-statistic, so ``E`` is 0 in
    expectation when ``x`` and ``y`` come from the same distribution, and
    ``E(X, Y) = 0`` iff the distributions agree). Differentiable in ``x`` and ``y``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = torch.randn(500, 4, generator=g), torch.randn(500, 4, generator=g)
        >>> abs(energy_distance(a, b).item()) < 0.05, energy_distance(a, b + 1).item() > 0.5
        (True, True)
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"energy_distance needs (n, d) and (m, d) samples, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"energy_distance needs at least 2 samples each, got {n} and {m}")
    xy = _pairwise_distances(x, y).mean()
    xx = _pairwise_distances(x, x).sum() / (n * (n - 1))
    yy = _pairwise_distances(y, y).sum() / (m * (m - 1))
    return 2 * xy - xx - yy


# ------------------------------------------------------------------------------- the model
class HyperbolicAutoencoder(nn.Module):
    """Autoencoder ``Z = P^T F(X)``, ``X_hat = F^-1(P Z)`` with a fully reversible ``F``.

    Args:
        in_channels: ``C`` of the images.
        image_size: ``(H, W)``; both divisible by ``2**(pre_levels + coarsenings of units)``.
        units: the network's units (see :class:`~fhcnn.HyperbolicNetwork`), e.g.
            ``[(3, "down"), (3, "down"), (3, None)]``.
        pre_levels: Haar transforms before the split (>= 1 so the channel count is even).
        sigma: ``s``, the standard deviation of the latent prior ``N(0, s^2 I)``.
        p_init: ``"identity"`` or ``"orthogonal"`` (a random orthogonal ``D x D`` matrix); see
            also :meth:`init_pca` (principal directions of ``F(X)``, set from data).
        prune_threshold: columns of ``P`` with a smaller norm are pruned (default ``1e-3``).
        mean, std: data normalization ``(X - mean) / std``: numbers, one per channel, or (mean
            only) a mean image ``(C, H, W)``; the model takes and returns images in data
            units. Stored as buffers, so checkpoints carry them.
        network_options: keyword options for :class:`~fhcnn.HyperbolicNetwork` (``h``,
            ``hidden``, ``norm``, ``activation``, ``wavelet``, ``reversible``, ...).

    Shapes:
        ``encode``: ``(N, C, H, W) -> (N, k)`` with ``k = latent_dim``;
        ``decode``: ``(N, k) -> (N, C, H, W)``; ``transform``: ``(N, C, H, W) -> (N, D)``.

    Example:
        >>> ae = HyperbolicAutoencoder(1, (16, 16), [(2, "down"), (2, None)])
        >>> x = torch.rand(3, 1, 16, 16)
        >>> bool((ae.decode(ae.encode(x)) - x).abs().max() < 1e-5)   # P = I: exact
        True
    """

    alive: Tensor
    column_ids: Tensor
    mean: Tensor
    std: Tensor

    def __init__(
        self,
        in_channels: int,
        image_size: Sequence[int],
        units: Sequence[Unit],
        *,
        pre_levels: int = 1,
        sigma: float = 1.0,
        p_init: Literal["identity", "orthogonal"] = "identity",
        prune_threshold: float = 1e-3,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        **network_options: Any,
    ) -> None:
        super().__init__()
        in_channels = check_count("in_channels", in_channels)
        if isinstance(image_size, (str, bytes)) or not isinstance(image_size, Sequence) or len(image_size) != 2:
            raise ValueError(f"image_size must be (H, W), got {image_size!r}")
        pre_levels = check_count("pre_levels", pre_levels, why=" (the split needs an even number of channels)")
        sigma = check_number("sigma", sigma, positive=True)
        if p_init not in ("identity", "orthogonal"):
            raise ValueError(f"p_init must be 'identity' or 'orthogonal', got {p_init!r}")
        prune_threshold = check_number("prune_threshold", prune_threshold)
        h, w = (check_count("image_size", s) for s in image_size)
        self.in_channels, self.image_size = in_channels, (h, w)
        self.pre_levels, self.sigma = pre_levels, float(sigma)
        self.prune_threshold = float(prune_threshold)
        self.pre = HaarDWT(2, levels=pre_levels)
        half = in_channels * 4**pre_levels // 2
        self.net = HyperbolicNetwork(half, units, dim=2, **network_options)
        total = pre_levels + self.net.max_level
        check_divisible((h, w), total, what=f"image_size {(h, w)} (pre_levels={pre_levels} plus "
                        f"{self.net.max_level} network coarsening(s))")
        scale = 2 ** (pre_levels + self.net.out_level)
        if h % scale or w % scale:
            raise ValueError(f"image_size {(h, w)} is not divisible by the output coarsening {scale}")
        self.latent_shape = (2 * self.net.out_channels, h // scale, w // scale)
        self.full_dim = in_channels * h * w
        if math.prod(self.latent_shape) != self.full_dim:  # pragma: no cover - orthogonal maps
            raise RuntimeError("internal: F is not size preserving")
        if p_init == "identity":
            p = torch.eye(self.full_dim)
        else:
            p = torch.linalg.qr(torch.randn(self.full_dim, self.full_dim))[0]
        self.P = nn.Parameter(p)
        self.register_buffer("alive", torch.ones(self.full_dim, dtype=torch.bool))
        self.register_buffer("column_ids", torch.arange(self.full_dim))
        mean_t = torch.as_tensor(mean, dtype=torch.float32)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if std_t.numel() not in (1, in_channels):
            raise ValueError(f"std must have 1 or {in_channels} values, got {std_t.numel()}")
        if not (torch.isfinite(std_t) & (std_t > 0)).all():
            raise ValueError(f"std must be finite and > 0, got {std_t.tolist()}")
        if not torch.isfinite(mean_t).all():
            raise ValueError("mean must be finite, got NaN or infinite values")
        if mean_t.ndim == 3:  # a mean image (C, H, W)
            if tuple(mean_t.shape) != (in_channels, h, w):
                raise ValueError(f"a mean image must have shape {(in_channels, h, w)}, "
                                 f"got {tuple(mean_t.shape)}")
            mean_t = mean_t[None].clone()
        else:
            mean_t = mean_t.reshape(-1)
            if mean_t.numel() not in (1, in_channels):
                raise ValueError(f"mean must be a number, {in_channels} values or a (C, H, W) "
                                 f"image, got {mean_t.numel()} values")
            mean_t = mean_t.expand(in_channels).clone().view(1, -1, 1, 1)
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t.expand(in_channels).clone().view(1, -1, 1, 1))

    # ------------------------------------------------------------------ latent space
    @property
    def latent_dim(self) -> int:
        """Number of columns of ``P`` that are alive (the latent dimension)."""
        return int(self.alive.sum().item())

    def active_P(self) -> Tensor:
        """``P`` restricted to the surviving columns: ``(D, latent_dim)``."""
        if bool(self.alive.all()):
            return self.P
        return self.P[:, self.alive]

    def column_norms(self) -> Tensor:
        """Column 2-norms of ``P`` (0 for pruned columns), ``(columns,)``, detached."""
        return self.P.detach().norm(dim=0) * self.alive

    def group_norm(self) -> Tensor:
        """``||P||_{1,2}``."""
        return group_norm_12(self.P)

    @torch.no_grad()
    def init_pca(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """Set ``P`` to the principal directions of ``F(X)`` on the images ``x``: the
        eigenvectors of the (uncentred) second moment ``E[F(X) F(X)^T]``, sorted by decreasing
        eigenvalue. ``P`` stays square and orthogonal (the autoencoder stays exact), but the
        energy of the data is concentrated in the first columns, so the group norm can switch
        off the others at once (with ``P = I`` every column carries a little of everything and
        the penalty shrinks them all alike). The nonlinear analogue of a truncated SVD.

        Returns the eigenvalues (per-column second moments), decreasing.
        """
        if not bool(self.alive.all()) or self.P.shape[1] != self.full_dim:
            raise RuntimeError("init_pca needs the full square P (call it before pruning)")
        m = torch.zeros(self.full_dim, self.full_dim, dtype=torch.float64, device=self.P.device)
        n = 0
        for i in range(0, len(x), batch_size):
            f = self.transform(x[i:i + batch_size].to(self.P.device)).double()
            m += f.T @ f
            n += f.shape[0]
        evals, evecs = torch.linalg.eigh(m / max(n, 1))
        order = evals.argsort(descending=True)
        self.P.copy_(evecs[:, order].to(self.P.dtype))
        return evals[order].float()

    @torch.no_grad()
    def prox_step(self, tau: float) -> int:
        """Group soft-threshold ``P`` with step ``tau`` and switch off columns under the
        pruning threshold (for good). Returns the latent dimension afterwards."""
        keep = prox_group_l12(self.P, tau, self.prune_threshold)
        self.alive &= keep
        self.P[:, ~self.alive] = 0
        return self.latent_dim

    @torch.no_grad()
    def prune(self) -> int:
        """Remove the dead columns of ``P`` (it becomes ``D x latent_dim``). Returns the
        latent dimension. Further training needs a new optimizer (``P`` is a new tensor)."""
        keep = self.alive.clone()
        self.P = nn.Parameter(self.P[:, keep].clone())
        self.column_ids = self.column_ids[keep].clone()
        self.alive = torch.ones(int(keep.sum()), dtype=torch.bool, device=keep.device)
        return self.latent_dim

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):  # type: ignore[no-untyped-def]
        # a mean image or per-channel mean: adopt the checkpoint's shape
        mkey = prefix + "mean"
        if mkey in state_dict and state_dict[mkey].shape != self.mean.shape:
            self.mean = torch.empty_like(state_dict[mkey], dtype=self.mean.dtype, device=self.mean.device)
        # a pruned checkpoint has a rectangular P: adopt its shape before loading
        key = prefix + "P"
        if key in state_dict and state_dict[key].shape != self.P.shape:
            k = state_dict[key].shape[1]
            if state_dict[key].shape[0] != self.full_dim:
                error_msgs.append(f"P has {state_dict[key].shape[0]} rows in the checkpoint, "
                                  f"the model expects {self.full_dim}")
            else:
                self.P = nn.Parameter(torch.empty(self.full_dim, k, dtype=self.P.dtype, device=self.P.device))
                self.alive = torch.ones(k, dtype=torch.bool, device=self.P.device)
                self.column_ids = torch.zeros(k, dtype=torch.long, device=self.P.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # ---------------------------------------------------------------- F and F^-1
    def _check_images(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"images must be a floating-point torch.Tensor, got {type(x).__name__}"
                            + (f" of dtype {x.dtype}" if isinstance(x, Tensor) else ""))
        want = (self.in_channels, *self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"images must have shape (N, {want[0]}, {want[1]}, {want[2]}), "
                             f"got {tuple(x.shape)}")
        check_like_parameters(self, x, "the image batch")

    def transform(self, x: Tensor) -> Tensor:
        """``F(X)``: images ``(N, C, H, W)`` (data units) -> ``(N, D)``, an exact bijection."""
        self._check_images(x)
        u = self.pre((x - self.mean) / self.std)
        a, b = u.chunk(2, dim=1)
        h = self.net.h
        y_prev, y_cur = self.net.forward_pair(a, x_cur=a + h * b)
        return torch.cat([y_cur, (y_cur - y_prev) / h], dim=1).flatten(1)

    def untransform(self, f: Tensor) -> Tensor:
        """``F^-1``: ``(N, D) -> (N, C, H, W)`` in data units."""
        if f.ndim != 2 or f.shape[1] != self.full_dim:
            raise ValueError(f"expected (N, {self.full_dim}), got {tuple(f.shape)}")
        check_like_parameters(self, f, "F(X)")
        y = f.reshape(f.shape[0], *self.latent_shape)
        position, velocity = y.chunk(2, dim=1)
        h = self.net.h
        y_cur = position.contiguous()
        y_prev = y_cur - h * velocity
        p0, p1 = self.net.inverse(y_prev, y_cur, return_pair=True)
        u = torch.cat([p0, (p1 - p0) / h], dim=1)
        return self.pre.inverse(u) * self.std + self.mean

    def encode(self, x: Tensor) -> Tensor:
        """``Z = P^T F(X)``: ``(N, C, H, W) -> (N, latent_dim)``."""
        return self.transform(x) @ self.active_P()

    def decode(self, z: Tensor) -> Tensor:
        """``X_hat = F^-1(P Z)``: ``(N, latent_dim) -> (N, C, H, W)``."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"latents must have shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        check_like_parameters(self, z, "latents")
        return self.untransform(z @ self.active_P().T)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``X -> (X_hat, Z)``."""
        z = self.encode(x)
        return self.decode(z), z

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode ``n`` latents drawn from ``N(0, sigma^2 I)``: ``(n, C, H, W)``.

        Raises:
            ValueError: ``n`` is not an int >= 0.
        """
        return self.decode(self.prior_sample(n, generator))

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples of the prior ``N(0, sigma^2 I)`` in the latent space, ``(n, k)``.

        Raises:
            ValueError: ``n`` is not an int >= 0.
        """
        n = check_count("n", n, least=0)
        return torch.randn(n, self.latent_dim, generator=generator).to(self.P) * self.sigma

    def loss(self, x: Tensor, alpha: float = 0.0, beta: float = 0.0,
             generator: torch.Generator | None = None, prior: Tensor | None = None
             ) -> tuple[Tensor, dict[str, float]]:
        """The objective ``||X_hat - X||^2 + alpha ||P||_{1,2} + beta E(Z)``.

        The reconstruction term is the squared error summed over pixels (in normalized
        units) and averaged over the batch. Pass ``alpha=0`` when the group norm is applied
        by :meth:`prox_step` instead (its value is still reported).

        Args:
            x: ``(N, C, H, W)`` images in data units.
            alpha, beta: weights.
            generator: for the prior samples (``N`` of them) of the energy distance.
            prior: prior samples ``(M, latent_dim)`` to use instead.

        Returns:
            ``(loss, {"recon": ..., "mse": ..., "group_norm": ..., "energy": ..., "latent_dim": ...})``.
        """
        z = self.encode(x)
        x_hat = self.decode(z)
        err = (x_hat - x) / self.std
        recon = err.square().flatten(1).sum(1).mean()
        gn = self.group_norm()
        total = recon + alpha * gn if alpha else recon
        if beta:
            if prior is None:
                prior = torch.randn(x.shape[0], z.shape[1], generator=generator).to(z) * self.sigma
            e = energy_distance(z, prior)
            total = total + beta * e
            e_val = float(e.detach())
        else:
            e_val = float("nan")
        return total, {"recon": float(recon.detach()), "mse": float(err.detach().square().mean()),
                       "group_norm": float(gn.detach()), "energy": e_val,
                       "latent_dim": float(self.latent_dim)}

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, image_size={self.image_size}, "
                f"pre_levels={self.pre_levels}, full_dim={self.full_dim}, "
                f"latent_dim={self.latent_dim}, sigma={self.sigma}")


# ----------------------------------------------------------------------- baseline ConvVAE
class ConvVAE(nn.Module):
    """A conventional convolutional VAE (Kingma & Welling 2014): the baseline.

    Encoder: ``levels`` stride-2 3x3 convolutions (width doubling) -> linear -> ``(mu, logvar)``;
    decoder: linear -> ``levels`` (upsample x2, 3x3 conv) -> images. Gaussian likelihood
    (squared error in normalized units), standard-normal prior scaled by ``sigma``.

    Shapes: ``encode``: ``(N, C, H, W) -> (N, latent_dim)`` (the mean); ``decode``:
    ``(N, latent_dim) -> (N, C, H, W)``.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, in_channels: int, image_size: Sequence[int], latent_dim: int,
                 width: int = 32, levels: int = 2, sigma: float = 1.0,
                 mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        in_channels = check_count("in_channels", in_channels)
        latent_dim = check_count("latent_dim", latent_dim)
        width = check_count("width", width)
        levels = check_count("levels", levels)
        h, w = (check_count("image_size", s) for s in image_size)
        check_divisible((h, w), levels, what=f"ConvVAE image_size {(h, w)}")
        self.in_channels, self.image_size, self.sigma = in_channels, (h, w), float(sigma)
        self._latent_dim = latent_dim
        enc: list[nn.Module] = []
        c = in_channels
        for k in range(levels):
            enc += [nn.Conv2d(c, width * 2**k, 3, stride=2, padding=1), nn.SiLU()]
            c = width * 2**k
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        self.feat = (c, h // 2**levels, w // 2**levels)
        n_feat = math.prod(self.feat)
        self.to_stats = nn.Linear(n_feat, 2 * latent_dim)
        self.from_latent = nn.Linear(latent_dim, n_feat)
        dec: list[nn.Module] = []
        for k in reversed(range(levels)):
            out = width * 2 ** (k - 1) if k > 0 else width
            dec += [nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(c, out, 3, padding=1)]
            c = out
        dec += [nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    @property
    def latent_dim(self) -> int:
        return self._latent_dim

    def stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        want = (self.in_channels, *self.image_size)
        if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"images must have shape (N, {want[0]}, {want[1]}, {want[2]}), got "
                             + (f"{tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__))
        check_like_parameters(self, x, "the image batch")
        mu, logvar = self.to_stats(self.encoder((x - self.mean) / self.std)).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 6)

    def encode(self, x: Tensor) -> Tensor:
        return self.stats(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"latents must have shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        check_like_parameters(self, z, "latents")
        y = self.decoder(self.from_latent(z).view(z.shape[0], *self.feat))
        return y * self.std + self.mean

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu = self.encode(x)
        return self.decode(mu), mu

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """As :meth:`HyperbolicAutoencoder.sample`."""
        return self.decode(self.prior_sample(n, generator))

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """As :meth:`HyperbolicAutoencoder.prior_sample`."""
        n = check_count("n", n, least=0)
        return torch.randn(n, self.latent_dim, generator=generator).to(self.mean) * self.sigma

    def loss(self, x: Tensor, kl_weight: float = 1.0, noise_scale: float = 1.0,
             generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """Negative ELBO with a Gaussian likelihood of variance ``noise_scale**2`` (normalized
        units): ``||X_hat - X||^2 / (2 noise^2) + kl_weight KL(q(z|x) || N(0, sigma^2 I))``."""
        mu, logvar = self.stats(x)
        eps = torch.randn(mu.shape, generator=generator).to(mu)
        z = mu + eps * (0.5 * logvar).exp()
        x_hat = self.decode(z)
        err = (x_hat - x) / self.std
        recon = err.square().flatten(1).sum(1).mean()
        s2 = self.sigma**2
        kl = 0.5 * ((logvar.exp() + mu.square()) / s2 - 1 - logvar + math.log(s2)).sum(1).mean()
        total = recon / (2 * noise_scale**2) + kl_weight * kl
        return total, {"recon": float(recon.detach()), "mse": float(err.detach().square().mean()),
                       "kl": float(kl.detach())}
