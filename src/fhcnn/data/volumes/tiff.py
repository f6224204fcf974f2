"""TIFF stacks through tifffile: multi-page stacks, ImageJ hyperstacks, OME-TIFF.

An uncompressed contiguous series is memory-mapped; a series of strip-organized pages (not
tiled) page by page (:class:`TiffPages`: an uncompressed page reads only the rows a window
needs, however many rows a strip holds; a compressed one is decoded whole, one page held at a
time); a tiled one through tifffile's zarr store (tile by tile; zarr 3) or, without it, page
by page. A series is marked ``compressed`` when its pages are.
The channel axis is tifffile's ``C`` (or ``S``, samples of RGB pages); spacing comes from
ImageJ metadata (``spacing`` and the resolution tags, read as ImageJ reads them: 72 pixels an
inch is no pixel size, the unit is the description's or else the tags' inch or centimetre), OME
``PhysicalSize*``, or, in a plain TIFF, the resolution tags in a length unit (in-plane only; not
an image writer's default of 72 or 96 pixels an inch).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from ..lazy import Unmapped
from ._common import (
    RawVolume,
    in_length_unit,
    jsonable,
    length_unit,
    one_length_unit,
    quiet_logger,
    require,
    window_bounds,
)

__all__ = ["open_tiff", "TiffPages", "refuse_planes_of_channels"]

_SPATIAL_NAMES = {"I": "Z", "Q": "Z"}  # tifffile's letters for "pages" / unknown
#: The TIFF ``ResolutionUnit`` values that name a length (2 inch, 3 centimetre; 4 and 5 are
#: tifffile's millimetre and micrometre); 1 (none) says nothing of the pixel's size.
_RESOLUTION_UNITS = {2: "inch", 3: "centimeter", 4: "millimeter", 5: "micrometer"}
#: The unit a plain TIFF's resolution is converted to (microscopy's).
_PLAIN_UNIT = "micrometer"
#: The resolutions (pixels an inch, X and Y alike) that image editors and libraries write when
#: told none: 72 (Photoshop, GIMP, Pillow), 96 (Windows). A plain TIFF's are no pixel size
#: (read as one, 352.8 or 264.6 micrometres): not stated.
WRITER_DEFAULT_DPI = (72.0, 96.0)
#: ImageJ reads an X resolution of 72 pixels an inch as no calibration (pixels of 1, in the
#: description's unit if it names one): an ImageJ file's resolution tags are read as ImageJ
#: shows them.
IMAGEJ_UNCALIBRATED_DPI = 72.0


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
            raise InputError(f"{label} holds {len(series)} image series ({shapes}{more}); fhcnn "
                             f"reads a file with one stack: save the series to use as its own file")
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
            absent = sum(page is None for page in s.pages)
            if absent:  # tifffile reads them as zeros
                raise InputError(f"{label}: {absent:,} of the {len(s.pages):,} planes its OME-XML names lie in "
                                 f"other files that cannot be read ({_absent_files(tif, path)}); a multi-file "
                                 f"OME-TIFF is read whole: keep all its files in the folder of {path.name}")
            for page in s.pages:
                ends = [int(o) + int(n) for o, n in zip(page.dataoffsets, page.databytecounts)]
                held = int(page.parent.filehandle.size)  # a multi-file OME-TIFF: the page's own file
                if ends and max(ends) > held:
                    raise InputError(f"{label}: a TIFF page's data reaches byte {max(ends):,} but "
                                     f"{'the file' if page.parent is tif else page.parent.filename} has "
                                     f"{held:,} bytes (a lying header or a truncated file)")
        if contiguous:
            try:
                array: Any = Unmapped(tifffile.memmap(str(path), mode="r", series=0))
            except Exception:
                contiguous = False
        if not contiguous:  # strips page by page (a strip may be a whole page); tiles by zarr 3
            array = (TiffPages.of(s) if not s.keyframe.is_tiled else None) or _zarr_view(s) or TiffPages.of(s)
            if array is None:
                require("zarr", "reading this TIFF (tiled or compressed, not one plane per page)")
                raise InputError(f"{label}: reading this TIFF (tiled or compressed, not one plane per page) "
                                 f"needs zarr 3 (Python 3.11 or newer)")
        if tuple(array.shape) != shape:
            raise InputError(f"{label}: tifffile's series shape {shape} and its array shape "
                             f"{tuple(array.shape)} differ; convert the file to a plain stack")
        meta_channel = next((axes.index(a) for a in "CS" if a in axes), None)
        names = [_SPATIAL_NAMES.get(a, a) for a in axes]
        spacing, stated, unit, attrs, note = _spacing(tif, axes)
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
                     spacing_stated=stated, unit=unit, spacing_note=note)


def refuse_planes_of_channels(axes: str, shape: Sequence[int], label: str) -> None:
    """Refuse, as a volume, a series whose only axes beside the plane are channels (``CYX``,
    ``CYXS``): one 2D image of several channels (``fhcnn change`` reads such a file as bands of
    one date: :func:`open_tiff` keeps it). tifffile writes a 3D array as ``CYX`` with
    ``imagej=True`` and no axes; the refusal said only '2 axes longer than 1 besides the channel
    axis', not which axis nor how to save the stack as slices. ``CYXS`` (RGB planes) was worse:
    with ``C`` the channel axis, the samples ``S`` counted as a third spatial axis, and the 2D
    image was read without a word as a volume ``(Y, X, 3)``.

    Raises:
        InputError: naming the axes, the channel count and how to name the axis ``Z``.
    """
    long = "".join(a for a, n in zip(axes, shape) if n > 1)
    if long in ("CYX", "CYXS"):
        n, slices, dims = int(shape[axes.index("C")]), "Z" + long[1:], tuple(int(k) for k in shape)
        raise InputError(f"{label} has axes '{axes}' {dims}: {n} channels of one 2D image, not a volume; "
                         f"if the {n} planes are the slices of a volume, save the file with them as slices "
                         f"(axes '{slices}': tifffile.imwrite(..., imagej=True, metadata={{'axes': '{slices}'}}))")


def _absent_files(tif: Any, path: Path) -> str:
    """The files the OME-XML of ``tif`` (``path``) names (``UUID FileName``) that are not beside
    it, listed for a message; ``"files it does not name"`` when every named one is there."""
    try:
        named = {el.get("FileName") for el in ET.fromstring(tif.ome_metadata).iter() if el.tag.endswith("UUID")}
    except (ET.ParseError, TypeError):
        named = set()
    gone = sorted(n for n in named if n and not (path.parent / n).is_file())
    return ", ".join(gone[:4]) + (", ..." if len(gone) > 4 else "") if gone else "files it does not name"


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
    page: a window reads only the pages it crosses, and of a page of strips only the strips
    that hold its rows.

    An uncompressed strip is read from the file row by row (a window reads its own rows, even
    of a page stored as one strip); a compressed strip is decoded whole, and the last one
    decoded is kept (a pass that reads a strip in several blocks of rows decodes it once): of
    a page stored as one compressed strip that is the whole page, one page held at a time.
    Pages of another layout (tiles, samples stored plane by plane) are decoded whole, the last
    one kept.

    Args:
        series: a tifffile ``TiffPageSeries`` with one page per index of its leading axes.
        plane: the page's axes (2, or 3 with samples).
    """

    def __init__(self, series: Any, plane: int) -> None:
        self.pages = series.pages
        self.shape = tuple(int(n) for n in series.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(series.dtype)
        self.lead = self.shape[: self.ndim - plane]
        self._key = series.keyframe
        self._strips = _strip_layout(self._key)
        self._raw = int(getattr(self._key, "compression", 1)) == 1 and _plain_samples(self._key, self.dtype)
        #: ``(page, strip or None, decoded)``: the last strip (or whole page) decoded
        self._kept: tuple[int, int | None, np.ndarray] | None = None

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
                if self._strips is None:
                    out[idx] = self._decoded(n, None)[inner]
                else:
                    out[idx] = self._rows(n, *bounds[nl])[(slice(None),) + inner[1:]]
        return out.squeeze(drop) if drop else out

    def _rows(self, n: int, r0: int, r1: int) -> np.ndarray:
        """Rows ``[r0, r1)`` of page ``n`` (a page of strips), ``(r1 - r0, W[, S])``."""
        per_strip, row_shape = self._strips  # type: ignore[misc]
        out = np.empty((r1 - r0, *row_shape), self.dtype)
        row_bytes = int(np.prod(row_shape)) * self.dtype.itemsize
        for s in range(r0 // per_strip, (r1 - 1) // per_strip + 1):
            a, b = max(r0, s * per_strip), min(r1, (s + 1) * per_strip)
            if self._raw:  # uncompressed: only these rows, from the file
                page = self.pages[n]
                data = self._read(page, int(page.dataoffsets[s]) + (a - s * per_strip) * row_bytes,
                                  (b - a) * row_bytes)
                stored = self.dtype.newbyteorder(page.parent.byteorder)
                out[a - r0:b - r0] = np.frombuffer(data, stored).reshape(b - a, *row_shape)
            else:
                out[a - r0:b - r0] = self._decoded(n, s)[a - s * per_strip:b - s * per_strip]
        return out

    def _decoded(self, n: int, strip: int | None) -> np.ndarray:
        """Strip ``strip`` of page ``n`` decoded (``(rows, W[, S])``), or with ``None`` the whole
        page; kept until another is decoded (the one kept goes first: one at a time)."""
        if self._kept is None or self._kept[:2] != (n, strip):
            self._kept = None
            if strip is None:
                _opened(self.pages[n])
                decoded = np.asarray(self.pages[n].asarray())
            else:
                page = self.pages[n]
                data = self._read(page, int(page.dataoffsets[strip]), int(page.databytecounts[strip]))
                segment = self._key.decode(data, strip, jpegtables=getattr(self._key, "jpegtables", None))[0]
                decoded = np.asarray(segment).reshape(-1, *self._strips[1])  # type: ignore[index]
            self._kept = (n, strip, decoded)
        return self._kept[2]

    def _read(self, page: Any, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of the file of ``page`` (of a multi-file OME-TIFF, its own)."""
        fh = _opened(page)
        with fh.lock:
            fh.seek(offset)
            data = fh.read(size)
        if len(data) != size:
            raise ValueError(f"the file ends within the {size:,} bytes at {offset:,}")
        return bytes(data)


def _opened(page: Any) -> Any:
    """The file handle of ``page``, opened again where tifffile closed it (the other files of a
    multi-file OME-TIFF, closed once their pages are parsed); kept open from then on."""
    fh = page.parent.filehandle
    if fh.closed:
        with fh.lock:
            fh.open()
    return fh


def _strip_layout(page: Any) -> tuple[int, tuple[int, ...]] | None:
    """``(rows per strip, shape of a row)`` of a page stored in strips of whole rows with its
    samples interleaved (what :class:`TiffPages` reads strip by strip), or ``None``."""
    shape = tuple(int(n) for n in page.shape)
    samples = int(getattr(page, "samplesperpixel", 1))
    interleaved = (samples == 1 and len(shape) == 2) or (int(getattr(page, "planarconfig", 1)) == 1
                                                         and len(shape) == 3 and shape[2] == samples)
    offsets = getattr(page, "dataoffsets", None)
    if page.is_tiled or not interleaved or not offsets:
        return None
    height = shape[0]
    per_strip = min(int(getattr(page, "rowsperstrip", 0) or height), height)
    if len(offsets) != -(-height // per_strip):
        return None
    return per_strip, shape[1:]


def _plain_samples(page: Any, dtype: np.dtype) -> bool:
    """Samples stored as the array holds them (whole bytes of ``dtype``, no predictor, no
    reversed bit order): an uncompressed strip's bytes are its rows."""
    return (int(getattr(page, "predictor", 1)) == 1 and int(getattr(page, "fillorder", 1)) == 1
            and int(getattr(page, "bitspersample", 0)) == 8 * dtype.itemsize and dtype.kind in "uif")


def _spacing(tif: Any, axes: str) -> tuple[list[float | None] | None, list[bool] | None, str | None,
                                           dict[str, Any], str | None]:
    """Spacing per stored axis from ImageJ or OME metadata (``None`` without either), which of
    those axes the file states it for, its length unit, the attributes to keep, and a note on
    resolution tags it holds that state no spacing (``VolumeGeometry.spacing_note``).

    Stated: an OME ``PhysicalSize*``; ImageJ's ``spacing`` (Z); of an ImageJ file, resolution
    tags other than 1 pixel per unit without a unit (what tifffile and most writers put in when
    told nothing) and other than :data:`IMAGEJ_UNCALIBRATED_DPI` in inch (ImageJ's pixels of 1);
    of a plain TIFF (neither ImageJ nor OME), resolution tags whose ``ResolutionUnit`` is a
    length (:data:`_RESOLUTION_UNITS`), X and Y only, in micrometres, but for an image writer's
    default (:data:`WRITER_DEFAULT_DPI` in inch or without a unit: the note says so). The other
    spatial axes hold 1 (ImageJ's voxel depth when it writes none), but a plain TIFF's slice axis
    holds its finer in-plane spacing: its voxels are taken as cubes, as those of a TIFF without
    resolution tags are (1 inch or 1 cm would make the slices thousands of times coarser than
    the pixels); the run's log names the axes a file does not state and what they hold."""
    attrs: dict[str, Any] = {}
    note: str | None = None
    per_letter: dict[str, float] = {}
    said: set[str] = set()
    unit: str | None = None
    if tif.is_imagej and tif.imagej_metadata:
        meta = tif.imagej_metadata
        attrs["imagej"] = jsonable({k: v for k, v in meta.items()
                                    if k in ("spacing", "unit", "channels", "slices", "frames")})
        page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
        xres, yres = page.resolution if hasattr(page, "resolution") else (1.0, 1.0)
        code = int(getattr(page, "resolutionunit", 1) or 1)
        per_letter["Z"] = float(meta.get("spacing", 1.0) or 1.0)
        said |= {"Z"} if meta.get("spacing") else set()
        if code == 2 and float(xres) == IMAGEJ_UNCALIBRATED_DPI:  # as ImageJ reads it: pixels of 1
            note = (f"its resolution tags hold {xres:g} pixels an inch, which ImageJ reads as no pixel size: "
                    f"no in-plane spacing")
            xres = yres = 1.0
        elif xres and yres and ((float(xres), float(yres)) != (1.0, 1.0) or code != 1):
            said |= {"X", "Y"}
        if xres and yres:
            per_letter["X"], per_letter["Y"] = 1.0 / float(xres), 1.0 / float(yres)
        # ImageJ's unit: the description's, else the resolution tags' (inch, centimetre)
        unit = length_unit(meta.get("unit")) or length_unit(_RESOLUTION_UNITS.get(code) if code in (2, 3) else None)
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
    else:
        page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
        code = int(getattr(page, "resolutionunit", 1) or 1)
        tagged = _RESOLUTION_UNITS.get(code)
        xres, yres = (float(r) for r in getattr(page, "resolution", (1.0, 1.0)))
        if xres == yres and xres in WRITER_DEFAULT_DPI and code in (1, 2):  # 2: inch
            note = (f"its resolution tags hold {xres:g} pixels {'an inch' if code == 2 else 'per unit, no unit'}, "
                    f"an image writer's default, taken as no spacing")
            tagged = None
        if tagged is not None and all(np.isfinite(r) and r > 0 for r in (xres, yres)):
            per_letter["X"], per_letter["Y"] = (in_length_unit(1.0 / r, tagged, _PLAIN_UNIT) for r in (xres, yres))
            per_letter["Z"] = min(per_letter["X"], per_letter["Y"])
            said, unit = {"X", "Y"}, _PLAIN_UNIT
    if not per_letter:
        return None, None, None, attrs, note
    names = [_SPATIAL_NAMES.get(a, a) for a in axes]
    spacing = [per_letter.get(n, 1.0) if n in "XYZ" else None for n in names]
    return spacing, [n in said for n in names], unit, attrs, note
