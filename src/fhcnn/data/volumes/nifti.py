"""NIfTI-1/NIfTI-2 volumes (``.nii``, ``.nii.gz``) through nibabel, read lazily.

The array keeps the file's voxel axes ``(i, j, k)`` (so the affine maps it to world space
unchanged); dims 4 and 5 are channels. Data is stored with ``i`` fastest (Fortran order),
so streaming passes go by slabs of ``k`` (``slab_axis=2``); a ``.nii.gz`` is read through
one kept-open gzip stream, forwards. The voxel size (``pixdim``) is in the length unit of
the header's ``xyzt_units`` (``unit``, where it names one).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from ._common import RawVolume, quiet_logger, require

__all__ = ["open_nifti", "NiftiArray", "NIFTI_LENGTH_UNITS"]

#: The length units of the NIfTI header's ``xyzt_units`` (as nibabel names them), by the names
#: the zarr outputs give a spacing's unit (``spacing_unit``; ``unknown`` names none).
NIFTI_LENGTH_UNITS = {"meter": "meter", "mm": "millimeter", "micron": "micrometer"}


class NiftiArray:
    """nibabel's ``img.dataobj`` (an ArrayProxy) with the dtype its reads return (scaled by
    ``scl_slope``/``scl_inter`` when the header asks for it)."""

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self.shape = tuple(int(n) for n in proxy.shape)
        self.ndim = len(self.shape)
        self.dtype = np.asarray(proxy[(slice(0, 1),) * self.ndim]).dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.proxy[key])


def _gzip_size_ok(path: Path, expected: int) -> bool:
    """The gzip trailer (ISIZE: uncompressed size mod 2**32 of the last member) agrees."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 18:
            return False
        f.seek(-4, os.SEEK_END)
        (isize,) = struct.unpack("<I", f.read(4))
    return isize == expected % 2**32


def open_nifti(path: Path, label: str) -> RawVolume:
    """Open a ``.nii``/``.nii.gz`` without reading its voxels (one voxel for the dtype).

    Raises:
        InputError: not a NIfTI file nibabel reads, or a header whose sizes do not fit the
            file (a lying header or a truncated file).
    """
    nib = require("nibabel", "reading NIfTI")
    try:
        with quiet_logger("nibabel.global"):  # its notes on the header it corrects (a negative pixdim)
            img = nib.load(str(path), keep_file_open=True)
    except Exception as e:  # nibabel raises many types for a bad header
        raise InputError(f"cannot read {label} as NIfTI: {_short(e)}") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"cannot read {label} as NIfTI: nibabel reads it as {type(img).__name__}")
    hdr = img.header
    proxy = img.dataobj
    shape = tuple(int(n) for n in proxy.shape)
    dtype = hdr.get_data_dtype()
    offset = int(proxy.offset)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    gz = path.name.lower().endswith(".gz")
    if not gz:
        size = path.stat().st_size
        if size < offset + nbytes:
            raise InputError(f"{label}: the NIfTI header says shape {shape} of {dtype} ({offset + nbytes:,} "
                             f"bytes with the header) but the file has {size:,} bytes (a lying header "
                             f"or a truncated file)")
    elif not _gzip_size_ok(path, offset + nbytes):
        # the trailer disagrees (or the file has several gzip members): read to the end to be sure
        try:
            with gzip.open(path, "rb") as f:
                got = 0
                while chunk := f.read(1 << 24):
                    got += len(chunk)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise InputError(f"cannot read {label}: the gzip stream is damaged or truncated "
                             f"({_short(e)})") from None
        if got < offset + nbytes:
            raise InputError(f"{label}: the NIfTI header says shape {shape} of {dtype} ({offset + nbytes:,} "
                             f"bytes with the header) but the file holds {got:,} bytes uncompressed "
                             f"(a lying header or a truncated file)")
    try:
        array = NiftiArray(proxy)
    except Exception as e:
        raise InputError(f"cannot read {label}: {_short(e)}") from None
    nd = len(shape)
    extra = [ax for ax in range(3, nd) if shape[ax] > 1]
    meta_channel = extra[0] if len(extra) == 1 else None
    affine = np.asarray(img.affine, dtype=np.float64)
    codes = nib.aff2axcodes(affine)
    names: list[str | None] = [str(c) if c is not None else None for c in codes] + [None] * (nd - 3)
    zooms = [float(z) for z in hdr.get_zooms()[:3]]
    return RawVolume(array=array, axis_names=names, channel_axis=meta_channel,
                     spacing=zooms + [None] * (nd - 3), affine=affine,
                     nifti_header=bytes(hdr.binaryblock), attrs={}, compressed=gz, slab_axis=2,
                     unit=NIFTI_LENGTH_UNITS.get(str(hdr.get_xyzt_units()[0])))


def _short(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:200]
