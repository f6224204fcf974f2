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
