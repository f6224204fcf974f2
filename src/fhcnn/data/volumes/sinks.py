"""Prediction files that keep the input's geometry, written box by box (never whole in memory).

* NIfTI in -> ``prediction.nii.gz``: the input's header (so its affine, qform and sform,
  zooms and units) with the data type changed, scaling reset and intent ``label``. Boxes
  go to an uncompressed ``.nii`` scratch file (memory-mapped) in OUT, gzipped in one
  streamed pass at :meth:`PredictionSink.close`.
* zarr, HDF5, TIFF, SEG-Y in -> ``prediction.zarr`` (chunks of 128 voxels per axis), with
  the input's attributes, ``spacing`` and ``axis_names``; where the run took a spacing the
  input does not state, or another (``volume.spacing``), :func:`output_spacing` says what.
  An OME-Zarr input's is itself a single-level OME-Zarr image (labels) of the input's NGFF
  version (0.5 in zarr v3, else 0.4 in zarr v2): its array ``0`` has those attributes, the
  group its axes, scale and translation.
* ``.npy`` in -> ``prediction.npy`` (``np.lib.format.open_memmap``).

Everything is written under a temporary name inside OUT and renamed at ``close``; the run
folder records every file (``fhcnn.atomic``). :meth:`PredictionSink.abort` removes the
temporary files.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ... import atomic
from ...errors import InputError
from ..lazy import release_pages
from ._common import VolumeFormat, VolumeGeometry, jsonable, require

__all__ = ["PredictionSink", "prediction_sink", "prediction_name", "prediction_attrs", "ome_image", "volume_store",
           "volume_array_path", "output_spacing", "OUTPUT_CHUNK", "OME_DATASET"]

#: Chunk edge of ``prediction.zarr``.
OUTPUT_CHUNK = 128
_GZIP_LEVEL = 6
_COPY_BYTES = 16 * 2**20
#: Attributes of the input that describe its own axes (replaced, not copied).
_AXIS_ATTRS = ("_ARRAY_DIMENSIONS", "spacing", "spacing_unit", "element_size_um", "axistags", "multiscales",
               "ome", "axis_names", "fhcnn_spacing")


def output_spacing(geometry: VolumeGeometry, used: Sequence[float] | None
                   ) -> tuple[tuple[float, float, float] | None, tuple[float, float, float] | None]:
    """``(spacing, fhcnn_spacing)`` of an output on the input's grid, ``used`` the voxel spacing
    the run used (``volume.spacing`` over the file's; ``None``: none, isotropic).

    ``spacing`` places the output where the input lies: along the ``(D, H, W)`` axes whose
    spacing the input states (``geometry.spacing_stated``), the input's; along the others (every
    axis of an input without one) the spacing used, in the input's length unit where it names
    one. ``fhcnn_spacing`` is ``used`` where it differs from ``spacing`` along some axis (a
    ``volume.spacing`` other than what the file states: the run trained as if the voxels had that
    size, but they lie where the file says), else ``None``."""
    if used is None:
        return geometry.spacing, None
    taken = (float(used[0]), float(used[1]), float(used[2]))
    if geometry.spacing is None:
        return taken, None
    placed = tuple(float(g) if said else u for g, u, said in zip(geometry.spacing, taken, geometry.spacing_stated))
    # a float32 header's 0.8 is 0.800000011920929: the same spacing as a volume.spacing of 0.8
    differs = any(not math.isclose(a, b, rel_tol=1e-6) for a, b in zip(placed, taken))
    return placed, taken if differs else None  # type: ignore[return-value]


def prediction_name(fmt: VolumeFormat) -> str:
    """The file name of the prediction of a ``fmt`` volume."""
    return "prediction.nii.gz" if fmt == "nifti" else "prediction.npy" if fmt == "npy" else "prediction.zarr"


#: Bytes written through a memory map between releases of its pages (:func:`release_pages`).
RELEASE_BYTES = 64 * 2**20


class PredictionSink:
    """Where predicted labels go: ``sink[box] = labels`` for boxes of a ``(D, H, W)`` volume
    (``labels`` of the box's shape, cast to ``dtype``); ``sink[box]`` reads back what was
    written (0 elsewhere); :meth:`close` puts the file in place and returns its path.

    Use as a context manager: ``close`` on success, ``abort`` on an exception.
    """

    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype
    #: The open array boxes are written to (a memory map or a zarr array); ``None`` once closed.
    _array: Any = None
    _unreleased = 0

    def __setitem__(self, box: tuple[slice, slice, slice], labels: np.ndarray) -> None:
        target = self._target()
        target[box] = np.asarray(labels).astype(self.dtype, copy=False)
        self._unreleased += int(np.asarray(labels).size) * self.dtype.itemsize
        if self._unreleased >= RELEASE_BYTES:  # a memory-mapped target: written pages leave the resident set
            release_pages(target)
            self._unreleased = 0

    def __getitem__(self, box: Any) -> np.ndarray:
        return np.asarray(self._target()[box])

    def _target(self) -> Any:
        if self._array is None:
            raise ValueError("the prediction sink is closed")
        return self._array

    def close(self) -> Path:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "PredictionSink":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class NiftiSink(PredictionSink):
    """``prediction.nii.gz`` with the input's header (see the module docstring; ``spacing``: as
    :func:`prediction_sink`'s)."""

    def __init__(self, out_dir: Path, shape: tuple[int, int, int], geometry: VolumeGeometry,
                 dtype: np.dtype, spacing: Sequence[float] | None = None) -> None:
        nib = require("nibabel", "writing NIfTI")
        self.path = out_dir / "prediction.nii.gz"
        self.shape = shape
        hdr = _nifti_header(nib, geometry, shape, dtype, spacing)
        self.dtype = np.dtype(dtype)
        # recorded as scratch: a run killed before it is compressed leaves nothing unlisted in OUT
        self._scratch = atomic.begin_scratch(atomic.scratch_name(out_dir, ".prediction.nii."))
        offset = int(hdr["vox_offset"])
        with open(self._scratch, "xb") as f:
            block = hdr.binaryblock
            f.write(block + b"\x00" * (offset - len(block)))  # no extensions
            f.truncate(offset + int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize)
        self._array = np.memmap(self._scratch, dtype=hdr.get_data_dtype(), mode="r+", offset=offset,
                                shape=shape, order="F")

    def close(self) -> Path:
        if self._array is not None:
            self._array.flush()
            self._array = None
            with atomic.atomic_path(self.path) as tmp:
                with open(self._scratch, "rb") as src, open(tmp, "wb") as raw, \
                        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=_GZIP_LEVEL,
                                      mtime=0) as dst:
                    shutil.copyfileobj(src, dst, _COPY_BYTES)
            atomic.end_scratch(self._scratch)
        return self.path

    def abort(self) -> None:
        self._array = None
        atomic.end_scratch(self._scratch)


