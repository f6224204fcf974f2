"""Every size decision of the engine (engine/sizes.py): padding, windows, tilings, coverage,
chunks, scaling and resizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fhcnn.apps.volume.config import VolumeConfig
from fhcnn.engine.sizes import (
    Geometry,
    ResizedPlanes,
    blend_weights_1d,
    chunk_shape,
    gather,
    padded_shape,
    prediction_tilings,
    prediction_window_of,
    resize_back,
    resize_box,
    resize_labels,
    resize_volume,
    round_up,
    scaled_size,
    source_box,
    training_window,
    window_starts,
)
from fhcnn.options import IGNORE


def test_round_up_and_padded_shape() -> None:
    assert [round_up(n, 8) for n in (1, 8, 9, 16)] == [8, 8, 16, 16]
    assert padded_shape((5, 16, 17), 4) == (8, 16, 20)
    # never one voxel at the coarsest level (a norm there would have one value a channel)
    assert padded_shape((2, 2, 2), 2) == (2, 2, 4) and padded_shape((3, 1, 4), 4) == (4, 4, 8)


def test_training_window_rounds_up_and_takes_whole_axes() -> None:
    assert training_window((6, 0, 16), (40, 30, 50), 4) == (8, 32, 16)
    assert training_window((6, 16, 16), (10, 30, 50), 4, whole_depth=True) == (12, 16, 16)
    assert training_window((2, 2, 2), (40, 30, 50), 2) == (2, 2, 4)
    assert training_window((0, 0, 0), (2, 1, 2), 2) == (2, 2, 4)


def test_prediction_window_defaults_to_the_training_window() -> None:
    assert prediction_window_of((-1, -1, -1), (8, 64, 64), False) == (8, 64, 64)
    assert prediction_window_of((-1, 0, 32), (8, 64, 64), False) == (8, 0, 32)
    assert prediction_window_of((-1, -1, -1), (8, 64, 64), True) == (0, 64, 64)


@settings(max_examples=60, deadline=None)
@given(padded=st.integers(1, 40).map(lambda k: 4 * k), win=st.integers(1, 40).map(lambda k: 4 * k))
def test_window_starts_cover_the_axis_with_half_overlap(padded: int, win: int) -> None:
    win = min(win, padded)
    starts = window_starts(padded, win, 4)
    assert starts[0] == 0 and starts[-1] == padded - win and starts == sorted(set(starts))
    assert all(b - a <= max(4, win // 2) for a, b in zip(starts, starts[1:]))  # no gap, about half overlap
    assert all(s % 4 == 0 for s in starts[:-1])


@settings(max_examples=60, deadline=None)
@given(padded=st.integers(1, 40).map(lambda k: 4 * k), win=st.integers(1, 40).map(lambda k: 4 * k),
       overlap=st.sampled_from([0.0, 0.25, 0.5, 0.75]))
def test_window_starts_overlap_by_the_fraction_asked(padded: int, win: int, overlap: float) -> None:
    win = min(win, padded)
    starts = window_starts(padded, win, 4, overlap)
    stride = max(4, int(win * (1 - overlap)) // 4 * 4)
    assert starts[0] == 0 and starts[-1] == padded - win and starts == sorted(set(starts))
    assert all(b - a == stride for a, b in zip(starts[:-1], starts[1:-1]))  # flush end aside
    assert 0 < starts[-1] - starts[-2] <= stride if len(starts) > 1 else padded == win
    if overlap == 0 and padded % win == 0:  # side by side: every voxel in exactly one window
        assert starts == list(range(0, padded, win))


def test_window_starts_refuse_an_overlap_outside_0_to_1() -> None:
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="overlap"):
            window_starts(32, 8, 4, bad)


@settings(max_examples=40, deadline=None)
@given(size=st.tuples(st.integers(1, 20), st.integers(1, 20), st.integers(1, 20)),
       window=st.tuples(st.sampled_from([0, 2, 4, 8, 12]), st.sampled_from([0, 4, 8]), st.sampled_from([0, 4, 8, 16])),
       shifts=st.integers(1, 4), shift_depth=st.booleans(), mirror=st.sampled_from([None, 0, 1, 2]),
       overlap=st.sampled_from([0.0, 0.25, 0.5]))
def test_tilings_cover_the_volume_and_blend_to_one(size, window, shifts, shift_depth, mirror, overlap) -> None:
    """Every tiling's windows cover every voxel of the volume; the weights over the coverage of
    the windows holding a voxel sum to one (each tiling is a proper blend), at any overlap."""
    m = 4
    tilings = prediction_tilings(size, window, m, shifts, shift_depth, mirror, overlap)
    offsets = {t.offset for t in tilings}
    assert len(tilings) == len(offsets) * (1 if mirror is None else 2) and all(t.offset[0] == 0 for t in tilings
                                                                     if not shift_depth)
    for t in tilings:
        assert all(p % m == 0 and p >= n + o for p, n, o in zip(t.padded, size, t.offset))
        assert all(w <= p for w, p in zip(t.window, t.padded))
        assert any(w > m for w in t.window), "one voxel at the network's coarsest level"
        for a in range(3):
            total = np.zeros(t.padded[a])
            for s, f in t.factors(a).items():
                total[s:s + t.window[a]] += f
            covered = slice(t.offset[a], t.offset[a] + size[a])
            np.testing.assert_allclose(total[covered], 1.0, rtol=1e-12)


@pytest.mark.parametrize("mirror", [0, 1, 2])
def test_a_mirrored_tiling_mirrors_its_windows_along_its_axis_only(mirror) -> None:
    """The mirrored tiling's windows are the plain tiling's reflected in the padded volume along
    ``mirror`` (in unflipped coordinates) and the same along the other axes."""
    plain, mirrored = prediction_tilings((13, 11, 9), (8, 4, 4), 4, 1, True, mirror, 0.25)
    assert plain.mirror is None and mirrored.mirror == mirror
    for a in range(3):
        want = plain.starts[a] if a != mirror else \
            tuple(sorted(plain.padded[a] - s - plain.window[a] for s in plain.starts[a]))
        assert mirrored.starts[a] == want


@pytest.mark.parametrize("bad", [True, False, 3, -1])
def test_tilings_refuse_a_mirror_that_is_not_an_axis(bad) -> None:
    with pytest.raises(ValueError, match="mirror"):
        prediction_tilings((8, 8, 8), (4, 4, 4), 4, 1, True, bad)


def test_covering_counts_the_windows_meeting_each_chunk() -> None:
    t = prediction_tilings((10, 4, 4), (4, 0, 0), 2, 2, True, None)[1]  # shifted by 1
    edges = [0, 3, 6, 10]
    counts = t.covering(0, 10, edges)
    want = [sum(1 for s in t.starts[0] if max(0, s - 1) < min(10, s - 1 + 4) and max(0, s - 1) < e1
                and e0 < min(10, s - 1 + 4)) for e0, e1 in zip(edges, edges[1:])]
    assert counts.tolist() == want


def test_blend_weights_are_sines_where_the_window_cuts() -> None:
    np.testing.assert_allclose(blend_weights_1d(4, 8), np.sin(np.pi * (np.arange(4) + 0.5) / 4))
    assert (blend_weights_1d(8, 8) == 1).all()


def test_chunks_take_whole_axes_where_asked() -> None:
    assert chunk_shape((100, 30, 200), 64) == (64, 30, 64)
    assert chunk_shape((100, 30, 200), 64, (True, False, True)) == (100, 30, 200)


def test_chunks_of_whole_planes_hold_no_more_than_a_cube() -> None:
    # resizing back needs whole (H, W) planes: a chunk 64 planes deep held 64 planes however
    # large (64 x 1024^2 voxels: 256 MiB a class of float32), growing with the planes
    assert chunk_shape((1000, 1024, 1024), 64, (False, True, True)) == (1, 1024, 1024)
    assert chunk_shape((1000, 128, 128), 64, (False, True, True)) == (16, 128, 128)
    assert chunk_shape((10, 32, 32), 64, (False, True, True)) == (10, 32, 32)
    assert chunk_shape((3, 4096, 4096), 64, (True, True, True)) == (3, 4096, 4096)  # a depth mean: every depth


def test_gather_reflects_past_both_ends() -> None:
    x = torch.arange(5.0)
    assert gather(x, [-2], [9]).tolist() == [2, 1, 0, 1, 2, 3, 4, 3, 2]


def test_geometry_scales_pads_and_describes() -> None:
    g = Geometry.of((3, 48, 96, 160), 0.5, 8)
    assert (g.depth, g.size, g.scaled, g.padded) == (48, (96, 160), (48, 80), (48, 48, 80))
    assert "resized to 48x80" in g.describe() and scaled_size((3, 3), 0.1) == (1, 1)
    # padded only where a size is not a multiple: a volume of such sizes is not said to be continued
    assert g.describe() == ("(D, H, W) = (48, 96, 160) resized to 48x80; sizes the network takes as they are "
                            "(multiples of 8); predictions resized back to 96x160")
    assert Geometry.of((16, 60, 107), 1.0, 2).describe() == (
        "(D, H, W) = (16, 60, 107) at full size; continued by reflection to (16, 60, 108) for the network "
        "(sizes must be multiples of 2) and cropped back")


def test_resize_labels_never_drops_a_sparse_label() -> None:
    lab = np.full((1, 20, 20), IGNORE, np.uint8)
    lab[0, 3, 4], lab[0, 15, 17] = 1, 2
    small = resize_labels(lab, (5, 5), 3)
    assert sorted(np.unique(small).tolist()) == [1, 2, IGNORE]
    prob = torch.softmax(torch.randn(3, 2, 5, 5), 0)
    back = resize_back(prob, (20, 13))
    assert back.shape == (3, 2, 20, 13) and resize_back(prob, (5, 5)) is prob
    # bilinear weights sum to one: probabilities stay probabilities
    torch.testing.assert_close(back.sum(0), torch.ones(2, 20, 13))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.sampled_from([(9, 13, 5, 7), (6, 8, 12, 16), (7, 7, 7, 7)]),
       st.integers(0, 2**31 - 1), st.sampled_from([0, 2000, 64 * 2**20]))
def test_resized_planes_equal_the_whole_array_resized(depth, sizes, seed, cache_bytes) -> None:
    """Any box read through the lazy per-plane view equals the same box of the whole array
    resized at once (values and labels), whether it reads whole planes (they fit
    ``cache_bytes``), only its box's source, or some reads of each."""
    h, w, th, tw = sizes
    rng = np.random.default_rng(seed)
    vol = rng.normal(size=(depth, h, w)).astype(np.float32)
    lab = rng.integers(0, 3, (depth, h, w)).astype(np.uint8)
    lab[rng.random(lab.shape) < 0.6] = IGNORE
    whole_v = resize_volume(vol[None], (th, tw))[0]
    whole_l = resize_labels(lab, (th, tw), 3)
    view_v = ResizedPlanes(vol, (th, tw), cache_bytes=cache_bytes)
    view_l = ResizedPlanes(lab, (th, tw), labels=True, num_classes=3, cache_bytes=cache_bytes)
    assert view_v.shape == whole_v.shape and view_l.shape == whole_l.shape and view_l.dtype == np.uint8
    for _ in range(6):
        d0, h0, w0 = (int(rng.integers(0, n)) for n in (depth, th, tw))
        box = (slice(d0, int(rng.integers(d0 + 1, depth + 1))), slice(h0, int(rng.integers(h0 + 1, th + 1))),
               slice(w0, int(rng.integers(w0 + 1, tw + 1))))
        np.testing.assert_array_equal(view_v[box], whole_v[box])
        np.testing.assert_array_equal(view_l[box], whole_l[box])
    np.testing.assert_array_equal(view_v[depth - 1, 1:3], whole_v[depth - 1, 1:3])
    np.testing.assert_array_equal(view_l[:], whole_l)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 60), st.integers(1, 60), st.integers(0, 2**31 - 1),
       st.sampled_from([1.0, 1e3, 1e-3]))
