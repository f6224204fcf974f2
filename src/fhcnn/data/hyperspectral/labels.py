"""Change labels: ``(H, W)`` uint8 maps, ``1`` changed, ``0`` unchanged, ``255`` unlabelled.

They come from one map (``.npy`` with NaN or 255 for unlabelled, or an 8-bit PNG/BMP/TIFF
with values 0/1/255), from two partial-reference masks (``changed`` / ``unchanged``: nonzero
= member), or from one full binary mask (nonzero = changed, zero = unchanged).
:func:`sample_labels` draws a seeded, stratified training subset and leaves the rest for
scoring.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ...errors import InputError
from ...options import IGNORE
from .readers import _mat_variables, _pick_mat_cube

__all__ = ["read_change_map", "labels_from_masks", "sample_labels", "check_labels"]


def _inverted_palette(im: Any, arr: np.ndarray) -> tuple[tuple[int, ...], int] | None:
    """``(colour of index 0, a used index shown black)`` where the palette image ``im`` shows
    index 0 in a colour and another index it uses in black: read by index (nonzero = member) it
    marks the opposite of what it shows."""
    pal = im.getpalette() or []

    def colour(i: int) -> tuple[int, ...]:
        return tuple(pal[3 * i:3 * i + 3])

    if len(pal) < 3 or colour(0) == (0, 0, 0):
        return None
    black = [int(v) for v in np.unique(arr) if v != 0 and colour(int(v)) == (0, 0, 0)]
    return (colour(0), black[0]) if black else None


def _read_2d(path: Path, marks: str | None = None) -> np.ndarray:
    """The 2D map or mask ``path`` holds (by value: a palette image by index). ``marks``: the
    option of a mask of members (``--changed``), whose palette may not show index 0 in a colour
    and a used index in black (:func:`_inverted_palette`)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a label image or .npy")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:
            raise InputError(f"{path}: cannot read as .npy ({e})") from None
    elif suffix in (".tif", ".tiff"):
        import tifffile

        try:
            arr = tifffile.imread(path)
        except Exception as e:
            raise InputError(f"{path}: cannot read as TIFF ({e})") from None
    elif suffix == ".mat":
        variables = _mat_variables(path)
        arr = _pick_mat_cube(path, {k: v for k, v in variables.items() if v.ndim == 2}, None, (2,),
                             "save the label map alone in its .mat file (--key is for the dates)")
    else:
        from PIL import UnidentifiedImageError

        from ..video import open_label_image

        try:
            with open_label_image(path, "label image", str(path), "save it as PNG") as im:
                if im.mode in ("RGB", "RGBA", "LA"):
                    arr = np.asarray(im.convert("RGB"))
                else:
                    arr = np.asarray(im)
                inverted = _inverted_palette(im, arr) if marks is not None and im.mode in ("P", "PA") else None
                if inverted is not None:
                    raise InputError(f"{marks} {path}: its palette shows index 0 as {inverted[0]} and index "
                                     f"{inverted[1]} black, and a mask is read by index (nonzero = member): it "
                                     f"would mark the opposite of what it shows; save it as a grey image "
                                     f"(black 0 = not a member)")
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"{path}: cannot read as an image ({e})") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise InputError(f"{path}: colour label image; save it as a single-channel (grey/palette) map")
        arr = arr[..., 0]
    arr = np.squeeze(arr) if arr.ndim > 2 else arr
    if arr.ndim != 2:
        raise InputError(f"{path}: a label map must be 2D (H, W), got shape {tuple(arr.shape)}")
    return arr


def _check_shape(arr: np.ndarray, shape: tuple[int, ...] | None, path: Path) -> None:
    """Refuse a map of another size than the scene's ``(H, W)`` (``shape``: ``(H, W)`` or the
    dates' ``(H, W, bands)``; then a map of the dates' last two sizes says they look band-first,
    and one of their bands and rows that they look like an ``(H, W, bands)`` array stored one
    row a page: ``tifffile.imwrite`` of such a cube writes ``H`` pages of ``W x bands``, which
    read as ``H`` bands of ``W x bands`` pixels)."""
    if shape is not None and tuple(arr.shape) != tuple(shape[:2]):
        hint = ""
        dims = tuple(int(n) for n in shape)
        if len(shape) == 3 and tuple(arr.shape) == tuple(shape[1:]):
            hint = (f"; the dates, read as (H, W, bands) = {dims}, look band-first "
                    f"(bands, H, W): save them as (H, W, bands)")
        elif len(shape) == 3 and tuple(arr.shape) == (shape[2], shape[0]):
            hint = (f"; the dates, read as (H, W, bands) = {dims}, look like a ({dims[2]}, {dims[0]}, "
                    f"{dims[1]}) cube stored one row a page (as tifffile.imwrite writes an (H, W, bands) "
                    f"array): save it band-first, tifffile.imwrite(path, cube.transpose(2, 0, 1))")
        raise InputError(f"{path}: label map is {arr.shape[0]}x{arr.shape[1]} (H x W) but the "
                         f"scene is {shape[0]}x{shape[1]}{hint}")


