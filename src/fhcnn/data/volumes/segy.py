"""SEG-Y post-stack cubes through segyio, as ``(inline, crossline, sample)`` arrays.

The geometry comes from the inline and crossline numbers in the trace headers (bytes 189
and 193, segyio's defaults); a file whose traces do not form one regular grid is refused. The
CDP X/Y of three corner traces place the grid on the map (:func:`_corner_coordinates`).
Big- and little-endian files are both read (:func:`byte_order`: segyio reads the order it is
told, big-endian unless told otherwise).
A window reads only the traces it covers (contiguous runs along the file's sorting), at most
:data:`READ_BYTES` of whole traces at a time, keeping only the samples it asks for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from ...errors import InputError
from ..lazy import SLAB_BYTES
from ._common import RawVolume, require, window_bounds

__all__ = ["open_segy", "SegyCube", "byte_order", "READ_BYTES", "HEADER_BLOCK"]

#: Bytes of whole traces one read from the file holds: segyio reads every sample of a trace, so a
#: box of a few samples (a time slice through the cube) is read in batches of traces, each cut
#: to its samples before the next (never every trace of the box at once).
READ_BYTES = SLAB_BYTES


#: A SEG-Y file's byte order, as segyio's ``endian`` takes it.
Endian = Literal["big", "little"]
#: The data sample format codes of the binary header (bytes 3225-3226): 1 (IBM float) to 16
#: (unsigned char); 13 and 14 are unassigned.
_SAMPLE_FORMATS = frozenset(range(1, 17)) - {13, 14}


def byte_order(path: Path) -> Endian:
    """The byte order of the SEG-Y file ``path``, from its binary header's data sample format
    code (bytes 3225-3226, written in the file's order, as the SEG-Y rev 2 byte-order marker
    is): ``"little"`` when only the little-endian reading is a format code, else ``"big"`` (the
    standard's order). segyio reads big-endian unless told otherwise: a little-endian file (SEG-Y
    rev 2 allows it; some processing packages write it) was refused as a "trace count inconsistent
    with file size", its sample count read byte-swapped."""
    with open(path, "rb") as f:
        f.seek(3224)
        code = f.read(2)
    if len(code) == 2 and int.from_bytes(code, "big") not in _SAMPLE_FORMATS \
            and int.from_bytes(code, "little") in _SAMPLE_FORMATS:
        return "little"
    return "big"


