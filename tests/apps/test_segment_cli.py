"""``fhcnn segment`` end to end on tiny generated videos, bad inputs, and (if present) DAVIS."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fhcnn.cli import main
from fhcnn.data.video import generate_video
from tests.conftest import write_video_files

TINY = ["--config", "video-tiny", "--quiet"]


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    root = tmp_path_factory.mktemp("segcli")
    video, masks = generate_video(root / "davis", frames=6, height=16, width=24, objects=2, seed=5)
    return root, video, masks


def _check_outputs(out, t, h, w, eval_=True):
    pred = np.load(out / "prediction.npy")
    assert pred.shape == (t, h, w) and pred.dtype == np.uint8
    pngs = sorted((out / "masks").glob("*.png"))
    assert len(pngs) == t and Image.open(pngs[0]).mode == "P"
    np.testing.assert_array_equal(np.asarray(Image.open(pngs[-1])), pred[-1])
    for name in ("overlay.gif", "labelled_frames.png", "training_curves.png", "config.yaml",
                 "model.safetensors", "metrics.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    if eval_:
        assert 0 <= m["miou"] <= 1 and "per_frame_miou" in m and "copy_nearest_baseline" in m
    return m


def test_void_pixels_in_a_label_frame(tmp_path):
    """A void (255) area in a label frame: the run finishes and the copy baseline is scored
    (it copied the 255s as predictions and the run stopped after training)."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "v.npy", (rng.random((6, 16, 16, 3)) * 255).astype(np.uint8))
    m = np.zeros((6, 16, 16), np.uint8)
    m[:, 4:10, 4:10] = 1
    m[0, :3, :3] = 255
    np.save(tmp_path / "m.npy", m)
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "v.npy"), "--labels", str(tmp_path / "m.npy"), "--out", str(out)]
                + TINY) == 0
    assert _check_outputs(out, 6, 16, 16)["copy_nearest_baseline"]["miou"] > 0.9


