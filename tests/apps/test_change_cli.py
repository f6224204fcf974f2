"""``fhcnn change`` end to end on tiny generated scenes, metrics, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fhcnn.cli import main
from fhcnn.data.hyperspectral import IGNORE, make_bitemporal_scene, write_envi

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
TINY = ["--config", "change-tiny", "--quiet"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("scene")
    s = make_bitemporal_scene(20, 24, 6, seed=2, field_size=10)
    np.save(d / "before.npy", s.before)
    np.save(d / "after.npy", s.after)
    np.save(d / "truth.npy", s.change)
    return d, s


def _outputs(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()}


def test_change_end_to_end_label_fraction(scene, tmp_path):
    d, s = scene
    out = tmp_path / "out"
    rc = main(["change", str(d / "before.npy"), str(d / "after.npy"), "--labels", str(d / "truth.npy"),
               "--label-fraction", "0.2", "--out", str(out), *TINY])
    assert rc == 0
    assert {"prediction.npy", "prediction.png", "figure.png", "metrics.json", "config.yaml",
            "model.safetensors", "change_probability.npy", "labels_train.npy"} <= _outputs(out)
    pred = np.load(out / "prediction.npy")
    assert pred.shape == (20, 24) and pred.dtype == np.uint8 and set(np.unique(pred)) <= {0, 1}
    m = json.loads((out / "metrics.json").read_text())
    train = np.load(out / "labels_train.npy")
    scored = np.load(out / "labels_scored.npy")
    # training and scored pixels partition the labelled scene, ~20 % of each class trained on
    assert not ((train != IGNORE) & (scored != IGNORE)).any()
    np.testing.assert_array_equal(np.where(train != IGNORE, train, scored), s.change)
    assert m["labels"]["train_pixels"] == int((train != IGNORE).sum())
    assert abs(m["labels"]["train_pixels"] - 0.2 * 480) <= 2
    # metrics.json agrees with a recomputation on the held-out pixels
    k = scored != IGNORE
    p, t = pred[k], scored[k]
    iou1 = ((p == 1) & (t == 1)).sum() / max(((p == 1) | (t == 1)).sum(), 1)
    iou0 = ((p == 0) & (t == 0)).sum() / max(((p == 0) | (t == 0)).sum(), 1)
    assert m["iou_positive"] == pytest.approx(iou1) and m["iou_negative"] == pytest.approx(iou0)
    assert m["miou"] == pytest.approx((iou0 + iou1) / 2)
    from fhcnn.apps.change import ChangeConfig
    from fhcnn.config import load_config
    cfg = load_config(ChangeConfig, out / "config.yaml")
    assert cfg.train.steps == 3


def test_change_metrics_hand_checked():
    from fhcnn.apps.change import change_metrics

    truth = np.array([[0, 0, 1, 1], [1, 255, 0, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 1, 0, 0]], np.uint8)
    # scored: 6 pixels. changed: truth {2,3,4}, pred {1,2,3} among scored -> inter 2, union 4
    # unchanged: truth {0,1,6}, pred {0,4,6} -> inter 2, union 4
    m = change_metrics(pred, truth)
    assert m["iou_positive"] == pytest.approx(0.5) and m["iou_negative"] == pytest.approx(0.5)
    assert m["miou"] == pytest.approx(0.5) and m["scored_pixels"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)


def test_change_one_4d_file_masks_envi_and_scale(scene, tmp_path):
    """One 4D .npy; --changed/--unchanged BMP masks; ENVI inputs; --scale."""
    from PIL import Image

    d, s = scene
    np.save(tmp_path / "pair.npy", np.stack([s.before, s.after]))
    ch = np.zeros((20, 24), np.uint8)
    un = np.zeros((20, 24), np.uint8)
    ys, xs = np.nonzero(s.change == 1)
    ch[ys[::3], xs[::3]] = 255
    ys, xs = np.nonzero(s.change == 0)
    un[ys[::3], xs[::3]] = 255
    Image.fromarray(ch).save(tmp_path / "change.bmp")
    Image.fromarray(un).save(tmp_path / "unchanged.bmp")
    out = tmp_path / "o1"
    assert main(["change", str(tmp_path / "pair.npy"), "--changed", str(tmp_path / "change.bmp"),
                 "--unchanged", str(tmp_path / "unchanged.bmp"), "--eval-labels", str(d / "truth.npy"),
                 "--out", str(out), *TINY]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["labels"]["train_pixels"] == int((ch > 0).sum() + (un > 0).sum())
    assert m["heldout"]["scored_pixels"] == 480 - m["labels"]["train_pixels"]
    write_envi(tmp_path / "t1", s.before.astype(np.float32), interleave="bil", header_suffix=".HDR")
    write_envi(tmp_path / "t2", s.after.astype(np.float32), interleave="bip")
    out2 = tmp_path / "o2"
    assert main(["change", str(tmp_path / "t1.HDR"), str(tmp_path / "t2"), "--labels", str(d / "truth.npy"),
                 "--label-fraction", "0.3", "--scale", "0.5", "--out", str(out2), *TINY]) == 0
    assert np.load(out2 / "prediction.npy").shape == (20, 24)
    assert json.loads((out2 / "metrics.json").read_text())["scene"]["scale"] == 0.5


def _fails(argv, capsys, match):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err


def test_change_bad_inputs_leave_out_untouched(scene, tmp_path, capsys):
    d, s = scene
    out = tmp_path / "out"
    b, a, t = str(d / "before.npy"), str(d / "after.npy"), str(d / "truth.npy")
    np.save(tmp_path / "small.npy", s.after[:, :20])
    _fails(["change", b, str(tmp_path / "small.npy"), "--labels", t, "--out", str(out), *TINY], capsys,
           "same size")
    np.save(tmp_path / "lab_small.npy", s.change[:10])
    _fails(["change", b, a, "--labels", str(tmp_path / "lab_small.npy"), "--out", str(out), *TINY], capsys,
           "but the scene is 20x24")
    np.save(tmp_path / "none.npy", np.full((20, 24), 255, np.uint8))
    _fails(["change", b, a, "--labels", str(tmp_path / "none.npy"), "--out", str(out), *TINY], capsys,
           "no labelled pixels")
    np.save(tmp_path / "one.npy", np.where(s.change == 1, 255, 0).astype(np.uint8))
    _fails(["change", b, a, "--labels", str(tmp_path / "one.npy"), "--out", str(out), *TINY], capsys,
           "only unchanged")
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    _fails(["change", str(tmp_path / "junk.npy"), a, "--labels", t, "--out", str(out), *TINY], capsys,
           "cannot read")
    _fails(["change", str(tmp_path / "missing.npy"), a, "--labels", t, "--out", str(out), *TINY], capsys,
           "no such file")
    nan = s.before.copy()
    nan[3, 4, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    _fails(["change", str(tmp_path / "nan.npy"), a, "--labels", t, "--out", str(out), *TINY], capsys,
           "NaN")
    _fails(["change", b, a, "--out", str(out), *TINY], capsys, "no labels")
    np.save(tmp_path / "empty.npy", np.zeros((0, 24, 6), np.float32))   # was called 'identical' to AFTER
    _fails(["change", str(tmp_path / "empty.npy"), str(tmp_path / "empty.npy"), "--labels", t, "--out", str(out),
            *TINY], capsys, "empty.npy: cube is empty (shape (0, 24, 6)): it holds no pixels")
    unc = np.zeros(s.change.shape, np.uint8)
    unc[::3, ::3] = 1  # a few known unchanged pixels: alone they must not make the rest "changed"
    np.save(tmp_path / "unc.npy", unc)
    _fails(["change", b, a, "--unchanged", str(tmp_path / "unc.npy"), "--out", str(out), *TINY], capsys,
           "without --changed")
    _fails(["change", b, a, "--labels", t, "--out", str(out), "--set", "data.scale=0", *TINY], capsys,
           "scale")
    assert not out.exists()
    # an existing folder holding a user's file is refused and left as it was
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    _fails(["change", b, a, "--labels", t, "--out", str(out), *TINY], capsys, "not empty")
    assert _outputs(out) == {"mine.txt"} and (out / "mine.txt").read_text() == "keep"


def test_a_mat_date_with_two_largest_variables_needs_key(scene, tmp_path, capsys):
    """Each .mat date holds two cubes of one size (e.g. radiance and reflectance): without
    --key one of them was read without a word; now the run is refused naming both."""
    import scipy.io

    d, s = scene
    for name, x in (("t1.mat", s.before), ("t2.mat", s.after)):
        scipy.io.savemat(tmp_path / name, {"radiance": x, "reflectance": x * 0.5})
    out = tmp_path / "out"
    _fails(["change", str(tmp_path / "t1.mat"), str(tmp_path / "t2.mat"), "--labels", str(d / "truth.npy"),
            "--out", str(out), *TINY], capsys,
           "2 variables are the largest arrays of 2880 values (radiance (20, 24, 6), reflectance (20, 24, 6)), "
           "so which one to read is not clear; give --key NAME")
    assert not out.exists()


def test_key_for_dates_without_variables_is_refused(scene, tmp_path, capsys):
    """--key names a .mat variable: given for .npy, TIFF or ENVI dates (or a 4D .npy pair) it
    selected nothing and was ignored without a word; now refused naming the input. Beside one .mat
    date it names that date's variable."""
    import scipy.io
    import tifffile

    from fhcnn.apps.change.inputs import load_inputs

    d, s = scene
    b, a, t = str(d / "before.npy"), str(d / "after.npy"), str(d / "truth.npy")
    out = tmp_path / "out"
    tifffile.imwrite(tmp_path / "t2.tif", s.after.astype(np.float32), planarconfig="contig", photometric="minisblack")
    write_envi(tmp_path / "t3", s.after.astype(np.float32))
    np.save(tmp_path / "pair.npy", np.stack([s.before, s.after]))
    for dates, named in (([b, a], b), ([str(tmp_path / "t2.tif"), a], str(tmp_path / "t2.tif")),
                         ([str(tmp_path / "t3.hdr"), a], str(tmp_path / "t3.hdr")),
                         ([str(tmp_path / "pair.npy")], str(tmp_path / "pair.npy"))):
        kind = {".npy": "a .npy", ".tif": "a TIFF", ".hdr": "an ENVI"}[Path(named).suffix]
        _fails(["change", *dates, "--key", "img", "--labels", t, "--out", str(out), *TINY], capsys,
               f"{named}: --key img names a variable of a .mat file, but this is {kind} file")
    assert not out.exists()
    scipy.io.savemat(tmp_path / "t1.mat", {"radiance": s.before * 2, "reflectance": s.before})
    for dates in ((str(tmp_path / "t1.mat"), a), (a, str(tmp_path / "t1.mat"))):
        got = load_inputs(*dates, key="reflectance", labels=t)
        mat = got.before if dates[0].endswith(".mat") else got.after
        np.testing.assert_array_equal(np.asarray(mat), s.before)


