"""``python3 dev.py``: Ctrl-C, which the terminal sends to dev.py and to the command it runs
alike, is answered by that command (``fhcnn``: one line, exit 130); dev.py waits for it and
exits with its status, without a traceback of its own."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# a program of the environment that gets Ctrl-C (the whole process group: dev.py too) and
# answers it, after a moment, with LINE and exit status CODE
_PRESSED = """#!/bin/sh
trap '' INT
kill -INT 0
sleep 0.5
echo '{line}' >&2
exit {code}
"""
PROGRAMS = {"fhcnn": ("interrupted (SIGINT)", 130), "python": ("ERROR: Operation cancelled by user", 1)}  # pip's


@pytest.mark.parametrize("installed", [True, False], ids=["the command", "pip, setting the environment up"])
def test_ctrl_c_is_answered_by_the_command_dev_py_runs(tmp_path, installed):
    # dev.py waited in subprocess.call / subprocess.run: the KeyboardInterrupt it got printed a
    # traceback under the command's line (and killed the command); pip's failure on it was a
    # CalledProcessError traceback
    spec = importlib.util.spec_from_file_location("dev", ROOT / "dev.py")
    assert spec is not None and spec.loader is not None
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    if installed:  # up to date: dev.py runs the environment's fhcnn at once
        (venv / ".fhcnn-installed-io").write_text(dev.installed_digest())
    for name, (line, code) in PROGRAMS.items():
        (venv / "bin" / name).write_text(_PRESSED.format(line=line, code=code))
        (venv / "bin" / name).chmod(0o755)
    r = subprocess.run([sys.executable, str(ROOT / "dev.py"), "fhcnn", "info"],
                       env=dict(os.environ, FHCNN_VENV=str(venv)), capture_output=True, text=True, timeout=60,
                       start_new_session=True)  # a process group of its own, as a terminal's command line
    if installed:  # fhcnn's line alone
        assert (r.returncode, r.stderr) == (130, "interrupted (SIGINT)\n")
    else:  # pip's, then dev.py's
        assert (r.returncode, r.stderr) == (130, "ERROR: Operation cancelled by user\ninterrupted (SIGINT)\n")
