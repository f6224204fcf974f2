"""``fhcnn volume`` on odd but valid inputs and on refusals that came out wrong: float64 and
64-bit integer volumes whose contrast a float32 read would lose (a large offset, values past the
float32 range, a tiny range), a truncated ImageJ TIFF (one ``error:`` line, no tifffile warnings),
a run refused during its prediction (no temporary file, no OUT left), the message naming
classes without a labelled voxel, and volumes (windows) of one voxel at the network's coarsest level."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fhcnn.apps.volume import VolumeConfig, plan_volume
from fhcnn.apps.volume.inputs import load_volume_inputs
from fhcnn.cli import main
from fhcnn.config import load_config
from fhcnn.errors import InputError

TINY = ["--config", "volume-tiny", "--quiet", "--set", "volume.baselines="]
SHAPE = (8, 10, 12)


def _volume(tmp_path, image):
    lab = np.full(SHAPE, 255, np.uint8)
    lab[4] = (np.arange(SHAPE[2]) >= SHAPE[2] // 2)[None, :].astype(np.uint8)
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "lab.npy", lab)
    return str(tmp_path / "img.npy"), str(tmp_path / "lab.npy")


def _refused_naming(tmp_path, capsys, role, spec, img, lab, words):
    """``fhcnn volume`` with ``spec`` as its ``role`` (``"image"`` or ``"labels"``, the other
    being ``img`` or ``lab``): one ``error:`` line naming ``role``, ``spec`` and ``words``, exit 2,
    no OUT."""
    img, lab = (spec, lab) if role == "image" else (img, spec)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["volume", img, "--labels", lab, "--out", str(out)] + TINY) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {role} {spec}: ") and words in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("scale, offset, dtype", [(1.0, 1e9, np.float64), (1e-50, 0.0, np.float64),
                                                  (1e40, 0.0, np.float64), (1000.0, 2.0**40, np.int64)])
def test_float32_reads_keep_the_contrast(tmp_path, scale, offset, dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=SHAPE)
    image = (x * scale + offset).astype(dtype)
    img, lab = _volume(tmp_path, image)
    inputs = load_volume_inputs([img], lab)
    vplan = plan_volume(inputs, load_config(VolumeConfig, "volume-tiny", []))
    read = vplan.plan.volume.read((slice(None), slice(None), slice(None)))[0]
    assert np.isfinite(read).all()
    # what the network sees, normalized with the plan's statistics, is the image standardized
    st = vplan.plan.stats[0]
    z = (read.astype(np.float64) - st.mean) / st.std
    want = (image.astype(np.float64) - image.astype(np.float64).mean()) / image.astype(np.float64).std()
    np.testing.assert_allclose(z, want, atol=1e-3)
    # the log and metrics still name the stored values
    assert vplan.raw_stats is not None and vplan.raw_stats[0].mean == pytest.approx(image.astype(np.float64).mean())


def test_an_ordinary_float32_channel_is_read_as_stored(tmp_path):
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    img, lab = _volume(tmp_path, image)
    inputs = load_volume_inputs([img], lab)
    vplan = plan_volume(inputs, load_config(VolumeConfig, "volume-tiny", []))
    np.testing.assert_array_equal(vplan.plan.volume.read((slice(None),) * 3)[0], image)


def test_a_float64_volume_far_from_zero_trains(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=SHAPE)
    img, lab = _volume(tmp_path, x + 1e9)
    out = tmp_path / "out"
    assert main(["volume", img, "--labels", lab, "--out", str(out)] + TINY) == 0
    img, lab = _volume(tmp_path, x * 1e40)
    assert main(["volume", img, "--labels", lab, "--out", str(tmp_path / "out2")] + TINY) == 0


def test_a_truncated_imagej_tiff_is_one_line(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    tifffile.imwrite(tmp_path / "full.tif", image, imagej=True, metadata={"axes": "ZYX"})
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    _, lab = _volume(tmp_path, image)
    out = tmp_path / "out"
    # in a process of its own: pytest's logging capture would hide tifffile's warnings
    import os
    import subprocess
    import sys
    from pathlib import Path

    import fhcnn

    env = {**os.environ, "PYTHONPATH": str(Path(fhcnn.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-m", "fhcnn", "volume", str(tmp_path / "cut.tif"), "--labels", lab,
                           "--out", str(out)] + TINY, capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "truncated" in err[0], err
    assert not out.exists()


def test_a_refusal_after_nibabel_fixed_a_header_is_one_line(tmp_path):
    """nibabel corrects a negative or zero ``pixdim`` as it reads a header and says so on stderr
    through its own log handler; a refusal that followed was two lines (that note, then the
    ``error:``). The note is held back while the header is read."""
    nib = pytest.importorskip("nibabel")
    import struct

    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    _, lab = _volume(tmp_path, image)
    bad = np.load(lab).astype(np.int16)
    bad[0, 0, 0] = -1
    np.save(tmp_path / "bad.npy", bad)
    nib.save(nib.Nifti1Image(image, np.diag([2.0, 1.0, 1.0, 1.0])), str(tmp_path / "img.nii"))
    data = bytearray((tmp_path / "img.nii").read_bytes())
    struct.pack_into("<f", data, 80, -2.0)  # pixdim[1]
    (tmp_path / "img.nii").write_bytes(bytes(data))
    out = tmp_path / "out"
    import os
    import subprocess
    import sys
    from pathlib import Path

    import fhcnn

    env = {**os.environ, "PYTHONPATH": str(Path(fhcnn.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-m", "fhcnn", "volume", str(tmp_path / "img.nii"), "--labels",
                           str(tmp_path / "bad.npy"), "--out", str(out)] + TINY, capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "-1" in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("role", ["image", "labels"])
def test_a_tiff_whose_compression_tifffile_cannot_decode_is_refused_naming_it(tmp_path, role, capsys):
    """An LZW TIFF (Fiji's usual compression) without imagecodecs: tifffile failed in the middle
    of the first pass over the volume, with an error that named no file (and, for the labels,
    zarr's unretrieved tasks printed their tracebacks after it); it is refused when opened."""
    tifffile = pytest.importorskip("tifffile")
    try:
        tifffile.TIFF.DECOMPRESSORS[5]
        pytest.skip("imagecodecs is installed: tifffile decodes LZW")
    except KeyError:
        pass
    import struct

    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    img, lab = _volume(tmp_path, image)
    data = image if role == "image" else np.load(lab)
    tifffile.imwrite(tmp_path / "z.tif", data, compression="zlib")
    with tifffile.TiffFile(tmp_path / "z.tif") as tif:
        at = [page.tags["Compression"].valueoffset for page in tif.pages]
    raw = bytearray((tmp_path / "z.tif").read_bytes())
    for offset in at:
        struct.pack_into("<H", raw, offset, 5)  # LZW
    (tmp_path / "lzw.tif").write_bytes(bytes(raw))
    spec = str(tmp_path / "lzw.tif")
    _refused_naming(tmp_path, capsys, role, spec, img, lab, "imagecodecs")


@pytest.mark.parametrize("role", ["image", "labels"])
def test_an_hdf5_dataset_whose_filter_is_not_available_is_refused_naming_it(tmp_path, role, capsys):
    """A dataset compressed by an HDF5 plugin h5py cannot load (blosc, 32001, without its plugin):
    the first read failed with an OSError and its traceback (exit 1) in the middle of the first
    pass; it is refused when the file is opened."""
    h5py = pytest.importorskip("h5py")
    if h5py.h5z.filter_avail(32001):
        pytest.skip("the blosc filter is available here")
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    img, lab = _volume(tmp_path, image)
    data = image if role == "image" else np.load(lab)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        ds = f.create_dataset("x", shape=SHAPE, dtype=data.dtype, chunks=SHAPE, compression=32001,
                              allow_unknown_filter=True)
        ds.id.write_direct_chunk((0, 0, 0), data.tobytes())
    spec = str(tmp_path / "x.h5")
    _refused_naming(tmp_path, capsys, role, spec, img, lab, "filter 32001")


@pytest.mark.parametrize("role", ["image", "labels"])
def test_a_damaged_compressed_chunk_is_refused_naming_the_file(tmp_path, role, capsys):
    """A chunk whose compressed bytes are damaged opened fine and failed in the middle of the first
    pass over the volume with the library's traceback (h5py's OSError, exit 1; numcodecs'
    RuntimeError, zlib's error through tifffile likewise)."""
    h5py = pytest.importorskip("h5py")
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    img, lab = _volume(tmp_path, image)
    data = image if role == "image" else np.load(lab)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("x", data=data, chunks=(4, 5, 6), compression="gzip")
    with h5py.File(tmp_path / "x.h5", "r") as f:
        at = f["x"].id.get_chunk_info(3).byte_offset
    raw = bytearray((tmp_path / "x.h5").read_bytes())
    raw[at:at + 8] = b"\x00" * 8
    (tmp_path / "x.h5").write_bytes(bytes(raw))
    spec = str(tmp_path / "x.h5")
    _refused_naming(tmp_path, capsys, role, spec, img, lab, "its data cannot be read at [")


def test_a_zarr_of_damaged_chunks_is_one_line(tmp_path):
    """zarr reads the chunks of a window in asyncio tasks: when one fails to decode, the others are
    left pending or failed, and asyncio reported each of them on stderr as the process exited
    ("Task was destroyed but it is pending!", "Task exception was never retrieved"), after the
    refusal's line."""
    zarr = pytest.importorskip("zarr")
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    _, lab = _volume(tmp_path, image)
    store = tmp_path / "img.zarr"
    zarr.open_array(str(store), mode="w", shape=SHAPE, chunks=(2, 2, 2), dtype="f4")[:] = image
    chunks = [p for p in store.rglob("*") if p.is_file() and not p.name.startswith((".z", "zarr.json"))]
    assert len(chunks) > 10
    for p in chunks:
        p.write_bytes(b"garbage")
    out = tmp_path / "out"
    import os
    import subprocess
    import sys
    from pathlib import Path

    import fhcnn

    env = {**os.environ, "PYTHONPATH": str(Path(fhcnn.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-m", "fhcnn", "volume", str(store), "--labels", lab, "--out", str(out)]
                          + TINY, capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: image {store}: its data cannot be read"), err
    assert not out.exists()


@pytest.mark.parametrize("suffix", ["npy", "zarr", "nii"])
def test_a_run_refused_in_its_prediction_leaves_no_output_folder(tmp_path, suffix, monkeypatch, capsys):
    """The prediction file is open under a temporary name in OUT while the network trains and
    predicts: a refusal then removes it, and with it the run folder (files.md)."""
    import fhcnn.apps.volume.pipeline as pipeline
    from fhcnn.errors import InputError

    image = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
    _, lab = _volume(tmp_path, image)
    path = tmp_path / f"img.{suffix}"
    if suffix == "npy":
        np.save(path, image)
    elif suffix == "zarr":
        zarr = pytest.importorskip("zarr")
        zarr.open_array(str(path), mode="w", shape=image.shape, dtype="f4")[:] = image
    else:
        nib = pytest.importorskip("nibabel")
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(path))
    seen = []

    def refused(plan, out, sinks, **kw):  # trained: the engine makes the sinks (temporary files)
        sinks(None)
        seen.extend(p.name for p in out.iterdir() if p.name.startswith("."))
        raise InputError("refused while predicting")

    monkeypatch.setattr(pipeline, "fit_predict", refused)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["volume", str(path), "--labels", lab, "--out", str(out), "--save-probs"] + TINY) == 2
    assert any(".tmp" in name for name in seen), seen
    assert capsys.readouterr().err.strip().splitlines() == ["error: refused while predicting"]
    assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_missing_classes_are_listed_as_classes(tmp_path, capsys):
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    img, _ = _volume(tmp_path, image)
    lab = np.full(SHAPE, 255, np.uint8)
    lab[0, 0, 0], lab[0, 0, 1] = 0, 200
    np.save(tmp_path / "l.npy", lab)
    capsys.readouterr()
    assert main(["volume", img, "--labels", str(tmp_path / "l.npy"), "--out", str(tmp_path / "o")] + TINY) == 2
    err = capsys.readouterr().err
    assert "(199 classes)" in err and "slices" not in err


def test_an_ignore_value_among_the_classes_is_named(tmp_path, capsys):
    """Classes are 0..K-1: ``--ignore 0`` leaves class 0 without a voxel, and the refusal says why."""
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    img, _ = _volume(tmp_path, image)
    lab = np.zeros(SHAPE, np.uint8)
    lab[2, :5], lab[5, :5] = 1, 2
    np.save(tmp_path / "l.npy", lab)
    capsys.readouterr()
    args = ["volume", img, "--labels", str(tmp_path / "l.npy"), "--ignore", "0", "--out", str(tmp_path / "o")]
    assert main(args + TINY) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no voxel of class 0" in err[0] and "--ignore 0 is one of them" in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("shape, window", [((2, 2, 2), []), ((2, 8, 8), ["data.window_depth=2", "data.window_height=2",
                                                                           "data.window_width=2"])])