def test_float64_frames_far_from_zero_segment_as_near_zero(tmp_path, capsys):
    """Float64 frames 1e9 + x are read standardized in float64 (the engine's prepare): the
    prediction equals that of x (a float32 read steps by 64 at 1e9: the object was lost).
    Values past 1e150, whose statistics overflow float64, are one line before OUT exists."""
    rng = np.random.default_rng(1)
    m = np.zeros((8, 16, 16), np.uint8)
    m[:, 4:10, 4:10] = 1
    v = rng.random((8, 16, 16, 3)) * 0.2 + 0.5 * m[..., None]
    np.save(tmp_path / "m.npy", m)
    preds = []
    for name, x in (("clean", v), ("offset", v + 1e9)):
        np.save(tmp_path / f"{name}.npy", x)
        out = tmp_path / name
        assert main(["segment", str(tmp_path / f"{name}.npy"), "--labels", str(tmp_path / "m.npy"), "--out",
                     str(out), *TINY, "--set", "train.steps=20"]) == 0
        preds.append(np.load(out / "prediction.npy"))
    np.testing.assert_array_equal(preds[0], preds[1])
    np.save(tmp_path / "huge.npy", v * 1e300)
    capsys.readouterr()
    assert main(["segment", str(tmp_path / "huge.npy"), "--labels", str(tmp_path / "m.npy"), "--out",
                 str(tmp_path / "huge"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "overflow float64" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "huge").exists()


def test_davis_layout_end_to_end(gen, tmp_path):
    root, video, masks = gen
    out = tmp_path / "out"
    ann = root / "davis" / "Annotations" / "480p" / "synthetic"
    rc = main(["segment", str(root / "davis"), "--labels", str(ann), "--label-frames", "0,5",
               "--eval-labels", str(ann), "--out", str(out), "--scale", "1.5"] + TINY)
    assert rc == 0
    m = _check_outputs(out, 6, 16, 24)
    assert m["label_frames"] == [0, 5] and m["scored_frames"] == [1, 2, 3, 4]
    assert m["volume_size"] == [6, 24, 36] and m["classes"] == [0, 1, 2]
    assert len(m["iou"]) == 3 and len(m["per_frame_miou"]) == 6 and m["per_frame_miou"][0] is None
    # the score in metrics.json is the score of prediction.npy on the held-out frames
    from fhcnn.engine import segmentation_metrics
    truth = masks.copy()
    truth[[0, 5]] = 255
    assert segmentation_metrics(np.load(out / "prediction.npy"), truth, 3)["miou"] == pytest.approx(m["miou"])


def test_frames_wider_than_a_prediction_chunk(tmp_path):
    """Frames wider than a prediction chunk (64 voxels) at full scale: the prediction is written
    chunk by chunk into the frames' own size (the demo's 64x96 frames)."""
    video, masks = generate_video(None, frames=4, height=8, width=80, objects=1, seed=1)
    np.save(tmp_path / "video.npy", video)
    np.save(tmp_path / "masks.npy", masks)
    out = tmp_path / "out"
    rc = main(["segment", str(tmp_path / "video.npy"), "--labels", str(tmp_path / "masks.npy"),
               "--label-frames", "0,3", "--out", str(out)] + TINY)
    assert rc == 0
    _check_outputs(out, 4, 8, 80)


def test_png_folder_partial_masks_gif_and_npy(gen, tmp_path):
    _, video, masks = gen
    fdir, mdir = tmp_path / "frames", tmp_path / "masks"
    fdir.mkdir()
    mdir.mkdir()
    for i, f in enumerate(video):
        Image.fromarray(f).save(fdir / f"frame_{i}.png")
    for i in (0, 2, 5):  # only the labelled frames, binary 0/255 masks
        Image.fromarray(((masks[i] > 0) * 255).astype(np.uint8)).save(mdir / f"frame_{i}.png")
    out = tmp_path / "o1"
    assert main(["segment", str(fdir), "--labels", str(mdir), "--out", str(out)] + TINY) == 0
    m = _check_outputs(out, 6, 16, 24, eval_=False)
    assert m["label_frames"] == [0, 2, 5] and m["classes"] == [0, 255]

    ims = [Image.fromarray(f) for f in video]
    ims[0].save(tmp_path / "v.gif", save_all=True, append_images=ims[1:])
    np.save(tmp_path / "m.npy", masks)
    out = tmp_path / "o2"
    assert main(["segment", str(tmp_path / "v.gif"), "--labels", str(tmp_path / "m.npy"),
                 "--out", str(out), "--set", "model.arch=unet", "--set", "model.unet_base=4",
                 "--set", "model.unet_levels=1"] + TINY) == 0
    m = _check_outputs(out, 6, 16, 24)  # default label frames 0, 2, 5; others scored from --labels
    assert m["label_frames"] == [0, 2, 5] and m["arch"] == "unet"

    np.save(tmp_path / "v.npy", video)
    out = tmp_path / "o3"
    assert main(["segment", str(tmp_path / "v.npy"), "--labels", str(tmp_path / "m.npy"),
                 "--label-frames", "1,-1", "--out", str(out)] + TINY) == 0
    assert json.loads((out / "metrics.json").read_text())["label_frames"] == [1, 5]


def test_resume_reads_the_copy_of_decoded_frames_again(gen, tmp_path, capsys):
    """``--resume`` of a run on a folder of frames reads ``OUT/inputs/video.zarr`` again (no file
    rewritten) instead of decoding the frames again, and predicts the same."""
    _, video, masks = gen
    fdir, _, _ = write_video_files(tmp_path, video)
    np.save(tmp_path / "m.npy", masks)
    out = tmp_path / "out"
    args = ["segment", str(fdir), "--labels", str(tmp_path / "m.npy"), "--out", str(out), "--label-frames", "0,5",
            "--set", "train.checkpoint_every=1"] + TINY[:2]
    assert main(args) == 0
    first = np.load(out / "prediction.npy")
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "inputs").rglob("*") if p.is_file()}
    assert any("video.zarr" in str(p) for p in stamps)
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    assert "is read again" in capsys.readouterr().err
    assert stamps == {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "inputs").rglob("*") if p.is_file()}
    np.testing.assert_array_equal(np.load(out / "prediction.npy"), first)


