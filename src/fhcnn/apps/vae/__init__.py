"""``fhcnn vae``: the hyperbolic autoencoder / VAE (paper sections 4 and 6.2).

    from fhcnn.apps.vae import VAEConfig, train_vae
    metrics = train_vae(VAEConfig(), "runs/digits")
"""

from .actions import dataset_overrides, interpolate, normality, sample, train_command, train_summary
from .config import (
                     DEFAULT_CONFIG,
                     BaselineConfig,
                     VAEConfig,
                     VAEDataConfig,
                     VAEEvalConfig,
                     VAELossConfig,
                     VAEModelConfig,
)
from .evaluation import classifier_confidence, digit_classifier, evaluate
from .outputs import grid_array, interpolate_latents, normality_report, save_figure, save_grid
from .pipeline import (
                     beta_at,
                     build_model,
                     load_images,
                     load_run,
                     prepare_training,
                     resolve_image,
                     train_baseline,
                     train_vae,
)

__all__ = ["VAEConfig", "VAEModelConfig", "VAEDataConfig", "VAELossConfig", "VAEEvalConfig",
           "BaselineConfig", "DEFAULT_CONFIG", "load_images", "resolve_image", "beta_at", "train_vae",
           "build_model", "load_run", "evaluate", "save_grid", "grid_array", "save_figure",
           "digit_classifier", "classifier_confidence", "normality_report", "interpolate_latents",
           "train_baseline", "prepare_training", "dataset_overrides", "sample", "interpolate", "normality",
           "train_summary", "train_command"]