def test_a_volume_or_window_of_one_coarse_voxel_is_segmented(tmp_path, shape, window):
    """A 2 x 2 x 2 volume (or windows of 2 asked on a larger one) would reach the network's
    coarsest level as one voxel, where its group norm has one value a channel and PyTorch
    refuses it; the engine continues such a volume (window) along W and the run finishes."""
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    lab = np.full(shape, 255, np.uint8)
    lab[0] = x[0] > 0.5
    lab[0].flat[:2] = [0, 1]
    np.save(tmp_path / "img.npy", x)
    np.save(tmp_path / "lab.npy", lab)
    sets = [a for kv in window for a in ("--set", kv)]
    out = tmp_path / "out"
    assert main(["volume", str(tmp_path / "img.npy"), "--labels", str(tmp_path / "lab.npy"), "--out", str(out)]
                + TINY + sets) == 0
    pred = np.load(out / "prediction.npy")
    assert pred.shape == shape and set(np.unique(pred)) <= {0, 1}


def test_a_float64_volume_far_from_zero_in_a_compressed_file_is_read_the_same_from_its_copy(tmp_path):
    """A compressed NIfTI is read from a chunked copy in the run folder: the copy holds the
    stored values, and the plan reads it standardized once, as it read the file (it was
    standardized twice: the network trained on values near -4e9)."""
    nib = pytest.importorskip("nibabel")
    from fhcnn.apps.volume.pipeline import local_copies

    x = np.random.default_rng(0).normal(size=SHAPE)
    _, lab = _volume(tmp_path, x)
    nib.save(nib.Nifti1Image(x + 1e9, np.eye(4)), str(tmp_path / "img.nii.gz"))
    inputs = load_volume_inputs([str(tmp_path / "img.nii.gz")], lab)
    vplan = plan_volume(inputs, load_config(VolumeConfig, "volume-tiny", []))
    whole = (slice(None),) * 3
    before = vplan.plan.volume.read(whole)[0]
    np.testing.assert_allclose(before, (x - x.mean()) / x.std(), atol=1e-4)
    (tmp_path / "run").mkdir()
    local_copies(vplan.plan, inputs, tmp_path / "run", log=lambda _: None)
    assert (tmp_path / "run" / "inputs" / "image0.zarr").exists()
    np.testing.assert_allclose(vplan.plan.volume.read(whole)[0], before, atol=1e-4)
    # the baselines and the figure read the copy as the network does
    np.testing.assert_allclose(vplan.plan.as_read(inputs.channels)[0][...], before, atol=1e-4)


