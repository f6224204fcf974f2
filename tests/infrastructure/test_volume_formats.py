"""Volume formats (fhcnn.data.volumes): every format read by window equals the numpy truth,
geometry survives a prediction round trip, every refusal is one InputError line, streaming
passes equal whole-array numpy, and opening never reads a whole volume."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhcnn import atomic
from fhcnn.data.lazy import Unmapped
from fhcnn.data.volumes import (
    AxisPick,
    iter_slabs,
    open_images,
    open_label_volume,
    open_volume,
    prediction_sink,
    resolve_axes,
    split_spec,
    stream_stats,
    summarize_labels,
)
from fhcnn.data.volumes.grid import check_same_grid
from fhcnn.errors import InputError

nib = pytest.importorskip("nibabel")
tifffile = pytest.importorskip("tifffile")
zarr = pytest.importorskip("zarr")
h5py = pytest.importorskip("h5py")
segyio = pytest.importorskip("segyio")

SHAPE = (13, 17, 11)


def truth(shape=SHAPE, dtype=np.int16, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == bool:
        return rng.random(shape) > 0.5
    if np.dtype(dtype).kind == "f":
        return rng.normal(10, 3, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 1000), shape, endpoint=True).astype(dtype)


def windows(shape, n=12, seed=1):
    """The whole volume, one voxel at each corner, single slices along each axis, and random
    boxes (every one in bounds, step 1)."""
    rng = np.random.default_rng(seed)
    out = [tuple(slice(0, s) for s in shape), (slice(0, 1),) * 3,
           tuple(slice(s - 1, s) for s in shape)]
    for a in range(3):
        out.append(tuple(slice(shape[a] // 2, shape[a] // 2 + 1) if b == a else slice(0, shape[b])
                         for b in range(3)))
    for _ in range(n):
        lo = [int(rng.integers(0, s)) for s in shape]
        out.append(tuple(slice(l, int(rng.integers(l + 1, s + 1))) for l, s in zip(lo, shape)))
    return out


def assert_windows(channel, ref):
    assert tuple(channel.shape) == ref.shape
    assert np.dtype(channel.dtype) == ref.dtype
    for box in windows(ref.shape):
        got = channel[box]
        assert got.shape == ref[box].shape, box
        np.testing.assert_array_equal(got, ref[box], err_msg=str(box))


def refusal(fn, *args, **kw) -> str:
    with pytest.raises(InputError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def oblique_affine(zooms=(0.8, 1.2, 3.0), angle=0.3):
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.diag([-1.0, 1.0, 1.0])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(zooms)
    aff[:3, 3] = [12.5, -30.0, 7.25]
    return aff


# ---------------------------------------------------------------------------------------- NIfTI

@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_nifti_windows_and_geometry(tmp_path, name):
    a = truth()
    aff = oblique_affine()
    img = nib.Nifti1Image(a, aff)
    nib.save(img, tmp_path / name)
    v = open_volume(str(tmp_path / name))
    assert v.format == "nifti" and len(v.channels) == 1
    assert_windows(v.channels[0], a)
    assert v.compressed == name.endswith(".gz") and v.slab_axis == 2
    np.testing.assert_allclose(v.geometry.affine, aff, rtol=0, atol=1e-6)
    np.testing.assert_allclose(v.geometry.spacing, (0.8, 1.2, 3.0), rtol=1e-6)
    assert v.geometry.axis_names == tuple(nib.aff2axcodes(aff))
    assert v.geometry.nifti_header is not None and len(v.geometry.nifti_header) == 348


def test_nifti_scaled_values_come_back_scaled(tmp_path):
    a = truth(dtype=np.int16)
    img = nib.Nifti1Image(a, np.eye(4))
    img.header.set_slope_inter(0.5, -3.0)
    nib.save(img, tmp_path / "s.nii")
    v = open_volume(str(tmp_path / "s.nii"))
    ref = np.asarray(nib.load(tmp_path / "s.nii").get_fdata(dtype=np.float64))
    for box in windows(a.shape):
        np.testing.assert_allclose(v.channels[0][box], ref[box])
    assert np.dtype(v.dtype).kind == "f"


def test_nifti_fourth_and_fifth_dims_are_channels(tmp_path):
    a = truth((9, 10, 11, 3), np.float32)
    nib.save(nib.Nifti1Image(a, oblique_affine()), tmp_path / "c4.nii.gz")
    nib.save(nib.Nifti1Image(a[:, :, :, None, :], np.eye(4)), tmp_path / "c5.nii")
    for name in ("c4.nii.gz", "c5.nii"):
        v = open_volume(str(tmp_path / name))
        assert len(v.channels) == 3 and v.shape == (9, 10, 11)
        for c in range(3):
            assert_windows(v.channels[c], a[..., c])


# ---------------------------------------------------------------------------------------- TIFF

def test_tiff_stack_memory_mapped(tmp_path):
    a = truth(dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", a)
    v = open_volume(str(tmp_path / "s.tif"))
    assert v.format == "tiff" and not v.compressed
    assert isinstance(v.channels[0], Unmapped) and isinstance(v.channels[0].array, np.memmap)
    assert_windows(v.channels[0], a)


def test_tiff_compressed_tiled_stack(tmp_path):
    a = truth((6, 40, 36), np.float32)
    tifffile.imwrite(tmp_path / "c.tiff", a, compression="zlib", tile=(16, 16))
    v = open_volume(str(tmp_path / "c.tiff"))
    assert v.compressed
    assert_windows(v.channels[0], a)


def test_tiff_compressed_pages_read_page_by_page_without_zarr3(tmp_path, monkeypatch):
    from fhcnn.data.volumes import tiff

    monkeypatch.setattr(tiff, "_zarr_view", lambda series: None)  # as with zarr 2 (Python 3.10)
    a = truth((5, 3, 20, 18), np.uint16)  # Z C Y X
    tifffile.imwrite(tmp_path / "h.tif", a, imagej=True, compression="zlib", metadata={"axes": "ZCYX"})
    v = open_volume(str(tmp_path / "h.tif"))
    assert v.compressed and len(v.channels) == 3
    assert isinstance(v.channels[0].array.array, tiff.TiffPages)  # AxisPick(Decoded(TiffPages))
    for c in range(3):
        assert_windows(v.channels[c], a[:, c])
    rgb = truth((4, 10, 12, 3), np.uint8)  # pages of RGB samples: S is the channel axis
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb", compression="zlib")
    v = open_volume(str(tmp_path / "rgb.tif"))
    assert len(v.channels) == 3
    for c in range(3):
        assert_windows(v.channels[c], rgb[..., c])


def test_tiff_imagej_hyperstack_channels_and_spacing(tmp_path):
    a = truth((7, 2, 20, 18), np.uint8)  # Z C Y X
    tifffile.imwrite(tmp_path / "h.tif", a, imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                     metadata={"axes": "ZCYX", "spacing": 2.0, "unit": "um"})
    v = open_volume(str(tmp_path / "h.tif"))
    assert len(v.channels) == 2 and v.shape == (7, 20, 18)
    for c in range(2):
        assert_windows(v.channels[c], a[:, c])
    assert v.geometry.axis_names == ("Z", "Y", "X")
    np.testing.assert_allclose(v.geometry.spacing, (2.0, 0.5, 0.25), rtol=1e-6)


def test_a_tiff_of_channels_of_one_plane_is_refused_saying_how_to_save_slices(tmp_path):
    """tifffile writes a 3D array with imagej=True and no axes as 'CYX' (ImageJ opens it as
    channels): refused, but the line said only '2 axes longer than 1 besides the channel axis'.
    Channels of RGB planes ('CYXS') were read as a volume (Y, X, 3), the samples a spatial axis."""
    tifffile.imwrite(tmp_path / "c.tif", truth((6, 12, 14), np.uint16), imagej=True)
    msg = refusal(open_volume, str(tmp_path / "c.tif"))
    assert "'CYX'" in msg and "6 channels of one 2D image" in msg and "metadata={'axes': 'ZYX'}" in msg, msg
    from fhcnn.data.volumes.tiff import open_tiff  # fhcnn change reads it: 6 bands of one date

    assert open_tiff(tmp_path / "c.tif", "c.tif").array.shape == (6, 12, 14)
    tifffile.imwrite(tmp_path / "rgb.tif", truth((4, 12, 14, 3), np.uint8), photometric="rgb",
                     metadata={"axes": "CYXS"})
    msg = refusal(open_volume, str(tmp_path / "rgb.tif"))
    assert "'CYXS'" in msg and "4 channels of one 2D image" in msg and "'ZYXS'" in msg, msg
    tifffile.imwrite(tmp_path / "z.tif", a := truth((6, 12, 14), np.uint16), imagej=True, metadata={"axes": "ZYX"})
    assert_windows(open_volume(str(tmp_path / "z.tif")).channels[0], a)  # as the line says: a volume


def test_ome_tiff_spacing(tmp_path):
    a = truth((5, 12, 14), np.uint16)
    tifffile.imwrite(tmp_path / "o.ome.tif", a, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 4.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5})
    v = open_volume(str(tmp_path / "o.ome.tif"))
    assert_windows(v.channels[0], a)
    np.testing.assert_allclose(v.geometry.spacing, (4.0, 0.5, 0.5))



def test_plain_tiff_resolution_tags_give_the_in_plane_spacing(tmp_path):
    """A plain TIFF stack (neither ImageJ nor OME) whose XResolution/YResolution are in pixels per
    centimetre or inch gave no spacing: anisotropic pixels were trained on as square, and the
    prediction carried no spacing. They now give the in-plane spacing, in micrometres, stated
    (compared with another file's); the slice spacing is not stated: the voxels are taken as
    cubes along Z (as without tags) and the run's log says so. Tags without a unit, or tifffile's
    default 1 pixel per unit, say nothing (nor do an image writer's 72 or 96 pixels an inch:
    test_an_image_writers_default_resolution_states_no_spacing)."""
    from fhcnn.apps.volume import VolumeConfig, load_volume_inputs
    from fhcnn.apps.volume.pipeline import resolve_spacing

    a = truth((5, 12, 14), np.uint16)
    tifffile.imwrite(tmp_path / "cm.tif", a, resolution=(10000 / 0.65, 10000 / 0.5), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "in.tif", a, resolution=(300, 300), resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "none.tif", a, resolution=(4, 2), resolutionunit="NONE")
    tifffile.imwrite(tmp_path / "plain.tif", a)
    v = open_volume(str(tmp_path / "cm.tif"))
    assert_windows(v.channels[0], a)
    g = v.geometry
    assert (g.spacing, g.spacing_stated, g.unit) == ((0.5, 0.5, 0.65), (False, True, True), "micrometer")
    g = open_volume(str(tmp_path / "in.tif")).geometry
    assert (g.spacing, g.spacing_stated, g.unit) == ((84.6666666667,) * 3, (False, True, True), "micrometer")
    assert g.spacing_note is None
    for name in ("none.tif", "plain.tif"):
        g = open_volume(str(tmp_path / name)).geometry
        assert (g.spacing, g.unit) == (None, None), name
    # stated in-plane: labels with other tags are another grid, labels without tags are not compared
    msg = refusal(check_same_grid, open_volume(str(tmp_path / "cm.tif")), open_volume(str(tmp_path / "in.tif")),
                  "labels")
    assert "voxel spacing (-, 84.6667, 84.6667) micrometer against (-, 0.5, 0.65) micrometer" in msg, msg
    check_same_grid(open_volume(str(tmp_path / "cm.tif")), open_volume(str(tmp_path / "plain.tif")), "labels")
    # what the run does with it, and says
    lab = np.full(a.shape, 255, np.uint8)
    lab[2] = np.arange(a[2].size).reshape(a[2].shape) % 2
    np.save(tmp_path / "lab.npy", lab)
    inputs = load_volume_inputs([str(tmp_path / "cm.tif")], str(tmp_path / "lab.npy"))
    spacing, source = resolve_spacing(VolumeConfig(), inputs)
    assert spacing == (0.5, 0.5, 0.65)
    assert source == ("the tiff header, in micrometer; it states none along D: taken as 0.5, unknown "
                      "(--set volume.spacing=D,H,W gives it)")


def test_an_image_writers_default_resolution_states_no_spacing(tmp_path):
    """A plain TIFF at 72 or 96 pixels an inch (what Photoshop, GIMP, Pillow or Windows write
    when told nothing) was read as 352.8 or 264.6 micrometre pixels: labels saved by such a tool
    were refused as another grid than their microscope image's, and an image's stack took that
    spacing (its slices too) into its outputs. Those values, in inch or without a unit, state
    no spacing now, and the file says what it holds for the run's log."""
    from fhcnn.apps.volume import VolumeConfig, load_volume_inputs
    from fhcnn.apps.volume.pipeline import resolve_spacing

    a = truth((5, 12, 14), np.uint16)
    tifffile.imwrite(tmp_path / "cm.tif", a, resolution=(10000 / 0.65, 10000 / 0.5), resolutionunit="CENTIMETER")
    for dpi, unit, words in ((72, "INCH", "72 pixels an inch"), (96, "INCH", "96 pixels an inch"),
                             (72, "NONE", "72 pixels per unit, no unit")):
        tifffile.imwrite(tmp_path / "d.tif", a, resolution=(dpi, dpi), resolutionunit=unit)
        g = open_volume(str(tmp_path / "d.tif")).geometry
        assert (g.spacing, g.unit) == (None, None), dpi
        assert g.spacing_note == f"its resolution tags hold {words}, an image writer's default, taken as no spacing"
        check_same_grid(open_volume(str(tmp_path / "cm.tif")), open_volume(str(tmp_path / "d.tif")), "labels")
    # the run: a 72-dpi image is taken as isotropic, and its spacing line says why
    tifffile.imwrite(tmp_path / "d.tif", a, resolution=(72, 72), resolutionunit="INCH")
    lab = np.full(a.shape, 255, np.uint8)
    lab[2] = np.arange(a[2].size).reshape(a[2].shape) % 2
    np.save(tmp_path / "lab.npy", lab)
    inputs = load_volume_inputs([str(tmp_path / "d.tif")], str(tmp_path / "lab.npy"))
    assert resolve_spacing(VolumeConfig(), inputs) == (None, "none in tiff (its resolution tags hold 72 pixels an "
                                                             "inch, an image writer's default, taken as no spacing): "
                                                             "taken as isotropic")
    assert inputs.notes == []
    # other resolutions are read as stated: 300 an inch, 72 a centimetre, 96 an inch in X only
    for res, unit, want in (((300, 300), "INCH", 84.6666666667), ((72, 72), "CENTIMETER", 138.888888889),
                            ((96, 72), "INCH", None)):
        tifffile.imwrite(tmp_path / "s.tif", a, resolution=res, resolutionunit=unit)
        g = open_volume(str(tmp_path / "s.tif")).geometry
        assert g.spacing_stated == (False, True, True) and g.spacing_note is None, res
        assert g.spacing[1:] == pytest.approx((25400 / res[1], 25400 / res[0])) if want is None \
            else g.spacing == pytest.approx((want,) * 3), res


def test_imagej_resolution_tags_read_as_imagej_reads_them(tmp_path):
    """An ImageJ stack at 72 pixels an inch (ImageJ's description kept, the tags set by an image
    editor or a writer's default) was read as pixels of 1/72 of the description's unit: beside
    its 2 um slices, 144 times finer than ImageJ shows them (1 um), and the run scaled its
    windows to that. ImageJ reads 72 pixels an inch as no pixel size: so does fhcnn, and says
    so. Without a unit in the description ImageJ takes the tags' unit (inch), as fhcnn does."""
    from fhcnn.apps.volume import VolumeConfig, load_volume_inputs
    from fhcnn.apps.volume.pipeline import resolve_spacing

    a = truth((5, 12, 14), np.uint16)
    meta = {"axes": "ZYX", "spacing": 2.0, "unit": "um"}
    tifffile.imwrite(tmp_path / "d.tif", a, imagej=True, resolution=(72, 72), resolutionunit="INCH", metadata=meta)
    v = open_volume(str(tmp_path / "d.tif"))
    assert_windows(v.channels[0], a)
    g = v.geometry
    assert (g.spacing, g.spacing_stated, g.unit) == ((2.0, 1.0, 1.0), (True, False, False), "um")
    note = "its resolution tags hold 72 pixels an inch, which ImageJ reads as no pixel size: no in-plane spacing"
    assert g.spacing_note == note
    # beside an image at 0.5 um in-plane: its slices are compared, its pixels are not
    tifffile.imwrite(tmp_path / "img.tif", a, imagej=True, resolution=(2, 2), metadata=meta)
    check_same_grid(open_volume(str(tmp_path / "img.tif")), open_volume(str(tmp_path / "d.tif")), "labels")
    tifffile.imwrite(tmp_path / "z3.tif", a, imagej=True, resolution=(72, 72), resolutionunit="INCH",
                     metadata={**meta, "spacing": 3.0})
    msg = refusal(check_same_grid, open_volume(str(tmp_path / "img.tif")), open_volume(str(tmp_path / "z3.tif")),
                  "labels")
    assert "voxel spacing (3, -, -) um against (2, 0.5, 0.5) um" in msg, msg
    # the run's spacing line says what it took and why
    lab = np.full(a.shape, 255, np.uint8)
    lab[2] = np.arange(a[2].size).reshape(a[2].shape) % 2
    np.save(tmp_path / "lab.npy", lab)
    inputs = load_volume_inputs([str(tmp_path / "d.tif")], str(tmp_path / "lab.npy"))
    assert resolve_spacing(VolumeConfig(), inputs) == (
        (2.0, 1.0, 1.0), f"the tiff header, in um; it states none along H, W: taken as 1, 1, unknown "
                         f"(--set volume.spacing=D,H,W gives it); {note}")
    # other resolutions in inch are ImageJ's calibration in inch, unless the description names a unit
    for res, meta_unit, want, unit in ((96, {}, 1 / 96, "inch"), (300, {"unit": "um"}, 1 / 300, "um")):
        tifffile.imwrite(tmp_path / "s.tif", a, imagej=True, resolution=(res, res), resolutionunit="INCH",
                         metadata={"axes": "ZYX", "spacing": 2.0, **meta_unit})
        g = open_volume(str(tmp_path / "s.tif")).geometry
        assert g.spacing == pytest.approx((2.0, want, want)) and g.unit == unit and g.spacing_note is None, res
        assert g.spacing_stated == (True, True, True), res


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_pyramidal_ome_tiff_reads_its_full_resolution(tmp_path, compression):
    """A pyramidal OME-TIFF (reduced levels in SubIFDs) was refused, compressed or not, with
    "'Group' object has no attribute 'shape'": tifffile's zarr store of a series with levels is
    a group of them."""
    a = truth((5, 32, 48), np.uint16)
    with tifffile.TiffWriter(tmp_path / "p.ome.tif") as t:
        t.write(a, subifds=1, tile=(16, 16), compression=compression,
                metadata={"axes": "ZYX", "PhysicalSizeZ": 4.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5})
        t.write(a[:, ::2, ::2], subfiletype=1, tile=(16, 16), compression=compression)
    v = open_volume(str(tmp_path / "p.ome.tif"))
    assert v.shape == a.shape
    assert_windows(v.channels[0], a)
    np.testing.assert_allclose(v.geometry.spacing, (4.0, 0.5, 0.5))



def test_spacing_in_different_length_units_is_converted_to_one(tmp_path):
    """OME gives each axis's unit: X and Y in nm and Z in micrometres were taken as they stand,
    so Z counted 1000 times finer than it is (spacing (1, 300, 300)): the physical windows then
    shrank Y and X to almost nothing, and the prediction recorded that spacing."""
    a = truth((5, 12, 14), np.uint16)
    tifffile.imwrite(tmp_path / "u.ome.tif", a, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 1.5, "PhysicalSizeZUnit": "\u00b5m", "PhysicalSizeY": 300,
        "PhysicalSizeYUnit": "nm", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm"})
    v = open_volume(str(tmp_path / "u.ome.tif"))
    assert v.geometry.spacing == (1500.0, 300.0, 250.0)
    assert v.geometry.attrs["ome_units"] == {"X": "nm", "Y": "nm", "Z": "nm"}
    tifffile.imwrite(tmp_path / "d.ome.tif", a, ome=True,  # no unit: OME's micrometre, unchanged
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5})
    v = open_volume(str(tmp_path / "d.ome.tif"))
    assert v.geometry.spacing == (2.0, 0.5, 0.5) and "ome_units" not in v.geometry.attrs
    g = zarr.open_group(str(tmp_path / "u.zarr"), mode="w")
    g.create_array("0", shape=(2, *a.shape), dtype="u2")[:] = np.stack([a, a])
    g.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "c", "type": "channel"}, {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "nanometer"}, {"name": "x", "type": "space", "unit": "nanometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 2.0, 300, 300]}]}]}]
    v = open_volume(str(tmp_path / "u.zarr"))
    assert len(v.channels) == 2 and v.geometry.spacing == (2000.0, 300.0, 300.0)
    assert v.geometry.attrs["spacing_unit"] == "nanometer"


# ---------------------------------------------------------------------------------------- zarr

def test_zarr_group_path_attrs_and_names(tmp_path):
    a = truth(dtype=np.float32)
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    arr = g.create_group("a/b").create_array("vol", shape=a.shape, chunks=(5, 6, 4), dtype=a.dtype,
                                               dimension_names=("z", "y", "x"))
    arr[:] = a
    arr.attrs.update({"spacing": [2.0, 1.0, 0.5], "origin": "scanner 3"})
    g.create_array("small", shape=(4, 4), dtype="u1")  # a 2D array beside it does not count
    for spec in (f"{tmp_path}/g.zarr:a/b/vol", f"{tmp_path}/g.zarr"):
        v = open_volume(spec)
        assert v.format == "zarr" and not v.compressed
        assert_windows(v.channels[0], a)
        assert v.geometry.attrs["origin"] == "scanner 3"
        assert v.geometry.spacing == (2.0, 1.0, 0.5) and v.geometry.axis_names == ("z", "y", "x")


def test_zarr_v2_array_and_ome_zarr_channels(tmp_path):
    a = truth((3, 9, 10, 11), np.uint16)
    z2 = zarr.open_array(str(tmp_path / "v2.zarr"), mode="w", shape=a.shape, chunks=(1, 4, 4, 4),
                         dtype=a.dtype, zarr_format=2)
    z2[:] = a
    z2.attrs["_ARRAY_DIMENSIONS"] = ["c", "z", "y", "x"]
    v = open_volume(str(tmp_path / "v2.zarr"))
    assert len(v.channels) == 3
    for c in range(3):
        assert_windows(v.channels[c], a[c])
    g = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    g.create_array("0", shape=(9, 10, 11, 2), chunks=(4, 4, 4, 2), dtype="f4")[:] = np.moveaxis(a[:2], 0, -1)
    g.create_array("1", shape=(5, 5, 6, 2), dtype="f4")
    g.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "z", "type": "space"},
                                                          {"name": "y", "type": "space"},
                                                          {"name": "x", "type": "space"},
                                                          {"name": "c", "type": "channel"}],
                               "datasets": [{"path": "0", "coordinateTransformations": [
                                   {"type": "scale", "scale": [3.0, 0.5, 0.5, 1.0]}]},
                                   {"path": "1"}]}]
    v = open_volume(str(tmp_path / "ome.zarr"))
    assert len(v.channels) == 2 and v.geometry.spacing == (3.0, 0.5, 0.5)
    assert_windows(v.channels[1], a[1].astype(np.float32))