def test_eval_labels_of_one_class_are_refused(scene, tmp_path, capsys):
    """--eval-labels must score both classes: a 0/255 map marking change with 255 (= unlabelled)
    read as 'every scored pixel unchanged', and a map whose pixels outside the training labels are
    of one class (or none), ran and reported an mIoU of another class set, or none at all."""
    d, s = scene
    b, a, t = str(d / "before.npy"), str(d / "after.npy"), str(d / "truth.npy")
    out = tmp_path / "out"
    white = tmp_path / "white.npy"
    np.save(white, np.where(s.change == 1, 255, 0).astype(np.uint8))
    _fails(["change", b, a, "--labels", t, "--label-fraction", "0.2", "--eval-labels", str(white), "--out",
            str(out), *TINY], capsys,
           f"--eval-labels {white}: only unchanged (0) pixels are labelled (384) (255 means unlabelled, not "
           f"changed: mark changed pixels with 1); scoring needs both changed and unchanged examples")
    train = np.full(s.change.shape, IGNORE, np.uint8)   # every changed pixel and one row of unchanged
    train[s.change == 1] = 1
    row = np.flatnonzero((s.change == 0).all(1))[0]
    train[row] = 0
    np.save(tmp_path / "train.npy", train)
    for name, ev in (("same.npy", train), ("no_change_left.npy", s.change)):
        np.save(tmp_path / name, ev)
        _fails(["change", b, a, "--labels", str(tmp_path / "train.npy"), "--eval-labels", str(tmp_path / name),
                "--out", str(out), *TINY], capsys,
               f"--eval-labels {tmp_path / name} outside the training pixels: "
               + ("no labelled pixels" if name == "same.npy" else "only unchanged (0) pixels are labelled"))
    assert not out.exists()


