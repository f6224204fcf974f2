"""Ctrl-C (SIGINT) in each phase of a one-process ``fhcnn volume`` run: one line saying what
happened and where to go on from (the last completed step, the last intact checkpoint,
``--resume``), exit code 130, no traceback, nothing outside OUT changed and no scratch left in
it; ``--resume`` then ends with the weights and prediction of a run never interrupted. SIGTERM
(a batch scheduler's) in training of ``python -m fhcnn volume``: the same, ``terminated
(SIGTERM)``, exit code 143. Under ``torchrun`` (2 processes, Ctrl-C in training) the line is
rank 0's alone."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fhcnn
from fhcnn.cli import main
from tests.apps._volumes import write_tiny_volume

# 6 steps, a checkpoint every 2; the U-Net baseline trains too (--eval-labels); the probabilities
# are written too (a temporary folder until the prediction file is in place)
RUN = ["--config", "volume-tiny", "--quiet", "--set", "train.steps=6", "--set", "train.checkpoint_every=2",
       "--set", "volume.baselines=unet", "--save-probs"]

# phase -> (what is interrupted at its n-th call, n)
PHASES = {
    "statistics": ("fhcnn.data.lazy.LazyVolume.channel_stats", 1),
    "one-time copy": ("fhcnn.rundir.copy_input", 2),
    "training": ("fhcnn.training.trainer.Trainer._train_step", 4),
    "U-Net": ("fhcnn.apps.volume.pipeline._UNet.train", 1),
    "prediction": ("fhcnn.apps.volume.pipeline.predict_run", 1),
    "writing the prediction": ("fhcnn.data.volumes.sinks.NiftiSink.close", 1),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    nib = pytest.importorskip("nibabel")
    root = write_tiny_volume(tmp_path_factory.mktemp("interrupt-inputs"))
    for name in ("c0", "lab", "truth"):  # compressed: copied once into OUT/inputs
        nib.save(nib.Nifti1Image(np.load(root / f"{name}.npy"), np.eye(4)), str(root / f"{name}.nii.gz"))
    return root


def _args(root: Path, out: Path) -> list[str]:
    return ["volume", str(root / "c0.nii.gz"), "--labels", str(root / "lab.nii.gz"),
            "--eval-labels", str(root / "truth.nii.gz"), "--out", str(out)] + RUN


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("interrupt-reference") / "out"
    assert main(_args(inputs, out)) == 0
    return out


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _interrupt_at(monkeypatch, target: str, n: int) -> None:
    """SIGINT to this process at the ``n``-th call of ``target`` (``module.attr`` or
    ``module.Class.method``), as Ctrl-C sends it."""
    import importlib

    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:-1]:
            owner = getattr(owner, name)
        break
    original, calls = getattr(owner, parts[-1]), []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*a, **k)

    monkeypatch.setattr(owner, parts[-1], interrupted)


@pytest.fixture
def ctrl_c():
    """Python's own SIGINT handler (Ctrl-C raises ``KeyboardInterrupt``) during the test."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("phase", list(PHASES))
def test_ctrl_c_in_each_phase_says_where_to_go_on_and_resume_ends_as_never_interrupted(
        inputs, uninterrupted, tmp_path, monkeypatch, capsys, ctrl_c, phase):
    out = tmp_path / "out"
    before = _tree(inputs)
    _interrupt_at(monkeypatch, *PHASES[phase])
    assert main(_args(inputs, out)) == 130
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    ckpt = {"training": 2, "U-Net": 6, "prediction": 6, "writing the prediction": 6}.get(phase)
    where = (f"the last intact checkpoint is {out.resolve() / 'checkpoints' / f'step-{ckpt:06d}'}" if ckpt
             else "no checkpoint was written yet")
    step = {"training": 3, "U-Net": 6, "prediction": 6, "writing the prediction": 6}.get(phase)
    want = ("interrupted (SIGINT)" if phase == "statistics"
            else f"interrupted (SIGINT){f' after step {step}' if step else ''}; {where}: continue with --resume")
    assert err.strip() == want
    assert _tree(inputs) == before and sorted(p.name for p in tmp_path.iterdir()) == (["out"] if out.exists() else [])
    _goes_on_as_never_interrupted(inputs, out, uninterrupted, started=phase != "statistics")


def _goes_on_as_never_interrupted(inputs: Path, out: Path, uninterrupted: Path, started: bool) -> None:
    """After an interrupted run: no scratch left in OUT (a ``started`` run's), and the same
    command (``--resume`` once OUT exists) ends with the weights, prediction and scores of the
    ``uninterrupted`` run."""
    if not started:  # before OUT exists: nothing written, the same command starts the run
        assert not out.exists()
        assert main(_args(inputs, out)) == 0
    else:
        assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"]
        assert json.loads((out / "run.json").read_text()).get("scratch", []) == []
        assert main(_args(inputs, out) + ["--resume"]) == 0
    for name in ("model.safetensors", "prediction.nii.gz"):
        assert (out / name).read_bytes() == (uninterrupted / name).read_bytes(), name
    got, want_m = (json.loads((o / "metrics.json").read_text()) for o in (out, uninterrupted))
    assert got["miou"] == want_m["miou"] and got["baselines"]["unet"]["miou"] == want_m["baselines"]["unet"]["miou"]