def _nifti_header(nib: Any, geometry: VolumeGeometry, shape: Sequence[int], dtype: Any,
                  used: Sequence[float] | None = None) -> Any:
    """The input's header for a 3D ``dtype`` volume of ``shape`` (a fresh one from the affine
    when the input had none); its ``descrip`` names the spacing the run used where it is not
    the header's (``fhcnn_spacing`` of :func:`output_spacing`, when the 80 bytes hold it)."""
    block = geometry.nifti_header
    if block:
        klass = nib.Nifti2Header if len(block) >= 540 else nib.Nifti1Header
        hdr = klass.from_fileobj(io.BytesIO(bytes(block)))
    else:
        hdr = nib.Nifti1Header()
        if geometry.affine is not None:
            hdr.set_sform(geometry.affine, code="aligned")
            hdr.set_qform(geometry.affine, code="aligned")
    placed, taken = output_spacing(geometry, used)
    zooms = hdr.get_zooms()[:3] if block else (placed or (1.0, 1.0, 1.0))
    hdr.set_data_shape(tuple(int(n) for n in shape))
    hdr.set_zooms(zooms)
    hdr.set_data_dtype(np.dtype(dtype))
    hdr.set_slope_inter(None, None)
    hdr["cal_min"], hdr["cal_max"] = 0, 0
    hdr.set_intent("label" if np.dtype(dtype).kind in "biu" else "none", allow_unknown=True)
    descrip = "fhcnn prediction" + ("" if taken is None else "; fhcnn_spacing " + ",".join(f"{v:g}" for v in taken))
    hdr["descrip"] = descrip.encode() if len(descrip) <= 80 else b"fhcnn prediction"
    hdr["magic"] = hdr.single_magic
    hdr["vox_offset"] = hdr.single_vox_offset
    return hdr


#: The path of the one dataset of an OME-Zarr image fhcnn writes (:func:`volume_store`).
OME_DATASET = "0"


