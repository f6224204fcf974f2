"""Issues 13 and 26: a user's files are never lost, overwritten or silently misread.

One test (or more) per class of the issue; each fails on the code before the fix. Every
refusal is one ``error:`` line, exit code 2, and leaves the input files (and a refused OUT)
as they were.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fhcnn.cli import main
from fhcnn.data.video import generate_video, read_video
from fhcnn.errors import InputError

TINY = ["--config", "video-tiny", "--quiet", "--set", "train.steps=2"]


def tree_hash(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below ``root`` (links: their target text)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "link:" + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(argv: list[str]) -> tuple[int, list[str]]:
    """``fhcnn ARGV`` in-process: (exit code, stderr lines)."""
    err = io.StringIO()
    with redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, err.getvalue().strip().splitlines()


def refused(argv: list[str], message: str) -> str:
    rc, err = run_cli(argv)
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert message in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    video, masks = generate_video(None, frames=6, height=16, width=24, objects=1, seed=3, binary=True)
    return video, masks


@pytest.fixture
def data(video, tmp_path) -> Path:
    v, m = video
    d = tmp_path / "data"
    d.mkdir()
    np.save(d / "v.npy", v)
    np.save(d / "m.npy", m)
    return d


def seg(d: Path, out: Path, *extra: object, video: str = "v.npy", labels: str = "m.npy") -> list[object]:
    return ["segment", d / video, "--labels", d / labels, "--out", out, *TINY, *extra]


# ------------------------------------------------------------------ 1. --overwrite
def test_1_overwrite_refuses_a_folder_with_files_fhcnn_did_not_write(data, tmp_path):
    p = tmp_path / "P"
    (p / "checkpoints").mkdir(parents=True)
    (p / "checkpoints" / "resnet.pt").write_text("x")
    (p / "metrics.jsonl").write_text("theirs\n")
    before = tree_hash(p)
    refused(seg(data, p, "--overwrite"), "was not written by fhcnn")
    assert tree_hash(p) == before


def test_1_overwrite_removes_only_files_fhcnn_wrote(data, video, tmp_path):
    out = tmp_path / "run"
    assert run_cli(seg(data, out))[0] == 0
    marker = json.loads((out / "run.json").read_text())
    assert marker["tool"] == "segment" and "prediction.npy" in marker["files"]
    assert any(f.startswith("checkpoints/") for f in marker["files"])
    assert all((out / f).exists() for f in marker["files"] if not f.startswith("checkpoints/"))
    (out / "notes.txt").write_text("mine")
    (out / "checkpoints" / "resnet.pt").write_text("mine too")
    (out / "masks" / "my_edit.png").write_bytes(b"mine")
    # the new run has 4 frames: the old run's masks 00004/00005 must not stay beside the new ones
    v, m = video
    np.save(data / "v4.npy", v[:4])
    np.save(data / "m4.npy", m[:4])
    assert run_cli(seg(data, out, "--overwrite", video="v4.npy", labels="m4.npy"))[0] == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "checkpoints" / "resnet.pt").read_text() == "mine too"
    assert (out / "masks" / "my_edit.png").read_bytes() == b"mine"
    assert sorted(p.name for p in (out / "masks").glob("0*.png")) == [f"{i:05d}.png" for i in range(4)]
    assert np.load(out / "prediction.npy").shape[0] == 4


def test_1_refusal_does_not_recommend_overwrite_for_foreign_folders(data, tmp_path):
    p = tmp_path / "photos"
    p.mkdir()
    (p / "a.jpg").write_bytes(b"x")
    msg = refused(seg(data, p), "holds no fhcnn run")
    assert "--overwrite" not in msg


def test_1_bench_never_writes_over_a_foreign_folder(tmp_path):
    p = tmp_path / "results"
    p.mkdir()
    (p / "memory.json").write_text("my own results")
    refused(["bench", "memory", "--out", p, "--quick", "--quiet"], "holds no fhcnn run")
    refused(["bench", "memory", "--out", p, "--quick", "--quiet", "--overwrite"], "not written by fhcnn")
    assert (p / "memory.json").read_text() == "my own results"


# ------------------------------------------------------- 2. every output path
@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vae")
    rc, err = run_cli(["vae", "train", "--dataset", "digits", "--config", "vae-tiny", "--out", root / "run",
                       "--quiet", "--set", "train.steps=2", "--limit", "64"])
    assert rc == 0, err
    return root / "run"


def test_2_vae_outputs_never_replace_existing_files(vae_run, tmp_path):
    before = tree_hash(vae_run)
    text = tmp_path / "notes.png"  # a file of the user's, under a name the images could take
    text.write_text("mine")
    array = tmp_path / "notes.npy"  # and one under a name the array could take
    array.write_text("mine")
    ck = ["--checkpoint", vae_run]
    refused(["vae", "sample", *ck, "--n", "4", "--out", text], "exists")
    refused(["vae", "sample", *ck, "--n", "4", "--out", tmp_path / "s.png", "--npy", array], "exists")
    refused(["vae", "sample", *ck, "--n", "4", "--out", vae_run / "figure.png", "--overwrite"],
            "inside the")
    refused(["vae", "sample", *ck, "--n", "4", "--out", tmp_path / "s.png", "--npy", vae_run / "samples.npy"],
            "inside the")
    refused(["vae", "interpolate", *ck, "--a", "0", "--b", "1", "--out", text], "exists")
    (tmp_path / "x.npy").symlink_to(tmp_path / "x.png")  # --npy (named .npy) and --out one file
    refused(["vae", "sample", *ck, "--n", "4", "--out", tmp_path / "x.png", "--npy", tmp_path / "x.npy"],
            "same file")
    assert text.read_text() == "mine" and array.read_text() == "mine" and tree_hash(vae_run) == before
    # --overwrite replaces a file outside any run or input
    assert run_cli(["vae", "sample", *ck, "--n", "4", "--out", text, "--overwrite"])[0] == 0
    assert text.read_bytes().startswith(b"\x89PNG")


def test_2_vae_normality_never_writes_into_an_input_folder(vae_run, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("L", (16, 16), 3).save(imgs / "a.png")
    before = tree_hash(vae_run)
    refused(["vae", "normality", "--checkpoint", vae_run, "--out", vae_run / "sub", "--n", "8"],
            "inside the input folder")
    a = (imgs / "a.png").read_bytes()
    refused(["vae", "interpolate", "--checkpoint", vae_run, "--a", imgs / "a.png", "--b", "0",
             "--out", imgs / "a.png", "--overwrite"], "is the input")
    assert tree_hash(vae_run) == before and (imgs / "a.png").read_bytes() == a


def test_2_segment_out_is_never_an_input_folder(data, video):
    md = data / "masks"
    md.mkdir()
    for i, mask in enumerate(video[1]):
        Image.fromarray(mask).save(md / f"{i:05d}.png")
    before = tree_hash(data)
    refused(seg(data, data, "--overwrite"), "folder of the input file")
    refused(["segment", data / "v.npy", "--labels", md, "--out", md / "out", *TINY], "inside the input folder")
    assert tree_hash(data) == before


# ------------------------------------------------------------- 3. --config input
def test_3_config_inside_out_is_never_written(data, tmp_path):
    exp = tmp_path / "myexp"
    exp.mkdir()
    cfg = exp / "config.yaml"
    cfg.write_text("# my experiment\ntrain:\n  steps: 2\n")
    before = cfg.read_bytes()
    for extra in ([], ["--overwrite"]):
        refused(["segment", data / "v.npy", "--labels", data / "m.npy", "--out", exp, "--config", cfg,
                 "--quiet", *extra], "config")
    assert cfg.read_bytes() == before and sorted(p.name for p in exp.iterdir()) == ["config.yaml"]


# ------------------------------------------------------------- 4. bit depth
@pytest.mark.parametrize("kind", ["png16", "npy12", "float"])
def test_4_frames_keep_their_bit_depth(video, tmp_path, kind):
    v, m = video
    grey = v.mean(-1)
    if kind == "png16":  # values far above 255: clipping made the video one colour
        frames = (20000 + 100 * grey).astype(np.uint16)
        d = tmp_path / "frames"
        d.mkdir()
        for i, f in enumerate(frames):
            Image.fromarray(f).save(d / f"{i:05d}.png")
        src = d
    else:
        frames = (grey * 16).astype(np.uint16) if kind == "npy12" else (grey * 40.0).astype(np.float32)
        src = tmp_path / "v.npy"
        np.save(src, frames)
    read, _ = read_video(src)
    assert read.dtype != np.uint8 and np.ptp(read) > 255 * 0.9
    from fhcnn.apps.segment import frames_to_volume

    vol = frames_to_volume(read)
    assert vol.min() == 0 and vol.max() == 1 and len(np.unique(vol)) > 100
    np.save(tmp_path / "m.npy", m)
    rc, err = run_cli(["segment", src, "--labels", tmp_path / "m.npy", "--out", tmp_path / "o", *TINY])
    assert rc == 0, err


def test_4_constant_video_is_refused(tmp_path):
    np.save(tmp_path / "v.npy", np.full((4, 16, 24), 4000, np.uint16))
    np.save(tmp_path / "m.npy", np.ones((4, 16, 24), np.uint8))
    refused(seg(tmp_path, tmp_path / "o"), "nothing to segment")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------- 5. JPEG masks
def test_5_jpeg_masks_are_refused(data, video, tmp_path):
    _, m = video
    md = tmp_path / "jmasks"
    md.mkdir()
    for i, mask in enumerate(m):
        Image.fromarray(mask * 255).save(md / f"{i:05d}.jpg", quality=70)
    refused(["segment", data / "v.npy", "--labels", md, "--out", tmp_path / "o", *TINY], "JPEG")
    # JPEG data under a .png name too
    Image.fromarray(m[0] * 255).save(md / "00000.png", format="JPEG")
    for f in md.glob("*.jpg"):
        f.unlink()
    refused(["segment", data / "v.npy", "--labels", md, "--out", tmp_path / "o", *TINY], "JPEG")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------- 6. mask encodings
def test_6_masks_with_different_encodings_are_refused(data, video, tmp_path):
    _, m = video
    md = tmp_path / "masks"
    md.mkdir()
    for i, mask in enumerate(m):
        Image.fromarray((mask * (1 if i == 0 else 255)).astype(np.uint8)).save(md / f"{i:05d}.png")
    refused(["segment", data / "v.npy", "--labels", md, "--out", tmp_path / "o", *TINY], "disagree")
    # --labels 0/255 with --eval-labels 0/1: was a false "hold no foreground"
    np.save(tmp_path / "m255.npy", (m * 255).astype(np.uint8))
    np.save(tmp_path / "m01.npy", m.astype(np.uint8))
    refused(["segment", data / "v.npy", "--labels", tmp_path / "m255.npy", "--eval-labels",
             tmp_path / "m01.npy", "--out", tmp_path / "o", *TINY], "disagree")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------- 7. stray and dangling frames
def _frame_folder(v: np.ndarray, d: Path) -> Path:
    d.mkdir()
    for i, f in enumerate(v):
        Image.fromarray(f).save(d / f"{i:05d}.png")
    return d


def test_7_stray_unnumbered_image_is_refused(data, video, tmp_path):
    d = _frame_folder(video[0], tmp_path / "frames")
    Image.fromarray(video[0][0]).save(d / "cover.png")
    refused(["segment", d, "--labels", data / "m.npy", "--out", tmp_path / "o", *TINY], "cover.png")
    assert not (tmp_path / "o").exists()


def test_7_dangling_symlink_frame_is_refused(data, video, tmp_path):
    d = _frame_folder(video[0], tmp_path / "frames")
    os.symlink(tmp_path / "gone.png", d / "00006.png")
    refused(["segment", d, "--labels", data / "m.npy", "--out", tmp_path / "o", *TINY], "00006.png")


# ------------------------------------------------------ 8. resume of another run
@pytest.mark.parametrize("change, message", [
    ("video", "video"), ("labels", "labels"), ("label_frames", "label-frames"),
    # a changed config names each changed key with the recorded and the new value
    ("config", "config (--config/--set) differs: train.lr: "), ("model", "differs: model.width: "),
])
def test_8_resume_with_other_inputs_or_config_is_refused(data, tmp_path, change, message):
    out = tmp_path / "run"
    assert run_cli(seg(data, out))[0] == 0
    before = tree_hash(out)
    extra: list[object] = ["--resume"]
    if change == "video":
        v = np.load(data / "v.npy")
        np.save(data / "v.npy", v[:, ::-1].copy())
    elif change == "labels":
        m = np.load(data / "m.npy")
        m[0, :2] = 1 - m[0, :2]
        np.save(data / "m.npy", m)
    elif change == "config":
        extra += ["--set", "train.lr=0.01"]
    elif change == "model":  # was a traceback (state_dict mismatch) after OUT was rewritten
        extra += ["--set", "model.width=32"]
    else:
        extra += ["--label-frames", "0,5"]
    refused(seg(data, out, *extra), message)
    assert tree_hash(out) == before
    if change in ("config", "label_frames", "model"):  # the same inputs resume fine
        assert run_cli(seg(data, out, "--resume"))[0] == 0


# ------------------------------------------------------------- 9. .mat pairs
def test_9_mat_pair_says_which_variable_is_which_date_and_key_chooses(tmp_path):
    import scipy.io

    from fhcnn.data.hyperspectral import read_pair

    rng = np.random.default_rng(0)
    a, b = rng.random((2, 8, 8, 3)).astype(np.float32)
    scipy.io.savemat(tmp_path / "pair.mat", {"T1": a, "T2": b})
    src: dict[str, str] = {}
    x, y = read_pair(tmp_path / "pair.mat", sources=src)
    assert src["before"] == "variable T1" and src["after"] == "variable T2" and "--key T2,T1" in src["order"]
    np.testing.assert_array_equal(x, a)
    x, y = read_pair(tmp_path / "pair.mat", key="T2,T1")
    np.testing.assert_array_equal(x, b)
    np.testing.assert_array_equal(y, a)
    # the command line logs it and records it in metrics.json
    np.save(tmp_path / "lab.npy", np.eye(8, dtype=np.uint8))
    base = ["change", tmp_path / "pair.mat", "--labels", tmp_path / "lab.npy", "--config", "change-tiny",
            "--set", "train.steps=2"]
    rc, err = run_cli([*base, "--out", tmp_path / "o1"])
    assert rc == 0 and any("BEFORE = " in e and "variable T1" in e for e in err), err
    assert run_cli([*base, "--out", tmp_path / "o2", "--key", "T2,T1", "--quiet"])[0] == 0
    dates = json.loads((tmp_path / "o2" / "metrics.json").read_text())["scene"]["dates"]
    assert dates["before"].endswith("variable T2") and dates["after"].endswith("variable T1")


# ------------------------------------------------ 10. one line, not a traceback
def test_10_errors_are_one_line(data, tmp_path, monkeypatch):
    refused(seg(data, tmp_path / "o", "--set", "data.batch_size=0"), "batch_size")
    refused(seg(data, tmp_path / "o", "--set", "data.window_depth=-3"), "window_depth")
    assert not (tmp_path / "o").exists()
    # TIFF input without tifffile
    import tifffile

    cube = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "a.tif", cube, photometric="minisblack")
    tifffile.imwrite(tmp_path / "b.tif", cube + 1, photometric="minisblack")
    np.save(tmp_path / "lab.npy", np.eye(8, dtype=np.uint8))
    monkeypatch.setitem(sys.modules, "tifffile", None)
    refused(["change", tmp_path / "a.tif", tmp_path / "b.tif", "--labels", tmp_path / "lab.npy",
             "--out", tmp_path / "c", "--config", "change-tiny", "--quiet"], "tifffile")
    assert not (tmp_path / "c").exists()


# --------------------------------------------------- 11. nothing before checks
@pytest.mark.parametrize("extra, message", [
    (["--device", "cuda:99"], "cuda"),
    (["--set", "model.h=0"], "h must be > 0"),
    (["--set", "model.width=63"], "divisible"),
    (["--set", "model.units=1up,1,1down,1down"], "input resolution"),
])
def test_11_device_and_model_errors_leave_no_out(data, tmp_path, extra, message):
    out = tmp_path / "o"
    refused(seg(data, out, *extra), message)
    assert not out.exists()
    # the retry with a good device is not refused
    assert run_cli(seg(data, out))[0] == 0


def test_11_vae_errors_leave_no_out(tmp_path):
    out = tmp_path / "o"
    refused(["vae", "train", "--dataset", "folder", tmp_path / "none", "--config", "vae-tiny",
             "--out", out, "--quiet"], "no such folder")
    refused(["vae", "train", "--dataset", "digits", "--config", "vae-tiny", "--out", out, "--quiet",
             "--device", "cuda:99"], "cuda")
    refused(["vae", "train", "--dataset", "digits", "--config", "vae-tiny", "--out", out, "--quiet",
             "--resize", "17"], "divisible")
    assert not out.exists()


# ----------------------------------------------------------------- 12. smaller
def test_12_smaller_cases(data, video, tmp_path):
    v, m = video
    # --crop larger than the images
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(6):
        Image.fromarray(v[i]).save(imgs / f"{i}.png")
    refused(["vae", "train", "--dataset", "folder", imgs, "--resize", "8", "--crop", "40",
             "--config", "vae-tiny", "--out", tmp_path / "o", "--quiet"], "larger than the image")
    # BEFORE equal to AFTER
    cube = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", cube)
    np.save(tmp_path / "lab.npy", np.eye(8, dtype=np.uint8))
    refused(["change", tmp_path / "a.npy", tmp_path / "a.npy", "--labels", tmp_path / "lab.npy",
             "--out", tmp_path / "c", "--config", "change-tiny", "--quiet"], "identical")
    # garbage / pickled .npy
    (tmp_path / "g.npy").write_bytes(b"garbage")
    msg = refused(seg(tmp_path, tmp_path / "o", video="g.npy", labels="../data/m.npy"), "not a valid .npy")
    np.save(tmp_path / "p.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    msg = refused(seg(tmp_path, tmp_path / "o", video="p.npy", labels="../data/m.npy"), "Python objects")
    assert "pickled" not in msg
    # every frame labelled: no "mIoU nan", no held-out scores
    out = tmp_path / "all"
    rc, err = run_cli(seg(data, out, "--label-frames", "0,1,2,3,4,5"))
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert "miou" not in metrics and metrics.get("scored_frames", []) == []
    # --label-frames=-1 is the last frame (documented)
    out = tmp_path / "neg"
    assert run_cli(seg(data, out, "--label-frames=0,-1"))[0] == 0
    assert json.loads((out / "metrics.json").read_text())["label_frames"] == [0, 5]


# ------------------------------------------------------------- 13. permissions
def test_13_outputs_get_the_usual_permissions(tmp_path):
    from fhcnn.atomic import atomic_save_npy, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_save_npy(tmp_path / "b.npy", np.zeros(2))
        os.umask(0o077)
        atomic_write_text(tmp_path / "c.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.npy").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "c.txt").stat().st_mode & 0o777 == 0o600


# =====================================================================================
# Issue 26: links, resume, record hashes, other commands' folders, locks; data read at its
# depth; one line for every crash and unbounded request. Each test fails on the code before.
# =====================================================================================
REPO = Path(__file__).resolve().parents[2]


def user_folder(root: Path, name: str = "mine") -> Path:
    """A folder of the user's own files (a mask, a checkpoint step, a normality report)."""
    u = root / name
    (u / "step-000002").mkdir(parents=True)
    (u / "00000.png").write_bytes(b"my mask")
    (u / "normality.png").write_bytes(b"my report")
    (u / "step-000002" / "manifest.json").write_text("my manifest")
    return u