def test_a_date_with_pixels_at_its_no_data_value_is_refused(scene, tmp_path, capsys):
    d, s = scene
    holes = s.after.astype(np.float32)
    holes[5, 6, :] = -9999
    header, _ = write_envi(tmp_path / "t2", holes)
    header.write_text(header.read_text() + "data ignore value = -9999\n")
    out = tmp_path / "out"
    _fails(["change", str(d / "before.npy"), str(header), "--labels", str(d / "truth.npy"), "--out", str(out),
            *TINY], capsys, "cube holds 6 value(s) equal to -9999, the no-data value its ENVI header's")
    assert not out.exists()


def test_band_first_npy_dates_are_named_as_such(scene, tmp_path, capsys):
    """(bands, H, W) .npy dates (as rasterio gives them) read as a 6 x 20 scene of 24 bands; the
    refusal of the 20 x 24 label map now says the dates look band-first."""
    d, s = scene
    for name, x in (("b1.npy", s.before), ("b2.npy", s.after)):
        np.save(tmp_path / name, np.moveaxis(x, -1, 0))
    out = tmp_path / "out"
    _fails(["change", str(tmp_path / "b1.npy"), str(tmp_path / "b2.npy"), "--labels", str(d / "truth.npy"),
            "--out", str(out), *TINY], capsys,
           "label map is 20x24 (H x W) but the scene is 6x20; the dates, read as (H, W, bands) = (6, 20, 24), "
           "look band-first (bands, H, W): save them as (H, W, bands)")
    assert not out.exists()