def test_frames_decoded_one_by_one_are_read_from_one_chunked_copy(gen, tmp_path):
    """A folder of frames and a GIF (decoded frame by frame) are copied once into
    ``OUT/inputs/video.zarr`` (recorded in run.json) and the run reads its windows from the copy;
    a ``.npy`` video is read through a memory map (no copy). At full size and at ``--scale 1.5``
    (every frame resized as it is read) the folder and the GIF predict exactly what the same
    frames given as ``.npy`` predict, and the memory-mapped frames what the frames held in
    memory predict."""
    from fhcnn.apps.segment import SegmentConfig, segment_video
    from fhcnn.apps.segment.inputs import load_video_inputs
    from fhcnn.config import load_config

    _, video, masks = gen
    fdir, _, _ = write_video_files(tmp_path, video)
    np.save(tmp_path / "g.npy", np.stack([np.asarray(fr.convert("RGB")) for fr in _gif_frames(tmp_path / "v.gif")]))
    np.save(tmp_path / "m.npy", masks)
    for scale in ("1", "1.5"):
        preds = {}
        for name in ("frames", "v.npy", "v.gif", "g.npy"):
            out = tmp_path / f"out-{name}-{scale}"
            assert main(["segment", str(tmp_path / name), "--labels", str(tmp_path / "m.npy"), "--out", str(out),
                         "--label-frames", "0,5", "--scale", scale] + TINY) == 0
            preds[name] = (np.load(out / "prediction.npy"), json.loads((out / "metrics.json").read_text())["miou"])
            record = json.loads((out / "run.json").read_text())
            copied = any(f.startswith("inputs/video.zarr/") for f in record["files"])
            assert copied == name.endswith(("frames", ".gif")) and (out / "inputs" / "video.zarr").is_dir() == copied
        for copy_, same in (("frames", "v.npy"), ("v.gif", "g.npy")):
            np.testing.assert_array_equal(preds[copy_][0], preds[same][0])
            assert preds[copy_][1] == preds[same][1]
    cfg = load_config(SegmentConfig, "video-tiny", ["data.scale=1.5"])
    runs = []
    for in_memory in (False, True):
        inputs = load_video_inputs(tmp_path / "v.npy", tmp_path / "m.npy", "0,5")
        assert in_memory or type(inputs.frames.source).__name__ == "Unmapped"
        if in_memory:
            inputs.frames = video
        runs.append(segment_video(inputs, cfg, None, quiet=True))
    np.testing.assert_array_equal(runs[0]["prediction"], runs[1]["prediction"])
    assert runs[0]["miou"] == runs[1]["miou"]


def _gif_frames(path):
    from PIL import ImageSequence

    with Image.open(path) as im:
        return [fr.copy() for fr in ImageSequence.Iterator(im)]


@pytest.fixture
def inputs(gen, tmp_path):
    _, video, masks = gen
    np.save(tmp_path / "v.npy", video)
    np.save(tmp_path / "m.npy", masks)
    return tmp_path


