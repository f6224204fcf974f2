"""Configuration of ``fhcnn volume``: the dense engine's model/data/train/parallel sections plus
the volume options (:class:`VolumeOptions`: baselines, voxel spacing, windows per axis)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...engine.config import DataConfig, ModelConfig, ParallelConfig, TrainConfig

__all__ = ["VolumeOptions", "VolumeConfig", "DEFAULT_CONFIG", "Baseline", "BASELINES", "parse_baselines",
           "VerticalAxis", "VERTICAL_AXES"]

#: The shipped config ``fhcnn volume`` starts from (``src/fhcnn/configs/volume.yaml``).
DEFAULT_CONFIG = "volume"

#: The baselines a scored run trains and scores beside fhcnn, on the same annotation.
Baseline = Literal["copy", "forest", "unet"]
BASELINES: tuple[str, ...] = ("copy", "forest", "unet")


#: ``volume.vertical_axis``: the axis kept upright (``auto``: the one the labels are layers along).
VerticalAxis = Literal["auto", "none", "D", "H", "W"]
VERTICAL_AXES: tuple[str, ...] = ("auto", "none", "D", "H", "W")


def parse_baselines(text: str) -> list[str]:
    """``"copy,forest,unet"`` -> ``["copy", "forest", "unet"]`` (``""`` or ``"none"``: none).

    Raises:
        ValueError: a name that is not a baseline.
    """
    names = [t.strip() for t in text.split(",") if t.strip() and t.strip() != "none"]
    bad = [n for n in names if n not in BASELINES]
    if bad:
        raise ValueError(f"unknown baseline {bad[0]!r}: use a comma-separated subset of "
                         f"{', '.join(BASELINES)} (or none)")
    return names


@dataclass
class VolumeOptions:
    """Volume-specific settings.

    Attributes:
        baselines: the baselines trained and scored beside fhcnn when ``--eval-labels`` is given
            (comma-separated: ``copy``: each unlabelled voxel takes the label of the nearest
            labelled voxel; ``forest``: a random forest on each voxel's channels; ``unet``: the
            3D U-Net with the same annotation, windows and training steps).
        forest_trees: trees of the forest baseline.
        forest_samples: labelled voxels the forest is fitted on (a class-balanced sample).
        spacing: voxel size along (D, H, W), e.g. ``"3,1,1"``, overriding the file's; ``""``: the
            file's (isotropic where the format carries none).
        physical_windows: with anisotropic spacing, shorten the window along the coarse axes
            so each window spans about the same physical length on every axis (the window of
            the config is the one of the finest axis); ``false``: windows as configured.
        vertical_axis: the axis (``D``, ``H`` or ``W``) along which training windows are never
            flipped: turned over along it, classes that are layers ordered along it (the
            formations of a seismic cube, in depth) come in the reverse order.
            ``auto``: the axis the labels are layers along, if any
            (:func:`~fhcnn.apps.volume.vertical.label_order`; of a SEG-Y cube only its samples
            are checked); ``none``: flips along every axis the ``data`` section flips.
        seed: seed of the forest baseline's sample and trees.
    """

    baselines: str = "copy,forest,unet"
    forest_trees: int = 100
    forest_samples: int = 20000
    spacing: str = ""
    physical_windows: bool = True
    vertical_axis: VerticalAxis = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        parse_baselines(self.baselines)
        if self.forest_trees < 1:
            raise ValueError(f"forest_trees must be >= 1, got {self.forest_trees}")
        if self.forest_samples < 2:
            raise ValueError(f"forest_samples must be >= 2, got {self.forest_samples}")
        if self.spacing:
            parse_spacing(self.spacing)
        if self.vertical_axis not in VERTICAL_AXES:
            raise ValueError(f"vertical_axis must be one of {', '.join(VERTICAL_AXES)}, got {self.vertical_axis!r}")


def parse_spacing(text: str) -> tuple[float, float, float]:
    """``"3,1,1"`` -> ``(3.0, 1.0, 1.0)``: three positive voxel sizes along (D, H, W)."""
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"spacing={text!r}: use three voxel sizes along (D, H, W), e.g. '3,1,1'") from None
    if len(vals) != 3 or not all(v > 0 for v in vals):
        raise ValueError(f"spacing={text!r}: use three positive voxel sizes along (D, H, W), e.g. '3,1,1'")
    return vals  # type: ignore[return-value]


@dataclass
class VolumeConfig:
    """``fhcnn volume`` run configuration: engine model/data/train/parallel + :class:`VolumeOptions`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    volume: VolumeOptions = field(default_factory=VolumeOptions)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