def test_segy_line_numbers_with_a_gap_are_kept_whole(tmp_path):
    """Inline numbers 100, 101, 103, ...: the geometry (copied into prediction.zarr's attributes)
    said ``inlines [100, 115, 1]``, the first, last and step of the first two, which places
    every line after the gap at the wrong number; the step is now ``None`` and every number listed."""
    segyio = pytest.importorskip("segyio")
    from fhcnn.data.volumes import open_volume

    ilines, xlines = [100, 101, 103, 104], [7, 9, 11]
    spec = segyio.spec()
    spec.format, spec.samples, spec.sorting = 5, list(range(6)), segyio.TraceSortingFormat.INLINE_SORTING
    spec.ilines, spec.xlines = ilines, xlines
    with segyio.create(str(tmp_path / "gap.sgy"), spec) as f:
        for t, (il, xl) in enumerate((il, xl) for il in ilines for xl in xlines):
            f.header[t] = {segyio.su.iline: il, segyio.su.xline: xl}
            f.trace[t] = np.full(6, t, np.float32)
    attrs = open_volume(str(tmp_path / "gap.sgy")).geometry.attrs
    assert attrs["inlines"] == [100, 104, None] and attrs["inline_numbers"] == ilines
    assert attrs["crosslines"] == [7, 11, 2] and "crossline_numbers" not in attrs


