"""``fhcnn volume`` end to end on tiny generated volumes, every refusal of bad input (one line,
exit 2, no output folder), the nearest-label baseline, the label summary and the per-axis
windows of anisotropic voxels."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from fhcnn.apps.volume import VolumeConfig, copy_nearest_label, engine_config
from fhcnn.cli import main
from fhcnn.data.synthetic_volumes import generate_volume
from tests.apps._volumes import SHAPE, write_tiny_volume

TINY = ["--config", "volume-tiny", "--quiet"]
@pytest.fixture(scope="module")
def vol(tmp_path_factory):
    return write_tiny_volume(tmp_path_factory.mktemp("volcli"))


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.npy"))}


def test_two_channels_end_to_end(vol, tmp_path, capsys):
    before = _digest(vol)
    out = tmp_path / "out"
    rc = main(["volume", str(vol / "c0.npy"), str(vol / "c1.npy"), "--labels", str(vol / "lab.npy"),
               "--eval-labels", str(vol / "truth.npy"), "--out", str(out), "--save-probs"] + TINY)
    assert rc == 0
    assert "mIoU" in capsys.readouterr().out
    # the U-Net baseline trained last leaves the record a lost process's message reads: fhcnn's
    from fhcnn.training import distributed

    assert (distributed._intact_checkpoint() or Path()).parent == out / "checkpoints"
    pred = np.load(out / "prediction.npy")
    assert pred.shape == SHAPE and pred.dtype == np.uint8 and pred.max() < 3
    m = json.loads((out / "metrics.json").read_text())
    assert m["channels"] == 2 and m["num_classes"] == 3
    assert m["annotation"]["dense_slices"] == [[3, 12], [8], []]
    assert set(m["baselines"]) == {"copy", "forest", "unet"}
    for entry in [m["fhcnn"], *m["baselines"].values()]:
        assert 0 <= entry["miou"] <= 1 and len(entry["iou"]) == 3 and len(entry["dice"]) == 3
    # the scores are those of prediction.npy where the labels are unlabelled
    from fhcnn.apps.volume import score

    truth, lab = np.load(vol / "truth.npy"), np.load(vol / "lab.npy")
    held = np.where(lab == 255, truth, 255)
    assert score(pred, held, 3)["miou"] == pytest.approx(m["miou"])
    assert m["fhcnn"]["scored_voxels"] == int((lab == 255).sum())
    import zarr

    probs = zarr.open_array(str(out / "probabilities.zarr"), mode="r")
    assert probs.shape == (3, *SHAPE) and probs.dtype == np.float16
    p = np.asarray(probs[...]).astype(np.float32)
    np.testing.assert_allclose(p.sum(0), 1, atol=3e-3)
    top2 = np.sort(p, 0)[-2:]
    clear = top2[1] - top2[0] > 2e-3    # float16 rounding may swap near-ties only
    np.testing.assert_array_equal(p.argmax(0)[clear], pred[clear])
    files = json.loads((out / "run.json").read_text())["files"]
    for name in ("prediction.npy", "metrics.json", "figure.png", "model.safetensors", "config.yaml"):
        assert name in files and (out / name).is_file()
    assert any(f.startswith("probabilities.zarr/") for f in files)
    assert _digest(vol) == before   # inputs unchanged
    # a second run into the same folder is refused; --overwrite replaces it
    assert main(["volume", str(vol / "c0.npy"), "--labels", str(vol / "lab.npy"), "--out", str(out)] + TINY) == 2
    assert main(["volume", str(vol / "c0.npy"), "--labels", str(vol / "lab.npy"), "--out", str(out),
                 "--overwrite"] + TINY) == 0
    assert not (out / "probabilities.zarr").exists()


def test_the_log_names_the_unet_training_and_the_time_of_each_phase(vol, tmp_path, capsys):
    # the U-Net baseline trains after fhcnn, without a progress bar: before, its only line was a
    # second "torch threads" line, and the baselines' lines gave no time, so a long wait there
    # (the shipped config trains it 1000 steps) was nowhere in the log; nor were the times of
    # the pass over the inputs and of the one-time copy of a compressed input
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(np.load(vol / "c0.npy"), np.eye(4)), str(tmp_path / "c0.nii.gz"))
    out = tmp_path / "out"
    assert main(["volume", str(tmp_path / "c0.nii.gz"), "--labels", str(vol / "lab.npy"), "--eval-labels",
                 str(vol / "truth.npy"), "--out", str(out), "--config", "volume-tiny"]) == 0
    err = capsys.readouterr().err.splitlines()
    m = json.loads((out / "metrics.json").read_text())
    said = err.index("unet baseline (volume.baselines): training 3 steps before fhcnn predicts")
    assert said < next(i for i, line in enumerate(err) if line.startswith("fhcnn: trained"))
    for name, b in m["baselines"].items():
        line = next(line for line in err if line.startswith(f"{name:7s} mIoU"))
        assert line.endswith(f" in {b['time_s']:.0f} s"), line
    assert (f"inputs read, checked and summarized (labels scanned, channel statistics) in "
            f"{m['inputs_time_s']:.0f} s") in err
    copied = [line for line in err if line.startswith("image0: read by window from a chunked copy")]
    assert len(copied) == 1 and re.search(r"\(its file is compressed\); copied in \d+ s$", copied[0]), copied


def test_one_file_with_a_channel_axis_is_the_same_volume(vol):
    from fhcnn.apps.volume import load_volume_inputs

    two = load_volume_inputs([str(vol / "c0.npy"), str(vol / "c1.npy")], str(vol / "lab.npy"))
    one = load_volume_inputs([str(vol / "both.npy")], str(vol / "lab.npy"))       # (D, H, W, 2): axis 3
    forced = load_volume_inputs([str(vol / "both.npy")], str(vol / "lab.npy"), channel_axis=-1)
    def whole(inputs):
        return np.stack([np.asarray(c[:, :, :]) for c in inputs.channels])

    assert len(one.channels) == len(forced.channels) == 2
    np.testing.assert_array_equal(whole(one), whole(two))
    np.testing.assert_array_equal(whole(forced), whole(two))


def _refused(capsys, tmp_path, args):
    out = tmp_path / "refused"
    rc = main(["volume", *args, "--out", str(out)] + TINY)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists()
    return err[0]


def test_refusals(vol, tmp_path, capsys):
    lab, c0 = np.load(vol / "lab.npy"), np.load(vol / "c0.npy")

    def save(name, arr):
        np.save(tmp_path / name, arr)
        return str(tmp_path / name)

    img, labels = str(vol / "c0.npy"), str(vol / "lab.npy")
    # shapes that differ: labels vs images, and between images
    assert "grid" in _refused(capsys, tmp_path, [img, "--labels", save("l.npy", lab[:-1])])
    assert "one grid" in _refused(capsys, tmp_path, [img, save("c.npy", c0[:, :-1]), "--labels", labels])
    assert "grid" in _refused(capsys, tmp_path, [img, "--labels", labels, "--eval-labels",
                                                      save("e.npy", lab[:, :-1])])
    # a label value that is neither a class nor --ignore
    bad = lab.astype(np.int32)
    bad[0, 0, 0] = 300
    assert "neither a class" in _refused(capsys, tmp_path, [img, "--labels", save("v.npy", bad)])
    bad[0, 0, 0] = -1
    assert "neither a class" in _refused(capsys, tmp_path, [img, "--labels", save("v.npy", bad)])
    assert "integers" in _refused(capsys, tmp_path, [img, "--labels", save("f.npy", lab.astype(np.float32) + 0.5)])
    # no labelled voxel of some class (2 missing; or only in --eval-labels)
    gap = lab.copy()
    gap[gap == 1] = 255
    msg = _refused(capsys, tmp_path, [img, "--labels", save("g.npy", gap)])
    assert "no voxel of class 1" in msg
    only = lab.copy()
    only[only == 2] = 255
    msg = _refused(capsys, tmp_path, [img, "--labels", save("o.npy", only), "--eval-labels", str(vol / "truth.npy")])
    assert "no labelled voxel of class 2" in msg and "eval-labels" in msg
    one = np.where(lab == 255, 255, 0).astype(np.uint8)
    assert "only class 0" in _refused(capsys, tmp_path, [img, "--labels", save("one.npy", one)])
    # a lying header: the .npy header promises more voxels than the file holds
    raw = (vol / "c0.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(raw[:-100])
    assert "lying header" in _refused(capsys, tmp_path, [str(tmp_path / "short.npy"), "--labels", labels])
    # a NaN volume, a volume of one value
    nan = c0.astype(np.float32)
    nan[5, 2, 2] = np.nan
    assert "NaN" in _refused(capsys, tmp_path, [save("nan.npy", nan), "--labels", labels])
    assert "nothing to segment" in _refused(capsys, tmp_path, [save("flat.npy", np.zeros(SHAPE, np.float32)),
                                                               "--labels", labels])
    # a channel axis that cannot be told, or that is not there
    cube = np.zeros((16, 16, 16, 16), np.float32)
    assert "--channel-axis" in _refused(capsys, tmp_path, [save("cube.npy", cube), "--labels", labels])
    # a missing file
    assert "no such file" in _refused(capsys, tmp_path, [str(tmp_path / "none.npy"), "--labels", labels])


def test_ignore_value_marks_unlabelled(vol, tmp_path):
    lab = np.load(vol / "lab.npy")
    np.save(tmp_path / "l9.npy", np.where(lab == 255, 9, lab).astype(np.uint8))
    out = tmp_path / "out"
    assert main(["volume", str(vol / "c0.npy"), "--labels", str(tmp_path / "l9.npy"), "--ignore", "9",
                 "--eval-labels", str(vol / "truth.npy"), "--out", str(out),
                 "--set", "volume.baselines=copy"] + TINY) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_classes"] == 3 and m["fhcnn"]["scored_voxels"] == int((lab == 255).sum())


def test_copy_nearest_label_is_the_nearest_annotated_slice():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (12, 5, 6)).astype(np.uint8)
    lab = np.full(truth.shape, 255, np.uint8)
    lab[[1, 7]] = truth[[1, 7]]
    got = copy_nearest_label(lab)
    for z in range(12):
        nearest = 1 if abs(z - 1) < abs(z - 7) else 7 if abs(z - 7) < abs(z - 1) else None
        if nearest is not None:
            np.testing.assert_array_equal(got[z], truth[nearest])
    # slices on two axes: each voxel copies the nearest annotated slice, whichever axis
    lab2 = np.full(truth.shape, 255, np.uint8)
    lab2[0] = truth[0]
    lab2[:, :, 5] = truth[:, :, 5]
    got2 = copy_nearest_label(lab2)
    assert got2[9, 2, 4] == truth[9, 2, 5] and got2[1, 2, 0] == truth[0, 2, 0]
    # the spacing weighs the distance: with D three times coarser, W is nearer
    assert copy_nearest_label(lab2, (3.0, 1.0, 1.0))[1, 2, 3] == truth[1, 2, 5]
    assert copy_nearest_label(lab2)[1, 2, 3] == truth[0, 2, 3]


@pytest.mark.parametrize("spacing", [None, (2.0, 1.0, 0.5)])
def test_copy_is_the_nearest_labelled_voxel_read_box_by_box(spacing):
    """The copy baseline, read by any box, is the label of a nearest labelled voxel: its distance
    equals scipy's exact Euclidean distance transform (the oracle) everywhere, and the boxes
    agree with the whole; scored slab by slab it gives the whole volume's confusion matrix."""
    from scipy import ndimage

    from fhcnn.apps.volume.baselines import NearestLabel, confusion_by_slabs, labelled_voxels
    from fhcnn.engine.metrics import confusion_matrix

    rng = np.random.default_rng(4)
    truth = rng.integers(0, 3, (11, 9, 10)).astype(np.uint8)
    lab = np.full(truth.shape, 255, np.uint8)
    lab[2] = truth[2]
    lab[:, :, 7] = truth[:, :, 7]
    scribble = rng.random(truth.shape) < 0.02
    lab[scribble] = truth[scribble]
    near = NearestLabel(lab, spacing)
    whole = near[:, :, :]
    sp = np.ones(3) if spacing is None else np.asarray(spacing)
    want = ndimage.distance_transform_edt(lab == 255, sampling=tuple(sp))
    idx, values = labelled_voxels(lab)
    coords = np.stack(np.unravel_index(idx, lab.shape), 1)
    # the label copied is the label of some labelled voxel at exactly the nearest distance
    for p in np.ndindex(lab.shape):
        d = np.sqrt((((coords - p) * sp) ** 2).sum(1))
        assert whole[p] in values[np.isclose(d, want[p], rtol=0, atol=1e-9)]
    np.testing.assert_array_equal(whole[lab != 255], lab[lab != 255])
    for box in [(slice(1, 6), slice(0, 9, 2), slice(3, 4)), (4,), (slice(None), 3, slice(2, 8)), (-1, -2, -3)]:
        np.testing.assert_array_equal(near[box], whole[box])
    held = np.where(lab == 255, truth, 255).astype(np.uint8)
    np.testing.assert_array_equal(confusion_by_slabs(near, held, 3, slab_voxels=100),
                                  confusion_matrix(whole, held, 3))


