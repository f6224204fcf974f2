"""The command line entry points: --help, info, python -m fhcnn, error reporting."""

from __future__ import annotations

import subprocess
import sys

import torch

import fhcnn
from fhcnn.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "info" in out and "demo" in out


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert fhcnn.__version__ in out and torch.__version__ in out
    assert "device" in out and "threads" in out


def test_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "fhcnn", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and fhcnn.__version__ in r.stdout


def test_user_errors_exit_2_without_traceback(monkeypatch, capsys):
    import fhcnn.cli.info as info

    def boom(args):
        raise ValueError("input.npy: contains NaN")
    monkeypatch.setattr(info, "run", boom)
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: input.npy: contains NaN"


def test_training_failure_exits_1_with_one_line(monkeypatch, capsys):
    import fhcnn.cli.info as info
    from fhcnn.training import NonFiniteLossError

    def boom(args):
        raise NonFiniteLossError(step=2, value=float("nan"))
    monkeypatch.setattr(info, "run", boom)
    assert main(["info"]) == 1
    assert "step 2" in capsys.readouterr().err
