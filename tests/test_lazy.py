"""Volumes read by window (fhcnn/data/lazy.py): every read equals the same read of the whole
array in memory, statistics and label scans stream, and nothing reads more than it needs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fhcnn.data.lazy import AxesView, ChannelView, LazyVolume, copy_to_zarr, reflect_indices, scan_labels
from fhcnn.engine.sizes import gather


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


def test_views_are_lazy_transposes_and_channels() -> None:
    a = np.arange(3 * 4 * 5 * 6).reshape(3, 4, 5, 6)
    v = AxesView(a, (3, 1, 0, 2))
    assert v.shape == (6, 4, 3, 5)
    np.testing.assert_array_equal(v[1:4, :, 2:3], a.transpose(3, 1, 0, 2)[1:4, :, 2:3])
    c = ChannelView(a, 3, 2)
    np.testing.assert_array_equal(c[1:3, :, 4:], a[..., 2][1:3, :, 4:])
    with pytest.raises(TypeError):
        v[::2]
    with pytest.raises(ValueError):
        AxesView(a, (0, 1, 2))


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
    s = LazyVolume([a, b]).channel_stats(max_bytes=9 * 11 * 8 * 3)  # slabs of 3 planes
    for i, x in enumerate((a, b)):
        x64 = x.astype(np.float64)
        assert s.mean[i] == pytest.approx(x64.mean(), rel=1e-12)
        assert s.std[i] == pytest.approx(x64.std(ddof=1), rel=1e-9)
        assert (s.minimum[i], s.maximum[i]) == (x64.min(), x64.max())
    assert s.finite.all() and s.count == a.size
    a[5, 2, 3] = np.nan
    s = LazyVolume([a]).channel_stats(max_bytes=9 * 11 * 8 * 3)
    assert not s.finite[0] and np.isfinite(s.mean[0])


def test_label_scan_counts_slices_and_sampled_positions() -> None:
    lab = np.full((10, 6, 8), 255, np.uint8)
    lab[2] = 0
    lab[7, 1:3] = 1
    lab[:, 4, 5] = 2
    scan = scan_labels(_Counting(lab), max_bytes=6 * 8 * 8 * 2)
    want = np.bincount(lab.ravel(), minlength=256)
    np.testing.assert_array_equal(scan.counts, want)
    assert scan.slices[0].tolist() == list(range(10)) and scan.slices[1].tolist() == [0, 1, 2, 3, 4, 5]
    for c in range(3):
        np.testing.assert_array_equal(scan.positions[c], np.argwhere(lab == c))
    assert scan.classes(255) == [0, 1, 2]
    capped = scan_labels(lab, max_points=5, max_bytes=6 * 8 * 8 * 2)
    np.testing.assert_array_equal(capped.positions[0], np.argwhere(lab == 0)[::10])  # 48 -> every 10th
    assert len(capped.positions[2]) == 5 and capped.positions[0].dtype == np.int32
    with pytest.raises(ValueError, match="whole numbers"):
        scan_labels(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="outside 0..255"):
        scan_labels(np.array([[0, 300]]))


def test_copy_to_zarr_round_trips_in_slabs(tmp_path) -> None:
    a = np.random.default_rng(2).integers(0, 255, (5, 30, 7)).astype(np.uint8)
    src = _Counting(a)
    z = copy_to_zarr(src, tmp_path / "c.zarr", (4, 8, 8), axis=1, max_bytes=5 * 7 * 8)
    np.testing.assert_array_equal(z[...], a)
    assert src.read == a.size  # one pass
