"""What every volume format shares: the opened volume, its geometry, the channel-axis rule,
lazy views that fix some axes, slabs for streaming passes, and one-line refusals."""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from ...errors import InputError
from ..lazy import ArrayLike, AxisPick, expand_key, iter_slabs
from ..units import LENGTH_UNITS

__all__ = ["VolumeFormat", "VolumeGeometry", "OpenedVolume", "ArrayLike", "AxisPick", "RawVolume",
           "require", "resolve_axes", "iter_slabs", "jsonable", "quiet_logger", "Decoded", "MAX_CHANNELS_BY_SHAPE",
           "PIP_VOLUME", "LENGTH_UNITS", "length_unit"]

#: The formats ``open_volume`` reads (and ``prediction_sink`` is told about).
VolumeFormat = Literal["nifti", "tiff", "zarr", "hdf5", "segy", "npy"]

#: Without metadata, a first or last axis of at most this many entries may be the channel axis.
MAX_CHANNELS_BY_SHAPE = 8
#: The command that installs every format library.
PIP_VOLUME = "pip install 'fhcnn[volume]'"


@dataclass
class VolumeGeometry:
    """Where the voxels of a volume lie, and what its file said about them.

    Attributes:
        spacing: voxel size along the returned ``(D, H, W)`` axes (file units: NIfTI its
            ``xyzt_units``, TIFF/zarr/HDF5 as written there), or ``None`` when the file does not say.
        affine: the NIfTI voxel-to-world matrix (4x4), else ``None``.
        nifti_header: the NIfTI header bytes (348 or 540), else ``None``.
        attrs: JSON-ready attributes: zarr/HDF5 attributes, ImageJ/OME spacing, the SEG-Y
            text header and line numbers.
        axis_names: one name per ``(D, H, W)`` axis (NIfTI orientation codes such as ``R``,
            TIFF axis letters, zarr dimension names, SEG-Y ``inline, crossline, sample``).
        spacing_stated: which of the ``(D, H, W)`` axes' spacing the file states (a TIFF's
            unstated axes hold 1); only those are compared with another file's.
        unit: the length unit of ``spacing`` and ``origin`` where the file names one
            (``micrometer``, ``nm`` ...: a key of ``LENGTH_UNITS``), else ``None``.
        origin: where voxel ``(0, 0, 0)`` lies along ``(D, H, W)``, in ``unit`` (OME-Zarr
            ``translation``), or ``None`` when the file does not say.
        ome: of an OME-Zarr input, ``{"version": "0.4", "axes": [3 NGFF axis dicts]}`` of its
            ``(D, H, W)`` axes (its prediction is written as an OME-Zarr image of that version),
            else ``None``.
        spacing_note: what the file holds that looks like a spacing but is taken as none, for
            the run's log (a plain TIFF's 72 or 96 pixels an inch, an image writer's default;
            an ImageJ file's 72 pixels an inch, which ImageJ reads as pixels of 1), else ``None``.
        vertical_axis: the ``(D, H, W)`` axis that points down, where the format says which (a
            SEG-Y cube's samples: two-way time or depth), else ``None``.
    """

    spacing: tuple[float, float, float] | None = None
    affine: np.ndarray | None = None
    nifti_header: bytes | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    axis_names: tuple[str, str, str] = ("D", "H", "W")
    spacing_stated: tuple[bool, bool, bool] = (True, True, True)
    unit: str | None = None
    origin: tuple[float, float, float] | None = None
    ome: dict[str, Any] | None = None
    spacing_note: str | None = None
    vertical_axis: int | None = None


