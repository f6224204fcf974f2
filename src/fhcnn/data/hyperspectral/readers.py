"""Readers of hyperspectral cubes.

Every cube reader returns a float32 array ``(H, W, B)`` (rows, columns, bands), whatever the
layout on disk:

=================  ===========================================================================
format             how it is read
=================  ===========================================================================
``.npy``           ``(H, W, B)``; a 4D ``(2, H, W, B)`` array holds both dates (:func:`read_pair`)
``.mat`` (v4-7)    ``scipy.io.loadmat``; the variable ``key`` or the only/largest >= 2D array
                   (two or more of the largest size are refused, naming them),
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
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from ..units import LENGTH_UNITS

__all__ = ["CUBE_SUFFIXES", "read_cube", "read_pair", "open_cube", "open_pair", "read_envi", "read_envi_header",
           "write_envi", "input_files", "band_wavelengths", "check_same_bands", "pixel_grid",
           "check_same_grid"]

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
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise InputError(f"{path}: no ENVI header next to it (looked for {path.name}.hdr/.HDR"
                         f"{' and ' + path.with_suffix('.hdr').name if path.suffix else ''})")
    return found, path


def _is_envi(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in (".npy", ".mat", ".tif", ".tiff"):
        return False
    return suffix == ".hdr" or any(Path(str(path) + e).is_file() for e in (".hdr", ".HDR")) or \
        path.with_suffix(".hdr").is_file() or path.with_suffix(".HDR").is_file()


def input_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files an input path stands for: an ENVI header and its raw data file (either may be
    given, the one given first), else just the path. Used to fingerprint a run's inputs."""
    p = Path(path)
    if p.is_file() and _is_envi(p):
        try:
            header, data = _envi_paths(p)
        except InputError:
            return [p]
        return [p, data if p == header else header]
    return [p]


def band_wavelengths(path: str | os.PathLike[str]) -> np.ndarray | None:
    """The band centres of an ENVI image (its header's ``wavelength``, in nanometres when
    ``wavelength units`` names a length), or ``None``: not ENVI, or no usable list (missing, not
    numbers, not one per band)."""
    p = Path(path)
    if not (p.is_file() and _is_envi(p)):
        return None
    try:
        h = read_envi_header(_envi_paths(p)[0])
        values = np.array([float(v) for v in h.get("wavelength") or []], np.float64)
        bands = int(str(h.get("bands", -1)).strip())
    except (InputError, ValueError):
        return None
    if values.size == 0 or values.size != bands or not np.isfinite(values).all():
        return None
    unit = LENGTH_UNITS.get(str(h.get("wavelength units", "")).strip().lower())
    return values * (unit / LENGTH_UNITS["nm"] if unit is not None else 1.0)  # other units: as they stand


def check_same_bands(before: str | os.PathLike[str], after: str | os.PathLike[str]) -> None:
    """Refuse two dates whose headers list different bands: where both give wavelengths, band
    ``i`` of AFTER must lie nearer band ``i`` of BEFORE than any other band (a reversed or shifted
    band list pairs different bands as one; a sensor's small shifts of the centres pass)."""
    wb, wa = band_wavelengths(before), band_wavelengths(after)
    if wb is None or wa is None or wb.size != wa.size:
        return
    nearest = np.abs(wa[:, None] - wb[None, :]).argmin(1)
    wrong = np.flatnonzero(nearest != np.arange(wa.size))
    if wrong.size:
        i = int(wrong[0])
        raise InputError(f"the dates' bands differ: band {i} of AFTER {after} is at wavelength {wa[i]:g} "
                         f"but band {i} of BEFORE {before} is at {wb[i]:g} (nearest: its band {int(nearest[i])}); "
                         f"give both dates with the same bands in the same order")


def _envi_grid(path: Path) -> tuple[tuple[str, ...], float, float, float, float] | None:
    """ENVI ``map info = {projection, ref x, ref y, easting, northing, dx, dy, ...}`` (reference
    pixel 1-based, (1, 1) the upper-left corner of the first pixel) as a pixel grid."""
    try:
        info = read_envi_header(_envi_paths(path)[0]).get("map info")
    except InputError:
        return None
    if not isinstance(info, list) or len(info) < 7:
        return None
    try:
        rx, ry, e, n, dx, dy = (float(v) for v in info[1:7])
    except ValueError:
        return None
    crs = tuple(str(v).strip().lower().replace(" ", "") for v in [info[0], *info[7:]])
    return crs, e - (rx - 1) * dx, n + (ry - 1) * dy, dx, dy