def test_a_box_of_planes_resized_from_its_source_box_alone(h, w, th, tw, seed, magnitude) -> None:
    """Any box of planes resized to any size (shrinking, enlarging, one axis of each, down to
    ``1 x 1``) is computed from the source rows and columns :func:`source_box` names alone (the
    rest of the planes is NaN here) and equals the box of the whole planes resized: bit for bit
    torch's area averaging when shrinking, the labels' votes and centres; bilinear enlarging
    equals torch's to the float32 rounding of its source coordinate (``eps`` times the size)."""
    rng = np.random.default_rng(seed)
    vol = (rng.normal(size=(3, h, w)) * magnitude).astype(np.float32)
    lab = rng.integers(0, 4, (3, h, w)).astype(np.uint8)
    lab[rng.random(lab.shape) < 0.5] = IGNORE
    h0, w0 = int(rng.integers(0, th)), int(rng.integers(0, tw))
    box = ((h0, int(rng.integers(h0 + 1, th + 1))), (w0, int(rng.integers(w0 + 1, tw + 1))))
    cut = (slice(None), slice(*box[0]), slice(*box[1]))
    for labels, source in ((False, vol), (True, lab)):
        (r0, r1), (c0, c1) = source_box((h, w), (th, tw), box, labels)
        assert 0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w
        block = source[:, r0:r1, c0:c1]
        if labels:
            masked = np.full_like(lab, 7)  # a class no box of the source holds: any use of it shows
            masked[:, r0:r1, c0:c1] = block
            np.testing.assert_array_equal(resize_labels(masked, (th, tw), 8)[cut],
                                          resize_labels(lab, (th, tw), 8)[cut])
            np.testing.assert_array_equal(resize_labels(block, (th, tw), 4, box, (h, w)),
                                          resize_labels(lab, (th, tw), 4)[cut])
            continue
        masked = np.full_like(vol, np.nan)
        masked[:, r0:r1, c0:c1] = block
        got = resize_box(block, (h, w), (th, tw), box)
        np.testing.assert_array_equal(got, resize_volume(vol[None], (th, tw))[0][cut])
        np.testing.assert_array_equal(resize_volume(masked[None], (th, tw))[0][cut], got)
        torch_ = F.interpolate(torch.from_numpy(vol)[:, None], size=(th, tw),
                               mode="area" if th * tw < h * w else "bilinear",
                               **({} if th * tw < h * w else {"align_corners": False}))[:, 0].numpy()[cut]
        if th * tw < h * w or (th, tw) == (h, w):
            np.testing.assert_array_equal(got, torch_)
        else:
            eps = float(np.finfo(np.float32).eps)
            np.testing.assert_allclose(got, torch_, rtol=0, atol=4 * eps * (max(h, w) + 1) * np.abs(vol).max())