def prediction_attrs(geometry: VolumeGeometry, source: str | None, leading: str | None = None,
                     spacing: Sequence[float] | None = None) -> dict[str, Any]:
    """The attributes of an output array on the input's grid (``prediction.zarr``,
    ``probabilities.zarr``): the input's (less those describing its own axes), ``spacing`` of
    the ``(D, H, W)`` axes (where the input gives one, or the run used one: :func:`output_spacing`
    of ``spacing``, the spacing the run used) with its length unit ``spacing_unit`` (where the
    input names one: a NIfTI ``xyzt_units``, ``element_size_um``, OME units, ImageJ's unit),
    ``fhcnn_spacing`` (the spacing the run used, where it is not ``spacing``), ``axis_names``
    (``leading`` first: the name of an axis before the spatial ones, e.g. ``class``), a NIfTI
    input's ``affine`` (4x4, voxel to world) and ``fhcnn_source``."""
    attrs = {k: v for k, v in (geometry.attrs or {}).items() if k not in _AXIS_ATTRS}
    placed, taken = output_spacing(geometry, spacing)
    if placed is not None:
        attrs["spacing"] = list(placed)
        if geometry.unit is not None:
            attrs["spacing_unit"] = geometry.unit
    if taken is not None:
        attrs["fhcnn_spacing"] = list(taken)
    attrs["axis_names"] = ([leading] if leading else []) + list(geometry.axis_names)
    if geometry.affine is not None:
        attrs["affine"] = np.asarray(geometry.affine, dtype=np.float64).tolist()
    if source is not None:
        attrs["fhcnn_source"] = source
    return jsonable(attrs)


def ome_image(geometry: VolumeGeometry, leading: str | None = None, name: str = "prediction",
              spacing: Sequence[float] | None = None) -> tuple[int, dict[str, Any]]:
    """``(zarr format, group attributes)`` of a single-level OME-Zarr image of the ``(D, H, W)``
    axes of ``geometry`` (an OME-Zarr input's, ``geometry.ome``), preceded by a channel axis
    named ``leading`` when given, its one dataset at :data:`OME_DATASET`: NGFF 0.5 (zarr v3,
    under ``ome``) for a 0.5 input, else 0.4 (zarr v2). The spatial axes are the input's (name,
    type, unit: the one unit the spacing was converted to, where it was); the dataset's
    ``scale`` is the spacing (:func:`output_spacing` of ``spacing``, the spacing the run used:
    the input's ``scale``, or the one used where it has none), its ``translation`` the origin
    (where the input had one), so voxel ``i`` lies where the input's voxel ``i`` lies. Without
    ``leading`` it is marked ``image-label`` (a viewer shows it as labels)."""
    assert geometry.ome is not None
    version = "0.5" if str(geometry.ome.get("version", "")).startswith("0.5") else "0.4"
    axes: list[dict[str, Any]] = [{"name": leading, "type": "channel"}] if leading else []
    for ax, axis_name in zip(geometry.ome["axes"], geometry.axis_names):
        a = {k: v for k, v in ax.items() if k in ("type", "unit")}
        a["name"] = axis_name
        if geometry.unit and a.get("unit") and a.get("type") in ("space", None):
            a["unit"] = geometry.unit
        axes.append(a)
    lead = [1.0] if leading else []
    moves: list[dict[str, Any]] = [
        {"type": "scale", "scale": lead + [float(s) for s in output_spacing(geometry, spacing)[0] or (1, 1, 1)]}]
    if geometry.origin is not None:
        moves.append({"type": "translation", "translation": [0.0] * len(lead) + [float(o) for o in geometry.origin]})
    ms = {"name": name, "axes": axes, "datasets": [{"path": OME_DATASET, "coordinateTransformations": moves}]}
    extra = {} if leading else {"image-label": {"version": version}}
    if version == "0.5":
        return 3, {"ome": {"version": version, "multiscales": [ms], **extra}}
    return 2, {"multiscales": [{"version": version, **ms}], **extra}