def replace_by_link(path: Path, target: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    os.symlink(target.resolve(), path)


@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
@pytest.mark.parametrize("sub", ["masks", "checkpoints", "checkpoints/step-000002"])
def test_26_writes_never_follow_a_link_in_out(data, tmp_path, sub, flag):
    out = tmp_path / "run"
    assert run_cli(seg(data, out))[0] == 0
    mine = user_folder(tmp_path)
    replace_by_link(out / sub, mine)
    before, theirs = tree_hash(out), tree_hash(mine)
    refused(seg(data, out, flag), "is a link")
    assert tree_hash(mine) == theirs and tree_hash(out) == before


def test_26_vae_normality_never_writes_through_a_link(vae_run, tmp_path):
    run = tmp_path / "vrun"
    shutil.copytree(vae_run, run, symlinks=True)
    mine = user_folder(tmp_path)
    os.symlink(mine.resolve(), run / "normality")
    theirs = tree_hash(mine)
    for extra in ([], ["--overwrite"]):
        refused(["vae", "normality", "--checkpoint", run, "--n", "8", *extra], "link")
    assert tree_hash(mine) == theirs


def test_26_resume_refuses_a_users_file_after_a_kill(data, tmp_path):
    """A run killed after its first checkpoint; the user puts their own prediction.npy in OUT;
    --resume must refuse (the "not written by fhcnn" check runs on resume too)."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "fhcnn", *map(str, seg(data, out, "--set", "train.steps=400",
                                                          "--set", "train.checkpoint_every=1"))]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list(out.glob("checkpoints/step-*/manifest.json")) and time.time() < deadline:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "prediction.npy").exists()
    np.save(out / "prediction.npy", np.arange(7))
    theirs = (out / "prediction.npy").read_bytes()
    refused(seg(data, out, "--resume", "--set", "train.steps=400", "--set", "train.checkpoint_every=1"),
            "not written by fhcnn")
    assert (out / "prediction.npy").read_bytes() == theirs


def test_26_every_check_comes_before_the_first_deletion(data, tmp_path):
    out = tmp_path / "run"
    assert run_cli(seg(data, out))[0] == 0
    shutil.copytree(out / "checkpoints" / "step-000002", out / "checkpoints" / "step-000009")
    before = tree_hash(out)
    refused(seg(data, out, "--overwrite"), "checkpoint of another run")
    assert tree_hash(out) == before  # prediction, masks and model are still there


def test_26_overwrite_keeps_hand_edited_outputs_and_listed_foreign_files(data, tmp_path):
    out = tmp_path / "run"
    assert run_cli(seg(data, out))[0] == 0
    # a hand-corrected output under its recorded name: never replaced, the run is refused
    np.save(out / "prediction.npy", np.zeros((6, 16, 24), np.uint8))
    corrected = (out / "prediction.npy").read_bytes()
    before = tree_hash(out)
    refused(seg(data, out, "--overwrite"), "changed after fhcnn wrote it")
    assert tree_hash(out) == before
    (out / "prediction.npy").unlink()
    # a file of the user's listed in run.json (by hand, or by a damaged record): kept, one line
    (out / "notes.txt").write_text("mine")
    marker = json.loads((out / "run.json").read_text())
    marker["files"].append("notes.txt")
    (out / "run.json").write_text(json.dumps(marker))
    rc, err = run_cli(seg(data, out, "--overwrite"))
    assert rc == 0 and len(err) == 1 and "kept 1 file" in err[0] and "notes.txt" in err[0], err
    assert (out / "notes.txt").read_text() == "mine" and corrected != (out / "prediction.npy").read_bytes()
    marker = json.loads((out / "run.json").read_text())
    assert "notes.txt" not in marker["files"]
    assert marker["written"]["prediction.npy"]["sha256"] == hashlib.sha256(
        (out / "prediction.npy").read_bytes()).hexdigest()


def _fake_bench(monkeypatch, name: str) -> None:
    """Replace benchmark ``name`` by one that writes its two files at once (the folder logic of
    ``fhcnn bench`` is what is tested, not the measurement)."""
    from fhcnn.bench import _common, load

    mod = load(name)

    def run(out_dir, quick=False, device="cpu", tick=None):
        _common.write_json(Path(out_dir) / f"{mod.NAME}.json", {"benchmark": mod.NAME})
        with __import__("fhcnn.atomic").atomic.atomic_path(Path(out_dir) / f"{mod.NAME}.png") as tmp:
            Image.new("L", (4, 4)).save(tmp, format="PNG")
        return {}

    monkeypatch.setattr(mod, "run", run)
    monkeypatch.setattr(mod, "work", lambda quick: 0)


def test_26_another_commands_run_folder_is_refused(data, vae_run, tmp_path, monkeypatch):
    for name in ("memory", "drift"):
        _fake_bench(monkeypatch, name)
    seg_out = tmp_path / "seg"
    assert run_cli(seg(data, seg_out))[0] == 0
    before = tree_hash(seg_out)
    refused(["bench", "drift", "--out", seg_out, "--overwrite", "--quiet"], "run of fhcnn segment")
    refused(["vae", "normality", "--checkpoint", vae_run, "--out", seg_out, "--overwrite", "--n", "8"],
            "run of fhcnn segment")
    assert tree_hash(seg_out) == before
    # bench drift --overwrite in a folder of bench memory results: memory's files stay
    res = tmp_path / "results"
    assert run_cli(["bench", "memory", "--out", res, "--quiet"])[0] == 0
    memory_files = tree_hash(res)
    assert run_cli(["bench", "drift", "--out", res, "--overwrite", "--quiet"])[0] == 0
    after = tree_hash(res)
    assert all(after[k] == v for k, v in memory_files.items() if k.startswith("memory"))
    refused(seg(data, res, "--overwrite"), "run of fhcnn bench")
    assert tree_hash(res) == after


def test_26_the_docs_bench_commands_work(tmp_path, monkeypatch):
    """docs/core.md: ``fhcnn bench time --out benchmarks/results --overwrite`` (on a copy)."""
    res = tmp_path / "results"
    shutil.copytree(REPO / "benchmarks" / "results", res)
    before = tree_hash(res)
    _fake_bench(monkeypatch, "time")
    assert run_cli(["bench", "time", "--out", res, "--overwrite", "--quiet"]) == (0, [])
    after = tree_hash(res)
    assert after["time.json"] != before["time.json"]
    assert {k: v for k, v in after.items() if not k.startswith(("time.", "run.json"))} == \
        {k: v for k, v in before.items() if not k.startswith(("time.", "run.json"))}


def test_26_two_runs_at_once_into_one_out(data, tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "fhcnn", *map(str, seg(data, out, "--set", "train.steps=100000"))]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists() and time.time() < deadline:
            assert proc.poll() is None
            time.sleep(0.05)
        msg = refused(seg(data, out, "--overwrite"), "in use by another fhcnn run")
        assert str(out) in msg
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_26_run_json_of_an_older_fhcnn_resumes_and_overwrites(data, tmp_path):
    """Design check (the format is new): a record with names only (format 1) resumes, gets
    hashes on the way, and --overwrite removes its listed files."""
    out = tmp_path / "run"
    assert run_cli(seg(data, out))[0] == 0
    marker = json.loads((out / "run.json").read_text())
    for key in ("format", "written", "dirs"):
        marker.pop(key)
    (out / "run.json").write_text(json.dumps(marker))
    assert run_cli(seg(data, out, "--resume"))[0] == 0
    marker = json.loads((out / "run.json").read_text())
    assert marker["format"] == 2 and "prediction.npy" in marker["written"] and "masks" in marker["dirs"]
    marker.pop("written")
    marker.pop("dirs")
    (out / "run.json").write_text(json.dumps(marker))
    (out / "masks" / "mine.png").write_bytes(b"mine")
    assert run_cli(seg(data, out, "--overwrite"))[0] == 0
    assert (out / "masks" / "mine.png").read_bytes() == b"mine"


# ------------------------------------------------------------------ data read at its depth
def write_png(path: Path, a: np.ndarray, color_type: int) -> None:
    """A PNG of any bit depth and colour type, written by hand (Pillow cannot write 16-bit RGB):
    colour type 0 grey, 2 RGB, 4 grey + alpha, 6 RGBA."""
    a = np.asarray(a)
    h, w = a.shape[:2]
    depth = 16 if a.dtype == np.uint16 else 8
    raw = b"".join(b"\x00" + a[y].astype(">u2" if depth == 16 else "u1").tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("kind", ["rgb16", "la16"])
def test_26_16bit_colour_and_grey_alpha_frames_are_refused_naming_the_file(video, tmp_path, kind):
    v, m = video
    d = tmp_path / "frames"
    d.mkdir()
    for i, f in enumerate(v):
        a = (f.astype(np.uint16) * 200 + 1000)
        if kind == "rgb16":
            write_png(d / f"{i:05d}.png", a, 2)
        else:
            grey = a.mean(-1).astype(np.uint16)
            write_png(d / f"{i:05d}.png", np.stack([grey, np.full(grey.shape, 65535, np.uint16)], -1), 4)
    np.save(tmp_path / "m.npy", m)
    msg = refused(["segment", d, "--labels", tmp_path / "m.npy", "--out", tmp_path / "o", *TINY], "16-bit")
    assert "00000.png" in msg
    assert not (tmp_path / "o").exists()


def test_26_vae_reads_16bit_grey_pngs_at_their_depth(tmp_path):
    from fhcnn.data.images import load_image_folder

    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    raw = (20000 + 3000 * rng.random((6, 16, 16))).astype(np.uint16)
    for i, a in enumerate(raw):
        write_png(d / f"{i}.png", a, 0)
    images = load_image_folder(d)
    x = images.batch()
    np.testing.assert_allclose(x[:, 0].numpy(), raw / 65535.0, rtol=0, atol=1e-7)
    rc, err = run_cli(["vae", "train", "--dataset", "folder", d, "--config", "vae-tiny", "--out", tmp_path / "o",
                       "--quiet", "--set", "train.steps=2", "--set", "data.n_eval=2", "--set", "model.pre_levels=1"])
    assert rc == 0, err


def test_26_masks_mixing_palette_and_rgb_are_refused(data, video, tmp_path):
    from fhcnn.data.video import davis_palette

    _, m = video
    md = tmp_path / "masks"
    md.mkdir()
    pal = np.array(davis_palette(), np.uint8).reshape(256, 3)
    for i, mask in enumerate(m):
        if i % 2:  # the same object in its palette colour, saved as RGB
            Image.fromarray(pal[mask]).save(md / f"{i:05d}.png")
        else:
            im = Image.fromarray(mask, mode="P")
            im.putpalette(davis_palette())
            im.save(md / f"{i:05d}.png")
    msg = refused(["segment", data / "v.npy", "--labels", md, "--out", tmp_path / "o", *TINY], "mix")
    assert "00000.png" in msg and "00001.png" in msg
    assert not (tmp_path / "o").exists()


@pytest.fixture
def scene(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    d = tmp_path / "scene"
    d.mkdir()
    a = rng.random((12, 12, 3)).astype(np.float32)
    np.save(d / "a.npy", a)
    np.save(d / "b.npy", a + rng.random((12, 12, 3)).astype(np.float32))
    return d


def test_26_change_refuses_jpeg_masks(scene, tmp_path):
    mask = np.zeros((12, 12), np.uint8)
    mask[1:4, 1:4] = 255  # 9 changed pixels; JPEG spreads them over their 8x8 block
    Image.fromarray(mask).save(tmp_path / "changed.jpg", quality=70)
    Image.fromarray(mask).save(tmp_path / "jpeg_data.png", format="JPEG", quality=70)
    base = ["change", scene / "a.npy", scene / "b.npy", "--config", "change-tiny", "--quiet", "--out", tmp_path / "o"]
    refused([*base, "--changed", tmp_path / "changed.jpg"], "JPEG")
    Image.fromarray(mask).save(tmp_path / "ok.png")
    refused([*base, "--changed", tmp_path / "ok.png", "--unchanged", tmp_path / "changed.jpg"], "JPEG")
    refused([*base, "--changed", tmp_path / "jpeg_data.png"], "JPEG")
    refused([*base, "--labels", tmp_path / "changed.jpg"], "JPEG")
    assert not (tmp_path / "o").exists()


def test_26_envi_header_with_a_smaller_data_type_is_refused(tmp_path):
    from fhcnn.data.hyperspectral import read_cube, write_envi

    cube = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    header, _ = write_envi(tmp_path / "s", cube)
    header.write_text(header.read_text().replace("data type = 4", "data type = 1"))  # uint8
    with pytest.raises(InputError, match="4 bytes per value"):
        read_cube(header)


def test_26_resume_fingerprints_the_envi_raw_data(tmp_path):
    from fhcnn.data.hyperspectral import write_envi

    rng = np.random.default_rng(0)
    a = rng.random((10, 10, 3)).astype(np.float32)
    b = a + rng.random((10, 10, 3)).astype(np.float32)
    write_envi(tmp_path / "before", a)
    write_envi(tmp_path / "after", b)
    np.save(tmp_path / "lab.npy", np.eye(10, dtype=np.uint8))
    out = tmp_path / "o"
    argv = ["change", tmp_path / "before.hdr", tmp_path / "after.hdr", "--labels", tmp_path / "lab.npy",
            "--config", "change-tiny", "--quiet", "--set", "train.steps=2", "--out", out]
    assert run_cli(argv)[0] == 0
    write_envi(tmp_path / "before", a[::-1].copy())  # the same header, other raw data
    before = tree_hash(out)
    refused([*argv, "--resume"], "before")
    assert tree_hash(out) == before


def test_26_exif_rotated_frames_are_read_upright(video, tmp_path):
    from fhcnn.data.video import read_video

    v, _ = video
    d = tmp_path / "frames"
    d.mkdir()
    for i, f in enumerate(v):
        im = Image.fromarray(f)
        exif = im.getexif()
        exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
        im.save(d / f"{i:05d}.jpg", exif=exif, quality=95)
    frames, _ = read_video(d)
    assert frames.shape[1:3] == (v.shape[2], v.shape[1])  # H and W swapped: upright
    shown = np.rot90(v[0], k=-1)
    assert np.abs(frames[0].astype(int) - shown.astype(int)).mean() < 8


def test_26_negative_envi_offset_and_forged_run_json_are_one_line(tmp_path, data):
    from fhcnn.data.hyperspectral import write_envi

    cube = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    header, _ = write_envi(tmp_path / "s", cube)
    header.write_text(header.read_text().replace("header offset = 0", "header offset = -400"))
    np.save(tmp_path / "b.npy", cube + 1)
    np.save(tmp_path / "lab.npy", np.eye(8, dtype=np.uint8))
    refused(["change", header, tmp_path / "b.npy", "--labels", tmp_path / "lab.npy", "--config", "change-tiny",
             "--quiet", "--out", tmp_path / "c"], "header offset")
    assert not (tmp_path / "c").exists()
    out = tmp_path / "run"
    assert run_cli(seg(data, out))[0] == 0
    for forged in ({"tool": "segment", "files": [1, 2]}, {"tool": 7, "files": []},
                   {"tool": "segment", "files": [], "inputs": {"video": 3}}, ["segment"]):
        (out / "run.json").write_text(json.dumps(forged))
        before = tree_hash(out)
        for flag in ("--overwrite", "--resume"):
            refused(seg(data, out, flag), "damaged")
        assert tree_hash(out) == before


@pytest.mark.parametrize("case", ["loop", "long", "empty"])
def test_26_unusable_out_names_are_one_line(data, tmp_path, monkeypatch, case):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    if case == "loop":
        os.symlink("loop", cwd / "loop")
        out = "loop"
    else:
        out = "x" * 300 if case == "long" else ""
    refused(seg(data, out), {"loop": "loop", "long": "300 bytes", "empty": "empty"}[case])
    assert sorted(p.name for p in cwd.iterdir()) == (["loop"] if case == "loop" else [])


_DRIVER = """
import io, json, sys
from contextlib import redirect_stderr
from fhcnn.cli import main
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with redirect_stderr(err):
        rc = main(argv)
    print(json.dumps([rc, err.getvalue().strip().splitlines()]), flush=True)
"""


def _in_a_child(cases: list[list[object]], timeout: float = 240) -> list[tuple[int, list[str]]]:
    """Run ``fhcnn`` on each argv in one child process with a 16 GiB address-space limit and a
    timeout: a request that would crash the process, exhaust memory or run for hours fails
    quickly instead. Returns ``(exit code, stderr lines)`` per case (``-1``: it never finished)."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))

    argvs = [[str(a) for a in argv] for argv in cases]
    try:
        p = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(argvs)], capture_output=True,
                           text=True, timeout=timeout, preexec_fn=limit)
        lines = p.stdout.splitlines()
    except subprocess.TimeoutExpired as e:
        lines = (e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or "").splitlines()
    done = [tuple(json.loads(x)) for x in lines if x.startswith("[")]
    return done + [(-1, ["did not finish"])] * (len(cases) - len(done))  # type: ignore[misc]