class _Counted:
    """An array that records the shape of every read into ``reads``."""

    def __init__(self, reads: list[tuple[int, ...]], a: np.ndarray) -> None:
        self.reads, self.a, self.shape, self.dtype = reads, a, a.shape, a.dtype

    def __getitem__(self, key):
        out = self.a[key]
        self.reads.append(out.shape)
        return out


def test_a_window_of_resized_planes_reads_only_its_part_of_the_source() -> None:
    """A window read through ``data.scale`` whose whole source planes do not fit the budget
    (here 1 MiB) reads the source rows and columns it needs (its box at the source's size and
    the interpolation's margin), not whole source planes: a ``4 x 24 x 24`` window of ``512 x
    512`` planes resized to ``256 x 256`` (area) or ``1024 x 1024`` (bilinear) reads at most
    ``50 x 50`` or ``14 x 14`` pixels a plane, and its labels at most ``48 x 48`` or ``13 x 13``."""
    rng = np.random.default_rng(0)
    src = rng.normal(size=(6, 512, 512)).astype(np.float32)
    lab = rng.integers(0, 3, (6, 512, 512)).astype(np.uint8)
    reads: list[tuple[int, ...]] = []

    for size, most, most_labels in (((256, 256), 50, 48), ((1024, 1024), 14, 13)):
        for labels, a, bound in ((False, src, most), (True, lab, most_labels)):
            reads.clear()
            view = ResizedPlanes(_Counted(reads, a), size, labels=labels, num_classes=3, cache_bytes=2**20)
            whole = resize_labels(a, size, 3) if labels else resize_volume(a[None], size)[0]
            np.testing.assert_array_equal(view[1:5, 100:124, 37:61], whole[1:5, 100:124, 37:61])
            assert reads and all(r[0] <= 4 and r[1] <= bound and r[2] <= bound for r in reads), reads


