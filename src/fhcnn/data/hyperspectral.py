"""Hyperspectral cubes, change-label maps and a bitemporal scene generator.

Every cube reader returns a float32 array ``(H, W, B)`` (rows, columns, bands), whatever the
layout on disk:

=================  ===========================================================================
format             how it is read
=================  ===========================================================================
``.npy``           ``(H, W, B)``; a 4D ``(2, H, W, B)`` array holds both dates (:func:`read_pair`)
``.mat`` (v4-7)    ``scipy.io.loadmat``; the variable ``key`` or the only/largest >= 2D array,
                   MATLAB's ``(rows, cols, bands)`` is already ``(H, W, B)``
``.mat`` (v7.3)    HDF5 through ``h5py``; HDF5 shows MATLAB arrays with the axes *reversed*
                   (``(B, W, H)``), so they are transposed back to ``(H, W, B)``
``(B, H*W)`` .mat  unmixing-style matrices (Samson, Jasper Ridge) with ``nRow``/``nCol``
                   scalars: pixels are columns in MATLAB (column-major) order
ENVI               the header (``.hdr``/``.HDR``) or the raw data path; ``samples``, ``lines``,
                   ``bands``, ``header offset``, ``data type``, ``interleave`` (BSQ/BIL/BIP)
                   and ``byte order`` come from the header; read with ``numpy.memmap``
TIFF / GeoTIFF     ``tifffile``; the page series' axes decide the layout (``SYX``/``QYX`` =
                   band-first, ``YXS`` = band-last)
=================  ===========================================================================

Change labels are ``(H, W)`` uint8 maps: ``1`` changed, ``0`` unchanged, ``255`` unlabelled
(:data:`IGNORE`). They come from one map (``.npy`` with NaN or 255 for unlabelled, or an
8-bit PNG/BMP/TIFF with values 0/1/255), from two partial-reference masks (``changed`` /
``unchanged``: nonzero = member), or from one full binary mask (nonzero = changed, zero =
unchanged). :func:`sample_labels` draws a seeded, stratified training subset and leaves the
rest for scoring.

:func:`make_bitemporal_scene` generates a two-date scene with exact ground truth.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError

__all__ = [
    "IGNORE", "CUBE_SUFFIXES", "read_cube", "read_pair", "read_envi", "read_envi_header",
    "write_envi", "read_change_map", "labels_from_masks", "sample_labels", "check_labels",
    "BitemporalScene", "make_bitemporal_scene", "spectral_library", "false_color",
]

IGNORE = 255
"""Label value of unlabelled pixels."""

CUBE_SUFFIXES = (".npy", ".mat", ".hdr", ".tif", ".tiff", ".img", ".dat", ".raw", ".bsq",
                 ".bil", ".bip", "(none: ENVI raw file next to a .hdr/.HDR header)")

# ENVI "data type" codes -> numpy dtypes (complex types are not supported)
_ENVI_DTYPES = {1: np.uint8, 2: np.int16, 3: np.int32, 4: np.float32, 5: np.float64,
                12: np.uint16, 13: np.uint32, 14: np.int64, 15: np.uint64}
_ENVI_DATA_EXTS = ("", ".img", ".dat", ".raw", ".bsq", ".bil", ".bip")


# --------------------------------------------------------------------------------------
# ENVI
# --------------------------------------------------------------------------------------

def read_envi_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse an ENVI header into a dict (keys lower-case; ``{...}`` lists become lists of str).

    Raises:
        InputError: the file does not start with ``ENVI`` or cannot be decoded.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as e:
        raise InputError(f"{path}: cannot read ENVI header ({e.strerror or e})") from None
    if not text.lstrip().startswith("ENVI"):
        raise InputError(f"{path}: not an ENVI header (the first word must be 'ENVI')")
    out: dict[str, Any] = {}
    lines = text.splitlines()[1:]
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if "=" not in line:
            continue
        key, value = line.split("=", 1)
        key, value = key.strip().lower(), value.strip()
        if value.startswith("{"):
            while "}" not in value and i < len(lines):
                value += "\n" + lines[i]
                i += 1
            inner = value[1:value.rfind("}")] if "}" in value else value[1:]
            if key in ("description", "coordinate system string"):
                out[key] = inner.strip()
            else:
                out[key] = [v.strip() for v in inner.replace("\n", " ").split(",") if v.strip()]
        else:
            out[key] = value
    return out


def _header_int(h: dict[str, Any], key: str, path: Path, default: int | None = None) -> int:
    if key not in h:
        if default is None:
            raise InputError(f"{path}: ENVI header has no '{key}'")
        return default
    try:
        return int(str(h[key]).strip())
    except ValueError:
        raise InputError(f"{path}: ENVI header '{key} = {h[key]}' is not an integer") from None


def _envi_paths(path: Path) -> tuple[Path, Path]:
    """(header, data) for an ENVI header path or raw data path."""
    if path.suffix.lower() == ".hdr":
        header = path
        stem = path.with_suffix("")
        candidates = [Path(str(stem) + e) for e in _ENVI_DATA_EXTS] + \
                     [Path(str(stem) + e.upper()) for e in _ENVI_DATA_EXTS if e]
        data = next((c for c in candidates if c.is_file()), None)
        if data is None:
            raise InputError(f"{path}: ENVI header found but no data file next to it "
                             f"(looked for {stem.name} with extensions none/.img/.dat/.raw/.bsq/.bil/.bip)")
        return header, data
    candidates = [Path(str(path) + ".hdr"), Path(str(path) + ".HDR"),
                  path.with_suffix(".hdr"), path.with_suffix(".HDR")]
    header = next((c for c in candidates if c.is_file()), None)
    if header is None:
        raise InputError(f"{path}: no ENVI header next to it (looked for {path.name}.hdr/.HDR"
                         f"{' and ' + path.with_suffix('.hdr').name if path.suffix else ''})")
    return header, path


def read_envi(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an ENVI image given its header or its raw data path.

    Args:
        path: ``scene.hdr``/``scene.HDR`` (the data file is ``scene``, ``scene.img``, ...)
            or the raw data file (its header is ``scene.hdr``/``scene.HDR`` or
            ``scene.img.hdr``).

    Returns:
        ``(cube, header)``: ``cube`` is ``(H, W, B)`` = (lines, samples, bands) in the file's
        numeric type (a read-only view of a memory map), ``header`` the parsed header.

    Raises:
        InputError: missing/invalid header, unsupported data type or interleave, data file
            shorter than the header says.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    header_path, data_path = _envi_paths(path)
    h = read_envi_header(header_path)
    samples = _header_int(h, "samples", header_path)
    lines = _header_int(h, "lines", header_path)
    bands = _header_int(h, "bands", header_path)
    offset = _header_int(h, "header offset", header_path, default=0)
    code = _header_int(h, "data type", header_path)
    if code not in _ENVI_DTYPES:
        raise InputError(f"{header_path}: ENVI data type {code} is not supported "
                         f"(supported: {sorted(_ENVI_DTYPES)}; complex types are not)")
    order = _header_int(h, "byte order", header_path, default=0)
    if order not in (0, 1):
        raise InputError(f"{header_path}: 'byte order = {order}' must be 0 (little) or 1 (big endian)")
    dtype = np.dtype(_ENVI_DTYPES[code]).newbyteorder("<" if order == 0 else ">")
    interleave = str(h.get("interleave", "bsq")).strip().lower()
    shapes = {"bsq": (bands, lines, samples), "bil": (lines, bands, samples),
              "bip": (lines, samples, bands)}
    if interleave not in shapes:
        raise InputError(f"{header_path}: interleave '{interleave}' must be bsq, bil or bip")
    if min(samples, lines, bands) < 1:
        raise InputError(f"{header_path}: samples/lines/bands must be >= 1, "
                         f"got {samples}/{lines}/{bands}")
    need = offset + samples * lines * bands * dtype.itemsize
    size = data_path.stat().st_size
    if size < need:
        raise InputError(f"{data_path}: file has {size} bytes but the header "
                         f"({header_path.name}: {lines}x{samples}x{bands} {interleave}, "
                         f"{dtype.name}, offset {offset}) needs {need}")
    raw = np.memmap(data_path, dtype=dtype, mode="r", offset=offset, shape=shapes[interleave])
    axes = {"bsq": (1, 2, 0), "bil": (0, 2, 1), "bip": (0, 1, 2)}[interleave]
    return raw.transpose(axes), h


def write_envi(path: str | os.PathLike[str], cube: np.ndarray, interleave: str = "bsq",
               byte_order: int = 0, header_suffix: str = ".hdr",
               wavelength: Sequence[float] | None = None) -> tuple[Path, Path]:
    """Write ``cube`` ``(H, W, B)`` as a raw ENVI file ``path`` with header ``path + suffix``.

    Used by the tests and to export generated scenes. Returns ``(header, data)``.
    """
    path = Path(path)
    cube = np.asarray(cube)
    if cube.ndim == 2:
        cube = cube[:, :, None]
    inv = {np.dtype(v).name: k for k, v in _ENVI_DTYPES.items()}
    if cube.dtype.name not in inv:
        raise ValueError(f"dtype {cube.dtype} has no ENVI data type code")
    order = {"bsq": (2, 0, 1), "bil": (0, 2, 1), "bip": (0, 1, 2)}[interleave.lower()]
    arr = np.ascontiguousarray(cube.transpose(order)).astype(
        cube.dtype.newbyteorder("<" if byte_order == 0 else ">"))
    path.write_bytes(arr.tobytes())
    header = Path(str(path) + header_suffix)
    h, w, b = cube.shape
    text = (f"ENVI\ndescription = {{\n  written by fhcnn}}\nsamples = {w}\nlines   = {h}\n"
            f"bands   = {b}\nheader offset = 0\nfile type = ENVI Standard\n"
            f"data type = {inv[cube.dtype.name]}\ninterleave = {interleave.lower()}\n"
            f"byte order = {byte_order}\n")
    if wavelength is not None:
        text += "wavelength = {\n " + ", ".join(f"{v:.6f}" for v in wavelength) + "}\n"
    header.write_text(text)
    return header, path


# --------------------------------------------------------------------------------------
# .mat, TIFF, .npy
# --------------------------------------------------------------------------------------

def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(1024)
    return b"\x89HDF\r\n\x1a\n" in head[:8] or head[512:520] == b"\x89HDF\r\n\x1a\n"


def _mat_variables(path: Path) -> dict[str, np.ndarray]:
    """All numeric arrays of a .mat file, in (MATLAB) ``(rows, cols, ...)`` order."""
    if _is_hdf5(path):
        import h5py

        out: dict[str, np.ndarray] = {}
        with h5py.File(path, "r") as f:
            for name, obj in f.items():
                if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biuf" and not name.startswith("#"):
                    # HDF5 stores MATLAB's column-major arrays with the axis order reversed
                    out[name] = np.asarray(obj[()]).T
        return out
    import scipy.io

    try:
        raw = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several types for corrupt files
        raise InputError(f"{path}: cannot read as a MATLAB .mat file ({e})") from None
    return {k: v for k, v in raw.items()
            if not k.startswith("__") and isinstance(v, np.ndarray) and v.dtype.kind in "biuf"}


def _pick_mat_cube(path: Path, variables: dict[str, np.ndarray], key: str | None,
                   ndim: tuple[int, ...] = (2, 3)) -> np.ndarray:
    if key is not None:
        if key not in variables:
            raise InputError(f"{path}: no numeric variable '{key}' (variables: {sorted(variables)})")
        arr = variables[key]
    else:
        cands = {k: v for k, v in variables.items() if v.ndim in ndim and v.size > 1}
        if not cands:
            raise InputError(f"{path}: no {'/'.join(map(str, ndim))}-D numeric variable "
                             f"(variables: {sorted(variables)}); pass the variable name")
        arr = max(cands.values(), key=lambda v: v.size)
    if arr.ndim == 2 and "nRow" in variables and "nCol" in variables:
        # unmixing layout: (bands, rows*cols), pixels in MATLAB column-major order
        rows, cols = int(np.squeeze(variables["nRow"])), int(np.squeeze(variables["nCol"]))
        if arr.shape[1] == rows * cols:
            arr = arr.reshape(arr.shape[0], rows, cols, order="F").transpose(1, 2, 0)
        elif arr.shape[0] == rows * cols:
            arr = arr.reshape(rows, cols, arr.shape[1], order="F")
    return arr


def _tiff_cube(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            arr, axes = series.asarray(), series.axes
    except Exception as e:
        raise InputError(f"{path}: cannot read as TIFF ({e})") from None
    if arr.ndim == 3 and axes.endswith("YX"):   # band-first (planar / multi-page)
        arr = np.moveaxis(arr, 0, -1)
    elif arr.ndim == 4 and axes.endswith("YX"):  # (T, B, H, W) -> (T, H, W, B)
        arr = np.moveaxis(arr, 1, -1)
    return arr


def _load_any(path: Path, key: str | None, ndim: tuple[int, ...]) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a hyperspectral file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            try:
                return np.load(path, mmap_mode="r", allow_pickle=False)
            except Exception as e:
                raise InputError(f"{path}: cannot read as .npy ({e})") from None
        if suffix == ".mat":
            return _pick_mat_cube(path, _mat_variables(path), key, ndim)
        if suffix in (".tif", ".tiff"):
            return _tiff_cube(path)
        if suffix == ".hdr" or suffix in _ENVI_DATA_EXTS or any(
                Path(str(path) + e).is_file() for e in (".hdr", ".HDR")) or \
                path.with_suffix(".hdr").is_file() or path.with_suffix(".HDR").is_file():
            return read_envi(path)[0]
    except PermissionError as e:
        raise InputError(f"{path}: permission denied ({e.strerror})") from None
    raise InputError(f"{path}: unknown hyperspectral format '{path.suffix}'; supported: "
                     ".npy, .mat (v5 and v7.3), ENVI (.hdr/.HDR header or raw file), .tif/.tiff")


def _finish(arr: np.ndarray, path: Path, what: str = "cube") -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{path}: {what} has non-numeric type {arr.dtype}")
    out = np.array(arr, dtype=np.float32, order="C")   # a writable copy (inputs may be memory maps)
    bad = ~np.isfinite(out)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{path}: {what} contains {int(bad.sum())} NaN/inf value(s) "
                         f"(first at index {idx}); fill or mask them before training")
    return out


def read_cube(path: str | os.PathLike[str], key: str | None = None) -> np.ndarray:
    """Read one hyperspectral image as float32 ``(H, W, B)`` (see the module table).

    Args:
        path: ``.npy``, ``.mat``, ENVI header or raw file, ``.tif``/``.tiff``.
        key: variable name inside a ``.mat`` file (default: the only/largest 2-3D array).

    Raises:
        FileNotFoundError, InputError: unreadable file, wrong rank, NaN/inf values.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.npy"; np.save(p, np.ones((4, 5, 3)))
        >>> read_cube(p).shape
        (4, 5, 3)
    """
    path = Path(path)
    arr = _load_any(path, key, (2, 3))
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise InputError(f"{path}: expected one image (H, W, bands), got shape {tuple(arr.shape)}"
                         + ("; a 4D file holds both dates: give it alone as BEFORE" if arr.ndim == 4 else ""))
    return _finish(arr, path)


def read_pair(path: str | os.PathLike[str], key: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read both dates from one 4D file: ``(2, H, W, B)`` (dates first) or ``(H, W, B, 2)``.

    A ``.mat`` file holding exactly two 3D arrays of equal shape (e.g. ``T1``, ``T2``) is read
    as the pair in name order. TIFF: ``(2, B, H, W)`` pages series.
    """
    path = Path(path)
    if path.suffix.lower() == ".mat" and key is None:
        variables = _mat_variables(path) if path.exists() else {}
        threes = {k: v for k, v in variables.items() if v.ndim == 3}
        if len(threes) == 2 and not any(v.ndim == 4 for v in variables.values()):
            (k1, a), (k2, b) = sorted(threes.items())
            if a.shape != b.shape:
                raise InputError(f"{path}: variables {k1} {a.shape} and {k2} {b.shape} differ in shape")
            return _finish(a, path, k1), _finish(b, path, k2)
    arr = _load_any(path, key, (4,))
    if arr.ndim != 4:
        raise InputError(f"{path}: a single input must be 4D (2, H, W, bands) holding both dates, "
                         f"got shape {tuple(arr.shape)}; otherwise give BEFORE and AFTER")
    if arr.shape[0] == 2:
        a, b = arr[0], arr[1]
    elif arr.shape[-1] == 2:
        a, b = arr[..., 0], arr[..., 1]
    else:
        raise InputError(f"{path}: a 4D input needs a date axis of length 2 first or last, "
                         f"got shape {tuple(arr.shape)}")
    return _finish(a, path, "date 1"), _finish(b, path, "date 2")


