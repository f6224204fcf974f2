"""Exact resume: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fhcnn.training import TrainConfig, Trainer, load_checkpoint, seed_everything
from tests._train_script import one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
HERE = Path(__file__).resolve().parents[1]  # tests/, beside the worker scripts
SCRIPT = HERE / "_train_script.py"
STEPS = 20


def _run(out: Path, *extra: str, sleep: float = 0.0) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(SCRIPT), str(out), "--steps", str(STEPS), "--sleep", str(sleep), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"training script failed ({proc.returncode}):\n{out}\n{err}"
    return out + err


def _final(out: Path):
    ckpt = load_checkpoint(out / "checkpoints" / f"step-{STEPS:06d}")
    return ckpt.model_state, ckpt.state


def _assert_bitwise_equal(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, f"{what}: {k}"
        assert torch.equal(a[k], b[k]), (
            f"{what}: {k} differs, max |diff| {(a[k].double() - b[k].double()).abs().max().item():.3e}")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_resume_after_sigkill_is_bitwise_identical(tmp_path: Path) -> None:
    ref_dir, killed_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    # the reference runs alongside the run to be killed (slowed down so it is surely mid-run)
    reference = _run(ref_dir)
    victim = _run(killed_dir, sleep=0.15)
    manifest = killed_dir / "checkpoints" / "step-000010" / "manifest.json"
    deadline = time.monotonic() + 120
    while not manifest.exists():
        assert victim.poll() is None, "the run ended before it could be killed:\n" + _finish(victim)
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert not (killed_dir / "checkpoints" / f"step-{STEPS:06d}").exists(), "killed too late"
    lines_before = (killed_dir / "metrics.jsonl").read_text().splitlines()

    log = _finish(_run(killed_dir, "--resume"))
    assert f"done step={STEPS}" in log
    _finish(reference)

    ref_w, ref_s = _final(ref_dir)
    res_w, res_s = _final(killed_dir)
    _assert_bitwise_equal(ref_w, res_w, "model weights")
    # optimizer moments and step counters too
    for (ka, a), (_kb, b) in zip(ref_s["optimizer"]["state"].items(), res_s["optimizer"]["state"].items()):
        for name in a:
            assert torch.equal(torch.as_tensor(a[name]), torch.as_tensor(b[name])), f"optimizer {ka}.{name}"
    assert ref_s["scheduler"]["last_epoch"] == res_s["scheduler"]["last_epoch"] == STEPS
    # metrics.jsonl: each step logged exactly once, in order (lines past the resumed
    # checkpoint were dropped), and the logged losses equal the uninterrupted run's
    recs = [json.loads(line) for line in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    ref_recs = [json.loads(line) for line in (ref_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [r["step"] for r in ref_recs] == list(range(2, STEPS + 1, 2))
    assert [r["loss"] for r in recs] == [r["loss"] for r in ref_recs]
    assert len(lines_before) >= 5


def test_resume_in_process_equals_uninterrupted(tmp_path: Path) -> None:
    """Cheaper in-process variant: stop after 6 steps (constant schedule), resume to 12."""
    from tests._train_script import batch_fn, build, loss_fn

    def run(out: Path, steps: int, resume: bool) -> Trainer:
        seed_everything(3)
        cfg = TrainConfig(steps=steps, lr=1e-2, seed=3, device="cpu", checkpoint_every=4,
                          log_every=3, grad_clip=0.5)
        t = Trainer(build("block"), cfg, out, batch_fn, loss_fn, quiet=True)
        t.fit(resume=resume)
        return t

    ref = run(tmp_path / "ref", 12, False)
    run(tmp_path / "split", 6, False)
    resumed = run(tmp_path / "split", 12, True)
    assert resumed.step == 12
    for (k, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    # resuming a finished run trains no further and keeps the weights
    again = run(tmp_path / "split", 12, True)
    w = load_file(str(tmp_path / "split" / "checkpoints" / "step-000012" / "model.safetensors"))
    for k, v in again.model.state_dict().items():
        assert torch.equal(v, w[k]), k


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path, capsys) -> None:
    from tests._train_script import batch_fn, build, loss_fn

    cfg = TrainConfig(steps=2, device="cpu", checkpoint_every=0)
    t = Trainer(build(), cfg, tmp_path / "new", batch_fn, loss_fn)
    assert t.fit(resume=True)["step"] == 2
    assert "no checkpoint yet" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["truncate", "flip"])
def test_resume_skips_corrupt_latest_checkpoint(tmp_path: Path, bad: str, capsys) -> None:
    """A damaged newest checkpoint is reported and the previous one used; the result is still
    the uninterrupted run's (the steps after the previous checkpoint are replayed)."""
    from tests._train_script import batch_fn, build, loss_fn

    def trainer(out: Path, steps: int) -> Trainer:
        seed_everything(1)
        cfg = TrainConfig(steps=steps, lr=1e-2, seed=1, device="cpu", checkpoint_every=3, keep_last=3)
        return Trainer(build(), cfg, out, batch_fn, loss_fn, quiet=True)

    ref = trainer(tmp_path / "ref", 9)
    ref.fit()
    trainer(tmp_path / "run", 6).fit()
    target = tmp_path / "run" / "checkpoints" / "step-000006" / "model.safetensors"
    data = bytearray(target.read_bytes())
    if bad == "truncate":
        target.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[-3] ^= 0xFF
        target.write_bytes(bytes(data))
    t = trainer(tmp_path / "run", 9)
    t.fit(resume=True)
    err = capsys.readouterr().err
    assert "warning: skipping corrupt checkpoint" in err and "step-000006/model.safetensors" in err
    assert err.count("warning:") == 1
    for (k, a), b in zip(ref.model.state_dict().items(), t.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_first_log_line_after_resume_averages_the_whole_window(tmp_path: Path) -> None:
    """log_every not a multiple of checkpoint_every: the checkpoint falls inside a log window.
    The resumed run's first metrics.jsonl line must average the same steps (those before the
    checkpoint included) as the uninterrupted run's, not only the steps after it."""
    import shutil

    from tests._train_script import batch_fn, build, loss_fn

    def run(out: Path, resume: bool = False) -> None:
        seed_everything(5)
        cfg = TrainConfig(steps=12, lr=1e-2, seed=5, device="cpu", checkpoint_every=4,
                          log_every=3, keep_last=5)
        Trainer(build(), cfg, out, batch_fn, loss_fn, quiet=True).fit(resume=resume)

    run(tmp_path / "ref")
    run(tmp_path / "run")
    # as if killed after the checkpoint of step 4 (inside the window of steps 4-6)
    for step in (8, 12):
        shutil.rmtree(tmp_path / "run" / "checkpoints" / f"step-{step:06d}")
    run(tmp_path / "run", resume=True)

    def lines(out: Path) -> list[dict]:
        recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("time", "steps_per_s")} for r in recs]

    ref, res = lines(tmp_path / "ref"), lines(tmp_path / "run")
    assert [r["step"] for r in res] == [r["step"] for r in ref] == [3, 6, 9, 12]
    assert res == ref


