"""The engine's volume of a bitemporal scene, computed from the two dates as it is read.

Two ``(H, W, B)`` cubes (memory maps, HDF5 datasets or arrays) become a ``(C, B, H, W)``
:class:`~fhcnn.data.lazy.LazyVolume` whose channels are :class:`ChangeChannel` views: the
dates with every band standardized over both dates (``normalize="band"``), their difference,
and the standardized log ratio and spectral angle (:data:`~fhcnn.apps.change.config.ChangeChannels`).
The statistics these need are streamed over slabs of rows (:func:`scene_moments`), so nothing
holds a whole cube; a window read computes its channels from the two dates' box.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from ...data.lazy import SLAB_BYTES, LazyVolume, Moments, whole_slabs
from ...errors import InputError
from .config import BandNormalization, ChangeChannels

__all__ = ["ChangeChannel", "TwoDates", "SceneMoments", "scene_moments", "change_volume", "row_slabs"]

#: What one channel of the change volume holds.
ChannelKind = Literal["before", "after", "diff", "ratio", "angle"]


def row_slabs(shape: Sequence[int], cubes: int = 2, max_bytes: int | None = None) -> Iterator[slice]:
    """Slices of rows of an ``(H, W, B)`` scene, each at most ``max_bytes`` (default
    :data:`~fhcnn.data.lazy.SLAB_BYTES`) of float64 over ``cubes`` cubes (at least one row)."""
    yield from whole_slabs(shape, 8 * cubes, SLAB_BYTES if max_bytes is None else max_bytes)


@dataclass(frozen=True)
class SceneMoments:
    """What the channels of a scene need, streamed once (float64).

    Attributes:
        band_mean, band_std: ``(B,)`` over both dates (the ``"band"`` standardization).
        eps: ``(B,)`` the log ratio's offset: 1 % of the band's mean level over both dates
            (values clipped at 0; 1 % of 1 where that level is 0).
        ratio_mean, ratio_std, angle_mean, angle_std: of the log ratio over the scene and of
            the spectral angle over the pixels (``nan`` unless asked for).
        levels: ``(2, B)`` each date's mean level of each band (values clipped at 0), or ``None``.
    """

    band_mean: np.ndarray
    band_std: np.ndarray
    eps: np.ndarray
    ratio_mean: float = math.nan
    ratio_std: float = math.nan
    angle_mean: float = math.nan
    angle_std: float = math.nan
    levels: np.ndarray | None = None


#: A ratio of the two dates' mean levels (the median over the bands) from which they are taken
#: to hold different units: percent and fractions differ 100 times, scaled digital numbers and
#: reflectance 10,000 times; a change of the land itself moves the median band far less.
UNITS_RATIO = 50.0


def check_same_units(m: SceneMoments) -> None:
    """Refuse two dates whose bands differ in level :data:`UNITS_RATIO` times or more (the
    median over the bands both hold above 0): different units (reflectance and percent or
    digital numbers), which the standardization over both dates would turn into one date near
    constant, all of it read as changed.

    Raises:
        InputError: one line with both levels and the factor.
    """
    if m.levels is None:
        return
    before, after = m.levels
    both = (before > 0) & (after > 0)
    if not both.any():
        return
    ratio = float(np.median(after[both] / before[both]))
    if max(ratio, 1 / ratio) >= UNITS_RATIO:
        mb, ma = float(np.median(before[both])), float(np.median(after[both]))
        raise InputError(f"the dates look like they hold different units: the median band of the first date "
                         f"averages {mb:.4g} and of the second {ma:.4g} ({max(ratio, 1 / ratio):,.0f} times as "
                         f"much); bring both to one unit (e.g. reflectance), as the bands are standardized over "
                         f"both dates together")


def _ratio(b: np.ndarray, a: np.ndarray, eps: np.ndarray) -> np.ndarray:
    return np.log((np.clip(a, 0, None) + eps) / (np.clip(b, 0, None) + eps))


def _angle(b: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``(..., B)`` -> ``(...)`` spectral angle of the clipped spectra (0 where one is all zeros)."""
    b, a = np.clip(b, 0, None), np.clip(a, 0, None)
    dot = (a * b).sum(-1)
    norm = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    return np.arccos(np.clip(np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 1.0), -1.0, 1.0))


def scene_moments(before: Any, after: Any, features: bool = False) -> SceneMoments:
    """Stream the statistics of a scene (see :class:`SceneMoments`): one pass over slabs of rows
    of both dates, a second one for the log ratio and the spectral angle when ``features``."""
    bands, level, dated = Moments(), Moments(), (Moments(), Moments())
    for rows in row_slabs(before.shape):
        b = np.asarray(before[rows], np.float64)
        a = np.asarray(after[rows], np.float64)
        bands.add(np.concatenate([b, a]), per_band=True)
        clipped = np.clip(b, 0, None), np.clip(a, 0, None)
        level.add(np.concatenate(clipped), per_band=True)
        for d, c in zip(dated, clipped):
            d.add(c, per_band=True)
    lev = np.asarray(level.mean, np.float64)
    eps = 0.01 * np.where(lev > 0, lev, 1.0)
    levels = np.stack([np.asarray(d.mean, np.float64) for d in dated])
    if not features:
        return SceneMoments(np.asarray(bands.mean), np.asarray(bands.std), eps, levels=levels)
    ratio, angle = Moments(), Moments()
    for rows in row_slabs(before.shape):
        b = np.asarray(before[rows], np.float64)
        a = np.asarray(after[rows], np.float64)
        ratio.add(_ratio(b, a, eps), per_band=False)
        angle.add(_angle(b, a), per_band=False)
    return SceneMoments(np.asarray(bands.mean), np.asarray(bands.std), eps, float(ratio.mean), float(ratio.std),
                        float(angle.mean), float(angle.std), levels)