def test_ome_zarr_scale_of_the_whole_multiscale_applies_after_the_datasets(tmp_path):
    """NGFF 0.4/0.5: a multiscale's own coordinateTransformations apply after each dataset's. Its
    scale was ignored: the volume read with spacing (1, 1, 1) instead of (4, 0.5, 0.5), and
    prediction.zarr recorded that wrong spacing."""
    axes = [{"name": n, "type": "space"} for n in "zyx"]
    for fmt, key in ((2, None), (3, "ome")):
        g = zarr.open_group(str(tmp_path / f"g{fmt}.zarr"), mode="w", zarr_format=fmt)
        g.create_array("s0", shape=(9, 10, 11), dtype="f4")[:] = truth((9, 10, 11), np.float32)
        g.create_array("s1", shape=(5, 5, 6), dtype="f4")
        ms = [{"version": "0.4", "axes": axes,
               "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 2]}]},
                            {"path": "s1", "coordinateTransformations": [{"type": "scale", "scale": [2, 2, 4]}]}],
               "coordinateTransformations": [{"type": "scale", "scale": [4.0, 0.5, 0.25]}]}]
        g.attrs.update({"multiscales": ms} if key is None else {key: {"version": "0.5", "multiscales": ms}})
        for spec in (f"g{fmt}.zarr", f"g{fmt}.zarr:s0"):
            assert open_volume(str(tmp_path / spec)).geometry.spacing == (4.0, 0.5, 0.5), spec
        assert open_volume(str(tmp_path / f"g{fmt}.zarr:s1")).geometry.spacing == (8.0, 1.0, 1.0)