# --------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------

def _read_2d(path: Path) -> np.ndarray:
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
        arr = _pick_mat_cube(path, {k: v for k, v in variables.items() if v.ndim == 2}, None, (2,))
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                if im.mode in ("RGB", "RGBA", "LA"):
                    arr = np.asarray(im.convert("RGB"))
                else:
                    arr = np.asarray(im)
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


def _check_shape(arr: np.ndarray, shape: tuple[int, int] | None, path: Path) -> None:
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise InputError(f"{path}: label map is {arr.shape[0]}x{arr.shape[1]} (H x W) but the "
                         f"scene is {shape[0]}x{shape[1]}")


def read_change_map(path: str | os.PathLike[str], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a change map: ``1`` changed, ``0`` unchanged, ``255`` or NaN unlabelled.

    Args:
        path: ``.npy`` (any numeric type; NaN = unlabelled), PNG/BMP/TIFF (8-bit grey or
            palette) or ``.mat``.
        shape: expected ``(H, W)``; a different size raises ``InputError``.

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
                      shape: tuple[int, int] | None = None) -> np.ndarray:
    """Labels from partial-reference masks (nonzero = member of that class).

    ``changed`` and ``unchanged`` given: pixels nonzero in ``changed`` are 1, nonzero in
    ``unchanged`` are 0, the rest unlabelled (a pixel in both raises). Only ``changed``
    given: it is a *full* binary map (nonzero = changed, zero = unchanged). Only
    ``unchanged`` given: full map with the roles swapped.
    """
    if changed is None and unchanged is None:
        raise InputError("give --changed and/or --unchanged masks")
    maps = {}
    for name, p in (("changed", changed), ("unchanged", unchanged)):
        if p is not None:
            arr = _read_2d(Path(p))
            _check_shape(arr, shape, Path(p))
            a = arr.astype(np.float64)
            maps[name] = np.isfinite(a) & (a != 0)
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
    if changed is not None:
        return maps["changed"].astype(np.uint8)
    return (~maps["unchanged"]).astype(np.uint8)


