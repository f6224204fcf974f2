"""Configuration of ``fhcnn change``: the dense engine's model/data/train sections plus the
change-detection options (:class:`ChangeOptions`). The scene's resize factor is the engine's
``data.scale`` (``--scale``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...engine.config import DataConfig, ModelConfig, TrainConfig
from ...options import BandNormalization, ChangeChannels, ChangeTarget

__all__ = ["ChangeOptions", "ChangeConfig", "DEFAULT_CONFIG"]

#: The shipped config ``fhcnn change`` starts from (``src/fhcnn/configs/change.yaml``).
DEFAULT_CONFIG = "change"


@dataclass
class ChangeOptions:
    """Change-detection specific settings.

    Attributes:
        channels: ``"dates"`` (2 channels: before, after), ``"dates+diff"`` (3: + after - before)
            or ``"dates+diff+ratio+angle"`` (5: + the log ratio and the spectral angle of the
            dates, :func:`~fhcnn.apps.change.pipeline.change_features`).
        target: where the 2D labels meet the 3D output ``(2, B, H, W)``: ``"mean"`` (default):
            the loss is taken on the band-mean of the logits (a 2D x-y map), the prediction is
            the softmax of that mean (the engine's ``data.reduce_depth``, which this option
            sets: on for ``"mean"``, off otherwise); ``"all"``: every band slice carries the labels (the
            engine's per-voxel loss; prediction = band-mean of the probabilities);
            ``"slice"``: only band ``slice_index`` carries them (the paper's wording) and the
            prediction is read there.
        slice_index: band used with ``target="slice"`` (-1 = the middle band).
        normalize: ``"band"``: standardize each band over both dates; ``"none"``.
        threshold: change probability above which a pixel is called changed.
    """

    channels: ChangeChannels = "dates"
    target: ChangeTarget = "mean"
    slice_index: int = -1
    normalize: BandNormalization = "band"
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")


@dataclass
class ChangeConfig:
    """``fhcnn change`` run configuration: engine model/data/train + :class:`ChangeOptions`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    change: ChangeOptions = field(default_factory=ChangeOptions)
    train: TrainConfig = field(default_factory=TrainConfig)