def _geokeys(directory: Any, doubles: Any) -> tuple[str, ...]:
    """The coordinate system a GeoTIFF's GeoKey directory (tag 34735) states: each key with a
    number (model and raster type, EPSG codes, units, held in the directory) or numbers (from
    GeoDoubleParams, tag 34736), as ``"key=value"``, by key. Text keys (citations) are left out:
    two writers name one coordinate system in other words."""
    d = [int(v) for v in directory or ()]
    dbl = [float(v) for v in doubles or ()]
    out = []
    for k in range(4, 4 + 4 * (d[3] if len(d) >= 4 else 0), 4):
        if k + 3 >= len(d):
            break
        key, where, count, value = d[k:k + 4]
        if where == 0:
            out.append(f"{key}={value}")
        elif where == 34736:
            out.append(f"{key}=" + ",".join(f"{v:.12g}" for v in dbl[value:value + count]))
    return tuple(sorted(out))


def _tiff_grid(path: Path) -> tuple[tuple[str, ...], float, float, float, float] | None:
    """A GeoTIFF's pixel grid: the first tie point and the pixel scale (or the model
    transformation), and the coordinate system its GeoKeys state (:func:`_geokeys`)."""
    try:
        import tifffile

        with tifffile.TiffFile(str(path)) as tif:
            tags = tif.pages[0].tags
            keys, doubles = tags.get(34735), tags.get(34736)
            crs = _geokeys(keys.value if keys is not None else (), doubles.value if doubles is not None else ())
            scale, tie, matrix = tags.get(33550), tags.get(33922), tags.get(34264)
            if scale is not None and tie is not None and len(tie.value) >= 6:
                sx, sy = float(scale.value[0]), float(scale.value[1])
                i, j, x, y = (float(tie.value[k]) for k in (0, 1, 3, 4))
                return crs, x - i * sx, y + j * sy, sx, sy
            if matrix is not None and len(matrix.value) >= 8:
                m = [float(v) for v in matrix.value]
                return crs + (f"{m[1]:g}", f"{m[4]:g}"), m[3], m[7], m[0], -m[5]
    except Exception:  # not a GeoTIFF the reader understands: nothing to compare
        return None
    return None


def pixel_grid(path: str | os.PathLike[str]) -> tuple[tuple[str, ...], float, float, float, float] | None:
    """Where an image's pixels lie on the ground: ``(coordinate system, x, y of the upper-left
    corner of the first pixel, pixel width, pixel height)`` from an ENVI header's ``map info`` or a
    GeoTIFF's tags; ``None`` when it has none."""
    p = Path(path)
    if not p.is_file():
        return None
    if p.suffix.lower() in (".tif", ".tiff"):
        return _tiff_grid(p)
    return _envi_grid(p) if _is_envi(p) else None


