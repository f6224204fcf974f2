"""``open_volume``: one spec (a path, with ``:inner/path`` for zarr and HDF5) to an
:class:`OpenedVolume`; ``open_images``: the co-registered image channels of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ...errors import InputError
from ..lazy import Unmapped
from ._common import (
    ArrayLike,
    AxisPick,
    Decoded,
    OpenedVolume,
    RawVolume,
    VolumeFormat,
    VolumeGeometry,
    require,
    resolve_axes,
    spatial_spacing,
    spatial_values,
)
from .grid import check_same_grid

__all__ = ["open_volume", "open_images", "check_same_grid", "split_spec", "volume_format", "SUFFIXES"]

#: File name endings of each format (a folder holding zarr metadata is zarr whatever its name).
SUFFIXES: dict[VolumeFormat, tuple[str, ...]] = {
    "nifti": (".nii", ".nii.gz"),
    "tiff": (".tif", ".tiff"),
    "zarr": (".zarr",),
    "hdf5": (".h5", ".hdf5", ".hdf", ".he5"),
    "segy": (".sgy", ".segy"),
    "npy": (".npy",),
}
_ALL_SUFFIXES = tuple(sfx for sfxs in SUFFIXES.values() for sfx in sfxs)
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")


def split_spec(spec: str) -> tuple[Path, str | None]:
    """``"x.zarr:a/b"`` -> ``(Path("x.zarr"), "a/b")``; ``"x.h5:data"`` likewise (any known
    suffix followed by ``:`` is cut there; :func:`open_volume` allows it for zarr and HDF5
    only); a spec that exists as a path, colons and all, is a path without an inner part."""
    s = str(spec)
    if Path(s).expanduser().exists():
        return Path(s).expanduser(), None
    low = s.lower()
    cuts = sorted(at + len(sfx) for sfx in _ALL_SUFFIXES for at in _find_all(low, sfx + ":"))
    for cut in cuts:  # the first head that exists; else the first candidate (refused as missing)
        if Path(s[:cut]).expanduser().exists():
            return Path(s[:cut]).expanduser(), s[cut + 1:].strip("/") or None
    if cuts:
        return Path(s[:cuts[0]]).expanduser(), s[cuts[0] + 1:].strip("/") or None
    return Path(s).expanduser(), None


def _find_all(text: str, sub: str) -> list[int]:
    out, at = [], text.find(sub)
    while at >= 0:
        out.append(at)
        at = text.find(sub, at + 1)
    return out


def volume_format(path: Path) -> VolumeFormat | None:
    """The format of ``path`` by its name (or, for a folder, by its zarr metadata files)."""
    name = path.name.lower()
    for fmt, suffixes in SUFFIXES.items():
        if any(name.endswith(sfx) for sfx in suffixes):
            return fmt
    if path.is_dir() and any((path / m).exists() for m in _ZARR_MARKERS):
        return "zarr"
    return None


def _raw(fmt: VolumeFormat, path: Path, inner: str | None, label: str) -> RawVolume:
    if fmt == "nifti":
        from .nifti import open_nifti

        return open_nifti(path, label)
    if fmt == "tiff":
        from .tiff import open_tiff

        return open_tiff(path, label)
    if fmt == "zarr":
        from .stores import open_zarr

        return open_zarr(path, inner, label)
    if fmt == "hdf5":
        from .stores import open_hdf5

        return open_hdf5(path, inner, label)
    if fmt == "segy":
        from .segy import open_segy

        return open_segy(path, label)
    from .stores import open_npy

    return open_npy(path, label)


def open_volume(spec: str, *, channel_axis: int | None = None, what: str = "image",
                allow_channels: bool = True) -> OpenedVolume:
    """Open one volume file for reading by window (nothing but headers is read).

    Args:
        spec: ``path.nii`` / ``.nii.gz`` / ``.tif`` / ``.tiff`` / ``x.zarr`` or
            ``x.zarr:path/in/group`` / ``x.h5`` or ``x.h5:dataset`` (``.hdf5``) / ``.sgy`` /
            ``.segy`` / ``.npy``.
        channel_axis: the stored axis holding channels (``--channel-axis``), for a file
            with more than three axes; ``None``: metadata, then the shape rule decide.
        what: the role named in messages (``"image"``, ``"labels"`` ...).
        allow_channels: ``False`` refuses a file with more than one channel.

    Returns:
        An :class:`OpenedVolume` whose ``channels`` are lazy ``(D, H, W)`` array-likes.

    Raises:
        InputError: a missing or unreadable file, an unknown extension, a lying header, a
            dtype that is not bool/integer/float, an empty or 2D array, an ambiguous channel
            axis (one line each).
    """
    path, inner = split_spec(spec)
    label = f"{what} {spec}"
    if not path.exists():
        raise InputError(f"{label}: no such file or folder")
    fmt = volume_format(path)
    if fmt is None:
        known = ", ".join(s for sfx in SUFFIXES.values() for s in sfx)
        raise InputError(f"{label}: unknown volume format '{''.join(path.suffixes[-2:]) or path.name}' "
                         f"(known: {known}, or a zarr folder)")
    if inner is not None and fmt not in ("zarr", "hdf5"):
        raise InputError(f"{label}: only zarr and HDF5 take an inner path after ':'")
    if path.is_dir() != (fmt == "zarr"):
        raise InputError(f"{label}: {'a folder' if path.is_dir() else 'a file'}, not a {fmt} "
                         f"{'file' if fmt != 'zarr' else 'folder'}")
    raw = _raw(fmt, path, inner, label)
    if fmt == "tiff":
        from .tiff import refuse_planes_of_channels

        refuse_planes_of_channels("".join(str(n) for n in raw.axis_names or ()), raw.array.shape, label)
    dtype = np.dtype(raw.array.dtype)
    if dtype.kind not in "biuf":
        raise InputError(f"{label} has dtype {dtype}; fhcnn volume reads real numbers (bool, integers, floats)")
    named = [str(n) for n in raw.axis_names or ()] if raw.named else None
    c, spatial, fixed = resolve_axes(raw.array.shape, label, meta_channel=raw.channel_axis,
                                     channel_axis=channel_axis, allow_channels=allow_channels, named=named)
    if fmt == "nifti" and spatial != (0, 1, 2):
        # the affine and pixdim place dims 1-3: any other three axes would be written into
        # prediction.nii.gz with a grid (and voxel size) that is not theirs
        raise InputError(f"{label} has shape {tuple(int(n) for n in raw.array.shape)}: its volume would lie "
                         f"along axes {spatial}, but a NIfTI file's affine and voxel size describe axes "
                         f"(0, 1, 2) (dims 1-3); its channels lie along dim 4 or 5 (--channel-axis 3 or 4), "
                         f"or save the file with the volume in its first three dims")
    base = path.name + (f":{inner}" if inner else "")
    # a memory map decodes nothing (and its size was checked): read as it is
    array = raw.array if isinstance(raw.array, Unmapped) else Decoded(raw.array, label)
    if c is None:
        channels: list[ArrayLike] = [AxisPick(array, fixed) if fixed else array]
        names = [base]
    else:
        n = int(raw.array.shape[c])
        channels = [AxisPick(array, {**fixed, c: i}) for i in range(n)]
        names = [f"{base}[channel {i}]" for i in range(n)]
    axis_names = tuple(
        str(raw.axis_names[a]) if raw.axis_names is not None and raw.axis_names[a] is not None else dflt
        for a, dflt in zip(spatial, ("D", "H", "W")))
    nd = len(raw.array.shape)
    stated = spatial_values(raw.spacing_stated, nd, spatial) or [True] * 3
    origin = spatial_values(raw.origin, nd, spatial)
    ome_axes = spatial_values((raw.ome or {}).get("axes"), nd, spatial)
    geometry = VolumeGeometry(spacing=spatial_spacing(raw, spatial), affine=raw.affine,
                              nifti_header=raw.nifti_header, attrs=dict(raw.attrs),
                              axis_names=axis_names,  # type: ignore[arg-type]
                              spacing_stated=tuple(bool(b) for b in stated),  # type: ignore[arg-type]
                              unit=raw.unit,
                              origin=tuple(float(o) for o in origin) if origin is not None else None,  # type: ignore[arg-type]
                              ome={"version": raw.ome["version"], "axes": ome_axes}
                              if raw.ome is not None and ome_axes is not None else None,
                              spacing_note=raw.spacing_note,
                              vertical_axis=axis_names.index("sample") if fmt == "segy" else None)
    slab = spatial.index(raw.slab_axis) if raw.slab_axis in spatial else 0
    return OpenedVolume(path=path, format=fmt, channels=channels, geometry=geometry,
                        compressed=raw.compressed, slab_axis=slab, names=names, spec=str(spec),
                        stored=raw.array)


def open_images(specs: Sequence[str], channel_axis: int | None = None
                ) -> tuple[list[ArrayLike], VolumeGeometry, list[OpenedVolume]]:
    """Open the image channels of one run: several co-registered single-channel files,
    one file holding several channels, or any mix.

    Returns:
        ``(channels, geometry of the first file, opened volumes)``; ``channels`` is every
        channel of every file, in order, each a lazy ``(D, H, W)`` array-like.

    Raises:
        InputError: as :func:`open_volume`; spatial shapes that differ (naming both files);
            the library that writes this format's prediction missing.
    """
    if not specs:
        raise InputError("no image given")
    opened = [open_volume(s, channel_axis=channel_axis, what="image") for s in specs]
    first = opened[0]
    for v in opened[1:]:
        if v.shape != first.shape:
            raise InputError(f"image {v.spec} has spatial shape {v.shape} but image {first.spec} has "
                             f"{first.shape}; co-registered images share one grid")
        check_same_grid(first, v, "image")
    if first.format in ("tiff", "zarr", "hdf5", "segy"):
        require("zarr", f"writing the prediction of a {first.format} volume (prediction.zarr)")
    channels = [c for v in opened for c in v.channels]
    return channels, first.geometry, opened