# ---------------------------------------------------------------------------------------- HDF5

def test_hdf5_dataset_path_attrs_and_spacing(tmp_path):
    a = truth(dtype=np.float64)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        d = f.create_dataset("grp/data", data=a, chunks=(4, 8, 8), compression="gzip")
        d.attrs["element_size_um"] = np.array([3.0, 0.7, 0.7])
        d.attrs["note"] = b"bytes are decoded"
    for spec in (f"{tmp_path}/x.h5:grp/data", f"{tmp_path}/x.h5:/grp/data", f"{tmp_path}/x.h5"):
        v = open_volume(spec)
        assert v.format == "hdf5" and not v.compressed
        assert_windows(v.channels[0], a)
        assert v.geometry.spacing == (3.0, 0.7, 0.7)
        assert v.geometry.attrs["note"] == "bytes are decoded"
        json.dumps(v.geometry.attrs)


def test_hdf5_dimension_labels_name_the_axes(tmp_path):
    """An HDF5 dimension labelled c holds the channels (docs/volume-formats.md, rule 2): the
    labels were not read, so a (4, 12, 14, 9) dataset labelled z, y, x, c was taken by the shape
    rule as 4 channels of (12, 14, 9)."""
    a = truth((4, 12, 14, 9), np.float32)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        d = f.create_dataset("v", data=a)
        for i, n in enumerate("zyxc"):
            d.dims[i].label = n
        d = f.create_dataset("t", data=a)  # named, no channel: not guessed
        for i, n in enumerate("tzyx"):
            d.dims[i].label = n
    v = open_volume(f"{tmp_path}/x.h5:v")
    assert len(v.channels) == 9 and v.shape == (4, 12, 14) and v.geometry.axis_names == ("z", "y", "x")
    assert_windows(v.channels[8], a[..., 8])
    assert "--channel-axis" in refusal(open_volume, f"{tmp_path}/x.h5:t")


def test_hdf5_dimension_scales_are_not_copied_as_attributes(tmp_path):
    """Dimension scales attach object references to the dataset (DIMENSION_LIST): nothing a
    prediction could use (they reached prediction.zarr as [[null], [null], [null]]); the
    dimension labels, plain strings, stay."""
    a = truth()
    with h5py.File(tmp_path / "x.h5", "w") as f:
        d = f.create_dataset("v", data=a)
        for i, n in enumerate(a.shape):
            f[f"axis{i}"] = np.arange(n, dtype=np.float64)
            f[f"axis{i}"].make_scale(f"axis{i}")
            d.dims[i].attach_scale(f[f"axis{i}"])
            d.dims[i].label = "zyx"[i]
    v = open_volume(f"{tmp_path}/x.h5:v")
    assert "DIMENSION_LIST" not in v.geometry.attrs and v.geometry.attrs["DIMENSION_LABELS"] == ["z", "y", "x"]
    json.dumps(v.geometry.attrs)


def test_hdf5_several_datasets_need_a_name(tmp_path):
    with h5py.File(tmp_path / "two.hdf5", "w") as f:
        f["a"] = np.zeros((4, 5, 6))
        f["b"] = np.zeros((4, 5, 6))
    msg = refusal(open_volume, str(tmp_path / "two.hdf5"))
    assert "2 datasets" in msg and "a, b" in msg and "two.hdf5:DATASET" in msg
    assert "no dataset 'c'" in refusal(open_volume, f"{tmp_path}/two.hdf5:c")


# ---------------------------------------------------------------------------------------- SEG-Y

def test_segy_cube_inline_sorted(tmp_path):
    a = truth((6, 7, 30), np.float32)
    segyio.tools.from_array3D(str(tmp_path / "c.sgy"), a, dt=2000)
    v = open_volume(str(tmp_path / "c.sgy"))
    assert v.format == "segy" and v.geometry.axis_names == ("inline", "crossline", "sample")
    ref = segyio.tools.cube(str(tmp_path / "c.sgy"))  # IBM floats: segyio's own read is the truth
    np.testing.assert_allclose(ref, a, rtol=1e-6)
    assert_windows(v.channels[0], ref)
    assert v.geometry.attrs["sample_interval"] == 2000.0 and v.geometry.attrs["inlines"][:2] == [1, 6]


def _segy_crossline_sorted(path, a):
    spec = segyio.spec()
    spec.sorting = segyio.TraceSortingFormat.CROSSLINE_SORTING
    spec.format = 5  # IEEE float
    spec.samples = list(range(a.shape[2]))
    spec.ilines = list(range(10, 10 + 2 * a.shape[0], 2))
    spec.xlines = list(range(100, 100 + a.shape[1]))
    with segyio.create(str(path), spec) as f:
        t = 0
        for j, xl in enumerate(spec.xlines):
            for i, il in enumerate(spec.ilines):
                f.header[t] = {segyio.su.iline: il, segyio.su.xline: xl, segyio.su.offset: 1}
                f.trace[t] = a[i, j]
                t += 1
        f.bin.update(tsort=segyio.TraceSortingFormat.CROSSLINE_SORTING)


def test_segy_cube_crossline_sorted(tmp_path):
    a = truth((5, 8, 21), np.float32)
    _segy_crossline_sorted(tmp_path / "x.segy", a)
    v = open_volume(str(tmp_path / "x.segy"))
    assert v.slab_axis == 1 and v.geometry.attrs["inlines"] == [10, 18, 2]
    assert_windows(v.channels[0], a)
    cube = v.channels[0]
    for key in [(2, slice(3, 5), -1), (-1, 0, slice(None)), (Ellipsis, 4)]:
        np.testing.assert_array_equal(cube[key], a[key])
    with pytest.raises(IndexError):
        cube[5, 0, 0]