@pytest.mark.parametrize("spacing", [None, (2.0, 1.0, 0.5)])
def test_copy_takes_the_first_in_c_order_of_all_equally_near(spacing):
    """Of several labelled voxels equally near (common between slices along three axes: a voxel
    can be as near to four or more), the copy takes the label of the first in C order, as a
    brute-force search over every labelled voxel does (exact distances: integer coordinates
    and powers of two)."""
    from fhcnn.apps.volume.baselines import NearestLabel, labelled_voxels

    rng = np.random.default_rng(7)
    truth = rng.integers(0, 4, (13, 12, 14)).astype(np.uint8)
    lab = np.full(truth.shape, 255, np.uint8)
    for key in [(slice(2, 3),), (slice(10, 11),), (slice(None), slice(6, 7)), (slice(None), slice(None), slice(3, 4)),
                (slice(None), slice(None), slice(11, 12)), (slice(6, 7), slice(2, 3), slice(8, 9))]:
        lab[key] = truth[key]
    idx, values = labelled_voxels(lab)
    sp = np.ones(3) if spacing is None else np.asarray(spacing)
    coords = np.stack(np.unravel_index(idx, lab.shape), 1) * sp
    want = np.empty(lab.shape, np.uint8)
    ties = 0
    for p in np.ndindex(lab.shape):
        d2 = ((coords - np.asarray(p) * sp) ** 2).sum(1)
        nearest = np.flatnonzero(d2 == d2.min())
        ties += nearest.size > 2
        want[p] = values[nearest[0]]
    assert ties >= 20  # voxels with three or more equally near: the case that matters
    np.testing.assert_array_equal(NearestLabel(lab, spacing)[:, :, :], want)