def test_a_segy_trace_out_of_the_grids_order_is_refused(tmp_path, capsys):
    """segyio infers the grid from a few traces, and the cube is read by trace position: an inline
    written with its crosslines reversed was read mirrored without a word."""
    segyio = pytest.importorskip("segyio")
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    _, lab = _volume(tmp_path, image)
    spec = segyio.spec()
    spec.format, spec.samples, spec.sorting = 5, list(range(SHAPE[2])), segyio.TraceSortingFormat.INLINE_SORTING
    spec.ilines, spec.xlines = list(range(SHAPE[0])), list(range(SHAPE[1]))
    with segyio.create(str(tmp_path / "c.sgy"), spec) as f:
        t = 0
        for i in range(SHAPE[0]):
            for j in (range(SHAPE[1]) if i != 3 else reversed(range(SHAPE[1]))):
                f.header[t] = {segyio.su.iline: i, segyio.su.xline: j}
                f.trace[t] = image[i, j]
                t += 1
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["volume", str(tmp_path / "c.sgy"), "--labels", lab, "--out", str(out)] + TINY) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a regular 3D cube: trace 30 is inline 3, crossline 9" in err[0], err
    assert not out.exists()


def test_an_ome_zarr_dataset_at_a_nested_path_keeps_its_scale(tmp_path):
    """An OME-Zarr image whose first dataset lies at "s0/data" (a path relative to the image group):
    its scale was looked up under the last part of the path ("data") alone and lost (the volume
    counted as isotropic, the prediction had no spacing)."""
    zarr = pytest.importorskip("zarr")
    from fhcnn.data.volumes import open_volume

    group = zarr.open_group(str(tmp_path / "img.zarr"), mode="w")
    group.create_group("s0").create_array("data", shape=SHAPE, dtype="f4")[:] = 1.0
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": n, "type": "space"} for n in "zyx"],
                                   "datasets": [{"path": "s0/data", "coordinateTransformations": [
                                       {"type": "scale", "scale": [2.0, 0.5, 0.5]}]}]}]
    v = open_volume(str(tmp_path / "img.zarr"))
    assert v.geometry.spacing == (2.0, 0.5, 0.5) and v.geometry.axis_names == ("z", "y", "x")