@pytest.mark.parametrize("fmt, dtype", [(5, np.float32), (3, np.int16)])
def test_segy_little_endian_cube_is_read_as_written(tmp_path, fmt, dtype):
    """segyio reads big-endian unless told otherwise: a little-endian cube (SEG-Y rev 2) was
    refused as 'trace count inconsistent with file size'. Its sample format code says its order."""
    a = truth((4, 6, 9), dtype)
    spec = segyio.spec()
    spec.sorting, spec.format, spec.endian = segyio.TraceSortingFormat.INLINE_SORTING, fmt, "little"
    spec.samples, spec.ilines, spec.xlines = list(range(a.shape[2])), [5, 6, 7, 8], list(range(20, 26))
    with segyio.create(str(tmp_path / "le.sgy"), spec) as f:
        for t, (il, xl) in enumerate((il, xl) for il in spec.ilines for xl in spec.xlines):
            f.header[t] = {segyio.su.iline: il, segyio.su.xline: xl, segyio.su.offset: 1}
            f.trace[t] = a[t // 6, t % 6]
        f.bin.update(tsort=segyio.TraceSortingFormat.INLINE_SORTING, hdt=4000)
    v = open_volume(str(tmp_path / "le.sgy"))
    assert_windows(v.channels[0], a)
    assert v.geometry.attrs["inlines"] == [5, 8, 1] and v.geometry.attrs["crosslines"] == [20, 25, 1]
    assert v.geometry.attrs["sample_interval"] == 4000.0


@pytest.mark.parametrize("scalar, sorting", [(-100, "inline"), (10, "crossline"), (0, "inline")])
def test_segy_corner_coordinates_are_scaled_by_the_coordinate_scalar(tmp_path, scalar, sorting):
    # the CDP X/Y (bytes 181/185) of voxels (0, 0), (0, -1), (-1, 0), scaled by bytes 71-72
    # (negative: divide, positive: multiply, 0: 1), with their line numbers; whatever the sorting
    a = truth((4, 6, 5), np.float32)
    spec = segyio.spec()
    spec.format, spec.samples = 5, list(range(a.shape[2]))
    spec.ilines, spec.xlines = [5, 6, 7, 8], list(range(20, 26))
    spec.sorting = getattr(segyio.TraceSortingFormat, f"{sorting.upper()}_SORTING")
    pairs = [(i, j) for i in range(4) for j in range(6)] if sorting == "inline" else \
        [(i, j) for j in range(6) for i in range(4)]
    for name, coords in (("xy.sgy", True), ("none.sgy", False)):
        with segyio.create(str(tmp_path / name), spec) as f:
            for t, (i, j) in enumerate(pairs):
                f.header[t] = {segyio.su.iline: spec.ilines[i], segyio.su.xline: spec.xlines[j],
                               segyio.su.scalco: scalar, segyio.su.cdpx: (70001 + 2500 * i) * coords,
                               segyio.su.cdpy: (-3 + 1250 * j) * coords}
                f.trace[t] = a[i, j]
            f.bin.update(tsort=spec.sorting)
    v = open_volume(str(tmp_path / "xy.sgy"))
    np.testing.assert_array_equal(v.channels[0][...], a)
    assert v.geometry.attrs["sorting"] == sorting
    assert v.geometry.attrs["corner_lines"] == [[5, 20], [5, 25], [8, 20]]
    want = [[70001, -3], [70001, -3 + 1250 * 5], [70001 + 2500 * 3, -3]]
    scaled = {-100: lambda w: w / 100, 10: lambda w: w * 10, 0: lambda w: w}[scalar]
    assert v.geometry.attrs["corner_xy"] == [[scaled(w) for w in p] for p in want]
    assert "corner_xy" not in open_volume(str(tmp_path / "none.sgy")).geometry.attrs  # 0, 0: states none


class _CountedTraces:
    """A segyio file whose ``trace.raw`` records how many traces each read asks for."""

    def __init__(self, f):
        self.f, self.reads = f, []
        self.trace = self

    @property
    def raw(self):
        return self

    def __getitem__(self, key):
        self.reads.append(len(range(*key.indices(self.f.tracecount))) if isinstance(key, slice) else 1)
        return self.f.trace.raw[key]


@pytest.mark.parametrize("sorting", ["inline", "crossline"])
def test_segy_box_of_few_samples_reads_traces_in_batches(tmp_path, monkeypatch, sorting):
    # segyio reads whole traces: a time slice through a cube (the figure's centre slice, a slab of
    # samples) read every trace of the box at once, the whole cube for a slice through every trace
    # (4 bytes a voxel). Now at most READ_BYTES of whole traces are held at a time.
    from fhcnn.data.volumes import segy

    a = truth((6, 7, 30), np.float32)
    path = tmp_path / "c.sgy"
    if sorting == "inline":
        segyio.tools.from_array3D(str(path), a, dt=2000)
        a = segyio.tools.cube(str(path))  # IBM floats: segyio's own read is the truth
    else:
        _segy_crossline_sorted(path, a)
    cube = open_volume(str(path)).channels[0]
    monkeypatch.setattr(segy, "READ_BYTES", 3 * 30 * 4, raising=False)  # three traces
    raw = cube.array  # the SegyCube inside its Decoded
    assert isinstance(raw, segy.SegyCube)
    counted = _CountedTraces(raw._file())
    raw._f = counted
    for key in [(slice(None), slice(None), 15), (slice(None), slice(None), slice(3, 5)),
                (slice(1, 5), slice(2, 7), slice(0, 30)), (2, slice(None), slice(None)), (slice(None), 3, 7)]:
        np.testing.assert_array_equal(cube[key], a[key])
    assert counted.reads and max(counted.reads) <= 3
    assert sum(counted.reads) >= 6 * 7  # the whole slice was read, three traces at a time


class _CountedHeaders:
    """A segyio file whose ``attributes(field)`` records how many trace headers each read asks for."""

    def __init__(self, f, reads):
        self.f, self.reads = f, reads

    def __getattr__(self, name):
        return getattr(self.f, name)

    def attributes(self, field):
        attrs, reads, n = self.f.attributes(field), self.reads, self.f.tracecount

        class _Read:
            def __getitem__(self, key):
                reads.append(len(range(*key.indices(n))) if isinstance(key, slice) else 1)
                return attrs[key]
        return _Read()


def test_segy_trace_order_check_reads_headers_in_blocks(tmp_path, monkeypatch):
    # the check of every trace's inline/crossline read all the headers at once (about 20 bytes a
    # trace held, growing with the cube's traces); now HEADER_BLOCK traces at a time, and a trace
    # out of order is still found, the first one named, all of them counted
    from fhcnn.data.volumes import segy

    shape = (6, 7, 10)
    a = truth(shape, np.float32)
    spec = segyio.spec()
    spec.format, spec.samples, spec.sorting = 5, list(range(shape[2])), segyio.TraceSortingFormat.INLINE_SORTING
    spec.ilines, spec.xlines = list(range(shape[0])), list(range(shape[1]))
    for name, bad in (("ok.sgy", None), ("bad.sgy", 3)):
        with segyio.create(str(tmp_path / name), spec) as f:
            t = 0
            for i in range(shape[0]):
                for j in (reversed(range(shape[1])) if i == bad else range(shape[1])):
                    f.header[t] = {segyio.su.iline: i, segyio.su.xline: j}
                    f.trace[t] = a[i, j]
                    t += 1
    reads = []
    real_open = segyio.open
    monkeypatch.setattr(segyio, "open", lambda *args, **kw: _CountedHeaders(real_open(*args, **kw), reads))
    monkeypatch.setattr(segy, "HEADER_BLOCK", 5, raising=False)
    v = open_volume(str(tmp_path / "ok.sgy"))
    np.testing.assert_array_equal(v.channels[0][...], a)
    assert reads and max(reads) <= 5 and sum(reads) == 2 * 42
    reads.clear()
    msg = refusal(open_volume, str(tmp_path / "bad.sgy"))
    assert "trace 21 is inline 3, crossline 6" in msg and "inline 3, crossline 0 there (6 traces out of order)" in msg
    assert max(reads) <= 5


# ---------------------------------------------------------------------------------------- npy

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64, bool])
def test_npy_any_dtype(tmp_path, dtype):
    a = truth(dtype=dtype)
    np.save(tmp_path / "a.npy", a)
    v = open_volume(str(tmp_path / "a.npy"))
    assert isinstance(v.channels[0], Unmapped) and isinstance(v.channels[0].array, np.memmap)
    assert_windows(v.channels[0], a)


def test_npy_fortran_order_streams_along_the_last_axis(tmp_path):
    a = np.asfortranarray(truth())
    np.save(tmp_path / "f.npy", a)
    v = open_volume(str(tmp_path / "f.npy"))
    assert v.slab_axis == 2
    assert_windows(v.channels[0], np.ascontiguousarray(a))


# ---------------------------------------------------------------------------------------- channels

@pytest.mark.parametrize("shape, axis", [((3, 9, 10, 11), 0), ((9, 10, 11, 2), 3), ((1, 9, 10, 11), None),
                                         ((9, 1, 10, 11, 1), None), ((8, 9, 9, 9), 0)])
def test_channel_axis_rule(shape, axis):
    c, spatial, fixed = resolve_axes(shape, "image x")
    assert c == axis
    assert [shape[s] for s in spatial] == [n for i, n in enumerate(shape) if i != axis and n > 1]
    assert all(shape[f] == 1 for f in fixed)


@pytest.mark.parametrize("shape, words", [
    ((3, 9, 10, 4), ["ambiguous", "(3, 9, 10, 4)", "--channel-axis"]),
    ((3, 5, 10, 11), ["ambiguous", "--channel-axis"]),
    ((9, 9, 9, 9), ["ambiguous"]),
    ((9, 10), ["2 axes longer than 1", "2D"]),
    ((9, 10, 1), ["2D"]),
    ((2, 3, 9, 10, 11), ["5 axes"]),
    ((0, 10, 10), ["empty"]),
    ((), ["a single value", "not a volume"]),  # an HDF5 scalar was called empty
])
def test_channel_axis_rule_refusals(shape, words):
    msg = refusal(resolve_axes, shape, "image x")
    assert all(w in msg for w in words), msg


def test_a_channel_axis_of_length_1_is_named_as_the_problem():
    """(t, c, z, y, x) = (1, 2, 9, 10, 11) with --channel-axis 0 (the length-1 t axis): the
    refusal asked for --channel-axis N, which the user had just given."""
    msg = refusal(resolve_axes, (1, 2, 9, 10, 11), "image x", channel_axis=0)
    assert "--channel-axis 0 names an axis of length 1" in msg, msg
    assert resolve_axes((1, 2, 9, 10, 11), "image x", channel_axis=1)[:2] == (1, (2, 3, 4))


def test_channel_axis_option_decides(tmp_path):
    a = truth((3, 5, 10, 11), np.float32)
    np.save(tmp_path / "a.npy", a)
    refusal(open_volume, str(tmp_path / "a.npy"))
    v = open_volume(str(tmp_path / "a.npy"), channel_axis=1)
    assert len(v.channels) == 5 and v.shape == (3, 10, 11)
    assert_windows(v.channels[4], a[:, 4])
    v = open_volume(str(tmp_path / "a.npy"), channel_axis=-4)
    assert len(v.channels) == 3
    assert "out of range" in refusal(open_volume, str(tmp_path / "a.npy"), channel_axis=4)
    v = open_volume(str(tmp_path / "a.npy"), channel_axis=1)
    assert isinstance(v.channels[0], AxisPick)


def test_nifti_volume_lies_in_its_first_three_dims(tmp_path):
    """A NIfTI file's affine and pixdim describe dims 1-3 (axes 0, 1, 2): --channel-axis naming
    one of them made the volume axes (1, 2, 3), read as isotropic, and its prediction.nii.gz
    carried the affine and voxel size of the other axes, exit 0."""
    a = truth((3, 9, 10, 11), np.float32)
    nib.save(nib.Nifti1Image(a, np.diag([0.5, 1.0, 2.0, 1.0])), tmp_path / "cfirst.nii")
    for axis in (0, 1, -4):
        msg = refusal(open_volume, str(tmp_path / "cfirst.nii"), channel_axis=axis)
        assert "axes (0, 1, 2)" in msg and "dim 4 or 5" in msg, msg
    nib.save(nib.Nifti1Image(a[:1], np.eye(4)), tmp_path / "one.nii")  # (1, 9, 10, 11)
    assert "axes (1, 2, 3)" in refusal(open_volume, str(tmp_path / "one.nii"), channel_axis=0)
    v = open_volume(str(tmp_path / "cfirst.nii"), channel_axis=3)  # dim 4 still holds channels
    assert len(v.channels) == 11 and v.shape == (3, 9, 10)


def test_named_axes_without_a_channel_are_not_guessed(tmp_path):
    a = truth((3, 9, 10, 11), np.uint8)  # T Z Y X: three time points, not three channels
    tifffile.imwrite(tmp_path / "t.tif", a, imagej=True, metadata={"axes": "TZYX"})
    msg = refusal(open_volume, str(tmp_path / "t.tif"))
    assert "('T', 'Z', 'Y', 'X')" in msg and "--channel-axis" in msg
    v = open_volume(str(tmp_path / "t.tif"), channel_axis=0)
    assert len(v.channels) == 3
    assert_windows(v.channels[2], a[2])
    np.save(tmp_path / "t.npy", a)  # the same shape without names: the shape rule reads channels
    assert len(open_volume(str(tmp_path / "t.npy")).channels) == 3


def test_open_images_channels_in_order_and_shapes_agree(tmp_path):
    a, b = truth(dtype=np.float32, seed=1), truth(dtype=np.int16, seed=2)
    both = truth((2, *SHAPE), np.uint8, seed=3)
    nib.save(nib.Nifti1Image(a, oblique_affine()), tmp_path / "a.nii.gz")
    np.save(tmp_path / "b.npy", b)
    np.save(tmp_path / "both.npy", both)
    channels, geom, opened = open_images([str(tmp_path / "a.nii.gz"), str(tmp_path / "b.npy"),
                                          str(tmp_path / "both.npy")])
    assert len(channels) == 4 and [v.format for v in opened] == ["nifti", "npy", "npy"]
    np.testing.assert_allclose(geom.affine, oblique_affine(), atol=1e-6)
    for ch, ref in zip(channels, [a, b, both[0], both[1]]):
        assert_windows(ch, ref)
    np.save(tmp_path / "c.npy", truth((13, 17, 12)))
    msg = refusal(open_images, [str(tmp_path / "b.npy"), str(tmp_path / "c.npy")])
    assert "(13, 17, 12)" in msg and "(13, 17, 11)" in msg and "c.npy" in msg and "b.npy" in msg