def test_forest_predicts_any_box_as_the_whole_and_samples_per_class():
    from fhcnn.apps.volume.baselines import ForestPrediction, forest_baseline

    image, truth = generate_volume("cells", (16, 20, 18), seed=3, channel=0)
    lab = np.full(truth.shape, 255, np.uint8)
    lab[[3, 11]] = truth[[3, 11]]
    whole, costs = forest_baseline([image, image ** 2], lab, 3, trees=5, samples=300, seed=1)
    forest = ForestPrediction([image, image ** 2], lab, 3, trees=5, samples=300, seed=1, slab_voxels=700)
    per_class = sum(min(int((lab == k).sum()), 100) for k in range(3))  # 100 of each class, or all it has
    assert costs["fit_voxels"] == forest.fit_voxels == per_class < 300
    for box in [(slice(0, 16), slice(2, 9), slice(0, 18)), (slice(5, 6),), (slice(1, 15, 3), slice(4, 5))]:
        np.testing.assert_array_equal(forest[box], whole[box])
    assert set(np.unique(whole).tolist()) == {0, 1, 2}


class _Largest:
    """An array-like that keeps the size of the largest box read from it."""

    def __init__(self, a):
        self.a, self.largest = a, 0
        self.shape, self.dtype, self.ndim = a.shape, a.dtype, a.ndim

    def __getitem__(self, key):
        out = self.a[key]
        self.largest = max(self.largest, out.size)
        return out


def test_baselines_read_boxes_smaller_than_a_plane():
    """The labelled voxels and the forest's statistics pass are read in boxes of at most
    ``slab_voxels`` even where one plane is larger (a flat, wide volume), with the results of
    reading whole slabs."""
    from fhcnn.apps.volume.baselines import ForestPrediction, labelled_voxels

    image, truth = generate_volume("cells", (6, 40, 30), seed=2, channel=0)
    lab = np.full(truth.shape, 255, np.uint8)
    lab[[1, 4]] = truth[[1, 4]]
    lab[:, 7, 3] = truth[:, 7, 3]
    want = labelled_voxels(lab, slab_voxels=10**9)
    np.testing.assert_array_equal(want[0], np.flatnonzero(lab != 255))
    read = _Largest(lab)
    got = labelled_voxels(read, slab_voxels=100)
    assert read.largest <= 100 < 40 * 30
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    whole = ForestPrediction([image], lab, 3, trees=3, samples=200, seed=0, slab_voxels=10**9)
    channel = _Largest(image)
    boxed = ForestPrediction([channel], lab, 3, trees=3, samples=200, seed=0, slab_voxels=100, voxels=got)
    assert channel.largest <= 100
    np.testing.assert_allclose(boxed.mu, whole.mu, rtol=1e-12)
    np.testing.assert_allclose(boxed.sd, whole.sd, rtol=1e-9)
    np.testing.assert_array_equal(boxed[:, :, :], whole[:, :, :])


def test_anisotropic_spacing_shortens_windows_along_coarse_axes():
    cfg = VolumeConfig()
    cfg.data.window_depth = cfg.data.window_height = cfg.data.window_width = 64
    seg, line = engine_config(cfg, (4.0, 1.0, 1.0), (100, 200, 200))
    assert (seg.data.window_depth, seg.data.window_height, seg.data.window_width) == (16, 64, 64)
    assert "anisotropic" in line
    seg, line = engine_config(cfg, (1.0, 1.0, 1.0), (100, 200, 200))
    assert seg.data.window_depth == 64 and "isotropic" in line
    cfg.volume.physical_windows = False
    seg, _ = engine_config(cfg, (4.0, 1.0, 1.0), (100, 200, 200))
    assert seg.data.window_depth == 64