def test_26_absurd_requests_are_refused_before_out_exists(data, vae_run, tmp_path):
    """Each is one line naming the limit, before OUT exists: a thread count that segfaulted,
    sizes that exhaust memory (naming the available RAM), steps that take years."""
    out = tmp_path / "o"
    vae = ["vae", "train", "--dataset", "digits", "--config", "vae-tiny", "--out", out, "--quiet"]
    cases = {
        "train.threads=100000": seg(data, out, "--set", "train.threads=100000"),
        "data.batch_size": seg(data, out, "--config", "video", "--set", "data.batch_size=100000"),
        "window_depth/height/width": seg(data, out, "--config", "video", "--set", "data.window_height=100000",
                                         "--set", "data.window_width=100000"),
        "years": seg(data, out, "--set", "train.steps=1000000000000"),
        "100000x100000": [*vae, "--resize", "100000"],
        "--steps": ["vae", "interpolate", "--checkpoint", vae_run, "--a", "0", "--b", "1", "--steps",
                    "100000000", "--out", tmp_path / "i.png"],
    }
    results = _in_a_child(list(cases.values()))
    for (message, argv), (rc, err) in zip(cases.items(), results):
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], (argv, err)
        if message not in ("train.threads=100000", "years"):
            assert "available RAM" in err[0], err
    assert not out.exists() and not (tmp_path / "i.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "--threads", "-5"], "--threads"),                       # was a traceback
    (["train", "--limit", "-1"], "--limit must be >= 1"),              # was "all but one"
    (["interpolate", "--a", "0", "--b", "1", "--steps", "1e8"], "--steps"),
    (["sample", "--sigma", "nan"], "--sigma"),                         # was a blank image
])
def test_26_vae_bad_options_are_one_line(vae_run, tmp_path, argv, message):
    out = tmp_path / "o"
    if argv[0] == "train":
        argv = [*argv, "--dataset", "digits", "--config", "vae-tiny", "--out", out, "--quiet",
                "--set", "train.steps=2"]
    else:
        argv = [*argv, "--checkpoint", vae_run, "--out", out]
    refused(["vae", *argv], message)
    assert not out.exists()


