"""The axis of a volume that points down, and the training flips it rules out.

A volume with a vertical axis (a seismic cube's two-way time or depth) is not the same volume
upside down: layers ordered in depth come in the reverse order, a normal fault becomes a reverse
one. Training windows are therefore never flipped along that axis, and the mirrored prediction
tiling (``data.predict_flip``) flips another axis the windows are flipped along
(:attr:`~fhcnn.engine.config.DataConfig.mirror_axis`).
"""

from __future__ import annotations

from ...engine.config import DataConfig
from .config import VolumeConfig
from .inputs import AXIS_NAMES, VolumeInputs

__all__ = ["vertical_axis", "keep_upright", "FLIP_KEYS"]

#: The ``data`` flip that turns a training window over along each axis (D, H, W).
FLIP_KEYS = ("reverse_depth", "flip_height", "flip_width")


def vertical_axis(cfg: VolumeConfig, inputs: VolumeInputs) -> tuple[int | None, str]:
    """The vertical axis (0 = D, 1 = H, 2 = W, or ``None``) and where it comes from:
    ``volume.vertical_axis``, or with ``auto`` the input's (a SEG-Y cube's samples)."""
    chosen = cfg.volume.vertical_axis
    if chosen == "none":
        return None, "volume.vertical_axis=none"
    if chosen != "auto":
        return AXIS_NAMES.index(chosen), "volume.vertical_axis"
    if inputs.vertical_axis is None:
        return None, f"{inputs.format} states none; --set volume.vertical_axis=D, H or W states one"
    return inputs.vertical_axis, ("the segy file's samples" if inputs.format == "segy" else "stated by the input")


def keep_upright(data: DataConfig, axis: int | None, source: str) -> str:
    """Turn off ``data``'s flip along the vertical ``axis`` (in place); one log line saying which
    flips training and the mirrored prediction tiling use."""
    if axis is not None:
        setattr(data, FLIP_KEYS[axis], False)
    flips = [AXIS_NAMES[a] for a in range(3) if getattr(data, FLIP_KEYS[a])]
    mirror = data.prediction_mirror
    head = f"vertical axis {AXIS_NAMES[axis]} ({source})" if axis is not None else f"no vertical axis ({source})"
    kept = "; training windows are not flipped along it" if axis is not None else ""
    return (f"{head}{kept}; flipped along {', '.join(flips) or 'no axis'}; "
            f"mirrored prediction tiling: {AXIS_NAMES[mirror] if mirror is not None else 'none'}")
