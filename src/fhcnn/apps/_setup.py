"""Checks every application makes before its output folder is created: the device exists and
the model of the config can be built for the data (so a bad ``--device``, odd width or
``h=0`` is one ``error:`` line and leaves no output folder behind)."""

from __future__ import annotations

from typing import Any

from ..errors import InputError

__all__ = ["check_dense_setup", "check_resources", "config_file_input"]


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


def check_resources(cfg: Any, in_channels: int, num_classes: int, shape: tuple[int, int, int],
                    whole_depth: bool = False) -> None:
    """Refuse, before the output folder exists, a run that cannot fit the machine (see
    :mod:`fhcnn.resources`): ``train.threads`` above the CPUs, ``train.steps`` beyond a year,
    and a training batch or prediction batch whose least memory exceeds what is available.

    ``shape``: the ``(D, H, W)`` the network trains on (after ``data.scale``); ``whole_depth``:
    training windows span the whole depth axis (one 2D label map). The least memory of a batch
    counts, in float32 per voxel of its windows: the input channels, the network's state after
    the opening (``width / 8**pre_levels`` values; ``unet_base`` for the U-Net) twice with its
    gradient twice (a reversible step holds two states), and the logits with their gradient;
    prediction counts the input, two states and the probabilities.
    """
    from ..engine.models import size_multiple_of
    from ..engine.sizes import round_up, training_window
    from ..resources import check_memory, check_steps, check_threads
    from ..training.device import resolve_device

    check_threads(cfg.train.threads)
    check_steps(cfg.train.steps)
    m = size_multiple_of(cfg.model)
    d = cfg.data
    win = training_window((d.window_depth, d.window_height, d.window_width), shape, m, whole_depth)
    if cfg.model.arch == "hyperbolic":
        state = cfg.model.width / 8 ** cfg.model.pre_levels
    else:
        state = float(cfg.model.unet_base)
    device = resolve_device(cfg.train.device)
    voxels = d.batch_size * win[0] * win[1] * win[2]
    per_voxel = in_channels + 4 * state + 2 * num_classes
    check_memory(4 * voxels * per_voxel,
                 f"a training batch of {d.batch_size} window(s) of {win[0]}x{win[1]}x{win[2]} voxels "
                 f"(data.batch_size, data.window_depth/height/width)",
                 f"{per_voxel:g} float32 values per voxel: input, network state and logits with "
                 f"gradients", device)
    pred = [w if p == -1 else round_up(n, m) if p == 0 else round_up(p, m)
            for p, w, n in zip((d.predict_depth, d.predict_height, d.predict_width), win, shape)]
    if whole_depth:
        pred[0] = win[0]
    per_voxel = in_channels + 2 * state + num_classes
    check_memory(4 * d.predict_batch * pred[0] * pred[1] * pred[2] * per_voxel,
                 f"a prediction batch of {d.predict_batch} window(s) of {pred[0]}x{pred[1]}x{pred[2]} "
                 f"voxels (data.predict_batch, data.predict_depth/height/width)",
                 f"{per_voxel:g} float32 values per voxel: input, network state and probabilities",
                 device)
