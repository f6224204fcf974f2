"""The tiny generated volume the ``fhcnn volume`` tests read: two stains of a 16^3 cells volume,
its truth, and labels on slices 3 and 12 of axis 0 and slice 8 of axis 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fhcnn.data.synthetic_volumes import generate_volume

SHAPE = (16, 16, 16)


def write_tiny_volume(root: Path) -> Path:
    """``c0.npy``, ``c1.npy`` (one stain each), ``both.npy`` (``(D, H, W, 2)``), ``truth.npy`` and
    ``lab.npy`` (255 = unlabelled) in ``root``; returns ``root``."""
    c0, truth = generate_volume("cells", SHAPE, seed=1, channel=0, dtype="uint8")
    c1, _ = generate_volume("cells", SHAPE, seed=1, channel=1, dtype="uint8")
    lab = np.full(SHAPE, 255, np.uint8)
    lab[[3, 12]] = truth[[3, 12]]
    lab[:, 8] = truth[:, 8]
    for name, arr in (("c0", c0), ("c1", c1), ("truth", truth), ("lab", lab),
                      ("both", np.stack([c0, c1], -1))):
        np.save(root / f"{name}.npy", arr)
    return root
