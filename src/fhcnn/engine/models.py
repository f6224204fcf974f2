"""Networks of the dense engine, built from a :class:`~fhcnn.engine.config.ModelConfig`.

Both architectures are wrapped in :class:`VolumeSegmenter`, which holds the input
normalization (per-channel mean and standard deviation of the training volume, saved with the
weights) so a checkpoint segments raw volumes by itself. :class:`DepthMean` is the model of a
``data.reduce_depth`` run (one 2D label map for the whole depth axis).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..models import DenseHyperbolicModel, SpectralHead, UNet3D
from ..network import Unit
from ..options import MEMORY_MODES, MemoryMode
from ..wavelets import check_count

__all__ = ["parse_units", "parse_hidden", "VolumeSegmenter", "DepthMean", "build_model",
           "check_spectral_head", "size_multiple_of"]


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
    units: list[Unit] = []
    for n, t in spec:  # type: ignore[str-unpack]
        if t not in ("up", "down", None):
            raise ValueError(f"bad transition {t!r} in units={spec!r}")
        units.append((check_count("layers of a unit", n, 0, f" in units={spec!r}"), t))  # type: ignore[arg-type]
    return units


def parse_hidden(spec: str | int | Sequence[int] | None) -> int | list[int] | None:
    """``""`` -> None (the state's width), ``"32"`` -> 32, ``"64,16,8"`` -> ``[64, 16, 8]``."""
    if spec is None:
        return spec
    if not isinstance(spec, (str, Sequence)):
        return check_count("hidden", spec)
    if isinstance(spec, str):
        text = spec.strip()
        if not text:
            return None
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise ValueError(f"hidden={spec!r}: use '' (the state's width), one int or "
                             f"comma-separated ints, e.g. '64,16,8'") from None
        if any(v < 1 for v in values):
            raise ValueError(f"hidden={spec!r}: widths must be >= 1")
        return values if "," in text else values[0]
    return [check_count("hidden", v) for v in spec]


def size_multiple_of(cfg: Any) -> int:
    """What every spatial size must be a multiple of for the model ``cfg`` describes (without
    building it): ``2**(pre_levels + deepest coarsening)`` or ``2**unet_levels``."""
    if cfg.arch == "unet":
        return 2 ** int(cfg.unet_levels)
    level = deepest = 0
    for _, t in parse_units(cfg.units):
        level += {"down": 1, "up": -1, None: 0}[t]
        deepest = max(deepest, level)
    return 2 ** (int(cfg.pre_levels) + deepest)


def _head_needs_map(hidden: int) -> str:
    """Why a spectral head of ``hidden`` units cannot run without one 2D label map."""
    return (f"model.spectral_head={hidden} reads the whole depth axis of each pixel, so it needs one 2D "
            "label map for the whole depth (fhcnn change with change.target=mean; data.reduce_depth in "
            "the engine); use model.spectral_head=0")


def check_spectral_head(cfg: Any, reduce_depth: bool) -> None:
    """Refuse a ``model.spectral_head`` the run cannot use: it needs one 2D label map for the
    whole depth (``reduce_depth``) and prediction windows over the whole depth, as in training.

    Raises:
        ValueError: naming the setting to change.
    """
    hidden = cfg.model.spectral_head
    if hidden <= 0:
        return
    if not reduce_depth:
        raise ValueError(_head_needs_map(hidden))
    if cfg.data.predict_depth > 0:
        raise ValueError(f"model.spectral_head={hidden} needs prediction windows over the whole depth "
                         f"axis, as in training: data.predict_depth=-1 or 0, got {cfg.data.predict_depth}")


class VolumeSegmenter(nn.Module):
    """Normalizes a raw volume (per-channel ``(x - mean) / std``, buffers saved with the weights)
    and applies a dense network; ``(N, C, D, H, W) -> (N, K, D, H, W)`` logits. With a ``head``
    (a :class:`~fhcnn.models.SpectralHead`) its per-pixel logits ``(N, K, 1, H, W)`` are added
    at every depth."""

    mean: Tensor
    std: Tensor

    def __init__(self, core: nn.Module, in_channels: int, head: nn.Module | None = None) -> None:
        super().__init__()
        self.core = core
        self.head = head
        self.register_buffer("mean", torch.zeros(in_channels))
        self.register_buffer("std", torch.ones(in_channels))

    @property
    def size_multiple(self) -> int:
        multiple: int = self.core.size_multiple  # type: ignore[assignment]
        return int(multiple)

    def set_normalization(self, mean: Tensor, std: Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-6))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        z = (x - self.mean.view(shape)) / self.std.view(shape)
        logits = self.core(z)
        return logits if self.head is None else logits + self.head(z)


class DepthMean(nn.Module):
    """Wraps a dense 3D model (``(N, C, D, H, W) -> (N, K, D, H, W)`` logits): the logits
    averaged over the depth axis and broadcast back (a view, no copy), so every depth slice
    holds the same ``mean_d logits`` and prediction returns ``softmax(mean_d logits)`` at every
    depth. The model of a ``data.reduce_depth`` run; the wrapped one is ``.inner``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    @property
    def size_multiple(self) -> int:
        return int(getattr(self.inner, "size_multiple", 1))

    def forward(self, x: Tensor) -> Tensor:
        lo = self.inner(x)
        return lo.mean(2, keepdim=True).expand_as(lo)


def build_model(cfg: Any, in_channels: int, num_classes: int,
                memory: MemoryMode | None = None, depth: int | None = None) -> VolumeSegmenter:
    """A :class:`VolumeSegmenter` from a :class:`~fhcnn.engine.config.ModelConfig`.

    Args:
        cfg: the model config.
        in_channels, num_classes: data channels and classes.
        memory: gradient mode of the hyperbolic net (``"reversible" | "block" | "plain"``);
            default ``cfg.memory``. Ignored by the U-Net.
        depth: the depth of every window the model will see, when the labels are one 2D map
            for the whole depth axis (``data.reduce_depth``: windows span the whole, rounded-up
            depth); needed by ``cfg.spectral_head``.

    Raises:
        ValueError: a bad option, or ``cfg.spectral_head`` without ``depth``.
    """
    memory = cfg.memory if memory is None else memory
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {', '.join(MEMORY_MODES)}, got {memory!r}")
    head = None
    if cfg.spectral_head > 0:
        if depth is None:
            raise ValueError(_head_needs_map(cfg.spectral_head))
        head = SpectralHead(in_channels, depth, num_classes, cfg.spectral_head)
    if cfg.arch == "unet":
        core: nn.Module = UNet3D(in_channels, num_classes, cfg.unet_base, cfg.unet_levels)
    elif cfg.arch == "hyperbolic":
        core = DenseHyperbolicModel(
            in_channels, num_classes, cfg.width, parse_units(cfg.units), dim=3,
            pre_levels=cfg.pre_levels, opening=cfg.opening, head_channels=cfg.conv_head,
            reversible=MEMORY_MODES[memory], hidden=parse_hidden(cfg.hidden), h=cfg.h, norm=cfg.norm,
            activation=cfg.activation, wavelet=cfg.wavelet, init_scale=cfg.init_scale)
    else:
        raise ValueError(f"model.arch must be 'hyperbolic' or 'unet', got {cfg.arch!r}")
    return VolumeSegmenter(core, in_channels, head)