def test_nifti_prediction_keeps_the_affine_and_anisotropic_spacing_shortens_windows(vol, tmp_path):
    """A NIfTI volume with 2 x 1 x 1 mm voxels and a rotated, shifted affine: the prediction opens
    on the same grid (affine and shape equal to the input's), and the windows along the coarse
    axis are half as long (the log line and metrics say so)."""
    nib = pytest.importorskip("nibabel")
    c0, lab, truth = (np.load(vol / f"{n}.npy") for n in ("c0", "lab", "truth"))
    affine = np.array([[0.0, 0.0, 1.0, -7.5], [0.0, 1.0, 0.0, 3.0], [2.0, 0.0, 0.0, 11.0], [0, 0, 0, 1]])
    for name, arr in (("img", c0), ("lab", lab), ("truth", truth)):
        nib.save(nib.Nifti1Image(arr, affine), tmp_path / f"{name}.nii.gz")
    out = tmp_path / "out"
    rc = main(["volume", str(tmp_path / "img.nii.gz"), "--labels", str(tmp_path / "lab.nii.gz"),
               "--eval-labels", str(tmp_path / "truth.nii.gz"), "--out", str(out),
               "--set", "volume.baselines=copy", "--set", "data.window_depth=8"] + TINY)
    assert rc == 0
    pred = nib.load(out / "prediction.nii.gz")
    np.testing.assert_allclose(pred.affine, nib.load(tmp_path / "img.nii.gz").affine)
    assert pred.shape == SHAPE
    m = json.loads((out / "metrics.json").read_text())
    assert m["spacing"] == [2.0, 1.0, 1.0] and "anisotropic" in m["spacing_handling"]
    assert m["train_window"] == [4, 8, 8]
    held = np.where(lab == 255, truth, 255)
    from fhcnn.apps.volume import score

    assert score(np.asarray(pred.dataobj), held, 3)["miou"] == pytest.approx(m["miou"])
    # run.json lists what the folder holds: the prediction's scratch .nii, written in place and
    # removed once gzipped, has left the record too
    record = json.loads((out / "run.json").read_text())
    held_files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "run.json"}
    assert set(record["files"]) == held_files == set(record["written"]), sorted(set(record["files"]) ^ held_files)


def test_compressed_inputs_are_read_from_one_chunked_copy_and_predict_the_same(vol, tmp_path):
    """A ``.nii.gz`` image, labels and truth (slow to read by window) are copied once into
    ``OUT/inputs/*.zarr`` (recorded in run.json) and the run reads its windows from the copies:
    the prediction equals that of the same volume given as uncompressed ``.nii`` files."""
    nib = pytest.importorskip("nibabel")
    c0, lab, truth = (np.load(vol / f"{n}.npy") for n in ("c0", "lab", "truth"))
    runs = {}
    for ext in ("nii", "nii.gz"):
        for name, arr in (("img", c0), ("lab", lab), ("truth", truth)):
            nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / f"{name}.{ext}")
        out = tmp_path / f"out-{ext}"
        rc = main(["volume", str(tmp_path / f"img.{ext}"), "--labels", str(tmp_path / f"lab.{ext}"),
                   "--eval-labels", str(tmp_path / f"truth.{ext}"), "--out", str(out),
                   "--set", "volume.baselines=copy"] + TINY)
        assert rc == 0
        runs[ext] = np.asarray(nib.load(out / "prediction.nii.gz").dataobj)
    copies = sorted(p.name for p in (tmp_path / "out-nii.gz" / "inputs").iterdir())
    assert copies == ["eval_labels.zarr", "image0.zarr", "labels.zarr"]
    assert not (tmp_path / "out-nii" / "inputs").exists()
    record = json.loads((tmp_path / "out-nii.gz" / "run.json").read_text())
    assert any(f.startswith("inputs/image0.zarr/") for f in record["files"])
    np.testing.assert_array_equal(runs["nii"], runs["nii.gz"])


def test_resume_reads_the_runs_chunked_copies_again_unless_changed(vol, tmp_path, capsys):
    """``--resume`` of a run with a compressed input reads the copies in ``OUT/inputs`` again
    (not a byte rewritten) and predicts the same; a copy that lost a file is made again from the
    input; one with a changed file is neither read nor replaced (exit 2, naming the file)."""
    nib = pytest.importorskip("nibabel")
    c0, lab = (np.load(vol / f"{n}.npy") for n in ("c0", "lab"))
    for name, arr in (("img", c0), ("lab", lab)):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / f"{name}.nii.gz")
    out = tmp_path / "out"
    args = ["volume", str(tmp_path / "img.nii.gz"), "--labels", str(tmp_path / "lab.nii.gz"), "--out", str(out),
            "--set", "volume.baselines=copy", "--set", "train.checkpoint_every=1"] + TINY[:2]  # logged
    assert main(args) == 0
    first = np.asarray(nib.load(out / "prediction.nii.gz").dataobj)
    copy = out / "inputs" / "image0.zarr"

    def stamps() -> dict[str, tuple[int, int]]:
        return {p.relative_to(copy).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
                for p in copy.rglob("*") if p.is_file()}

    before = stamps()
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    assert capsys.readouterr().err.count("is read again") == 2  # image0 and labels
    assert stamps() == before
    np.testing.assert_array_equal(np.asarray(nib.load(out / "prediction.nii.gz").dataobj), first)

    chunk = sorted(p for p in copy.rglob("*") if p.is_file() and "zarr" not in p.name)[0]
    chunk.unlink()                                           # a copy with a file missing: made again
    assert main(args + ["--resume"]) == 0
    assert capsys.readouterr().err.count("is read again") == 1  # labels only
    assert chunk.is_file() and set(stamps()) == set(before)
    np.testing.assert_array_equal(np.asarray(nib.load(out / "prediction.nii.gz").dataobj), first)

    labels = out / "inputs" / "labels.zarr"
    changed = sorted(p for p in labels.rglob("*") if p.is_file() and "zarr" not in p.name)[0]
    changed.write_bytes(changed.read_bytes()[::-1])
    assert main(args + ["--resume"]) == 2                     # a changed file: never read, never replaced
    assert "labels.zarr" in (err := capsys.readouterr().err) and "changed after fhcnn wrote it" in err