def test_tiff_dates_of_one_row_a_page_are_named_as_such(scene, tmp_path, capsys):
    """An (H, W, bands) cube saved with tifffile.imwrite is stored as H pages of W x bands, so
    the date reads as H bands of a W x bands scene; the refusal of the H x W label map said only
    'label map is 20x24 (H x W) but the scene is 24x6' and now says how the file was stored and
    how to save it."""
    import tifffile

    d, s = scene
    for name, x in (("t1.tif", s.before), ("t2.tif", s.after)):
        tifffile.imwrite(tmp_path / name, x)
    out = tmp_path / "out"
    _fails(["change", str(tmp_path / "t1.tif"), str(tmp_path / "t2.tif"), "--labels", str(d / "truth.npy"),
            "--out", str(out), *TINY], capsys,
           "label map is 20x24 (H x W) but the scene is 24x6; the dates, read as (H, W, bands) = (24, 6, 20), "
           "look like a (20, 24, 6) cube stored one row a page (as tifffile.imwrite writes an (H, W, bands) "
           "array): save it band-first, tifffile.imwrite(path, cube.transpose(2, 0, 1))")
    assert not out.exists()


def test_a_scale_that_leaves_one_labelled_class_is_named(scene, tmp_path, capsys):
    """The labels hold both classes; --scale 0.01 resizes the 20x24 scene to 1x1, where the
    majority vote leaves only unchanged: the refusal names the scale and the size it gives."""
    d, _ = scene
    out = tmp_path / "out"
    _fails(["change", str(d / "before.npy"), str(d / "after.npy"), "--labels", str(d / "truth.npy"),
            "--scale", "0.01", "--out", str(out), *TINY], capsys,
           "data.scale=0.01 (--scale) resizes the 20x24 (H x W) input to 1x1, where the labels keep only "
           "class 0 (at full size they hold classes [0, 1])")
    assert not out.exists()


@pytest.mark.skipif(not (DATA / "landsat_cd_taizhou").is_dir(), reason="shared data not present")
def test_change_reads_real_landsat_pair_bad_label_size(tmp_path, capsys):
    d = DATA / "landsat_cd_taizhou" / "Taizhou"
    np.save(tmp_path / "lab.npy", np.zeros((10, 10), np.uint8))
    _fails(["change", str(d / "2000TM.HDR"), str(d / "2003TM"), "--labels", str(tmp_path / "lab.npy"),
            "--out", str(tmp_path / "o"), *TINY], capsys, "but the scene is 400x400")
    assert not (tmp_path / "o").exists()


def _whole_scene_volume(before, after, channels, normalize):
    """The change volume computed on the whole scene at once (the formulas of
    fhcnn.apps.change.volume, written out on whole arrays)."""
    b64, a64 = np.asarray(before, np.float64), np.asarray(after, np.float64)
    x = np.stack([b64, a64], 0)
    if normalize == "band":
        mu = x.mean(axis=(0, 1, 2), keepdims=True)
        sd = x.std(axis=(0, 1, 2), keepdims=True)
        x = (x - mu) / np.maximum(sd, 1e-6 * np.maximum(np.abs(mu), 1e-12))
    parts = [x[0], x[1]]
    if "diff" in channels:
        parts.append(x[1] - x[0])
    if "ratio" in channels:
        b, a = np.clip(b64, 0, None), np.clip(a64, 0, None)
        level = np.concatenate([b, a]).mean(axis=(0, 1))
        eps = 0.01 * np.where(level > 0, level, 1.0)
        ratio = np.log((a + eps) / (b + eps))
        norm = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
        dot = (a * b).sum(-1)
        angle = np.arccos(np.clip(np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 1.0), -1, 1))
        angle = np.broadcast_to(angle[..., None], ratio.shape)
        for f in (ratio, angle):
            parts.append((f - f.mean()) / f.std() if f.std() > 1e-12 else np.zeros_like(f))
    return np.stack(parts).transpose(0, 3, 1, 2).astype(np.float32)