def read_change_map(path: str | os.PathLike[str], shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read a change map: ``1`` changed, ``0`` unchanged, ``255`` or NaN unlabelled.

    Args:
        path: ``.npy`` (any numeric type; NaN = unlabelled), PNG/BMP/TIFF (8-bit grey or
            palette) or ``.mat``.
        shape: expected ``(H, W)`` (or the dates' ``(H, W, bands)``); a different size raises
            ``InputError``.

    Returns:
        uint8 ``(H, W)`` with values in {0, 1, 255}.
    """
    path = Path(path)
    arr = _read_2d(path)
    _check_shape(arr, shape, path)
    out = np.full(arr.shape, IGNORE, np.uint8)
    a = arr.astype(np.float64)
    valid = np.isfinite(a) & (a != IGNORE)
    vals = np.unique(a[valid])
    bad = [v for v in vals if v not in (0.0, 1.0)]
    if bad:
        hint = " (a 0/255 mask marking change in white is read with --changed MASK)" \
            if set(np.unique(a[np.isfinite(a)]).tolist()) <= {0.0, 255.0} else ""
        raise InputError(f"{path}: label values must be 0 (unchanged), 1 (changed) or 255/NaN "
                         f"(unlabelled), found {', '.join(f'{v:g}' for v in bad[:5])}{hint}")
    out[valid] = a[valid].astype(np.uint8)
    return out


def labels_from_masks(changed: str | os.PathLike[str] | None, unchanged: str | os.PathLike[str] | None,
                      shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Labels from partial-reference masks (nonzero = member of that class).

    ``changed`` and ``unchanged`` given: pixels nonzero in ``changed`` are 1, nonzero in
    ``unchanged`` are 0, the rest unlabelled (a pixel in both raises). Only ``changed``
    given: it is a *full* binary map (nonzero = changed, zero = unchanged, NaN = unlabelled, as
    in a label map). Only ``unchanged`` given: full map with the roles swapped.
    """
    if changed is None and unchanged is None:
        raise InputError("give --changed and/or --unchanged masks")
    maps, unknown = {}, {}
    for name, p in (("changed", changed), ("unchanged", unchanged)):
        if p is not None:
            arr = _read_2d(Path(p), marks=f"--{name}")
            _check_shape(arr, shape, Path(p))
            a = arr.astype(np.float64)
            maps[name], unknown[name] = np.isfinite(a) & (a != 0), np.isnan(a)
    if changed is not None and unchanged is not None:
        if maps["changed"].shape != maps["unchanged"].shape:
            raise InputError(f"--changed {changed} is {maps['changed'].shape} but --unchanged "
                             f"{unchanged} is {maps['unchanged'].shape}")
        both = maps["changed"] & maps["unchanged"]
        if both.any():
            raise InputError(f"{int(both.sum())} pixel(s) are marked in both --changed {changed} "
                             f"and --unchanged {unchanged}")
        out = np.full(maps["changed"].shape, IGNORE, np.uint8)
        out[maps["unchanged"]] = 0
        out[maps["changed"]] = 1
        return out
    name = "changed" if changed is not None else "unchanged"
    out = (maps[name] if changed is not None else ~maps[name]).astype(np.uint8)
    out[unknown[name]] = IGNORE   # a full map's NaN is unlabelled, not the other class
    return out


def check_labels(labels: np.ndarray, what: str = "labels",
                 use: Literal["training", "scoring"] = "training") -> dict[str, int]:
    """Raise ``InputError`` unless both classes have labelled pixels; return the counts.

    ``use`` names what needs them in the message: ``"training"`` (the training labels) or
    ``"scoring"`` (the held-out pixels of ``--eval-labels``: with one class, the IoU of the other
    counts only false alarms, and the mIoU compares another class set than the model's).
    """
    n0, n1 = int((labels == 0).sum()), int((labels == 1).sum())
    if n0 + n1 == 0:
        raise InputError(f"{what}: no labelled pixels (every pixel is 255/NaN = unlabelled)")
    if n0 == 0 or n1 == 0:
        only = "changed (1)" if n0 == 0 else "unchanged (0)"
        hint = " (255 means unlabelled, not changed: mark changed pixels with 1)" \
            if n1 == 0 and (labels == IGNORE).any() else ""
        raise InputError(f"{what}: only {only} pixels are labelled ({n0 + n1}){hint}; {use} needs "
                         "both changed and unchanged examples")
    return {"unchanged": n0, "changed": n1}


def sample_labels(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of the labelled pixels into training and held-out sets.

    From each class, ``round(fraction * n_class)`` pixels (at least 1) are drawn uniformly
    without replacement with ``numpy.random.default_rng(seed)``.

    Returns:
        ``(train, held_out)``: two uint8 maps like ``labels``; each labelled pixel is labelled
        in exactly one of them (255 elsewhere).
    """
    if not 0 < fraction <= 1:
        raise InputError(f"--label-fraction must be in (0, 1], got {fraction}")
    if seed < 0:   # numpy's own refusal named neither the option nor the value
        raise InputError(f"--label-seed must be a non-negative integer, got {seed}")
    rng = np.random.default_rng(seed)
    flat = labels.reshape(-1)
    train = np.full(flat.shape, IGNORE, np.uint8)
    for c in (0, 1):
        idx = np.flatnonzero(flat == c)
        if idx.size == 0:
            continue
        k = min(idx.size, max(1, int(round(fraction * idx.size))))
        pick = rng.choice(idx, size=k, replace=False)
        train[pick] = c
    held = flat.copy()
    held[train != IGNORE] = IGNORE
    return train.reshape(labels.shape), held.reshape(labels.shape)