@dataclass
class OpenedVolume:
    """A volume file opened for reading by window; nothing of its voxels is read yet.

    Attributes:
        path: the file (or zarr folder).
        format: which reader opened it.
        channels: one lazy array-like ``(D, H, W)`` per channel (all of one shape).
        geometry: see :class:`VolumeGeometry`.
        compressed: reading a window is slow or sequential (``.nii.gz``, compressed TIFF,
            huge chunks): make one chunked copy before reading windows at random.
        slab_axis: the axis along which slabs ``[a:b, :, :]`` (moved to that axis) are
            contiguous in the file: streaming passes go along it (2 for NIfTI and
            Fortran-ordered ``.npy``, else 0).
        names: one name per channel, for messages and logs.
        spec: what the user wrote (``x.zarr:path`` ...).
        stored: the file's array of stored axes as its library opened it (a zarr array, an
            h5py dataset ...), for questions about its storage (:func:`~fhcnn.data.volumes.stores.never_written`).
    """

    path: Path
    format: VolumeFormat
    channels: list[ArrayLike]
    geometry: VolumeGeometry
    compressed: bool = False
    slab_axis: int = 0
    names: list[str] = field(default_factory=list)
    spec: str = ""
    stored: Any = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """The spatial shape ``(D, H, W)``."""
        return tuple(self.channels[0].shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.channels[0].dtype)


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``, or one line naming the pip command when it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"{purpose} needs the Python package {module}, which is not installed: "
                         f"{PIP_VOLUME}") from None


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Hold back what the logger ``name`` reports while a file is opened: format libraries
    (tifffile, nibabel) log what they find wrong in a header (a page offset past the end, a
    negative ``pixdim`` they correct) on stderr, which would make a refusal more than one
    ``error:`` line (the refusal names what is wrong)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


#: What format libraries raise when stored data cannot be decoded: h5py (OSError), numcodecs
#: (RuntimeError), zlib through tifffile, a compressed stream that ends early.
DECODE_ERRORS = (OSError, RuntimeError, EOFError, zlib.error)


class Decoded:
    """``array`` (a file's stored axes) whose reads that fail to decode (a damaged compressed
    chunk, tile or page) raise one :class:`InputError` naming the file and the window, instead
    of the library's traceback in the middle of a pass over the volume."""

    def __init__(self, array: Any, label: str) -> None:
        self.array, self.label = array, label
        self.shape = tuple(int(n) for n in array.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.array[key])
        except DECODE_ERRORS as e:
            box = ", ".join(f"{k.start}:{k.stop}" if isinstance(k, slice) else str(k)
                            for k in expand_key(key, self.ndim))
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            kind = type(e).__name__ if type(e).__module__ == "builtins" else \
                f"{type(e).__module__}.{type(e).__name__}"
            raise InputError(f"{self.label}: its data cannot be read at [{box}] (a damaged file?): "
                             f"{kind}: {why}") from None

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def window_bounds(key: Any, shape: Sequence[int], what: str) -> tuple[list[tuple[int, int]], tuple[int, ...]]:
    """``[(start, stop)]`` per axis of a basic index (step 1), and the axes indexed by an int
    (to squeeze from the result). Raises IndexError for other steps or ints out of range."""
    key = expand_key(key, len(shape))
    bounds, drop = [], []
    for a, (k, n) in enumerate(zip(key, shape)):
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step != 1:
                raise IndexError(f"{what} reads windows with step 1 only")
            bounds.append((start, max(start, stop)))
        else:
            i = int(k)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for axis {a} of size {n}")
            i %= n
            bounds.append((i, i + 1))
            drop.append(a)
    return bounds, tuple(drop)


@dataclass
class RawVolume:
    """What a format reader found, before the channel-axis rule (stored axes, any number)."""

    array: ArrayLike
    axis_names: Sequence[str | None] | None = None  # per stored axis
    channel_axis: int | None = None  # named by metadata
    spacing: Sequence[float | None] | None = None  # per stored axis, or 3 for the spatial axes
    affine: np.ndarray | None = None
    nifti_header: bytes | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    compressed: bool = False
    slab_axis: int = 0  # stored axis
    named: bool = False  # the metadata names every axis (no channel axis guessed from the shape)
    spacing_stated: Sequence[bool] | None = None  # like spacing; None: every value of spacing is stated
    unit: str | None = None  # length unit of spacing and origin (see VolumeGeometry)
    origin: Sequence[float] | None = None  # per stored axis, or 3 for the spatial axes
    ome: dict[str, Any] | None = None  # {"version", "axes": one NGFF axis dict per stored axis}
    spacing_note: str | None = None  # see VolumeGeometry


