"""Volumes read by window (fhcnn/data/lazy/): every read equals the same read of the whole
array in memory, statistics and label scans stream, and nothing reads more than it needs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fhcnn.data.lazy import (
    LazyVolume,
    PassShare,
    chunk_boxes,
    copy_to_zarr,
    iter_slabs,
    reflect_indices,
    scan_labels,
    stream_stats,
    whole_slabs,
)
from fhcnn.data.volumes import summarize_labels
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


class _Stop(Exception):
    pass


def _shared(fn, processes: int) -> list:
    """``fn(share)`` on each of ``processes`` simulated processes, in rounds: a process's call
    stops at the first gather whose parts are not all in yet (its own part kept), and is made
    again once they are, until every process's call returns."""
    if processes == 1:  # nothing to gather
        return [fn(PassShare())]
    rounds: list[dict[int, object]] = []
    while True:
        results = {}
        for r in range(processes):
            calls = iter(range(1000))

            def gather(part, r=r, calls=calls):
                k = next(calls)
                if k < len(rounds) and len(rounds[k]) == processes:
                    return [rounds[k][i] for i in range(processes)]
                if k == len(rounds):
                    rounds.append({})
                rounds[k][r] = part
                raise _Stop
            try:
                results[r] = fn(PassShare(r, processes, gather))
            except _Stop:
                pass
        if len(results) == processes:
            return [results[r] for r in range(processes)]


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(st.integers(1, 9), st.integers(1, 7), st.integers(1, 6)), axis=st.integers(0, 2),
       processes=st.integers(1, 5), max_points=st.integers(1, 40), seed=st.integers(0, 99),
       slab_voxels=st.integers(1, 60))
