"""Hyperspectral readers, change labels and the bitemporal generator (fhcnn.data.hyperspectral)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fhcnn.data.hyperspectral import (
    IGNORE,
    check_labels,
    labels_from_masks,
    make_bitemporal_scene,
    read_change_map,
    read_cube,
    read_envi,
    read_envi_header,
    read_pair,
    sample_labels,
    write_envi,
)
from fhcnn.errors import InputError

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture
def cube() -> np.ndarray:
    """(H, W, B) = (5, 7, 3) with every value distinct, so any axis mix-up shows."""
    return (np.arange(5 * 7 * 3, dtype=np.float32).reshape(5, 7, 3) * 1.5 - 20)


# ---------------------------------------------------------------- ENVI
@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
@pytest.mark.parametrize("suffix", [".hdr", ".HDR"])
def test_envi_interleaves_and_header_case(tmp_path, cube, interleave, suffix):
    header, data = write_envi(tmp_path / "scene", cube, interleave=interleave, header_suffix=suffix)
    # the header path, or the raw data path, both work
    np.testing.assert_array_equal(read_cube(header), cube)
    np.testing.assert_array_equal(read_cube(data), cube)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float64])
@pytest.mark.parametrize("byte_order", [0, 1])
def test_envi_data_types_and_byte_order(tmp_path, cube, dtype, byte_order):
    c = (cube - cube.min()).astype(dtype)
    write_envi(tmp_path / "s.img", c, interleave="bil", byte_order=byte_order)
    arr, h = read_envi(tmp_path / "s.img")
    assert arr.shape == (5, 7, 3) and h["byte order"] == str(byte_order)
    np.testing.assert_array_equal(arr, c)
    # header next to a ".img" file: "s.img.hdr"; the conventional "s.hdr" works too
    (tmp_path / "s.img.hdr").rename(tmp_path / "s.hdr")
    np.testing.assert_array_equal(read_cube(tmp_path / "s.hdr"), c.astype(np.float32))


def test_envi_hand_written_bsq_with_offset(tmp_path):
    # 2 lines x 3 samples x 2 bands, big-endian int16, 4 bytes of header offset
    bsq = np.array([[[1, 2, 3], [4, 5, 6]], [[10, 20, 30], [40, 50, 60]]], ">i2")  # (bands, lines, samples)
    (tmp_path / "x").write_bytes(b"\0\0\0\0" + bsq.tobytes())
    (tmp_path / "x.HDR").write_text("ENVI\ndescription = {\n a, b}\nsamples = 3\nlines = 2\nbands = 2\n"
                                    "header offset = 4\ndata type = 2\ninterleave = BSQ\nbyte order = 1\n"
                                    "wavelength = {\n 0.5, 0.6}\n")
    c = read_cube(tmp_path / "x")
    assert c.shape == (2, 3, 2)
    assert c[1, 2].tolist() == [6, 60] and c[0, 0].tolist() == [1, 10]
    h = read_envi_header(tmp_path / "x.HDR")
    assert h["wavelength"] == ["0.5", "0.6"] and h["description"].startswith("a, b")


def test_envi_errors(tmp_path, cube):
    header, data = write_envi(tmp_path / "s", cube)
    data.write_bytes(data.read_bytes()[:-8])
    with pytest.raises(InputError, match="needs"):
        read_cube(header)
    (tmp_path / "lonely.raw").write_bytes(b"\0" * 10)
    with pytest.raises(InputError, match="no ENVI header"):
        read_cube(tmp_path / "lonely.raw")
    (tmp_path / "bad.hdr").write_text("not envi\n")
    (tmp_path / "bad").write_bytes(b"\0" * 10)
    with pytest.raises(InputError, match="not an ENVI header"):
        read_cube(tmp_path / "bad.hdr")
    (tmp_path / "c.hdr").write_text("ENVI\nsamples = 2\nlines = 2\nbands = 1\ndata type = 6\n")
    (tmp_path / "c").write_bytes(b"\0" * 64)
    with pytest.raises(InputError, match="data type 6"):
        read_cube(tmp_path / "c.hdr")


def test_pixels_at_the_declared_no_data_value_are_refused(tmp_path, cube):
    """An ENVI 'data ignore value' or a GeoTIFF GDAL_NODATA tag marks pixels that are not
    measurements; they were read as data (-9999 among reflectances) without a word."""
    tifffile = pytest.importorskip("tifffile")
    holes = cube.copy()
    holes[2, 3, :] = -9999
    holes[4, 0, 1] = -9999
    header, _ = write_envi(tmp_path / "s", holes)
    np.testing.assert_array_equal(read_cube(header), holes)    # no declared value: data as it stands
    header.write_text(header.read_text() + "data ignore value = -9999\n")
    with pytest.raises(InputError, match=r"cube holds 4 value\(s\) equal to -9999, the no-data value its ENVI "
                                         r"header's 'data ignore value' declares \(first at index \(2, 3, 0\)\)"):
        read_cube(tmp_path / "s")
    counts = (np.arange(5 * 7 * 3).reshape(5, 7, 3) % 50 + 1).astype(np.uint16)   # no 0 among them
    header, _ = write_envi(tmp_path / "u", counts)
    header.write_text(header.read_text() + "data ignore value = 0\n")
    np.testing.assert_array_equal(read_cube(header), counts)
    counts[0, 0, 0] = 0
    write_envi(tmp_path / "u", counts)
    header.write_text(header.read_text() + "data ignore value = 0\n")
    with pytest.raises(InputError, match=r"holds 1 value\(s\) equal to 0, the no-data value"):
        read_cube(header)
    tifffile.imwrite(tmp_path / "g.tif", holes, planarconfig="contig", photometric="minisblack",
                     extratags=[(42113, "s", 0, "-9999", True)])
    with pytest.raises(InputError, match=r"holds 4 value\(s\) equal to -9999, the no-data value its GDAL_NODATA tag"):
        read_cube(tmp_path / "g.tif")


def test_envi_matches_spectral_package(tmp_path, cube):
    envi = pytest.importorskip("spectral.io.envi")
    for inter in ("bsq", "bil", "bip"):
        header, _ = write_envi(tmp_path / f"s_{inter}", cube, interleave=inter)
        ref = np.asarray(envi.open(str(header)).load())
        np.testing.assert_array_equal(read_cube(header), ref)


# ---------------------------------------------------------------- .mat, TIFF, .npy
def test_mat_v5_and_v73_agree(tmp_path, cube):
    scipy_io = pytest.importorskip("scipy.io")
    h5py = pytest.importorskip("h5py")
    scipy_io.savemat(tmp_path / "v5.mat", {"img": cube, "other": np.ones(3)})
    np.testing.assert_array_equal(read_cube(tmp_path / "v5.mat"), cube)
    np.testing.assert_array_equal(read_cube(tmp_path / "v5.mat", key="img"), cube)
    # v7.3 = HDF5 with a 512-byte MATLAB preamble; MATLAB writes column-major, so HDF5
    # shows the axes reversed: (B, W, H)
    with h5py.File(tmp_path / "v73.mat", "w", userblock_size=512) as f:
        f.create_dataset("img", data=cube.T)
    with open(tmp_path / "v73.mat", "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file")
    np.testing.assert_array_equal(read_cube(tmp_path / "v73.mat"), cube)
    with pytest.raises(InputError, match="no numeric variable 'nope'"):
        read_cube(tmp_path / "v5.mat", key="nope")


def test_mat_with_two_largest_variables_is_refused_naming_them(tmp_path, cube):
    """Two 3D variables of one size (v5 and v7.3) and two 2D label maps of one size: which is
    the image is not clear, so no pick is made without a word; ``key`` still picks one."""
    scipy_io = pytest.importorskip("scipy.io")
    h5py = pytest.importorskip("h5py")
    scipy_io.savemat(tmp_path / "v5.mat", {"radiance": cube, "reflectance": cube + 1, "small": cube[:2]})
    with h5py.File(tmp_path / "v73.mat", "w", userblock_size=512) as f:
        f.create_dataset("radiance", data=cube.T)
        f.create_dataset("reflectance", data=(cube + 1).T)
    for name in ("v5.mat", "v73.mat"):
        with pytest.raises(InputError, match=r"2 variables are the largest arrays of 105 values \(radiance "
                                             r"\(5, 7, 3\), reflectance \(5, 7, 3\)\).*give --key NAME"):
            read_cube(tmp_path / name)
        np.testing.assert_array_equal(read_cube(tmp_path / name, key="reflectance"), cube + 1)
    lab = np.zeros((5, 7), np.uint8)
    lab[1] = 1
    scipy_io.savemat(tmp_path / "lab.mat", {"gt": lab, "gt_old": 1 - lab})
    with pytest.raises(InputError, match=r"gt \(5, 7\), gt_old \(5, 7\)\).*save the label map alone"):
        read_change_map(tmp_path / "lab.mat")
    scipy_io.savemat(tmp_path / "lab1.mat", {"gt": lab, "valid": np.ones((2, 7))})
    np.testing.assert_array_equal(read_change_map(tmp_path / "lab1.mat"), lab)


def test_key_is_refused_for_formats_without_variables(tmp_path, cube):
    tifffile = pytest.importorskip("tifffile")
    np.save(tmp_path / "c.npy", cube)
    tifffile.imwrite(tmp_path / "c.tif", cube, planarconfig="contig", photometric="minisblack")
    header, raw = write_envi(tmp_path / "c", cube)
    np.save(tmp_path / "pair.npy", np.stack([cube, cube + 1]))
    for path, kind in (("c.npy", "a .npy"), ("c.tif", "a TIFF"), ("c.hdr", "an ENVI"), ("c", "an ENVI")):
        with pytest.raises(InputError, match=f"--key img names a variable of a .mat file, but this is {kind} file"):
            read_cube(tmp_path / path, key="img")
        np.testing.assert_array_equal(read_cube(tmp_path / path), cube)
    for key in ("img", "T1,T2"):
        with pytest.raises(InputError, match=f"--key {key} names a variable of a .mat file, but this is a .npy"):
            read_pair(tmp_path / "pair.npy", key=key)


def test_mat_pair_orders_numbers_in_names_by_value(tmp_path, cube):
    """T9 and T10: as text T10 sorted first and became BEFORE."""
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(tmp_path / "pair.mat", {"T10": cube + 1, "T9": cube})
    src: dict[str, str] = {}
    before, after = read_pair(tmp_path / "pair.mat", sources=src)
    np.testing.assert_array_equal(before, cube)
    np.testing.assert_array_equal(after, cube + 1)
    assert src["before"] == "variable T9" and src["after"] == "variable T10" and "--key T10,T9" in src["order"]


def test_mat_unmixing_layout(tmp_path, cube):
    scipy_io = pytest.importorskip("scipy.io")
    h, w, b = cube.shape
    y = cube.reshape(h * w, b, order="F").T           # (bands, pixels), column-major pixels
    scipy_io.savemat(tmp_path / "u.mat", {"Y": y, "nRow": h, "nCol": w})
    np.testing.assert_array_equal(read_cube(tmp_path / "u.mat"), cube)


@pytest.mark.parametrize("planar,compression", [(True, None), (False, None), (True, "zlib")])
def test_tiff(tmp_path, cube, planar, compression):
    """Band-first (GeoTIFF-style) or band-last TIFF reads as the cube; uncompressed it is memory
    mapped and any box reads as the same box of the cube (band-first through a lazy axis
    move); compressed it is decoded once, page by page, into a private chunked copy."""
    tifffile = pytest.importorskip("tifffile")
    from fhcnn.data.hyperspectral import open_cube
    from fhcnn.data.lazy import MovedAxes, StagedCopy

    if planar:   # GeoTIFF-style band-first
        tifffile.imwrite(tmp_path / "c.tif", np.moveaxis(cube, -1, 0), planarconfig="separate",
                         photometric="minisblack", compression=compression)
    else:
        tifffile.imwrite(tmp_path / "c.tif", cube, planarconfig="contig", photometric="minisblack")
    np.testing.assert_array_equal(read_cube(tmp_path / "c.tif"), cube)
    opened = open_cube(tmp_path / "c.tif")
    assert opened.shape == cube.shape and isinstance(opened, MovedAxes) == (planar and compression is None)
    assert isinstance(opened, StagedCopy) == (compression is not None)
    inner = opened
    while hasattr(inner, "array"):
        inner = inner.array
    assert isinstance(inner, np.memmap) == (compression is None)  # mapped, not loaded
    for box in [(slice(1, 4), slice(0, 5), slice(1, 3)), (2,), (slice(None), 3), (0, 1, 2), (Ellipsis, 1)]:
        np.testing.assert_array_equal(np.asarray(opened[box]), cube[box])


def test_tiff_pair_dates_first(tmp_path, cube):
    """A ``(2, B, H, W)`` TIFF holds both dates; each is read by box, not loaded."""
    tifffile = pytest.importorskip("tifffile")
    from fhcnn.data.hyperspectral import open_pair

    pair = np.stack([cube, cube * 2])
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(pair, -1, 1), photometric="minisblack")
    a, b = open_pair(tmp_path / "p.tif")
    assert not isinstance(a, np.ndarray) and a.shape == cube.shape
    np.testing.assert_array_equal(np.asarray(b), cube * 2)
    np.testing.assert_array_equal(a[1:3, 2, :2], cube[1:3, 2, :2])


def test_npy_and_pair(tmp_path, cube):
    np.save(tmp_path / "c.npy", cube)
    np.testing.assert_array_equal(read_cube(tmp_path / "c.npy"), cube)
    np.save(tmp_path / "p.npy", np.stack([cube, cube + 1]))
    a, b = read_pair(tmp_path / "p.npy")
    np.testing.assert_array_equal(b - a, np.ones_like(cube))
    np.save(tmp_path / "q.npy", np.stack([cube, cube + 2], -1))
    a, b = read_pair(tmp_path / "q.npy")
    np.testing.assert_array_equal(b - a, np.full_like(cube, 2))
    with pytest.raises(InputError, match="4D file"):
        read_cube(tmp_path / "p.npy")
    with pytest.raises(InputError, match="must be 4D"):
        read_pair(tmp_path / "c.npy")


def test_nan_and_unreadable_inputs(tmp_path, cube):
    bad = cube.copy()
    bad[1, 2, 0] = np.nan
    np.save(tmp_path / "n.npy", bad)
    with pytest.raises(InputError, match=r"NaN/inf.*\(1, 2, 0\)"):
        read_cube(tmp_path / "n.npy")
    (tmp_path / "junk.npy").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read"):
        read_cube(tmp_path / "junk.npy")
    (tmp_path / "junk.mat").write_bytes(b"garbage" * 30)
    with pytest.raises(InputError, match="junk.mat"):
        read_cube(tmp_path / "junk.mat")
    (tmp_path / "x.xyz").write_bytes(b"1")
    with pytest.raises(InputError, match="unknown hyperspectral format"):
        read_cube(tmp_path / "x.xyz")
    with pytest.raises(FileNotFoundError):
        read_cube(tmp_path / "missing.npy")


# ---------------------------------------------------------------- labels
def test_change_map_formats(tmp_path):
    from PIL import Image

    m = np.array([[0, 1, 255], [1, 0, 0]], np.uint8)
    np.save(tmp_path / "m.npy", m)
    Image.fromarray(m).save(tmp_path / "m.png")
    Image.fromarray(m).save(tmp_path / "m.bmp")
    f = m.astype(np.float32)
    f[0, 2] = np.nan
    np.save(tmp_path / "f.npy", f)
    for name in ("m.npy", "m.png", "m.bmp", "f.npy"):
        np.testing.assert_array_equal(read_change_map(tmp_path / name, (2, 3)), m)
    with pytest.raises(InputError, match=r"2x3 \(H x W\) but the scene is 3x3"):
        read_change_map(tmp_path / "m.png", (3, 3))
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).save(tmp_path / "w.png")
    with pytest.raises(InputError, match="only unchanged"):
        check_labels(read_change_map(tmp_path / "w.png"))
    np.save(tmp_path / "b.npy", np.array([[0, 2]]))
    with pytest.raises(InputError, match="found 2"):
        read_change_map(tmp_path / "b.npy")


def test_palette_masks_are_read_by_index_not_colour(tmp_path):
    """As docs/change.md says: a palette label map is read by index (0 unchanged, 1 changed)
    whatever colours its palette shows. A palette mask of members (``--changed``) whose index 0
    shows white and index 1 black marked the black pixels as changed, the opposite of what it
    shows, without a word: refused, naming the colours; with index 0 black it is read by index."""
    from PIL import Image

    idx = np.zeros((3, 4), np.uint8)
    idx[1, 1:3] = 1
    im = Image.fromarray(idx, mode="P")
    im.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    im.save(tmp_path / "changed.png")
    np.testing.assert_array_equal(read_change_map(tmp_path / "changed.png", (3, 4)), idx)
    for changed, unchanged in ((tmp_path / "changed.png", None), (None, tmp_path / "changed.png")):
        with pytest.raises(InputError, match=r"^--(un)?changed .*changed.png: its palette shows index 0 as "
                                             r"\(255, 255, 255\) and index 1 black"):
            labels_from_masks(changed, unchanged, (3, 4))
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black, 1 red
    im.save(tmp_path / "red.png")
    np.testing.assert_array_equal(labels_from_masks(tmp_path / "red.png", None, (3, 4)), idx)


def test_a_label_image_of_several_images_is_refused(tmp_path):
    """An animated PNG whose second frame marks the change: Pillow reads the first alone, which
    read as 'nothing changed'."""
    from PIL import Image

    frames = [Image.fromarray(np.zeros((3, 4), np.uint8)), Image.fromarray(np.eye(3, 4, dtype=np.uint8))]
    frames[0].save(tmp_path / "changed.png", save_all=True, append_images=frames[1:])
    for read in (lambda p: labels_from_masks(p, None, (3, 4)), lambda p: read_change_map(p, (3, 4))):
        with pytest.raises(InputError, match=r"label image .*changed.png holds 2 images \(pages or animation "
                                             r"frames\), of which only the first would be read"):
            read(tmp_path / "changed.png")


def test_nan_in_a_full_changed_mask_is_unlabelled(tmp_path):
    """--changed alone is a full map; its NaN pixels (the label maps' 'unlabelled') were read
    as unchanged training pixels."""
    m = np.array([[0, 1, np.nan], [np.nan, 0, 2]])
    np.save(tmp_path / "changed.npy", m)
    np.testing.assert_array_equal(labels_from_masks(tmp_path / "changed.npy", None, (2, 3)),
                                  [[0, 1, IGNORE], [IGNORE, 0, 1]])


def test_masks_partial_and_full(tmp_path):
    from PIL import Image

    ch = np.zeros((3, 4), np.uint8)
    un = np.zeros((3, 4), np.uint8)
    ch[0, :2] = 255
    un[2, :] = 255
    Image.fromarray(ch).save(tmp_path / "change.bmp")
    Image.fromarray(un).save(tmp_path / "unchanged.bmp")
    lab = labels_from_masks(tmp_path / "change.bmp", tmp_path / "unchanged.bmp", (3, 4))
    expect = np.full((3, 4), IGNORE, np.uint8)
    expect[0, :2] = 1
    expect[2, :] = 0
    np.testing.assert_array_equal(lab, expect)
    assert check_labels(lab) == {"unchanged": 4, "changed": 2}
    full = labels_from_masks(tmp_path / "change.bmp", None)
    np.testing.assert_array_equal(full, (ch > 0).astype(np.uint8))
    un[0, 0] = 255
    Image.fromarray(un).save(tmp_path / "unchanged.bmp")
    with pytest.raises(InputError, match="both"):
        labels_from_masks(tmp_path / "change.bmp", tmp_path / "unchanged.bmp")
    with pytest.raises(InputError, match="no labelled pixels"):
        check_labels(np.full((2, 2), IGNORE, np.uint8))


def test_sample_labels_stratified_seeded():
    rng = np.random.default_rng(0)
    full = (rng.random((50, 60)) < 0.2).astype(np.uint8)
    full[:5] = IGNORE
    tr, ho = sample_labels(full, 0.1, seed=3)
    tr2, _ = sample_labels(full, 0.1, seed=3)
    np.testing.assert_array_equal(tr, tr2)
    for c in (0, 1):
        n = int((full == c).sum())
        assert int((tr == c).sum()) == round(0.1 * n)
    # a partition of the labelled pixels, each keeping its label
    assert not ((tr != IGNORE) & (ho != IGNORE)).any()
    both = np.where(tr != IGNORE, tr, ho)
    np.testing.assert_array_equal(both, full)
    assert not np.array_equal(sample_labels(full, 0.1, seed=4)[0], tr)


# ---------------------------------------------------------------- generator
def test_generator_ground_truth_consistent():
    s = make_bitemporal_scene(48, 40, 16, seed=5, field_size=12)
    assert s.before.shape == s.after.shape == (48, 40, 16) and s.before.dtype == np.float32
    assert s.change.shape == (48, 40) and set(np.unique(s.change)) <= {0, 1}
    np.testing.assert_allclose(s.abundance_before.sum(-1), 1, atol=1e-5)
    np.testing.assert_allclose(s.abundance_after.sum(-1), 1, atol=1e-5)
    # truth = dominant cover changed (half L1 abundance distance >= 0.5)
    d = 0.5 * np.abs(s.abundance_after - s.abundance_before).sum(-1)
    np.testing.assert_array_equal(s.change, (d >= 0.5).astype(np.uint8))
    assert 0.05 < s.change.mean() < 0.6
    # every event changes pixels; a centre pivot's centre is changed
    kinds = {e["kind"] for e in s.events}
    assert kinds == {"centre_pivot", "crop_change"}
    for e in s.events:
        if e["kind"] == "centre_pivot":
            cy, cx = (int(round(v)) for v in e["centre"])
            assert s.change[min(cy, 47), min(cx, 39)] == 1
    # the spectra differ where nothing changed too (phenology/illumination): not trivial
    assert np.abs(s.after - s.before)[s.change == 0].mean() > 0.005
    # seeded
    np.testing.assert_array_equal(make_bitemporal_scene(48, 40, 16, seed=5, field_size=12).after, s.after)


# ---------------------------------------------------------------- real data (skipped when absent)
@pytest.mark.skipif(not (DATA / "landsat_cd_taizhou").is_dir(), reason="shared data not present")
def test_real_landsat_envi():
    d = DATA / "landsat_cd_taizhou" / "Taizhou"
    a = read_cube(d / "2000TM")
    b = read_cube(d / "2003TM.HDR")
    assert a.shape == b.shape == (400, 400, 6)
    raw = np.fromfile(d / "2000TM", np.uint8).reshape(6, 400, 400)
    np.testing.assert_array_equal(a, raw.transpose(1, 2, 0))
    lab = labels_from_masks(d / "change.bmp", d / "unchanged.bmp", (400, 400))
    assert check_labels(lab) == {"unchanged": 17163, "changed": 4227}


@pytest.mark.skipif(not (DATA / "hsi_unmixing_samson_jasper").is_dir(), reason="shared data not present")
def test_real_unmixing_mat():
    c = read_cube(DATA / "hsi_unmixing_samson_jasper" / "Samson.mat", key="Y")
    assert c.shape == (95, 95, 156)


def test_compressed_planar_tiff_is_staged_by_rows_of_its_pages(tmp_path, cube, monkeypatch):
    """A compressed band-first TIFF is copied in its storage order: band by band, whole rows
    (it was copied in column boxes, each decoding every strip of its band: 33.5 s instead of
    20.7 s for 3x8000x8000 uint16)."""
    tifffile = pytest.importorskip("tifffile")
    import fhcnn.data.lazy.copies as copies
    from fhcnn.data.hyperspectral import open_cube

    tifffile.imwrite(tmp_path / "c.tif", np.moveaxis(cube, -1, 0), planarconfig="separate",
                     photometric="minisblack", compression="zlib")
    boxes, copy = [], copies.copy_to_zarr

    class Seen:
        def __init__(self, a):
            self.a, self.shape, self.dtype, self.ndim = a, a.shape, a.dtype, a.ndim

        def __getitem__(self, key):
            boxes.append(key)
            return self.a[key]

    def two_rows(a, *args, **kw):
        return copy(Seen(a), *args, **{**kw, "max_bytes": 2 * 7 * 4})

    monkeypatch.setattr(copies, "copy_to_zarr", two_rows)  # where StagedCopy reads it
    opened = open_cube(tmp_path / "c.tif")
    np.testing.assert_array_equal(np.asarray(opened), cube)
    w = cube.shape[1]
    assert len(boxes) > 3 and all(b[1] == slice(0, w) for b in boxes)  # (H, W, B): whole rows
    assert [b[2].start for b in boxes] == sorted(b[2].start for b in boxes)  # band by band