def test_26_demo_steps_0_is_refused(tmp_path):
    refused(["demo", "--steps", "0", "--config", "video-tiny", "--frames", "4", "--size", "8x8", "--quiet",
             "--out", tmp_path / "demo"], "--steps")
    assert not (tmp_path / "demo").exists()


def test_26_commands_without_resume_are_never_told_to_use_it(vae_run, tmp_path, monkeypatch):
    _fake_bench(monkeypatch, "memory")
    res = tmp_path / "results"
    assert run_cli(["bench", "memory", "--out", res, "--quiet"])[0] == 0
    assert "--resume" not in refused(["bench", "memory", "--out", res, "--quiet"], "--overwrite")
    norm = tmp_path / "norm"
    assert run_cli(["vae", "normality", "--checkpoint", vae_run, "--out", norm, "--n", "8"])[0] == 0
    assert "--resume" not in refused(["vae", "normality", "--checkpoint", vae_run, "--out", norm, "--n", "8"],
                                     "--overwrite")


def test_26_one_thread_key_for_every_command():
    from fhcnn.apps.vae import VAEConfig
    from fhcnn.config import load_config

    assert load_config(VAEConfig, "vae-digits").train.threads == 1
    assert load_config(VAEConfig, "vae-digits", ["threads=1", "train.threads=null"]).train.threads == 1
    assert load_config(VAEConfig, "vae-digits", ["train.threads=0"]).train.threads == 0
    with pytest.raises(ValueError, match="train.threads"):
        load_config(VAEConfig, "vae-digits", ["threads=1", "train.threads=2"])


