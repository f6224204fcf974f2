"""Reading ``.npy`` inputs with one clear message for files that are not plain arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["load_npy"]


def load_npy(path: str | Path, what: str = "input", **kwargs: Any) -> np.ndarray:
    """``np.load`` without pickles; a garbage or object file is an :class:`InputError`."""
    try:
        a = np.load(path, allow_pickle=False, **kwargs)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError) as e:
        with open(path, "rb") as f:
            magic = f.read(6) == b"\x93NUMPY"
        objects = magic and ("pickle" in str(e) or "Python objects" in str(e))
        why = "it holds Python objects, not a plain array" if objects else \
            "not a valid .npy array file"
        raise InputError(f"cannot read {what} {path}: {why}") from None
    if not isinstance(a, np.ndarray):
        raise InputError(f"cannot read {what} {path}: not a single .npy array")
    return a
