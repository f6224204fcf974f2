"""Whether two volume files lie on one grid: what each says about where its voxels are
(a NIfTI affine, a voxel spacing, an origin, SEG-Y line numbers, trace coordinates and sample
times), compared where both say the same kind of thing. The one check every image, label and
evaluation-label file of a run goes through (:func:`check_same_grid`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from ._common import LENGTH_UNITS, OpenedVolume, VolumeGeometry

__all__ = ["check_same_grid", "Statement", "statements", "GRID_TOLERANCE", "COORDINATE_TOLERANCE"]

#: Two files place a voxel at the same place when they differ by at most this fraction of a voxel
#: (a spacing by this fraction of itself).
GRID_TOLERANCE = 1e-3
#: Two SEG-Y files' trace coordinates are the same place when they differ by at most this
#: fraction of the smaller bin: exporters round CDP X/Y (to whole metres, to their coordinate
#: scalar), while another survey or a grid shifted by a line is a bin or more away.
COORDINATE_TOLERANCE = 0.1


@dataclass(frozen=True)
class Statement:
    """One thing a file says about where its voxels lie.

    Attributes:
        name: what it is, as a message names it (``"voxel spacing"``, ``"inline numbers"`` ...).
        values: the numbers, ``None`` where the file does not say (an axis whose spacing a
            TIFF leaves out).
        tol: per value, by how much another file's may differ (in ``unit``) and still be the
            same grid: ``GRID_TOLERANCE`` of a voxel, 0 for line numbers.
        unit: a length unit (a key of ``LENGTH_UNITS``) of ``values``, or ``None`` (unnamed:
            compared as they stand).
        shown: ``values`` as a message writes them.
    """

    name: str
    values: tuple[float | None, ...]
    tol: tuple[float, ...]
    unit: str | None
    shown: str


def _numbers(values: Sequence[float | None], unit: str | None) -> str:
    text = "(" + ", ".join("-" if v is None else f"{v:.6g}" for v in values) + ")"
    return f"{text} {unit}" if unit else text


def _line_numbers(attrs: dict[str, Any], name: str) -> tuple[int, ...] | None:
    """The SEG-Y ``name`` (``inline``/``crossline``) numbers the attributes give: ``NAME_numbers``
    (uneven steps), else ``NAMEs`` ``[first, last, step]``; ``None`` when they give neither (also
    in a zarr file that carries a SEG-Y prediction's attributes)."""
    listed = attrs.get(f"{name}_numbers")
    if isinstance(listed, list) and listed and all(isinstance(v, int) for v in listed):
        return tuple(listed)
    fls = attrs.get(f"{name}s")
    if isinstance(fls, list) and len(fls) == 3 and all(isinstance(v, int) for v in fls) and fls[2]:
        first, last, step = fls
        return tuple(range(first, last + (1 if step > 0 else -1), step))
    return None


def _corner_xy(attrs: dict[str, Any]) -> tuple[float, ...] | None:
    """The SEG-Y ``corner_xy`` (three ``[x, y]``: the CDP X/Y of voxels ``(0, 0)``, ``(0, -1)``,
    ``(-1, 0)`` along the first two axes) as six numbers; ``None`` when the attributes hold none
    (a file whose corners all hold 0, 0)."""
    xy = attrs.get("corner_xy")
    if isinstance(xy, list) and len(xy) == 3 and all(
            isinstance(p, list) and len(p) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p) for p in xy):
        return tuple(float(v) for p in xy for v in p)
    return None


def _corners_shown(xy: Sequence[float], attrs: dict[str, Any]) -> str:
    """``inline/crossline 1/1 (x, y), 1/10 (x, y), 8/1 (x, y)`` (the ``corner_lines`` where the
    attributes give them)."""
    pts = [f"({xy[k]:.10g}, {xy[k + 1]:.10g})" for k in (0, 2, 4)]
    lines = attrs.get("corner_lines")
    if isinstance(lines, list) and len(lines) == 3 and all(isinstance(p, list) and len(p) == 2 for p in lines):
        return "inline/crossline " + ", ".join(f"{il}/{xl} {p}" for (il, xl), p in zip(lines, pts))
    return ", ".join(pts)


def _lines_shown(v: Sequence[int]) -> str:
    steps = {b - a for a, b in zip(v, v[1:])}
    if len(steps) <= 1:
        return f"{v[0]}..{v[-1]}" + (f" step {steps.pop()}" if steps else "")
    return "[" + ", ".join(map(str, v[:6])) + (", ...]" if len(v) > 6 else "]")