def test_small_resized_planes_are_read_whole_once_and_kept() -> None:
    """Planes whose window fits the budget are read and resized whole, once: windows that share
    planes (a video's training windows) take them from the cache instead of resizing their
    box's source again (ten times slower at ``--scale 0.2``); the cache keeps at most
    ``cache_bytes`` of resized planes."""
    rng = np.random.default_rng(0)
    src = rng.normal(size=(12, 60, 80)).astype(np.float32)
    reads: list[tuple[int, ...]] = []

    view = ResizedPlanes(_Counted(reads, src), (12, 16), cache_bytes=60 * 80 * 4 * 4)
    whole = resize_volume(src[None], (12, 16))[0]
    np.testing.assert_array_equal(view[2:6, 3:9, 4:10], whole[2:6, 3:9, 4:10])
    np.testing.assert_array_equal(view[3:7, 0:12, 0:16], whole[3:7])
    assert reads == [(4, 60, 80), (1, 60, 80)]  # planes 2..5 whole, then only plane 6
    halves = resize_volume(src[None], (30, 40))[0]
    kept = ResizedPlanes(src, (30, 40), cache_bytes=2 * 60 * 80 * 4)  # two source planes; eight resized
    for d in range(0, 12, 2):
        np.testing.assert_array_equal(kept[d:d + 2], halves[d:d + 2])
        assert len(kept._cache) <= 8
    assert sorted(kept._cache) == list(range(4, 12))


