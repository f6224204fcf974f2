"""Streaming statistics of the images of a run (:func:`fhcnn.data.lazy.stream_stats` of every
channel), refusing NaN volumes by name."""

from __future__ import annotations

from typing import Sequence

from ...errors import InputError
from ..lazy import StreamStats, stream_stats
from ._common import DEFAULT_MAX_BYTES, OpenedVolume

__all__ = ["StreamStats", "stream_stats", "image_stats"]


def image_stats(volumes: Sequence[OpenedVolume], max_bytes: int = DEFAULT_MAX_BYTES) -> list[StreamStats]:
    """:func:`stream_stats` of every channel of every volume, in order (one pass each).

    Raises:
        InputError: a channel holding NaN or inf voxels (naming the file, the count and one
            position).
    """
    out = []
    for v in volumes:
        for name, ch in zip(v.names, v.channels):
            s = stream_stats(ch, max_bytes, v.slab_axis)
            if s.nonfinite:
                raise InputError(f"image {name} holds {s.nonfinite:,} NaN or infinite voxels (one at "
                                 f"{s.first_nonfinite}); fill them before segmenting")
            out.append(s)
    return out
