"""Input validators: one-line InputError messages naming the file and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from fhcnn.errors import InputError
from fhcnn.validation import (check_finite, check_labels, check_shape, check_spatial_size,
                              check_volume, read_array)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
shapes = array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6)
floats = st.sampled_from([np.float32, np.float64])


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and (msg.startswith("data.npy: ") or msg.startswith("labels.npy: "))
    return msg


@SETTINGS
@given(arrays(floats, shapes, elements=st.floats(-1e6, 1e6, width=32)))
def test_finite_arrays_pass(a: np.ndarray) -> None:
    check_finite(a, "data.npy")
    check_finite(torch.from_numpy(a), "data.npy")


@SETTINGS
@given(arrays(floats, shapes, elements=st.floats(-1e6, 1e6, width=32)), st.data(),
       st.sampled_from([np.nan, np.inf, -np.inf]))
def test_nan_and_inf_are_rejected(a: np.ndarray, data, bad: float) -> None:
    a = a.copy()
    idx = tuple(data.draw(st.integers(0, s - 1)) for s in a.shape)
    a[idx] = bad
    for x in (a, torch.from_numpy(a)):
        with pytest.raises(InputError) as e:
            check_finite(x, "data.npy")
        msg = _one_line(e)
        kind = "1 NaN and 0 Inf" if np.isnan(bad) else "0 NaN and 1 Inf"
        assert f"{kind} value(s) among {a.size} (first at index {idx})" in msg


@SETTINGS
@given(shapes, st.data())
def test_check_shape(shape: tuple, data) -> None:
    expected = tuple(s if data.draw(st.booleans()) else None for s in shape)
    check_shape(np.zeros(shape), "data.npy", expected)
    # wrong number of axes, or one fixed size wrong
    with pytest.raises(InputError, match=r"data.npy: shape .* does not match the expected"):
        check_shape(np.zeros(shape + (1,)), "data.npy", expected)
    i = data.draw(st.integers(0, len(shape) - 1))
    wrong = list(shape)
    wrong[i] += 1
    fixed = tuple(shape[j] if j == i else e for j, e in enumerate(expected))
    with pytest.raises(InputError) as e:
        check_shape(np.zeros(wrong), "data.npy", fixed)
    assert f"shape {tuple(wrong)} does not match" in _one_line(e)


def test_check_shape_names_axes() -> None:
    with pytest.raises(InputError, match=r"data.npy: shape \(2, 5, 8, 8\) does not match the "
                                         r"expected \(N, 6, H, W\)"):
        check_shape(np.zeros((2, 5, 8, 8)), "data.npy", (None, 6, None, None), "N C H W")


@SETTINGS
@given(shapes, st.integers(2, 5), st.data())
def test_valid_labels_pass_and_mismatched_shapes_fail(shape: tuple, classes: int, data) -> None:
    labels = data.draw(arrays(np.int64, shape, elements=st.integers(-1, classes - 1)))
    labels.flat[0] = 0  # at least one labelled voxel
    check_labels(labels, "labels.npy", data_shape=shape, num_classes=classes)
    other = data.draw(shapes.filter(lambda s: s != shape))
    with pytest.raises(InputError) as e:
        check_labels(labels, "labels.npy", data_shape=other, num_classes=classes)
    assert (f"label volume shape {shape} does not match the data's spatial shape {other}"
            in _one_line(e))


@SETTINGS
@given(shapes)
def test_empty_label_sets_fail(shape: tuple) -> None:
    with pytest.raises(InputError) as e:
        check_labels(np.full(shape, -1), "labels.npy", data_shape=shape)
    assert "empty label set" in _one_line(e)


@SETTINGS
@given(shapes, st.integers(2, 4), st.integers(4, 9))
def test_out_of_range_labels_fail(shape: tuple, classes: int, bad: int) -> None:
    labels = np.zeros(shape, np.int32)
    labels.flat[-1] = bad
    with pytest.raises(InputError) as e:
        check_labels(labels, "labels.npy", num_classes=classes)
    assert f"label values [{bad}] outside 0..{classes - 1} for {classes} classes" in _one_line(e)


def test_label_dtypes() -> None:
    check_labels(np.array([[True, False]]), "labels.npy", num_classes=2)
    check_labels(np.array([0.0, 1.0, -1.0]), "labels.npy", num_classes=2)
    with pytest.raises(InputError, match="labels.npy: labels must be integer class ids, got float "
                                         "values like 0.5"):
        check_labels(np.array([0.0, 0.5]), "labels.npy")
    with pytest.raises(InputError, match="got NaN/Inf"):
        check_labels(np.array([0.0, np.nan]), "labels.npy")
    with pytest.raises(InputError, match="negative label value -3"):
        check_labels(np.array([0, -3]), "labels.npy")
    with pytest.raises(InputError, match="has no voxels"):
        check_labels(np.zeros((0, 4)), "labels.npy")


@SETTINGS
@given(st.lists(st.integers(1, 200), min_size=1, max_size=3), st.integers(0, 4))
def test_spatial_size(sizes: list[int], levels: int) -> None:
    m = 2**levels
    ok = all(s % m == 0 for s in sizes)
    if ok:
        check_spatial_size(sizes, m, "data.npy")
        return
    with pytest.raises(InputError) as e:
        check_spatial_size(sizes, m, "data.npy")
    msg = _one_line(e)
    assert f"spatial size {tuple(sizes)} is not divisible by {m}" in msg
    near = eval(msg.split("nearest valid size ")[1].split(";")[0])  # noqa: S307 (a tuple literal)
    assert all(n % m == 0 and n > 0 and abs(n - s) <= m for n, s in zip(near, sizes))


def test_check_volume() -> None:
    x = np.zeros((6, 8, 16, 16), np.float32)
    check_volume(x, "data.npy", ndim=4, channels=6, multiple=8)
    with pytest.raises(InputError, match="expected 5 axes"):
        check_volume(x, "data.npy", ndim=5)
    with pytest.raises(InputError, match="expected 3 channel"):
        check_volume(x, "data.npy", channels=3)
    with pytest.raises(InputError, match="not divisible by 16"):
        check_volume(x, "data.npy", multiple=16)
    with pytest.raises(InputError, match="empty array"):
        check_volume(np.zeros((6, 0)), "data.npy")
    x[1, 2, 3, 4] = np.nan
    with pytest.raises(InputError, match=r"first at index \(1, 2, 3, 4\)"):
        check_volume(x, "data.npy")


def test_read_array(tmp_path: Path) -> None:
    a = np.arange(12.0).reshape(3, 4)
    np.save(tmp_path / "a.npy", a)
    assert np.array_equal(read_array(tmp_path / "a.npy"), a)
    np.savez(tmp_path / "one.npz", x=a)
    assert np.array_equal(read_array(tmp_path / "one.npz"), a)
    np.savez(tmp_path / "two.npz", x=a, y=a)
    assert np.array_equal(read_array(tmp_path / "two.npz", key="y"), a)
    with pytest.raises(InputError, match=r"two.npz: holds 2 arrays \(x, y\); say which one"):
        read_array(tmp_path / "two.npz")
    with pytest.raises(InputError, match=r"two.npz: no array 'z'"):
        read_array(tmp_path / "two.npz", key="z")
    with pytest.raises(InputError, match=r"missing.npy: no such file"):
        read_array(tmp_path / "missing.npy")
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match=r"broken.npy: cannot read as .npy \(ValueError"):
        read_array(tmp_path / "broken.npy")
    (tmp_path / "x.xyz").write_bytes(b"")
    with pytest.raises(InputError, match=r"x.xyz: unsupported file type '.xyz'"):
        read_array(tmp_path / "x.xyz")
    with pytest.raises(InputError, match="is a folder"):
        read_array(tmp_path)
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "a.tif", a.astype(np.float32))
    assert np.array_equal(read_array(tmp_path / "a.tif"), a.astype(np.float32))
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(InputError, match=r"bad.tif: cannot read as .tif"):
        read_array(tmp_path / "bad.tif")
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["grp/data"] = a
    assert np.array_equal(read_array(tmp_path / "a.h5"), a)