def check_same_grid(before: str | os.PathLike[str], after: str | os.PathLike[str], what: str = "AFTER") -> None:
    """Refuse two images of a scene (BEFORE and ``what``: AFTER, or a label map) that both say
    where they lie and lie on different pixel grids (another origin, by a hundredth of a pixel or
    more, another pixel size or coordinate system): the same row and column would be two places."""
    gb, ga = pixel_grid(before), pixel_grid(after)
    if gb is None or ga is None:
        return
    (cb, xb, yb, dxb, dyb), (ca, xa, ya, dxa, dya) = gb, ga
    same_size = np.isclose(dxa, dxb, rtol=1e-6, atol=0) and np.isclose(dya, dyb, rtol=1e-6, atol=0)
    if cb == ca and same_size and abs(xa - xb) <= 0.01 * abs(dxb) and abs(ya - yb) <= 0.01 * abs(dyb):
        return
    why = "another coordinate system" if cb != ca else (
        "another pixel size" if not same_size else
        f"an origin {(xa - xb) / dxb:+g} pixels across and {(yb - ya) / dyb:+g} pixels down")
    raise InputError(f"{'the dates' if what == 'AFTER' else 'BEFORE and ' + what} lie on different pixel "
                     f"grids: BEFORE {before}'s first pixel is at ({xb:g}, {yb:g}) with pixels of {dxb:g} x "
                     f"{dyb:g}, {what} {after}'s at ({xa:g}, {ya:g}) with {dxa:g} x {dya:g} ({why}), so one "
                     f"row and column are two places; resample both onto one grid first")


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
        InputError: missing/invalid header, unsupported data type or interleave, a data file
            whose size is not what the header says (shorter or longer), a negative offset.
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
    if offset < 0:
        raise InputError(f"{header_path}: 'header offset = {offset}' must be >= 0 (bytes before the data)")
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
    if size != need:
        # a file larger than the header says is as wrong as a shorter one: most often the
        # header names a smaller data type (or fewer bands) than the file holds
        hint = ""
        if size > need and (size - offset) % (samples * lines * bands) == 0:
            per = (size - offset) // (samples * lines * bands)
            hint = f" (the file holds {per} bytes per value, the header's data type {code} has {dtype.itemsize})"
        raise InputError(f"{data_path}: file has {size} bytes but the header "
                         f"({header_path.name}: {lines}x{samples}x{bands} {interleave}, "
                         f"{dtype.name}, offset {offset}) needs exactly {need}{hint}; fix the header "
                         f"(data type, samples/lines/bands, header offset)")
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


class _MatlabDataset:
    """A >= 3D array of a MATLAB v7.3 (HDF5) file, read on demand with its axes reversed back to
    MATLAB's order (the file is opened for each read)."""

    def __init__(self, path: Path, name: str, shape: Sequence[int], dtype: Any) -> None:
        self.path, self.name = path, name
        self.shape = tuple(int(n) for n in reversed(tuple(shape)))
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))

    def __getitem__(self, key: Any) -> np.ndarray:
        import h5py

        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        with h5py.File(self.path, "r") as f:
            return np.asarray(f[self.name][tuple(reversed(key))]).T

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self[()]
        return a if dtype is None else a.astype(dtype)


def _mat_variables(path: Path) -> dict[str, Any]:
    """All numeric arrays of a .mat file, in (MATLAB) ``(rows, cols, ...)`` order."""
    if _is_hdf5(path):
        import h5py

        out: dict[str, Any] = {}
        with h5py.File(path, "r") as f:
            for name, obj in f.items():
                if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biuf" and not name.startswith("#"):
                    # HDF5 stores MATLAB's column-major arrays with the axis order reversed
                    out[name] = _MatlabDataset(path, name, obj.shape, obj.dtype) if obj.ndim >= 3 \
                        else np.asarray(obj[()]).T
        return out
    import scipy.io

    try:
        raw = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several types for corrupt files
        raise InputError(f"{path}: cannot read as a MATLAB .mat file ({e})") from None
    return {k: v for k, v in raw.items()
            if not k.startswith("__") and isinstance(v, np.ndarray) and v.dtype.kind in "biuf"}


def _pick_mat_cube(path: Path, variables: dict[str, np.ndarray], key: str | None,
                   ndim: tuple[int, ...] = (2, 3), choose: str = "give --key NAME") -> np.ndarray:
    """The variable ``key``, or else the largest ``ndim``-D one (of more than one value).

    Raises:
        InputError: no variable ``key``; no candidate; two or more candidates of the largest
            size (which is the image is not clear: ``choose`` says what to do, e.g. ``--key``).
    """
    if key is not None:
        if key not in variables:
            raise InputError(f"{path}: no numeric variable '{key}' (variables: {sorted(variables)})")
        arr = variables[key]
    else:
        cands = {k: v for k, v in variables.items() if v.ndim in ndim and v.size > 1}
        if not cands:
            raise InputError(f"{path}: no {'/'.join(map(str, ndim))}-D numeric variable "
                             f"(variables: {sorted(variables)}); pass the variable name")
        largest = max(v.size for v in cands.values())
        tied = sorted(k for k, v in cands.items() if v.size == largest)
        if len(tied) > 1:
            raise InputError(f"{path}: {len(tied)} variables are the largest arrays of {largest} values ("
                             + ", ".join(f"{k} {tuple(cands[k].shape)}" for k in tied)
                             + f"), so which one to read is not clear; {choose}")
        arr = cands[tied[0]]
    if arr.ndim == 2 and "nRow" in variables and "nCol" in variables:
        arr = np.asarray(arr)
        # unmixing layout: (bands, rows*cols), pixels in MATLAB column-major order
        rows, cols = int(np.squeeze(variables["nRow"])), int(np.squeeze(variables["nCol"]))
        if arr.shape[1] == rows * cols:
            arr = arr.reshape(arr.shape[0], rows, cols, order="F").transpose(1, 2, 0)
        elif arr.shape[0] == rows * cols:
            arr = arr.reshape(rows, cols, arr.shape[1], order="F")
    return arr