@pytest.mark.parametrize("case, message", [
    ("mask_size", "size"),
    ("frame_range", "out of range"),
    ("no_foreground", "no foreground"),
    ("unreadable", "cannot read"),
    ("missing", "not found"),
    ("no_mask_for_frame", "no mask for label frame"),
    ("bad_set", "model.widht"),
    ("negative_mask", "negative value -1"),
    ("scale_leaves_one_class", "data.scale=0.01 (--scale) resizes the 16x24 (H x W) input to 1x1"),
    ("eval_extra_class", "ev.npy frame 00003 holds mask value 3, which no label frame (00000, 00002, 00005) of"),
    ("eval_binary_beside_objects", "hold mask values 0, 1, 2 but the masks of"),
    ("multipage_mask", "holds 2 images (pages or animation frames), of which only the first would be read"),
    ("copied_mask", "masks 00003 (1).png and 00003.png in"),
    ("other_frame_extra_class", "(frames not in --label-frames) frame 00003 holds mask value 3, which no label "
                                "frame (00000, 00005) of"),
])
def test_bad_inputs_clear_error_out_untouched(inputs, capsys, case, message):
    v, m = inputs / "v.npy", inputs / "m.npy"
    extra: list[str] = []
    if case == "mask_size":
        np.save(m, np.zeros((6, 8, 8), np.uint8))
    elif case == "frame_range":
        extra = ["--label-frames", "0,6"]
    elif case == "no_foreground":
        np.save(m, np.zeros((6, 16, 24), np.uint8))
    elif case == "unreadable":
        v = inputs / "v.gif"
        v.write_bytes(b"garbage")
    elif case == "missing":
        v = inputs / "nothing.npy"
    elif case == "no_mask_for_frame":
        mdir = inputs / "mk"
        mdir.mkdir()
        Image.fromarray(np.zeros((16, 24), np.uint8)).save(mdir / "00000.png")
        m = mdir
        extra = ["--label-frames", "0,3"]
    elif case == "bad_set":
        extra = ["--set", "model.widht=3"]
    elif case == "negative_mask":  # -1 meant as "unlabelled" would become a class of its own
        labels = np.load(m).astype(np.int16)
        labels[:, :2] = -1
        np.save(m, labels)
    elif case == "scale_leaves_one_class":  # the labels hold both classes; the resize leaves one
        extra = ["--scale", "0.01"]
    elif case.startswith("eval_"):  # scores over another class set than the label frames'
        ev = np.load(m)
        if case == "eval_extra_class":  # an object the network never learns: a class of IoU 0
            ev[3, :2, :2] = 3
        else:  # binary masks beside two objects: object 2's pixels scored as object 1
            ev = (ev > 0).astype(np.uint8)
        np.save(inputs / "ev.npy", ev)
        extra = ["--eval-labels", str(inputs / "ev.npy")]
    elif case == "multipage_mask":  # page 2 holds the object: reading page 1 alone lost it
        import tifffile

        mdir = inputs / "mk"
        mdir.mkdir()
        masks = np.load(m)
        for k in range(6):
            tifffile.imwrite(mdir / f"{k:05d}.tif", masks[k] * 0 if k else np.stack([masks[k] * 0, masks[k]]),
                             photometric="minisblack")
        m = mdir
    elif case == "copied_mask":  # '00003 (1).png' went by its last number: frame 1's mask (trained on)
        mdir = inputs / "mk"
        mdir.mkdir()
        masks = np.load(m)
        for k in (0, 3, 5):
            Image.fromarray(masks[k]).save(mdir / f"{k:05d}.png")
        Image.fromarray(masks[3]).save(mdir / "00003 (1).png")
        m = mdir
    elif case == "other_frame_extra_class":  # its pixels were left out of the score without a word
        labels = np.load(m)
        labels[3, :2, :2] = 3
        np.save(m, labels)
        extra = ["--label-frames", "0,5"]
    out = inputs / "out"
    rc = main(["segment", str(v), "--labels", str(m), "--out", str(out)] + extra + TINY)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def test_refuses_out_holding_a_run(inputs, capsys):
    out = inputs / "o"
    args = ["segment", str(inputs / "v.npy"), "--labels", str(inputs / "m.npy"), "--out", str(out)] + TINY
    assert main(args) == 0
    before = (out / "prediction.npy").read_bytes()
    assert main(args) == 2 and "already holds a run" in capsys.readouterr().err
    assert (out / "prediction.npy").read_bytes() == before


def test_davis_real_sequence(shared_data, tmp_path):
    seq = shared_data / "davis2016" / "DAVIS"
    if not (seq / "JPEGImages" / "480p" / "blackswan").is_dir():
        pytest.skip("DAVIS blackswan not present")
    # a short copy of the sequence keeps the test fast (the real data is never modified)
    for kind, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
        (tmp_path / kind).mkdir()
        for i in range(6):
            shutil.copy(seq / kind / "480p" / "blackswan" / f"{i:05d}.{ext}", tmp_path / kind)
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "JPEGImages"), "--labels", str(tmp_path / "Annotations"),
                 "--label-frames", "0,5", "--scale", "0.05", "--out", str(out)] + TINY) == 0
    m = _check_outputs(out, 6, 480, 854)
    assert m["classes"] == [0, 255] and m["volume_size"] == [6, 24, 43]
    assert 0.4 < m["copy_nearest_baseline"]["miou"] <= 1


