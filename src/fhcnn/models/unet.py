"""A conventional 3D U-Net: the baseline the hyperbolic segmentation network is measured against."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..wavelets import check_count, check_divisible

__all__ = ["UNet3D"]


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
        in_channels = check_count("in_channels", in_channels)
        num_classes = check_count("num_classes", num_classes)
        base = check_count("base", base)
        levels = check_count("levels", levels)
        self.in_channels, self.levels = in_channels, levels
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
        if not isinstance(x, Tensor) or x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet3D: input must be (N, {self.in_channels}, D, H, W), got "
                             + (f"{tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__))
        check_divisible(x.shape[2:], self.levels, what=f"UNet3D input {tuple(x.shape)} ({self.levels} poolings)")
        skips = []
        for k, block in enumerate(self.down):
            if k:
                x = F.max_pool3d(x, 2)
            x = block(x)
            skips.append(x)
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips[:-1])):
            x = block(torch.cat([upconv(x), skip], 1))
        return self.classifier(x)