@pytest.mark.parametrize("channels", ["dates", "dates+diff", "dates+diff+ratio+angle"])
@pytest.mark.parametrize("normalize", ["band", "none"])
def test_change_volume_read_by_box_equals_the_whole_scene(channels, normalize):
    """The change volume is computed box by box from the two dates, with statistics streamed over
    slabs of rows (some slabs one row): every box equals the whole-scene computation (1e-5),
    including pixels whose spectra are all zero."""
    import fhcnn.apps.change.volume as cv

    rng = np.random.default_rng(3)
    before = rng.gamma(2.0, 50.0, (23, 17, 6)).astype(np.float32)
    after = (before * rng.uniform(0.8, 1.3, before.shape)).astype(np.float32)
    before[3, 4] = 0
    after[5, 6] = 0
    want = _whole_scene_volume(before, after, channels, normalize)
    for max_bytes in (cv.SLAB_BYTES, 1):
        slabs = list(cv.row_slabs(before.shape, max_bytes=max_bytes))
        assert len(slabs) == (1 if max_bytes > 1 else 23)
        original = cv.SLAB_BYTES
        cv.SLAB_BYTES = max_bytes  # every streamed pass one row at a time
        try:
            from fhcnn.apps.change.volume import change_volume

            vol = change_volume(before, after, channels, normalize)
        finally:
            cv.SLAB_BYTES = original
        assert vol.shape == want.shape
        np.testing.assert_allclose(vol.read((slice(None),) * 3), want, rtol=1e-5, atol=1e-5)
        for _ in range(5):
            lo = [int(rng.integers(0, n)) for n in want.shape[1:]]
            box = tuple(slice(a, int(rng.integers(a + 1, n + 1))) for a, n in zip(lo, want.shape[1:]))
            np.testing.assert_allclose(vol.read(box), want[(slice(None),) + box], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(vol.channels[-1][2, 3], want[-1, 2, 3], rtol=1e-5, atol=1e-5)


def test_change_reads_its_dates_on_demand_and_predicts_as_from_memory(scene, tmp_path):
    """Dates given as memory-mapped files (``.npy``, ENVI) and as a MATLAB v7.3 (HDF5) file are
    opened, not loaded, and the run predicts exactly what it predicts from the same dates held
    in memory (float32 arrays)."""
    h5py = pytest.importorskip("h5py")
    from fhcnn.apps.change import ChangeConfig, fit_change
    from fhcnn.apps.change.inputs import load_inputs
    from fhcnn.config import load_config

    d, s = scene
    write_envi(tmp_path / "t1", s.before.astype(np.float32), interleave="bil")
    with h5py.File(tmp_path / "pair.mat", "w") as f:   # MATLAB stores (H, W, B) as (B, W, H)
        f["T1"] = s.before.astype(np.float32).T
        f["T2"] = s.after.astype(np.float32).T
    cfg = load_config(ChangeConfig, "change-tiny", [])
    runs = {}
    for name, args in (("npy", (d / "before.npy", d / "after.npy")), ("envi", (tmp_path / "t1.hdr", d / "after.npy")),
                       ("mat", (tmp_path / "pair.mat", None))):
        inputs = load_inputs(*args, labels=str(d / "truth.npy"), label_fraction=0.3)
        assert not isinstance(inputs.before, np.ndarray)   # a view read on demand
        np.testing.assert_array_equal(np.asarray(inputs.before), s.before.astype(np.float32))
        box = inputs.before[3:9, 2:20, 1:5]
        np.testing.assert_array_equal(box, s.before.astype(np.float32)[3:9, 2:20, 1:5])
        runs[name] = fit_change(inputs.before, inputs.after, inputs.train, cfg, quiet=True)
    memory = fit_change(s.before.astype(np.float32), s.after.astype(np.float32), inputs.train, cfg, quiet=True)
    for fit in runs.values():
        np.testing.assert_array_equal(fit["pred"], memory["pred"])
        np.testing.assert_allclose(fit["prob"], memory["prob"], atol=1e-6)


@pytest.mark.parametrize("target,scale", [("all", 1.0), ("slice", 0.5), ("mean", 0.5)])
def test_change_predicts_its_map_chunk_by_chunk_for_every_target(scene, target, scale, monkeypatch):
    """Whatever ``change.target``, the change map is built from chunks of the probability volume
    (4 bands deep, so the band axis is cut, except for the band mean of the logits) and equals
    the band mean (or the one band) of the whole in-memory probability volume, resized back."""
    import torch

    import fhcnn.engine.plan as plan_module
    from fhcnn.apps.change import ChangeConfig, fit_change
    from fhcnn.config import load_config

    monkeypatch.setattr(plan_module, "CHUNK", 4)
    d, s = scene
    train = np.where(np.random.default_rng(0).random(s.change.shape) < 0.3, s.change, IGNORE).astype(np.uint8)
    cfg = load_config(ChangeConfig, "change-tiny", [f"change.target={target}", f"data.scale={scale}",
                                                     "change.slice_index=2"])
    fit = fit_change(s.before, s.after, train, cfg, quiet=True, log=lambda *a: None)
    # the band mean of the logits (target mean) needs every band of a pixel in one chunk
    assert (fit["plan"].chunks[0] < s.before.shape[2]) == (target != "mean")
    whole = fit["result"].predict_proba(fit["plan"].volume)[1]
    plane = whole[2] if target == "slice" else whole.mean(0)
    want = fit["geometry"].back(plane[None])[0]
    torch.testing.assert_close(torch.from_numpy(fit["prob"]), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["two files", "one pair file"])
def test_compressed_tiff_dates_are_copied_once_and_predict_as_npy(scene, tmp_path, layout, monkeypatch):
    """Compressed TIFF dates are decoded once, page by page, into a private copy (so every check
    and statistic before OUT exists reads by window), then copied into the run folder
    (``inputs/``, recorded in ``run.json``) and read from there; the private copies are gone
    after the run, and the run predicts exactly what the same dates as ``.npy`` predict."""
    tifffile = pytest.importorskip("tifffile")
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)
    d, s = scene
    if layout == "two files":
        for name, cube in (("before", s.before), ("after", s.after)):
            tifffile.imwrite(tmp_path / f"{name}.tif", np.moveaxis(cube, -1, 0), photometric="minisblack",
                             compression="zlib")
        dates = [str(tmp_path / "before.tif"), str(tmp_path / "after.tif")]
        copies = {"inputs/before.zarr", "inputs/after.zarr"}
    else:
        tifffile.imwrite(tmp_path / "pair.tif", np.moveaxis(np.stack([s.before, s.after]), -1, 1),
                         photometric="minisblack", compression="zlib")
        dates = [str(tmp_path / "pair.tif")]
        copies = {"inputs/dates.zarr"}
    common = ["--labels", str(d / "truth.npy"), "--label-fraction", "0.3", *TINY]
    assert main(["change", *dates, "--out", str(tmp_path / "tif"), *common]) == 0
    assert main(["change", str(d / "before.npy"), str(d / "after.npy"), "--out", str(tmp_path / "npy"), *common]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "tif" / "prediction.npy"),
                                  np.load(tmp_path / "npy" / "prediction.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "tif" / "change_probability.npy"),
                               np.load(tmp_path / "npy" / "change_probability.npy"), atol=1e-6)
    files = json.loads((tmp_path / "tif" / "run.json").read_text())["files"]
    assert {c for c in copies if any(f.startswith(c + "/") for f in files)} == copies, files
    assert not any(f.startswith("inputs/") for f in json.loads((tmp_path / "npy" / "run.json").read_text())["files"])
    assert not any((tmp_path / "tmp").iterdir())  # the private copies are removed
    np.save(tmp_path / "small.npy", s.change[:5])  # a refused run: nothing in OUT, no private copy left
    assert main(["change", *dates, "--out", str(tmp_path / "refused"), "--labels", str(tmp_path / "small.npy"),
                 *TINY]) == 2
    import gc

    gc.collect()
    assert not (tmp_path / "refused").exists() and not any((tmp_path / "tmp").iterdir())