def test_compressed_labels_are_copied_along_the_axis_their_file_reads_fastest(tmp_path, monkeypatch):
    """A gzipped NIfTI is stored W fastest-varying last (Fortran order): its copy streams slabs
    along its slab axis. The labels were copied along axis 0, which decompresses the whole
    stream again for every slab (a 1024^3 label volume: some 16 passes)."""
    nib = pytest.importorskip("nibabel")
    import fhcnn.rundir
    from fhcnn.apps.volume.pipeline import local_copies

    x = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    _, lab = _volume(tmp_path, x)
    nib.save(nib.Nifti1Image(x, np.eye(4)), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(np.load(lab), np.eye(4)), str(tmp_path / "lab.nii.gz"))
    nib.save(nib.Nifti1Image(np.load(lab), np.eye(4)), str(tmp_path / "truth.nii.gz"))
    inputs = load_volume_inputs([str(tmp_path / "img.nii.gz")], str(tmp_path / "lab.nii.gz"),
                                str(tmp_path / "truth.nii.gz"))
    vplan = plan_volume(inputs, load_config(VolumeConfig, "volume-tiny", ["volume.baselines="]))
    axes = {}
    copy_input = fhcnn.rundir.copy_input

    def recorded(folder, name, array, chunks, axis=0, **kw):
        axes[name] = axis
        return copy_input(folder, name, array, chunks, axis=axis, **kw)

    monkeypatch.setattr(fhcnn.rundir, "copy_input", recorded)
    (tmp_path / "run").mkdir()
    local_copies(vplan.plan, inputs, tmp_path / "run", log=lambda _: None)
    assert inputs.slab_axes == [2] and axes == {"image0": 2, "labels": 2, "eval_labels": 2}
    np.testing.assert_array_equal(inputs.labels[...], np.load(lab))


@pytest.mark.parametrize("role", ["labels", "--eval-labels", "image"])
def test_nifti_files_on_another_grid_are_refused(tmp_path, capsys, role):
    """Labels (or a second channel) whose NIfTI affine places the voxels elsewhere (here the
    image's grid flipped along D, the voxels flipped to match in the world) trained as if the
    same voxel index were the same place: one line, exit 2, no OUT. Affines equal to float32
    rounding of the header pass."""
    nib = pytest.importorskip("nibabel")
    x = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    _, lab = _volume(tmp_path, x)
    labels = np.load(lab)
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-90.3, 12.1, 7.7]
    flipped = affine.copy()
    flipped[0, 0], flipped[0, 3] = -2.0, affine[0, 3] + 2.0 * (SHAPE[0] - 1)
    nib.save(nib.Nifti1Image(x, affine), str(tmp_path / "img.nii.gz"))
    same = {"labels": (labels, affine), "--eval-labels": (labels, affine), "image": (x, affine)}
    other = {**same, role: (same[role][0][::-1].copy(), flipped)}
    paths = {}
    for name, (a, aff) in other.items():
        paths[name] = str(tmp_path / f"{name.strip('-')}.nii.gz")
        nib.save(nib.Nifti1Image(a, aff), paths[name])
    out = tmp_path / "out"
    argv = ["volume", str(tmp_path / "img.nii.gz"), paths["image"], "--labels", paths["labels"],
            "--eval-labels", paths["--eval-labels"], "--out", str(out)] + TINY
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {role} ") and "another grid" in err[0], err
    assert not out.exists()
    # the same grid (the image's affine) is accepted
    nib.save(nib.Nifti1Image(same[role][0], affine), paths[role])
    assert main(argv) == 0


def _geometry_file(path, array, kind, geo):
    """``array`` saved as ``kind`` carrying the geometry ``geo`` (``{}``: none); returns its spec.
    ``zarr``: attributes; ``ome``: an OME-Zarr 0.4 group (``scale``, ``translation``, ``unit``);
    ``h5``: dataset attributes; ``tif``: OME-TIFF ``PhysicalSize*``; ``sgy``: inline numbers
    from ``geo["first"]``, CDP X/Y from ``geo["xy"]`` at the first trace (inlines 25 apart along
    X, crosslines 12.5 along Y; stored in hundredths, coordinate scalar -100), none without it."""
    if kind == "zarr":
        zarr = pytest.importorskip("zarr")
        z = zarr.open_array(str(path), mode="w", shape=array.shape, dtype=array.dtype)
        z[:] = array
        z.attrs.update(geo)
        return str(path)
    if kind == "ome":
        zarr = pytest.importorskip("zarr")
        g = zarr.open_group(str(path), mode="w", zarr_format=2)
        g.create_array("0", shape=array.shape, dtype=array.dtype)[:] = array
        moves = [{"type": "scale", "scale": geo.get("scale", [1.0, 1.0, 1.0])}]
        moves += [{"type": "translation", "translation": geo["translation"]}] if "translation" in geo else []
        axes = [{"name": n, "type": "space", **({"unit": geo["unit"]} if "unit" in geo else {})} for n in "zyx"]
        g.attrs["multiscales"] = [{"version": "0.4", "axes": axes,
                                   "datasets": [{"path": "0", "coordinateTransformations": moves}]}]
        return str(path)
    if kind == "h5":
        h5py = pytest.importorskip("h5py")
        with h5py.File(path, "w") as f:
            f["v"] = array
            f["v"].attrs.update(geo)
        return f"{path}:v"
    if kind == "tif":
        tifffile = pytest.importorskip("tifffile")
        tifffile.imwrite(path, array, ome=True, metadata={"axes": "ZYX", **geo})
        return str(path)
    segyio = pytest.importorskip("segyio")
    spec = segyio.spec()
    spec.format, spec.samples, spec.sorting = 5, list(range(array.shape[2])), segyio.TraceSortingFormat.INLINE_SORTING
    first = geo.get("first", 1)
    spec.ilines, spec.xlines = list(range(first, first + array.shape[0])), list(range(1, array.shape[1] + 1))
    with segyio.create(str(path), spec) as f:
        for t, (i, j) in enumerate(np.ndindex(*array.shape[:2])):
            f.header[t] = {segyio.su.iline: spec.ilines[i], segyio.su.xline: spec.xlines[j]}
            if "xy" in geo:
                x, y = geo["xy"][0] + 25.0 * i, geo["xy"][1] + 12.5 * j
                f.header[t].update({segyio.su.scalco: -100, segyio.su.cdpx: round(100 * x),
                                    segyio.su.cdpy: round(100 * y)})
            f.trace[t] = array[i, j].astype(np.float32)
    return str(path)


