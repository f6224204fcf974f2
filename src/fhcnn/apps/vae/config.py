"""Configuration of ``fhcnn vae``: model, data, loss, evaluation and training sections, and the
plain convolutional VAE baseline's settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...data.images import Dataset
from ...options import Activation, Norm, WaveletKind
from ...training import TrainConfig

UnitSpec = tuple[int, Literal["down", "up"] | None]

__all__ = ["VAEConfig", "VAEModelConfig", "VAEDataConfig", "VAELossConfig", "VAEEvalConfig",
           "BaselineConfig", "DEFAULT_CONFIG"]

#: The shipped config ``fhcnn vae train`` starts from (``src/fhcnn/configs/vae-digits.yaml``).
DEFAULT_CONFIG = "vae-digits"

@dataclass
class VAEModelConfig:
    """The autoencoder (see :class:`~fhcnn.models.HyperbolicAutoencoder`)."""

    units: list[UnitSpec] = field(default_factory=lambda: [(2, "down"), (2, "down"), (2, None)])
    pre_levels: int = 1
    hidden: int | None = 16
    h: float = 0.2
    norm: Norm = "group"
    activation: Activation = "relu"
    wavelet: WaveletKind = "haar"
    reversible: bool = True
    sigma: float = 1.0
    p_init: Literal["identity", "orthogonal", "pca"] = "pca"
    prune_threshold: float = 1e-3
    normalize: Literal["mean-image", "global"] = "mean-image"  # subtract the mean image or the
    # per-channel mean; either way divide by the per-channel std of the pixel values
    # filled in from the data when the run starts (kept in the resolved config)
    in_channels: int | None = None
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.prune_threshold < 0:
            raise ValueError(f"prune_threshold must be >= 0, got {self.prune_threshold}")


@dataclass
class VAEDataConfig:
    """Which images, and how they are split."""

    dataset: Dataset = "digits"
    path: str | None = None
    size: int | None = None          # digits 16, lfw/mnist 32; folder: resize to this (None: keep)
    crop: int | None = None          # folder: centre square cut before resizing (None: largest)
    limit: int | None = None         # use only the first N images
    n_train: int | None = None       # None: all but n_eval
    n_eval: float = 0.15             # held-out images: a fraction <= 0.5, or a count (at most half)
    split: Literal["random", "ordered"] = "random"
    batch_size: int = 128

    def __post_init__(self) -> None:
        for name in ("size", "crop", "limit", "n_train"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 (or null), got {v}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (0 < self.n_eval <= 0.5 or (self.n_eval >= 1 and float(self.n_eval).is_integer())):
            raise ValueError(f"n_eval must be a fraction in (0, 0.5] (at most half of the images are held "
                             f"out) or a whole count >= 1, got {self.n_eval}")


@dataclass
class VAELossConfig:
    """Weights of the objective and the pruning schedule."""

    alpha: float = 3.0               # group norm ||P||_{1,2}
    beta: float = 50.0               # energy distance
    energy_start: float = 0.3        # fraction of the run before the energy term starts
    energy_ramp: float = 0.2         # fraction of the run over which beta ramps up
    prox_weight: float = 1.0         # proximal step tau = lr * prox_weight after each step

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "prox_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("energy_start", "energy_ramp"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a fraction of the run in [0, 1], got {getattr(self, name)}")


@dataclass
class VAEEvalConfig:
    """What is measured after training."""

    n_eval: int = 500                # eval images for recon error / energy distance
    n_samples: int = 500             # generated samples for the classifier check
    classifier: bool = True          # digits / labelled MNIST: classify generated samples
    seed: int = 1234

    def __post_init__(self) -> None:
        for name in ("n_eval", "n_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class VAEConfig:
    """The VAE run. CPU threads are ``train.threads``, as in every command (the digits net is
    made of many tiny operations: one thread is fastest). ``threads`` is the older name of the
    same setting, still read: it moves into ``train.threads`` (both given and different: refused).
    """

    threads: int | None = None
    model: VAEModelConfig = field(default_factory=VAEModelConfig)
    data: VAEDataConfig = field(default_factory=VAEDataConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    eval: VAEEvalConfig = field(default_factory=VAEEvalConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=3000, lr=2e-3, schedule="constant", checkpoint_every=1000, keep_last=1,
        log_every=25, val_every=1000))

    def __post_init__(self) -> None:
        if self.threads is not None:
            if self.train.threads is not None and self.train.threads != self.threads:
                raise ValueError(f"threads={self.threads} (the older name of train.threads) and "
                                 f"train.threads={self.train.threads} disagree; give train.threads only")
            if not isinstance(self.threads, int) or self.threads < -1:
                raise ValueError(f"threads (train.threads) must be >= 0 (0 = the free physical "
                                 f"cores), -1 or null (torch's default), got {self.threads!r}")
            self.train.threads, self.threads = self.threads, None


@dataclass
class BaselineConfig:
    """The conventional convolutional VAE baseline (:class:`~fhcnn.models.ConvVAE`)."""

    width: int = 32
    levels: int = 2
    kl_weight: float = 1.0
    noise_scale: float = 0.35        # likelihood std in normalized units
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=1500, lr=2e-3, checkpoint_every=0, keep_last=1, log_every=50))