class SegyCube:
    """A regular SEG-Y cube as an array-like ``(n_inlines, n_crosslines, n_samples)`` float32.

    The file is opened on first read (and again after pickling).

    Args:
        path: the file.
        shape: ``(inlines, crosslines, samples)``.
        inline_sorted: traces run along crosslines within an inline (else the reverse).
        endian: the file's byte order (:func:`byte_order`).
    """

    def __init__(self, path: Path, shape: tuple[int, int, int], inline_sorted: bool, dtype: Any,
                 endian: Endian = "big") -> None:
        self.path = Path(path)
        self.endian = endian
        self.shape: tuple[int, ...] = tuple(shape)
        self.ndim = 3
        self.dtype = np.dtype(dtype)
        self.inline_sorted = inline_sorted
        self._f: Any = None

    def _file(self) -> Any:
        if self._f is None:
            import segyio

            self._f = segyio.open(str(self.path), "r", ignore_geometry=True, endian=self.endian)
        return self._f

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_f": None}

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __getitem__(self, key: Any) -> np.ndarray:
        ((i0, i1), (j0, j1), (k0, k1)), drop = window_bounds(key, self.shape, "SegyCube")
        out = np.empty((i1 - i0, j1 - j0, k1 - k0), dtype=self.dtype)
        if out.size:
            raw = self._file().trace.raw
            nil, nxl = self.shape[0], self.shape[1]
            if self.inline_sorted:
                if j0 == 0 and j1 == nxl:  # whole inlines: one contiguous run
                    self._read(raw, i0 * nxl, out.reshape((i1 - i0) * nxl, k1 - k0), k0, k1)
                else:
                    for i in range(i0, i1):
                        self._read(raw, i * nxl + j0, out[i - i0], k0, k1)
            else:
                for j in range(j0, j1):
                    self._read(raw, j * nil + i0, out[:, j - j0], k0, k1)
        return out.squeeze(drop) if drop else out

    def _read(self, raw: Any, first: int, dest: np.ndarray, k0: int, k1: int) -> None:
        """Samples ``k0:k1`` of the ``len(dest)`` traces from trace ``first`` into ``dest``, read
        :data:`READ_BYTES` of whole traces at a time."""
        per = max(1, READ_BYTES // max(1, self.shape[2] * self.dtype.itemsize))
        for a in range(0, len(dest), per):
            b = min(len(dest), a + per)
            dest[a:b] = np.asarray(raw[first + a:first + b]).reshape(b - a, -1)[:, k0:k1]


def _line_numbers(name: str, numbers: np.ndarray) -> dict[str, Any]:
    """``{"inlines": [first, last, step]}`` (``name`` ``"inline"``) of evenly spaced line
    numbers; unevenly spaced ones (``100, 101, 103``) have step ``None`` and are listed whole
    (``"inline_numbers"``): a first, last and step of the first two would place every line
    after a gap at the wrong number."""
    v = [int(n) for n in numbers]
    steps = {b - a for a, b in zip(v, v[1:])}
    step = steps.pop() if len(steps) == 1 else 1 if len(v) == 1 else None
    return {f"{name}s": [v[0], v[-1], step], **({f"{name}_numbers": v} if step is None else {})}


def _corner_coordinates(f: Any, segyio: Any, ilines: np.ndarray, xlines: np.ndarray, inline_sorted: bool
                        ) -> dict[str, Any]:
    """``{"corner_lines": [[inline, crossline], ...], "corner_xy": [[x, y], ...]}`` of the grid's
    corner traces (first inline and first crossline, first inline and last crossline, last inline
    and first crossline: voxels ``(0, 0)``, ``(0, -1)``, ``(-1, 0)`` along the first two axes): their
    CDP X/Y (trace header bytes 181/185) scaled by their coordinate scalar (bytes 71-72: negative
    divides by its magnitude, positive multiplies, 0 is 1). Three headers are read, no samples.
    ``{}`` when all three hold 0, 0 (a writer that fills no coordinates, as many label exports)."""
    tf, nil, nxl = segyio.TraceField, len(ilines), len(xlines)
    lines, xy = [], []
    for i, j in ((0, 0), (0, nxl - 1), (nil - 1, 0)):
        h = f.header[i * nxl + j if inline_sorted else j * nil + i]
        s = int(h[tf.SourceGroupScalar])
        xy.append([float(h[c] / -s if s < 0 else h[c] * (s or 1)) for c in (tf.CDP_X, tf.CDP_Y)])
        lines.append([int(ilines[i]), int(xlines[j])])
    return {} if not any(v for p in xy for v in p) else {"corner_lines": lines, "corner_xy": xy}


#: Trace headers :func:`_check_trace_order` reads at a time (a few bytes each held).
HEADER_BLOCK = 1 << 18


def _check_trace_order(f: Any, segyio: Any, ilines: np.ndarray, xlines: np.ndarray, inline_sorted: bool,
                       label: str) -> None:
    """Every trace header names the inline and crossline the grid's order puts there. segyio
    infers the grid from a few traces; :class:`SegyCube` reads traces by position, so a trace
    out of that order (an inline written with its crosslines reversed) was read at the wrong
    place without a word. The headers are read :data:`HEADER_BLOCK` traces at a time.

    Raises:
        InputError: the first trace out of place, with what its header says and where it lies.
    """
    slow, fast = (ilines, xlines) if inline_sorted else (xlines, ilines)
    n = len(slow) * len(fast)
    bad, first = 0, None
    for t0 in range(0, n, HEADER_BLOCK):
        t1 = min(n, t0 + HEADER_BLOCK)
        il = np.asarray(f.attributes(segyio.TraceField.INLINE_3D)[t0:t1]).ravel()
        xl = np.asarray(f.attributes(segyio.TraceField.CROSSLINE_3D)[t0:t1]).ravel()
        t = np.arange(t0, t1)
        want_slow, want_fast = slow[t // len(fast)], fast[t % len(fast)]
        want_il, want_xl = (want_slow, want_fast) if inline_sorted else (want_fast, want_slow)
        off = np.flatnonzero((il != want_il) | (xl != want_xl))
        if off.size and first is None:
            o = int(off[0])
            first = (t0 + o, il[o], xl[o], want_il[o], want_xl[o])
        bad += int(off.size)
    if first is not None:
        at, got_il, got_xl, w_il, w_xl = first
        raise InputError(f"{label} is not a regular 3D cube: trace {at} is inline {got_il}, crossline {got_xl} in "
                         f"its header (bytes 189/193), but the {'inline' if inline_sorted else 'crossline'}-"
                         f"sorted grid of the file puts inline {w_il}, crossline {w_xl} there "
                         f"({bad:,} traces out of order)")


def open_segy(path: Path, label: str) -> RawVolume:
    """Open a SEG-Y cube; the trace headers are scanned once (segyio), no samples are read.

    Raises:
        InputError: not a SEG-Y file segyio reads, a trace count that does not fit the file
            size or the inline/crossline grid, pre-stack data (several offsets), a trace whose
            header places it elsewhere than the grid's order.
    """
    segyio = require("segyio", "reading SEG-Y")
    endian = byte_order(path)
    try:
        f = segyio.open(str(path), "r", endian=endian)
    except Exception as e:
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        try:
            with segyio.open(str(path), "r", ignore_geometry=True, endian=endian) as g:
                n = g.tracecount
        except Exception:
            raise InputError(f"cannot read {label} as SEG-Y: {why}") from None
        raise InputError(f"{label} is not a regular 3D cube: its {n:,} traces do not form one inline x "
                         f"crossline grid from the trace headers (bytes 189/193): {why}") from None
    try:
        if f.unstructured:
            raise InputError(f"{label} is not a regular 3D cube (segyio finds no inline/crossline grid)")
        if len(f.offsets) > 1:
            raise InputError(f"{label} holds {len(f.offsets)} offsets per trace position (pre-stack); "
                             f"fhcnn volume reads a post-stack cube")
        ilines, xlines = np.asarray(f.ilines), np.asarray(f.xlines)
        shape = (len(ilines), len(xlines), len(f.samples))
        inline_sorted = f.sorting == segyio.TraceSortingFormat.INLINE_SORTING
        _check_trace_order(f, segyio, ilines, xlines, inline_sorted, label)
        attrs = {
            "segy_text_header": segyio.tools.wrap(bytes(f.text[0]).decode("ascii", "replace")),
            **_line_numbers("inline", ilines), **_line_numbers("crossline", xlines),
            "sample_interval": float(segyio.tools.dt(f)),
            "first_sample": float(f.samples[0]),
            "sorting": "inline" if inline_sorted else "crossline",
            **_corner_coordinates(f, segyio, ilines, xlines, inline_sorted),
        }
        dtype = f.dtype
    finally:
        f.close()
    return RawVolume(array=SegyCube(path, shape, inline_sorted, dtype, endian),
                     axis_names=["inline", "crossline", "sample"], attrs=attrs, compressed=False,
                     slab_axis=0 if inline_sorted else 1)