#: (format, the image's geometry, another grid's, words the refusal names)
OTHER_GRIDS = {
    "segy inline numbers": ("sgy", {"first": 1}, {"first": 11}, "inline numbers 11..18 step 1 against 1..8"),
    "segy trace coordinates": ("sgy", {"xy": [456000.5, 6780000.25]}, {"xy": [456025.5, 6780000.25]},
                               "trace coordinates (CDP X/Y) inline/crossline 1/1 (456025.5, 6780000.25), 1/10 "
                               "(456025.5, 6780112.75), 8/1 (456200.5, 6780000.25) against inline/crossline 1/1 "
                               "(456000.5, 6780000.25), 1/10 (456000.5, 6780112.75), 8/1 (456175.5, 6780000.25)"),
    "zarr spacing": ("zarr", {"spacing": [2.0, 1.0, 1.0]}, {"spacing": [1.0, 1.0, 1.0]}, "voxel spacing"),
    "OME-Zarr scale": ("ome", {"scale": [2.0, 0.5, 0.5]}, {"scale": [2.0, 1.0, 1.0]}, "voxel spacing"),
    "OME-Zarr translation": ("ome", {"scale": [2.0, 0.5, 0.5], "translation": [10.0, 0.0, 0.0]},
                             {"scale": [2.0, 0.5, 0.5], "translation": [0.0, 0.0, 0.0]}, "origin"),
    "HDF5 element_size_um": ("h5", {"element_size_um": [3.0, 0.7, 0.7]}, {"element_size_um": [1.0, 0.7, 0.7]},
                             "voxel spacing (1, 0.7, 0.7) micrometer against (3, 0.7, 0.7) micrometer"),
    "OME-TIFF PhysicalSize": ("tif", {"PhysicalSizeZ": 4.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5},
                              {"PhysicalSizeZ": 4.0, "PhysicalSizeY": 0.25, "PhysicalSizeX": 0.25}, "voxel spacing"),
}


@pytest.mark.parametrize("case", list(OTHER_GRIDS))
def test_files_on_another_grid_are_refused_in_every_geometry_format(tmp_path, capsys, case):
    """SEG-Y labels with other inline numbers, zarr/HDF5/OME labels with another spacing or origin
    were trained on as if the same voxel index were the same place (only NIfTI affines were
    compared): one line naming both files and both grids, exit 2, no OUT. The same grid passes."""
    kind, mine, other, words = OTHER_GRIDS[case]
    sfx = {"ome": "zarr"}.get(kind, kind)
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    _, lab = _volume(tmp_path, image)
    labels = np.load(lab)
    img = _geometry_file(tmp_path / f"img.{sfx}", image, kind, mine)
    for role in (("labels", "--eval-labels", "image") if kind == "zarr" else ("labels",)):
        paths = {"labels": _geometry_file(tmp_path / f"lab.{sfx}", labels, kind, mine),
                 "--eval-labels": _geometry_file(tmp_path / f"ev.{sfx}", labels, kind, mine),
                 "image": _geometry_file(tmp_path / f"img2.{sfx}", image, kind, mine)}
        base = paths[role].split(":")[0].replace(f".{sfx}", f"-other.{sfx}")
        paths[role] = _geometry_file(Path(base), image if role == "image" else labels, kind, other)
        out = tmp_path / "out"
        capsys.readouterr()
        argv = ["volume", img, paths["image"], "--labels", paths["labels"], "--eval-labels", paths["--eval-labels"],
                "--out", str(out)] + TINY
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {role} {paths[role]}: another grid than image {img}'s")
        assert words in err[0], err
        assert not out.exists()
    # the image's own grid is accepted
    load_volume_inputs([img], _geometry_file(tmp_path / f"same.{sfx}", labels, kind, mine))