def test_float64_dates_far_from_zero_detect_change_as_near_zero(tmp_path):
    """Float64 dates 1e9 + x: each band is standardized with a floor set by the dates' dtype
    (float64 rounds at 2e-16 of the level), so the map equals that of x (a float32-sized floor,
    1e-6 of 1e9, divided every band by 1000 whatever its range)."""
    s = make_bitemporal_scene(20, 24, 6, seed=2, field_size=10)
    np.save(tmp_path / "truth.npy", s.change.astype(np.uint8))
    gain = 10.0 ** np.arange(-3, 3)  # bands of very different ranges: the per-band std matters
    maps = []
    for name, shift in (("near", 0.0), ("far", 1e9)):
        np.save(tmp_path / f"{name}-a.npy", s.before.astype(np.float64) * gain + shift)
        np.save(tmp_path / f"{name}-b.npy", s.after.astype(np.float64) * gain + shift)
        out = tmp_path / name
        assert main(["change", str(tmp_path / f"{name}-a.npy"), str(tmp_path / f"{name}-b.npy"), "--labels",
                     str(tmp_path / "truth.npy"), "--label-fraction", "0.2", "--out", str(out), *TINY]) == 0
        maps.append(np.load(out / "prediction.npy"))
    np.testing.assert_array_equal(maps[0], maps[1])


