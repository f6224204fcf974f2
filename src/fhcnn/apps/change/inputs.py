"""Reading and validating the inputs of ``fhcnn change``: the two dates and the labels.
Everything is checked here, before any output is created. The dates are opened, not loaded
(:func:`~fhcnn.data.hyperspectral.open_cube`: memory maps and HDF5 datasets are read on
demand); the label maps are 2D."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...data.hyperspectral import (
    check_labels,
    check_same_bands,
    check_same_grid,
    labels_from_masks,
    open_cube,
    open_pair,
    read_change_map,
    sample_labels,
)
from ...errors import InputError
from ...options import IGNORE

__all__ = ["ChangeInputs", "load_inputs"]


@dataclass
class ChangeInputs:
    """Validated inputs: the two dates ``(H, W, B)`` (array-likes in the files' numeric type, read
    on demand), the full label map, the training labels and the held-out labels to score
    (``(H, W)`` uint8, 255 = none), and where the labels came from."""

    before: Any
    after: Any
    labels: np.ndarray
    train: np.ndarray
    scored: np.ndarray
    label_source: str
    dates: dict[str, str] = field(default_factory=dict)


def load_inputs(before_path: str, after_path: str | None = None, *, key: str | None = None,
                labels: str | None = None, changed: str | None = None, unchanged: str | None = None,
                label_fraction: float | None = None, label_seed: int = 0,
                eval_labels: str | None = None) -> ChangeInputs:
    """Read and validate every input (nothing is written). Raises InputError/FileNotFoundError."""
    dates: dict[str, str] = {}
    if key is not None and after_path is not None and _is_mat(before_path) != _is_mat(after_path):
        # one .mat date and one of a format without variables: --key names the .mat date's variable
        key_before, key_after = (key, None) if _is_mat(before_path) else (None, key)
    else:   # given for dates without variables, the readers refuse it
        key_before = key_after = key
    if after_path is None:
        before, after = open_pair(before_path, key=key, sources=dates)
        dates = {k: (f"{before_path}: {v}" if k != "order" else v) for k, v in dates.items()}
    else:
        dates = {"before": str(before_path), "after": str(after_path)}
        before, after = open_cube(before_path, key=key_before), open_cube(after_path, key=key_after)
        if before.shape != after.shape:
            raise InputError(f"BEFORE {before_path} is {before.shape} (H, W, bands) but AFTER "
                             f"{after_path} is {after.shape}; both dates must have the same size and bands")
        check_same_bands(before_path, after_path)
        check_same_grid(before_path, after_path)
    if _identical(before, after):
        raise InputError(f"BEFORE and AFTER are identical ({before_path}"
                         f"{'' if after_path is None else ', ' + str(after_path)}): there is no change "
                         f"to detect; give two different dates")
    shape = tuple(before.shape)   # (H, W, bands): a label map checks (H, W)
    if labels and (changed or unchanged):
        raise InputError("give either --labels or --changed/--unchanged, not both")
    if unchanged and not changed:
        raise InputError(f"--unchanged {unchanged} without --changed: give the known changed pixels "
                         f"too (--changed MASK), or a full map as --labels MAP")
    for flag, path in (("--labels", labels), ("--changed", changed), ("--unchanged", unchanged),
                       ("--eval-labels", eval_labels)):
        if path:
            check_same_grid(before_path, path, f"{flag} map")
    if labels:
        lab = read_change_map(labels, shape)
        source = str(labels)
    elif changed or unchanged:
        lab = labels_from_masks(changed, unchanged, shape)
        source = " + ".join(str(p) for p in (changed, unchanged) if p)
    else:
        raise InputError("no labels: give --labels MAP or --changed MASK [--unchanged MASK]")
    check_labels(lab, source)
    eval_map = read_change_map(eval_labels, shape) if eval_labels else None
    if label_fraction is not None:
        train, held = sample_labels(lab, label_fraction, label_seed)
        check_labels(train, f"{source} with --label-fraction {label_fraction}")
    else:
        train, held = lab, np.full(lab.shape, IGNORE, np.uint8)
    if eval_map is not None:
        held = eval_map.copy()
        held[train != IGNORE] = IGNORE
        # a map of one class (e.g. 0/255 with change marked 255 = unlabelled) scores another class set
        check_labels(eval_map, f"--eval-labels {eval_labels}", "scoring")
        check_labels(held, f"--eval-labels {eval_labels} outside the training pixels", "scoring")
    return ChangeInputs(before, after, lab, train, held, source, dates)


def _is_mat(path: str) -> bool:
    """Whether a date is a ``.mat`` file (the one format whose variables ``--key`` names)."""
    return Path(path).suffix.lower() == ".mat"


def _identical(before: Any, after: Any) -> bool:
    """Whether two dates of one shape hold the same values, compared slab by slab of rows."""
    from .volume import row_slabs

    # as stored: a float32 cast equates dates that differ (1e9 and 1e9 + 1)
    return all(np.array_equal(np.asarray(before[rows]), np.asarray(after[rows])) for rows in row_slabs(before.shape))
