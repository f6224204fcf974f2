"""Issue 13: a user's files are never lost, overwritten or silently misread.

One test (or more) per class of the issue; each fails on the code before the fix. Every
refusal is one ``error:`` line, exit code 2, and leaves the input files (and a refused OUT)
as they were.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fhcnn.cli import main
from fhcnn.data.video import generate_video, read_video

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
    text = tmp_path / "notes.txt"
    text.write_text("mine")
    ck = ["--checkpoint", vae_run]
    refused(["vae", "sample", *ck, "--n", "4", "--out", text], "exists")
    refused(["vae", "sample", *ck, "--n", "4", "--out", tmp_path / "s.png", "--npy", text], "exists")
    refused(["vae", "sample", *ck, "--n", "4", "--out", vae_run / "config.yaml", "--overwrite"],
            "inside the")
    refused(["vae", "sample", *ck, "--n", "4", "--out", tmp_path / "s.png", "--npy", vae_run / "metrics.json"],
            "inside the")
    refused(["vae", "interpolate", *ck, "--a", "0", "--b", "1", "--out", text], "exists")
    refused(["vae", "sample", *ck, "--n", "4", "--out", tmp_path / "x.png", "--npy", tmp_path / "x.png"],
            "same file")
    assert text.read_text() == "mine" and tree_hash(vae_run) == before
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
    ("video", "video"), ("labels", "labels"), ("config", "config"), ("model", "config"),
    ("label_frames", "label-frames"),
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
