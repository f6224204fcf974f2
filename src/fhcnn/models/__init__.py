"""Models built on :class:`fhcnn.HyperbolicNetwork`, and the U-Net baseline."""

from .autoencoder import ConvVAE, HyperbolicAutoencoder
from .dense import DenseHyperbolicModel
from .unet import UNet3D

__all__ = ["DenseHyperbolicModel", "HyperbolicAutoencoder", "ConvVAE", "UNet3D"]
