"""Generated volumes with known truth: the same voxels whatever the blocks, written block by block
with memory bounded by a block, deterministic by seed."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from fhcnn.data.synthetic_volumes import CLASS_NAMES, KINDS, generate_volume, volume_block, write_volume

SHAPE = (20, 26, 23)


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_of_any_size_give_the_same_volume(kind):
    img_a, lab_a = generate_volume(kind, SHAPE, seed=3, chunks=(32, 32, 32))
    img_b, lab_b = generate_volume(kind, SHAPE, seed=3, chunks=(7, 5, 11))
    np.testing.assert_array_equal(img_a, img_b)
    np.testing.assert_array_equal(lab_a, lab_b)
    box = (slice(3, 17), slice(20, 26), slice(0, 9))
    img_c, lab_c = volume_block(kind, box, SHAPE, seed=3)
    np.testing.assert_array_equal(img_c, img_a[box])
    np.testing.assert_array_equal(lab_c, lab_a[box])


@pytest.mark.parametrize("kind", KINDS)
def test_seed_decides_and_every_class_occurs(kind):
    shape = (48, 48, 48)
    img0, lab0 = generate_volume(kind, shape, seed=0)
    img0b, _ = generate_volume(kind, shape, seed=0)
    img1, _ = generate_volume(kind, shape, seed=1)
    np.testing.assert_array_equal(img0, img0b)
    assert not np.array_equal(img0, img1)
    assert set(np.unique(lab0)) == set(range(len(CLASS_NAMES[kind])))
    assert np.isfinite(img0).all() and img0.std() > 0
    # the image tells the classes apart (class means differ), the second channel too
    ch1, _ = generate_volume(kind, shape, seed=0, channel=1)
    assert not np.array_equal(img0, ch1)
    means = [img0[lab0 == c].mean() for c in range(len(CLASS_NAMES[kind]))]
    if kind == "cells":
        assert means[1] > means[2] > means[0]   # bright membrane, grey inside, dark background


@pytest.mark.parametrize("suffix", [".npy", ".zarr"])
def test_write_volume_equals_the_generated_one(tmp_path, suffix):
    w = write_volume("cells", tmp_path / f"v{suffix}", SHAPE, seed=2, dtype="uint8", chunks=(8, 16, 16))
    img, lab = generate_volume("cells", SHAPE, seed=2, dtype="uint8")
    if suffix == ".npy":
        got_img, got_lab = np.load(w.image), np.load(w.labels)
    else:
        import zarr

        group = zarr.open_group(str(tmp_path / "v.zarr"), mode="r")
        got_img, got_lab = group["image"][...], group["labels"][...]
        assert w.image.endswith(".zarr:image") and group.attrs["classes"] == list(CLASS_NAMES["cells"])
    assert got_img.dtype == np.uint8 and got_lab.dtype == np.uint8
    np.testing.assert_array_equal(got_img, img)
    np.testing.assert_array_equal(got_lab, lab)
    with pytest.raises(FileExistsError):
        write_volume("cells", tmp_path / f"v{suffix}", SHAPE, seed=2)


def _peak_writing(path, shape):
    tracemalloc.start()
    try:
        write_volume("seismic", path, shape, seed=0, dtype="float32", chunks=(4, 32, 32))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_write_volume_memory_is_bounded_by_a_slab(tmp_path):
    """Writing a volume 4 times deeper (same slabs of 4 x 64 x 64) does not raise the peak of
    numpy's allocations, which stays below the smaller volume's size; the file is the volume."""
    small, big = (32, 64, 64), (128, 64, 64)
    peak_small = _peak_writing(tmp_path / "a.npy", small)
    peak_big = _peak_writing(tmp_path / "b.npy", big)
    assert peak_big < 1.2 * peak_small, (peak_small, peak_big)
    assert peak_big < np.prod(big) * 5 / 2
    img, lab = generate_volume("seismic", big, seed=0, dtype="float32")
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), img)
    np.testing.assert_array_equal(np.load(tmp_path / "b-labels.npy"), lab)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        generate_volume("brain", SHAPE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        generate_volume("cells", (4, 4))
    with pytest.raises(ValueError, match="dtype"):
        generate_volume("cells", SHAPE, dtype="int16")