def test_26_resume_is_not_refused_when_only_the_threads_change(data, tmp_path):
    out = tmp_path / "run"
    assert run_cli(seg(data, out, "--set", "train.threads=1"))[0] == 0
    rc, err = run_cli(seg(data, out, "--resume", "--set", "train.threads=2"))
    assert rc == 0, err


@pytest.mark.parametrize("layout", ["file", "folder"])
def test_processes_compare_their_inputs_by_content_not_by_modification_time(tmp_path, monkeypatch, layout):
    """Under torchrun every process's inputs are compared with rank 0's. They were compared by
    fingerprint, which for a file over HASH_LIMIT is its size and modification time: identical
    copies of a large input on each machine's own disk (written at other times) were refused as
    other contents. Where the fingerprints differ the processes compare what the files hold: the
    copies are accepted, a copy with one byte changed (anywhere: a stale copy of labels annotated
    further) is refused on both processes. Two threads stand for the two processes."""
    import threading

    import fhcnn.rundir as rundir
    import fhcnn.rundir.identity as identity
    import fhcnn.training.distributed as distributed

    monkeypatch.setattr(identity, "HASH_LIMIT", 2**20)  # "large" from 1 MiB, to keep the test small
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    meeting, slots, me = threading.Barrier(2, timeout=30), [None, None], threading.local()

    def gather(obj):  # all_gather_objects of a group of the two threads
        slots[me.rank] = obj
        meeting.wait()
        got = list(slots)
        meeting.wait()
        return got

    monkeypatch.setattr(distributed, "all_gather_objects", gather)
    data = np.random.default_rng(0).integers(0, 255, 3 * 2**20, dtype=np.uint8).tobytes()

    def write(root: Path, blob: bytes, mtime: int) -> Path:
        path = root / "frames" if layout == "folder" else root / "lab.raw"
        files = [path / f"{i}.raw" for i in range(3)] if layout == "folder" else [path]
        for i, f in enumerate(files):
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(blob[i * 2**20:(i + 1) * 2**20] if layout == "folder" else blob)
            os.utime(f, ns=(mtime, mtime))
        return path

    def run(paths: list[Path]) -> list[object]:
        results: list[object] = [None, None]

        def process(rank: int) -> None:
            me.rank = rank
            try:
                results[rank] = rundir.same_inputs_everywhere({"labels": paths[rank]})
            except InputError as e:
                results[rank] = e

        threads = [threading.Thread(target=process, args=(r,)) for r in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    mine = write(tmp_path / "node0", data, 10**18)
    copy = write(tmp_path / "node1", data, 2 * 10**18)  # another disk, copied later
    assert rundir.fingerprint(mine) != rundir.fingerprint(copy)
    got = run([mine, copy])
    assert [r["labels"]["fingerprint"] for r in got] == [rundir.fingerprint(mine), rundir.fingerprint(copy)]

    changed = bytearray(data)
    changed[2**20 + 12345] ^= 1  # one byte in the middle
    got = run([mine, write(tmp_path / "node2", bytes(changed), 3 * 10**18)])
    assert all(isinstance(r, InputError) and "rank 1 of 2 reads other contents" in str(r) for r in got), got


def test_5_antialiased_masks_are_refused_before_out(data, tmp_path):
    """Grey masks with antialiased edges (a 0/255 disc resized smoothly): one line, exit 2,
    before OUT exists (they trained 76 classes without the object, exit 0)."""
    md = tmp_path / "aa"
    md.mkdir()
    yy, xx = np.mgrid[:64, :96]
    disc = (np.hypot(yy - 32, xx - 48) < 20).astype(np.uint8) * 255
    for i in range(2):
        Image.fromarray(disc).resize((48, 32), Image.Resampling.BILINEAR).resize((24, 16), Image.Resampling.BILINEAR) \
            .save(md / f"{i:05d}.png")
    refused(["segment", data / "v.npy", "--labels", md, "--out", tmp_path / "o", *TINY], "antialiased")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------- 27. an input changed while the run reads it
def _change_after(monkeypatch, target: str, path: Path) -> None:
    """Patch ``target`` (``module:Class.method`` or ``module:function``) to flip one value of
    the ``.npy`` (or one pixel of the image file) ``path`` right after it returns."""
    import importlib

    mod_name, attr = target.split(":")
    owner: object = importlib.import_module(mod_name)
    *outer, name = attr.split(".")
    for part in outer:
        owner = getattr(owner, part)
    original = getattr(owner, name)

    def change() -> None:
        if path.suffix == ".npy":
            a = np.load(path)
            a.flat[0] = (int(a.flat[0]) + 1) % 2
            np.save(path, a)
        else:
            im = np.asarray(Image.open(path)).copy()
            im[0, 0] = 255 - im[0, 0]
            Image.fromarray(im).save(path)

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        change()
        return out

    monkeypatch.setattr(owner, name, wrapped)


@pytest.mark.parametrize("which, when, target", [
    ("m.npy", "during training", "fhcnn.training.trainer:Trainer.fit"),
    ("v.npy", "during the prediction", "fhcnn.engine.run:predict"),
])
def test_27_an_input_changed_while_the_run_reads_it_stops_the_run(data, tmp_path, monkeypatch, which, when, target):
    """The labels rewritten while the network trains, or the video while it is predicted (both
    memory-mapped, read by window through the whole run): the run trained or predicted on a mix
    of the old and new contents, recorded as the run of the old ones, exit 0. It stops with one
    line naming the input, exit 1."""
    out = tmp_path / "o"
    _change_after(monkeypatch, target, data / which)
    rc, err = run_cli(seg(data, out))
    assert rc == 1, err
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {'labels' if which == 'm.npy' else 'video'} {data / which} changed {when} "
                             f"(its contents differ from those recorded when the run started)"), err
    assert "--overwrite" in err[0]
    assert not (out / "prediction.npy").exists()  # stopped before the prediction is written


