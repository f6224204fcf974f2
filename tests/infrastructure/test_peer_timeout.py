"""A process of a multi-process run that stops (SIGSTOP) or disappears (SIGKILL) ends the run
within ``train.peer_timeout``, with one line on the surviving process naming it, the last
completed step and the last intact checkpoint; ``--resume`` then finishes the run with the
weights of an uninterrupted one. Only rank 0 prints the run's lines.

``fhcnn segment`` (``video-tiny``, the video split along W over 2 Gloo processes), launched by
the test: directly (``RANK``/``WORLD_SIZE``/``MASTER_*`` set by the test: a process killed
outside any launcher) and once under ``torchrun`` (where a heartbeat in the agent's store
names the stopped process).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any, ContextManager

import numpy as np
import psutil
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from fhcnn.training.checkpoint import verify_checkpoint
from fhcnn.training.distributed import launch_env
from tests._launch import SRC, started_ranks, torchrun_command
from tests._space_apps_script import make_inputs

TIMEOUT = 5  # train.peer_timeout of these runs, seconds
SLACK = 15  # for starting, the heartbeat's look and a loaded 2-core machine

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with Gloo is not available here")


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["segment", str(root / "video.npy"), "--labels", str(root / "masks.npy"), "--out", str(out),
            "--config", "video-tiny", "--device", "cpu", "--set", "parallel.space=2",
            "--set", "parallel.axes=[2]", "--set", "train.optimizer=sgd", "--set", "train.lr=0.05",
            "--set", "train.steps=16", "--set", "train.checkpoint_every=2", "--set", "train.keep_last=2",
            "--set", f"train.peer_timeout={TIMEOUT}", *extra]


def _spawn(root: Path, out: Path, name: str, *extra: str) -> ContextManager[list[subprocess.Popen]]:
    """Two processes of one run, started directly (no launcher); rank r writes name-r.out/.err."""
    return started_ranks(["-m", "fhcnn", *_args(root, out, *extra)], logs=root / name)


def _wait_for_checkpoint(out: Path, step: int, procs: list) -> None:
    manifest = out / "checkpoints" / f"step-{step:06d}" / "manifest.json"
    t0 = time.monotonic()
    while not manifest.exists():
        assert all(p.poll() is None for p in procs), "the run ended before the process could be stopped"
        assert time.monotonic() - t0 < 300, f"no {manifest} after 300 s"
        time.sleep(0.02)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def _checkpoint_named(line: str) -> Path:
    path = Path(line.split("the last intact checkpoint is ")[1].split(": continue with --resume")[0])
    verify_checkpoint(path)  # sizes and sha256 sums match its manifest
    return path


def _torchrun(tmp_path: Path, out: Path, logs: Path) -> subprocess.Popen:
    """The run of :func:`_args` under ``torchrun`` (2 processes; their output in ``logs``)."""
    return subprocess.Popen(
        torchrun_command(2, ["--log-dir", str(logs), "--redirects", "3", "-m", "fhcnn", *_args(tmp_path, out)]),
        env=launch_env(pythonpath=[SRC]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _workers_after_a_checkpoint(launcher: subprocess.Popen, out: Path) -> dict[str, Any]:
    """The launch's processes by rank, once the run has written its step-2 checkpoint."""
    _wait_for_checkpoint(out, 2, [launcher])
    return {c.environ().get("RANK"): c for c in psutil.Process(launcher.pid).children(recursive=True)
            if "RANK" in c.environ()}


def test_stopped_or_killed_process_ends_the_run_and_resume_finishes_it(tmp_path: Path) -> None:
    make_inputs(tmp_path)

    # 1. the uninterrupted run; only rank 0 prints (the run's lines once)
    with _spawn(tmp_path, tmp_path / "ref", "ref") as ref:
        assert [p.wait(timeout=300) for p in ref] == [0, 0], \
            _read(tmp_path / "ref-0.err") + _read(tmp_path / "ref-1.err")
    out0 = _read(tmp_path / "ref-0.out") + _read(tmp_path / "ref-0.err")
    header = ("video: 6 frames", "classes: 3", "trained 16 steps", "held-out frames (3):")
    assert [out0.count(s) for s in header] == [1] * 4, out0
    assert _read(tmp_path / "ref-1.out") + _read(tmp_path / "ref-1.err") == ""

    # 2. under torchrun, rank 1 stopped (SIGSTOP) after a checkpoint: rank 0 ends within the timeout
    out = tmp_path / "run"
    logs = tmp_path / "torchrun-logs"
    launcher = _torchrun(tmp_path, out, logs)
    try:
        workers = _workers_after_a_checkpoint(launcher, out)
        stopped_at = time.monotonic()
        workers["1"].send_signal(signal.SIGSTOP)
        workers["0"].wait(timeout=TIMEOUT + SLACK + 60)
        took = time.monotonic() - stopped_at
    finally:
        for w in psutil.Process(launcher.pid).children(recursive=True):
            w.kill()
        launcher.wait(timeout=120)
    err = "".join(_read(p) for p in sorted(logs.rglob("0/stderr.log")))
    line = _one_error_line(err)
    assert line.startswith("error: rank 0: rank 1 of 2 (last completed step ") and \
        f"stopped answering (no reply within train.peer_timeout={TIMEOUT} s)" in line, line
    assert took < TIMEOUT + SLACK, f"rank 0 ended {took:.1f} s after rank 1 stopped"
    _checkpoint_named(line)

    # 3. resumed without a launcher; rank 1 killed (SIGKILL) after a later checkpoint
    with _spawn(tmp_path, out, "kill", "--resume") as procs:
        _wait_for_checkpoint(out, 6, procs)
        killed_at = time.monotonic()
        procs[1].kill()
        rc = procs[0].wait(timeout=TIMEOUT + SLACK + 60)
        took = time.monotonic() - killed_at
    line = _one_error_line(_read(tmp_path / "kill-0.err"))
    assert rc == 1 and line.startswith("error: rank 0: rank 1 of 2 stopped answering (its connection closed); "
                                       "this process stops after step "), line
    assert took < TIMEOUT + SLACK, f"rank 0 ended {took:.1f} s after rank 1 was killed"
    assert _checkpoint_named(line).name >= "step-000006"

    # 4. resumed again: it finishes with the weights and prediction of the uninterrupted run
    with _spawn(tmp_path, out, "resume", "--resume") as procs:
        assert [p.wait(timeout=300) for p in procs] == [0, 0], _read(tmp_path / "resume-0.err")
    assert "resuming from" in _read(tmp_path / "resume-0.err")
    want, got = (load_file(str(d / "model.safetensors")) for d in (tmp_path / "ref", out))
    assert all(torch.equal(want[k], got[k]) for k in want), "the resumed run differs from the uninterrupted one"
    np.testing.assert_array_equal(np.load(out / "prediction.npy"), np.load(tmp_path / "ref" / "prediction.npy"))