def _standardize(f: np.ndarray, mean: float, std: float) -> np.ndarray:
    return (f - mean) / std if std > 1e-12 else np.zeros_like(f)


class TwoDates:
    """The two ``(H, W, B)`` dates of a scene, read together as float64: the last box read is
    kept, so the channels of one window read it once."""

    def __init__(self, before: Any, after: Any) -> None:
        self.before, self.after = before, after
        self.shape = tuple(int(n) for n in before.shape)
        #: a band's least standard deviation, relative to its mean level, that is signal and not
        #: the rounding of its storage: 1e-6 for float32, scaled by the machine epsilon of the
        #: coarser date's dtype (integers and float64 are read exactly: float64's)
        eps = max(np.finfo(d).eps if np.issubdtype(d, np.floating) else np.finfo(np.float64).eps
                  for d in (np.dtype(before.dtype), np.dtype(after.dtype)))
        self.resolution = 1e-6 * float(eps) / float(np.finfo(np.float32).eps)
        self._last: tuple[Any, tuple[np.ndarray, np.ndarray]] | None = None
        self._lock = threading.Lock()

    def read(self, rows: slice, cols: slice, bands: slice) -> tuple[np.ndarray, np.ndarray]:
        key = tuple(k.indices(n) for k, n in zip((rows, cols, bands), self.shape))
        with self._lock:
            if self._last is not None and self._last[0] == key:
                return self._last[1]
        box = (rows, cols, bands)
        pair = (np.asarray(self.before[box], np.float64), np.asarray(self.after[box], np.float64))
        with self._lock:
            self._last = (key, pair)
        return pair


class ChangeChannel:
    """One ``(B, H, W)`` float32 channel of the change volume, computed from the two ``(H, W, B)``
    dates on read (basic slices or integers per axis).

    ``kind``: ``"before"`` / ``"after"`` (the date, its bands standardized with ``normalize="band"``),
    ``"diff"`` (after minus before, each standardized as the dates are), ``"ratio"`` (the
    standardized log ratio ``log((after + eps) / (before + eps))`` of the clipped values) or
    ``"angle"`` (the standardized spectral angle of each pixel, repeated over the bands).
    The channels of one volume share their :class:`TwoDates`.
    """

    def __init__(self, dates: TwoDates, kind: ChannelKind, moments: SceneMoments,
                 normalize: BandNormalization = "band") -> None:
        self.dates, self.kind, self.moments, self.normalize = dates, kind, moments, normalize
        h, w, b = dates.shape
        self.shape = (b, h, w)
        self.dtype = np.dtype(np.float32)
        self.ndim = 3

    def _dates(self, x: np.ndarray, bands: slice) -> np.ndarray:
        if self.normalize != "band":
            return x
        mu, sd = self.moments.band_mean[bands], self.moments.band_std[bands]
        return (x - mu) / np.maximum(sd, self.dates.resolution * np.maximum(np.abs(mu), 1e-12))

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        squeeze = tuple(0 if isinstance(k, (int, np.integer)) else slice(None) for k in key)
        band_key, rows, cols = (slice(int(k), int(k) + 1 if int(k) != -1 else None)
                                if isinstance(k, (int, np.integer)) else k for k in key)
        all_bands = slice(None)
        bands = all_bands if self.kind == "angle" else band_key
        m = self.moments
        b, a = self.dates.read(rows, cols, bands)
        if self.kind in ("before", "after"):
            out = self._dates(b if self.kind == "before" else a, bands)
        else:
            if self.kind == "diff":
                out = self._dates(a, bands) - self._dates(b, bands)
            elif self.kind == "ratio":
                out = _standardize(_ratio(b, a, m.eps[bands]), m.ratio_mean, m.ratio_std)
            else:
                ang = _standardize(_angle(b, a), m.angle_mean, m.angle_std)
                n = len(range(*band_key.indices(self.shape[0])))
                out = np.broadcast_to(ang[..., None], (*ang.shape, n))
        return np.ascontiguousarray(np.moveaxis(out, -1, 0), np.float32)[squeeze]


def change_volume(before: Any, after: Any, channels: ChangeChannels = "dates",
                  normalize: BandNormalization = "band", moments: SceneMoments | None = None) -> LazyVolume:
    """The ``(C, B, H, W)`` volume of two ``(H, W, B)`` dates, read on demand (C = 2, 3 or 5; see
    the module docstring); ``moments``: the scene's, if already streamed."""
    parts = channels.split("+")
    features = "ratio" in parts
    if moments is None or (features and math.isnan(moments.ratio_std)):
        moments = scene_moments(before, after, features)
    check_same_units(moments)
    kinds: list[ChannelKind] = ["before", "after"]
    if "diff" in parts:
        kinds.append("diff")
    if features:
        kinds += ["ratio", "angle"]
    dates = TwoDates(before, after)
    return LazyVolume([ChangeChannel(dates, k, moments, normalize) for k in kinds],
                      names=[f"the {k} channel" for k in kinds])
