"""Hyperspectral data: cube readers, change labels, false colour, a generated scene.

Every cube reader returns a float32 array ``(H, W, B)`` (rows, columns, bands); change labels
are ``(H, W)`` uint8 maps (``1`` changed, ``0`` unchanged, ``IGNORE = 255`` unlabelled).
"""

from ...options import IGNORE
from .colour import false_color
from .labels import check_labels, labels_from_masks, read_change_map, sample_labels
from .readers import (
    CUBE_SUFFIXES,
    band_wavelengths,
    check_same_bands,
    check_same_grid,
    input_files,
    open_cube,
    open_pair,
    pixel_grid,
    read_cube,
    read_envi,
    read_envi_header,
    read_pair,
    write_envi,
)
from .synthetic import (
    MATERIALS,
    BitemporalScene,
    make_bitemporal_scene,
    spectral_library,
)

__all__ = [
    "IGNORE", "CUBE_SUFFIXES", "read_cube", "read_pair", "open_cube", "open_pair", "read_envi", "read_envi_header",
    "write_envi", "input_files", "band_wavelengths", "check_same_bands", "pixel_grid", "check_same_grid",
    "read_change_map", "labels_from_masks", "sample_labels", "check_labels",
    "BitemporalScene", "make_bitemporal_scene", "spectral_library", "false_color", "MATERIALS",
]
