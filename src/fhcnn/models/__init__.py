"""Models built on :class:`fhcnn.HyperbolicNetwork`, and the U-Net baseline."""

from .autoencoder import ConvVAE, HyperbolicAutoencoder
from .dense import DenseHyperbolicModel
from .heads import SpectralHead
from .unet import UNet3D

__all__ = ["DenseHyperbolicModel", "HyperbolicAutoencoder", "ConvVAE", "SpectralHead", "UNet3D"]
