"""Input checks with one-line messages naming the file and the problem.

Every function raises :class:`fhcnn.errors.InputError` (a ``ValueError``; the CLI prints
``error: <message>`` and exits with code 2) and returns nothing (or the array read). The
``name`` argument is what the message starts with: the file the data came from, e.g.
``"data/video.npy"``, or a description such as ``"video.npy (labels)"``.

=====================  ==================================================================
check                  message (examples)
=====================  ==================================================================
``check_finite``       ``v.npy: 3 NaN and 1 Inf value(s) (first at index (0, 2, 5)); ...``
``check_shape``        ``v.npy: shape (4, 5) does not match the expected (N, 6, D, H, W)``
``check_labels``       ``l.npy: label volume shape (10, 64, 64) does not match the data's
                       spatial shape (12, 64, 64)`` / ``l.npy: empty label set (...)`` /
                       ``l.npy: label values [5, 7] outside 0..3 for 4 classes`` /
                       ``l.npy: labels must be integer class ids, got float values ...``
``check_spatial_size`` ``v.npy: spatial size (33, 64) is not divisible by 4 ...; nearest
                       valid size (32, 64); crop or pad the input``
``read_array``         ``v.npy: no such file`` / ``v.npy: cannot read as .npy (...)`` /
                       ``v.xyz: unsupported file type '.xyz' (supported: ...)``
=====================  ==================================================================
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import InputError

__all__ = ["check_finite", "check_shape", "check_labels", "check_spatial_size", "check_volume",
           "read_array", "READERS"]

READERS = (".npy", ".npz", ".tif", ".tiff", ".h5", ".hdf5", ".png", ".jpg", ".jpeg", ".bmp",
           ".gif")


def _as_numpy(x: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            if x.dtype == torch.bfloat16:
                x = x.float()
            return x.numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in getattr(x, "shape", np.shape(x)))


def check_finite(x: Any, name: str) -> None:
    """Raise unless every value of ``x`` (array or tensor) is finite.

    Message: ``NAME: 3 NaN and 1 Inf value(s) in 4096 (first at index (0, 2, 5)); ...``.
    """
    a = _as_numpy(x)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating)):
        return
    finite = np.isfinite(a)
    if finite.all():
        return
    n_nan = int(np.isnan(a).sum())
    n_inf = int((~finite).sum()) - n_nan
    first = tuple(int(i) for i in np.argwhere(~finite)[0])
    raise InputError(f"{name}: {n_nan} NaN and {n_inf} Inf value(s) among {a.size} "
                     f"(first at index {first}); clean or mask them before use")


def _pattern(expected: Sequence[int | None], axes: Sequence[str] | str | None) -> str:
    if isinstance(axes, str):
        axes = axes.split()
    parts = []
    for i, e in enumerate(expected):
        parts.append(str(e) if e is not None else (axes[i] if axes and i < len(axes) else "*"))
    return "(" + ", ".join(parts) + ")"


def check_shape(x: Any, name: str, expected: Sequence[int | None],
                axes: Sequence[str] | str | None = None) -> None:
    """Raise unless ``x.shape`` matches ``expected`` (``None`` = any size, >= 1).

    Args:
        expected: e.g. ``(None, 6, None, None, None)``.
        axes: names for the message, e.g. ``"N C D H W"``.
    """
    shape = _shape(x)
    ok = len(shape) == len(expected) and all(
        (e is None and s >= 1) or s == e for s, e in zip(shape, expected))
    if not ok:
        raise InputError(f"{name}: shape {shape} does not match the expected "
                         f"{_pattern(expected, axes)}")


def check_labels(labels: Any, name: str, data_shape: Sequence[int] | None = None,
                 num_classes: int | None = None, ignore_index: int | None = -1) -> None:
    """Check a label volume: integer ids, shape equal to ``data_shape``, not empty, in range.

    Args:
        labels: integer (or boolean) class ids; ``ignore_index`` marks unlabelled voxels.
        name: the label file (for the message).
        data_shape: the shape the labels must have (usually the data's spatial shape).
        num_classes: if given, every label other than ``ignore_index`` must be in
            ``0..num_classes-1``.
        ignore_index: value of unlabelled voxels (``None``: every voxel is labelled).

    Raises:
        InputError: ``label volume shape ... does not match ...``, ``empty label set ...``,
            ``labels must be integer class ids ...`` or ``label values ... outside ...``.
    """
    a = _as_numpy(labels)
    shape = tuple(a.shape)
    if data_shape is not None and shape != tuple(int(s) for s in data_shape):
        raise InputError(f"{name}: label volume shape {shape} does not match the data's "
                         f"spatial shape {tuple(int(s) for s in data_shape)}")
    if a.size == 0:
        raise InputError(f"{name}: empty label set (the label volume {shape} has no voxels)")
    if a.dtype == bool:
        a = a.astype(np.int64)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise InputError(f"{name}: labels must be integer class ids, got NaN/Inf values")
        frac = a[a != np.round(a)]
        if frac.size:
            raise InputError(f"{name}: labels must be integer class ids, got float values like "
                             f"{float(frac.flat[0]):g}")
        a = a.astype(np.int64)
    elif not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{name}: labels must be integer class ids, got dtype {a.dtype}")
    labelled = a != ignore_index if ignore_index is not None else np.ones(a.shape, bool)
    if not labelled.any():
        raise InputError(f"{name}: empty label set (all {a.size} voxels are unlabelled, "
                         f"value {ignore_index}); label at least one voxel")
    values = a[labelled]
    lo = int(values.min())
    hi = int(values.max())
    if num_classes is not None and (lo < 0 or hi >= num_classes):
        bad = np.unique(values[(values < 0) | (values >= num_classes)])
        shown = ", ".join(str(int(v)) for v in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise InputError(f"{name}: label values [{shown}] outside 0..{num_classes - 1} for "
                         f"{num_classes} classes" + (f" (unlabelled voxels must be "
                                                     f"{ignore_index})" if ignore_index is not None
                                                     else ""))
    if num_classes is None and lo < 0:
        raise InputError(f"{name}: negative label value {lo}" + (
            f" (only {ignore_index} marks unlabelled voxels)" if ignore_index is not None else ""))


def check_spatial_size(spatial: Sequence[int], multiple: int, name: str,
                       what: str = "the network") -> None:
    """Raise unless every spatial size is a positive multiple of ``multiple``.

    The message names the nearest valid size, e.g. ``NAME: spatial size (33, 64) is not
    divisible by 4 (needed by the network); nearest valid size (32, 64); crop or pad``.
    """
    spatial = tuple(int(s) for s in spatial)
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    if all(s >= 1 and s % multiple == 0 for s in spatial):
        return

    def near(s: int) -> int:
        down = (s // multiple) * multiple
        up = down + multiple
        return up if down == 0 or s - down >= up - s else down

    raise InputError(f"{name}: spatial size {spatial} is not divisible by {multiple} (needed by "
                     f"{what}); nearest valid size {tuple(near(s) for s in spatial)}; crop or pad "
                     f"the input")


def check_volume(x: Any, name: str, ndim: int | None = None, channels: int | None = None,
                 multiple: int | None = None, channel_axis: int = 0) -> None:
    """The usual checks of a data volume: number of axes, channels, finite values, size.

    ``ndim`` counts all axes; ``channels`` is checked on ``channel_axis``; ``multiple``
    applies to the axes after the channel axis.
    """
    shape = _shape(x)
    if ndim is not None and len(shape) != ndim:
        raise InputError(f"{name}: expected {ndim} axes, got shape {shape}")
    if 0 in shape:
        raise InputError(f"{name}: empty array of shape {shape}")
    if channels is not None and (len(shape) <= channel_axis or shape[channel_axis] != channels):
        raise InputError(f"{name}: expected {channels} channel(s) on axis {channel_axis}, got "
                         f"shape {shape}")
    check_finite(x, name)
    if multiple is not None:
        check_spatial_size(shape[channel_axis + 1:], multiple, name)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def read_array(path: str | os.PathLike[str], key: str | None = None) -> np.ndarray:
    """Read an array from ``.npy``, ``.npz``, ``.tif``/``.tiff``, ``.h5``/``.hdf5`` or an image.

    ``key`` picks the array of an ``.npz``/HDF5 file holding several.

    Raises:
        InputError: missing or unreadable file, unknown type, ambiguous or missing key.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a folder, expected a file")
    suffix = p.suffix.lower()
    if suffix not in READERS:
        raise InputError(f"{p}: unsupported file type {suffix or '(none)'!r} (supported: "
                         f"{', '.join(READERS)})")
    try:
        if suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                return _pick(p, key, list(z.files), lambda k: z[k])
        if suffix in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(p)
        if suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(p, "r") as f:
                names: list[str] = []
                f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
                return _pick(p, key, names, lambda k: np.asarray(f[k]))
        from PIL import Image

        with Image.open(p) as im:
            return np.asarray(im)
    except InputError:
        raise
    except ImportError as e:
        raise InputError(f"{p}: reading {suffix} files needs the optional package {e.name!r} "
                         f"(pip install 'fhcnn[io]')") from e
    except Exception as e:
        raise InputError(f"{p}: cannot read as {suffix} ({_one_line(e)})") from e


def _pick(p: Path, key: str | None, names: list[str], get: Any) -> np.ndarray:
    if key is not None:
        if key not in names:
            raise InputError(f"{p}: no array {key!r} (it holds {', '.join(names) or 'none'})")
        return get(key)
    if len(names) != 1:
        raise InputError(f"{p}: holds {len(names)} arrays ({', '.join(names) or 'none'}); "
                         f"say which one to use")
    return get(names[0])