# sitecustomize.py of the test below: SIGTERM to this process as its 4th training step starts, as
# a batch scheduler sends it at its time limit (or `kill PID`)
_SIGTERM_IN_TRAINING = r"""
import importlib.machinery, os, signal, sys

class _TerminateAtStep4:
    def find_spec(self, name, path=None, target=None):
        if name != "fhcnn.training.trainer":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            step, calls = module.Trainer._train_step, []

            def terminated(self, *args, **kwargs):
                calls.append(1)
                if len(calls) == 4:
                    os.kill(os.getpid(), signal.SIGTERM)
                return step(self, *args, **kwargs)

            module.Trainer._train_step = terminated

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _TerminateAtStep4())
"""


def test_sigterm_in_training_says_where_to_go_on_and_resume_ends_as_never_interrupted(inputs, uninterrupted,
                                                                                       tmp_path):
    # a batch scheduler (SLURM at its time limit, Kubernetes, `kill PID`) stops a run with
    # SIGTERM: the run ended without a word (killed by the signal) and left its scratch in OUT
    site, tmp, out = tmp_path / "site", tmp_path / "tmp", tmp_path / "out"
    for folder in (site, tmp):
        folder.mkdir()
    (site / "sitecustomize.py").write_text(_SIGTERM_IN_TRAINING)
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp),
               PYTHONPATH=os.pathsep.join([str(site), str(Path(fhcnn.__file__).parents[1])]))
    before = _tree(inputs)
    r = subprocess.run([sys.executable, "-m", "fhcnn", *_args(inputs, out)], env=env, capture_output=True,
                       text=True, timeout=300)
    ckpt = out.resolve() / "checkpoints" / "step-000002"
    want = f"terminated (SIGTERM) after step 3; the last intact checkpoint is {ckpt}: continue with --resume\n"
    assert (r.returncode, r.stdout, r.stderr) == (143, "", want)
    assert _tree(inputs) == before and list(tmp.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "site", "tmp"]
    _goes_on_as_never_interrupted(inputs, out, uninterrupted, started=True)


def test_a_full_disk_is_one_line_naming_the_checkpoint_and_resume_ends_as_never_interrupted(
        inputs, uninterrupted, tmp_path, monkeypatch, capsys):
    # the file system of OUT filled up as the checkpoint of step 4 was written (ENOSPC; a
    # read-only one is EROFS): the run ended in a traceback of OSError, naming neither the
    # checkpoint to go on from nor that --resume continues once there is room
    import errno

    from fhcnn.training import checkpoint

    out, save, calls = tmp_path / "out", checkpoint.save_weights, []

    def full(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_weights", full)
    assert main(_args(inputs, out)) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err
    step2 = out.resolve() / "checkpoints" / "step-000002"
    assert err == (f"error: cannot write in {out.resolve()}: {os.strerror(errno.ENOSPC)} (ENOSPC); this run "
                   f"stopped after step 4; the last intact checkpoint is {step2}: free space on that file "
                   f"system (or make it writable), then continue with --resume\n")
    assert json.loads((out / "run.json").read_text()).get("scratch", []) == []
    assert main(_args(inputs, out) + ["--resume"]) == 0
    for name in ("model.safetensors", "prediction.nii.gz"):
        assert (out / name).read_bytes() == (uninterrupted / name).read_bytes(), name


# Runs fhcnn (sys.argv[1:]) as a process of a torchrun launch; at its 4th training step rank 0
# presses Ctrl-C: SIGINT to torchrun's process group, as a terminal sends it (torchrun passes it
# on to every process), and waits for it.
_CTRL_C_IN_TRAINING = r"""
import os, signal, sys, time
import fhcnn
from fhcnn.cli import main
from fhcnn.training.distributed import exit_program
from fhcnn.training.trainer import Trainer
step, calls = Trainer._train_step, []

def pressed(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 4 and os.environ["RANK"] == "0":
        os.killpg(os.getpgid(os.getppid()), signal.SIGINT)
        time.sleep(60)
    return step(self, *args, **kwargs)

Trainer._train_step = pressed
exit_program(main(sys.argv[1:]))
"""


def test_ctrl_c_under_torchrun_is_one_line_from_rank_0(inputs, tmp_path):
    # torchrun passes Ctrl-C on to every process: each printed its line, rank 1's a bare
    # "interrupted (SIGINT)" (rank 0 alone holds the run folder) beside rank 0's, which names the
    # checkpoint to --resume from; the others now end without a word
    dist = pytest.importorskip("torch.distributed")
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with Gloo is not available here")
    import subprocess
    import sys

    from fhcnn.training.distributed import launch_env

    out, logs, script = tmp_path / "out", tmp_path / "logs", tmp_path / "ctrl_c.py"
    script.write_text(_CTRL_C_IN_TRAINING)
    args = _args(inputs, out) + ["--set", "data.batch_size=2", "--set", "volume.baselines="]
    before = _tree(inputs)
    repo = Path(__file__).parents[2]
    launcher = subprocess.run(  # a session of its own: the test's process is not the terminal's
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--log-dir", str(logs),
         "--redirects", "3", str(script), *args], env=launch_env(pythonpath=[repo / "src"]), capture_output=True,
        text=True, timeout=120, start_new_session=True)
    assert launcher.returncode != 0 and "ChildFailedError" not in launcher.stderr, launcher.stderr
    err = {r: next(logs.rglob(f"{r}/stderr.log")).read_text() for r in (0, 1)}
    ckpt = out.resolve() / "checkpoints" / "step-000002"
    want = f"interrupted (SIGINT) after step 3; the last intact checkpoint is {ckpt}: continue with --resume"
    assert err[0] == want + "\n"  # rank 0's line, once
    assert err[1] == ""
    assert _tree(inputs) == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    assert main(args + ["--resume"]) == 0  # on one process: the number of processes may change
    assert (out / "model.safetensors").exists() and json.loads((out / "run.json").read_text()).get("scratch", []) == []
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"]
