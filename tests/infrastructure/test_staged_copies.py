"""The private folders of :class:`~fhcnn.data.lazy.StagedCopy` (``fhcnn change`` decodes a
compressed TIFF date into one in ``TMPDIR`` before its run folder exists): a process killed
before it removes its folder (SIGKILL: no finalizer runs) leaves it, and the next staged copy of
any fhcnn process removes it, and only what it can prove is such a leftover (the lock its
process held there is free)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fhcnn.data.lazy import STAGED_LOCK, StagedCopy

ROOT = Path(__file__).parents[2]

_STAGE = r"""
import os, signal, sys
import numpy as np
from fhcnn.data.lazy import StagedCopy

copy = StagedCopy(np.arange(64, dtype=np.float32).reshape(4, 4, 4), 0, (2, 4, 4))
print(copy.folder, flush=True)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.readline()  # lives until told to end
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX locks")
def test_a_staged_copy_removes_the_folders_of_ended_processes_and_nothing_else(tmp_path, monkeypatch):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", _STAGE, "kill"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    left = Path(killed.stdout.strip())
    assert left.parent == tmpdir and (left / STAGED_LOCK).is_file() and (left / "copy.zarr").is_dir()
    live = subprocess.Popen([sys.executable, "-c", _STAGE, "live"], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        living = Path(live.stdout.readline().strip())  # type: ignore[union-attr]
        mine = tmpdir / "fhcnn-staged-mine"  # a folder of that name without the lock file
        mine.mkdir()
        (mine / "notes").write_text("mine")
        elsewhere = tmp_path / "elsewhere"  # a link of that name to a folder with a free lock file
        elsewhere.mkdir()
        (elsewhere / STAGED_LOCK).write_text("")
        (tmpdir / "fhcnn-staged-link").symlink_to(elsewhere, target_is_directory=True)
        monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
        copy = StagedCopy(np.zeros((2, 3, 3), np.float32), 0, (1, 3, 3))
        assert not left.exists()  # its process ended: removed
        assert (living / STAGED_LOCK).is_file() and (living / "copy.zarr").is_dir()  # its process lives
        assert (mine / "notes").read_text() == "mine" and (elsewhere / STAGED_LOCK).is_file()
        assert (copy.folder / STAGED_LOCK).is_file()
        np.testing.assert_array_equal(copy[...], np.zeros((2, 3, 3), np.float32))
    finally:
        live.communicate("\n", timeout=60)
    assert live.returncode == 0 and not living.exists()  # removed by its own process as it ended
    copy.adopt(np.ones((2, 3, 3), np.float32))
    assert not copy.folder.exists()
