"""Measures of a trained autoencoder: reconstruction error, energy distance of the latents to
the prior, and how confidently a digit classifier recognizes generated samples."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...data.images import ImageSet
from ...errors import InputError
from ...models.autoencoder import HyperbolicAutoencoder, energy_distance

__all__ = ["evaluate", "digit_classifier", "classifier_confidence", "latents", "full_transform",
           "reconstruct", "prior_energy", "classifier_input"]


@torch.no_grad()
def latents(model: HyperbolicAutoencoder, x: Tensor, bs: int = 256) -> Tensor:
    dev = model.P.device
    return torch.cat([model.encode(x[i:i + bs].to(dev)).cpu() for i in range(0, len(x), bs)])


@torch.no_grad()
def full_transform(model: HyperbolicAutoencoder, x: Tensor, bs: int = 256) -> Tensor:
    dev = model.P.device
    return torch.cat([model.transform(x[i:i + bs].to(dev)).cpu() for i in range(0, len(x), bs)])


@torch.no_grad()
def reconstruct(model: Any, x: Tensor, bs: int = 256) -> Tensor:
    dev = next(model.parameters()).device
    return torch.cat([model(x[i:i + bs].to(dev))[0].cpu() for i in range(0, len(x), bs)])


def prior_energy(z: Tensor, sigma: float, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    prior = torch.randn(z.shape, generator=g, dtype=torch.float64) * sigma
    return float(energy_distance(z.double(), prior))


@torch.no_grad()
def evaluate(model: Any, x: Tensor, seed: int = 1234) -> dict[str, float]:
    """Reconstruction error (pixel units, images in [0, 1]) and the energy distance between
    the latents of ``x`` and as many samples of the prior ``N(0, sigma^2 I)``."""
    model_was = model.training
    model.eval()
    try:
        x_hat = reconstruct(model, x)
        z = torch.cat([model.encode(x[i:i + 256].to(next(model.parameters()).device)).cpu()
                       for i in range(0, len(x), 256)])
    finally:
        model.train(model_was)
    return {"recon_mse": float((x_hat - x).square().mean()),
            "recon_mse_clamped": float((x_hat.clamp(0, 1) - x).square().mean()),
            "energy_distance": prior_energy(z, model.sigma, seed),
            "latent_dim": float(model.latent_dim)}


def digit_classifier(images: ImageSet, crop: int | None = None, seed: int = 0) -> Any:
    """A small MLP (scikit-learn) trained on ``images`` (with labels), on the centre
    ``crop x crop`` pixels (digits: the original 8x8)."""
    from sklearn.neural_network import MLPClassifier

    if images.labels is None:
        raise InputError(f"{images.name}: no labels, cannot train a classifier")
    x = classifier_input(images.batch(), crop)
    clf = MLPClassifier((128,), max_iter=500, random_state=seed)
    clf.fit(x, images.labels.numpy())
    clf.crop_ = crop
    return clf


def classifier_input(x: Tensor, crop: int | None) -> np.ndarray:
    if crop is not None:
        h, w = x.shape[-2:]
        t, l = (h - crop) // 2, (w - crop) // 2
        x = x[..., t:t + crop, l:l + crop]
    return x.clamp(0, 1).flatten(1).numpy()


def classifier_confidence(clf: Any, x: Tensor) -> float:
    """Mean of the classifier's top class probability on images ``x`` (clamped to [0, 1])."""
    return float(clf.predict_proba(classifier_input(x, clf.crop_)).max(1).mean())
