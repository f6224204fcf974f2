"""``data.eval_every`` in every command: the held-out labels are scored every so many steps
(``"split": "val"`` lines of ``metrics.jsonl``, and the history), and the option without
anything to score is one line, exit 2, before OUT exists (every command line ignored it)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fhcnn.cli import main
from fhcnn.data.hyperspectral import make_bitemporal_scene
from fhcnn.data.video import generate_video
from tests.apps._volumes import write_tiny_volume

STEPS = ["--set", "train.steps=4", "--set", "data.eval_every=2"]


def _val_lines(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "val"]


def _refused(argv, out, capsys, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.eval_every=2" in err[0] and match in err[0], err
    assert not out.exists()


def test_volume(tmp_path, capsys):
    vol = write_tiny_volume(tmp_path)
    base = ["volume", str(vol / "c0.npy"), "--labels", str(vol / "lab.npy"), "--config", "volume-tiny",
            "--quiet", "--set", "volume.baselines=", *STEPS]
    out = tmp_path / "out"
    assert main([*base, "--eval-labels", str(vol / "truth.npy"), "--out", str(out)]) == 0
    val = _val_lines(out)
    assert [r["step"] for r in val] == [2, 4] and all(0 <= r["miou"] <= 1 for r in val)
    m = json.loads((out / "metrics.json").read_text())
    assert [r["step"] for r in m["history"] if "miou" in r] == [2, 4]
    # the last score during training is the score of the prediction (same model, same voxels)
    assert val[-1]["miou"] == pytest.approx(m["miou"], abs=1e-6)
    _refused([*base, "--out", str(tmp_path / "none")], tmp_path / "none", capsys, "--eval-labels")


def test_segment(tmp_path, capsys):
    generate_video(tmp_path / "davis", frames=6, height=16, width=24, objects=2, seed=5)
    ann = tmp_path / "davis" / "Annotations" / "480p" / "synthetic"
    base = ["segment", str(tmp_path / "davis"), "--labels", str(ann), "--label-frames", "0,5",
            "--config", "video-tiny", "--quiet", *STEPS]
    out = tmp_path / "out"
    assert main([*base, "--eval-labels", str(ann), "--out", str(out)]) == 0
    val = _val_lines(out)
    assert [r["step"] for r in val] == [2, 4] and all(0 <= r["miou"] <= 1 for r in val)
    m = json.loads((out / "metrics.json").read_text())
    assert [r["step"] for r in m["history"] if "miou" in r] == [2, 4]
    # masks of the label frames alone: nothing held out to score
    few = tmp_path / "few"
    few.mkdir()
    for name in ("00000.png", "00005.png"):
        shutil.copy(ann / name, few / name)
    base[3] = str(few)
    _refused([*base, "--out", str(tmp_path / "none")], tmp_path / "none", capsys, "--eval-labels")


def test_change(tmp_path, capsys):
    s = make_bitemporal_scene(20, 24, 6, seed=2, field_size=10)
    for name, a in (("before", s.before), ("after", s.after), ("truth", s.change)):
        np.save(tmp_path / f"{name}.npy", a)
    base = ["change", str(tmp_path / "before.npy"), str(tmp_path / "after.npy"), "--labels",
            str(tmp_path / "truth.npy"), "--config", "change-tiny", "--quiet", *STEPS]
    out = tmp_path / "out"
    assert main([*base, "--label-fraction", "0.2", "--out", str(out)]) == 0
    val = _val_lines(out)
    assert [r["step"] for r in val] == [2, 4] and all(0 <= r["miou"] <= 1 for r in val)
    m = json.loads((out / "metrics.json").read_text())
    scored = [r for r in m["history"] if "miou" in r]
    assert [(r["step"], r["miou"], r["iou_positive"]) for r in scored] == \
        [(r["step"], r["miou"], r["iou_positive"]) for r in val]
    assert [r["step"] for r in m["history"]] == [1, 2, 3, 4]
    # change-tiny predicts with one tiling, as the scoring during training: the same score
    assert val[-1]["miou"] == pytest.approx(m["miou"], abs=1e-6)
    _refused([*base, "--out", str(tmp_path / "none")], tmp_path / "none", capsys, "--label-fraction")