def test_change_refuses_dates_whose_envi_bands_differ(scene, tmp_path, capsys):
    """ENVI dates of one shape whose headers list their bands in another order (or shifted by a
    band) would pair different bands as one: refused in one line. Centres a little apart, or in
    other units, pass."""
    d, s = scene
    nm = np.array([450.0, 550.0, 650.0, 750.0, 850.0, 950.0])
    write_envi(tmp_path / "t1", s.before.astype(np.float32), wavelength=nm)
    cases = {"reversed": (s.after[..., ::-1], nm[::-1], None),
             "shifted": (s.after, nm + 100.0, None),
             "near": (s.after, nm + 12.0, None),
             "micrometres": (s.after, nm / 1000.0, "Micrometers")}
    for name, (cube, wl, units) in cases.items():
        header, _ = write_envi(tmp_path / name, cube.astype(np.float32), wavelength=wl)
        if units:
            header.write_text(header.read_text() + f"wavelength units = {units}\n")
    out = tmp_path / "out"
    base = ["--labels", str(d / "truth.npy"), "--out", str(out), *TINY]
    for name in ("reversed", "shifted"):
        _fails(["change", str(tmp_path / "t1.hdr"), str(tmp_path / name), *base], capsys, "the dates' bands differ")
        assert not out.exists()
    for name in ("near", "micrometres"):
        assert main(["change", str(tmp_path / "t1.hdr"), str(tmp_path / name), *base, "--overwrite"]) == 0


def test_change_refuses_dates_on_different_pixel_grids(scene, tmp_path, capsys):
    """Two GeoTIFF or ENVI dates of one size whose georeferencing puts their pixels at other
    places (an origin 3 pixels off, another pixel size) are refused in one line; the same grid,
    told through another reference pixel, runs."""
    tifffile = pytest.importorskip("tifffile")
    d, s = scene
    keys = (1, 1, 0, 1, 3072, 0, 1, 32651)  # GeoKey directory: projected, UTM 51N

    def geotiff(name, cube, tie, scale=(30.0, 30.0, 0.0)):
        tifffile.imwrite(tmp_path / name, cube.astype(np.float32), photometric="minisblack",
                         planarconfig="contig", extratags=[(33550, "d", 3, scale, True),
                                                           (33922, "d", 6, tie, True), (34735, "H", 8, keys, True)])

    geotiff("b.tif", s.before, (0, 0, 0, 203325.0, 3604935.0, 0))
    geotiff("same.tif", s.after, (2, 1, 0, 203385.0, 3604905.0, 0))       # pixel (2, 1): the same grid
    geotiff("shifted.tif", s.after, (0, 0, 0, 203415.0, 3604935.0, 0))   # 3 pixels east
    geotiff("coarser.tif", s.after, (0, 0, 0, 203325.0, 3604935.0, 0), (60.0, 60.0, 0.0))
    info = "map info = {{UTM, {}, {}, {}, 3604935.0, 30.0, 30.0, 51, North, WGS-84, units=Meters}}\n"
    for name, cube, line in (("e1", s.before, info.format(1, 1, 203325.0)),
                             ("e_same", s.after, info.format(3, 1, 203385.0)),
                             ("e_shifted", s.after, info.format(1, 1, 203415.0))):
        header, _ = write_envi(tmp_path / name, cube.astype(np.float32))
        header.write_text(header.read_text() + line)
    out = tmp_path / "out"
    base = ["--labels", str(d / "truth.npy"), "--out", str(out), *TINY]
    for b, a, why in (("b.tif", "shifted.tif", "+3 pixels across"), ("b.tif", "coarser.tif", "another pixel size"),
                      ("e1.hdr", "e_shifted", "+3 pixels across")):
        _fails(["change", str(tmp_path / b), str(tmp_path / a), *base], capsys, why)
        assert not out.exists()
    for b, a in (("b.tif", "same.tif"), ("e1.hdr", "e_same")):
        assert main(["change", str(tmp_path / b), str(tmp_path / a), *base, "--overwrite"]) == 0


