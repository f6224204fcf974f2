"""Device selection: ``auto`` = CUDA, then Apple MPS, then CPU; or an explicit device."""

from __future__ import annotations

import os

import torch

from ..errors import InputError

__all__ = ["resolve_device"]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(spec: str | torch.device = "auto", local_rank: int | None = None) -> torch.device:
    """Return the ``torch.device`` for ``spec``.

    Args:
        spec: ``"auto"`` (CUDA if available, then MPS, then CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"``, ``"mps"`` or a ``torch.device``.
        local_rank: under multi-process training, the process's rank on its node; a plain
            ``"cuda"`` (or ``"auto"`` resolving to CUDA) then means ``cuda:local_rank``.
            Defaults to the ``LOCAL_RANK`` environment variable set by ``torchrun``.

    Raises:
        InputError: an unknown spec, or a device that is not available here.
    """
    if local_rank is None and "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        local_rank = int(os.environ["LOCAL_RANK"])
    text = str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            text = "cuda"
        elif _mps_available():
            text = "mps"
        else:
            text = "cpu"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise InputError(f"device {spec!r} is not understood; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {spec!r} requested but CUDA is not available on this machine "
                             f"(use --device cpu or auto)")
        index = dev.index if dev.index is not None else (local_rank or 0)
        if index >= torch.cuda.device_count():
            raise InputError(f"device cuda:{index} requested but only {torch.cuda.device_count()} "
                             f"CUDA device(s) are visible")
        return torch.device("cuda", index)
    if dev.type == "mps":
        if not _mps_available():
            raise InputError(f"device {spec!r} requested but MPS is not available on this machine")
        return dev
    if dev.type == "cpu":
        return torch.device("cpu")
    raise InputError(f"device {spec!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