def volume_store(path: Path, geometry: VolumeGeometry, shape: Sequence[int], chunks: Sequence[int], dtype: Any,
                 source: str | None, leading: str | None = None, spacing: Sequence[float] | None = None) -> Any:
    """A new zarr array at ``path`` for an output on the input's grid (``shape``: the ``(D, H, W)``
    of ``geometry``, after an axis named ``leading`` where given), filled with 0 and carrying
    :func:`prediction_attrs`; of an OME-Zarr input, an OME-Zarr image at ``path``
    (:func:`ome_image`) whose dataset is that array (:func:`volume_array_path`); ``spacing``: the
    spacing the run used (:func:`output_spacing`). Returns the array."""
    zarr = require("zarr", "writing zarr outputs")
    shape, chunks = tuple(int(n) for n in shape), tuple(int(n) for n in chunks)
    if geometry.ome is None:
        array = zarr.open_array(str(path), mode="w", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    else:
        fmt, meta = ome_image(geometry, leading, name="probabilities" if leading else "prediction", spacing=spacing)
        group = zarr.open_group(str(path), mode="w", zarr_format=fmt)
        group.attrs.update(meta)
        names = ([leading] if leading else []) + list(geometry.axis_names)
        named = {"dimension_names": names} if fmt == 3 else {}
        array = group.create_array(OME_DATASET, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, **named)
    array.attrs.update(prediction_attrs(geometry, source, leading, spacing))
    return array


def volume_array_path(path: Path, geometry: VolumeGeometry) -> Path:
    """Where the array of the :func:`volume_store` at ``path`` lies."""
    return path / OME_DATASET if geometry.ome is not None else path


class ZarrSink(PredictionSink):
    """``prediction.zarr``: chunked, attributes of the input plus ``spacing``/``axis_names``
    (:func:`prediction_attrs`); of an OME-Zarr input, an OME-Zarr image (:func:`ome_image`)."""

    def __init__(self, out_dir: Path, shape: tuple[int, int, int], geometry: VolumeGeometry,
                 dtype: np.dtype, source: str | None, spacing: Sequence[float] | None = None) -> None:
        require("zarr", "writing prediction.zarr")
        self.path = out_dir / "prediction.zarr"
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self._tmp = atomic.begin_scratch(atomic.scratch_name(out_dir, ".prediction.zarr."))
        chunks = tuple(min(OUTPUT_CHUNK, int(n)) for n in shape)
        self._array = volume_store(self._tmp, geometry, shape, chunks, self.dtype, source, spacing=spacing)

    def close(self) -> Path:
        if self._array is None:
            return self.path
        self._array = None
        atomic.place_tree(self._tmp, self.path)   # folders made, files moved in and recorded
        atomic.end_scratch(self._tmp)
        return self.path

    def abort(self) -> None:
        self._array = None
        atomic.end_scratch(self._tmp)


class NpySink(PredictionSink):
    """``prediction.npy`` through ``np.lib.format.open_memmap`` under a temporary name."""

    def __init__(self, out_dir: Path, shape: tuple[int, int, int], dtype: np.dtype) -> None:
        self.path = out_dir / "prediction.npy"
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic.atomic_path(self.path))
        self._array = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=shape)

    def close(self) -> Path:
        if self._array is not None:
            self._array.flush()
            self._array = None
            self._stack.close()  # fsync and rename into place
        return self.path

    def abort(self) -> None:
        if self._array is not None:
            self._array = None
            try:  # atomic_path removes its temporary file when its block raises
                self._stack.__exit__(_Aborted, _Aborted(), None)
            except _Aborted:
                pass


class _Aborted(Exception):
    pass


def prediction_sink(out_dir: str | os.PathLike[str], fmt: VolumeFormat, shape: Sequence[int],
                    geometry: VolumeGeometry, dtype: Any = np.uint8, *,
                    source: str | None = None, spacing: Sequence[float] | None = None) -> PredictionSink:
    """A sink for the prediction of a ``fmt`` volume of spatial ``shape``, inside ``out_dir``.

    Args:
        out_dir: the run folder (exists).
        fmt: the format of the first image (decides the file, see the module docstring).
        shape: ``(D, H, W)``.
        geometry: the first image's :class:`VolumeGeometry`.
        dtype: of the labels (uint8: classes 0..254).
        source: the input's spec, recorded in ``prediction.zarr``'s attributes.
        spacing: the voxel spacing the run used (``None``: none); recorded where the input
            states none, or states another (:func:`output_spacing`).

    Raises:
        InputError: the library that writes the format is missing; a shape that is not 3D.
    """
    out = Path(out_dir)
    shp = tuple(int(n) for n in shape)
    if len(shp) != 3 or min(shp) < 1:
        raise InputError(f"a prediction has a 3D shape, got {shp}")
    if fmt == "nifti":
        return NiftiSink(out, shp, geometry, np.dtype(dtype), spacing)  # type: ignore[arg-type]
    if fmt == "npy":
        return NpySink(out, shp, np.dtype(dtype))  # type: ignore[arg-type]
    return ZarrSink(out, shp, geometry, np.dtype(dtype), source, spacing)  # type: ignore[arg-type]
