"""Writing masks: ``(H, W)`` label masks as palette PNGs with the DAVIS / PASCAL VOC palette."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...atomic import atomic_path


def davis_palette() -> list[int]:
    """The DAVIS / PASCAL VOC 256-colour palette (flat list of 768 ints)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_mask_png(path: str | Path, mask: np.ndarray) -> None:
    """Write a ``(H, W)`` uint8 label mask as a palette PNG (DAVIS format), atomically."""
    from PIL import Image

    im = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    im.putpalette(davis_palette())
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
