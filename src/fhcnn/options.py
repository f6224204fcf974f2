"""Constants and option types shared by the library and the engine (one home each).

Every string option of a config or a command is a ``Literal`` type, so a config file with a
value outside the list is refused when it is loaded (naming the key and the allowed values),
never later in the middle of a run. The options shared across layers live here; a vocabulary
one package owns lives in that package (the change channels and targets in
:mod:`fhcnn.apps.change.config`, the image datasets in :mod:`fhcnn.data.images`).
"""

from __future__ import annotations

from typing import Literal

# the layer options have their home beside the layer; re-exported for configs
from .layers import Activation, Norm

__all__ = [
    "IGNORE", "IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "Arch", "MemoryMode", "MEMORY_MODES", "Opening",
    "WaveletKind", "Norm", "Activation",
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
