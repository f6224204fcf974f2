"""Configuration of a volume-segmentation run (model, windows/augmentation, training).

Named configs live in ``fhcnn/configs/<name>.yaml`` (``video``, ``video-tiny``, ``paper-video``);
``--set model.width=96`` style overrides address these fields. Every option string is a
``Literal`` (see :mod:`fhcnn.options`), so a bad value is refused when the config is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..options import Activation, Arch, MemoryMode, Norm, Opening, WaveletKind
from ..training import TrainConfig

__all__ = ["ModelConfig", "DataConfig", "SegmentConfig", "TrainConfig", "ParallelConfig", "UnlabelledKind",
           "FLIP_KEYS"]

#: The ``data`` flag that turns a training window over along each spatial axis (0 = D, 1 = H, 2 = W).
FLIP_KEYS = ("reverse_depth", "flip_height", "flip_width")

_AXES = ("D", "H", "W")

#: The loss on unlabelled voxels (see :class:`fhcnn.engine.losses.UnlabelledTerm`).
UnlabelledKind = Literal["none", "entropy", "pseudo", "teacher"]


@dataclass
class ModelConfig:
    """The network. ``arch="hyperbolic"``: :class:`fhcnn.models.DenseHyperbolicModel` with
    ``pre_levels`` 3D Haar transforms of the input, an ``opening`` to ``width`` channels and
    ``units`` like ``"5up,6up,8"`` (the paper's Table 2); ``arch="unet"``: the 3D U-Net
    baseline (``unet_base`` channels, ``unet_levels`` poolings). ``memory`` is the gradient
    mode of the hyperbolic net (``reversible``: memory-free; ``block``; ``plain`` autograd).
    ``conv_head``: channels of a 3x3x3 convolution and ReLU between the hyperbolic net's last
    state and its 1x1 classifier (0 = the classifier alone).
    ``spectral_head``: hidden units of a :class:`fhcnn.models.SpectralHead` whose per-pixel
    logits (from every channel's whole depth axis) are added to the network's; only with 2D
    labels over the whole depth (``data.reduce_depth``; ``fhcnn change``), 0 = none."""

    arch: Arch = "hyperbolic"
    width: int = 192
    pre_levels: int = 2
    units: str = "2up,2up,2"
    hidden: str = ""            # "" = the state's width; "64,16,8" = one per unit; "32" = all
    h: float = 0.5
    norm: Norm = "group"
    activation: Activation = "relu"
    opening: Opening = "conv"
    wavelet: WaveletKind = "haar"
    init_scale: float = 1.0
    memory: MemoryMode = "reversible"
    unet_base: int = 16
    unet_levels: int = 2
    conv_head: int = 0          # channels of a 3x3x3 conv + ReLU before the 1x1 classifier (0 = none)
    spectral_head: int = 0      # hidden units of a per-pixel MLP over the whole depth (0 = none)

    def __post_init__(self) -> None:
        from .models import parse_hidden, parse_units

        parse_units(self.units)  # raises ValueError naming the bad unit
        parse_hidden(self.hidden)
        for name in ("width", "unet_base", "unet_levels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pre_levels < 0:
            raise ValueError(f"pre_levels must be >= 0, got {self.pre_levels}")
        if self.conv_head < 0:
            raise ValueError(f"conv_head must be >= 0 (0 = the 1x1 classifier alone), got {self.conv_head}")
        if self.spectral_head < 0:
            raise ValueError(f"spectral_head must be >= 0 (0 = none), got {self.spectral_head}")
        if not self.h > 0:
            raise ValueError(f"h must be > 0, got {self.h}")


@dataclass
class DataConfig:
    """Scale, training windows, augmentation, loss weighting and prediction.

    ``scale``: resize factor of the volume's (H, W) before training (prediction is resized
    back to the input size). Below 1 a downscaled cell mixes several pixels, so a held-out
    pixel can share a cell with a training pixel and held-out scores are optimistic.

    Windows of ``window_depth x window_height x window_width`` voxels (0 = the whole axis,
    rounded up to the network's size multiple) are cut at *any* position around a randomly
    chosen labelled voxel (class-balanced choice), the volume continued by reflection, so
    every labelled voxel is seen at every position modulo the network's stride.
    Prediction averages the probabilities over ``predict_shifts`` shifted tilings
    (and, with ``predict_flip``, each tiling mirrored along :attr:`mirror_axis`), each of windows
    overlapping by about
    ``predict_overlap`` of a window along every axis (0.5: each voxel in about 2 windows an
    axis, 8 in 3D; 0: side by side, each voxel in one window of a tiling: the fastest, with the
    window's edges unblended). Prediction windows (``predict_depth`` ...)
    default to the training window (``-1``): group normalization takes its statistics over
    the window, so a net trained on small windows sees different statistics on the whole
    volume (``0`` = whole axis).

    ``reduce_depth``: the labels are one 2D ``(H, W)`` map (255 = unlabelled) for the whole
    depth axis (e.g. a change map of a hyperspectral scene whose bands are the depth). The loss
    (class-balanced cross entropy, plus ``dice``) is taken on the depth-mean of the logits,
    ``(N, K, h, w)``; training windows always span the whole depth axis (rounded up to the
    network's size multiple, continued by reflection; ``window_depth`` is not used) and are cut
    in (H, W) around a labelled pixel. Flips, rotate/zoom, jitter and noise apply as usual;
    ``reverse_depth`` is ignored (the band order is kept). Depth windows always start at
    band 0, so the shifted prediction tilings shift only H and W. The trained model returns
    the depth-mean logits broadcast over depth (see :class:`~fhcnn.engine.models.DepthMean`).

    Unlabelled data (:class:`~fhcnn.engine.losses.UnlabelledTerm`): ``unlabelled`` adds a loss on
    the unlabelled voxels of each window (``"none"``, ``"entropy"``, ``"pseudo"``: confident
    pseudo-labels, ``"teacher"``: a mean teacher's confident predictions on a flipped view),
    weighted ``unlabelled_weight`` (ramped in from 0 at ``unlabelled_start`` to full at
    ``unlabelled_full``, fractions of the training steps), on voxels whose reference
    probability exceeds ``pseudo_threshold``; ``teacher_ema`` is the teacher's weight decay.
    ``context_windows``: the fraction of each batch's windows placed uniformly at random in
    the volume instead of around a labelled voxel (at least one window per batch stays
    around a label), so unlabelled context is seen too.
    """

    scale: float = 1.0
    window_depth: int = 16
    window_height: int = 64
    window_width: int = 64
    batch_size: int = 2
    flip_width: bool = True
    flip_height: bool = False
    reverse_depth: bool = True
    rotate: float = 0.0         # random in-plane rotation of each window, up to this many degrees
    zoom: float = 0.0           # random zoom of each window by a factor in [1/(1+zoom), 1+zoom]
    jitter: float = 0.1         # brightness/contrast jitter (in standard deviations)
    noise: float = 0.02         # Gaussian noise (in standard deviations)
    balance: float = 1.0        # class weights proportional to count**-balance
    dice: float = 0.0           # weight of an added soft Dice loss
    coords: bool = False        # append normalized (h, w) coordinates as input channels
    predict_shifts: int = 4
    predict_flip: bool = True
    predict_overlap: float = 0.5  # fraction of a prediction window its neighbours overlap
    predict_depth: int = -1     # prediction window (-1 = the training window, 0 = whole axis)
    predict_height: int = -1
    predict_width: int = -1
    predict_batch: int = 4      # prediction windows per network call (same result, faster)
    eval_every: int = 0         # score eval labels every N steps (0 = only at the end)
    reduce_depth: bool = False  # 2D (H, W) labels, loss on the depth-mean logits (see above)
    unlabelled: UnlabelledKind = "none"  # loss on the unlabelled voxels (see above)
    unlabelled_weight: float = 1.0
    unlabelled_start: float = 0.2  # ramp of the unlabelled weight, fractions of train.steps
    unlabelled_full: float = 0.5
    pseudo_threshold: float = 0.9
    teacher_ema: float = 0.99
    context_windows: float = 0.0  # fraction of windows placed at random, not around a label

    def __post_init__(self) -> None:
        if not 0 < self.scale <= 4:
            raise ValueError(f"scale must be in (0, 4], got {self.scale}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("window_depth", "window_height", "window_width"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = the whole axis), got {getattr(self, name)}")
        for name in ("predict_depth", "predict_height", "predict_width"):
            if getattr(self, name) < -1:
                raise ValueError(f"{name} must be >= 0, or -1 for the training window, "
                                 f"got {getattr(self, name)}")
        if self.predict_batch < 1:
            raise ValueError(f"predict_batch must be >= 1, got {self.predict_batch}")
        if self.predict_shifts < 1:
            raise ValueError(f"predict_shifts must be >= 1, got {self.predict_shifts}")
        if not 0 <= self.predict_overlap < 1:
            raise ValueError(f"predict_overlap must be in [0, 1), got {self.predict_overlap}")
        for name in ("rotate", "zoom", "jitter", "noise", "balance", "dice"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("unlabelled_start", "unlabelled_full", "context_windows"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.unlabelled_weight < 0:
            raise ValueError(f"unlabelled_weight must be >= 0, got {self.unlabelled_weight}")
        if not 0 < self.pseudo_threshold < 1:
            raise ValueError(f"pseudo_threshold must be in (0, 1), got {self.pseudo_threshold}")
        if not 0 <= self.teacher_ema < 1:
            raise ValueError(f"teacher_ema must be in [0, 1), got {self.teacher_ema}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")

    @property
    def flipped_axes(self) -> list[int]:
        """The spatial axes (0 = D, 1 = H, 2 = W) training windows are flipped along, in order
        (:data:`FLIP_KEYS`; D never with ``reduce_depth``, which keeps the band order)."""
        return [a for a, key in enumerate(FLIP_KEYS) if getattr(self, key) and not (a == 0 and self.reduce_depth)]

    @property
    def mirror_axis(self) -> int | None:
        """The spatial axis (0 = D, 1 = H, 2 = W) that the mirrored prediction tiling
        (``predict_flip``) and the mean teacher's second view flip: the last of
        :attr:`flipped_axes` (W where training windows are flipped along W, else H, else D);
        ``None`` where training flips none (the network never sees a mirror image, so none is
        predicted)."""
        flipped = self.flipped_axes
        return flipped[-1] if flipped else None

    @property
    def prediction_mirror(self) -> int | None:
        """The axis the prediction's mirrored tilings flip: :attr:`mirror_axis` with
        ``predict_flip``, else ``None`` (no mirrored tiling)."""
        return self.mirror_axis if self.predict_flip else None


@dataclass
class ParallelConfig:
    """The ``parallel:`` section: how one volume is split in space over processes.

    Attributes:
        space: processes per data-parallel replica that share one volume, each holding one
            slab (``1``: no split, today's behaviour exactly). The ``torchrun`` world size
            must be a multiple of it; the quotient is the number of data-parallel replicas.
        axes: the split spatial axes of the ``(D, H, W)`` volume (``0`` = D: frames of a
            video, bands of a hyperspectral scene; ``1`` = H; ``2`` = W).
        grid: processes along each of ``axes`` (product = ``space``); empty: all ``space``
            processes along the single axis in ``axes``.
    """

    space: int = 1
    axes: list[int] = field(default_factory=lambda: [0])
    grid: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.space < 1:
            raise ValueError(f"space must be >= 1 (processes per replica), got {self.space}")
        axes = list(self.axes)
        if not axes or len(set(axes)) != len(axes) or any(a not in (0, 1, 2) for a in axes):
            raise ValueError(f"axes must be distinct spatial axes among 0 (D), 1 (H), 2 (W), got {axes}")
        if self.grid:
            if len(self.grid) != len(axes) or any(g < 1 for g in self.grid):
                raise ValueError(f"grid must give a positive number of processes for each of the axes "
                                 f"{axes}, got {list(self.grid)}")
            if math.prod(self.grid) != self.space:
                raise ValueError(f"grid {list(self.grid)} has {math.prod(self.grid)} processes but "
                                 f"space={self.space}")
        elif len(axes) > 1 and self.space > 1:
            raise ValueError(f"with several split axes {axes} give parallel.grid (processes along "
                             f"each axis, product = space={self.space})")

    @property
    def split_grid(self) -> tuple[int, ...]:
        """Processes along each of :attr:`axes`."""
        if self.grid:
            return tuple(int(g) for g in self.grid)
        return (int(self.space),) + (1,) * (len(self.axes) - 1)

    def describe(self) -> str:
        return " x ".join(f"{_AXES[a]}/{g}" for a, g in zip(self.axes, self.split_grid))


@dataclass
class SegmentConfig:
    """A segmentation run: ``model``, ``data``, ``train`` and ``parallel`` sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=1000, lr=2e-3, schedule="cosine", warmup_steps=20, grad_clip=1.0, checkpoint_every=0,
        keep_last=1, log_every=10, threads=0))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # 1 = no split
