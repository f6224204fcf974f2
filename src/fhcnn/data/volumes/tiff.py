"""TIFF stacks through tifffile: multi-page stacks, ImageJ hyperstacks, OME-TIFF.

An uncompressed contiguous series is memory-mapped; any other is read through tifffile's
zarr store (tile by tile; zarr 3) or, without it, page by page, and is marked
``compressed`` when its pages are.
The channel axis is tifffile's ``C`` (or ``S``, samples of RGB pages); spacing comes from
ImageJ metadata (``spacing`` and the resolution tags) or OME ``PhysicalSize*``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from ..lazy import Unmapped
from ._common import RawVolume, jsonable, length_unit, one_length_unit, quiet_logger, require, window_bounds

__all__ = ["open_tiff", "TiffPages"]

_SPATIAL_NAMES = {"I": "Z", "Q": "Z"}  # tifffile's letters for "pages" / unknown


def open_tiff(path: Path, label: str) -> RawVolume:
    """Open the one image series of a TIFF file without reading its pixels.

    Raises:
        InputError: not a TIFF, several series, or strips/tiles past the end of the file.
    """
    with quiet_logger("tifffile"):  # its warnings about a damaged file: the refusal says it
        return _open_tiff(path, label)


def _open_tiff(path: Path, label: str) -> RawVolume:
    tifffile = require("tifffile", "reading TIFF")
    try:
        tif = tifffile.TiffFile(str(path))
    except Exception as e:
        raise InputError(f"cannot read {label} as TIFF: {str(e)[:200]}") from None
    try:
        series = tif.series
        if not series:
            raise InputError(f"{label} holds no image in a form tifffile reads")
        if len(series) > 1:
            shapes = ", ".join(str(tuple(s.shape)) for s in series[:4])
            more = ", ..." if len(series) > 4 else ""
            raise InputError(f"{label} holds {len(series)} image series ({shapes}{more}); fhcnn volume "
                             f"reads a file with one stack")
        s = series[0]
        axes = str(s.axes)
        shape = tuple(int(n) for n in s.shape)
        size = path.stat().st_size
        images = _imagej_images(tif)
        planes = int(np.prod([n for n, a in zip(shape, axes) if a not in "YXS"], dtype=np.int64))
        if images > planes:
            raise InputError(f"{label}: its ImageJ header describes {images:,} images but tifffile finds "
                             f"{planes:,} (series {shape} {axes}); a truncated or damaged file")
        compression = int(getattr(s.keyframe, "compression", 1))
        why = _undecodable(tifffile, s.keyframe)
        if why:
            raise InputError(f"{label}: tifffile cannot decode its pages: {why} (pip install imagecodecs, "
                             f"or save the stack uncompressed or with zlib)")
        contiguous = s.dataoffset is not None and compression == 1
        if contiguous:
            end = int(s.dataoffset) + int(s.size) * s.dtype.itemsize
            if end > size:
                raise InputError(f"{label}: the TIFF tags place {shape} {s.dtype} pixels up to byte {end:,} "
                                 f"but the file has {size:,} bytes (a lying header or a truncated file)")
        else:
            for page in s.pages:
                if page is None:
                    continue
                ends = [int(o) + int(n) for o, n in zip(page.dataoffsets, page.databytecounts)]
                if ends and max(ends) > size:
                    raise InputError(f"{label}: a TIFF page's data reaches byte {max(ends):,} but the file has "
                                     f"{size:,} bytes (a lying header or a truncated file)")
        if contiguous:
            try:
                array: Any = Unmapped(tifffile.memmap(str(path), mode="r", series=0))
            except Exception:
                contiguous = False
        if not contiguous:
            array = _zarr_view(s) or TiffPages.of(s)
            if array is None:
                require("zarr", "reading this TIFF (tiled or compressed, not one plane per page)")
                raise InputError(f"{label}: reading this TIFF (tiled or compressed, not one plane per page) "
                                 f"needs zarr 3 (Python 3.11 or newer)")
        if tuple(array.shape) != shape:
            raise InputError(f"{label}: tifffile's series shape {shape} and its array shape "
                             f"{tuple(array.shape)} differ; convert the file to a plain stack")
        meta_channel = next((axes.index(a) for a in "CS" if a in axes), None)
        names = [_SPATIAL_NAMES.get(a, a) for a in axes]
        spacing, stated, unit, attrs = _spacing(tif, axes)
    except InputError:
        tif.close()
        raise
    except Exception as e:
        tif.close()
        raise InputError(f"cannot read {label} as TIFF: {str(e)[:200]}") from None
    if contiguous:
        tif.close()  # the memmap keeps its own mapping
    return RawVolume(array=array, axis_names=names, channel_axis=meta_channel, spacing=spacing,
                     attrs=attrs, compressed=compression != 1, slab_axis=0,
                     named=not any(a in axes for a in "QI"),  # Q: unknown, I: a plain page sequence
                     spacing_stated=stated, unit=unit)


def _undecodable(tifffile: Any, page: Any) -> str | None:
    """Why tifffile cannot decode the data of ``page`` (its compression or predictor needs the
    package imagecodecs, or is unknown), or ``None``: found when the file is opened, not in the
    middle of a pass over the volume (where the error named no file)."""
    for codecs, value in ((tifffile.TIFF.DECOMPRESSORS, getattr(page, "compression", 1)),
                          (tifffile.TIFF.UNPREDICTORS, getattr(page, "predictor", 1))):
        try:
            codecs[value]
        except KeyError as e:
            return str(e.args[0] if e.args else value)
    return None


def _imagej_images(tif: Any) -> int:
    """The number of images (planes) an ImageJ header promises (0 without one)."""
    try:
        meta = tif.imagej_metadata if tif.is_imagej else None
        return int(meta.get("images") or 0) if meta else 0
    except (TypeError, ValueError, AttributeError):
        return 0


def _zarr_view(series: Any) -> Any:
    """tifffile's zarr store of ``series`` opened with zarr 3, or ``None`` without zarr 3."""
    try:
        import zarr
    except ImportError:
        return None
    if int(zarr.__version__.split(".")[0]) < 3:
        return None
    return zarr.open(series.aszarr(level=0), mode="r")  # a pyramid: its full resolution