# ---------------------------------------------------------------------------------------- refusals

def _lying_files(d: Path) -> dict[str, str]:
    """Files whose headers promise more data than they hold."""
    a = truth(dtype=np.float32)
    nib.save(nib.Nifti1Image(a, np.eye(4)), d / "ok.nii")
    raw = (d / "ok.nii").read_bytes()
    (d / "short.nii").write_bytes(raw[:-100])
    with gzip.open(d / "short.nii.gz", "wb") as f:
        f.write(raw[:-100])
    with gzip.open(d / "ok.nii.gz", "wb") as f:
        f.write(raw)
    (d / "cut.nii.gz").write_bytes((d / "ok.nii.gz").read_bytes()[:-300])  # the gzip stream cut
    np.save(d / "ok.npy", a)
    (d / "short.npy").write_bytes((d / "ok.npy").read_bytes()[:-4])
    tifffile.imwrite(d / "ok.tif", a)
    (d / "short.tif").write_bytes((d / "ok.tif").read_bytes()[:6000])  # pixels cut
    segyio.tools.from_array3D(str(d / "ok.sgy"), truth((5, 6, 20), np.float32))
    sgy = (d / "ok.sgy").read_bytes()
    (d / "lost_traces.sgy").write_bytes(sgy[:-(240 + 80) * 4])  # four whole traces short
    (d / "cut_trace.sgy").write_bytes(sgy[:-10])
    return {"short.nii": "truncated", "short.nii.gz": "truncated", "cut.nii.gz": "damaged or truncated",
            "short.npy": "truncated",
            "short.tif": "truncated", "lost_traces.sgy": "not a regular 3D cube",
            "cut_trace.sgy": "cannot read"}


def test_lying_headers_are_refused(tmp_path):
    for name, words in _lying_files(tmp_path).items():
        msg = refusal(open_volume, str(tmp_path / name))
        assert words in msg and name in msg, msg


def test_bad_files_are_refused_in_one_line(tmp_path):
    (tmp_path / "x.abc").write_bytes(b"hello")
    (tmp_path / "garbage.h5").write_bytes(b"not hdf5 at all" * 10)
    (tmp_path / "garbage.nii").write_bytes(b"\x00" * 400)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain.zarr").mkdir()
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "cplx.npy", np.zeros((4, 5, 6), np.complex64))
    np.save(tmp_path / "flat.npy", np.zeros((40, 50)))
    np.save(tmp_path / "empty.npy", np.zeros((4, 0, 6)))
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w").create_array("vol", shape=(4, 5, 6), dtype="u1")
    cases = {
        "missing.nii.gz": "no such file", "x.abc": "unknown volume format", "garbage.h5": "as HDF5",
        "garbage.nii": "as NIfTI", "plain": "unknown volume format", "plain.zarr": "as zarr",
        "obj.npy": "Python objects", "cplx.npy": "complex64", "flat.npy": "2D", "empty.npy": "empty",
        "obj.npy:inner": "only zarr and HDF5", "g.zarr:nope": "holds no array or group 'nope' (it holds: vol)",
    }
    for name, words in cases.items():
        msg = refusal(open_volume, str(tmp_path / name))
        assert words in msg, msg


def test_missing_format_library_names_the_pip_command(tmp_path, monkeypatch):
    segyio.tools.from_array3D(str(tmp_path / "c.sgy"), truth((4, 5, 6), np.float32))
    monkeypatch.setitem(sys.modules, "segyio", None)
    msg = refusal(open_volume, str(tmp_path / "c.sgy"))
    assert "segyio" in msg and "pip install 'fhcnn[volume]'" in msg
    monkeypatch.setitem(sys.modules, "zarr", None)
    np.save(tmp_path / "a.npy", truth())
    h5 = tmp_path / "a.h5"
    with h5py.File(h5, "w") as f:
        f["v"] = truth()
    assert "zarr" in refusal(open_images, [str(h5)])  # its prediction.zarr could not be written
    open_images([str(tmp_path / "a.npy")])  # .npy needs neither


def test_split_spec():
    assert split_spec("/d/x.zarr:a/b") == (Path("/d/x.zarr"), "a/b")
    assert split_spec("x.H5:/grp/ds") == (Path("x.H5"), "grp/ds")
    assert split_spec("x.nii.gz") == (Path("x.nii.gz"), None)
    assert split_spec("x.zarr") == (Path("x.zarr"), None)


# ---------------------------------------------------------------------------------------- labels

def sparse_labels(shape=(12, 14, 10), seed=0):
    """Dense slices 3 and 8 along axis 2, and a scribble of class 2 elsewhere."""
    rng = np.random.default_rng(seed)
    lab = np.full(shape, 255, np.uint8)
    for k in (3, 8):
        lab[:, :, k] = rng.integers(0, 2, shape[:2])
    lab[5, 2:6, 5] = 2
    return lab


def brute_summary(lab, ignore=255):
    labelled = lab != ignore
    per = [labelled.sum(axis=tuple(b for b in range(3) if b != a)) for a in range(3)]
    counts = np.bincount(lab[labelled].astype(np.int64))
    return counts, per


def test_label_summary_equals_whole_array_numpy(tmp_path):
    lab = sparse_labels()
    counts, per = brute_summary(lab)
    for max_bytes in (64, 800, 10**9):  # many slabs, some, one
        for axis in range(3):
            s = summarize_labels(lab, 255, slab_axis=axis, max_bytes=max_bytes)
            assert s.counts == tuple(counts) and s.unlabelled == int((lab == 255).sum())
            for a in range(3):
                np.testing.assert_array_equal(s.per_slice[a], per[a])
            assert s.dense == ((), (), (3, 8)) and s.elsewhere == 4
    assert s.describe() == (f"labelled: class 0 {counts[0]:,} voxels, class 1 {counts[1]:,}, class 2 4 "
                            f"({100 * (lab != 255).mean():.2g} % of 1,680); axis 2 slices [3, 8]; "
                            f"scribbles elsewhere (4 voxels)")
    json.dumps(s.to_json())


def test_label_summary_dense_slices_on_two_axes_count_the_rest_exactly():
    lab = np.full((10, 12, 9), 255, np.int16)
    lab[2] = 0
    lab[:, 7] = 1
    lab[6, 1, 3] = 1  # outside both slices
    lab[5, 7, 4] = 0  # inside one
    s = summarize_labels(lab, 255, max_bytes=100)
    assert s.dense[0] == (2,) and s.dense[1] == (7,) and s.elsewhere == 1
    assert "axis 0 slices [2]; axis 1 slices [7]; scribbles elsewhere (1 voxel)" in s.describe()


def test_label_volume_from_files_float_and_nifti(tmp_path):
    lab = sparse_labels()
    nib.save(nib.Nifti1Image(lab.astype(np.float32), np.eye(4)), tmp_path / "l.nii.gz")
    v = open_label_volume(str(tmp_path / "l.nii.gz"), lab.shape, 255)
    assert v.dtype == np.int32 and v.opened.compressed
    assert_windows(v, lab.astype(np.int32))
    assert v.summary.num_classes == 3 and v.summary.labelled == int((lab != 255).sum())


def test_label_refusals(tmp_path):
    lab = sparse_labels()

    def save(name, arr):
        np.save(tmp_path / name, arr)
        return str(tmp_path / name)

    half = lab.astype(np.float32)
    half[1, 2, 3] = 0.5
    inf = lab.astype(np.float64)
    inf[4, 4, 8] = -np.inf  # NaN is unlabelled (test_volume_edge_inputs)
    big = lab.astype(np.int32)
    big[0, 0, 0] = 300
    neg = lab.astype(np.int16)
    neg[2, 1, 8] = -1
    gap = lab.copy()
    gap[gap == 1] = 0  # classes 0 and 2, no 1
    cases = {
        save("half.npy", half): ["0.5", "(1, 2, 3)", "integers"],
        save("inf.npy", inf): ["-inf", "(4, 4, 8)"],
        save("big.npy", big): ["300", "(0, 0, 0)", "--ignore value 255"],
        save("neg.npy", neg): ["-1", "(2, 1, 8)"],
        save("gap.npy", gap): ["no voxel of class 1", "0..2"],
        save("none.npy", np.full(lab.shape, 255, np.uint8)): ["no labelled voxel"],
        save("one.npy", np.where(lab == 255, 255, 0).astype(np.uint8)): ["only class 0"],
        save("shape.npy", lab[:, :, :9]): ["(12, 14, 9)", "(12, 14, 10)"],
        save("chan.npy", np.stack([lab, lab], -1)): ["2 channels", "one channel"],
    }
    for spec, words in cases.items():
        msg = refusal(open_label_volume, spec, lab.shape, 255)
        assert all(w in msg for w in words), msg
    # evaluation labels: classes fixed by the training labels, absent classes allowed
    v = open_label_volume(save("eval.npy", np.where(lab == 2, 0, lab)), lab.shape, 255, num_classes=3)
    assert v.summary.counts[2] == 0 and v.summary.num_classes == 3
    assert "0..1" in refusal(open_label_volume, str(tmp_path / "big.npy"), lab.shape, 255, num_classes=2)


def _slice_labels(shape=(12, 14, 10)) -> np.ndarray:
    """Slice 5 along the last axis annotated (classes 0 and 1), every other voxel 255."""
    lab = np.full(shape, 255, np.uint8)
    lab[:, :, 5] = (np.arange(shape[0] * shape[1]).reshape(shape[:2]) % 3 == 0).astype(np.uint8)
    return lab


def _garble(files) -> int:
    """Replace every chunk file by bytes no codec decodes; returns how many."""
    n = 0
    for p in files:
        p.write_bytes(b"not a chunk")
        n += 1
    return n


