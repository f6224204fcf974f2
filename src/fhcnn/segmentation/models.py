"""Networks for volume segmentation: the fully reversible hyperbolic model and a 3D U-Net.

Both are wrapped in :class:`VolumeSegmenter`, which holds the input normalization (per-channel
mean and standard deviation of the training volume, saved with the weights) so a checkpoint
segments raw volumes by itself.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import DenseHyperbolicModel
from ..network import Unit

__all__ = ["UNet3D", "VolumeSegmenter", "parse_units", "build_model"]


def parse_units(spec: str | Sequence[Any]) -> list[Unit]:
    """``"5up,6up,8"`` (or ``[[5, "up"], [6, "up"], [8, None]]``) -> ``[(5, "up"), (6, "up"), (8, None)]``.

    Raises:
        ValueError: a unit that is not ``<layers>[up|down]``.
    """
    if isinstance(spec, str):
        out: list[Unit] = []
        for part in spec.replace(" ", "").split(","):
            m = re.fullmatch(r"(\d+)(up|down)?", part)
            if not m:
                raise ValueError(f"bad unit {part!r} in units={spec!r}: use e.g. '5up,6up,8' "
                                 "(layers, then an optional 'up' or 'down' transition)")
            out.append((int(m.group(1)), m.group(2)))  # type: ignore[arg-type]
        return out
    units = [(int(n), t) for n, t in spec]
    for n, t in units:
        if t not in ("up", "down", None):
            raise ValueError(f"bad transition {t!r} in units={spec!r}")
    return units  # type: ignore[return-value]


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        groups = 8 if cout % 8 == 0 else 1
        super().__init__(nn.Conv3d(cin, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True),
                         nn.Conv3d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True))


class UNet3D(nn.Module):
    """A conventional 3D U-Net (the baseline): conv-GN-ReLU blocks, max-pool down, transposed-conv
    up, skip connections by concatenation, 1x1 classifier.

    Args:
        in_channels, num_classes: data channels and output classes.
        base: channels of the first level (doubled at each coarser level).
        levels: number of poolings; every spatial size must be a multiple of ``2**levels``.

    Shapes: ``(N, in_channels, D, H, W) -> (N, num_classes, D, H, W)``.
    """

    def __init__(self, in_channels: int, num_classes: int, base: int = 16, levels: int = 2) -> None:
        super().__init__()
        if levels < 1 or base < 1:
            raise ValueError(f"levels and base must be >= 1, got {levels}, {base}")
        self.levels = levels
        ch = [base * 2**k for k in range(levels + 1)]
        self.down = nn.ModuleList([_Block(in_channels, ch[0])] +
                                  [_Block(ch[k - 1], ch[k]) for k in range(1, levels + 1)])
        self.upconv = nn.ModuleList([nn.ConvTranspose3d(ch[k], ch[k - 1], 2, stride=2)
                                     for k in range(levels, 0, -1)])
        self.up = nn.ModuleList([_Block(2 * ch[k - 1], ch[k - 1]) for k in range(levels, 0, -1)])
        self.classifier = nn.Conv3d(ch[0], num_classes, 1)

    @property
    def size_multiple(self) -> int:
        return 2**self.levels

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for k, block in enumerate(self.down):
            if k:
                x = F.max_pool3d(x, 2)
            x = block(x)
            skips.append(x)
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips[:-1])):
            x = block(torch.cat([upconv(x), skip], 1))
        return self.classifier(x)


class VolumeSegmenter(nn.Module):
    """Normalizes a raw volume (per-channel ``(x - mean) / std``, buffers saved with the weights)
    and applies a dense network; ``(N, C, D, H, W) -> (N, K, D, H, W)`` logits."""

    def __init__(self, core: nn.Module, in_channels: int) -> None:
        super().__init__()
        self.core = core
        self.register_buffer("mean", torch.zeros(in_channels))
        self.register_buffer("std", torch.ones(in_channels))

    @property
    def size_multiple(self) -> int:
        return int(self.core.size_multiple)

    def set_normalization(self, mean: Tensor, std: Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-6))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return self.core((x - self.mean.view(shape)) / self.std.view(shape))


def build_model(cfg: Any, in_channels: int, num_classes: int) -> VolumeSegmenter:
    """A :class:`VolumeSegmenter` from a :class:`~fhcnn.segmentation.ModelConfig`."""
    if cfg.arch == "unet":
        core: nn.Module = UNet3D(in_channels, num_classes, cfg.unet_base, cfg.unet_levels)
    elif cfg.arch == "hyperbolic":
        hidden: Any = cfg.hidden
        if isinstance(hidden, str):
            hidden = hidden.strip() or None
        if isinstance(hidden, str):
            hidden = [int(v) for v in hidden.split(",")] if "," in hidden else int(hidden)
        if isinstance(hidden, (list, tuple)):
            hidden = [int(v) for v in hidden]
        core = DenseHyperbolicModel(
            in_channels, num_classes, cfg.width, parse_units(cfg.units), dim=3,
            pre_levels=cfg.pre_levels, opening=cfg.opening,
            hidden=hidden, h=cfg.h, norm=cfg.norm, activation=cfg.activation,
            wavelet=cfg.wavelet, init_scale=cfg.init_scale)
    else:
        raise ValueError(f"model.arch must be 'hyperbolic' or 'unet', got {cfg.arch!r}")
    return VolumeSegmenter(core, in_channels)
