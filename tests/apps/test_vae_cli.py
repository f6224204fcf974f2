"""``fhcnn vae``: train/sample/interpolate/normality on a tiny config; clear errors on bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fhcnn.cli import main

PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vae") / "run"
    rc = main(["vae", "train", "--dataset", "digits", "--config", "vae-tiny", "--out", str(out),
               "--quiet"])
    assert rc == 0
    return out


def _grey_folder(folder: Path, values: list[int], side: int = 8) -> Path:
    """``folder`` (made, with its parents) holding ``0.png, 1.png, ...``: grey ``side x side``
    PNGs, image ``i`` all ``values[i]``."""
    folder.mkdir(parents=True)
    for i, value in enumerate(values):
        PIL.fromarray(np.full((side, side), value, np.uint8)).save(folder / f"{i}.png")
    return folder


def _png(path: Path) -> np.ndarray:
    with PIL.open(path) as im:
        im.load()
        return np.asarray(im)


def test_train_writes_metrics_figure_checkpoint_config(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in ("latent_dim", "recon_mse", "energy_distance_before", "energy_distance_after",
                "full_dim", "train_time_s"):
        assert key in m and np.isfinite(m[key])
    assert 1 <= m["latent_dim"] <= m["full_dim"] == 64
    for name in ("figure.png", "samples.png", "reconstructions.png", "interpolation.png"):
        assert _png(run_dir / name).size > 0
    assert (run_dir / "config.yaml").is_file()
    assert any((run_dir / "checkpoints").glob("step-*/model.safetensors"))
    text = (run_dir / "config.yaml").read_text()
    assert "image_size" in text and "in_channels: 1" in text


def test_sample(run_dir, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["vae", "sample", "--checkpoint", str(run_dir), "--n", "9", "--out", str(out),
                 "--npy", str(tmp_path / "s.npy")]) == 0
    a = _png(out)
    assert a.ndim == 2 and a.shape[0] > 8
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (9, 1, 8, 8) and x.min() >= 0 and x.max() <= 1
    assert "9 samples" in capsys.readouterr().out


def test_interpolate_by_index_and_by_file(run_dir, tmp_path, capsys):
    # the result line names the two images (it did not say which images the indices picked)
    out = tmp_path / "i.png"
    assert main(["vae", "interpolate", "--checkpoint", str(run_dir), "--a", "0", "--b", "5",
                 "--steps", "4", "--out", str(out)]) == 0
    assert capsys.readouterr().out == (f"wrote [a, 4 interpolated decodings, b] to {out} "
                                       f"(a: training image 0, b: training image 5)\n")
    row = _png(out)
    img = tmp_path / "digit.png"
    PIL.fromarray((np.random.default_rng(0).random((20, 24)) * 255).astype(np.uint8)).save(img)
    out2 = tmp_path / "i2.png"
    assert main(["vae", "interpolate", "--checkpoint", str(run_dir / "checkpoints"), "--a", str(img),
                 "--b", "3", "--steps", "4", "--out", str(out2)]) == 0
    assert capsys.readouterr().out == (f"wrote [a, 4 interpolated decodings, b] to {out2} "
                                       f"(a: {img}, b: training image 3)\n")
    assert _png(out2).shape == row.shape
    assert row.shape[1] > 5 * row.shape[0]  # one row of 6 images


def test_a_negative_index_is_named_as_the_image_it_picks(run_dir, tmp_path, capsys):
    # --a -1 picked the last training image, but the result line said "training image -1"; it
    # names the index of the image now (the run has 102 training images), the row that of 101
    by_end, by_index = tmp_path / "end.png", tmp_path / "index.png"
    assert main(["vae", "interpolate", "--checkpoint", str(run_dir), "--a", "-1", "--b", "-102", "--steps", "2",
                 "--out", str(by_end)]) == 0
    assert capsys.readouterr().out == (f"wrote [a, 2 interpolated decodings, b] to {by_end} "
                                       f"(a: training image 101, b: training image 0)\n")
    assert main(["vae", "interpolate", "--checkpoint", str(run_dir), "--a", "101", "--b", "0", "--steps", "2",
                 "--out", str(by_index)]) == 0
    assert np.array_equal(_png(by_end), _png(by_index))


def test_normality(run_dir, tmp_path):
    assert main(["vae", "normality", "--checkpoint", str(run_dir), "--out", str(tmp_path / "n"),
                 "--n", "20"]) == 0
    r = json.loads((tmp_path / "n" / "normality.json").read_text())
    assert np.isfinite(r["energy_distance"]) and len(r["std"]) == r["latent_dim"]
    assert _png(tmp_path / "n" / "normality.png").size > 0


def _error(argv, capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.startswith("error: ")
    return err


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad-images-idx3-ubyte"
    bad.write_bytes(bytes([0x12, 0x34, 8, 3]) + bytes(12 + 16))
    err = _error(["vae", "train", "--dataset", "mnist-idx", str(bad), "--config", "vae-tiny",
                  "--out", str(tmp_path / "o1")], capsys)
    assert "not an IDX file" in err and "bad-images-idx3-ubyte" in err

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    PIL.fromarray(np.zeros((8, 8), np.uint8)).save(mixed / "a.png")
    PIL.fromarray(np.zeros((16, 16), np.uint8)).save(mixed / "b.png")
    err = _error(["vae", "train", "--dataset", "folder", str(mixed), "--config", "vae-tiny",
                  "--out", str(tmp_path / "o2")], capsys)
    assert "mixed sizes" in err and "--resize" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    err = _error(["vae", "train", "--dataset", "folder", str(empty), "--config", "vae-tiny",
                  "--out", str(tmp_path / "o3")], capsys)
    assert "no images" in err

    err = _error(["vae", "train", "--dataset", "folder", "--config", "vae-tiny",
                  "--out", str(tmp_path / "o4")], capsys)
    assert "needs exactly one PATH" in err

    err = _error(["vae", "sample", "--checkpoint", str(tmp_path / "nothing"), "--out",
                  str(tmp_path / "x.png")], capsys)
    assert "no such" in err


def test_non_finite_idx_and_bad_config_values_are_refused_before_out(tmp_path, capsys):
    """NaN/Inf in a float IDX file (a NaN loss blamed on the learning rate, or NaN metrics) and
    config values that cannot work (eval.n_eval=0 stopped inside the evaluation after an
    --overwrite had removed the previous run) are one line, exit 2, the folder as it was."""
    import struct

    for value in (np.nan, np.inf):
        a = np.random.default_rng(0).random((10, 8, 8)).astype(np.float32)
        a[3, 2, 2] = value
        f = tmp_path / f"x{value}.idx"
        f.write_bytes(bytes([0, 0, 0x0D, 3]) + b"".join(struct.pack(">i", d) for d in a.shape)
                      + a.astype(">f4").tobytes())
        err = _error(["vae", "train", "--dataset", "mnist-idx", str(f), "--config", "vae-tiny",
                      "--out", str(tmp_path / "o")], capsys)
        assert "NaN or infinite" in err and f.name in err and not (tmp_path / "o").exists()
    neg = tmp_path / "neg.idx"  # negative values were clamped to 0 without a word
    a = -np.random.default_rng(0).random((10, 8, 8)).astype(np.float32)
    neg.write_bytes(bytes([0, 0, 0x0D, 3]) + b"".join(struct.pack(">i", d) for d in a.shape)
                    + a.astype(">f4").tobytes())
    err = _error(["vae", "train", "--dataset", "mnist-idx", str(neg), "--config", "vae-tiny",
                  "--out", str(tmp_path / "o")], capsys)
    assert "must be >= 0" in err and not (tmp_path / "o").exists()
    folder = tmp_path / "floats"  # a NaN in a float TIFF is named as such (was a [0, 1] range line)
    folder.mkdir()
    for i in range(3):
        im = np.full((8, 8), 0.5, np.float32)
        im[0, 0] = np.nan if i == 1 else 0.25
        PIL.fromarray(im, mode="F").save(folder / f"{i}.tif")
    err = _error(["vae", "train", "--dataset", "folder", str(folder), "--config", "vae-tiny",
                  "--out", str(tmp_path / "o")], capsys)
    assert "NaN" in err and "1.tif" in err
    out = tmp_path / "run"
    assert main(["vae", "train", "--config", "vae-tiny", "--set", "train.steps=2", "--out", str(out), "--quiet"]) == 0
    before = sorted((p.relative_to(out).as_posix(), p.stat().st_size) for p in out.rglob("*") if p.is_file())
    for bad in ("eval.n_eval=0", "eval.n_samples=0", "data.n_eval=0", "data.n_eval=1.5", "loss.alpha=-1",
                "loss.energy_start=2"):
        err = _error(["vae", "train", "--config", "vae-tiny", "--set", "train.steps=2", "--set", bad,
                      "--out", str(out), "--overwrite"], capsys)
        assert bad.split("=")[0].split(".")[1] in err
    assert sorted((p.relative_to(out).as_posix(), p.stat().st_size) for p in out.rglob("*") if p.is_file()) == before


def test_folder_size_not_fitting_the_network(tmp_path, capsys):
    folder = _grey_folder(tmp_path / "odd", [20 * i for i in range(6)], side=10)
    err = _error(["vae", "train", "--dataset", "folder", str(folder), "--config", "vae-tiny",
                  "--set", "data.n_eval=2", "--out", str(tmp_path / "o")], capsys)
    assert "divisible by 4" in err and "--resize" in err


def test_two_processes_train_as_one(tmp_path):
    """Under torchrun the energy distance is the whole batch's (the latents of every process
    gathered, the prior sample of one process): each process's half batch against its own
    prior made the runs part from the step the term starts (weights 0.012 apart after 20
    steps); now the energies agree to rounding and the weights within 1e-4."""
    import glob
    import shutil

    from safetensors.numpy import load_file

    from tests._launch import torchrun

    args = ["vae", "train", "--config", "vae-tiny", "--set", "train.steps=20", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two = tmp_path / "two"
    torchrun(2, ["-m", "fhcnn", *args, "--out", str(two)], clean=lambda: shutil.rmtree(two, True))

    def weights(run):
        return load_file(sorted(glob.glob(str(run / "checkpoints" / "*" / "model.safetensors")))[-1])

    def energies(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["energy"] for r in rows if r.get("split") == "train" and r["energy"] is not None]

    a, b = weights(tmp_path / "one"), weights(two)
    assert max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a if a[k].dtype.kind == "f") < 1e-4
    assert len(energies(two)) >= 10 and energies(two) == pytest.approx(energies(tmp_path / "one"), rel=1e-3)


def test_a_run_folder_never_lends_the_weights_of_another_run(run_dir, tmp_path, capsys):
    """A checkpoint copied into a run folder from elsewhere (or changed since) is not that run's:
    loading the run refuses it in one line instead of sampling another run's model; the copied
    folder given itself still loads."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    latest = sorted((run / "checkpoints").glob("step-*"))[-1]
    foreign = latest.parent / "step-999999"
    shutil.copytree(latest, foreign)  # not in run.json: another run's, as far as the folder knows
    capsys.readouterr()
    out = tmp_path / "s.png"
    for cmd in (["sample", "--n", "4", "--out", str(out)], ["normality", "--out", str(tmp_path / "n"), "--n", "8"]):
        assert main(["vae", cmd[0], "--checkpoint", str(run), *cmd[1:]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is not a checkpoint of the run" in err[0], err
    assert not out.exists()
    assert main(["vae", "sample", "--checkpoint", str(foreign), "--n", "4", "--out", str(out)]) == 0


def test_images_are_png_and_say_so(run_dir, tmp_path, capsys):
    capsys.readouterr()
    for cmd in (["sample", "--n", "4"], ["interpolate", "--a", "0", "--b", "1", "--steps", "2"]):
        out = tmp_path / "grid.jpg"
        assert main(["vae", cmd[0], "--checkpoint", str(run_dir), *cmd[1:], "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "ending in .png" in err[0], err
        assert not out.exists()


def test_a_resumed_run_reports_the_training_time_of_the_whole_run(tmp_path):
    """metrics.json's train_time_s of a resumed run counts the steps before the stop too (the
    time its checkpoint counted): it was the resumed part alone, here 1 step of 6."""
    import shutil

    import torch

    out = tmp_path / "run"
    args = ["vae", "train", "--config", "vae-tiny", "--out", str(out), "--quiet", "--set", "train.steps=6",
            "--set", "train.checkpoint_every=5", "--set", "train.keep_last=5"]
    assert main(args) == 0
    shutil.rmtree(out / "checkpoints" / "step-000006")  # as if killed after the checkpoint of step 5
    before = torch.load(out / "checkpoints" / "step-000005" / "state.pt", weights_only=True)["train_time_s"]
    assert main(args + ["--resume"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())["train_time_s"]
    after = torch.load(out / "checkpoints" / "step-000006" / "state.pt", weights_only=True)["train_time_s"]
    assert 0 < before < after <= resumed


def test_quiet_train_prints_the_result_line_only(tmp_path, capsys):
    """Log lines go to stderr and --quiet hides them: the "vae: NAME: N training / M held-out
    images" line and the network's description were printed to stdout, with --quiet too (and by
    every process under torchrun); stdout holds the result line only."""
    args = ["vae", "train", "--config", "vae-tiny", "--set", "train.steps=2"]
    assert main(args + ["--out", str(tmp_path / "a"), "--quiet"]) == 0
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("latent_dim ") and lines[0].endswith(f"wrote {tmp_path / 'a'}")
    assert "held-out" not in cap.err
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    cap = capsys.readouterr()
    assert len(cap.out.splitlines()) == 1 and "HyperbolicNetwork" not in cap.out
    assert "digits: 102 training / 18 held-out images" in cap.err and "HyperbolicNetwork" in cap.err


def test_held_out_images_leave_most_images_to_train_on(tmp_path, capsys):
    """vae-tiny held out a fixed 20 images, capped at all but 2: on a folder of 10 it held out 8
    and trained on 2, on one of 21 it held out 19. Now it holds out a fraction (0.15, at least 2),
    and a count of more than half the images is refused in one line before --out exists."""
    from fhcnn.apps.vae import VAEConfig, load_images
    from fhcnn.apps.vae.actions import dataset_overrides
    from fhcnn.config import load_config

    for n, split in ((5, (3, 2)), (10, (8, 2)), (21, (18, 3))):
        folder = _grey_folder(tmp_path / f"f{n}", [10 * i for i in range(n)])
        cfg = load_config(VAEConfig, "vae-tiny", dataset_overrides(["folder", str(folder)], "digits"))
        train, held = load_images(cfg)
        assert (len(train), len(held)) == split, n
    out = tmp_path / "o"
    for count, held_out in (("20", 20), ("11", 11)):
        err = _error(["vae", "train", "--dataset", "folder", str(tmp_path / "f21"), "--config", "vae-tiny",
                      "--set", f"data.n_eval={count}", "--out", str(out)], capsys)
        assert f"holds out {held_out} of its 21 images" in err and "at most half (10)" in err
        assert len(err.splitlines()) == 1 and not out.exists()
    err = _error(["vae", "train", "--config", "vae-tiny", "--set", "data.n_eval=0.6", "--out", str(out)], capsys)
    assert "(0, 0.5]" in err and not out.exists()
    assert main(["vae", "train", "--dataset", "folder", str(tmp_path / "f21"), "--config", "vae-tiny",
                 "--set", "data.n_eval=10", "--set", "train.steps=1", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["n_train"] == 11


def test_a_run_folder_of_another_command_is_named_as_such(tmp_path, capsys):
    """A run folder of ``fhcnn volume`` given to sample/interpolate/normality (the folder, its
    ``checkpoints/``, a step or its weights) was refused as "unknown config key 'volume'", as if
    the user had mistyped a config: it is one line naming the command that made the folder,
    exit 2, nothing written."""
    from tests.apps._volumes import write_tiny_volume

    data = tmp_path / "data"
    data.mkdir()
    write_tiny_volume(data)
    vol = tmp_path / "vol"
    assert main(["volume", str(data / "c0.npy"), "--labels", str(data / "lab.npy"), "--config", "volume-tiny",
                 "--set", "train.steps=1", "--out", str(vol), "--quiet"]) == 0
    step = sorted((vol / "checkpoints").glob("step-*"))[-1]
    capsys.readouterr()
    out = tmp_path / "s.png"
    for given in (vol, vol / "checkpoints", step, step / "model.safetensors"):
        for cmd in (["sample", "--n", "4", "--out", str(out)],
                    ["interpolate", "--a", "0", "--b", "1", "--out", str(out)],
                    ["normality", "--out", str(tmp_path / "n")]):
            assert main(["vae", cmd[0], "--checkpoint", str(given), *cmd[1:]]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert err == [f"error: {given}: {vol} is a run folder of fhcnn volume, not of fhcnn vae; "
                           f"give a run folder written by 'fhcnn vae train'"], err
    assert not out.exists() and not (tmp_path / "n").exists()


def test_a_bad_value_is_refused_naming_the_options_as_typed(tmp_path, capsys):
    """With --dataset, --resize or --threads, a bad --set value was refused as "--set
    data.size=null --set data.crop=null --set data.dataset=folder --set data.path=F ...: ...",
    options the user never typed; the line now names the options as typed, --dataset once."""
    folder = _grey_folder(tmp_path / "imgs", [10 * i for i in range(6)])
    out = tmp_path / "o"
    err = _error(["vae", "train", "--dataset", "folder", str(folder), "--resize", "8", "--threads", "1",
                  "--config", "vae-tiny", "--set", "data.n_eval=0.6", "--out", str(out)], capsys)
    assert err.splitlines() == [
        f"error: --dataset folder {folder} --resize 8 --set data.n_eval=0.6 --threads 1: config data: n_eval must "
        f"be a fraction in (0, 0.5] (at most half of the images are held out) or a whole count >= 1, got 0.6"]
    assert not out.exists()


def test_the_run_images_must_be_the_recorded_ones(tmp_path, capsys):
    """normality and interpolate's indices read the run's images again from data.path. After an
    image was added to the folder, the split came out otherwise and normality scored as
    "held-out" images the run had trained on, silently. The folder's fingerprint must match
    run.json's: otherwise one line, exit 2, nothing written; image files still interpolate."""
    folder = _grey_folder(tmp_path / "imgs", [20 * i for i in range(8)])
    run = tmp_path / "run"
    assert main(["vae", "train", "--dataset", "folder", str(folder), "--config", "vae-tiny", "--set", "train.steps=1",
                 "--out", str(run), "--quiet"]) == 0
    PIL.fromarray(np.full((8, 8), 255, np.uint8)).save(folder / "8.png")
    capsys.readouterr()
    line = (f"error: {folder}: the run's images (folder {folder}) changed since it was trained (its run.json records "
            f"other contents), so its training and held-out images are no longer known; restore them (interpolate "
            f"also takes image files)")
    out = tmp_path / "i.png"
    for cmd in (["normality", "--out", str(tmp_path / "n")],
                ["interpolate", "--a", "0", "--b", "1", "--out", str(out)]):
        assert main(["vae", cmd[0], "--checkpoint", str(run), *cmd[1:]]) == 2
        assert capsys.readouterr().err.splitlines() == [line]
    assert not out.exists() and not (tmp_path / "n").exists()
    assert main(["vae", "interpolate", "--checkpoint", str(run), "--a", str(folder / "0.png"), "--b",
                 str(folder / "8.png"), "--out", str(out)]) == 0
    (folder / "8.png").unlink()
    assert main(["vae", "normality", "--checkpoint", str(run), "--out", str(tmp_path / "n")]) == 0


def test_resume_names_a_data_folder_changed_in_place(tmp_path, capsys):
    """--resume after an image was added to the run's folder said "data (F) is not the recorded
    one (F)", the same path twice, as if another folder had been given; it now says the folder
    changed since the run. The run folder stays as it was."""
    folder = _grey_folder(tmp_path / "imgs", [20 * i for i in range(6)])
    run = tmp_path / "run"
    argv = ["vae", "train", "--dataset", "folder", str(folder), "--config", "vae-tiny", "--set", "train.steps=1",
            "--out", str(run), "--quiet"]
    assert main(argv) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    PIL.fromarray(np.full((8, 8), 255, np.uint8)).save(folder / "6.png")
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --resume: {run} was run with other inputs or config: data ({folder}) changed since the run (its "
        f"contents differ from the recorded ones); resume with the same ones, or start a new run"]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_interpolate_names_an_argument_that_is_neither_index_nor_file(run_dir, tmp_path, capsys):
    """--a=--3 or --a ² passed str.isdigit once the dashes were stripped and int() refused them:
    the line was Python's "invalid literal for int() with base 10: '--3'", naming neither --a
    nor what it takes. They are now read as file names: one line naming both choices."""
    out = tmp_path / "i.png"
    for spec in ("--3", "²"):
        err = _error(["vae", "interpolate", "--checkpoint", str(run_dir), f"--a={spec}", "--b", "1",
                      "--out", str(out)], capsys)
        assert err.splitlines() == [f"error: --a {spec}: neither an image file nor an index into the training set"]
    assert not out.exists()
    assert main(["vae", "interpolate", "--checkpoint", str(run_dir), "--a", "-1", "--b", " 2", "--out", str(out)]) == 0


def test_the_run_finds_its_images_from_any_folder(tmp_path, monkeypatch, capsys):
    """data.path was kept as typed: a run trained with --dataset folder imgs from one folder
    looked for imgs/ in the working directory of normality and interpolate, "imgs: no such
    folder" from anywhere else (or another folder of that name, refused as changed). The run
    records the absolute path: the same report and the same images from another folder."""
    import yaml

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    for base, value in ((work, 0), (elsewhere, 255)):  # a decoy imgs/ in the other folder
        _grey_folder(base / "imgs", [value + (-1) ** value * 20 * i for i in range(8)])
    monkeypatch.chdir(work)
    assert main(["vae", "train", "--dataset", "folder", "imgs", "--config", "vae-tiny", "--set", "train.steps=1",
                 "--out", "run", "--quiet"]) == 0
    cfg = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert cfg["data"]["path"] == str(work / "imgs")
    assert json.loads((work / "run" / "run.json").read_text())["inputs"]["data"]["path"] == str(work / "imgs")
    assert main(["vae", "normality", "--checkpoint", "run", "--out", "n"]) == 0
    assert main(["vae", "interpolate", "--checkpoint", "run", "--a", "0", "--b", "1", "--out", "i.png"]) == 0
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["vae", "normality", "--checkpoint", str(work / "run"), "--out", "n"]) == 0, capsys.readouterr().err
    assert main(["vae", "interpolate", "--checkpoint", str(work / "run"), "--a", "0", "--b", "1",
                 "--out", "i.png"]) == 0
    assert (elsewhere / "n" / "normality.json").read_text() == (work / "n" / "normality.json").read_text()
    assert np.array_equal(_png(elsewhere / "i.png"), _png(work / "i.png"))


def test_more_training_images_than_remain_are_refused(tmp_path, capsys):
    """data.n_train larger than the images left after the held-out ones silently trained on all
    of them (26 of 30 for data.n_train=40, metrics.json saying n_train 26). One line names the
    option, the images, the held-out count and the most it may be; exit 2 before --out exists."""
    folder = _grey_folder(tmp_path / "imgs", [8 * i for i in range(30)])
    out = tmp_path / "o"
    args = ["vae", "train", "--dataset", "folder", str(folder), "--config", "vae-tiny", "--set", "train.steps=1",
            "--out", str(out), "--quiet"]
    for n_train in ("27", "40"):  # round(30 * 0.15) = 4 held out, 26 remain
        err = _error([*args, "--set", f"data.n_train={n_train}"], capsys)
        assert err.splitlines() == [
            f"error: folder:imgs: data.n_train={n_train} asks for more training images than there are: of its 30 "
            f"images 4 are held out (data.n_eval=0.15), leaving 26; set data.n_train to at most 26 (or null: all of "
            f"them)"]
        assert not out.exists()
    err = _error(["vae", "train", "--config", "vae-tiny", "--set", "data.n_train=103", "--out", str(out)], capsys)
    assert "of its 120 images (data.limit=120) 18 are held out (data.n_eval=0.15), leaving 102;" in err
    assert not out.exists()
    assert main([*args, "--set", "data.n_train=26"]) == 0
    assert json.loads((out / "metrics.json").read_text())["n_train"] == 26


def test_npy_names_a_npy_file(run_dir, tmp_path, capsys):
    """--npy wrote the array under whatever name it was given: --npy samples wrote .npy data to
    "samples" (np.load("samples.npy") then found nothing, or an older array), --npy notes.txt into
    a .txt, and --npy "" wrote nothing, silently. A name not ending in .npy is one line, exit 2,
    before anything is written (--out's PNG neither); a file of the user's stays as it was."""
    out = tmp_path / "s.png"
    mine = tmp_path / "notes.txt"
    mine.write_text("mine\n")
    capsys.readouterr()
    for npy in (str(tmp_path / "samples"), str(mine), ""):
        assert main(["vae", "sample", "--checkpoint", str(run_dir), "--n", "4", "--out", str(out), "--npy", npy]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"error: --npy {npy}: the array is written as .npy; give a file name ending in .npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and mine.read_text() == "mine\n"
    assert main(["vae", "sample", "--checkpoint", str(run_dir), "--n", "4", "--out", str(out), "--npy",
                 str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (4, 1, 8, 8)


def _same_row_by_file_as_by_index(run: Path, folder: Path, tmp_path: Path) -> None:
    """Training images 1 and 4 of ``run`` given to interpolate as the files ``folder/1.png`` and
    ``folder/4.png`` give the same row as their indices."""
    by_index, by_file = tmp_path / "index.png", tmp_path / "file.png"
    assert main(["vae", "interpolate", "--checkpoint", str(run), "--a", "1", "--b", "4", "--steps", "3",
                 "--out", str(by_index)]) == 0
    assert main(["vae", "interpolate", "--checkpoint", str(run), "--a", str(folder / "1.png"), "--b",
                 str(folder / "4.png"), "--steps", "3", "--out", str(by_file)]) == 0
    assert np.array_equal(_png(by_file), _png(by_index))


def test_interpolate_cuts_an_image_file_as_the_run_cut_its_images(tmp_path):
    """A run trained with --crop (CelebA: --resize 64 --crop 140) saw the centred 140-pixel
    square of each image; an image file given to interpolate was cut to the largest square
    instead, so the same face came out smaller and the line ran between other latents, silently.
    The file is now cut as the run's images were: a training image given as a file gives the
    same row as its index."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        PIL.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    run = tmp_path / "run"
    assert main(["vae", "train", "--dataset", "folder", str(folder), "--resize", "8", "--crop", "8", "--config",
                 "vae-tiny", "--set", "data.split=ordered", "--set", "train.steps=1", "--out", str(run),
                 "--quiet"]) == 0  # ordered: the training images are 0.png ... 5.png
    _same_row_by_file_as_by_index(run, folder, tmp_path)


@pytest.mark.parametrize("dataset, side", [("digits", (8, 8)), ("mnist-idx", (28, 28)), ("mnist-idx", (20, 20)),
                                           ("mnist-idx", (20, 24))])
def test_interpolate_pads_an_image_file_of_the_data_set_s_size_as_the_run_padded_its_images(tmp_path, dataset,
                                                                                           side, capsys):
    """The digits (8x8) and MNIST's images (28x28) are zero-padded to the model's size (16,
    32); an image file of that size given to interpolate was resized to it instead, so a digit
    came out at twice the scale of the training digits and the line ran between other latents,
    silently. A training image given as a file now gives the same row as its index. (A digit
    is k/16: a 16-bit grey PNG holds it to 1/131070, an 8-bit one only to 1/510.) So for an IDX
    file of other images than MNIST's 28x28 (20x20, 20x24), which training pads as it pads
    MNIST's: a file of their size was resized (and a 20x24 one cut square) as if of a folder."""
    if dataset == "digits":
        from sklearn.datasets import load_digits

        images, size, source = load_digits().images[:8] / 16, 16, []
        files = [PIL.fromarray(np.round(a * 65535).astype(np.uint16)) for a in images]
    else:
        images, size = (np.random.default_rng(0).random((8, *side)) * 255).astype(np.uint8), 32
        source = [str(tmp_path / "train-images-idx3-ubyte")]
        Path(source[0]).write_bytes(bytes([0, 0, 8, 3]) + np.array(images.shape, ">i4").tobytes() + images.tobytes())
        files = [PIL.fromarray(a) for a in images]
    for i in (1, 4):
        files[i].save(tmp_path / f"{i}.png")
    run = tmp_path / "run"
    assert main(["vae", "train", "--dataset", dataset, *source, "--config", "vae-tiny", "--set", f"data.size={size}",
                 "--set", "data.split=ordered", "--set", "train.steps=1", "--out", str(run), "--quiet"]) == 0
    _same_row_by_file_as_by_index(run, tmp_path, tmp_path)
    if source:  # the IDX file moved: its images' size is not known, which the line says
        Path(source[0]).rename(tmp_path / "moved")
        out = tmp_path / "after.png"
        assert main(["vae", "interpolate", "--checkpoint", str(run), "--a", str(tmp_path / "1.png"), "--b", "0",
                     "--out", str(out)]) == 2
        assert capsys.readouterr().err == (
            f"error: --a {tmp_path / '1.png'}: the size of the run's IDX images is needed to bring the file to the "
            f"model's size as they were, but {source[0]}: no such file; restore data.path of its config.yaml, or "
            f"give an index into its training images\n")
        assert not out.exists()


def test_a_crop_that_would_be_ignored_is_refused(tmp_path, capsys):
    """--crop is cut only from a folder's images before --resize: a folder of 16x16 images with
    --crop 8 and no --resize trained on the whole 16x16 images (config.yaml saying crop: 8), and
    --crop with digits was ignored too, silently. Both are one line, exit 2, before --out exists."""
    folder = _grey_folder(tmp_path / "imgs", [20 * i for i in range(6)], side=16)
    out = tmp_path / "o"
    err = _error(["vae", "train", "--dataset", "folder", str(folder), "--crop", "8", "--config", "vae-tiny",
                  "--out", str(out)], capsys)
    assert err.splitlines() == ["error: --crop (data.crop) 8 is cut only before --resize SIZE (data.size); without "
                                "it the images would keep their whole size: add --resize 8 to keep the 8x8 crops"]
    err = _error(["vae", "train", "--config", "vae-tiny", "--set", "data.crop=4", "--out", str(out)], capsys)
    assert err.splitlines() == ["error: --crop (data.crop) 4 cuts a folder's images only; the digits images are "
                                "never cut: leave it out"]
    assert not out.exists()
    assert main(["vae", "train", "--dataset", "folder", str(folder), "--crop", "8", "--resize", "8", "--config",
                 "vae-tiny", "--set", "train.steps=1", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["full_dim"] == 64


def test_images_no_longer_at_data_path_are_named_as_the_runs(tmp_path, monkeypatch, capsys):
    """After the run's image folder was moved, normality said only "F: no such folder", as if
    the user had given F; the line now says it is the run's data.path, read again to split the
    images as the run did. A run of an older version that kept a relative path says so."""
    folder = _grey_folder(tmp_path / "imgs", [20 * i for i in range(6)])
    run = tmp_path / "run"
    assert main(["vae", "train", "--dataset", "folder", str(folder), "--config", "vae-tiny", "--set", "train.steps=1",
                 "--out", str(run), "--quiet"]) == 0
    folder.rename(tmp_path / "moved")
    capsys.readouterr()
    out = tmp_path / "i.png"
    for cmd in (["normality"], ["interpolate", "--a", "0", "--b", "1", "--out", str(out)]):
        assert main(["vae", cmd[0], "--checkpoint", str(run), *cmd[1:]]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"error: {folder}: not found; the run's images (data.path of its config.yaml) are read again to split "
            f"them as the run did: restore them there (interpolate also takes image files)"]
    assert not out.exists() and not (run / "normality").exists()
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["path"] = "imgs"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    assert main(["vae", "normality", "--checkpoint", str(run)]) == 2
    assert "(data.path of its config.yaml, a path relative to the folder the run was trained in: run from there)" \
        in capsys.readouterr().err


def test_an_index_out_of_range_names_its_option(run_dir, tmp_path, capsys):
    """--b 102 on a run of 102 training images was refused as "image index 102 is out of range",
    naming neither --b nor the indices that exist; the line now names both."""
    out = tmp_path / "i.png"
    for flag, spec in (("--b", "102"), ("--a", "-103")):
        args = {"--a": "0", "--b": "1", flag: spec}
        err = _error(["vae", "interpolate", "--checkpoint", str(run_dir), "--a", args["--a"], "--b", args["--b"],
                      "--out", str(out)], capsys)
        assert err.splitlines() == [f"error: {flag} {spec}: image index {spec} is out of range: the run's training "
                                    f"set has 102 images (0 to 101, or -102 to -1 from the end)"]
    assert not out.exists()


def test_a_run_that_kept_a_relative_path_still_resumes(tmp_path, monkeypatch, capsys):
    """Runs written before data.path was kept absolute recorded it as typed ("imgs"): resumed
    from the folder they were trained in, the path now made absolute was "the resolved config
    differs: data.path", refusing every such run. It keeps its record where it names the same
    images; from another folder holding other images of that name it is refused as before."""
    import shutil

    import fhcnn.apps.vae.pipeline as pipeline

    _grey_folder(tmp_path / "imgs", [20 * i for i in range(6)])
    monkeypatch.chdir(tmp_path)
    args = ["vae", "train", "--dataset", "folder", "imgs", "--config", "vae-tiny", "--out", "run", "--quiet",
            "--set", "train.steps=6", "--set", "train.checkpoint_every=5", "--set", "train.keep_last=5"]
    with monkeypatch.context() as m:  # as the earlier versions: the path as typed
        m.setattr(pipeline, "absolute_data_path", lambda cfg, resumed=None: None)
        assert main(args) == 0
    assert "path: imgs," in (tmp_path / "run" / "config.yaml").read_text()
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-000006")  # as if killed after step 5
    _grey_folder(tmp_path / "other" / "imgs", [255 - 20 * i for i in range(6)])
    monkeypatch.chdir(tmp_path / "other")
    args[args.index("run")] = str(tmp_path / "run")
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    assert "data (imgs) changed since the run" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--resume"]) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoints" / "step-000006").is_dir()
    assert "path: imgs," in (tmp_path / "run" / "config.yaml").read_text()