def test_a_resumed_run_reports_the_training_time_of_the_whole_run(tmp_path: Path) -> None:
    """train_time_s is the whole run's: a resumed run counts on from the time its checkpoint
    had counted (it restarted at 0 and reported only the resumed part: the time of metrics.json
    of every app after a --resume); validation time is not training time."""
    import shutil

    from tests._train_script import batch_fn, build, loss_fn

    pause = 0.05

    def slow_batch(step: int, gen: torch.Generator):
        time.sleep(pause)  # every step takes at least this long
        return batch_fn(step, gen)

    def slow_val(model) -> dict:
        time.sleep(1.0)
        return {"v": 1.0}

    def run(out: Path, resume: bool = False) -> Trainer:
        cfg = TrainConfig(steps=8, lr=1e-2, seed=2, device="cpu", checkpoint_every=4, keep_last=5,
                          val_every=4)
        t = Trainer(build(), cfg, out, slow_batch, loss_fn, val_fn=slow_val, quiet=True)
        t.fit(resume=resume)
        return t

    whole = run(tmp_path / "run")
    assert 8 * pause <= whole.train_time_s < 8 * pause + 1.0  # the two validations' 2 s left out
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-000008")  # as if killed after step 4
    before = load_checkpoint(tmp_path / "run" / "checkpoints" / "step-000004").state["train_time_s"]
    assert before >= 4 * pause
    resumed = run(tmp_path / "run", resume=True)
    assert resumed.train_time_s >= before + 4 * pause  # steps 1-4 counted, then steps 5-8
    final = load_checkpoint(tmp_path / "run" / "checkpoints" / "step-000008").state["train_time_s"]
    assert final == pytest.approx(resumed.train_time_s, abs=0.2)
    assert run(tmp_path / "run", resume=True).train_time_s == pytest.approx(final, abs=0.05)  # finished


def test_a_side_training_leaves_the_runs_progress_for_a_lost_process_message(tmp_path: Path) -> None:
    """A lost process's message names the run's last completed step and last intact checkpoint.
    A baseline trained beside the run (the U-Net of fhcnn volume: no folder, no checkpoints)
    started a new record: a process lost during it said "no checkpoint was written yet" while
    the run's checkpoint could be resumed. With ``reports_progress=False`` the run's record stays."""
    from fhcnn.training import distributed
    from tests._train_script import batch_fn, build, loss_fn

    cfg = TrainConfig(steps=4, device="cpu", checkpoint_every=2)
    Trainer(build(), cfg, tmp_path / "run", batch_fn, loss_fn, quiet=True).fit()
    assert (distributed._progress.step, distributed._intact_checkpoint()) == \
        (4, tmp_path / "run" / "checkpoints" / "step-000004")
    Trainer(build(), TrainConfig(steps=3, device="cpu"), None, batch_fn, loss_fn, quiet=True,
            reports_progress=False).fit()
    assert (distributed._progress.step, distributed._intact_checkpoint()) == \
        (4, tmp_path / "run" / "checkpoints" / "step-000004")
    Trainer(build(), TrainConfig(steps=3, device="cpu"), None, batch_fn, loss_fn, quiet=True).fit()
    assert (distributed._progress.step, distributed._intact_checkpoint()) == (3, None)  # a run of its own