def resolve_axes(shape: Sequence[int], label: str, *, meta_channel: int | None = None,
                 channel_axis: int | None = None, allow_channels: bool = True,
                 named: Sequence[str] | None = None) -> tuple[int | None, tuple[int, int, int], dict[int, int]]:
    """The channel axis and the three spatial axes of a stored shape (the rule of
    ``docs/volume-formats.md``).

    1. ``channel_axis`` (``--channel-axis``), when given and the array has more than three
       axes, is the channel axis (negative counts from the end).
    2. Else metadata names it (``meta_channel``: NIfTI dims 4-5, TIFF ``C``/``S``, zarr/HDF5
       dimension names ``c``/``channel``).
    3. Else axes of length 1 are dropped; three axes left: one channel; four: the first or
       the last axis is the channel axis when exactly one of the two has at most
       ``MAX_CHANNELS_BY_SHAPE`` entries and the other three all have more; anything else
       with four axes is ambiguous. Not when the file names every axis (``named``, e.g.
       TIFF ``TZYX``) and none is a channel: four such axes are refused.

    Returns:
        ``(channel axis or None, spatial axes, {axis of length 1 or lone channel: 0})``.

    Raises:
        InputError: a scalar, an empty array, fewer or more than three spatial axes, an ambiguous
            channel axis, ``channel_axis`` out of range, channels where none are allowed.
    """
    shape = tuple(int(n) for n in shape)
    nd = len(shape)
    if nd == 0:  # an HDF5 or zarr scalar (a stored setting): not empty, one value
        raise InputError(f"{label} is a single value (a scalar, shape ()), not a volume")
    if math.prod(shape) == 0:
        raise InputError(f"{label} is empty (shape {shape})")
    c: int | None = None
    if channel_axis is not None and nd > 3:
        if not -nd <= channel_axis < nd:
            raise InputError(f"--channel-axis {channel_axis} is out of range for {label} of shape "
                             f"{shape} (axes 0..{nd - 1}, or -1..-{nd})")
        c = channel_axis % nd
    elif meta_channel is not None:
        c = meta_channel
    rest = [ax for ax in range(nd) if ax != c and shape[ax] > 1]
    if c is None and len(rest) == 4 and named is not None and allow_channels:
        raise InputError(f"{label} has shape {shape} with axes named {tuple(named)}, none of them a "
                         f"channel axis; name the channel axis with --channel-axis N")
    if c is None and len(rest) == 4:
        ends = [ax for ax in (rest[0], rest[-1]) if shape[ax] <= MAX_CHANNELS_BY_SHAPE]
        if len(ends) == 1 and all(shape[ax] > MAX_CHANNELS_BY_SHAPE for ax in rest if ax != ends[0]):
            c = ends[0]
            rest.remove(c)
        elif allow_channels:
            raise InputError(f"{label} has shape {shape}: which axis holds the channels is ambiguous "
                             f"(without metadata, a first or last axis of at most "
                             f"{MAX_CHANNELS_BY_SHAPE} entries, all others longer, is the channel "
                             f"axis); name it with --channel-axis N")
    if c is not None and shape[c] == 1:
        c = None
    if c is not None and not allow_channels:
        raise InputError(f"{label} has shape {shape} with {shape[c]} channels along axis {c}; a label "
                         f"volume is one channel of integers")
    besides = " besides the channel axis" if c is not None else ""
    if len(rest) < 3:
        raise InputError(f"{label} has shape {shape}: {len(rest)} axes longer than 1{besides}; a volume "
                         f"has three (a 2D image is not a volume)")
    if len(rest) > 3:
        hint = "" if c is not None else "; name the channel axis with --channel-axis N"
        if c is None and channel_axis is not None:  # it named an axis of length 1
            hint = (f"; --channel-axis {channel_axis} names an axis of length 1: name the axis that holds "
                    f"the channels")
        raise InputError(f"{label} has shape {shape}: {len(rest)} axes longer than 1{besides}; a volume "
                         f"has three spatial axes and at most one channel axis{hint}")
    fixed = {ax: 0 for ax in range(nd) if ax not in rest and ax != c}
    return c, (rest[0], rest[1], rest[2]), fixed


def jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-ready copy of an attribute value (numpy scalars and arrays to Python, bytes
    decoded); ``None`` for what cannot be written (the key is then dropped)."""
    if depth > 8:
        return None
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(value).decode("latin-1")
    if isinstance(value, np.generic):
        return jsonable(value.item(), depth + 1)
    if isinstance(value, np.ndarray):
        if value.size > 4096 or value.dtype.kind not in "biufSUO":
            return None
        return [jsonable(v, depth + 1) for v in value.ravel().tolist()] if value.ndim != 0 else \
            jsonable(value.item(), depth + 1)
    if isinstance(value, dict) or hasattr(value, "items"):
        out = {}
        for k, v in value.items():
            j = jsonable(v, depth + 1)
            if j is not None:
                out[str(k)] = j
        return out
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value]
    return None


def one_length_unit(values: Sequence[float], units: Sequence[str]) -> tuple[list[float], str] | None:
    """``values`` (the voxel size along some axes, each in its own length unit) in one unit, the
    smallest of ``units``, and that unit; ``None`` when they already share one or a unit is not
    a known length (left as they are). A file may give X and Y in nm and Z in \u00b5m: taken as
    they stand, Z would count 1000 times finer than it is."""
    if len(set(units)) < 2 or not all(u in LENGTH_UNITS for u in units):
        return None
    to = min(units, key=lambda u: LENGTH_UNITS[u])
    return [in_length_unit(v, u, to) for v, u in zip(values, units)], to


def in_length_unit(value: float, unit: str, to: str) -> float:
    """``value`` (a length in ``unit``) in ``to`` (both keys of ``LENGTH_UNITS``), to 12
    significant digits: 1 um is 1000 nm, not 999.9999999999999."""
    return float(f"{float(value) * LENGTH_UNITS[unit] / LENGTH_UNITS[to]:.12g}")


def length_unit(name: Any) -> str | None:
    """``name`` when it is a known length unit (a key of ``LENGTH_UNITS``; ImageJ's ``\\u00B5m``
    read as ``\u00b5m``), else ``None`` (``pixel``, a time, nothing)."""
    if not isinstance(name, str):
        return None
    name = name.replace("\\u00B5", "\u00b5").replace("\\u00b5", "\u00b5")
    return name if name in LENGTH_UNITS else None


def spatial_values(values: Sequence[Any] | None, nd: int, spatial: tuple[int, int, int]) -> list[Any] | None:
    """The three values of ``values`` (one per stored axis of ``nd``, or three already) along
    the ``spatial`` axes, or ``None`` when it has another length."""
    if values is None:
        return None
    if len(values) == nd:
        return [values[a] for a in spatial]
    return list(values) if len(values) == 3 else None


def spatial_spacing(raw: RawVolume, spatial: tuple[int, int, int]) -> tuple[float, float, float] | None:
    """The spacing along the spatial axes, when the reader found a usable one."""
    picked = spatial_values(raw.spacing, len(raw.array.shape), spatial)
    if picked is None:
        return None
    try:
        vals = [float(v) for v in picked]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) and v > 0 for v in vals):
        return None
    return vals[0], vals[1], vals[2]
