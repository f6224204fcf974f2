"""Volume files for ``fhcnn volume``: read by window, checked, summarized, written back with
their geometry. The formats and rules are described in ``docs/volume-formats.md``.

* :func:`open_volume`, :func:`open_images` -- NIfTI, TIFF, zarr, HDF5, SEG-Y, ``.npy`` to
  lazy ``(D, H, W)`` channels (:class:`OpenedVolume`, :class:`VolumeGeometry`).
* :func:`open_label_volume`, :func:`summarize_labels` -- checked sparse labels and the
  summary the log prints (:class:`LabelSummary`).
* :func:`stream_stats` -- mean/std/min/max and NaN count of a channel, streamed
  (:mod:`fhcnn.data.lazy`; a run refuses NaN volumes in :func:`fhcnn.engine.plan.prepare`).
* :func:`prediction_sink` -- ``prediction.nii.gz`` / ``.zarr`` / ``.npy`` written by boxes.
* :func:`iter_slabs` -- the boxes of a bounded-memory pass over a volume.

Format libraries are imported when a file needs them (nibabel, h5py, segyio: ``fhcnn[volume]``); a
missing one is one :class:`~fhcnn.errors.InputError` line naming ``pip install 'fhcnn[volume]'``.
"""

from ..lazy import StreamStats, stream_stats
from ._common import (
                      MAX_CHANNELS_BY_SHAPE,
                      ArrayLike,
                      AxisPick,
                      OpenedVolume,
                      VolumeFormat,
                      VolumeGeometry,
                      iter_slabs,
                      resolve_axes,
)
from .labels import DENSE_FRACTION, MAX_CLASSES, LabelSummary, LabelVolume, open_label_volume, summarize_labels
from .opening import SUFFIXES, open_images, open_volume, split_spec, volume_format
from .sinks import PredictionSink, prediction_name, prediction_sink

__all__ = [
    "ArrayLike", "AxisPick", "OpenedVolume", "VolumeFormat", "VolumeGeometry", "SUFFIXES",
    "open_volume", "open_images", "split_spec", "volume_format", "resolve_axes",
    "LabelSummary", "LabelVolume", "open_label_volume", "summarize_labels", "MAX_CLASSES", "DENSE_FRACTION",
    "StreamStats", "stream_stats",
    "PredictionSink", "prediction_sink", "prediction_name",
    "iter_slabs", "MAX_CHANNELS_BY_SHAPE",
]
