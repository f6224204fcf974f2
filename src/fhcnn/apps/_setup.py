"""Checks every application makes before its output folder is created: the device exists and
the model of the config can be built for the data (so a bad ``--device``, odd width or
``h=0`` is one ``error:`` line and leaves no output folder behind)."""

from __future__ import annotations

from typing import Any

from ..errors import InputError

__all__ = ["check_dense_setup", "config_file_input"]


def check_dense_setup(cfg: Any, in_channels: int, num_classes: int, depth: int | None = None) -> None:
    """Resolve ``cfg.train.device`` and build the dense model of ``cfg.model`` once, on the
    ``meta`` device (every shape check runs; no parameter memory is allocated or initialized).
    ``depth``: the (rounded-up) depth of every window when the labels are one 2D map for the
    whole depth axis (``fhcnn change``), else ``None``."""
    import torch

    from ..engine.models import build_model, check_spectral_head
    from ..training.device import resolve_device

    resolve_device(cfg.train.device)
    channels = in_channels + (2 if getattr(cfg.data, "coords", False) else 0)
    try:
        check_spectral_head(cfg, depth is not None)
        with torch.device("meta"):
            build_model(cfg.model, channels, num_classes, depth=depth)
    except InputError:
        raise
    except (ValueError, TypeError, RuntimeError) as e:
        raise InputError(f"the model of the config cannot be built: {e}") from None


def config_file_input(config: str | None) -> str | None:
    """The ``--config`` argument if it is a file (an input: never written to), else ``None``."""
    from pathlib import Path

    if config and Path(config).expanduser().is_file():
        return config
    return None
