"""Constants and option types shared by the whole package (one home each).

Every string option of a config or a command is a ``Literal`` type defined here, so a config
file with a value outside the list is refused when it is loaded (naming the key and the
allowed values), never later in the middle of a run.
"""

from __future__ import annotations

from typing import Literal

# the layer options have their home beside the layer; re-exported for configs
from .layers import Activation, Norm

__all__ = [
    "IGNORE", "IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "Arch", "MemoryMode", "MEMORY_MODES", "Opening",
    "WaveletKind", "Norm", "Activation", "ChangeChannels", "ChangeTarget",
    "BandNormalization", "Dataset", "DATASETS",
]

#: Label value of an unlabelled (not trained on, not scored) voxel or pixel.
IGNORE = 255

#: Suffixes of single images read by Pillow (frames, masks, image folders, label maps).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Suffixes of video files read by imageio (ffmpeg).
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")

#: Dense segmentation network: the fully reversible hyperbolic net or the 3D U-Net baseline.
Arch = Literal["hyperbolic", "unet"]
#: Gradient mode of the hyperbolic network, by name (see :data:`MEMORY_MODES`).
MemoryMode = Literal["reversible", "block", "plain"]
#: ``HyperbolicNetwork(reversible=...)`` value of each :data:`MemoryMode`.
MEMORY_MODES: dict[str, bool | str] = {"reversible": True, "block": "block", "plain": False}
#: How the dense model widens its input to the network's width.
Opening = Literal["conv", "zeros"]
#: Wavelet of the network's transitions.
WaveletKind = Literal["haar", "learnable"]
#: Input channels of a change volume: the two dates, + their difference, + the log ratio of the
#: dates and the spectral angle between them (the features a change analyst would compute).
ChangeChannels = Literal["dates", "dates+diff", "dates+diff+ratio+angle"]
#: Where 2D change labels meet the 3D output (see :class:`fhcnn.apps.change.ChangeOptions`).
ChangeTarget = Literal["mean", "all", "slice"]
#: Standardization of a hyperspectral scene's bands.
BandNormalization = Literal["band", "none"]
#: Image datasets of the autoencoder.
Dataset = Literal["digits", "lfw", "mnist-idx", "folder"]
DATASETS: tuple[str, ...] = ("digits", "lfw", "mnist-idx", "folder")