def test_resume_continues_only_the_same_run(vol, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["volume", str(vol / "c0.npy"), "--labels", str(vol / "lab.npy"), "--out", str(out),
            "--set", "train.checkpoint_every=1"] + TINY
    assert main(args) == 0
    first = np.load(out / "prediction.npy")
    assert main(args + ["--resume"]) == 0          # nothing left to train: the same model predicts again
    np.testing.assert_array_equal(np.load(out / "prediction.npy"), first)
    capsys.readouterr()
    assert main(args + ["--resume", "--set", "train.lr=0.1"]) == 2
    assert "config" in capsys.readouterr().err


@pytest.mark.parametrize("unlabelled", ["entropy", "teacher"])
def test_a_resumed_run_counts_its_steps_from_the_checkpoint(vol, tmp_path, unlabelled):
    # the unlabelled-voxel term's ramp (and the records of metrics.json) follow the run's step:
    # resumed at step 2 of 6, the ramp went on from step 3 (it started again at step 1: the
    # resumed run ended with other weights), and the records of steps 3..6 were numbered 1..4;
    # the mean teacher goes on from the checkpoint's (it was made again from the student)
    from safetensors.numpy import load_file

    full, cut = tmp_path / "full", tmp_path / "cut"
    args = ["volume", str(vol / "c0.npy"), "--labels", str(vol / "lab.npy"), "--set", "train.steps=6",
            "--set", "train.checkpoint_every=2", "--set", "train.keep_last=5", "--set", f"data.unlabelled={unlabelled}",
            "--set", "data.unlabelled_start=0.3", "--set", "data.unlabelled_full=0.6",
            "--set", "data.pseudo_threshold=0.01"] + TINY  # the teacher's every guess counts
    assert main(args + ["--out", str(full)]) == 0
    shutil.copytree(full, cut)
    for step in (4, 6):  # the run stopped after its checkpoint of step 2
        shutil.rmtree(cut / "checkpoints" / f"step-{step:06d}")
    assert main(args + ["--out", str(cut), "--resume"]) == 0
    a, b = load_file(str(full / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)  # bit-identical, as docs/training.md promises
    # metrics.json reports the whole run: steps 1..6 (the checkpoint keeps the records and the
    # training time so far; it held only the resumed process's steps, and none at all when a
    # finished run was resumed)
    history = json.loads((cut / "metrics.json").read_text())["history"]
    whole = json.loads((full / "metrics.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert [h["loss"] for h in history] == [h["loss"] for h in whole["history"]]
    assert main(args + ["--out", str(full), "--resume"]) == 0   # finished: nothing left to train
    again = json.loads((full / "metrics.json").read_text())
    assert again["history"] == whole["history"]
    assert again["train_time_s"] >= whole["history"][-1]["time_s"]  # every step's training time


def test_zarr_volume_from_write_volume_gives_prediction_zarr_with_its_spacing(tmp_path):
    """A generated zarr group (image and labels as inner paths, spacing in the attributes):
    the prediction is prediction.zarr on the same grid, carrying the spacing."""
    zarr = pytest.importorskip("zarr")
    from fhcnn.data.synthetic_volumes import write_volume

    w = write_volume("seismic", tmp_path / "cube.zarr", SHAPE, seed=0, dtype="float32", chunks=(8, 8, 8))
    group = zarr.open_group(str(tmp_path / "cube.zarr"), mode="r+")
    group["image"].attrs["spacing"] = [1.0, 1.0, 1.0]
    truth = group["labels"][...]
    lab = np.full(SHAPE, 255, np.uint8)
    lab[[2, 9, 14]] = truth[[2, 9, 14]]
    group.create_array("sparse", shape=SHAPE, dtype="uint8")[...] = lab
    out = tmp_path / "out"
    rc = main(["volume", w.image, "--labels", f"{tmp_path / 'cube.zarr'}:sparse", "--eval-labels", w.labels,
               "--out", str(out), "--set", "volume.baselines=copy,forest"] + TINY)
    assert rc == 0
    pred = zarr.open_array(str(out / "prediction.zarr"), mode="r")
    assert pred.shape == SHAPE and pred.dtype == np.uint8 and list(pred.attrs["spacing"]) == [1.0, 1.0, 1.0]
    m = json.loads((out / "metrics.json").read_text())
    assert m["prediction_file"] == "prediction.zarr" and set(m["baselines"]) == {"copy", "forest"}


def test_a_zarr_store_is_an_input_out_may_not_enter_and_resume_checks(tmp_path, capsys):
    """An image or labels given as ``x.zarr:array`` stand for the store: OUT inside it, or the
    array's folder itself, was written into the user's store (no check matched the spec to a
    path), and --resume fingerprinted the spec as "missing" (labels changed since, or another
    array of the store, resumed without a word)."""
    zarr = pytest.importorskip("zarr")
    from fhcnn.data.synthetic_volumes import write_volume

    store = tmp_path / "cube.zarr"
    w = write_volume("seismic", store, SHAPE, seed=0, dtype="float32", chunks=(8, 8, 8))
    group = zarr.open_group(str(store), mode="r+")
    truth = group["labels"][...]
    lab = np.full(SHAPE, 255, np.uint8)
    lab[[2, 9, 14]] = truth[[2, 9, 14]]
    group.create_array("sparse", shape=SHAPE, dtype="uint8")[...] = lab
    args = ["volume", w.image, "--labels", f"{store}:sparse", "--set", "volume.baselines="] + TINY
    listing = sorted(p.relative_to(store).as_posix() for p in store.rglob("*"))
    for out in (store / "run", store, store / "sparse"):
        assert main(args + ["--out", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and "inside the input folder" in err
        assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) == listing
    out = tmp_path / "out"
    assert main(args + ["--out", str(out)]) == 0
    lab[5] = truth[5]
    group["sparse"][...] = lab           # the labels changed since
    assert main(args + ["--out", str(out), "--resume"]) == 2
    assert "labels" in capsys.readouterr().err
    again = ["--out", str(tmp_path / "again")]
    assert main([*args[:3], f"{store}:labels", *args[4:]] + again) == 0  # ... another array of the store
    capsys.readouterr()
    assert main(args + again + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "'labels': 'sparse'" in err and "the arrays read inside the input stores" in err and "--arrays" not in err


@pytest.mark.parametrize("name", ["volume", "volume-tiny"])
def test_shipped_volume_configs_build_their_networks(name):
    import torch

    from fhcnn.config import load_config
    from fhcnn.engine import build_model, size_multiple_of

    cfg = load_config(VolumeConfig, name, [])
    for arch in ("hyperbolic", "unet"):
        cfg.model.arch = arch
        model = build_model(cfg.model, 2, 3)
        win = (cfg.data.window_depth, cfg.data.window_height, cfg.data.window_width)
        assert all(w % size_multiple_of(cfg.model) == 0 for w in win)
        with torch.no_grad():
            assert model(torch.rand(1, 2, *win)).shape == (1, 3, *win)


def test_baselines_that_would_not_fit_are_refused_before_out_exists(tmp_path, monkeypatch, capsys):
    """The baselines keep every labelled voxel (fhcnn's prediction keeps none): scoring them when
    that exceeds the available memory is refused with one line naming the way out, before OUT
    exists; without them the same run goes ahead."""
    import fhcnn.resources
    from fhcnn.apps.volume.baselines import SLAB_VOXELS, baseline_bytes

    shape = (32, 32, 32)
    image, truth = generate_volume("cells", shape, seed=2, channel=0, dtype="uint8")
    lab = np.full(shape, 255, np.uint8)
    lab[[4, 20]] = truth[[4, 20]]
    for name, arr in (("img", image), ("lab", lab), ("truth", truth)):
        np.save(tmp_path / f"{name}.npy", arr)
    need = baseline_bytes(2 * 32 * 32, ["copy", "forest", "unet"])
    assert need == 2 * 32 * 32 * 57 + SLAB_VOXELS * 64
    assert baseline_bytes(2 * 32 * 32, ["forest"]) == 2 * 32 * 32 * 9 + SLAB_VOXELS * 64
    # room for the training and prediction batches of volume-tiny, not for the baselines
    monkeypatch.setattr(fhcnn.resources, "available_memory", lambda: (need - 1, "test RAM"))
    args = ["volume", str(tmp_path / "img.npy"), "--labels", str(tmp_path / "lab.npy"), "--eval-labels",
            str(tmp_path / "truth.npy"), *TINY]
    out = tmp_path / "out"
    capsys.readouterr()
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "baselines (copy,forest,unet) on 2,048 labelled voxels" in err[0] \
        and "volume.baselines=" in err[0], err
    assert not out.exists()
    assert main([*args, "--out", str(out), "--set", "volume.baselines="]) == 0
    assert (out / "prediction.npy").exists()


def test_the_forest_baseline_without_scikit_learn_is_refused_before_out_exists(vol, tmp_path, monkeypatch, capsys):
    """The forest baseline is a default of ``--eval-labels``: without scikit-learn the run is
    refused with one line naming the install and the way out, before OUT exists (not after
    training); leaving the forest out, the same run goes ahead."""
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn.ensemble: ImportError
    monkeypatch.setitem(sys.modules, "sklearn.ensemble", None)
    args = [str(vol / "c0.npy"), "--labels", str(vol / "lab.npy"), "--eval-labels", str(vol / "truth.npy")]
    msg = _refused(capsys, tmp_path, args)
    assert "forest baseline" in msg and "scikit-learn" in msg and "fhcnn[volume]" in msg \
        and "volume.baselines=copy,unet" in msg, msg
    out = tmp_path / "out"
    assert main(["volume", *args, "--out", str(out), *TINY, "--set", "volume.baselines=copy"]) == 0
    assert set(json.loads((out / "metrics.json").read_text())["baselines"]) == {"copy"}


def test_a_split_refusal_offers_window_sizes_to_set_on_anisotropic_voxels(monkeypatch):
    """With anisotropic voxels the engine's windows are the configured ones scaled by the
    spacing; a split the window cannot take is refused offering the configured size that works
    (docs/spatial.md: each change offered passes the whole check, applied alone), not the
    engine's scaled size (``--set data.window_height=4`` became a window of 2, refused again)."""
    import fhcnn.training.distributed
    from fhcnn.apps.volume import plan_volume
    from fhcnn.apps.volume.inputs import inputs_from_arrays
    from fhcnn.config import load_config
    from fhcnn.engine.parallel import SplitError, fix_sets

    monkeypatch.setattr(fhcnn.training.distributed, "world_size", lambda: 2)  # as under torchrun
    rng = np.random.default_rng(0)
    image = rng.normal(size=(16, 24, 24)).astype(np.float32)
    lab = np.full(image.shape, 255, np.uint8)
    lab[8] = rng.random((24, 24)) > 0.5
    inputs = inputs_from_arrays([image], lab)
    sets = ["volume.spacing=0.5,0.8,0.8", "parallel.space=2", "parallel.axes=[1]"]
    with pytest.raises(SplitError) as refused:
        plan_volume(inputs, load_config(VolumeConfig, "volume-tiny", sets))
    window = [f for f in refused.value.fixes if "data.window_height" in f]
    assert window == [{"data.window_height": 6}]  # 6 x 0.5/0.8 -> 4 voxels, 2 a slab
    assert "--set data.window_height=6" in str(refused.value)
    for fix in refused.value.fixes:
        if "processes" not in fix:
            plan_volume(inputs, load_config(VolumeConfig, "volume-tiny", sets + fix_sets(fix)))  # passes


@pytest.mark.parametrize("k", [2, 10, 11, 20, 256])
def test_every_class_has_a_colour_of_its_own_in_the_figure(k):
    """The figure coloured class c and c + 10 alike (ten colours, repeated): with 20 classes
    half of them could not be told apart, and class 10 was drawn black as the background."""
    from fhcnn.apps.volume.outputs import class_colours

    colours = class_colours(k)
    assert colours.shape == (k, 3) and colours.min() >= 0 and colours.max() <= 1
    assert len({tuple(np.round(c, 4)) for c in colours}) == k
    assert np.array_equal(colours[0], [0, 0, 0]) and (colours[1:].max(1) > 0).all()


class _LargestRead:
    """An array-like that keeps the most voxels one read handed out."""

    def __init__(self, a: np.ndarray) -> None:
        self.a, self.shape, self.dtype, self.largest = a, a.shape, a.dtype, 0

    def __getitem__(self, key):
        out = self.a[key]
        self.largest = max(self.largest, out.size)
        return out


def test_figure_slices_of_a_large_volume_are_subsampled_and_read_in_blocks() -> None:
    """figure.png's centre slices (image, labels, prediction, truth) are drawn every s-th voxel
    along an axis longer than FIGURE_SIDE and read in blocks of rows: a flat volume whose slice is
    the whole volume is never read, or drawn, whole (the figure's memory does not grow with it)."""
    from fhcnn.apps.volume.outputs import _SLICE_BLOCK, FIGURE_SIDE, centre_slices, figure_steps

    a = np.random.default_rng(0).integers(0, 255, (3, 1300, 2100)).astype(np.uint8)
    arr = _LargestRead(a)
    centre = [1, 650, 1050]
    steps = figure_steps(a.shape)
    got = centre_slices(arr, centre)
    assert steps == (1, 3, 5)
    assert arr.largest <= 2 * _SLICE_BLOCK < a[1].size, arr.largest
    assert all(max(s.shape) <= FIGURE_SIDE for s in got), [s.shape for s in got]
    np.testing.assert_array_equal(got[0], a[1, ::3, ::5])
    np.testing.assert_array_equal(got[1], a[:, 650, ::5])
    np.testing.assert_array_equal(got[2], a[:, ::3, 1050])
    small = np.arange(4 * 5 * 6).reshape(4, 5, 6)  # below FIGURE_SIDE: the slices themselves
    for s, want in zip(centre_slices(small, [2, 2, 3]), (small[2], small[:, 2], small[:, :, 3])):
        np.testing.assert_array_equal(s, want)


def test_baselines_are_scored_in_boxes_of_at_most_a_slab_even_where_a_plane_is_larger() -> None:
    """confusion_by_slabs (the copy and forest baselines' scoring pass, ~100 bytes a voxel of a
    box for the copy's queries) cuts a plane larger than the slab into rows: a flat volume's
    plane, or a whole flat volume, is never predicted at once."""
    from fhcnn.apps.volume.baselines import NearestLabel, confusion_by_slabs
    from fhcnn.engine.metrics import confusion_matrix

    rng = np.random.default_rng(1)
    lab = np.full((2, 300, 200), 255, np.uint8)
    lab[0, ::50] = rng.integers(0, 3, (6, 200))
    truth = rng.integers(0, 3, lab.shape).astype(np.uint8)
    truth[0, ::50] = 255
    pred, held = _LargestRead(NearestLabel(lab)[:, :, :]), _LargestRead(truth)
    got = confusion_by_slabs(pred, held, 3, slab_voxels=5000)
    np.testing.assert_array_equal(got, confusion_matrix(pred.a, truth, 3))
    assert max(pred.largest, held.largest) <= 5000 < 300 * 200, (pred.largest, held.largest)


def test_inputs_from_arrays_are_checked_like_files():
    """The API's in-memory inputs get the checks of the command's files before anything is
    trained: eval labels holding a class the sparse labels never label (the deepest formation
    missing from the two annotated slices: a traceback from the scoring after training and
    prediction), and shapes that differ."""
    from fhcnn.apps.volume.inputs import inputs_from_arrays
    from fhcnn.errors import InputError

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (8, 9, 10)).astype(np.uint8)
    lab = np.full(truth.shape, 255, np.uint8)
    lab[2] = np.minimum(truth[2], 2)
    image = rng.random(truth.shape).astype(np.float32)
    with pytest.raises(InputError, match="no labelled voxel of class 3, which occurs in the eval labels"):
        inputs_from_arrays([image], lab, truth)
    with pytest.raises(InputError, match=r"eval labels of array have shape \(8, 9, 9\)"):
        inputs_from_arrays([image], lab, truth[:, :, :9])
    with pytest.raises(InputError, match=r"channel 1 of array has shape \(8, 9, 9\)"):
        inputs_from_arrays([image, image[:, :, :9]], lab)
    assert inputs_from_arrays([image], lab, np.minimum(truth, 2)).num_classes == 3


def _hdf5_image(folder: Path, image: np.ndarray, **attrs: object) -> str:
    """``image`` as the dataset ``raw`` of ``folder/img.h5``, with the attributes ``attrs`` (the
    test is skipped without h5py): its ``FILE:raw``."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(folder / "img.h5", "w") as f:
        f["raw"] = image
        f["raw"].attrs.update(attrs)
    return f"{folder / 'img.h5'}:raw"


@pytest.mark.parametrize("kind", ["hdf5", "ome-zarr"])
def test_probabilities_carry_the_geometry_of_the_prediction(vol, tmp_path, kind):
    """probabilities.zarr ((K, D, H, W) float16, --save-probs) carried no geometry: no spacing, no
    axis names, no source, so it could not be placed beside the image. It now has the prediction's
    spacing, axis names after a leading ``class`` axis and source (and the input's attributes); of
    an OME-Zarr image it is, like the prediction, an OME-Zarr image on the input's grid (a channel
    axis ``class`` before the spatial axes), read back by fhcnn's reader with the input's spacing
    and origin."""
    zarr = pytest.importorskip("zarr")
    from fhcnn.data.volumes import open_volume

    image = np.load(vol / "c0.npy")
    if kind == "hdf5":
        img = _hdf5_image(tmp_path, image, element_size_um=[2.0, 0.5, 0.5], sample="mouse 7")
    else:
        g = zarr.open_group(str(tmp_path / "img.zarr"), mode="w", zarr_format=2)
        g.create_array("0", shape=image.shape, dtype=image.dtype)[:] = image
        g.attrs["multiscales"] = [{"version": "0.4", "axes": [
            {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"],
            "datasets": [{"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": [2.0, 0.5, 0.5]},
                {"type": "translation", "translation": [5.0, -1.0, 3.0]}]}]}]
        img = str(tmp_path / "img.zarr")
    out = tmp_path / "out"
    assert main(["volume", img, "--labels", str(vol / "lab.npy"), "--out", str(out), "--save-probs",
                 "--set", "volume.baselines="] + TINY) == 0
    source = open_volume(img).geometry
    probs = open_volume(str(out / "probabilities.zarr"))
    pred = open_volume(str(out / "prediction.zarr"))
    assert len(probs.channels) == 3 and probs.dtype == np.float16 and probs.shape == SHAPE
    for g in (probs.geometry, pred.geometry):  # both placed where the image is
        assert g.spacing == (2.0, 0.5, 0.5) == source.spacing and g.origin == source.origin
    array = zarr.open_array(str(out / "probabilities.zarr" / ("0" if kind == "ome-zarr" else "")), mode="r")
    assert array.shape == (3, *SHAPE) and array.attrs["spacing"] == [2.0, 0.5, 0.5]
    assert array.attrs["axis_names"] == ["class", *source.axis_names] and array.attrs["fhcnn_source"] == img
    if kind == "hdf5":
        assert array.attrs["sample"] == "mouse 7"
    else:
        (m,) = zarr.open_group(str(out / "probabilities.zarr"), mode="r").attrs["multiscales"]
        assert m["axes"][0] == {"name": "class", "type": "channel"} and probs.geometry.origin == (5.0, -1.0, 3.0)
        assert m["datasets"][0]["coordinateTransformations"] == [
            {"type": "scale", "scale": [1.0, 2.0, 0.5, 0.5]},
            {"type": "translation", "translation": [0.0, 5.0, -1.0, 3.0]}]


@pytest.mark.parametrize("kind", ["zarr without spacing", "hdf5 in micrometres"])
def test_the_spacing_set_by_volume_spacing_is_recorded_in_the_outputs(vol, tmp_path, kind):
    """--set volume.spacing trained with the spacing given, but prediction.zarr and
    probabilities.zarr copied the input's grid attributes only: of an input without spacing they
    carried none (a viewer showed the anisotropic volume as cubes), and of one whose header
    misstates it nothing said the run used another. Where the input states none, the outputs'
    ``spacing`` is the one used; where it states one, ``spacing`` stays the input's (the grid:
    the outputs still lie on the input's) and ``fhcnn_spacing`` says what the run used."""
    zarr = pytest.importorskip("zarr")
    from fhcnn.data.volumes import open_volume
    from fhcnn.data.volumes.grid import check_same_grid

    image = np.load(vol / "c0.npy")
    if kind == "hdf5 in micrometres":
        img = _hdf5_image(tmp_path, image, element_size_um=[2.0, 0.5, 0.5])
        placed, used = [2.0, 0.5, 0.5], [1.0, 1.0, 1.0]
    else:
        zarr.create_array(str(tmp_path / "img.zarr"), shape=image.shape, dtype=image.dtype)[:] = image
        img, placed, used = str(tmp_path / "img.zarr"), [2.0, 1.0, 1.0], None
    out = tmp_path / "out"
    assert main(["volume", img, "--labels", str(vol / "lab.npy"), "--out", str(out), "--save-probs",
                 "--set", "volume.baselines=", "--set", f"volume.spacing={'1,1,1' if used else '2,1,1'}"] + TINY) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["spacing"] == (used or placed) and m["spacing_source"] == "volume.spacing"
    source = open_volume(img)
    for name in ("prediction.zarr", "probabilities.zarr"):
        attrs = zarr.open_array(str(out / name), mode="r").attrs
        assert attrs["spacing"] == placed and attrs.get("fhcnn_spacing") == used, (name, dict(attrs))
        assert attrs.get("spacing_unit") == ("micrometer" if used else None)
        again = open_volume(str(out / name))
        assert again.geometry.spacing == tuple(placed)
        check_same_grid(source, again, "labels")  # on the input's grid
        check_same_grid(again, source, "image")


def test_data_scale_predicts_and_scores_at_the_inputs_size(vol, tmp_path):
    """With --set data.scale=0.5 the network's (D, h, w) chunks went to the outputs unresized:
    the prediction filled the first h x w of each plane of prediction.npy (0 elsewhere), the
    probabilities likewise, and fhcnn and the U-Net were scored on those chunks against the
    truth at the same (wrong) positions, the U-Net on a volume resized twice (scale 0.25); exit 0.
    Each chunk is now resized back to (H, W), and the U-Net trains on fhcnn's resized volume."""
    out = tmp_path / "out"
    rc = main(["volume", str(vol / "c0.npy"), "--labels", str(vol / "lab.npy"), "--eval-labels",
               str(vol / "truth.npy"), "--out", str(out), "--save-probs", "--set", "data.scale=0.5",
               "--set", "volume.baselines=unet"] + TINY)
    assert rc == 0
    import zarr

    from fhcnn.apps.volume import score

    pred = np.load(out / "prediction.npy")
    p = np.asarray(zarr.open_array(str(out / "probabilities.zarr"), mode="r")[...]).astype(np.float32)
    assert p.shape == (3, *SHAPE)
    np.testing.assert_allclose(p.sum(0), 1, atol=3e-3)  # every voxel predicted
    top2 = np.sort(p, 0)[-2:]
    clear = top2[1] - top2[0] > 2e-3
    np.testing.assert_array_equal(p.argmax(0)[clear], pred[clear])
    m = json.loads((out / "metrics.json").read_text())
    truth, lab = np.load(vol / "truth.npy"), np.load(vol / "lab.npy")
    held = np.where(lab == 255, truth, 255)
    assert score(pred, held, 3)["miou"] == pytest.approx(m["miou"])
    for entry in (m["fhcnn"], m["baselines"]["unet"]):
        assert entry["scored_voxels"] == int((lab == 255).sum())


def test_a_slab_of_a_resized_volume_is_reported_on_the_inputs_grid():
    """prediction_slabs (metrics.json of a split run) names each process's slab of the input:
    with data.scale a slab of the network's (D, h, w) volume was reported as it stood (a
    16 x 8 x 8 slab of a 16^3 input), not on the input's grid its files are on."""
    from fhcnn.apps.volume.pipeline import region_at_input_size
    from fhcnn.engine.sizes import Geometry

    g = Geometry(depth=16, size=(16, 16), scaled=(8, 8), multiple=8)
    assert region_at_input_size(g, ((0, 0, 0), (16, 8, 8))) == ((0, 0, 0), (16, 16, 16))
    assert region_at_input_size(g, ((8, 0, 0), (8, 8, 8))) == ((8, 0, 0), (8, 16, 16))
    odd = Geometry(depth=10, size=(15, 7), scaled=(8, 4), multiple=4)
    assert region_at_input_size(odd, ((0, 0, 0), (10, 8, 4))) == ((0, 0, 0), (10, 15, 7))
    same = Geometry(depth=10, size=(15, 7), scaled=(15, 7), multiple=1)
    assert region_at_input_size(same, ((2, 3, 1), (4, 5, 6))) == ((2, 3, 1), (4, 5, 6))
