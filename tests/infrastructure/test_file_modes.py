"""Every output of a run gets the permissions of an ordinary new file (or folder) under the
process's umask, the weights (``model.safetensors``, final and in every checkpoint) included,
so a shared run folder can be read by whoever reads the rest of it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fhcnn.cli import main
from tests._space_apps_script import make_inputs


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_follow_the_umask(tmp_path: Path, umask: int) -> None:
    make_inputs(tmp_path)
    out = tmp_path / "out"
    old = os.umask(umask)
    try:
        (tmp_path / "plain-file").write_text("x")
        (tmp_path / "plain-folder").mkdir()
        rc = main(["segment", str(tmp_path / "video.npy"), "--labels", str(tmp_path / "masks.npy"),
                   "--out", str(out), "--config", "video-tiny", "--device", "cpu", "--quiet",
                   "--set", "train.steps=2", "--set", "train.checkpoint_every=1", "--set", "train.keep_last=2"])
    finally:
        os.umask(old)
    assert rc == 0
    file_mode = stat.S_IMODE((tmp_path / "plain-file").stat().st_mode)
    folder_mode = stat.S_IMODE((tmp_path / "plain-folder").stat().st_mode)
    assert file_mode == 0o666 & ~umask and folder_mode == 0o777 & ~umask
    outputs = sorted(out.rglob("*"))
    assert len([p for p in outputs if p.name == "model.safetensors"]) == 3  # final + 2 checkpoints
    wrong = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode)) for p in outputs
             if stat.S_IMODE(p.stat().st_mode) != (folder_mode if p.is_dir() else file_mode)}
    assert not wrong, f"umask {umask:03o}: files {oct(file_mode)}, folders {oct(folder_mode)}; but {wrong}"


def test_a_complete_write_removes_what_a_killed_one_left(tmp_path: Path) -> None:
    """A process killed while writing (SIGKILL, no cleanup) leaves its hidden temporary file;
    the next complete write of the same file removes it, and nothing else. The weights are
    written through the same temporary file (safetensors' own would be left behind too)."""
    import numpy as np
    import torch

    from fhcnn.atomic import atomic_save_npy, atomic_write_text
    from fhcnn.training.checkpoint import save_weights

    left = [tmp_path / ".run.json.lw9lhpcr.tmp.json", tmp_path / ".prediction.npy.k2_x81qz.tmp.npy"]
    kept = [tmp_path / ".run.json.notes", tmp_path / "run.json.lw9lhpcr.tmp.json",
            tmp_path / ".other.npy.k2_x81qz.tmp.npy"]
    for p in left + kept:
        p.write_text("x")
    atomic_write_text(tmp_path / "run.json", "{}")
    atomic_save_npy(tmp_path / "prediction.npy", np.zeros(3))
    save_weights(tmp_path / "model.safetensors", torch.nn.Linear(2, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [p.name for p in kept] + ["run.json", "prediction.npy", "model.safetensors"])