def test_change_refuses_a_label_map_on_another_pixel_grid(scene, tmp_path, capsys):
    """A GeoTIFF label map whose georeferencing puts it elsewhere than the GeoTIFF dates (2 pixels
    south) is refused in one line; on the same grid, or with no georeferencing, it runs."""
    tifffile = pytest.importorskip("tifffile")
    d, s = scene
    keys = (1, 1, 0, 1, 3072, 0, 1, 32651)

    def geotiff(name, a, north):
        tifffile.imwrite(tmp_path / name, a, photometric="minisblack", planarconfig="contig",
                         extratags=[(33550, "d", 3, (30.0, 30.0, 0.0), True),
                                    (33922, "d", 6, (0, 0, 0, 203325.0, north, 0), True), (34735, "H", 8, keys, True)])

    geotiff("b.tif", s.before.astype(np.float32), 3604935.0)
    geotiff("a.tif", s.after.astype(np.float32), 3604935.0)
    geotiff("lab_same.tif", s.change.astype(np.uint8), 3604935.0)
    geotiff("lab_south.tif", s.change.astype(np.uint8), 3604875.0)
    out = tmp_path / "out"
    dates = ["change", str(tmp_path / "b.tif"), str(tmp_path / "a.tif"), "--out", str(out), *TINY]
    _fails([*dates, "--labels", str(tmp_path / "lab_south.tif")], capsys, "BEFORE and --labels map lie on different")
    _fails([*dates, "--changed", str(tmp_path / "lab_south.tif")], capsys, "+2 pixels down")
    _fails([*dates, "--labels", str(d / "truth.npy"), "--eval-labels", str(tmp_path / "lab_south.tif")], capsys,
           "--eval-labels map")
    assert not out.exists()
    assert main([*dates, "--labels", str(tmp_path / "lab_same.tif")]) == 0
    assert main([*dates, "--labels", str(d / "truth.npy"), "--overwrite"]) == 0


def test_geotiff_coordinate_systems_are_compared_by_their_codes_not_their_citations(tmp_path):
    """Two writers name one coordinate system in other words (a citation, text in GeoAsciiParams
    whose length moves the directory's counts): the same EPSG code is the same grid; another
    code, or other projection parameters (GeoDoubleParams), is another."""
    tifffile = pytest.importorskip("tifffile")
    from fhcnn.data.hyperspectral import pixel_grid

    def geotiff(name, epsg, citation, doubles=None):
        keys = [1, 1, 0, 2, 3072, 0, 1, epsg, 3073, 34737, len(citation) + 1, 0]
        tags = [(33550, "d", 3, (30.0, 30.0, 0.0), True), (33922, "d", 6, (0, 0, 0, 203325.0, 3604935.0, 0), True),
                (34737, "s", 0, citation + "|", True)]
        if doubles is not None:
            keys[3] += 1
            keys += [3081, 34736, len(doubles), 0]  # a projection parameter
            tags.append((34736, "d", len(doubles), doubles, True))
        tags.append((34735, "H", len(keys), tuple(keys), True))
        tifffile.imwrite(tmp_path / name, np.zeros((4, 5), np.float32), extratags=tags)
        return pixel_grid(tmp_path / name)

    one = geotiff("a.tif", 32651, "WGS 84 / UTM zone 51N")
    assert one is not None and one[1:] == (203325.0, 3604935.0, 30.0, 30.0)
    assert geotiff("b.tif", 32651, "UTM Zone 51, Northern Hemisphere") == one
    assert geotiff("c.tif", 32650, "WGS 84 / UTM zone 51N") != one
    assert geotiff("d.tif", 32651, "x", (120.0,)) != geotiff("e.tif", 32651, "x", (123.0,))


def test_a_negative_label_seed_is_named(scene, tmp_path, capsys):
    """``--label-seed -1`` was numpy's bare 'error: expected non-negative integer', naming neither
    the option nor the value; it is one line naming both, before OUT exists."""
    d, _ = scene
    out = tmp_path / "out"
    _fails(["change", str(d / "before.npy"), str(d / "after.npy"), "--labels", str(d / "truth.npy"),
            "--label-fraction", "0.3", "--label-seed", "-1", "--out", str(out), *TINY], capsys,
           "--label-seed must be a non-negative integer, got -1")
    assert not out.exists()


@pytest.mark.parametrize("factor", [100.0, 1e-4])
def test_dates_in_different_units_are_refused(scene, tmp_path, capsys, factor):
    """One date in reflectance, the other in percent (x100) or scaled digital numbers (the
    inverse of x10,000): the bands, standardized over both dates together, made the lower date
    nearly constant and every pixel of it 'changed', exit 0. Refused in one line with both
    levels, before OUT exists; the same dates in one unit run."""
    d, s = scene
    np.save(tmp_path / "after.npy", (s.after * factor).astype(np.float32))
    out = tmp_path / "out"
    args = ["change", str(d / "before.npy"), str(tmp_path / "after.npy"), "--labels", str(d / "truth.npy"),
            "--label-fraction", "0.3", "--out", str(out), *TINY]
    _fails(args, capsys, "the dates look like they hold different units: the median band of the first date averages")
    assert not out.exists()
    scaled = tmp_path / "before.npy"
    np.save(scaled, (s.before * factor).astype(np.float32))
    args[1] = str(scaled)
    assert main(args) == 0
