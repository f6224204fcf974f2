"""Models built on :class:`fhcnn.HyperbolicNetwork`."""

from .autoencoder import ConvVAE, HyperbolicAutoencoder
from .dense import DenseHyperbolicModel

__all__ = ["DenseHyperbolicModel", "HyperbolicAutoencoder", "ConvVAE"]