def test_27_an_input_the_run_copied_may_change_afterwards(tmp_path, monkeypatch, video):
    """Frames decoded one by one are copied into the run folder and read from there: a frame
    file changed during training changes nothing the run reads, and the run ends as usual."""
    v, m = video
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(v):
        Image.fromarray(f).save(frames / f"{i:05d}.png")
    np.save(tmp_path / "m.npy", m)
    _change_after(monkeypatch, "fhcnn.training.trainer:Trainer.fit", frames / "00000.png")
    rc, err = run_cli(["segment", frames, "--labels", tmp_path / "m.npy", "--out", tmp_path / "o", *TINY])
    assert rc == 0, err


# ------------------------------------- 28. --resume from an identical copy of a large input
def test_28_resume_accepts_an_identical_copy_of_a_large_input(data, tmp_path, monkeypatch):
    """Inputs over HASH_LIMIT are fingerprinted by size and modification time: ``--resume`` from
    a copy of them (made later, e.g. on another machine's disk, or at another path) was refused
    as "changed since the run", though nothing had. The run records their contents (sha256, read
    whole once), and ``--resume`` reads a copy whose fingerprint differs and accepts it when its
    contents are the recorded ones; a copy with one byte changed (same size) is refused."""
    import shutil

    from fhcnn import rundir
    from fhcnn.rundir import identity

    monkeypatch.setattr(identity, "HASH_LIMIT", 1024)  # every input of the tiny run is "large"
    out = tmp_path / "o"
    assert run_cli(seg(data, out, "--set", "train.steps=4", "--set", "train.checkpoint_every=2"))[0] == 0
    marker = json.loads((out / "run.json").read_text())
    assert marker["inputs"]["video"]["fingerprint"].split(":")[1] == "mtime"
    assert marker["inputs"]["video"]["content"] == [rundir.content_digest(data / "v.npy")]
    copies = tmp_path / "node2"
    copies.mkdir()
    for name in ("v.npy", "m.npy"):
        shutil.copyfile(data / name, copies / name)  # new files: other mtimes
        os.utime(copies / name, ns=(10**18, 10**18))
    assert rundir.fingerprint(copies / "v.npy") != marker["inputs"]["video"]["fingerprint"]
    rc, err = run_cli(seg(copies, out, "--set", "train.steps=4", "--set", "train.checkpoint_every=2", "--resume"))
    assert rc == 0, err
    resumed = json.loads((out / "run.json").read_text())["inputs"]["video"]
    assert resumed["path"] == str(copies / "v.npy") and resumed["content"] == marker["inputs"]["video"]["content"]
    a = bytearray((copies / "m.npy").read_bytes())
    a[-1] ^= 1  # one label of the last frame
    (copies / "m.npy").write_bytes(bytes(a))
    line = refused(seg(copies, out, "--set", "train.steps=4", "--set", "train.checkpoint_every=2", "--resume"),
                   "--resume")
    assert f"labels ({copies / 'm.npy'}) changed since the run" in line, line