def test_only_what_both_files_state_is_compared(tmp_path):
    """A label file that carries no geometry (a plain .npy or zarr, a TIFF without resolution tags,
    an OME-Zarr without translation) beside an image that does is accepted; one that states its
    spacing in another length unit is compared in one unit."""
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    _, lab = _volume(tmp_path, image)
    labels = np.load(lab)
    img = _geometry_file(tmp_path / "img.zarr", image, "ome",
                         {"scale": [2.0, 0.5, 0.5], "translation": [10.0, 4.0, 0.0], "unit": "micrometer"})
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "plain.tif", labels)  # resolution tags 1 pixel per unit, no unit
    tifffile.imwrite(tmp_path / "ij.tif", labels, imagej=True, metadata={"axes": "ZYX"})
    for spec in (lab, _geometry_file(tmp_path / "plain.zarr", labels, "zarr", {}), str(tmp_path / "plain.tif"),
                 str(tmp_path / "ij.tif"),
                 _geometry_file(tmp_path / "ome.zarr", labels, "ome", {"scale": [2.0, 0.5, 0.5]}),
                 _geometry_file(tmp_path / "nm.zarr", labels, "ome",
                                {"scale": [2000.0, 500.0, 500.0], "translation": [1e4, 4e3, 0.0], "unit": "nanometer"}),
                 _geometry_file(tmp_path / "um.h5", labels, "h5", {"element_size_um": [2.0, 0.5, 0.5]})):
        load_volume_inputs([img], spec)
    nm = _geometry_file(tmp_path / "nm2.zarr", labels, "ome", {"scale": [2000.0, 250.0, 250.0], "unit": "nanometer"})
    with pytest.raises(InputError, match=r"voxel spacing \(2000, 250, 250\) nanometer against \(2, 0.5, 0.5\)"):
        load_volume_inputs([img], nm)


def test_segy_trace_coordinates_travel_with_the_prediction_and_zero_coordinates_are_not_compared(tmp_path, capsys):
    """SEG-Y files were compared by line numbers only: a cube of another survey numbered 1..N was
    trained on. The CDP X/Y of the corner traces are compared (to a tenth of a bin: coordinates
    rounded to whole metres beside a 12.5 m bin pass, 2 m off do not); labels whose corners hold
    0, 0 (an export without coordinates) state
    none and are accepted. prediction.zarr carries them: given back as labels it compares fine
    with its SEG-Y image, and is refused beside a cube one bin away."""
    zarr = pytest.importorskip("zarr")
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    _, lab = _volume(tmp_path, image)
    labels = np.load(lab)
    xy = [456000.5, 6780000.25]
    img = _geometry_file(tmp_path / "img.sgy", image, "sgy", {"xy": xy})
    bare = _geometry_file(tmp_path / "bare.sgy", labels, "sgy", {})
    near = _geometry_file(tmp_path / "near.sgy", labels, "sgy", {"xy": [456000.0, 6780000.0]})  # whole metres
    far = _geometry_file(tmp_path / "far.sgy", labels, "sgy", {"xy": [xy[0], xy[1] + 2.0]})
    with pytest.raises(InputError, match=r"labels .*far\.sgy: another grid than image .*img\.sgy's"):
        load_volume_inputs([img], far)
    out = tmp_path / "out"
    assert main(["volume", img, "--labels", bare, "--eval-labels", near, "--out", str(out)] + TINY) == 0
    attrs = zarr.open_array(str(out / "prediction.zarr"), mode="r").attrs
    assert attrs["corner_xy"] == [[456000.5, 6780000.25], [456000.5, 6780112.75], [456175.5, 6780000.25]]
    assert attrs["corner_lines"] == [[1, 1], [1, 10], [8, 1]] and attrs["inlines"] == [1, 8, 1]
    back = load_volume_inputs([img], str(out / "prediction.zarr"))
    assert back.geometry.attrs["corner_xy"] == attrs["corner_xy"]
    away = _geometry_file(tmp_path / "away.sgy", image, "sgy", {"xy": [xy[0], xy[1] + 12.5]})
    with pytest.raises(InputError, match=r"labels .*prediction\.zarr: another grid than image .*away\.sgy's \(trace "
                                         r"coordinates \(CDP X/Y\) inline/crossline 1/1 \(456000\.5, 6780000\.25\)"):
        load_volume_inputs([away], str(out / "prediction.zarr"))


@pytest.mark.parametrize("kind", ["nan", "minus-one"])
def test_nan_and_a_negative_ignore_value_mark_unlabelled_voxels(tmp_path, kind):
    """Float labels with NaN for unlabelled voxels (as segment's and change's label arrays read
    them) were refused ("labels are integers"), and signed labels with -1 could not say so
    (--ignore took 0..65535 only). Both run, with the prediction and scores of the same labels
    written with 255."""
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    img, lab = _volume(tmp_path, image)
    truth = np.zeros(SHAPE, np.uint8)
    truth[:, :, SHAPE[2] // 2:] = 1
    np.save(tmp_path / "truth.npy", truth)
    labels = np.load(lab)
    if kind == "nan":
        other, extra = np.where(labels == 255, np.nan, labels).astype(np.float32), []
    else:
        other, extra = np.where(labels == 255, -1, labels.astype(np.int16)), ["--ignore", "-1"]
    np.save(tmp_path / "other.npy", other)
    runs = {}
    for name, spec, flags in (("255", lab, []), (kind, str(tmp_path / "other.npy"), extra)):
        out = tmp_path / name
        assert main(["volume", img, "--labels", spec, "--eval-labels", str(tmp_path / "truth.npy"),
                     "--out", str(out), *flags] + TINY) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        runs[name] = (np.load(out / "prediction.npy"), {k: metrics[k] for k in ("miou", "iou", "dice")})
    np.testing.assert_array_equal(runs[kind][0], runs["255"][0])
    assert runs[kind][1] == runs["255"][1]


def test_an_infinite_label_and_an_ignore_value_out_of_range_are_refused(tmp_path, capsys):
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    img, lab = _volume(tmp_path, image)
    labels = np.load(lab).astype(np.float32)
    labels[0, 0, 0] = np.inf
    np.save(tmp_path / "inf.npy", labels)
    capsys.readouterr()
    assert main(["volume", img, "--labels", str(tmp_path / "inf.npy"), "--out", str(tmp_path / "o")] + TINY) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: labels {tmp_path / 'inf.npy'} hold the value inf at voxel (0, 0, 0): labels are integers "
                   f"(classes 0, 1, ... and --ignore 255 or NaN; floats with integral values are accepted)"], err
    assert main(["volume", img, "--labels", lab, "--ignore", "70000", "--out", str(tmp_path / "o")] + TINY) == 2
    assert "--ignore 70000: use a label value" in capsys.readouterr().err