def test_a_process_killed_under_torchrun_leaves_a_line_on_the_others(tmp_path: Path) -> None:
    # torchrun ends the other processes (SIGTERM) as soon as one is killed, while their waits
    # for it fail: rank 0 vanished without a word (or in the middle of naming rank 1), and the
    # user read torchrun's report alone, which names no checkpoint to --resume from. Rank 0 now
    # says it in one line: the lost process it was naming, or that torchrun ended it
    make_inputs(tmp_path)
    out, logs = tmp_path / "run", tmp_path / "torchrun-logs"
    launcher = _torchrun(tmp_path, out, logs)
    try:
        workers = _workers_after_a_checkpoint(launcher, out)
        killed_at = time.monotonic()
        workers["1"].kill()
        rc = launcher.wait(timeout=TIMEOUT + SLACK + 60)
        took = time.monotonic() - killed_at
    finally:
        for w in psutil.Process(launcher.pid).children(recursive=True) if launcher.poll() is None else []:
            w.kill()
        launcher.wait(timeout=120)
    assert rc != 0 and took < SLACK, f"torchrun ended {took:.1f} s after rank 1 was killed"  # not its 30 s grace
    line = _one_error_line("".join(_read(p) for p in sorted(logs.rglob("0/stderr.log"))))
    assert line.startswith(("error: rank 0: ended by SIGTERM (torchrun's, as another of the 2 processes failed "
                            "or was killed: its report names it; or the launch was stopped); "
                            "this process stops after step ",
                            "error: rank 0: rank 1 of 2 (last completed step ")), line
    assert "this process stops after step " in line
    assert _checkpoint_named(line).name >= "step-000002"


# Runs fhcnn (sys.argv[1:]); rank 0's copy of a compressed input takes 3 s longer.
_SLOW_COPY = r"""
import os, sys, time
import fhcnn.data.lazy as lazy
from fhcnn.cli import main
from fhcnn.training.distributed import exit_program
copy = lazy.copy_to_zarr

def slow(*args, **kwargs):
    time.sleep(3)
    return copy(*args, **kwargs)

lazy.copy_to_zarr = slow
exit_program(main(sys.argv[1:]))
"""


def test_a_copy_longer_than_the_peer_timeout_says_to_raise_it(tmp_path: Path) -> None:
    # rank 0 copies a compressed input once while the others wait at a barrier; Gloo's timeout
    # there is a plain RuntimeError, which the copy's own line (raise train.peer_timeout) missed:
    # rank 1 said rank 0 "stopped answering" and to --resume, which copies again and fails again
    nib = pytest.importorskip("nibabel")
    from tests.apps._volumes import write_tiny_volume

    write_tiny_volume(tmp_path)
    for name in ("c0", "lab"):
        nib.save(nib.Nifti1Image(np.load(tmp_path / f"{name}.npy"), np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
    script, out = tmp_path / "slow.py", tmp_path / "out"
    script.write_text(_SLOW_COPY)
    args = ["volume", str(tmp_path / "c0.nii.gz"), "--labels", str(tmp_path / "lab.nii.gz"), "--out", str(out),
            "--config", "volume-tiny", "--quiet", "--set", "data.batch_size=2", "--set", "volume.baselines=",
            "--set", "train.peer_timeout=1"]
    with started_ranks([str(script), *args]) as procs:
        rc1, (_, err1) = procs[1].wait(timeout=120), procs[1].communicate()
    assert rc1 == 1, err1
    line = _one_error_line(err1)
    assert line.startswith(f"error: the copy of image0 into {out / 'inputs' / 'image0.zarr'} was not finished by "
                           "rank 0 within train.peer_timeout=1 s (") and \
        line.endswith("); raise train.peer_timeout for a large compressed or sequential input"), line