def test_label_chunks_never_written_that_read_as_a_class_are_named(tmp_path):
    """A user who wrote a few annotated slices into a fresh zarr array (fill value 0, zarr's
    default; or null, read as 0) got every chunk never written read as class 0 without a word.
    The labels now come with one line naming the file, the chunks (or shards) never written out
    of how many, the fill value they read as, and how to mark them unlabelled; counted from the
    store's keys (the written chunks are garbled: never read) or the HDF5 chunk index. A fill
    value equal to --ignore, and arrays with every chunk written, say nothing."""
    from fhcnn.apps.volume import load_volume_inputs
    from fhcnn.data.volumes.labels import unwritten_note
    from fhcnn.data.volumes.stores import never_written

    lab = _slice_labels()  # chunks (4, 4, 4): 3 x 4 x 3 = 36, slice 5 touches 12 of them
    cases = {}
    for name, fmt, fill in (("v3.zarr", 3, 0), ("v2.zarr", 2, None), ("ignored.zarr", 3, 255)):
        a = zarr.create_array(str(tmp_path / name), shape=lab.shape, chunks=(4, 4, 4), dtype=np.uint8,
                              fill_value=fill, zarr_format=fmt)
        a[:, :, 5] = lab[:, :, 5]
        cases[name] = a
    sharded = zarr.create_array(str(tmp_path / "shards.zarr"), shape=lab.shape, chunks=(4, 4, 4), shards=(8, 8, 8),
                                dtype=np.uint8, fill_value=0)
    sharded[:, :, 5] = lab[:, :, 5]  # shards 2 x 2 x 2: slice 5 lies in the first of the last axis
    with h5py.File(tmp_path / "l.h5", "w") as f:
        f.create_dataset("chunked", shape=lab.shape, chunks=(4, 4, 4), dtype=np.uint8)[:, :, 5] = lab[:, :, 5]
        f.create_dataset("plain", data=np.where(lab == 255, 0, lab))  # contiguous: no chunks
    want = {
        "v3.zarr": "24 of its 36 chunks were never written (about 67 % of the volume) and read as 0, which is "
                   "class 0; if those voxels are unlabelled, set the array's fill value to the --ignore value 255 "
                   "(fill_value in its zarr.json)",
        "v2.zarr": "24 of its 36 chunks were never written (about 67 % of the volume) and read as 0 (its fill value "
                   "null), which is class 0; if those voxels are unlabelled, set the array's fill value to the "
                   "--ignore value 255 (fill_value in its .zarray)",
        "shards.zarr": "24 of its 36 chunks were never written (about 67 % of the volume) and read as 0, which is "
                       "class 0;",  # the inner chunks, from each shard's index
        "l.h5:chunked": "24 of its 36 chunks were never written (about 67 % of the volume) and read as 0, which is "
                        "class 0; if those voxels are unlabelled, set the array's fill value to the --ignore value 255 "
                        "(an HDF5 dataset's is fixed when it is made: write the dataset anew with fillvalue=255)",
    }
    assert _garble(p for p in (tmp_path / "v3.zarr" / "c").rglob("*") if p.is_file()) == 12
    assert _garble(p for p in (tmp_path / "v2.zarr").rglob("*") if p.is_file() and not p.name.startswith(".")) == 12
    for spec, line in want.items():
        v = open_volume(str(tmp_path / spec), what="labels", allow_channels=False)
        note = unwritten_note(v, 255, f"labels {spec}")
        assert note is not None and note.startswith(f"labels {spec}: {line}"), note
    gap = never_written(cases["v2.zarr"])
    assert (gap.missing, gap.total, gap.unit, gap.fill, gap.stated) == (24, 36, "chunks", 0, None)
    for spec in ("ignored.zarr", "l.h5:plain"):
        assert unwritten_note(open_volume(str(tmp_path / spec), what="labels"), 255, spec) is None
    full = zarr.create_array(str(tmp_path / "full.zarr"), shape=lab.shape, chunks=(4, 4, 4), dtype=np.uint8,
                             fill_value=0, config={"write_empty_chunks": True})
    full[:] = np.where(lab == 255, 0, lab)
    assert never_written(full) is None
    # through the run's inputs (sharded: readable), on the log lines of the run
    np.save(tmp_path / "img.npy", truth(lab.shape, np.float32))
    inputs = load_volume_inputs([str(tmp_path / "img.npy")], str(tmp_path / "shards.zarr"))
    assert len(inputs.notes) == 1 and inputs.notes[0].startswith("labels " + str(tmp_path / "shards.zarr") + ": 24 of")
    assert inputs.summary.counts[0] > lab.size // 2  # what the note is about: the unwritten shards are class 0


def test_inner_chunks_never_written_inside_a_shard_are_counted_from_its_index(tmp_path, monkeypatch):
    """Of a sharded zarr v3 label array the note counted whole shards: a shard holding one
    annotated slice counted as written, so labels annotated on one slice of every shard said
    nothing at all, though most of their chunks read as class 0. The inner chunks are now counted
    from each written shard's index (the chunks' data garbled here: never read), those past the
    array's edge left out; a zarr that does not expose the index counts shards as before."""
    from fhcnn.data.volumes import stores
    from fhcnn.data.volumes.labels import unwritten_note

    shape = (13, 17, 11)  # inner chunks 4 x 5 x 3 = 60; shards 2 x 3 x 3, the last ones in part
    a = zarr.create_array(str(tmp_path / "s.zarr"), shape=shape, chunks=(4, 4, 4), shards=(8, 8, 4),
                          dtype=np.uint8, fill_value=0)
    a[:, :, 5] = 1  # inner chunk 1 of the last axis: 4 x 5 = 20 written, in the 6 shards holding it
    assert a.nchunks_initialized == 6 * 4  # zarr counts every inner chunk of a written shard
    index = 16 * 4 + 4  # (offset, length) a chunk and a checksum, at the shard's end
    shards = [p for p in (tmp_path / "s.zarr" / "c").rglob("*") if p.is_file()]
    for p in shards:
        data = p.read_bytes()
        p.write_bytes(b"\xff" * (len(data) - index) + data[-index:])
    assert len(shards) == 6
    gap = stores.never_written(zarr.open_array(str(tmp_path / "s.zarr"), mode="r"))
    assert (gap.missing, gap.total, gap.unit) == (40, 60, "chunks")
    v = open_volume(str(tmp_path / "s.zarr"), what="labels", allow_channels=False)
    assert unwritten_note(v, 255, "labels s.zarr").startswith(
        "labels s.zarr: 40 of its 60 chunks were never written (about 67 % of the volume)")
    full = zarr.create_array(str(tmp_path / "f.zarr"), shape=shape, chunks=(4, 4, 4), shards=(8, 8, 4),
                             dtype=np.uint8, fill_value=0, config={"write_empty_chunks": True})
    full[:] = 1
    assert stores.never_written(full) is None  # the inner chunks past the edge are not missing
    monkeypatch.setattr(stores, "_inner_chunks_written", lambda array: None)
    gap = stores.never_written(zarr.open_array(str(tmp_path / "s.zarr"), mode="r"))
    assert (gap.missing, gap.total, gap.unit) == (12, 18, "shards")


# ---------------------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
@pytest.mark.parametrize("axis", [0, 2])
def test_stream_stats_equal_numpy(dtype, axis):
    a = truth((9, 31, 7), dtype)
    ref = a.astype(np.float64)
    for max_bytes in (8, 1000, 10**9):
        s = stream_stats(a, max_bytes, axis)
        assert s.count == a.size and s.finite
        np.testing.assert_allclose([s.mean, s.std], [ref.mean(), ref.std()], rtol=1e-12)
        assert (s.min, s.max) == (ref.min(), ref.max())


def test_nan_and_inf_volumes_are_refused(tmp_path):
    a = truth(dtype=np.float32)
    a[4, 5, 6], a[7, 1, 2] = np.nan, -np.inf
    np.save(tmp_path / "n.npy", a)
    s = stream_stats(a, 100)
    assert s.nonfinite == 2 and s.count == a.size - 2
    ok = np.isfinite(a)
    np.testing.assert_allclose(s.mean, a[ok].astype(np.float64).mean(), rtol=1e-12)
    # a run on the opened file is refused before anything is written, naming count and position
    from fhcnn.data.lazy import LazyVolume
    from fhcnn.engine import SegmentConfig
    from fhcnn.engine.plan import DenseInputs, prepare

    v = open_volume(str(tmp_path / "n.npy"))
    labels = np.full(a.shape, 255, np.uint8)
    labels[0, 0, :2] = [0, 1]
    msg = refusal(prepare, DenseInputs(LazyVolume(v.channels, names=v.names), labels, 2), SegmentConfig())
    assert "NaN or infinite" in msg and "2 voxels" in msg and "(4, 5, 6)" in msg


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("max_bytes", [1, 7, 50, 200, 10**6])
def test_slabs_cover_every_voxel_once_within_budget(axis, max_bytes):
    shape = (5, 7, 6)
    hits = np.zeros(shape, np.int32)
    for box in iter_slabs(shape, 1, max_bytes, axis):
        hits[box] += 1
        n = int(np.prod([s.stop - s.start for s in box]))
        assert n <= max(max_bytes, shape[2 if axis != 2 else 0])
    assert (hits == 1).all()


@settings(max_examples=60, deadline=None)
@given(st.tuples(*[st.integers(1, 9)] * 3), st.integers(1, 4), st.integers(1, 800), st.integers(0, 2))
def test_slabs_tile_any_shape(shape, itemsize, max_bytes, axis):
    hits = np.zeros(shape, np.int32)
    row = shape[0] if axis == 2 else shape[2]
    for box in iter_slabs(shape, itemsize, max_bytes, axis):
        hits[box] += 1
        n = int(np.prod([s.stop - s.start for s in box]))
        assert n * itemsize <= max(max_bytes, itemsize * row) or n == row
    assert (hits == 1).all()


# ---------------------------------------------------------------------------------------- sinks

def _fill(sink, lab, axis=0, max_bytes=300):
    boxes = list(iter_slabs(lab.shape, 1, max_bytes, axis))
    for box in reversed(boxes):  # any order
        sink[box] = lab[box]


class _Recorder:
    """A write guard (:class:`fhcnn.atomic.WriteGuard`) that only notes what was written."""

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.begun: list[Path] = []    # scratch begun
        self.scratch: list[Path] = []  # scratch begun and not yet ended

    def before_write(self, dest: Path) -> None:
        pass

    def after_write(self, dest: Path, tmp: Path) -> None:
        self.paths.append(dest)

    def before_append(self, dest: Path, data: bytes) -> None:
        self.paths.append(dest)

    def make_dir(self, folder: Path) -> bool:
        return False

    def remove(self, path: Path) -> bool:
        return False

    def record(self, paths: list[Path], sources: list[Path] | None = None) -> None:
        self.paths.extend(paths)

    def begin_scratch(self, path: Path) -> None:
        self.begun.append(path)
        self.scratch.append(path)

    def end_scratch(self, path: Path) -> None:
        self.scratch.remove(path)


