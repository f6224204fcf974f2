"""Dense prediction (segmentation) with a fully reversible hyperbolic network.

    x (N, c, *S)
      -> k Haar transforms            (N, c * 2**(dim k), *S / 2**k)     exact, no parameters
      -> open to the network width     zero-pad channels ("zeros") or a 1x1 conv ("conv")
      -> HyperbolicNetwork             must return to full resolution S
      [-> 3x3(x3) conv + ReLU          (N, head_channels, *S)       with ``head_channels > 0``]
      -> 1x1 classifier                (N, num_classes, *S)

The paper's Table 2 nets: ``pre_levels=2`` 3D Haar transforms of the 6-channel input give
384 channels at a quarter of the resolution, then units ``[(5,"up"),(6,"up"),(8,None)]``.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..network import HyperbolicNetwork, Unit
from ..wavelets import HaarDWT, check_count, check_dim, check_divisible, check_like_parameters

__all__ = ["DenseHyperbolicModel"]


class DenseHyperbolicModel(nn.Module):
    """``in_channels`` -> per-voxel logits over ``num_classes`` at the input resolution.

    Args:
        in_channels: ``c``, channels of the data.
        num_classes: output classes.
        width: channels of the network's first state (after the pre-transforms and opening).
        units: the network's units (see :class:`HyperbolicNetwork`); their net refinement must
            equal ``pre_levels`` so the output is at full resolution.
        dim: 1, 2 or 3.
        pre_levels: ``k`` Haar transforms applied to the input before the network.
        opening: ``"zeros"`` (append zero channels: exact, parameter-free) or ``"conv"``
            (a learned 1x1 convolution).
        head_channels: ``0``: the 1x1 classifier reads the network's last state; ``> 0``: a
            3x3 (2D) or 3x3x3 (3D) convolution to this many channels and a ReLU come first (a
            decision from each voxel's neighbourhood; not reversible, like the classifier: its
            activations are stored, ``head_channels`` values a voxel).
        network_options: keyword options for :class:`HyperbolicNetwork` (``h``, ``norm``,
            ``hidden``, ``reversible``, ...).

    Shapes: ``(N, c, *S) -> (N, num_classes, *S)``; every ``S_i`` divisible by
    ``2**(pre_levels + network coarsenings)``.

    Example:
        >>> import torch
        >>> from fhcnn.models import DenseHyperbolicModel
        >>> model = DenseHyperbolicModel(3, 2, width=32, units=[(2, "down"), (2, "up"), (1, "up")],
        ...                              dim=2, pre_levels=1)
        >>> model(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 2, 16, 16])
        >>> model.size_multiple
        4
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int,
        units: Sequence[Unit],
        dim: int = 3,
        pre_levels: int = 0,
        opening: Literal["zeros", "conv"] = "zeros",
        head_channels: int = 0,
        **network_options: Any,
    ) -> None:
        super().__init__()
        dim = check_dim(dim)
        in_channels = check_count("in_channels", in_channels)
        num_classes = check_count("num_classes", num_classes)
        width = check_count("width", width)
        pre_levels = check_count("pre_levels", pre_levels, least=0)
        head_channels = check_count("head_channels", head_channels, least=0, why=" (0 = the 1x1 classifier alone)")
        if opening not in ("zeros", "conv"):
            raise ValueError(f"opening must be 'zeros' or 'conv', got {opening!r}")
        self.in_channels, self.num_classes, self.dim = in_channels, num_classes, dim
        self.pre_levels, self.opening_kind = pre_levels, opening
        self.pre = HaarDWT(dim, pre_levels) if pre_levels > 0 else None
        pre_channels = in_channels * 2 ** (dim * pre_levels)
        if opening == "zeros" and width < pre_channels:
            raise ValueError(f"width={width} is smaller than the {pre_channels} channels after "
                             f"{pre_levels} Haar transform(s); use opening='conv' or a larger width")
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
        self.open = conv(pre_channels, width, 1) if opening == "conv" else None
        self.pre_channels = pre_channels
        self.net = HyperbolicNetwork(width, units, dim=dim, **network_options)
        if self.net.out_level != -pre_levels:
            raise ValueError(
                f"the network must end at the input resolution: {pre_levels} pre-transform(s) "
                f"need {pre_levels} more 'up' than 'down' transitions, got "
                f"{-self.net.out_level} (units={list(units)})")
        c = self.net.out_channels
        self.conv_head = (nn.Sequential(conv(c, head_channels, 3, padding=1), nn.ReLU())
                          if head_channels else None)
        self.classifier = conv(head_channels or c, num_classes, 1)

    @property
    def size_multiple(self) -> int:
        """Every spatial size must be a multiple of this."""
        return 2 ** (self.pre_levels + self.net.max_level)

    def features(self, x: Tensor) -> Tensor:
        """The network's last state ``(N, C_out, *S)``."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"input must be a floating-point torch.Tensor, got {type(x).__name__}"
                            + (f" of dtype {x.dtype}" if isinstance(x, Tensor) else ""))
        if x.dim() != self.dim + 2 or x.shape[1] != self.in_channels:
            axes = {1: "L", 2: "H, W", 3: "D, H, W"}[self.dim]
            raise ValueError(f"input must be (N, {self.in_channels}, {axes}), got {tuple(x.shape)}")
        levels = self.pre_levels + self.net.max_level
        check_divisible(x.shape[2:], levels, what=f"input {tuple(x.shape)}")
        check_like_parameters(self, x)
        if self.pre is not None:
            x = self.pre(x)
        if self.open is not None:
            x = self.open(x)
        elif x.shape[1] < self.net.channels:
            x = F.pad(x, [0] * (2 * self.dim) + [0, self.net.channels - x.shape[1]])
        return self.net(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes, *S)``."""
        y = self.features(x)
        return self.classifier(y if self.conv_head is None else self.conv_head(y))
