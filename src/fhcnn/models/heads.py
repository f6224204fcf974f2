"""Per-pixel heads that sit beside a dense network.

:class:`SpectralHead` classifies each ``(h, w)`` position from the *whole* depth axis of the
input (e.g. every band of both dates of a hyperspectral pair): a one-hidden-layer perceptron on
the ``C x D`` values of the pixel, as a convolution whose kernel spans the depth. A hyperbolic
network works on wavelet coefficients at coarse resolutions and makes a sharp per-pixel
decision only after many steps; the head makes it from the first step, and the network adds
the spatial context. Its logits are added to the network's (broadcast over depth).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..wavelets import check_count, check_like_parameters

__all__ = ["SpectralHead"]


class SpectralHead(nn.Module):
    """``(N, C, D, H, W) -> (N, K, 1, H, W)``: per-pixel MLP over all ``C x D`` input values.

    Args:
        in_channels: ``C``.
        depth: ``D``, the depth every input must have (the kernel spans it).
        num_classes: ``K``.
        hidden: hidden units (>= 1).

    Invariant: the output at ``(h, w)`` depends on the input at ``(h, w)`` only.
    """

    def __init__(self, in_channels: int, depth: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        in_channels = check_count("in_channels", in_channels)
        depth = check_count("depth", depth)
        num_classes = check_count("num_classes", num_classes)
        hidden = check_count("hidden", hidden)
        self.in_channels, self.depth = in_channels, depth
        self.spectrum = nn.Conv3d(in_channels, hidden, (depth, 1, 1))
        self.act = nn.ReLU()
        self.out = nn.Conv3d(hidden, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels or x.shape[2] != self.depth:
            raise ValueError(f"SpectralHead: input must be (N, {self.in_channels}, {self.depth}, H, W) (the "
                             f"channels and whole depth axis it was built for), got {tuple(x.shape)}")
        check_like_parameters(self, x)
        return self.out(self.act(self.spectrum(x)))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, depth={self.depth}"
