"""Fault runs: 2-process runs with one process killed at a random step, then ``--resume``.

    python benchmarks/fault_runs.py [--runs 20] [--steps 16] [--seed 0] [--split W]

Each run is ``torchrun --standalone --nproc-per-node 2 -m fhcnn segment`` on a small generated
video (6 frames of 16 x 24, ``video-tiny``, SGD, a checkpoint every 2 steps, CPU/Gloo, the
volume split along W with ``--split W``, plain data parallelism with ``--split none``). A
random rank is killed (SIGKILL, as the OOM killer would) once ``metrics.jsonl`` reaches a
random step in ``1 .. steps - 1``; torchrun then ends the other. The same command with
``--resume`` must finish the run (exit 0); its weights (``model.safetensors``), prediction
(``prediction.npy``) and logged ``(step, loss)`` sequence must equal those of one
uninterrupted run bit for bit (no step logged twice or missing), its folder must hold the same
outputs, its last checkpoint must pass its manifest, and it must have resumed (not started
over) from the last checkpoint written before the kill (or the one before, if the kill came
while that one was written). Writes ``benchmarks/results/fault_runs.json``: the
count of runs that finish correctly, and per run the kill (rank, step), the exit status of
both launches, the step resumed from, and what differed. Not part of the test suite (about
half a minute per run on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from safetensors.torch import load_file

from fhcnn.atomic import atomic_write_text
from fhcnn.data.video import generate_video
from fhcnn.training.checkpoint import CheckpointError, find_checkpoint, verify_checkpoint
from fhcnn.training.distributed import launch_env

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return launch_env(pythonpath=[REPO / "src"])


def _command(root: Path, out: Path, steps: int, split: str, *extra: str) -> list[str]:
    layout = ["--set", "parallel.space=2", "--set", "parallel.axes=[2]"] if split == "W" else \
        ["--set", "data.batch_size=2"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "fhcnn", "segment", str(root / "video.npy"), "--labels", str(root / "masks.npy"),
            "--out", str(out), "--config", "video-tiny", "--device", "cpu",
            "--set", "train.optimizer=sgd", "--set", "train.lr=0.05", "--set", f"train.steps={steps}",
            "--set", "train.checkpoint_every=2", "--set", "train.keep_last=2", "--set", "train.log_every=1",
            "--set", "train.peer_timeout=30", *layout, *extra]


def _last_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [0]
    for line in lines:
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError):
            pass
    return max(steps)


def _losses(out: Path) -> list[tuple[int, float]]:
    """``(step, loss)`` of every training line of ``metrics.jsonl``, in file order."""
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(int(r["step"]), float(r["loss"])) for r in recs if r.get("split") == "train"]


def _interrupted(root: Path, out: Path, steps: int, split: str, at: int, victim: int, log: Path) -> dict[str, Any]:
    """Launch the run and SIGKILL rank ``victim`` once ``metrics.jsonl`` reaches step ``at``."""
    with open(log, "w") as f:
        launcher = subprocess.Popen(_command(root, out, steps, split), env=_env(), stdout=f, stderr=f)
    killed_at = None
    while launcher.poll() is None:
        if _last_step(out) >= at:
            workers = {c.environ().get("RANK"): c for c in psutil.Process(launcher.pid).children(recursive=True)
                       if "RANK" in c.environ()}
            if str(victim) in workers:
                killed_at = _last_step(out)
                workers[str(victim)].send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    rc = launcher.wait(timeout=600)
    return {"rc": rc, "killed_after_step": killed_at}


def main() -> None:
    from fhcnn.bench.reference import environment

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", choices=["W", "none"], default="W")
    ap.add_argument("--out", type=Path, default=RESULTS / "fault_runs.json")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="fhcnn-fault-") as tmp:
        root = Path(tmp)
        video, masks = generate_video(root / "gen", frames=6, height=16, width=24, objects=2, seed=5)
        np.save(root / "video.npy", video)
        np.save(root / "masks.npy", masks)
        ref = root / "reference"
        with open(root / "reference.log", "w") as f:
            rc = subprocess.run(_command(root, ref, args.steps, args.split), env=_env(), stdout=f, stderr=f).returncode
        if rc != 0:
            sys.exit(f"the uninterrupted run failed ({rc}):\n{(root / 'reference.log').read_text()[-3000:]}")
        want = load_file(str(ref / "model.safetensors"))
        want_pred = np.load(ref / "prediction.npy")
        runs = []
        for i in range(args.runs):
            at, victim = rng.randint(1, args.steps - 1), rng.randint(0, 1)
            out = root / f"run-{i:02d}"
            first = _interrupted(root, out, args.steps, args.split, at, victim, root / f"run-{i:02d}-a.log")
            with open(root / f"run-{i:02d}-b.log", "w") as f:
                second = subprocess.run(_command(root, out, args.steps, args.split, "--resume"), env=_env(),
                                        stdout=f, stderr=f).returncode
            problems = []
            if first["killed_after_step"] is None:
                problems.append("the run ended before the kill")
            if first["rc"] == 0:
                problems.append("the killed launch exited 0")
            if second != 0:
                problems.append(f"--resume exited {second}: "
                                + (root / f"run-{i:02d}-b.log").read_text()[-600:].replace("\n", " | "))
            else:
                got = load_file(str(out / "model.safetensors"))
                if got.keys() != want.keys() or not all(torch.equal(want[k], got[k]) for k in want):
                    problems.append("weights differ from the uninterrupted run")
                if not np.array_equal(np.load(out / "prediction.npy"), want_pred):
                    problems.append("prediction differs from the uninterrupted run")
                names = sorted(q.name for q in out.iterdir())
                if names != sorted(q.name for q in ref.iterdir()):
                    problems.append(f"outputs {names} are not those of the uninterrupted run")
                if _losses(out) != _losses(ref):
                    problems.append("metrics.jsonl (step, loss) differs from the uninterrupted run")
                try:
                    verify_checkpoint(find_checkpoint(out, "latest"))
                except CheckpointError as e:
                    problems.append(f"last checkpoint: {e}")
            # it resumed (did not start over) from the last checkpoint before the kill, or the one
            # before it if the kill came while that one was written
            log = (root / f"run-{i:02d}-b.log").read_text()
            found = re.search(r"resuming from \S+ \(step (\d+)", log)
            resumed = int(found.group(1)) if found else None
            k = first["killed_after_step"] or 0
            if k >= 4 and (resumed is None or not k // 2 * 2 - 2 <= resumed <= k):
                problems.append(f"resumed from step {resumed} after a kill after step {k}")
            runs.append({"run": i, "kill_rank": victim, "kill_at_step": at, **first,
                         "resume_rc": second, "resumed_from_step": resumed,
                         "correct": not problems, "problems": problems})
            print(f"run {i:2d}: kill rank {victim} after step {first['killed_after_step']} (asked {at}), "
                  f"launch rc {first['rc']}, resume rc {second}: {'ok' if not problems else problems}",
                  flush=True)
    result = {
        "command": " ".join(["python", "benchmarks/fault_runs.py", *sys.argv[1:]]),
        "what": f"{args.runs} launches of a 2-process fhcnn segment run (video-tiny, {args.steps} SGD steps, "
                f"checkpoint every 2, split {args.split}), one random rank SIGKILLed at a random step, "
                f"then --resume; correct = exit 0, weights, prediction and logged losses bit-identical to an "
                f"uninterrupted run, the same outputs, the last checkpoint intact, resumed from the last "
                f"checkpoint before the kill",
        "correct": sum(r["correct"] for r in runs), "runs": len(runs),
        "load_average_at_end": os.getloadavg(), "cpus": os.cpu_count(),
        "time_s": round(time.time() - t_start, 1), "torch": torch.__version__, "per_run": runs,
        "environment": environment(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"{result['correct']} of {result['runs']} runs finish with correct outputs ({result['time_s']:.0f} s); "
          f"{args.out}")


if __name__ == "__main__":
    main()
