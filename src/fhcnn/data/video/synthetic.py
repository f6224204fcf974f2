"""A synthetic video with ground truth (:func:`generate_video`): textured objects that move,
rotate, scale and occlude each other over a textured, panning background, written in the DAVIS
layout if asked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...atomic import atomic_path
from .palette import write_mask_png


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-8)


def _texture(rng: np.random.Generator, shape: tuple[int, int], colors: np.ndarray, sigma: float) -> np.ndarray:
    """A colour texture: two smooth fields mixing three colours, plus fine grain."""
    a = 1 / (1 + np.exp(-2.0 * _smooth_field(rng, shape, sigma)))
    b = 1 / (1 + np.exp(-2.0 * _smooth_field(rng, shape, sigma / 2.5)))
    tex = (a[..., None] * colors[0] + (1 - a[..., None]) * colors[1]) * (1 - 0.35 * b[..., None]) \
        + 0.35 * b[..., None] * colors[2]
    tex += 0.04 * rng.standard_normal(shape + (3,))
    return np.clip(tex, 0, 1)


def generate_video(
    out: str | Path | None = None,
    frames: int = 48,
    height: int = 96,
    width: int = 160,
    objects: int = 2,
    seed: int = 0,
    binary: bool = False,
    name: str = "synthetic",
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic video with ground truth: textured objects that move, rotate, scale and
    occlude each other over a textured, panning background.

    Args:
        out: if given, a DAVIS-layout root: ``out/JPEGImages/480p/<name>/00000.jpg`` and
            ``out/Annotations/480p/<name>/00000.png`` (palette PNG, object k has index k).
        frames, height, width: video size.
        objects: number of objects (drawn back to front; later ones occlude earlier ones).
        seed: random seed (same seed, same video).
        binary: all objects get label 1 (else object k gets label k).
        name: sequence name.

    Returns:
        ``(video (T, H, W, 3) uint8, masks (T, H, W) uint8)``.
    """
    from scipy.ndimage import map_coordinates

    if frames < 1 or height < 8 or width < 8 or objects < 1:
        raise ValueError(f"need frames >= 1, height/width >= 8, objects >= 1; got {frames}, "
                         f"{height}x{width}, {objects}")
    rng = np.random.default_rng(seed)
    # background: a large texture panned over time (camera motion)
    bh, bw = height + frames + 40, width + 2 * frames + 40
    bg_colors = rng.uniform(0.15, 0.85, (3, 3))
    bg = _texture(rng, (bh, bw), bg_colors, sigma=6.0)
    pan = rng.uniform(-1, 1, 2) * np.array([0.5, 1.2])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    objs = []
    for _ in range(objects):
        size = rng.uniform(0.16, 0.26) * min(height, width) * (1.0 if objects < 3 else 0.8)
        n_harm = 3
        objs.append(dict(
            tex=_texture(rng, (64, 64), np.clip(rng.uniform(0.05, 0.95, (3, 3)), 0, 1), sigma=4.0),
            size=size,
            radial=rng.uniform(-0.25, 0.25, n_harm) / np.arange(1, n_harm + 1),
            phase=rng.uniform(0, 2 * np.pi, n_harm),
            aspect=rng.uniform(0.6, 1.0),
            c0=np.array([rng.uniform(0.25, 0.75) * height, rng.uniform(0.2, 0.8) * width]),
            vel=rng.uniform(-1, 1, 2) * np.array([0.35, 0.9]) * 48 / max(frames, 1),
            wobble=rng.uniform(2, 6, 2), wfreq=rng.uniform(0.05, 0.2),
            rot0=rng.uniform(0, 2 * np.pi), rotv=rng.uniform(-0.06, 0.06) * 48 / max(frames, 1),
            scale_amp=rng.uniform(0.1, 0.3), scale_freq=rng.uniform(0.03, 0.1),
        ))
    video = np.zeros((frames, height, width, 3), np.uint8)
    masks = np.zeros((frames, height, width), np.uint8)
    for t in range(frames):
        oy, ox = 20 + pan[0] * t + frames / 2, 20 + pan[1] * t + frames
        img = np.stack([map_coordinates(bg[..., c], [yy + oy, xx + ox], order=1, mode="wrap")
                        for c in range(3)], -1)
        lab = np.zeros((height, width), np.uint8)
        for k, o in enumerate(objs):
            c = o["c0"] + o["vel"] * t + o["wobble"] * np.sin(o["wfreq"] * t + np.array([0, 1.3]))
            # bounce inside the frame
            for a, n in enumerate((height, width)):
                lo, hi = 0.1 * n, 0.9 * n
                span = hi - lo
                v = (c[a] - lo) % (2 * span)
                c[a] = lo + (v if v < span else 2 * span - v)
            s = o["size"] * (1 + o["scale_amp"] * np.sin(o["scale_freq"] * t))
            th = o["rot0"] + o["rotv"] * t
            dy, dx = yy - c[0], xx - c[1]
            u = (np.cos(th) * dx + np.sin(th) * dy) / s
            v = (-np.sin(th) * dx + np.cos(th) * dy) / (s * o["aspect"])
            r, ang = np.hypot(u, v), np.arctan2(v, u)
            rad = 1 + sum(o["radial"][j] * np.cos((j + 2) * ang + o["phase"][j]) for j in range(len(o["radial"])))
            inside = r < rad
            tu, tv = (u * 0.45 + 0.5) * 63, (v * 0.45 + 0.5) * 63
            tex = np.stack([map_coordinates(o["tex"][..., ch], [tv, tu], order=1, mode="reflect")
                            for ch in range(3)], -1)
            shade = (1 - 0.25 * np.clip(r / rad, 0, 1) ** 2)[..., None]
            img = np.where(inside[..., None], tex * shade, img)
            lab[inside] = 1 if binary else k + 1
        video[t] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
        masks[t] = lab
    if out is not None:
        from PIL import Image

        root = Path(out)
        fdir, mdir = root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name
        for t in range(frames):
            with atomic_path(fdir / f"{t:05d}.jpg") as tmp:
                Image.fromarray(video[t]).save(tmp, format="JPEG", quality=92)
            write_mask_png(mdir / f"{t:05d}.png", masks[t])
    return video, masks