def check_labels(labels: np.ndarray, what: str = "labels") -> dict[str, int]:
    """Raise ``InputError`` unless both classes have labelled pixels; return the counts."""
    n0, n1 = int((labels == 0).sum()), int((labels == 1).sum())
    if n0 + n1 == 0:
        raise InputError(f"{what}: no labelled pixels (every pixel is 255/NaN = unlabelled)")
    if n0 == 0 or n1 == 0:
        only = "changed (1)" if n0 == 0 else "unchanged (0)"
        raise InputError(f"{what}: only {only} pixels are labelled ({n0 + n1}); training needs "
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


# --------------------------------------------------------------------------------------
# display
# --------------------------------------------------------------------------------------

def false_color(cube: np.ndarray, bands: Sequence[int] | None = None,
                lo_hi: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``(H, W, 3)`` float image in [0, 1] from three bands (default: near 3/4, 1/2, 1/4 of
    the band range, i.e. a NIR-red-green style composite), 2-98 % stretched per band.
    Pass the same ``lo_hi`` for both dates so their colours compare."""
    b = cube.shape[-1]
    if bands is None:
        bands = [min(b - 1, int(b * f)) for f in (0.75, 0.5, 0.25)] if b >= 3 else [0] * 3
    rgb = cube[..., list(bands)].astype(np.float64)
    if lo_hi is None:
        lo_hi = (np.percentile(rgb, 2, axis=(0, 1)), np.percentile(rgb, 98, axis=(0, 1)))
    lo, hi = lo_hi
    return np.clip((rgb - lo) / np.maximum(hi - lo, 1e-12), 0, 1)


# --------------------------------------------------------------------------------------
# generator
# --------------------------------------------------------------------------------------

MATERIALS = ("crop_a", "crop_b", "grass", "soil", "water", "urban")


def _gauss(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mu) / sigma) ** 2)


def _sig(x: np.ndarray, mu: float, s: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(x - mu) / s))


def spectral_library(wavelengths: np.ndarray, phenology: float = 0.0) -> dict[str, np.ndarray]:
    """Smooth reflectance spectra (0..1) of :data:`MATERIALS` at ``wavelengths`` (micrometres).

    Vegetation has a green peak, a red edge near 0.7 um, a NIR plateau and water absorption
    at 1.45 and 1.95 um; ``phenology`` (about -1..1) shifts the red edge and scales the NIR
    plateau and chlorophyll absorption (the same crop looks different on another date).
    """
    w = np.asarray(wavelengths, np.float64)
    water_abs = 1 - 0.5 * _gauss(w, 1.45, 0.05) - 0.7 * _gauss(w, 1.95, 0.07)

    def veg(nir: float, edge: float, green: float, swir: float) -> np.ndarray:
        edge = edge + 0.01 * phenology
        nir = nir * (1 + 0.12 * phenology)
        vis = 0.04 + green * _gauss(w, 0.55, 0.04)
        r = vis + (nir - 0.04) * _sig(w, edge, 0.015)
        r = r - (nir - swir) * _sig(w, 1.3, 0.12)
        return np.clip(r * water_abs, 0.005, 1)

    soil = (0.08 + 0.25 * _sig(w, 0.9, 0.35)) * (1 - 0.25 * _gauss(w, 1.95, 0.08)) \
        * (1 - 0.15 * _gauss(w, 2.2, 0.04))
    return {
        "crop_a": veg(0.48, 0.715, 0.06, 0.22),
        "crop_b": veg(0.36, 0.700, 0.035, 0.30),
        "grass": veg(0.30, 0.705, 0.045, 0.26) * 0.85 + 0.15 * soil,
        "soil": soil,
        "water": np.clip(0.06 * np.exp(-(w - 0.45) / 0.12) + 0.008, 0.005, 1),
        "urban": 0.18 + 0.06 * _sig(w, 0.6, 0.2) - 0.03 * _gauss(w, 2.2, 0.1),
    }


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ``scale`` pixels."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape), scale, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


@dataclass
class BitemporalScene:
    """A generated two-date scene.

    Attributes:
        before, after: float32 ``(H, W, B)`` reflectance with noise and a date-2 nuisance
            (gain/offset per band, crop phenology).
        change: uint8 ``(H, W)`` ground truth, 1 where the dominant land cover changed
            (half the L1 distance between the two abundance vectors >= 0.5).
        abundance_before, abundance_after: float32 ``(H, W, M)`` (sum to 1 per pixel).
        wavelengths: ``(B,)`` micrometres; materials: names of the ``M`` materials.
        events: list of dicts describing each change (kind, field/centre, materials).
    """

    before: np.ndarray
    after: np.ndarray
    change: np.ndarray
    abundance_before: np.ndarray
    abundance_after: np.ndarray
    wavelengths: np.ndarray
    materials: tuple[str, ...] = MATERIALS
    events: list[dict[str, Any]] = field(default_factory=list)


def make_bitemporal_scene(height: int = 96, width: int = 96, bands: int = 32, seed: int = 0,
                          *, n_pivots: int | None = None, n_crop_changes: int | None = None, noise: float = 0.01,
                          field_size: int = 24) -> BitemporalScene:
    """Generate an agricultural two-date hyperspectral scene with exact change ground truth.

    Layout: a grid of jittered rectangular fields (crop A, crop B, grass, bare soil), a
    meandering river, a straight road; abundances are the field one-hot maps blurred at the
    borders (mixed pixels) plus a smooth soil fraction inside vegetated fields (vigour).
    Date 2 changes: ``n_pivots`` new centre-pivot irrigation circles (crop appearing in a
    grass/soil field) and ``n_crop_changes`` fields whose crop changed (A <-> B, or harvested
    to soil). Nuisances that are *not* change: a different phenology of every crop, a smooth
    per-band gain and offset (illumination/atmosphere), and sensor noise of std ``noise``.

    Args:
        height, width: scene size in pixels (>= 16).
        bands: spectral bands, evenly spaced in 0.4-2.5 um (>= 3).
        seed: every random choice comes from ``numpy.random.default_rng(seed)``.
        n_pivots, n_crop_changes: number of each change (default: 15 % of the fields each,
            at least 1).
        noise: standard deviation of the additive sensor noise (reflectance units).
        field_size: typical field side in pixels.
    """
    from scipy.ndimage import gaussian_filter

    if height < 16 or width < 16 or bands < 3:
        raise ValueError(f"scene must be at least 16x16 with 3 bands, got {height}x{width}x{bands}")
    rng = np.random.default_rng(seed)
    wl = np.linspace(0.4, 2.5, bands)
    m_idx = {m: i for i, m in enumerate(MATERIALS)}
    n_m = len(MATERIALS)

    # --- field layout: jittered grid ---------------------------------------------------
    def cuts(n: int) -> np.ndarray:
        k = max(1, round(n / field_size))
        edges = np.linspace(0, n, k + 1)
        edges[1:-1] += rng.uniform(-0.2, 0.2, k - 1) * n / k
        return np.round(edges).astype(int)

    ys, xs = cuts(height), cuts(width)
    field_id = np.zeros((height, width), np.int64)
    fields = []
    for i in range(len(ys) - 1):
        for j in range(len(xs) - 1):
            field_id[ys[i]:ys[i + 1], xs[j]:xs[j + 1]] = len(fields)
            fields.append((ys[i], ys[i + 1], xs[j], xs[j + 1]))
    n_f = len(fields)
    cover_choices = ["crop_a", "crop_b", "grass", "soil"]
    if n_pivots is None:
        n_pivots = max(1, round(0.15 * n_f))
    if n_crop_changes is None:
        n_crop_changes = max(1, round(0.15 * n_f))
    cover = list(rng.choice(cover_choices, size=n_f, p=[0.3, 0.3, 0.25, 0.15]))

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)

    def abundances(cover_of_field: list[str], pivots: list[tuple[float, float, float]]) -> np.ndarray:
        a = np.zeros((height, width, n_m))
        for f, c in enumerate(cover_of_field):
            a[..., m_idx[c]] += field_id == f
        for cy, cx, r in pivots:
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
            a[disc] = 0
            a[disc, m_idx["crop_a"]] = 1
        return a

    # river and road are fixed features (no change)
    river_c = height * rng.uniform(0.3, 0.7) + height * 0.08 * np.sin(xx / width * 2 * np.pi * rng.uniform(0.8, 1.5))
    river = np.abs(yy - river_c) < max(1.5, height / 48)
    road_x = int(rng.integers(width // 5, 4 * width // 5))
    road = np.abs(xx - road_x) < max(1.0, width / 96)

    # --- changes ----------------------------------------------------------------------
    events: list[dict[str, Any]] = []
    cover2 = list(cover)
    free = [f for f in range(n_f)]
    rng.shuffle(free)
    pivots2: list[tuple[float, float, float]] = []
    # centre pivots in grass/soil fields (create one if none qualifies)
    pivot_fields = [f for f in free if cover[f] in ("grass", "soil")][:n_pivots]
    for f in free:
        if len(pivot_fields) >= n_pivots:
            break
        if f not in pivot_fields:
            cover[f] = cover2[f] = str(rng.choice(["grass", "soil"]))
            pivot_fields.append(f)
    for f in pivot_fields:
        y0, y1, x0, x1 = fields[f]
        r = 0.5 * min(y1 - y0, x1 - x0) * rng.uniform(0.75, 0.95)
        pivots2.append(((y0 + y1) / 2, (x0 + x1) / 2, r))
        events.append({"kind": "centre_pivot", "field": int(f), "centre": [(y0 + y1) / 2, (x0 + x1) / 2],
                       "radius": float(r), "from": cover[f], "to": "crop_a"})
    crop_fields = [f for f in free if f not in pivot_fields][:n_crop_changes]
    for f in crop_fields:
        c = cover[f]
        new = {"crop_a": "crop_b", "crop_b": "crop_a", "grass": "crop_b", "soil": "crop_b"}[c]
        if c in ("crop_a", "crop_b") and rng.random() < 0.35:
            new = "soil"  # harvested
        cover2[f] = new
        events.append({"kind": "crop_change", "field": int(f), "from": c, "to": new})

    a1, a2 = abundances(cover, []), abundances(cover2, pivots2)
    for a in (a1, a2):
        a[river] = 0
        a[river, m_idx["water"]] = 1
        a[road] = 0
        a[road, m_idx["urban"]] = 1
    # mixed pixels at borders: the same blur on both dates
    a1 = np.stack([gaussian_filter(a1[..., k], 0.8, mode="nearest") for k in range(n_m)], -1)
    a2 = np.stack([gaussian_filter(a2[..., k], 0.8, mode="nearest") for k in range(n_m)], -1)
    # within-field vigour: a smooth soil fraction in vegetated pixels, the same on both dates
    # (date 2 gets its own small variation)
    vigour = 0.15 + 0.1 * _smooth_noise(rng, (height, width), 6.0)
    vigour2 = np.clip(vigour + 0.04 * _smooth_noise(rng, (height, width), 6.0), 0, 0.5)
    vigour = np.clip(vigour, 0, 0.5)
    veg = [m_idx[m] for m in ("crop_a", "crop_b", "grass")]
    for a, v in ((a1, vigour), (a2, vigour2)):
        moved = a[..., veg] * v[..., None]
        a[..., veg] -= moved
        a[..., m_idx["soil"]] += moved.sum(-1)
    a1 /= a1.sum(-1, keepdims=True)
    a2 /= a2.sum(-1, keepdims=True)

    change = (0.5 * np.abs(a2 - a1).sum(-1) >= 0.5).astype(np.uint8)

    lib1 = spectral_library(wl, phenology=0.0)
    lib2 = spectral_library(wl, phenology=float(rng.uniform(-1, -0.5)))
    e1 = np.stack([lib1[m] for m in MATERIALS], 0)   # (M, B)
    e2 = np.stack([lib2[m] for m in MATERIALS], 0)
    # per-pixel endmember variability (brightness), smooth in space
    bright1 = 1 + 0.05 * _smooth_noise(rng, (height, width), 3.0)
    bright2 = 1 + 0.05 * _smooth_noise(rng, (height, width), 3.0)
    x1 = (a1 @ e1) * bright1[..., None]
    x2 = (a2 @ e2) * bright2[..., None]
    # date-2 illumination/atmosphere: smooth gain and additive path radiance, per band
    gain = 1 + 0.08 * np.sin(wl * rng.uniform(1.5, 3.0) + rng.uniform(0, 2 * np.pi))
    offset = 0.02 * np.exp(-(wl - 0.4) / 0.3)
    x2 = x2 * gain + offset
    x1 = x1 + noise * rng.standard_normal(x1.shape)
    x2 = x2 + noise * rng.standard_normal(x2.shape)
    return BitemporalScene(before=x1.astype(np.float32), after=x2.astype(np.float32),
                           change=change, abundance_before=a1.astype(np.float32),
                           abundance_after=a2.astype(np.float32), wavelengths=wl.astype(np.float32),
                           events=events)