def test_27_a_large_input_touched_during_the_run_is_compared_by_its_contents(data, tmp_path, monkeypatch):
    """An input over HASH_LIMIT is fingerprinted by size and mtime: touched during training (or
    saved again unchanged by the tool that holds it open) it stopped the run as changed. Its
    contents, recorded when the run started, are compared: the same, the run ends as usual and
    run.json records the new fingerprint; one label changed, the run stops."""
    import fhcnn.rundir.identity as identity

    monkeypatch.setattr(identity, "HASH_LIMIT", 1024)  # every input of the tiny run is "large"
    import fhcnn.training.trainer as trainer

    fit = trainer.Trainer.fit
    touch = {"change": False, "n": 0}

    def touched(self, *args, **kwargs):
        out = fit(self, *args, **kwargs)
        labels = data / "m.npy"
        if touch["change"]:
            a = np.load(labels)
            a.flat[0] = 1 - a.flat[0]
            np.save(labels, a)
        touch["n"] += 1
        os.utime(labels, ns=(10**18 + touch["n"],) * 2)  # another mtime, whatever the contents
        return out

    monkeypatch.setattr(trainer.Trainer, "fit", touched)
    rc, err = run_cli(seg(data, tmp_path / "same"))
    assert rc == 0, err
    assert json.loads((tmp_path / "same" / "run.json").read_text())["inputs"]["labels"]["fingerprint"] \
        == identity.fingerprint(data / "m.npy")
    touch["change"] = True
    rc, err = run_cli(seg(data, tmp_path / "other"))
    assert rc == 1 and err[0].startswith(f"error: labels {data / 'm.npy'} changed during training"), err