def _tiff_cube(path: Path) -> Any:
    """The TIFF's one image series, band axis last: memory-mapped when its pixels are stored
    uncompressed in one block; otherwise (compressed, or in separate strips) decoded once, page by
    page, into a private chunked copy (:class:`~fhcnn.data.lazy.StagedCopy`; ``fhcnn change``
    moves it into its run folder) instead of decoding whole pages for every window."""
    from ..lazy import MovedAxes, StagedCopy, Unmapped
    from ..volumes.tiff import open_tiff

    raw = open_tiff(path, str(path))
    arr: Any = raw.array
    names = "".join(str(n) for n in raw.axis_names or ())
    planar = arr.ndim in (3, 4) and names.endswith("YX")   # band-first: (B, H, W) or (T, B, H, W)
    if planar:
        arr = MovedAxes(arr, (1, 2, 0) if arr.ndim == 3 else (0, 2, 3, 1))
    if not isinstance(raw.array, Unmapped):   # decoded by page or strip (compressed, or not one block):
        # copied once, streamed in the file's storage order: pages (bands of a planar file), then
        # their rows (never columns of a band-first page, which would decode every strip per box)
        order = tuple(int(a) for a in np.argsort(arr.order)) if planar else tuple(range(arr.ndim))
        arr = StagedCopy(arr, order, (64, 64, 64) if arr.ndim == 3 else (1, 64, 64, 64))
    return arr


def _no_key(path: Path, key: str | None, kind: str) -> None:
    """Refuse a ``key`` for a file of a format without variables (it would select nothing)."""
    if key is not None:
        raise InputError(f"{path}: --key {key} names a variable of a .mat file, but this is {kind} file, "
                         f"which holds one array and no variables; leave --key out")


def _load_any(path: Path, key: str | None, ndim: tuple[int, ...]) -> np.ndarray:
    """The array of a file of any supported format; ``key`` (a ``.mat`` variable) is refused for
    the formats without variables."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a hyperspectral file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            from .._npy import load_npy

            _no_key(path, key, "a .npy")
            return load_npy(path, "cube", mmap_mode="r")
        if suffix == ".mat":
            return _pick_mat_cube(path, _mat_variables(path), key, ndim)
        if suffix in (".tif", ".tiff"):
            _no_key(path, key, "a TIFF")
            return _tiff_cube(path)
        if suffix == ".hdr" or suffix in _ENVI_DATA_EXTS or any(
                Path(str(path) + e).is_file() for e in (".hdr", ".HDR")) or \
                path.with_suffix(".hdr").is_file() or path.with_suffix(".HDR").is_file():
            _no_key(path, key, "an ENVI")
            return read_envi(path)[0]
    except PermissionError as e:
        raise InputError(f"{path}: permission denied ({e.strerror})") from None
    raise InputError(f"{path}: unknown hyperspectral format '{path.suffix}'; supported: "
                     ".npy, .mat (v5 and v7.3), ENVI (.hdr/.HDR header or raw file), .tif/.tiff")


def _nodata(path: Path) -> tuple[float, str] | None:
    """The no-data value a file's metadata declares and where: an ENVI header's ``data ignore
    value``, a GeoTIFF's ``GDAL_NODATA`` tag (42113); ``None`` when it declares none (or one that
    is not a number)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                tag = tif.pages[0].tags.get(42113)
                text, where = (tag.value if tag is not None else None), "GDAL_NODATA tag"
        elif path.suffix.lower() not in (".npy", ".mat") and _is_envi(path):
            text = read_envi_header(_envi_paths(path)[0]).get("data ignore value")
            where = "ENVI header's 'data ignore value'"
        else:
            return None
        return None if text is None else (float(str(text).strip().strip("\x00")), where)
    except (InputError, ValueError, OSError):
        return None