def statements(g: VolumeGeometry) -> dict[str, Statement]:
    """What the geometry ``g`` of a file says about where its voxels lie, by kind.

    * ``affine``: a NIfTI affine (``values``: its top three rows, by row), ``tol`` a thousandth
      of the smallest voxel edge. A NIfTI file places its voxels by its affine alone: its
      voxel size is not compared with other formats' spacings.
    * ``spacing``: the voxel size along ``(D, H, W)`` the file states (zarr/HDF5 ``spacing``,
      ``element_size_um``, OME-Zarr ``scale``, OME-TIFF ``PhysicalSize*``, ImageJ spacing and
      resolution, a plain TIFF's resolution in a length unit), ``None`` on axes it leaves out.
    * ``origin``: where voxel ``(0, 0, 0)`` lies (OME-Zarr ``translation``).
    * ``inline``, ``crossline``: SEG-Y line numbers; ``samples``: SEG-Y first sample and
      sample interval.
    * ``coordinates``: the CDP X/Y of a SEG-Y grid's corner traces (``corner_xy``), ``tol``
      :data:`COORDINATE_TOLERANCE` of the smaller bin (the distance between corners over the
      lines between them).
    """
    out: dict[str, Statement] = {}
    if g.affine is not None:
        a = np.asarray(g.affine, dtype=np.float64)[:3]
        voxel = float(np.linalg.norm(a[:, :3], axis=0).min())
        rows = "[" + "; ".join(" ".join(f"{v:.4g}" for v in r) for r in a) + "]"
        out["affine"] = Statement("NIfTI affine", tuple(a.ravel().tolist()),
                                  (GRID_TOLERANCE * max(voxel, 1e-12),) * 12, None, rows)
    elif g.spacing is not None and any(g.spacing_stated):
        sp = tuple(float(s) if said else None for s, said in zip(g.spacing, g.spacing_stated))
        out["spacing"] = Statement("voxel spacing", sp, tuple(GRID_TOLERANCE * abs(s or 0.0) for s in sp),
                                   g.unit, _numbers(sp, g.unit))
    if g.origin is not None:
        edge = g.spacing or (1.0, 1.0, 1.0)
        out["origin"] = Statement("origin (translation)", tuple(float(o) for o in g.origin),
                                  tuple(GRID_TOLERANCE * e for e in edge), g.unit, _numbers(g.origin, g.unit))
    attrs = g.attrs or {}
    counts: dict[str, int] = {}
    for name in ("inline", "crossline"):
        lines = _line_numbers(attrs, name)
        if lines is not None:
            counts[name] = len(lines)
            out[name] = Statement(f"{name} numbers", tuple(float(v) for v in lines), (0.0,) * len(lines), None,
                                  _lines_shown(lines))
    xy = _corner_xy(attrs)
    if xy is not None:
        c = np.asarray(xy).reshape(3, 2)
        bins = [float(np.linalg.norm(c[k] - c[0])) / (counts[name] - 1)
                for k, name in ((1, "crossline"), (2, "inline")) if counts.get(name, 1) > 1]
        bin_size = min((b for b in bins if b > 0), default=0.0)
        out["coordinates"] = Statement("trace coordinates (CDP X/Y)", xy, (COORDINATE_TOLERANCE * bin_size,) * 6, None,
                                       _corners_shown(xy, attrs))
    first, dt = attrs.get("first_sample"), attrs.get("sample_interval")
    if isinstance(first, (int, float)) and isinstance(dt, (int, float)) and dt > 0:
        out["samples"] = Statement("samples (first sample, interval)", (float(first), float(dt)),
                                   (GRID_TOLERANCE * dt,) * 2, None, f"({first:g}, {dt:g})")
    return out


def _differs(mine: Statement, theirs: Statement) -> bool:
    """``theirs`` says something else than ``mine`` where both say something (converted into
    ``mine``'s unit where both name a length unit), beyond ``mine``'s tolerance."""
    if len(mine.values) != len(theirs.values):
        return True
    factor = 1.0
    if mine.unit in LENGTH_UNITS and theirs.unit in LENGTH_UNITS:
        factor = LENGTH_UNITS[theirs.unit] / LENGTH_UNITS[mine.unit]  # type: ignore[index]
    return any(a is not None and b is not None and abs(a - b * factor) > t
               for a, b, t in zip(mine.values, theirs.values, mine.tol))


def check_same_grid(first: OpenedVolume, other: OpenedVolume, what: str) -> None:
    """Refuse ``other`` (the file of ``what``: ``"image"``, ``"labels"``, ``"--eval-labels"``)
    when it and the image ``first`` both say where their voxels lie in the same terms
    (:func:`statements`: a NIfTI affine, a spacing, an origin, SEG-Y lines, coordinates or
    samples) and say it differently: the same voxel indices would be different places (a
    flipped, shifted or rescaled grid), trained on without a word. What only one of them says is not compared (a
    label file written by a tool that keeps no spacing).

    Raises:
        InputError: one line naming both files, the first statement that differs in both,
            and what to do.
    """
    mine, theirs = statements(first.geometry), statements(other.geometry)
    for kind, said in mine.items():
        if kind in theirs and _differs(said, theirs[kind]):
            raise InputError(f"{what} {other.spec}: another grid than image {first.spec}'s ({said.name} "
                             f"{theirs[kind].shown} against {said.shown}), so the same voxel is another place "
                             f"in each; resample the file onto the image's grid, or save it with the image's "
                             f"{said.name.split(' (')[0]} if its voxels do match the image's")
