"""Length units by the names file formats give them: the one table of metres per unit that
voxel spacings (OME-TIFF symbols, OME-Zarr UDUNITS names, ImageJ) and band wavelengths (ENVI
``wavelength units``) are converted with."""

from __future__ import annotations

__all__ = ["LENGTH_UNITS"]

_METRES = {"km": 1e3, "m": 1.0, "cm": 1e-2, "mm": 1e-3, "um": 1e-6, "nm": 1e-9, "pm": 1e-12}
_NAMES = {"km": ("kilometer", "kilometre"), "m": ("meter", "metre"), "cm": ("centimeter", "centimetre"),
          "mm": ("millimeter", "millimetre"), "um": ("micrometer", "micrometre", "micron"),
          "nm": ("nanometer", "nanometre"), "pm": ("picometer", "picometre")}

#: Metres per length unit: symbols, names in both spellings and their plurals (``nm``,
#: ``nanometer``, ``Nanometers`` as lower case ``nanometers`` ...), ``\u00b5m``/``\u03bcm``, the
#: angstrom, inch and foot.
LENGTH_UNITS: dict[str, float] = {
    **_METRES, **{n + s: _METRES[sym] for sym, names in _NAMES.items() for n in names for s in ("", "s")},
    "\u00b5m": 1e-6, "\u03bcm": 1e-6, "\u00c5": 1e-10, "angstrom": 1e-10, "in": 0.0254, "inch": 0.0254,
    "ft": 0.3048, "foot": 0.3048,
}