def test_rgb_mask_classes_are_named_by_their_colours(tmp_path, capsys):
    """RGB masks: the log line and metrics.json's ``classes`` (the mask value of each class index
    of ``prediction.npy`` and ``masks/``) give each class's colour, not the internal colour code
    (``classes: 3 (mask values [0, 16777471, 33488896])`` told a user nothing)."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "v.npy", (rng.random((4, 16, 16, 3)) * 255).astype(np.uint8))
    md = tmp_path / "masks"
    md.mkdir()
    for t in range(4):
        rgb = np.zeros((16, 16, 3), np.uint8)
        rgb[2:6, 2:6] = (255, 0, 0)
        rgb[9:14, 8:13] = (0, 0, 255)
        Image.fromarray(rgb).save(md / f"{t:05d}.png")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["segment", str(tmp_path / "v.npy"), "--labels", str(md), "--label-frames", "0,3", "--out",
                 str(out), "--config", "video-tiny", "--set", "train.steps=2"]) == 0
    err = capsys.readouterr().err
    assert "classes: 3 (mask values 0, colour (0, 0, 255), colour (255, 0, 0)); training on frames [0, 3]" in err
    m = _check_outputs(out, 4, 16, 16)
    assert m["classes"] == [0, [0, 0, 255], [255, 0, 0]]


def test_a_bad_scale_is_named_as_typed(tmp_path, capsys):
    """``--scale 9`` was refused as 'error: --set data.scale=9.0: ...' (with ``--device cpu``:
    '--set data.scale=9.0 train.device=cpu'), options the user never typed; the line names the
    options as given, before OUT exists."""
    np.save(tmp_path / "v.npy", np.zeros((4, 16, 16, 3), np.uint8) + np.arange(16, dtype=np.uint8)[:, None, None])
    m = np.full((4, 16, 16), 255, np.uint8)
    m[0] = 0
    m[0, 4:8, 4:8] = 1
    np.save(tmp_path / "m.npy", m)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["segment", str(tmp_path / "v.npy"), "--labels", str(tmp_path / "m.npy"), "--out", str(out),
                 *TINY, "--set", "train.steps=2", "--scale", "9", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --set train.steps=2 --scale 9 --device cpu: config data: scale must be in (0, 4], " \
                  "got 9.0\n"
    assert not out.exists()


# Runs fhcnn (sys.argv[2:]) as a process of a torchrun launch, in the folder sys.argv[1] with
# {rank} replaced by the process's rank.
_IN_ITS_FOLDER = r"""
import os, sys
os.chdir(sys.argv[1].format(rank=os.environ["RANK"]))
from fhcnn.cli import main
from fhcnn.training.distributed import exit_program
exit_program(main(sys.argv[2:]))
"""


def test_processes_that_read_other_masks_are_refused_before_out_exists(gen, tmp_path):
    # under torchrun the masks named masks.npy were another file for rank 1 (its copy on another
    # machine, or replaced between the processes' reads): fhcnn segment joined its processes
    # only to train, after rank 0 alone had fingerprinted the inputs, and trained on both,
    # with exit code 0. Now they join before OUT exists, compare, and refuse in one line
    from fhcnn.training.distributed import launch_env
    from tests._launch import torchrun

    root, video, masks = gen
    np.save(tmp_path / "video.npy", video)
    for rank in (0, 1):
        (tmp_path / f"rank{rank}").mkdir()
        other = masks.copy()
        other[0, :4, :4] = rank  # rank 0: class 0 there, rank 1: class 1
        np.save(tmp_path / f"rank{rank}" / "masks.npy", other)
    (tmp_path / "launch.py").write_text(_IN_ITS_FOLDER)
    out, repo = tmp_path / "out", Path(__file__).parents[2]
    proc = torchrun(2, [str(tmp_path / "launch.py"), str(tmp_path / "rank{rank}"), "segment",
                        str(tmp_path / "video.npy"), "--labels", "masks.npy", "--out", str(out), *TINY,
                        "--device", "cpu", "--set", "data.batch_size=2"],
                    clean=lambda: shutil.rmtree(out, True), env=launch_env(pythonpath=[repo / "src", repo]),
                    done=lambda p: p.returncode == 0 or "reads other contents" in p.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: labels masks.npy: rank 1 of 2 reads other contents there than rank 0 (the file "
                      "changed between their reads, or the path names a copy with other contents on its "
                      "machine): every process of the run must read the same contents; give paths on a file "
                      "system they all share, or identical copies, unchanged while the run starts"], proc.stderr[-3000:]
    assert proc.returncode != 0 and not out.exists()