class TiffPages:
    """A series whose pages are its last two (or three, with samples) axes, read page by
    page: a window decodes only the pages it crosses.

    Args:
        series: a tifffile ``TiffPageSeries`` with one page per index of its leading axes.
    """

    def __init__(self, series: Any, plane: int) -> None:
        self.pages = series.pages
        self.shape = tuple(int(n) for n in series.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(series.dtype)
        self.lead = self.shape[: self.ndim - plane]

    @classmethod
    def of(cls, series: Any) -> "TiffPages | None":
        """The reader for ``series``, or ``None`` when its pages are not whole planes of it."""
        page = series.keyframe
        plane = len(page.shape)
        shape = tuple(series.shape)
        if tuple(page.shape) != shape[len(shape) - plane:] or len(series.pages) != int(np.prod(shape[:-plane])):
            return None
        return cls(series, plane)

    def __getitem__(self, key: Any) -> np.ndarray:
        bounds, drop = window_bounds(key, self.shape, "TiffPages")
        nl = len(self.lead)
        out = np.empty([b - a for a, b in bounds], dtype=self.dtype)
        inner = tuple(slice(a, b) for a, b in bounds[nl:])
        if out.size:
            for idx in np.ndindex(*out.shape[:nl]):
                at = tuple(i + a for i, (a, _) in zip(idx, bounds))
                n = int(np.ravel_multi_index(at, self.lead)) if nl else 0
                out[idx] = self.pages[n].asarray()[inner]
        return out.squeeze(drop) if drop else out


def _spacing(tif: Any, axes: str) -> tuple[list[float | None] | None, list[bool] | None, str | None,
                                           dict[str, Any]]:
    """Spacing per stored axis from ImageJ or OME metadata (``None`` without either), which of
    those axes the file states it for, its length unit, and the attributes to keep.

    Stated: an OME ``PhysicalSize*``; ImageJ's ``spacing`` (Z); resolution tags other than
    1 pixel per unit without a unit (what tifffile and most writers put in when told nothing).
    The other spatial axes hold 1."""
    attrs: dict[str, Any] = {}
    per_letter: dict[str, float] = {}
    said: set[str] = set()
    unit: str | None = None
    if tif.is_imagej and tif.imagej_metadata:
        meta = tif.imagej_metadata
        attrs["imagej"] = jsonable({k: v for k, v in meta.items()
                                    if k in ("spacing", "unit", "channels", "slices", "frames")})
        page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
        xres, yres = page.resolution if hasattr(page, "resolution") else (1.0, 1.0)
        per_letter["Z"] = float(meta.get("spacing", 1.0) or 1.0)
        said |= {"Z"} if meta.get("spacing") else set()
        if xres and yres:
            per_letter["X"], per_letter["Y"] = 1.0 / float(xres), 1.0 / float(yres)
            if (float(xres), float(yres)) != (1.0, 1.0) or int(getattr(page, "resolutionunit", 1)) != 1:
                said |= {"X", "Y"}
        unit = length_unit(meta.get("unit"))
    elif tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
            pix = next(el for el in root.iter() if el.tag.endswith("Pixels"))
            units: dict[str, str] = {}
            explicit = False
            for letter in "XYZ":
                v = pix.get(f"PhysicalSize{letter}")
                if v is not None:
                    per_letter[letter] = float(v)
                    given = pix.get(f"PhysicalSize{letter}Unit")
                    units[letter] = given or "\u00b5m"  # OME's default
                    explicit = explicit or bool(given)
            same = one_length_unit([per_letter[k] for k in units], list(units.values()))
            if same is not None:  # e.g. X and Y in nm, Z in \u00b5m: all in nm
                per_letter.update(zip(units, same[0]))
                units = dict.fromkeys(units, same[1])
            if explicit:
                attrs["ome_units"] = units  # the units of the spacing
            said = set(units)
            unit = length_unit(next(iter(units.values()))) if len(set(units.values())) == 1 else None
        except (ET.ParseError, StopIteration, ValueError):
            per_letter = {}
    if not per_letter:
        return None, None, None, attrs
    names = [_SPATIAL_NAMES.get(a, a) for a in axes]
    spacing = [per_letter.get(n, 1.0) if n in "XYZ" else None for n in names]
    return spacing, [n in said for n in names], unit, attrs