def test_outputs_keep_the_spacing_a_file_states_and_record_the_one_used_elsewhere(tmp_path):
    """The spacing a run used (``volume.spacing``, or what it took for an axis the file leaves
    out) in the outputs: along the axes the input states, its spacing stays (the grid); along the
    others the one used; where the one used differs from that, ``fhcnn_spacing`` (a NIfTI's
    ``descrip``, whose affine and zooms stay the input's). An input's own ``fhcnn_spacing`` (a
    prediction read again) is not copied."""
    from fhcnn.data.volumes.sinks import output_spacing

    a = truth((5, 12, 14), np.uint16)
    tifffile.imwrite(tmp_path / "cm.tif", a, resolution=(10000 / 0.65, 10000 / 0.5), resolutionunit="CENTIMETER")
    v = open_volume(str(tmp_path / "cm.tif"))  # Y and X stated (0.5, 0.65 micrometre), Z not
    assert output_spacing(v.geometry, None) == (v.geometry.spacing, None)
    assert output_spacing(v.geometry, (3, 0.5, 0.65)) == ((3.0, 0.5, 0.65), None)
    assert output_spacing(v.geometry, (3, 1, 1)) == ((3.0, 0.5, 0.65), (3.0, 1.0, 1.0))
    lab = truth(v.shape, np.uint8) % 3
    for name, used, recorded in (("a", (3, 0.5, 0.65), None), ("b", (3, 1, 1), [3.0, 1.0, 1.0])):
        (tmp_path / name).mkdir()
        with prediction_sink(tmp_path / name, v.format, v.shape, v.geometry, spacing=used) as sink:
            _fill(sink, lab)
        attrs = zarr.open_array(str(tmp_path / name / "prediction.zarr"), mode="r").attrs
        assert attrs["spacing"] == [3.0, 0.5, 0.65] and attrs["spacing_unit"] == "micrometer"
        assert attrs.get("fhcnn_spacing") == recorded
        check_same_grid(v, open_volume(str(tmp_path / name / "prediction.zarr")), "labels")
    again = open_volume(str(tmp_path / "b" / "prediction.zarr"))  # read as an input, predicted without override
    (tmp_path / "c").mkdir()
    g = again.geometry
    with prediction_sink(tmp_path / "c", again.format, again.shape, g, spacing=g.spacing) as sink:
        _fill(sink, lab)
    attrs = zarr.open_array(str(tmp_path / "c" / "prediction.zarr"), mode="r").attrs
    assert attrs["spacing"] == [3.0, 0.5, 0.65] and "fhcnn_spacing" not in attrs
    img = nib.Nifti1Image(truth((9, 10, 11), np.float32), oblique_affine())
    nib.save(img, tmp_path / "in.nii")
    n = open_volume(str(tmp_path / "in.nii"))
    for name, used, descrip in (("d", (1, 1, 1), b"fhcnn prediction; fhcnn_spacing 1,1,1"),
                                ("e", n.geometry.spacing, b"fhcnn prediction")):
        (tmp_path / name).mkdir()
        with prediction_sink(tmp_path / name, "nifti", n.shape, n.geometry, spacing=used) as sink:
            _fill(sink, truth(n.shape, np.uint8) % 3, axis=2)
        pred = nib.load(tmp_path / name / "prediction.nii.gz")
        np.testing.assert_allclose(pred.affine, img.affine, atol=1e-5)
        assert pred.header.get_zooms() == img.header.get_zooms()
        assert pred.header["descrip"].item() == descrip


@pytest.mark.parametrize("header", [nib.Nifti1Image, nib.Nifti2Image])
def test_nifti_prediction_keeps_affine_and_header(tmp_path, header):
    a = truth((9, 10, 11, 2), np.float32)
    aff = oblique_affine()
    img = header(a, aff)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, tmp_path / "in.nii")
    v = open_volume(str(tmp_path / "in.nii"))
    out = tmp_path / "out"
    out.mkdir()
    seen = _Recorder()
    atomic.set_write_guard(seen)
    try:
        lab = truth(v.shape, np.uint8) % 3
        with prediction_sink(out, v.format, v.shape, v.geometry) as sink:
            _fill(sink, lab, axis=2)
            np.testing.assert_array_equal(sink[2:5, :, 3:4], lab[2:5, :, 3:4])
    finally:
        atomic.set_write_guard(None)
    assert sorted(p.name for p in out.iterdir()) == ["prediction.nii.gz"]
    assert out / "prediction.nii.gz" in seen.paths
    assert seen.begun and not seen.scratch  # the uncompressed scratch file, recorded, then gone
    r = nib.load(out / "prediction.nii.gz")
    assert isinstance(r, header) and r.shape == v.shape and r.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(r.dataobj), lab)
    np.testing.assert_allclose(r.affine, nib.load(tmp_path / "in.nii").affine, rtol=0, atol=0)
    assert r.header.get_zooms() == img.header.get_zooms()[:3]
    assert r.header.get_xyzt_units() == ("mm", "sec")
    assert r.header.get_slope_inter() == (None, None) and r.header.get_intent()[0] == "label"
    with gzip.open(out / "prediction.nii.gz") as f:  # one valid gzip stream, nothing after the data
        assert len(f.read()) == r.dataobj.offset + lab.size


@pytest.mark.parametrize("xyz, unit", [("micron", "micrometer"), ("mm", "millimeter"), ("unknown", None)])
def test_nifti_length_unit_is_written_beside_the_spacing_of_probabilities(tmp_path, xyz, unit):
    """probabilities.zarr of a NIfTI input had its ``spacing`` (pixdim) but not the unit of its
    header's ``xyzt_units``: voxels of 0.8 micrometre read as 0.8 of nothing. The unit is now
    ``spacing_unit`` beside it (none for ``unknown``), and the file opens again with that unit."""
    from fhcnn.data.volumes.sinks import volume_store

    img = nib.Nifti1Image(truth((9, 10, 11), np.float32), np.diag([0.8, 1.2, 3.0, 1.0]))
    img.header.set_xyzt_units(xyz, "sec")
    nib.save(img, tmp_path / "in.nii")
    v = open_volume(str(tmp_path / "in.nii"))
    assert v.geometry.unit == unit
    probs = volume_store(tmp_path / "probabilities.zarr", v.geometry, (3, *v.shape), (3, 4, 4, 4), np.float16,
                         v.spec, leading="class")
    probs[:] = 0.5
    attrs = dict(zarr.open_array(str(tmp_path / "probabilities.zarr"), mode="r").attrs)
    assert attrs["spacing"] == pytest.approx([0.8, 1.2, 3.0]) and attrs.get("spacing_unit") == unit
    assert attrs["axis_names"][0] == "class"
    with prediction_sink(tmp_path, "zarr", v.shape, v.geometry, source=v.spec) as sink:
        sink[:, :, :] = np.zeros(v.shape, np.uint8)
    again = open_volume(str(tmp_path / "prediction.zarr"))
    assert again.geometry.unit == unit and again.geometry.spacing == pytest.approx((0.8, 1.2, 3.0))


def test_zarr_prediction_keeps_attrs_and_spacing(tmp_path):
    a = truth(dtype=np.float32)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["v"] = a
        f["v"].attrs["element_size_um"] = [2.0, 1.0, 1.0]
        f["v"].attrs["sample"] = "mouse 7"
    v = open_volume(f"{tmp_path}/x.h5:v")
    out = tmp_path / "out"
    out.mkdir()
    seen = _Recorder()
    atomic.set_write_guard(seen)
    try:
        lab = truth(v.shape, np.uint8) % 4
        with prediction_sink(out, v.format, v.shape, v.geometry, source=v.spec) as sink:
            _fill(sink, lab)
    finally:
        atomic.set_write_guard(None)
    assert sorted(p.name for p in out.iterdir()) == ["prediction.zarr"]
    r = zarr.open(str(out / "prediction.zarr"), mode="r")
    assert seen.begun and not seen.scratch  # the temporary folder, recorded, then moved into place
    np.testing.assert_array_equal(r[:], lab)
    assert r.dtype == np.uint8
    assert r.attrs["spacing"] == [2.0, 1.0, 1.0] and r.attrs["sample"] == "mouse 7"
    assert r.attrs["spacing_unit"] == "micrometer"  # element_size_um's unit
    assert "element_size_um" not in r.attrs and r.attrs["fhcnn_source"] == v.spec
    files = {p for p in (out / "prediction.zarr").rglob("*") if p.is_file()}
    assert files and files <= set(seen.paths)
    again = open_volume(str(out / "prediction.zarr"))  # opens as a volume with the same spacing, in µm
    assert again.geometry.spacing == (2.0, 1.0, 1.0)
    # element_size_um was replaced by a spacing without its unit: the prediction, used as labels
    # beside the same image stored in nanometres, was refused as another grid (2 against 2000)
    assert r.attrs["spacing_unit"] == "micrometer" and again.geometry.unit == "micrometer"
    g = zarr.open_group(str(tmp_path / "nm.zarr"), mode="w")
    g.create_array("0", shape=v.shape, dtype="f4")
    g.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": n, "type": "space", "unit": "nanometer"}
                                                          for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2000, 1000, 1000]}]}]}]
    check_same_grid(open_volume(str(tmp_path / "nm.zarr")), again, "labels")
    with prediction_sink(out, "segy", v.shape, v.geometry) as sink:  # a resumed run replaces it
        sink[:, :, :] = lab + 1
    np.testing.assert_array_equal(zarr.open(str(out / "prediction.zarr"), mode="r")[:], lab + 1)
    assert sorted(p.name for p in out.iterdir()) == ["prediction.zarr"]


@pytest.mark.parametrize("fmt, version", [(2, "0.4"), (3, "0.5")])
def test_ome_zarr_prediction_is_an_ome_zarr_image_on_the_inputs_grid(tmp_path, fmt, version):
    """The prediction of an OME-Zarr input had ``spacing``/``axis_names`` attributes but no OME
    metadata (OME-Zarr viewers could not place it) and lost the input's translation. It is now a
    single-level OME-Zarr image of the input's NGFF version: the spatial axes, their scale and
    translation (dataset and multiscale transforms combined, nm and micrometre in one unit), read
    back by fhcnn's reader as the input's spacing and origin."""
    a = truth((2, 9, 10, 11), np.uint16)
    g = zarr.open_group(str(tmp_path / "in.zarr"), mode="w", zarr_format=fmt)
    g.create_array("s0", shape=a.shape, chunks=(1, 4, 4, 4), dtype=a.dtype)[:] = a
    axes = [{"name": "c", "type": "channel"}, {"name": "z", "type": "space", "unit": "micrometer"},
            {"name": "y", "type": "space", "unit": "nanometer"}, {"name": "x", "type": "space", "unit": "nanometer"}]
    ms = [{"axes": axes, "datasets": [{"path": "s0", "coordinateTransformations": [
        {"type": "scale", "scale": [1, 2.0, 150, 150]}, {"type": "translation", "translation": [0, 1.5, 30, -60]}]}],
        "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 2, 2]},
                                      {"type": "translation", "translation": [0, 10, 0, 0]}]}]
    g.attrs.update({"multiscales": [{"version": version, **ms[0]}]} if fmt == 2 else
                   {"ome": {"version": version, "multiscales": ms}})
    v = open_volume(str(tmp_path / "in.zarr"))
    assert v.geometry.spacing == (2000.0, 300.0, 300.0) and v.geometry.unit == "nanometer"
    assert v.geometry.origin == (11500.0, 60.0, -120.0)
    out = tmp_path / "out"
    out.mkdir()
    lab = truth(v.shape, np.uint8) % 3
    with prediction_sink(out, v.format, v.shape, v.geometry, source=v.spec) as sink:
        _fill(sink, lab)
    group = zarr.open_group(str(out / "prediction.zarr"), mode="r")
    assert group.metadata.zarr_format == fmt
    attrs = dict(group.attrs)
    meta = attrs["ome"] if fmt == 3 else attrs
    assert (meta["version"] if fmt == 3 else meta["multiscales"][0]["version"]) == version
    (m,) = meta["multiscales"]
    assert m["axes"] == [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    assert m["datasets"] == [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [2000.0, 300.0, 300.0]},
        {"type": "translation", "translation": [11500.0, 60.0, -120.0]}]}]
    assert "image-label" in meta
    if fmt == 3:
        assert list(group["0"].metadata.dimension_names) == ["z", "y", "x"]
    np.testing.assert_array_equal(group["0"][:], lab)
    again = open_volume(str(out / "prediction.zarr"))  # fhcnn's own reader places it on the input's grid
    assert again.geometry.spacing == v.geometry.spacing and again.geometry.origin == v.geometry.origin
    assert again.geometry.unit == "nanometer" and again.geometry.axis_names == ("z", "y", "x")
    check_same_grid(v, again, "labels")
    assert group["0"].attrs["fhcnn_source"] == v.spec and group["0"].attrs["spacing"] == [2000.0, 300.0, 300.0]


