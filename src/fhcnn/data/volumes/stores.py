"""Array stores: zarr (``x.zarr`` or ``x.zarr:path/in/group``), HDF5 (``x.h5:dataset``) and
``.npy`` (memory-mapped). Their arrays are read as they are; attributes are kept.

Without an inner path, a zarr group or HDF5 file gives its only array of three or more
axes (an OME-Zarr group its first, full-resolution, dataset). Spacing comes from the
attributes ``spacing`` or ``element_size_um`` (per stored axis, or three values for the
spatial axes), or from OME-Zarr scale transforms; axis names from zarr's
``dimension_names``, xarray's ``_ARRAY_DIMENSIONS``, OME axes or ilastik's ``axistags``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from ..lazy import SLAB_BYTES, Unmapped
from ._common import RawVolume, jsonable, length_unit, one_length_unit, require

__all__ = ["open_zarr", "open_hdf5", "open_npy", "HUGE_CHUNK", "NeverWritten", "never_written"]

#: A chunk larger than this makes reading one window slow: the volume is marked compressed.
HUGE_CHUNK = SLAB_BYTES
_CHANNEL_NAMES = {"c", "ch", "channel", "channels"}


def _meta_from_names(names: Sequence[str | None] | None) -> int | None:
    if not names:
        return None
    hits = [i for i, n in enumerate(names) if n is not None and str(n).lower() in _CHANNEL_NAMES]
    return hits[0] if len(hits) == 1 else None


#: HDF5's dimension-scale bookkeeping: object references into the file, which mean nothing
#: beside a prediction (they were written to ``prediction.zarr`` as ``[[null], [null], [null]]``).
HDF5_REFERENCE_ATTRS = ("DIMENSION_LIST", "REFERENCE_LIST")


def _attr_spacing(attrs: dict[str, Any]) -> tuple[list[float] | None, str | None]:
    """The spacing the attributes ``spacing`` or ``element_size_um`` give, and its length unit
    (micrometre for ``element_size_um``; for ``spacing`` the attribute ``spacing_unit``, which
    fhcnn writes beside it, else ``None``)."""
    for key in ("spacing", "element_size_um"):
        v = attrs.get(key)
        if isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v):
            unit = "micrometer" if key == "element_size_um" else length_unit(jsonable(attrs.get("spacing_unit")))
            return [float(x) for x in v], unit
    return None, None


def _chunk_bytes(chunks: Sequence[int] | None, itemsize: int) -> int:
    return int(np.prod(chunks, dtype=np.int64)) * itemsize if chunks else 0


# ---------------------------------------------------------------------------------------- zarr

def _ome(group: Any) -> dict[str, Any] | None:
    """The first multiscale of an OME-Zarr group (NGFF 0.4 ``multiscales``, 0.5 under ``ome``)
    with its NGFF version as ``version``, or ``None``."""
    attrs = dict(group.attrs)
    ome: dict[str, Any] = attrs["ome"] if isinstance(attrs.get("ome"), dict) else {}
    ms = attrs.get("multiscales") or ome.get("multiscales")
    if not (isinstance(ms, list) and ms and isinstance(ms[0], dict)):
        return None
    return {**ms[0], "version": str(ome.get("version") or ms[0].get("version") or "0.4")}


def _ome_transform(node: dict[str, Any], kind: str, nd: int) -> list[float] | None:
    """The ``kind`` (``scale`` or ``translation``) among the ``coordinateTransformations`` of an
    OME-Zarr dataset or multiscale, when it has one value per axis."""
    for t in node.get("coordinateTransformations") or []:
        if isinstance(t, dict) and t.get("type") == kind and len(t.get(kind) or []) == nd:
            return [float(x) for x in t[kind]]
    return None


def _ome_place(ome: dict[str, Any], leaf: str, nd: int) -> tuple[list[float] | None, list[float] | None]:
    """``(scale, translation)`` per stored axis of the dataset ``leaf`` of the multiscale ``ome``:
    NGFF 0.4/0.5 apply the multiscale's own transformations after the dataset's, so a voxel
    ``i`` lies at ``(i * s_d + t_d) * s_m + t_m``: scale ``s_d * s_m``, translation
    ``t_d * s_m + t_m`` (``None``: not given)."""
    for ds in ome.get("datasets") or []:
        if isinstance(ds, dict) and str(ds.get("path")) == leaf:
            s_d, t_d = _ome_transform(ds, "scale", nd), _ome_transform(ds, "translation", nd)
            s_m, t_m = _ome_transform(ome, "scale", nd), _ome_transform(ome, "translation", nd)
            scale = None if s_d is None and s_m is None else \
                [a * b for a, b in zip(s_d or [1.0] * nd, s_m or [1.0] * nd)]
            shift = None if t_d is None and t_m is None else \
                [a * b + c for a, b, c in zip(t_d or [0.0] * nd, s_m or [1.0] * nd, t_m or [0.0] * nd)]
            return scale, shift
    return None, None


def _ome_units(axes: Sequence[Any], nd: int) -> dict[int, str]:
    """``{axis: unit}`` of the OME-Zarr axes of type ``space`` (or without a type) that name a
    unit, when the axes describe every one of the ``nd`` axes."""
    if len(axes) != nd:
        return {}
    return {a: str(ax["unit"]) for a, ax in enumerate(axes)
            if isinstance(ax, dict) and ax.get("unit") and ax.get("type") in ("space", None)}


def _arrays(group: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """Every array below ``group`` with three or more axes, by path (depth-limited)."""
    out = [(f"{prefix}{name}", a) for name, a in group.arrays() if len(a.shape) >= 3]
    if depth < 6:
        for name, g in group.groups():
            out += _arrays(g, f"{prefix}{name}/", depth + 1)
    return out


def open_zarr(path: Path, inner: str | None, label: str) -> RawVolume:
    """Open a zarr array (a v2 or v3 store on disk) without reading its chunks.

    Raises:
        InputError: not a zarr store, no array at ``inner``, a group without exactly one array
            of three or more axes (the message lists them).
    """
    zarr = require("zarr", "reading zarr")
    try:
        root = zarr.open(str(path), mode="r")
    except Exception as e:
        raise InputError(f"cannot read {label} as zarr: {str(e)[:200]}") from None
    node, parent, where = root, None, ""
    in_ome: str | None = None  # the array's path inside its OME-Zarr group, when it is a dataset of it
    if inner:
        if not isinstance(root, zarr.Group):
            raise InputError(f"{label}: {path} is a zarr array, not a group; drop ':{inner}'")
        try:
            node = root[inner]
        except (KeyError, ValueError, FileNotFoundError):
            listed = ", ".join(p for p, _ in _arrays(root)[:6]) or "no array of 3 or more axes"
            raise InputError(f"{label}: {path} holds no array or group '{inner}' (it holds: {listed})") from None
        where = inner
        head = inner.strip("/").rsplit("/", 1)
        parent = root[head[0]] if len(head) == 2 else root
    if isinstance(node, zarr.Group):
        ome = _ome(node)
        if ome is not None and ome.get("datasets"):
            first = str(ome["datasets"][0].get("path"))
            parent, node, in_ome = node, node[first], first
            where = f"{where}/{first}".strip("/")
        else:
            found = _arrays(node)
            if len(found) != 1:
                listed = ", ".join(p for p, _ in found[:6]) + (", ..." if len(found) > 6 else "")
                raise InputError(f"{label}: the zarr group holds {len(found)} arrays of three or more axes"
                                 f"{' (' + listed + ')' if found else ''}; name one as {path}:PATH")
            sub, node = found[0]
            where = f"{where}/{sub}".strip("/")
            head = where.rsplit("/", 1)
            parent = root[head[0]] if len(head) == 2 else root
    arr = node
    attrs = dict(arr.attrs)
    nd = len(arr.shape)
    names: list[str | None] | None = None
    meta = getattr(arr, "metadata", None)
    dims = getattr(meta, "dimension_names", None)
    if dims and len(dims) == nd:
        names = [None if d is None else str(d) for d in dims]
    elif isinstance(attrs.get("_ARRAY_DIMENSIONS"), list) and len(attrs["_ARRAY_DIMENSIONS"]) == nd:
        names = [str(d) for d in attrs["_ARRAY_DIMENSIONS"]]
    spacing, unit = _attr_spacing(attrs)
    meta_channel = _meta_from_names(names)
    ome = _ome(parent) if parent is not None else None
    origin: list[float] | None = None
    ome_axes: dict[str, Any] | None = None
    if ome is not None:
        axes = ome.get("axes") or []
        if len(axes) == nd:
            names = [str(a.get("name") if isinstance(a, dict) else a) for a in axes]
            types = [a.get("type") if isinstance(a, dict) else None for a in axes]
            meta_channel = types.index("channel") if types.count("channel") == 1 else _meta_from_names(names)
            ome_axes = {"version": ome["version"],
                        "axes": [dict(a) if isinstance(a, dict) else {"name": str(a)} for a in axes]}
        leaf = in_ome if in_ome is not None else where.rsplit("/", 1)[-1]  # a dataset path may hold "/"
        scale, origin = _ome_place(ome, leaf, nd)
        spacing = scale if scale is not None else spacing
        units = _ome_units(axes, nd)
        if units:
            unit = length_unit(next(iter(units.values()))) if len(set(units.values())) == 1 else None
        if spacing is not None and len(spacing) == nd and units:  # spatial axes in nm and micrometer: in one
            same = one_length_unit([spacing[a] for a in units], list(units.values()))
            if same is not None:
                for a, v in zip(units, same[0]):
                    spacing[a] = v
                moved = None if origin is None else one_length_unit([origin[a] for a in units], list(units.values()))
                if origin is not None and moved is not None:  # the translation is in each axis's unit too
                    for a, v in zip(units, moved[0]):
                        origin[a] = v
                attrs["spacing_unit"] = unit = same[1]
    if attrs.get("_ARRAY_DIMENSIONS") is not None:
        attrs.pop("_ARRAY_DIMENSIONS")
    chunks = getattr(arr, "chunks", None)
    huge = _chunk_bytes(chunks, np.dtype(arr.dtype).itemsize) > HUGE_CHUNK
    order = getattr(arr, "order", "C")
    return RawVolume(array=arr, axis_names=names, channel_axis=meta_channel, spacing=spacing,
                     attrs=jsonable(attrs) or {}, compressed=huge, slab_axis=nd - 1 if order == "F" else 0,
                     named=names is not None and all(n is not None for n in names), unit=unit,
                     origin=origin, ome=ome_axes)


# ---------------------------------------------------------------------------------------- HDF5

def open_hdf5(path: Path, inner: str | None, label: str) -> RawVolume:
    """Open an HDF5 dataset without reading it (the file stays open while the array lives).

    Raises:
        InputError: not an HDF5 file, no dataset at ``inner``, or (without ``inner``) not
            exactly one dataset of three or more axes.
    """
    h5py = require("h5py", "reading HDF5")
    try:
        f = h5py.File(str(path), "r")
    except Exception as e:
        raise InputError(f"cannot read {label} as HDF5: {str(e)[:200]}") from None
    found: list[str] = []
    f.visititems(lambda name, obj: found.append(name)
                 if isinstance(obj, h5py.Dataset) and obj.ndim >= 3 else None)
    if inner:
        try:
            ds = f[inner]
        except (KeyError, ValueError):
            f.close()
            raise InputError(f"{label}: {path} holds no dataset '{inner}' (it holds: "
                             f"{', '.join(found[:6]) or 'no dataset of 3 or more axes'})") from None
        if not isinstance(ds, h5py.Dataset):
            f.close()
            raise InputError(f"{label}: '{inner}' in {path} is a group; name a dataset "
                             f"({', '.join(found[:6]) or 'none of 3 or more axes'})")
    else:
        if len(found) != 1:
            f.close()
            listed = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
            raise InputError(f"{label}: the HDF5 file holds {len(found)} datasets of three or more axes"
                             f"{' (' + listed + ')' if found else ''}; name one as {path}:DATASET")
        ds = f[found[0]]
    missing = _missing_filter(h5py, ds)
    if missing:
        f.close()
        raise InputError(f"{label}: its data is compressed with HDF5 filter {missing}, which h5py cannot load "
                         f"(a plugin such as blosc, zstd or bitshuffle: set HDF5_PLUGIN_PATH to its folder, or "
                         f"save the dataset with gzip)")
    attrs = {k: ds.attrs[k] for k in ds.attrs.keys() if k not in HDF5_REFERENCE_ATTRS}
    names: list[str | None] | None = None
    meta_channel = None
    tags = attrs.get("axistags")
    if tags is not None:
        try:
            keys = [a["key"] for a in json.loads(jsonable(tags))["axes"]]
            if len(keys) == ds.ndim:
                names = keys
                meta_channel = _meta_from_names(keys)
        except (ValueError, KeyError, TypeError):
            pass
    if names is None:  # HDF5 dimension labels (h5py ds.dims[i].label; netCDF-4, xarray)
        labels = [str(d.label) for d in ds.dims]
        if any(labels):
            names = [lab or None for lab in labels]
            meta_channel = _meta_from_names(names)
    attrs = jsonable(attrs) or {}
    huge = ds.chunks is not None and _chunk_bytes(ds.chunks, ds.dtype.itemsize) > HUGE_CHUNK
    spacing, unit = _attr_spacing(attrs)
    return RawVolume(array=ds, axis_names=names, channel_axis=meta_channel, spacing=spacing,
                     attrs=attrs, compressed=huge, slab_axis=0,
                     named=names is not None and all(n is not None for n in names), unit=unit)


def _missing_filter(h5py: Any, ds: Any) -> str | None:
    """The first filter of the dataset ``ds`` that HDF5 cannot load (``"32001"``, with its name
    when the file gives one), or ``None``: found when the file is opened, not by the first read
    (an OSError with a traceback, in the middle of a pass)."""
    plist = ds.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code, _, _, name = plist.get_filter(i)
        if not h5py.h5z.filter_avail(code):
            named = bytes(name).decode("ascii", "replace").strip("\x00 ")
            return f"{code} ({named})" if named else str(code)
    return None


# ------------------------------------------------------------------------- chunks never written

@dataclass(frozen=True)
class NeverWritten:
    """The chunks of a zarr array or HDF5 dataset that were never written: they are read as the
    array's fill value.

    Attributes:
        missing: how many were never written (``> 0``).
        total: how many the array has.
        unit: ``"chunks"`` (of a sharded zarr array, its inner chunks), or ``"shards"`` for a
            sharded zarr array whose shard indexes this zarr cannot read (counted by shard: a
            shard written in part may lack inner chunks too).
        fill: the value they read as.
        stated: the fill value as the file states it (``None``: zarr's ``null``, read as 0).
    """

    missing: int
    total: int
    unit: str
    fill: float
    stated: float | None


def never_written(array: Any) -> NeverWritten | None:
    """What :class:`NeverWritten` says of ``array`` (a zarr array: v2 or v3, sharded or not; an
    h5py dataset stored in chunks), or ``None``: every chunk written, or another kind of array (a
    contiguous HDF5 dataset, a memory map). Nothing of the data is read: zarr lists the store's
    keys (of a sharded array, then reads the index of each shard written: :func:`_inner_chunks_written`),
    HDF5 counts the chunks its index holds (``get_num_chunks``)."""
    import zarr

    if isinstance(array, zarr.Array):
        shards = getattr(array, "shards", None)
        inner = _inner_chunks_written(array) if shards else None
        grid = tuple(int(c) for c in (shards if shards and inner is None else array.chunks))
        total = math.prod(-(-int(n) // c) for n, c in zip(array.shape, grid))
        if inner is not None:
            written, unit = inner, "chunks"
        else:  # zarr counts a written shard as all its inner chunks
            per_shard = math.prod(-(-s // int(c)) for s, c in zip(grid, array.chunks)) if shards else 1
            written, unit = int(array.nchunks_initialized) // per_shard, "shards" if shards else "chunks"
        stated = array.fill_value
    elif type(array).__module__.startswith("h5py") and getattr(array, "chunks", None):
        total = math.prod(-(-int(n) // int(c)) for n, c in zip(array.shape, array.chunks))
        written = int(array.id.get_num_chunks())
        stated, unit = array.fillvalue, "chunks"
    else:
        return None
    if written >= total:
        return None
    stated = None if stated is None else np.asarray(stated).item()
    return NeverWritten(missing=total - written, total=total, unit=unit, fill=0 if stated is None else stated,
                        stated=stated)


def _inner_chunks_written(array: Any) -> int | None:
    """The inner chunks of the sharded zarr v3 ``array`` that its shards hold, counted from the
    index of each shard written (16 bytes an inner chunk, at the shard's end or start; the
    chunks' data is not read), those of a shard past the array's edge left out; ``None`` where
    this zarr does not expose the shard index (its sharding codec's ``_load_shard_index_maybe``,
    zarr 3.1): the caller counts whole shards then."""
    try:
        from zarr.codecs.sharding import ShardingCodec
        from zarr.core.common import concurrent_map
        from zarr.core.config import config
        from zarr.core.sync import sync

        codec = next(c for c in array.metadata.codecs if isinstance(c, ShardingCodec))
        load, where = codec._load_shard_index_maybe, array.store_path
        shards, chunks = tuple(int(s) for s in array.shards), tuple(int(c) for c in array.chunks)
        per_shard = tuple(s // c for s, c in zip(shards, chunks))
        inside = tuple(-(-int(n) // c) for n, c in zip(array.shape, chunks))  # inner chunks per axis
        grid = tuple(-(-int(n) // s) for n, s in zip(array.shape, shards))
    except (ImportError, AttributeError, StopIteration, TypeError):
        return None
    try:
        stored = {str(k) for k in sync(_listed(where))}
        keys = [(at, key) for at in np.ndindex(*grid)
                if (key := array.metadata.encode_chunk_key(at)) in stored]
        indexes = sync(concurrent_map([(where / key, per_shard) for _, key in keys], load,
                                      int(config.get("async.concurrency") or 10)))
    except Exception:  # a damaged index (its checksum): a note is not where a file is refused
        return None
    written = 0
    for (at, _), index in zip(keys, indexes):
        if index is None:
            continue
        held = index.get_full_chunk_map()
        ends = [max(0, min(p, n - a * p)) for a, p, n in zip(at, per_shard, inside)]  # inner chunks inside the array
        written += int(np.count_nonzero(held[tuple(slice(0, e) for e in ends)]))
    return written


async def _listed(where: Any) -> list[str]:
    """The keys below the store path ``where``, relative to it."""
    prefix = where.path.rstrip("/") + "/" if where.path else ""
    return [key[len(prefix):] async for key in where.store.list_prefix(prefix)]


# ---------------------------------------------------------------------------------------- npy

def _npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int] | None:
    """``(shape, fortran, dtype, data offset)`` from a ``.npy`` header, or ``None``."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            return tuple(shape), bool(fortran), np.dtype(dtype), f.tell()
    except Exception:
        return None


def open_npy(path: Path, label: str) -> RawVolume:
    """Memory-map a ``.npy`` file (never loaded whole).

    Raises:
        InputError: not a ``.npy`` file, Python objects inside, or fewer bytes than the header
            says (a lying header or a truncated file).
    """
    head = _npy_header(path)
    if head is None:
        raise InputError(f"cannot read {label}: not a valid .npy array file")
    shape, fortran, dtype, offset = head
    if dtype.hasobject:
        raise InputError(f"cannot read {label}: it holds Python objects, not a plain array")
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size < need:
        raise InputError(f"{label}: the .npy header says shape {shape} of {dtype} ({need:,} bytes with the "
                         f"header) but the file has {size:,} bytes (a lying header or a truncated file)")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(f"cannot read {label}: {str(e)[:200]}") from None
    return RawVolume(array=Unmapped(arr), compressed=False,
                     slab_axis=arr.ndim - 1 if fortran and arr.ndim > 1 else 0)