def test_27_files_a_file_browser_writes_into_an_input_folder_change_nothing(data, video, tmp_path, monkeypatch):
    """A desktop shows the masks folder while the run trains and writes its own files there
    (Finder's .DS_Store and ._ files, Windows' Thumbs.db): the folder's fingerprint took them in,
    so the run stopped as 'changed' and --resume was refused. They are left out; a mask file
    added among them still counts."""
    from fhcnn.data.video import write_mask_png

    _, m = video
    md = tmp_path / "masks"
    md.mkdir()
    for i, mask in enumerate(m[:3]):
        write_mask_png(md / f"{i:05d}.png", mask)
    import fhcnn.training.trainer as trainer

    fit = trainer.Trainer.fit
    extra = {"names": [".DS_Store", "Thumbs.db"]}

    def browsed(self, *args, **kwargs):
        out = fit(self, *args, **kwargs)
        for name in extra["names"]:
            (md / name).write_bytes(b"\0\1junk")
        return out

    monkeypatch.setattr(trainer.Trainer, "fit", browsed)
    out = tmp_path / "o"
    rc, err = run_cli(seg(data, out, labels=str(md)))
    assert rc == 0, err
    (md / "._00000.png").write_bytes(b"AppleDouble")
    extra["names"] = []
    rc, err = run_cli(seg(data, out, "--resume", labels=str(md)))
    assert rc == 0, err
    write_mask_png(md / "00003.png", m[3])  # a mask of one more frame: other labels
    refused(seg(data, out, "--resume", labels=str(md)), f"labels ({md}) changed since the run")