def test_tiff_labels_at_an_image_writers_72_dpi_lie_on_an_imagej_images_grid(tmp_path, capsys):
    # labels saved by an image editor (a plain TIFF at 72 pixels an inch, read as 352.8 um
    # pixels) beside the microscope's ImageJ stack at 0.5 um: refused as "another grid". The
    # run takes the image's spacing now and its log says what the labels' tags were taken as
    import json

    tifffile = pytest.importorskip("tifffile")
    image = np.random.default_rng(0).integers(0, 255, SHAPE, dtype=np.uint8)
    _, lab = _volume(tmp_path, image)
    img, lab72 = str(tmp_path / "img.tif"), str(tmp_path / "lab72.tif")
    tifffile.imwrite(img, image, imagej=True, resolution=(2.0, 2.0), metadata={"axes": "ZYX", "spacing": 0.5,
                                                                               "unit": "um"})
    tifffile.imwrite(lab72, np.load(lab), resolution=(72, 72), resolutionunit="INCH")
    out = tmp_path / "out"
    assert main(["volume", img, "--labels", lab72, "--out", str(out), *TINY[:2], *TINY[3:]]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["spacing"], metrics["spacing_source"]) == ([0.5, 0.5, 0.5], "the tiff header, in um")
    err = capsys.readouterr().err
    assert (f"labels {lab72}: its resolution tags hold 72 pixels an inch, an image writer's default, taken as no "
            f"spacing (not compared with image {img}'s)") in err, err


def test_labels_of_grey_levels_are_refused_naming_them(tmp_path, capsys):
    """A label volume of a 0/255 ball with soft (smoothed) edges: its many shades left most
    values below the largest without a voxel, and the refusal listed them as missing classes
    without saying why; it says they look like grey levels of an antialiased mask."""
    from scipy.ndimage import gaussian_filter

    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    img, _ = _volume(tmp_path, image)
    zz, yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    ball = (np.hypot(np.hypot(zz - 4, yy - 5), xx - 6) < 3.5).astype(np.float64) * 255
    np.save(tmp_path / "soft.npy", np.clip(gaussian_filter(ball, 0.8), 0, 254).round().astype(np.uint8))
    capsys.readouterr()
    assert main(["volume", img, "--labels", str(tmp_path / "soft.npy"), "--out", str(tmp_path / "o")] + TINY) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "have no voxel of class" in err[0], err
    assert "look like grey levels (an antialiased" in err[0], err


def test_in_memory_labels_are_checked_before_they_become_uint8():
    """inputs_from_arrays (benchmarks, notebooks) cast the labels to uint8 first: a class 300
    became 44, -1 became 255 (unlabelled), 0.5 became class 0 and NaN an arbitrary class, with
    no word. They are checked as the files are (NaN unlabelled), then cast."""
    from fhcnn.apps.volume.inputs import inputs_from_arrays

    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    lab = np.full(SHAPE, 255, np.uint8)
    lab[4] = (np.arange(SHAPE[2]) >= SHAPE[2] // 2)[None, :].astype(np.uint8)
    nan = np.where(lab == 255, np.nan, lab).astype(np.float32)
    got = inputs_from_arrays([image], nan, eval_labels=nan)
    np.testing.assert_array_equal(got.labels, lab)
    np.testing.assert_array_equal(got.eval_labels, lab)
    assert got.labels.dtype == np.uint8 and got.num_classes == 2
    for value, words in ((300, "300"), (-1, "-1"), (0.5, "0.5")):
        bad = lab.astype(np.float64 if value == 0.5 else np.int16)
        bad[4, 0, 0] = value
        with pytest.raises(InputError, match=rf"labels of array hold the value {words} at voxel \(4, 0, 0\)"):
            inputs_from_arrays([image], bad)
        with pytest.raises(InputError, match=rf"eval labels of array hold the value {words} at voxel \(4, 0, 0\)"):
            inputs_from_arrays([image], lab, eval_labels=bad)
