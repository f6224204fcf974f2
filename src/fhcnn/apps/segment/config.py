"""Configuration of ``fhcnn segment``: the dense engine's :class:`SegmentConfig` (model, data,
train), loaded from the shipped ``video`` config unless another is given."""

from __future__ import annotations

from ...engine.config import SegmentConfig

__all__ = ["SegmentConfig", "DEFAULT_CONFIG"]

#: The shipped config ``fhcnn segment`` starts from (``src/fhcnn/configs/video.yaml``).
DEFAULT_CONFIG = "video"