def test_the_configured_overlap_sets_the_prediction_windows_of_a_run() -> None:
    """``data.predict_overlap`` reaches the run's tilings: half overlap puts a voxel of a 48³
    volume in 2 windows of 16 an axis (5 starts), side by side in one (3 starts)."""
    from fhcnn.apps.volume.inputs import inputs_from_arrays
    from fhcnn.apps.volume.pipeline import plan_volume
    from fhcnn.config import load_config
    from fhcnn.engine.config import DataConfig

    with pytest.raises(ValueError, match="predict_overlap"):
        DataConfig(predict_overlap=1.0)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(48, 48, 48)).astype(np.float32)
    labels = np.full((48, 48, 48), 255, np.uint8)
    labels[10, :24], labels[10, 24:] = 0, 1
    starts = {}
    for overlap in (0.5, 0.0):
        cfg = load_config(VolumeConfig, "volume-tiny", [f"data.predict_overlap={overlap}",
                                                      "volume.physical_windows=false", "data.window_depth=16",
                                                      "data.window_height=16", "data.window_width=16"])
        plan = plan_volume(inputs_from_arrays([image], labels), cfg).plan
        starts[overlap] = {t.starts for t in plan.tilings}
    assert starts[0.5] == {((0, 8, 16, 24, 32),) * 3} and starts[0.0] == {((0, 16, 32),) * 3}
