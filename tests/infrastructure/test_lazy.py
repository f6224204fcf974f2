"""Volumes read by window (fhcnn/data/lazy.py): every read equals the same read of the whole
array in memory, statistics and label scans stream, and nothing reads more than it needs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fhcnn.data.lazy import LazyVolume, copy_to_zarr, iter_slabs, reflect_indices, scan_labels, whole_slabs
from fhcnn.engine.sizes import gather
from fhcnn.errors import InputError


class _Counting:
    """An array-like that counts the elements it hands out."""

    def __init__(self, a: np.ndarray) -> None:
        self.a, self.read = a, 0

    shape = property(lambda self: self.a.shape)
    dtype = property(lambda self: self.a.dtype)

    def __getitem__(self, key):
        out = self.a[key]
        self.read += out.size
        return out


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 9), start=st.integers(-30, 30), length=st.integers(1, 40))
def test_reflection_is_numpy_pad_reflect(n, start, length) -> None:
    x = np.arange(n)
    padded = np.pad(x, 200, mode="reflect") if n > 1 else np.zeros(401, int)
    np.testing.assert_array_equal(x[reflect_indices(start, length, n)], padded[200 + start:200 + start + length])


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(st.integers(1, 6), st.integers(1, 7), st.integers(1, 8)),
       starts=st.tuples(st.integers(-9, 9), st.integers(-9, 9), st.integers(-9, 9)),
       sizes=st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12)))
def test_windows_equal_the_whole_volume_gathered(shape, starts, sizes) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, *shape)).astype(np.float32)
    counted = [_Counting(c) for c in a]
    vol = LazyVolume(counted)
    got = vol.window(starts, sizes)
    np.testing.assert_array_equal(got, gather(torch.from_numpy(a), starts, sizes).numpy())
    # a window never reads more than its own extent per axis
    assert all(c.read <= np.prod([min(s, n) for s, n in zip(sizes, shape)]) for c in counted)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), axis=st.integers(0, 3),
       max_bytes=st.integers(1, 400))
def test_slabs_cover_every_element_once_within_the_budget(shape, axis, max_bytes) -> None:
    axis %= len(shape)
    hits = np.zeros(shape, np.int64)
    row = shape[-1] if axis != len(shape) - 1 else shape[-2] if len(shape) > 1 else 1
    for box in iter_slabs(shape, 1, max_bytes, axis):
        hits[box] += 1
        assert hits[box].size <= max(max_bytes, 1) or hits[box].size <= row
    assert (hits == 1).all()


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), itemsize=st.integers(1, 8),
       max_bytes=st.integers(1, 400))
def test_whole_slabs_cover_axis_0_once_within_the_budget(shape, itemsize, max_bytes) -> None:
    per_slice = itemsize * int(np.prod(shape[1:]))
    hits = np.zeros(shape[0], np.int64)
    for sl in whole_slabs(shape, itemsize, max_bytes):
        hits[sl] += 1
        n = sl.stop - sl.start
        assert n == 1 or n * per_slice <= max_bytes
        # as many slices as the budget allows: only the last slab may be shorter
        assert n == max(1, max_bytes // per_slice) or sl.stop == shape[0]
    assert (hits == 1).all()


def test_coordinate_channels_match_linspace() -> None:
    vol = LazyVolume([np.zeros((2, 5, 7), np.float32)], coords=True)
    w = vol.window((0, -2, 3), (2, 4, 6))
    ys, xs = torch.linspace(-1, 1, 5).numpy(), torch.linspace(-1, 1, 7).numpy()
    np.testing.assert_array_equal(w[1, 0, :, 0], ys[reflect_indices(-2, 4, 5)])
    np.testing.assert_array_equal(w[2, 1, 0], xs[reflect_indices(3, 6, 7)])
    np.testing.assert_array_equal(vol.read((slice(0, 2), slice(1, 3), slice(0, 7)))[2, 0, 0], xs)


def test_streamed_statistics_equal_numpy() -> None:
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((40, 9, 11)) * 7 + 1000).astype(np.float32)
    b = rng.integers(0, 65535, (40, 9, 11)).astype(np.uint16)
    stats = LazyVolume([a, b]).channel_stats(max_bytes=9 * 11 * 8 * 3)  # slabs of 3 planes
    for s, x in zip(stats, (a, b)):
        x64 = x.astype(np.float64)
        assert s.mean == pytest.approx(x64.mean(), rel=1e-12)
        assert s.std == pytest.approx(x64.std(), rel=1e-9)
        assert (s.min, s.max) == (x64.min(), x64.max())
        assert s.finite and s.count == a.size
    a[5, 2, 3] = np.nan
    s = LazyVolume([a]).channel_stats(max_bytes=9 * 11 * 8 * 3)[0]
    assert not s.finite and s.nonfinite == 1 and s.first_nonfinite == (5, 2, 3) and np.isfinite(s.mean)


def test_label_scan_counts_slices_and_sampled_positions() -> None:
    lab = np.full((10, 6, 8), 255, np.uint8)
    lab[2] = 0
    lab[7, 1:3] = 1
    lab[:, 4, 5] = 2
    scan = scan_labels(_Counting(lab), max_bytes=6 * 8 * 8 * 2)
    want = np.bincount(lab.ravel(), minlength=256)
    want[255] = 0
    np.testing.assert_array_equal(scan.counts, want)
    assert scan.unlabelled == (lab == 255).sum()
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        np.testing.assert_array_equal(scan.per_slice[axis], (lab != 255).sum(other))
    for c in range(3):
        np.testing.assert_array_equal(scan.positions[c], np.argwhere(lab == c))
    assert scan.classes() == [0, 1, 2] and scan.labelled_slices(1) == [0, 1, 2, 3, 4, 5]
    # capped: every s-th voxel of the class in scan order, s the smallest power of 2 that fits
    capped = scan_labels(lab, max_points=5, max_bytes=6 * 8 * 8 * 2)
    np.testing.assert_array_equal(capped.positions[0], np.argwhere(lab == 0)[::16])  # 48 -> every 16th: 3
    np.testing.assert_array_equal(capped.positions[2], np.argwhere(lab == 2)[::2])   # 10 -> every 2nd: 5
    assert capped.positions[0].dtype == np.int32
    with pytest.raises(InputError, match="integers"):
        scan_labels(np.array([[0.5, 1.0]]))
    with pytest.raises(InputError, match=r"value 300 at voxel \(0, 1\)"):
        scan_labels(np.array([[0, 300]]))


def test_copy_to_zarr_round_trips_in_slabs(tmp_path) -> None:
    a = np.random.default_rng(2).integers(0, 255, (5, 30, 7)).astype(np.uint8)
    src = _Counting(a)
    z = copy_to_zarr(src, tmp_path / "c.zarr", (4, 8, 8), axis=1, max_bytes=5 * 7 * 8)
    np.testing.assert_array_equal(z[...], a)
    assert src.read == a.size  # one pass
