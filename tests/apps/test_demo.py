"""``fhcnn demo`` on a tiny video (the full demo runs in a few minutes; this is a smoke run)."""

from __future__ import annotations

import json

from fhcnn.cli import main


def test_demo_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--frames", "6", "--size", "16x24", "--config", "video-tiny",
            "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "held-out mIoU" in text and "fully reversible" in text and "plain autograd" in text
    s = json.loads((out / "demo.json").read_text())
    assert 0 <= s["miou"] <= 1 and s["activation_bytes"]["fully reversible"] < s["activation_bytes"]["plain autograd"]
    for name in ("overlay.gif", "labelled_frames.png", "training_curves.png", "prediction.npy"):
        assert (out / "segmentation" / name).is_file()
    assert main(args) == 0  # a previous demo in the folder is replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("user data")
    assert main(["demo", "--out", str(tmp_path / "other"), "--frames", "6", "--size", "16x24",
                 "--config", "video-tiny", "--quiet"]) == 2  # never writes into a user's folder
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["mine.txt"]


def test_demo_refuses_a_video_without_a_frame_to_score(tmp_path, capsys):
    """3 frames are all label frames: nothing is held out, and the demo stopped with a
    traceback (KeyError 'miou') after training; now one line, exit 2, no folder."""
    out = tmp_path / "d3"
    assert main(["demo", "--out", str(out), "--frames", "3", "--size", "8x8", "--config", "video-tiny",
                 "--steps", "2", "--quiet"]) == 2
    assert "--frames must be >= 4" in capsys.readouterr().err and not out.exists()