def _checked(arr: Any, path: Path, what: str = "cube") -> Any:
    """``arr`` (an ``(H, W, B)`` array-like, not read) after one streamed pass that refuses NaN
    and infinite values, and values equal to the no-data value the file declares
    (:func:`_nodata`), naming the first; an empty array is refused before."""
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{path}: {what} has non-numeric type {arr.dtype}")
    if 0 in tuple(arr.shape):
        raise InputError(f"{path}: {what} is empty (shape {tuple(int(n) for n in arr.shape)}): it holds no pixels")
    nodata = _nodata(path)
    if nodata is not None and not np.isfinite(nodata[0]):
        nodata = None   # NaN/inf: refused as such below
    if arr.dtype.kind == "f" or nodata is not None:
        h, w = int(arr.shape[0]), int(arr.shape[1])
        rows = max(1, (16 * 2**20) // max(1, 8 * w * int(np.prod(arr.shape[2:]))))
        counts: list[int] = [0, 0]                      # NaN/inf, no-data
        firsts: list[tuple[int, ...] | None] = [None, None]
        for r in range(0, h, rows):
            block = np.asarray(arr[r:r + rows])
            for kind, bad in enumerate((~np.isfinite(block) if block.dtype.kind == "f" else None,
                                        block == nodata[0] if nodata is not None else None)):
                if bad is not None and bad.any():
                    counts[kind] += int(bad.sum())
                    if firsts[kind] is None:
                        where = np.argwhere(bad)[0]
                        firsts[kind] = (int(where[0]) + r, *(int(i) for i in where[1:]))
        if counts[0]:
            raise InputError(f"{path}: {what} contains {counts[0]} NaN/inf value(s) "
                             f"(first at index {firsts[0]}); fill or mask them before training")
        if counts[1] and nodata is not None:
            raise InputError(f"{path}: {what} holds {counts[1]} value(s) equal to {nodata[0]:g}, the no-data value "
                             f"its {nodata[1]} declares (first at index {firsts[1]}): those are not "
                             f"measurements; fill or mask them (or crop them away) before training")
    if isinstance(arr, np.memmap):  # read by copy: the map's pages do not stay resident
        from ..lazy import Unmapped

        return Unmapped(arr)
    return arr


def read_cube(path: str | os.PathLike[str], key: str | None = None) -> np.ndarray:
    """Read one hyperspectral image as float32 ``(H, W, B)`` (see the module table).

    Args:
        path: ``.npy``, ``.mat``, ENVI header or raw file, ``.tif``/``.tiff``.
        key: variable name inside a ``.mat`` file (default: the only/largest 2-3D array; a tie
            for the largest is refused); refused for the other formats, which have no variables.

    Raises:
        FileNotFoundError, InputError: unreadable file, wrong rank, NaN/inf values.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.npy"; np.save(p, np.ones((4, 5, 3)))
        >>> read_cube(p).shape
        (4, 5, 3)
    """
    return np.array(open_cube(path, key), dtype=np.float32, order="C")


def open_cube(path: str | os.PathLike[str], key: str | None = None) -> Any:
    """Open one hyperspectral image as an ``(H, W, B)`` array-like in the file's numeric type,
    read on demand where the format allows (``.npy``, ENVI: memory maps; ``.mat`` v7.3: the HDF5
    dataset; uncompressed TIFF: a memory map; compressed TIFF: a private chunked copy made in
    one pass; ``.mat`` v5 is read whole). One streamed pass refuses NaN/inf values and values
    equal to the no-data value the file declares (ENVI ``data ignore value``, GeoTIFF
    ``GDAL_NODATA``).

    Raises:
        FileNotFoundError, InputError: as :func:`read_cube`.
    """
    path = Path(path)
    arr = _load_any(path, key, (2, 3))
    if arr.ndim == 2:
        arr = np.asarray(arr)[:, :, None]
    if arr.ndim != 3:
        raise InputError(f"{path}: expected one image (H, W, bands), got shape {tuple(arr.shape)}"
                         + ("; a 4D file holds both dates: give it alone as BEFORE" if arr.ndim == 4 else ""))
    return _checked(arr, path)


def read_pair(path: str | os.PathLike[str], key: str | None = None,
              sources: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read both dates from one file as float32 ``(H, W, B)`` arrays (see :func:`open_pair`)."""
    a, b = open_pair(path, key, sources)
    return np.array(a, dtype=np.float32, order="C"), np.array(b, dtype=np.float32, order="C")


def _name_order(name: str) -> list[Any]:
    """Sort key of a variable name with its numbers compared by value: ``T9`` before ``T10``
    (as text, ``T10`` came first and became BEFORE)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def open_pair(path: str | os.PathLike[str], key: str | None = None,
              sources: dict[str, str] | None = None) -> tuple[Any, Any]:
    """Open both dates of one 4D file: ``(2, H, W, B)`` (dates first) or ``(H, W, B, 2)``, as two
    ``(H, W, B)`` array-likes read on demand where the format allows (see :func:`open_cube`).

    A ``.mat`` file holding exactly two 3D arrays of equal shape (e.g. ``T1``, ``T2``) is read
    as the pair in name order (numbers in the names by value: ``T9`` before ``T10``), or in the
    order ``key="BEFORE_VAR,AFTER_VAR"`` says. ``sources``
    (a dict, if given) gets what became each date, e.g. ``{"before": "variable T1", ...}``.
    TIFF: ``(2, B, H, W)`` pages series.
    """
    path = Path(path)
    if path.suffix.lower() == ".mat" and (key is None or "," in key):
        variables = _mat_variables(path) if path.exists() else {}
        if key is not None:  # --key BEFORE_VAR,AFTER_VAR
            names = [k.strip() for k in key.split(",")]
            if len(names) != 2 or not all(names):
                raise InputError(f"--key {key!r}: give two variable names BEFORE,AFTER (e.g. T1,T2)")
            a, b = (_pick_mat_cube(path, variables, k, (3,)) for k in names)
            k1, k2 = names
        else:
            threes = {k: v for k, v in variables.items() if v.ndim == 3}
            if not (len(threes) == 2 and not any(v.ndim == 4 for v in variables.values())):
                threes = {}
            if threes:
                (k1, a), (k2, b) = sorted(threes.items(), key=lambda kv: _name_order(kv[0]))
        if key is not None or threes:
            if a.shape != b.shape:
                raise InputError(f"{path}: variables {k1} {a.shape} and {k2} {b.shape} differ in shape")
            if sources is not None:
                sources.update(before=f"variable {k1}", after=f"variable {k2}",
                               order="as --key says" if key is not None
                               else f"taken in name order (numbers by value); --key {k2},{k1} swaps them")
            return _checked(a, path, k1), _checked(b, path, k2)
    arr = _load_any(path, key, (4,))
    if arr.ndim != 4:
        raise InputError(f"{path}: a single input must be 4D (2, H, W, bands) holding both dates, "
                         f"got shape {tuple(arr.shape)}; otherwise give BEFORE and AFTER")
    from ..lazy import ChannelView

    if arr.shape[0] == 2:
        a, b = (arr[i] if isinstance(arr, np.ndarray) else ChannelView(arr, i, 0) for i in (0, 1))
    elif arr.shape[-1] == 2:
        a, b = (arr[..., i] if isinstance(arr, np.ndarray) else ChannelView(arr, i, -1) for i in (0, 1))
    else:
        raise InputError(f"{path}: a 4D input needs a date axis of length 2 first or last, "
                         f"got shape {tuple(arr.shape)}")
    if sources is not None:
        first = arr.shape[0] == 2
        sources.update(before="index 0 of the " + ("first" if first else "last") + " axis",
                       after="index 1 of the " + ("first" if first else "last") + " axis",
                       order="the date axis of the 4D array")
    return _checked(a, path, "date 1"), _checked(b, path, "date 2")
