"""A generated two-date hyperspectral scene with exact change ground truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["BitemporalScene", "make_bitemporal_scene", "spectral_library", "MATERIALS"]


MATERIALS = ("crop_a", "crop_b", "grass", "soil", "water", "urban")


def _gauss(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mu) / sigma) ** 2)


def _sig(x: np.ndarray, mu: float, s: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(x - mu) / s))


def spectral_library(wavelengths: np.ndarray, phenology: float = 0.0) -> dict[str, np.ndarray]:
    """Smooth reflectance spectra (0..1) of :data:`MATERIALS` at ``wavelengths`` (micrometres).

    Vegetation has a green peak, a red edge near 0.7 um, a NIR plateau and water absorption
    at 1.45 and 1.95 um; ``phenology`` (about -1..1) shifts the red edge and scales the NIR
    plateau and chlorophyll absorption (the same crop looks different on another date).
    """
    w = np.asarray(wavelengths, np.float64)
    water_abs = 1 - 0.5 * _gauss(w, 1.45, 0.05) - 0.7 * _gauss(w, 1.95, 0.07)

    def veg(nir: float, edge: float, green: float, swir: float) -> np.ndarray:
        edge = edge + 0.01 * phenology
        nir = nir * (1 + 0.12 * phenology)
        vis = 0.04 + green * _gauss(w, 0.55, 0.04)
        r = vis + (nir - 0.04) * _sig(w, edge, 0.015)
        r = r - (nir - swir) * _sig(w, 1.3, 0.12)
        return np.clip(r * water_abs, 0.005, 1)

    soil = (0.08 + 0.25 * _sig(w, 0.9, 0.35)) * (1 - 0.25 * _gauss(w, 1.95, 0.08)) \
        * (1 - 0.15 * _gauss(w, 2.2, 0.04))
    return {
        "crop_a": veg(0.48, 0.715, 0.06, 0.22),
        "crop_b": veg(0.36, 0.700, 0.035, 0.30),
        "grass": veg(0.30, 0.705, 0.045, 0.26) * 0.85 + 0.15 * soil,
        "soil": soil,
        "water": np.clip(0.06 * np.exp(-(w - 0.45) / 0.12) + 0.008, 0.005, 1),
        "urban": 0.18 + 0.06 * _sig(w, 0.6, 0.2) - 0.03 * _gauss(w, 2.2, 0.1),
    }


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ``scale`` pixels."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape), scale, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


@dataclass
class BitemporalScene:
    """A generated two-date scene.

    Attributes:
        before, after: float32 ``(H, W, B)`` reflectance with noise and a date-2 nuisance
            (gain/offset per band, crop phenology).
        change: uint8 ``(H, W)`` ground truth, 1 where the dominant land cover changed
            (half the L1 distance between the two abundance vectors >= 0.5).
        abundance_before, abundance_after: float32 ``(H, W, M)`` (sum to 1 per pixel).
        wavelengths: ``(B,)`` micrometres; materials: names of the ``M`` materials.
        events: list of dicts describing each change (kind, field/centre, materials).
    """

    before: np.ndarray
    after: np.ndarray
    change: np.ndarray
    abundance_before: np.ndarray
    abundance_after: np.ndarray
    wavelengths: np.ndarray
    materials: tuple[str, ...] = MATERIALS
    events: list[dict[str, Any]] = field(default_factory=list)


def make_bitemporal_scene(height: int = 96, width: int = 96, bands: int = 32, seed: int = 0,
                          *, n_pivots: int | None = None, n_crop_changes: int | None = None, noise: float = 0.01,
                          field_size: int = 24) -> BitemporalScene:
    """Generate an agricultural two-date hyperspectral scene with exact change ground truth.

    Layout: a grid of jittered rectangular fields (crop A, crop B, grass, bare soil), a
    meandering river, a straight road; abundances are the field one-hot maps blurred at the
    borders (mixed pixels) plus a smooth soil fraction inside vegetated fields (vigour).
    Date 2 changes: ``n_pivots`` new centre-pivot irrigation circles (crop appearing in a
    grass/soil field) and ``n_crop_changes`` fields whose crop changed (A <-> B, or harvested
    to soil). Nuisances that are *not* change: a different phenology of every crop, a smooth
    per-band gain and offset (illumination/atmosphere), and sensor noise of std ``noise``.

    Args:
        height, width: scene size in pixels (>= 16).
        bands: spectral bands, evenly spaced in 0.4-2.5 um (>= 3).
        seed: every random choice comes from ``numpy.random.default_rng(seed)``.
        n_pivots, n_crop_changes: number of each change (default: 15 % of the fields each,
            at least 1).
        noise: standard deviation of the additive sensor noise (reflectance units).
        field_size: typical field side in pixels.
    """
    from scipy.ndimage import gaussian_filter

    if height < 16 or width < 16 or bands < 3:
        raise ValueError(f"scene must be at least 16x16 with 3 bands, got {height}x{width}x{bands}")
    rng = np.random.default_rng(seed)
    wl = np.linspace(0.4, 2.5, bands)
    m_idx = {m: i for i, m in enumerate(MATERIALS)}
    n_m = len(MATERIALS)

    # --- field layout: jittered grid ---------------------------------------------------
    def cuts(n: int) -> np.ndarray:
        k = max(1, round(n / field_size))
        edges = np.linspace(0, n, k + 1)
        edges[1:-1] += rng.uniform(-0.2, 0.2, k - 1) * n / k
        return np.round(edges).astype(int)

    ys, xs = cuts(height), cuts(width)
    field_id = np.zeros((height, width), np.int64)
    fields: list[tuple[int, int, int, int]] = []
    for i in range(len(ys) - 1):
        for j in range(len(xs) - 1):
            field_id[ys[i]:ys[i + 1], xs[j]:xs[j + 1]] = len(fields)
            fields.append((ys[i], ys[i + 1], xs[j], xs[j + 1]))
    n_f = len(fields)
    cover_choices = ["crop_a", "crop_b", "grass", "soil"]
    if n_pivots is None:
        n_pivots = max(1, round(0.15 * n_f))
    if n_crop_changes is None:
        n_crop_changes = max(1, round(0.15 * n_f))
    cover = list(rng.choice(cover_choices, size=n_f, p=[0.3, 0.3, 0.25, 0.15]))

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)

    def abundances(cover_of_field: list[str], pivots: list[tuple[float, float, float]]) -> np.ndarray:
        a = np.zeros((height, width, n_m))
        for f, c in enumerate(cover_of_field):
            a[..., m_idx[c]] += field_id == f
        for cy, cx, r in pivots:
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
            a[disc] = 0
            a[disc, m_idx["crop_a"]] = 1
        return a

    # river and road are fixed features (no change)
    river_c = height * rng.uniform(0.3, 0.7) + height * 0.08 * np.sin(xx / width * 2 * np.pi * rng.uniform(0.8, 1.5))
    river = np.abs(yy - river_c) < max(1.5, height / 48)
    road_x = int(rng.integers(width // 5, 4 * width // 5))
    road = np.abs(xx - road_x) < max(1.0, width / 96)

    # --- changes ----------------------------------------------------------------------
    events: list[dict[str, Any]] = []
    cover2 = list(cover)
    free = [f for f in range(n_f)]
    rng.shuffle(free)
    pivots2: list[tuple[float, float, float]] = []
    # centre pivots in grass/soil fields (create one if none qualifies)
    pivot_fields = [f for f in free if cover[f] in ("grass", "soil")][:n_pivots]
    for f in free:
        if len(pivot_fields) >= n_pivots:
            break
        if f not in pivot_fields:
            cover[f] = cover2[f] = str(rng.choice(["grass", "soil"]))
            pivot_fields.append(f)
    for f in pivot_fields:
        y0, y1, x0, x1 = fields[f]
        r = 0.5 * min(y1 - y0, x1 - x0) * rng.uniform(0.75, 0.95)
        pivots2.append(((y0 + y1) / 2, (x0 + x1) / 2, r))
        events.append({"kind": "centre_pivot", "field": int(f), "centre": [(y0 + y1) / 2, (x0 + x1) / 2],
                       "radius": float(r), "from": cover[f], "to": "crop_a"})
    crop_fields = [f for f in free if f not in pivot_fields][:n_crop_changes]
    for f in crop_fields:
        c = cover[f]
        new = {"crop_a": "crop_b", "crop_b": "crop_a", "grass": "crop_b", "soil": "crop_b"}[c]
        if c in ("crop_a", "crop_b") and rng.random() < 0.35:
            new = "soil"  # harvested
        cover2[f] = new
        events.append({"kind": "crop_change", "field": int(f), "from": c, "to": new})

    a1, a2 = abundances(cover, []), abundances(cover2, pivots2)
    for a in (a1, a2):
        a[river] = 0
        a[river, m_idx["water"]] = 1
        a[road] = 0
        a[road, m_idx["urban"]] = 1
    # mixed pixels at borders: the same blur on both dates
    a1 = np.stack([gaussian_filter(a1[..., k], 0.8, mode="nearest") for k in range(n_m)], -1)
    a2 = np.stack([gaussian_filter(a2[..., k], 0.8, mode="nearest") for k in range(n_m)], -1)
    # within-field vigour: a smooth soil fraction in vegetated pixels, the same on both dates
    # (date 2 gets its own small variation)
    vigour = 0.15 + 0.1 * _smooth_noise(rng, (height, width), 6.0)
    vigour2 = np.clip(vigour + 0.04 * _smooth_noise(rng, (height, width), 6.0), 0, 0.5)
    vigour = np.clip(vigour, 0, 0.5)
    veg = [m_idx[m] for m in ("crop_a", "crop_b", "grass")]
    for a, v in ((a1, vigour), (a2, vigour2)):
        moved = a[..., veg] * v[..., None]
        a[..., veg] -= moved
        a[..., m_idx["soil"]] += moved.sum(-1)
    a1 /= a1.sum(-1, keepdims=True)
    a2 /= a2.sum(-1, keepdims=True)

    change = (0.5 * np.abs(a2 - a1).sum(-1) >= 0.5).astype(np.uint8)

    lib1 = spectral_library(wl, phenology=0.0)
    lib2 = spectral_library(wl, phenology=float(rng.uniform(-1, -0.5)))
    e1 = np.stack([lib1[m] for m in MATERIALS], 0)   # (M, B)
    e2 = np.stack([lib2[m] for m in MATERIALS], 0)
    # per-pixel endmember variability (brightness), smooth in space
    bright1 = 1 + 0.05 * _smooth_noise(rng, (height, width), 3.0)
    bright2 = 1 + 0.05 * _smooth_noise(rng, (height, width), 3.0)
    x1 = (a1 @ e1) * bright1[..., None]
    x2 = (a2 @ e2) * bright2[..., None]
    # date-2 illumination/atmosphere: smooth gain and additive path radiance, per band
    gain = 1 + 0.08 * np.sin(wl * rng.uniform(1.5, 3.0) + rng.uniform(0, 2 * np.pi))
    offset = 0.02 * np.exp(-(wl - 0.4) / 0.3)
    x2 = x2 * gain + offset
    x1 = x1 + noise * rng.standard_normal(x1.shape)
    x2 = x2 + noise * rng.standard_normal(x2.shape)
    return BitemporalScene(before=x1.astype(np.float32), after=x2.astype(np.float32),
                           change=change, abundance_before=a1.astype(np.float32),
                           abundance_after=a2.astype(np.float32), wavelengths=wl.astype(np.float32),
                           events=events)
