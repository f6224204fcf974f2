"""Models built on :class:`fhcnn.HyperbolicNetwork`."""

from .dense import DenseHyperbolicModel

__all__ = ["DenseHyperbolicModel"]