def test_npy_prediction_and_abort_leave_nothing_behind(tmp_path):
    np.save(tmp_path / "a.npy", truth())
    v = open_volume(str(tmp_path / "a.npy"))
    out = tmp_path / "out"
    out.mkdir()
    lab = truth(v.shape, np.uint8) % 2
    sink = prediction_sink(out, v.format, v.shape, v.geometry)
    _fill(sink, lab)
    assert sink.close() == out / "prediction.npy"
    np.testing.assert_array_equal(np.load(out / "prediction.npy"), lab)
    for fmt in ("npy", "nifti", "zarr"):
        d = tmp_path / f"abort_{fmt}"
        d.mkdir()
        geom = open_volume(str(tmp_path / "a.npy")).geometry
        with pytest.raises(RuntimeError):
            with prediction_sink(d, fmt, v.shape, geom) as sink:  # type: ignore[arg-type]
                sink[0:2] = lab[0:2]
                raise RuntimeError("stop")
        assert list(d.iterdir()) == [], fmt


# ---------------------------------------------------------------------------------------- laziness

_LAZY = textwrap.dedent("""
    import resource, sys, numpy as np
    from fhcnn.data.volumes import open_volume
    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.zeros(1 << 20).sum()
    for spec in sys.argv[1:]:
        before = peak()
        v = open_volume(spec)
        w = v.channels[0][5:37, 100:132, 200:232]
        assert w.shape == (32, 32, 32), w.shape
        print(spec, peak() - before)
""")


def test_opening_and_reading_a_window_never_reads_the_whole_volume(tmp_path):
    """~400 MB volumes (sparse files or unwritten chunks: made in milliseconds) opened in a
    fresh process; reading one window raises the peak memory by a small fraction of that
    (the formats one after the other: a whole read would raise the running peak by ~400 MB)."""
    shape = (400, 1000, 1000)
    size = int(np.prod(shape))
    np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.uint8, shape=shape).flush()
    zarr.open_array(str(tmp_path / "big.zarr"), mode="w", shape=shape, chunks=(64, 128, 128), dtype="u1")
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f.create_dataset("v", shape=shape, dtype="u1")
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.uint8)
    hdr["vox_offset"] = 352
    with open(tmp_path / "big.nii", "wb") as f:
        f.write(hdr.binaryblock + b"\x00" * 4)
        f.truncate(352 + size)
    tifffile.memmap(tmp_path / "big.tif", shape=shape, dtype=np.uint8).flush()
    specs = [f"{tmp_path}/{s}" for s in ("big.npy", "big.zarr", "big.h5:v", "big.nii", "big.tif")]
    r = subprocess.run([sys.executable, "-c", _LAZY, *specs], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    grew = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in r.stdout.strip().splitlines()}
    assert list(grew) == specs
    for spec, g in grew.items():
        assert g < size / 20, f"{spec}: peak memory grew by {g / 2**20:.0f} MiB"


_STREAM = textwrap.dedent("""
    import resource, sys, numpy as np
    from pathlib import Path
    from fhcnn.data.lazy import stream_stats
    from fhcnn.data.volumes import open_volume, prediction_sink
    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stream_stats(np.zeros((4, 4, 4)))
    for spec in sys.argv[2:]:
        before = peak()
        v = open_volume(spec)
        stream_stats(v.channels[0], 8 << 20, v.slab_axis)
        print(spec, peak() - before)
    before = peak()
    v = open_volume(sys.argv[2])
    with prediction_sink(Path(sys.argv[1]), "npy", v.shape, v.geometry) as sink:
        for z in range(0, v.shape[0], 4):
            sink[z:z + 4] = np.ones((min(4, v.shape[0] - z), *v.shape[1:]), np.uint8)
    print("sink", peak() - before)
""")


def test_streamed_passes_and_writes_leave_no_file_resident(tmp_path):
    """A pass over a whole memory-mapped file (``.npy``, TIFF) and the writes of a ``.npy``
    prediction drop their pages as they go: the peak memory grows by the slab buffers, not by
    the 100 MB file (it did, by the file's size, with plain memory maps)."""
    shape = (100, 1000, 1000)
    np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.uint8, shape=shape).flush()
    tifffile.memmap(tmp_path / "big.tif", shape=shape, dtype=np.uint8).flush()
    out = tmp_path / "out"
    out.mkdir()
    specs = [f"{tmp_path}/big.npy", f"{tmp_path}/big.tif"]
    r = subprocess.run([sys.executable, "-c", _STREAM, str(out), *specs], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    grew = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in r.stdout.strip().splitlines()}
    assert list(grew) == [*specs, "sink"]
    for what, g in grew.items():
        assert g < 60 * 2**20, f"{what}: peak memory grew by {g / 2**20:.0f} MiB"
    assert np.load(out / "prediction.npy", mmap_mode="r")[99, 999, 999] == 1


def _pages_tiff(path, pages, byteorder="<", **kw):
    """A TIFF of ``pages`` written page by page (not one contiguous series)."""
    with tifffile.TiffWriter(path, byteorder=byteorder) as w:
        for p in pages:
            w.write(p, contiguous=False, metadata=None, **kw)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_tiff_single_strip_pages_read_by_rows_one_page_at_a_time(tmp_path, compression):
    """A TIFF stored as one strip a page (not contiguous) was read through tifffile's zarr
    store, whose chunks are strips: a window of 4 x 6 voxels across 12 pages decoded (and for an
    uncompressed page read) every page whole, several at a time (tracemalloc peak 10.8 pages
    uncompressed, 13.9 compressed). Now an uncompressed page is read only at the window's rows and a compressed one is
    decoded one page at a time, the last one kept for the next block of its rows."""
    import tracemalloc

    a = truth((12, 256, 256), np.uint16)
    _pages_tiff(tmp_path / "s.tif", a, rowsperstrip=256, compression=compression)
    with tifffile.TiffFile(tmp_path / "s.tif") as t:
        assert t.series[0].dataoffset is None and all(len(p.dataoffsets) == 1 for p in t.series[0].pages)
    v = open_volume(str(tmp_path / "s.tif"))
    assert v.compressed == (compression is not None)
    reader = v.channels[0]
    assert_windows(reader, a)
    page = a[0].nbytes
    tracemalloc.start()
    got = reader[:, 100:104, 30:36]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(got, a[:, 100:104, 30:36])
    # uncompressed: the rows read (0.05 of a page); compressed: one page kept and one decoded
    # with zlib's buffers (4.4 pages; before: 10.8 and 13.9 pages)
    assert peak < (page // 8 if compression is None else 6 * page), peak / page
    if compression is not None:  # a pass by blocks of rows (the one-time copy) decodes each page once
        key, calls = reader.array._key, []

        class Counting:  # the keyframe, counting the strips it decodes
            def decode(self, *a, **k):
                calls.append(a[1])
                return key.decode(*a, **k)

            def __getattr__(self, name):
                return getattr(key, name)

        reader.array._key = Counting()
        reader.array._kept = None
        from fhcnn.data.lazy import copy_to_zarr

        copy = copy_to_zarr(reader, tmp_path / "c.zarr", (4, 64, 64), axis=0, max_bytes=page // 4)
        np.testing.assert_array_equal(copy[...], a)
        assert calls == [0] * 12  # each page's one strip, once


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_tiff_strips_of_rows_samples_and_predictor_read_by_strip(tmp_path, compression):
    """Pages of several strips (the last one short), of RGB samples, with a predictor, of
    big-endian samples: every window equals the array."""
    a = truth((5, 37, 21), np.float32)
    _pages_tiff(tmp_path / "f.tif", a, rowsperstrip=8, compression=compression)
    assert_windows(open_volume(str(tmp_path / "f.tif")).channels[0], a)
    b = truth((5, 37, 21), np.uint16)
    _pages_tiff(tmp_path / "p.tif", b, rowsperstrip=8, compression=compression, predictor=compression is not None)
    assert_windows(open_volume(str(tmp_path / "p.tif")).channels[0], b)
    rgb = truth((4, 19, 12, 3), np.uint8)
    _pages_tiff(tmp_path / "rgb.tif", rgb, rowsperstrip=5, compression=compression, photometric="rgb")
    v = open_volume(str(tmp_path / "rgb.tif"))
    for c in range(3):
        assert_windows(v.channels[c], rgb[..., c])
    big = truth((4, 30, 20), np.uint16).astype(">u2")  # big-endian, one strip a page
    _pages_tiff(tmp_path / "be.tif", big, byteorder=">", rowsperstrip=30, compression=compression)
    assert_windows(open_volume(str(tmp_path / "be.tif")).channels[0], big.astype(np.uint16))


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_multi_file_ome_tiff_is_read_whole_or_refused(tmp_path, compression):
    """A multi-file OME-TIFF (the first file's OME-XML names the others) was read with every
    plane's bytes taken from the first file: the planes of the second file came back as other
    bytes of the first, without a word. Each plane is now read from its own file; a file of the
    series that is missing (tifffile reads its planes as zeros) is refused in one line naming it."""
    import uuid

    a = truth((6, 16, 20), np.uint16)
    ids = {name: f"urn:uuid:{uuid.uuid4()}" for name in ("a.ome.tif", "b.ome.tif")}
    for i, name in enumerate(ids):
        xml = (f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
               f'UUID="{ids[name]}"><Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" '
               f'SizeX="20" SizeY="16" SizeZ="6" SizeC="1" SizeT="1" PhysicalSizeZ="2.0"><Channel ID="Channel:0:0" '
               f'SamplesPerPixel="1"/>' + "".join(
                   f'<TiffData FirstZ="{3 * j}" IFD="0" PlaneCount="3"><UUID FileName="{n}">{u}</UUID></TiffData>'
                   for j, (n, u) in enumerate(ids.items())) + "</Pixels></Image></OME>")
        tifffile.imwrite(tmp_path / name, a[3 * i:3 * i + 3], description=xml, metadata=None,
                         photometric="minisblack", compression=compression, rowsperstrip=5)
    v = open_volume(str(tmp_path / "a.ome.tif"))
    assert v.shape == a.shape and v.geometry.spacing == (2.0, 1.0, 1.0)
    assert_windows(v.channels[0], a)
    (tmp_path / "b.ome.tif").rename(tmp_path / "elsewhere.tif")
    msg = refusal(open_volume, str(tmp_path / "a.ome.tif"))
    assert "3 of the 6 planes" in msg and "(b.ome.tif)" in msg and "keep all its files" in msg, msg


def test_a_tiff_of_several_series_is_refused_for_every_command(tmp_path) -> None:
    """A TIFF holding two image series (two stacks of other shapes in one file) is refused,
    naming the count and the shapes, in words that fit whichever command reads it (fhcnn change
    reads TIFF dates through the same reader: the line named fhcnn volume)."""
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint8), metadata=None)
    tifffile.imwrite(path, np.ones((2, 5, 5), np.uint8), metadata=None, append=True)
    assert len(tifffile.TiffFile(path).series) == 2
    with pytest.raises(InputError) as e:
        open_volume(str(path))
    text = str(e.value)
    assert "2 image series ((3, 8, 8), (2, 5, 5))" in text and "fhcnn volume" not in text
    assert "save the series to use as its own file" in text
