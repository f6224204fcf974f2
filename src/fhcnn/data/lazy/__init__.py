"""Volumes read by window, never whole: the one reader every dense run trains and predicts from.

An *array-like* is anything with ``.shape``, ``.dtype`` and ``__getitem__`` on a tuple of
slices that returns a numpy array: ``np.ndarray``, ``np.memmap`` (``.npy`` opened with
``mmap_mode="r"``), ``zarr.Array``, ``h5py.Dataset``, nibabel's ``img.dataobj``, or a view of
:mod:`fhcnn.data.volumes`. Only basic slices (step 1) are asked of it, so what a read costs is
what its box holds.

* :class:`LazyVolume`: a ``(C, D, H, W)`` volume over ``C`` array-likes of shape ``(D, H, W)``
  (a volume held in memory is the same object over an ``ndarray``), read by box or by window
  continued by reflection past its ends (``numpy.pad(mode="reflect")``).
* :func:`iter_slabs`: the boxes of a bounded-memory pass over an array, in storage order.
* :class:`PassShare`: the slabs one process of several reads in a pass they make together
  (``torchrun``): each reads a contiguous block, and every process gets the result of the whole
  pass, equal to one process's.
* :func:`stream_stats`: mean, standard deviation, range and NaN count, streamed by slabs.
* :func:`scan_labels`: one streamed pass over a label volume: every value checked, class counts,
  labelled voxels per slice of every axis, and a capped sample of labelled positions per class.
* :func:`copy_to_zarr`: a chunked copy of a slow-to-slice array in one pass.

Example:
    >>> import numpy as np
    >>> v = LazyVolume.from_array(np.arange(2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 4, 5, 6))
    >>> v.shape, v.window((-1, 0, 4), (3, 2, 4)).shape
    ((2, 4, 5, 6), (2, 3, 2, 4))

The package holds one idea per module:

* :mod:`~fhcnn.data.lazy.arrays`: array-likes read on demand (:class:`ArrayLike`,
  :class:`Unmapped`, :class:`AxisPick`, :class:`ChannelView`, :class:`MovedAxes`) and one
  window read by reflection (:func:`read_window`);
* :mod:`~fhcnn.data.lazy.slabs`: the slabs of a streamed pass (:data:`SLAB_BYTES`,
  :func:`iter_slabs`, :func:`chunk_boxes`, :func:`storage_order`) and each process's share of
  it (:class:`PassShare`);
* :mod:`~fhcnn.data.lazy.stats`: streamed statistics (:func:`stream_stats`) and the float64
  standardization of channels a float32 read would flatten (:func:`standardize_channels`);
* :mod:`~fhcnn.data.lazy.volume`: the multi-channel volume (:class:`LazyVolume`);
* :mod:`~fhcnn.data.lazy.label_scan`: the pass over a label volume (:func:`scan_labels`);
* :mod:`~fhcnn.data.lazy.copies`: on-disk copies (:func:`copy_to_zarr`, :class:`StagedCopy`
  and their private folders).
"""

from .arrays import (
                     ArrayLike,
                     AxisPick,
                     ChannelView,
                     MovedAxes,
                     Unmapped,
                     expand_key,
                     read_window,
                     reflect_indices,
                     release_pages,
)
from .copies import STAGED_LOCK, StagedCopy, copy_to_zarr, remove_stale_staged, staged_copies
from .label_scan import MAX_POINTS, LabelScan, scan_labels, unlabelled
from .slabs import ONE_PROCESS, SLAB_BYTES, PassShare, chunk_boxes, iter_slabs, storage_order, whole_slabs
from .stats import Moments, Standardized, StreamStats, float32_safe, standardize_channels, stream_stats
from .volume import LazyVolume

__all__ = ["MovedAxes", "StagedCopy", "staged_copies", "remove_stale_staged", "AxisPick", "expand_key",
           "ChannelView", "Moments",
           "Standardized", "float32_safe", "standardize_channels",
           "ArrayLike", "LazyVolume", "StreamStats", "LabelScan", "Unmapped", "release_pages",
           "reflect_indices", "read_window", "iter_slabs", "whole_slabs", "stream_stats", "scan_labels", "copy_to_zarr",
           "chunk_boxes", "storage_order",
           "PassShare", "ONE_PROCESS",
           "SLAB_BYTES", "MAX_POINTS",
           "STAGED_LOCK", "unlabelled"]