def test_passes_shared_by_processes_equal_one_process(shape, axis, processes, max_points, seed, slab_voxels) -> None:
    """Each process reads only its block of slabs, and every process gets the one-process
    statistics (bit for bit) and label scan (counts, slices and the capped positions)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, shape).astype(np.float32)
    x[rng.random(shape) < 0.05] = np.nan
    lab = rng.choice(np.array([0, 1, 2, 255], np.uint8), shape, p=[0.3, 0.1, 0.1, 0.5])
    kw = {"max_bytes": slab_voxels * 8}
    one = stream_stats(x, slab_axis=axis, **kw)
    for st_ in _shared(lambda share: stream_stats(x, slab_axis=axis, share=share, **kw), processes):
        assert st_ == one or (np.isnan(one.mean) and st_.count == one.count == 0 and st_.nonfinite == one.nonfinite)
    scan = scan_labels(lab, max_points=max_points, slab_axis=axis, **kw)
    for got in _shared(lambda share: scan_labels(lab, max_points=max_points, slab_axis=axis, share=share, **kw),
                       processes):
        np.testing.assert_array_equal(got.counts, scan.counts)
        assert got.unlabelled == scan.unlabelled
        for a in range(3):
            np.testing.assert_array_equal(got.per_slice[a], scan.per_slice[a])
        assert len(got.positions) == len(scan.positions)
        for p, q in zip(got.positions, scan.positions):
            np.testing.assert_array_equal(p, q)
    slabs = len(list(iter_slabs(shape, 8, kw["max_bytes"], axis)))
    for p, c in zip(scan.positions, range(3)):  # a sample of the class, capped (one a slab at least)
        assert len(p) <= max(max_points, slabs) and (lab[tuple(p.T)] == c).all()
        if (lab == c).sum() <= max_points:  # all of them (in the slabs' order)
            np.testing.assert_array_equal(np.unique(p, axis=0), np.argwhere(lab == c))


def test_shared_scan_refuses_the_first_bad_value_on_every_process() -> None:
    lab = np.full((8, 4, 4), 255, np.uint8)
    lab[1] = 0
    lab[2, 0, 0] = 1
    lab[5, 1, 2] = 7   # in the third of four processes' blocks
    lab[7, 3, 3] = 9
    with pytest.raises(InputError) as one:
        scan_labels(lab, limit=3, max_bytes=16 * 8)
    # only the third of 4 processes reads the 7 at (5, 1, 2); every process raises the
    # one-process message (the 7, not the 9 of the fourth)
    with pytest.raises(InputError) as many:
        _shared(lambda share: scan_labels(lab, limit=3, max_bytes=16 * 8, share=share), 4)
    assert str(many.value) == str(one.value) and "(5, 1, 2)" in str(one.value)


def test_shared_label_summary_counts_voxels_outside_dense_slices() -> None:
    lab = np.full((6, 8, 8), 255, np.uint8)
    lab[2] = 0
    lab[:, 3] = 1
    lab[4, 6, 6] = 0   # outside both dense slices
    one = summarize_labels(lab, max_bytes=64 * 8)
    for got in _shared(lambda share: summarize_labels(lab, max_bytes=64 * 8, share=share), 3):
        assert got.elsewhere == one.elsewhere == 1 and got.dense == one.dense and got.counts == one.counts


def test_copy_to_zarr_round_trips_in_slabs(tmp_path) -> None:
    a = np.random.default_rng(2).integers(0, 255, (5, 30, 7)).astype(np.uint8)
    src = _Counting(a)
    z = copy_to_zarr(src, tmp_path / "c.zarr", (4, 8, 8), axis=1, max_bytes=5 * 7 * 8)
    np.testing.assert_array_equal(z[...], a)
    assert src.read == a.size  # one pass


class _Boxes(_Counting):
    """A :class:`_Counting` array-like that also keeps every box it handed out."""

    def __init__(self, a: np.ndarray) -> None:
        super().__init__(a)
        self.boxes: list[tuple[slice, ...]] = []

    def __getitem__(self, key):
        self.boxes.append(key)
        return super().__getitem__(key)


@pytest.mark.parametrize("shape, axis", [((6, 40, 40), 0), ((40, 40, 6), 2), ((3, 50, 64), 1), ((40, 40, 40), 0),
                                         ((5, 30, 7), 1)])
@pytest.mark.parametrize("budget", [40 * 40 * 3, 40 * 8, 100])
def test_copy_to_zarr_keeps_its_chunks_and_reads_forward_within_the_budget(tmp_path, shape, axis, budget) -> None:
    """Whatever the budget: the copy has the chunks asked for (what later reads cost), the
    source is read once, in boxes of at most ``max_bytes`` (a flat stack or large slices are
    not read one chunk thick), each box whole along the axes inner to the one it is cut along
    and in storage order (a compressed stream is never read backwards), and nothing is left
    beside the copy."""
    a = np.random.default_rng(3).integers(0, 255, shape).astype(np.uint8)
    src = _Boxes(a)
    chunks = (16, 16, 16)
    z = copy_to_zarr(src, tmp_path / "c.zarr", chunks, axis=axis, max_bytes=budget)
    assert z.chunks == tuple(min(c, n) for c, n in zip(chunks, shape))
    np.testing.assert_array_equal(z[...], a)
    assert src.read == a.size  # one pass
    assert max(a[b].size for b in src.boxes) <= budget
    order = [axis] + sorted((k for k in range(3) if k != axis), key=lambda k: abs(k - axis))
    starts = [tuple(b[k].start for k in order) for b in src.boxes]
    assert starts == sorted(starts)
    for b in src.boxes:  # cut along one axis at most, whole along the ones inside it
        cut = [i for i, k in enumerate(order) if b[k].stop - b[k].start < shape[k]]
        assert not cut or all(b[k].stop - b[k].start == shape[k] for k in order[cut[-1] + 1:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]


def test_chunk_boxes_cover_whole_chunks_within_the_budget() -> None:
    shape, chunks = (37, 21, 50), (8, 8, 16)
    for budget in (8 * 8 * 16, 3000, 10**9):
        seen = np.zeros(shape, np.int32)
        for box in chunk_boxes(shape, chunks, 1, budget, axis=0):
            seen[box] += 1
            assert all(s.start % c == 0 and (s.stop % c == 0 or s.stop == n)
                       for s, c, n in zip(box, chunks, shape))
            assert seen[box].size <= max(budget, 8 * 8 * 16)
        assert (seen == 1).all()


def test_copy_to_zarr_reads_a_moved_view_in_the_storage_order_it_is_given(tmp_path) -> None:
    """A band-first ``(B, H, W)`` source read as ``(H, W, B)`` (a planar TIFF's cube) with its
    storage order given (bands, then rows): every box is whole rows of one band, in the order
    of the file, never columns (a compressed page would be decoded once per column box: a
    3x8000x8000 zlib TIFF took 33.5 s instead of 20.7 s)."""
    from fhcnn.data.lazy import MovedAxes, storage_order

    a = np.random.default_rng(4).integers(0, 255, (3, 40, 50)).astype(np.uint8)
    src = _Boxes(a)
    view = MovedAxes(src, (1, 2, 0))
    order = storage_order(view.shape, (2, 0, 1))
    assert order == [2, 0, 1] and storage_order((4, 5, 6), 2) == [2, 1, 0]
    z = copy_to_zarr(view, tmp_path / "c.zarr", (16, 16, 16), axis=order, max_bytes=50 * 7)
    np.testing.assert_array_equal(z[...], np.moveaxis(a, 0, -1))
    assert src.read == a.size
    assert all(b[2] == slice(0, 50) for b in src.boxes)  # whole rows of the file's pages
    starts = [(b[0].start, b[1].start) for b in src.boxes]
    assert starts == sorted(starts) and len(starts) == 3 * -(-40 // 7)
    with pytest.raises(ValueError, match="not an order"):
        list(iter_slabs((4, 5, 6), 1, 10, (0, 0, 1)))


def test_copy_to_zarr_refuses_a_disk_without_room_for_its_staging_file(tmp_path, monkeypatch) -> None:
    """The staging file is a memory map: on a full disk its writes killed the process with SIGBUS
    (exit 135, no message, the partial staging file left; seen with a 2048x2048x8 float32
    .nii.gz copied onto a 100 MiB file system). Its space is reserved first: a full disk is
    one InputError naming the file and the sizes, and nothing is left beside the copy."""
    import errno
    import os

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    a = np.zeros((3, 40, 40), np.float32)
    with pytest.raises(InputError, match=r"no room for the staging file .*c\.zarr\.staging.*GiB"):
        copy_to_zarr(a, tmp_path / "c.zarr", (16, 16, 16), axis=0, max_bytes=40 * 40 * 4)
    assert not (tmp_path / "c.zarr.staging").exists()


def test_a_run_copy_that_stops_leaves_nothing_in_the_run_folder(tmp_path) -> None:
    """A source that fails in the middle of the one-time copy into a run folder (a damaged
    page, a full disk): the error reaches the caller and neither the copy's temporary folder nor
    its staging file stays behind."""
    from fhcnn.rundir import copy_input
    from fhcnn.training import TrainConfig

    class _Failing(_Counting):
        def __getitem__(self, key):
            if self.read > 0:
                raise OSError("damaged page")
            return super().__getitem__(key)

    # 32 MiB each: two slabs of one pass, and through the staging file (two slices thicker than 16 MiB)
    for shape in ((128, 256, 256), (2, 2048, 2048)):
        with pytest.raises(OSError, match="damaged page"):
            copy_input(tmp_path, "image0", _Failing(np.zeros(shape, np.float32)), (64, 64, 64), axis=0,
                       train=TrainConfig(), why="test", log=lambda line: None)
        assert list(tmp_path.iterdir()) == []
