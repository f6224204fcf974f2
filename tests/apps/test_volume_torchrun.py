"""``fhcnn volume`` under ``torchrun`` (Gloo on the CPU): 2 data-parallel processes, and 4
processes as 2 replicas of a volume split in space over 2, train the same network as one process
with the same global batch (the class-weighted cross entropy, the Dice term and the unlabelled-voxel
term are those of the whole batch, not a mean of each process's), every process takes its part in
training the U-Net baseline, and rank 0 writes one run folder. A batch the processes cannot share
is refused in one line before the folder exists."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
from safetensors.numpy import load_file

from fhcnn.cli import main
from fhcnn.training.distributed import launch_env
from tests._launch import started_ranks, torchrun, torchrun_command
from tests.apps._volumes import write_tiny_volume

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

# class weights (balance) and the Dice term: both differ between a per-process mean and the
# whole batch's loss when the processes hold different numbers of labelled voxels of each class
SETS = ["--set", "data.dice=1", "--set", "data.balance=0.5", "--set", "data.batch_size=4"]


@pytest.fixture(scope="module")
def vol(tmp_path_factory):
    return write_tiny_volume(tmp_path_factory.mktemp("voltorchrun"))


def _args(vol: Path, out: Path) -> list[str]:
    return ["volume", str(vol / "c0.npy"), str(vol / "c1.npy"), "--labels", str(vol / "lab.npy"),
            "--eval-labels", str(vol / "truth.npy"), "--out", str(out), "--config", "volume-tiny", "--quiet", *SETS]


UNLABELLED = ["--set", "data.unlabelled_start=0", "--set", "data.unlabelled_full=0"]


EVERY = ["--set", "data.eval_every=2"]
# the runs of the one 2-process launch (:func:`launched`): name -> fhcnn's arguments past _args
RUNS: dict[str, list[str]] = {
    "entropy": ["--set", "data.unlabelled=entropy", *UNLABELLED],
    "pseudo": ["--set", "data.unlabelled=pseudo", "--set", "data.pseudo_threshold=0.4", *UNLABELLED],
    "recorded": EVERY,
    "finished": ["--set", "volume.baselines="],
}

# Runs fhcnn once per run of the JSON file sys.argv[1] ([name, out, argv, cwd] lists) in one process
# group, in order, each process in the folder cwd with {rank} replaced by its rank (null: where it
# runs); records, in the run's record-<name>.jsonl beside the JSON file, every training
# (the network's class), every prediction of a trained network (its arch, its spill folder) and
# the exit code, with the rank of the process that made it; rank 0 keeps a copy of each finished
# run's metrics.json as metrics-<name>.json (a later run may resume the same folder). A refusal is
# printed by every process at once (no wait for torchrun to end the others: the launch goes on).
_LAUNCH = r"""
import importlib, json, os, shutil, sys
from pathlib import Path
import torch.distributed as dist
from fhcnn.training import Trainer
from fhcnn.training.distributed import exit_program
engine_train = importlib.import_module("fhcnn.engine.train")
runs_file = Path(sys.argv[1])
fit, predict_into = Trainer.fit, engine_train.SegmentationResult.predict_into
current = [""]

def note(**what):
    with open(runs_file.parent / f"record-{current[0]}.jsonl", "a") as f:
        f.write(json.dumps({"rank": os.environ["RANK"], **what}) + "\n")

def fitting(self, *args, **kwargs):
    note(what="train", parameters=sum(p.numel() for p in self.model.parameters()))
    out = fit(self, *args, **kwargs)
    if current[0] == "changed" and os.environ["RANK"] == "0":  # the labels saved again meanwhile
        import numpy as np
        labels = runs_file.parent / "changed-input" / "lab.npy"
        np.save(labels, np.where(np.load(labels) == 1, 2, np.load(labels)).astype("uint8"))
    return out

def predicting(self, *args, **kwargs):
    note(what="predict", arch=self.config.model.arch, work=str(kwargs.get("work")))
    return predict_into(self, *args, **kwargs)

Trainer.fit, engine_train.SegmentationResult.predict_into = fitting, predicting
import fhcnn.outcome
from fhcnn.cli import main
fhcnn.outcome.REFUSAL_GRACE_S = 0.0
home = os.getcwd()
for name, out, argv, cwd in json.loads(runs_file.read_text()):
    current[0] = name
    os.chdir(cwd.format(rank=os.environ["RANK"]) if cwd else home)
    code = main(argv)
    note(what="exit", code=code)
    if os.environ["RANK"] == "0" and code == 0:
        shutil.copy(Path(out) / "metrics.json", runs_file.parent / f"metrics-{name}.json")
    dist.barrier()
exit_program(0)
"""


@pytest.fixture(scope="module")
def launched(vol, tmp_path_factory) -> Path:
    """One ``torchrun`` launch of 2 data-parallel processes that runs, in one process group, each
    run of :data:`RUNS` into ``ROOT/<name>`` and then ``finished`` again with ``--resume``
    (``ROOT/metrics-finished.json`` keeps its first metrics.json): one launch's startup (seconds
    on a loaded machine) instead of one per run; ``TMPDIR`` is ``ROOT/tmp``. The tests read it."""
    root = tmp_path_factory.mktemp("launched")
    (root / "tmp").mkdir()
    runs = [[name, str(root / name), _args(vol, root / name) + extra, None] for name, extra in RUNS.items()]
    runs.append(["resumed", str(root / "finished"), runs[-1][2] + ["--resume"], None])
    # labels named by a relative path that is another file for rank 1 (its copy on another
    # machine, or the file replaced between the processes' reads): 40 voxels of class 1 are 2
    # (mixed), every voxel of class 1 is 2 (mixed-classes)
    labels = np.load(vol / "lab.npy")
    for name, relabel in (("mixed", 40), ("mixed-classes", None)):
        for rank in (0, 1):
            (root / name / f"rank{rank}").mkdir(parents=True)
            other = labels.copy()
            if rank:
                other[tuple(np.argwhere(labels == 1)[:relabel].T)] = 2
            np.save(root / name / f"rank{rank}" / "lab.npy", other)
        mixed = _args(vol, root / name / "out")
        mixed[mixed.index("--labels") + 1] = "lab.npy"
        runs.append([name, str(root / name / "out"), mixed, str(root / name / "rank{rank}")])
    # labels rank 0 saves again once the network is trained (the launch script does it)
    (root / "changed-input").mkdir()
    changed = _args(vol, root / "changed")
    changed[changed.index("--labels") + 1] = str(root / "changed-input" / "lab.npy")
    runs.append(["changed", str(root / "changed"), changed, None])
    (root / "runs.json").write_text(json.dumps(runs))
    (root / "launch.py").write_text(_LAUNCH)
    repo = Path(__file__).parents[2]
    env = launch_env(pythonpath=[repo / "src", repo], TMPDIR=str(root / "tmp"))

    def clean() -> None:
        for name in [*RUNS, "changed"]:
            shutil.rmtree(root / name, True)
        shutil.copyfile(vol / "lab.npy", root / "changed-input" / "lab.npy")
        for out in root.glob("mixed*/out"):
            shutil.rmtree(out)
        for p in [*root.glob("record-*.jsonl"), *root.glob("metrics-*.json")]:
            p.unlink()

    clean()
    proc = torchrun(2, [str(root / "launch.py"), str(root / "runs.json")], clean=clean, env=env)
    (root / "launch.err").write_text(proc.stderr)
    return root


def test_replicas_of_a_split_train_and_score_as_one(vol, tmp_path) -> None:
    single, out = tmp_path / "single", tmp_path / "out"
    assert main(_args(vol, single)) == 0
    split = ["--set", "parallel.space=2"]
    torchrun(4, ["-m", "fhcnn", *_args(vol, out), *split], clean=lambda: shutil.rmtree(out, True))
    _assert_as_one(single, out, f"4 processes {split}")


@pytest.mark.parametrize("name", ["entropy", "pseudo"], ids=["2, unlabelled entropy", "2, unlabelled pseudo-labels"])
def test_processes_train_and_score_as_one(vol, launched, tmp_path, name) -> None:
    single = tmp_path / "single"
    assert main(_args(vol, single) + RUNS[name]) == 0
    _assert_as_one(single, launched / name, f"2 processes {RUNS[name]}")


def _assert_as_one(single: Path, out: Path, what: str) -> None:
    """The run in ``out`` (several processes) trained and scored as the one-process run in
    ``single``: the same weights, prediction, losses of the whole batch, baselines and held-out
    scores, one folder written by rank 0 without scratch left."""
    ref, got = load_file(str(single / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(ref) == set(got)
    diff = max(float(np.abs(ref[k].astype(np.float64) - got[k]).max()) for k in ref)
    print(f"{what}: max |weight difference| {diff:.2e}")
    assert diff < 1e-6, f"{what}: weights differ from one process by {diff:.3e}"
    pa, pb = np.load(single / "prediction.npy"), np.load(out / "prediction.npy")
    assert np.mean(pa == pb) >= 0.999  # argmax ties may flip under float32 rounding, nothing more
    m1, mn = (json.loads((f / "metrics.json").read_text()) for f in (single, out))
    for key in ("loss", "unlabelled_entropy", "pseudo_fraction"):  # the whole batch's values
        want = [h[key] for h in m1["history"] if key in h]
        assert [h[key] for h in mn["history"] if key in h] == pytest.approx(want, rel=1e-5)
        assert want or key != "loss"
    assert set(mn["baselines"]) == {"copy", "forest", "unet"}  # the U-Net trained by every process
    for name in ("copy", "forest"):
        assert mn["baselines"][name]["iou"] == m1["baselines"][name]["iou"]
    assert mn["baselines"]["unet"]["miou"] == pytest.approx(m1["baselines"]["unet"]["miou"], abs=2e-3)
    # the held-out scores of the whole volume (split: each process scored its own slab, summed)
    assert mn["miou"] == pytest.approx(m1["miou"], abs=2e-3)
    assert not any(p.name.startswith("rank") for p in out.iterdir())  # one folder, written by rank 0
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())  # no scratch array left


def test_a_batch_the_unet_processes_cannot_share_is_refused_first(vol, tmp_path) -> None:
    # 2 processes splitting the volume: fhcnn is one replica with a batch of 1, but the U-Net
    # baseline (never split) trains data parallel on both processes
    out = tmp_path / "out"
    cmd = torchrun_command(2, ["-m", "fhcnn", *_args(vol, out), "--set", "data.batch_size=1",
                               "--set", "parallel.space=2"])
    proc = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors  # every process refuses it; rank 0 prints it, torchrun ends the others
    assert "exitcode  : 2" in text  # rank 0's
    line = errors.pop()
    assert "the U-Net baseline" in line and "data.batch_size=2" in line and "volume.baselines=copy,forest" in line
    assert not out.exists()


def test_a_split_run_finishes_each_slab_on_its_process(tmp_path) -> None:
    # 80 voxels deep: two slabs along D at a multiple of the 64-voxel output chunks, [0, 64) and
    # [64, 80); each process writes its slab of the prediction and of the probabilities, rank 0
    # puts prediction.nii.gz together with the input's affine; the files and the held-out scores
    # equal one process's
    nib = pytest.importorskip("nibabel")
    import zarr

    from fhcnn.data.synthetic_volumes import generate_volume

    shape = (80, 16, 16)
    image, truth = generate_volume("cells", shape, seed=2, dtype="uint8")
    labels = np.full(shape, 255, np.uint8)
    labels[[5, 40, 70]] = truth[[5, 40, 70]]
    affine = np.diag([0.5, 0.8, 0.8, 1.0])
    affine[:3, 3] = (-10.0, 4.0, 7.5)
    for name, arr in (("img", image), ("lab", labels), ("truth", truth)):
        nib.save(nib.Nifti1Image(arr, affine), str(tmp_path / f"{name}.nii.gz"))
    single, out = tmp_path / "single", tmp_path / "out"

    def args(folder: Path) -> list[str]:
        return ["volume", str(tmp_path / "img.nii.gz"), "--labels", str(tmp_path / "lab.nii.gz"),
                "--eval-labels", str(tmp_path / "truth.nii.gz"), "--out", str(folder), "--config", "volume-tiny",
                "--quiet", "--save-probs", "--set", "volume.baselines=copy"]

    assert main(args(single)) == 0
    torchrun(2, ["-m", "fhcnn", *args(out), "--set", "parallel.space=2"], clean=lambda: shutil.rmtree(out, True))
    m1, mn = (json.loads((f / "metrics.json").read_text()) for f in (single, out))
    assert "prediction_slabs" not in m1
    assert mn["prediction_slabs"] == [{"origin": [0, 0, 0], "shape": [64, 16, 16]},
                                      {"origin": [64, 0, 0], "shape": [16, 16, 16]}]
    pa, pb = (nib.load(str(f / "prediction.nii.gz")) for f in (single, out))
    stored = nib.load(str(tmp_path / "img.nii.gz")).affine  # the input's, as its header holds it
    assert np.array_equal(pb.affine, stored) and np.array_equal(pa.affine, stored) and pb.shape == shape
    assert np.mean(np.asarray(pa.dataobj) == np.asarray(pb.dataobj)) >= 0.999
    assert mn["miou"] == pytest.approx(m1["miou"], abs=2e-3)
    assert mn["baselines"]["copy"]["iou"] == m1["baselines"]["copy"]["iou"]
    qa, qb = (np.asarray(zarr.open_array(str(f / "probabilities.zarr"), mode="r"), np.float32) for f in (single, out))
    assert qa.shape == qb.shape == (3, *shape) and np.abs(qa - qb).max() < 2e-3
    assert qb[:, 64:].max() > 0  # the second process's slab is there
    placed = zarr.open_array(str(out / "probabilities.zarr"), mode="r").attrs  # the shared array keeps the grid
    assert placed["affine"] == stored.tolist() and placed["spacing"] == pytest.approx([0.5, 0.8, 0.8])
    assert placed["axis_names"][0] == "class"
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())  # no scratch array left


def test_a_finished_run_resumed_measures_each_process_share_of_the_batch(launched) -> None:
    # with nothing left to train, the activation memory was measured on the whole global batch
    # instead of this process's share: metrics.json said twice the uninterrupted run's bytes
    first = json.loads((launched / "metrics-finished.json").read_text())
    again = json.loads((launched / "metrics-resumed.json").read_text())
    assert first["activation_bytes"] > 0
    assert again["activation_bytes"] == first["activation_bytes"]


@pytest.mark.parametrize("name", ["mixed", "mixed-classes"])
def test_processes_that_read_other_inputs_are_refused_before_out_exists(launched, name) -> None:
    # rank 1 read other labels at the same path than rank 0: the run trained on both (the label
    # scan and the batches mixed), recorded rank 0's fingerprints and finished with exit code 0,
    # another network than either file's (mixed). Every process refuses it now, before OUT exists,
    # and before the shared label scan: rank 1's labels without class 1 were refused as rank 0's
    # lab.npy having "no voxel of class 1", true of neither file (mixed-classes)
    codes = [json.loads(line) for line in (launched / f"record-{name}.jsonl").read_text().splitlines()]
    assert sorted((c["rank"], c["what"], c.get("code")) for c in codes) == [("0", "exit", 2), ("1", "exit", 2)]
    assert not (launched / name / "out").exists()
    errors = [line for line in (launched / "launch.err").read_text().splitlines()
              if line.startswith("error: labels lab.npy")]
    assert len(errors) == 4 and all(line.startswith("error: labels lab.npy: rank 1 of 2 reads other contents there "
                                                    "than rank 0 (") for line in errors), errors


def test_labels_saved_again_during_training_stop_every_process(launched) -> None:
    # rank 0 saved the labels again once the network was trained: the processes went on to the
    # baseline and the prediction with the new labels, exit 0. Every process stops after the
    # training (rank 0 compared them and said so to the others), exit 1, with one line
    codes = [json.loads(line) for line in (launched / "record-changed.jsonl").read_text().splitlines()]
    assert sorted((c["rank"], c["what"], c.get("code")) for c in codes if c["what"] != "train") == \
        [("0", "exit", 1), ("1", "exit", 1)]
    assert sum(c["what"] == "train" for c in codes) == 2  # the U-Net baseline was never trained
    errors = [line for line in (launched / "launch.err").read_text().splitlines() if "changed during" in line]
    assert len(errors) == 2 and all(line.startswith(f"error: labels {launched / 'changed-input' / 'lab.npy'} "
                                                    f"changed during training") for line in errors), errors
    assert not (launched / "changed" / "prediction.npy").exists()


def test_a_refusal_under_torchrun_is_printed_by_rank_0_and_after_a_wait_by_the_others(vol, tmp_path, monkeypatch,
                                                                                    capsys) -> None:
    # every process refused the missing input with the same line: the user read it once per
    # process; rank 0 prints it, the others wait (torchrun ends them once rank 0 has exited)
    out = tmp_path / "out"
    args = _args(vol, out)
    args[1] = str(vol / "missing.npy")
    import fhcnn.outcome as outcome

    monkeypatch.setattr(outcome, "REFUSAL_GRACE_S", 0.2)
    for rank, wait in (("1", 0.2), ("0", 0.0)):  # the launch's environment, in this process
        monkeypatch.setenv("RANK", rank)
        t0 = time.perf_counter()
        assert main(args) == 2
        assert (time.perf_counter() - t0 >= wait) and not out.exists()
        assert len(capsys.readouterr().err.splitlines()) == 1  # a process that meets it alone says it
    # a real launch: test_a_batch_the_unet_processes_cannot_share_is_refused_first


def test_a_process_that_waits_to_be_ended_after_a_refusal_ends_without_a_word(vol, tmp_path, monkeypatch,
                                                                              capsys) -> None:
    # under torchrun a process that has started training answers SIGTERM with a line naming the
    # checkpoint; one that meets a refusal waits for torchrun to end it after rank 0's line, and
    # then goes without a second line: SIGTERM's default action again
    import signal

    import fhcnn.outcome as outcome
    from fhcnn.training import distributed

    args = _args(vol, tmp_path / "out")
    args[1] = str(vol / "missing.npy")
    monkeypatch.setattr(outcome, "REFUSAL_GRACE_S", 0.0)
    monkeypatch.setenv("RANK", "1")
    previous = signal.signal(signal.SIGTERM, distributed._on_terminate)  # as a run under torchrun sets it
    try:
        assert main(args) == 2
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(capsys.readouterr().err.splitlines()) == 1

def test_data_parallel_ranks_other_than_0_train_and_predict_nothing(vol, launched, tmp_path) -> None:
    # 2 data-parallel processes: rank 1 ran, after training, the end-of-training evaluation of
    # the whole volume (spilling into TMPDIR; its scores went nowhere) and every window of
    # fhcnn's and the U-Net's predictions, of which it finished nothing. Now both train fhcnn and
    # the U-Net, rank 0 alone predicts: the held-out scoring at steps 2 and 3, fhcnn, the U-Net;
    # the scores equal one process's, nothing is left in TMPDIR or OUT's scratch
    # (the launch's TMPDIR served every run of it: none left anything there)
    single, out, record, tmpdir = tmp_path / "single", launched / "recorded", launched / "record-recorded.jsonl", \
        launched / "tmp"
    assert main(_args(vol, single) + EVERY) == 0
    seen = [json.loads(line) for line in record.read_text().splitlines()]
    trained = [(s["rank"], s["parameters"]) for s in seen if s["what"] == "train"]
    by_rank = {r: sorted(n for q, n in trained if q == r) for r in ("0", "1")}
    assert by_rank["0"] == by_rank["1"] and len(set(by_rank["0"])) == 2, trained  # fhcnn and the U-Net
    predicted = [s for s in seen if s["what"] == "predict"]
    assert [(s["rank"], s["arch"]) for s in predicted] == [("0", "hyperbolic")] * 3 + [("0", "unet")], predicted
    assert all(Path(s["work"]).parent == out for s in predicted), predicted  # OUT's scratch, not TMPDIR
    assert not [p.name for p in tmpdir.iterdir() if p.name.startswith("fhcnn-")]
    _assert_as_one(single, out, "2 data-parallel processes")  # and no scratch left in OUT
    m1, mn = (json.loads((f / "metrics.json").read_text()) for f in (single, out))
    assert [h.get("miou") for h in mn["history"]] == pytest.approx([h.get("miou") for h in m1["history"]], abs=2e-3)
    assert mn["baselines"]["unet"]["train_time_s"] > 0 and mn["baselines"]["unet"]["time_s"] > 0


# Runs fhcnn (sys.argv[1:]); the process of rank 1 kills itself (SIGKILL) as it joins the
# processes' sum of the held-out scores after its slab of a split prediction.
_KILLED_IN_GATHER = r"""
import os, signal, sys
from fhcnn.apps.volume import pipeline
from fhcnn.cli import main
from fhcnn.training.distributed import exit_program
gather = pipeline._Outputs.gather

def killed(self):
    if os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return gather(self)

pipeline._Outputs.gather = killed
exit_program(main(sys.argv[1:]))
"""


def test_a_process_lost_after_a_split_prediction_leaves_no_scratch(vol, tmp_path) -> None:
    # split in space, rank 1 lost after its slab of the prediction, as the processes sum their
    # scores: rank 0 stopped with its line but left the slabs' scratch array (and the
    # probabilities' folder) in OUT, a prediction's size of hidden files, for good unless the run
    # was resumed; a lost process during the prediction itself left nothing
    out, script = tmp_path / "out", tmp_path / "killed.py"
    script.write_text(_KILLED_IN_GATHER)
    args = [*_args(vol, out), "--save-probs", "--set", "parallel.space=2", "--set", "data.batch_size=2",
            "--set", "volume.baselines=copy", "--set", "train.peer_timeout=10"]
    with started_ranks([str(script), *args]) as procs:
        rc0, (_, err0) = procs[0].wait(timeout=120), procs[0].communicate()
    assert rc0 == 1 and procs[1].returncode == -9
    (line,) = [line for line in err0.splitlines() if line.startswith("error:")]
    assert line.startswith("error: rank 0: rank 1 of 2 stopped answering") and "step-000003" in line, line
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock") == []
    assert json.loads((out / "run.json").read_text())["scratch"] == []



# Runs fhcnn (sys.argv[1:]); with FULL set, the file system of OUT fills up (ENOSPC) as the process
# of rank 1 writes its slab of a split prediction into the array the processes share there
# (FULL=busy: as rank 1 opens that array, while rank 0 spends a minute in no wait for it).
_FULL_IN_SLAB = r"""
import errno, os, sys, time
from fhcnn.apps.volume import pipeline
from fhcnn.cli import main
from fhcnn.engine import store
from fhcnn.training.distributed import exit_program
write, sinks = store.LabelSink.write, pipeline._Outputs.sinks

def full(self, box, prob):
    if os.environ.get("FULL") and os.environ["RANK"] == "1":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write(self, box, prob)

def busy(self, result):
    made = sinks(self, result)
    if os.environ["RANK"] == "1":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    time.sleep(60)
    return made

store.LabelSink.write = full
if os.environ.get("FULL") == "busy":
    pipeline._Outputs.sinks = busy
exit_program(main(sys.argv[1:]))
"""


def test_a_full_disk_in_a_split_prediction_names_the_cause_and_checkpoint_on_every_process(vol, tmp_path,
                                                                                          monkeypatch) -> None:
    # rank 1 of a run split in space met a full disk writing its slab: its line named no
    # checkpoint to go on from ("cannot write: No space left on device (ENOSPC); this run
    # stopped": only rank 0 holds the run folder), and rank 0's named rank 1 as a process that
    # stopped answering, not the full disk. Each names both now, and --resume (once there is
    # room) ends as a run never stopped
    script, out, whole = tmp_path / "full.py", tmp_path / "out", tmp_path / "whole"
    script.write_text(_FULL_IN_SLAB)

    def run(folder: Path, *more: str) -> list[tuple[int, str]]:
        args = [*_args(vol, folder), "--set", "parallel.space=2", "--set", "data.batch_size=2",
                "--set", "volume.baselines=", "--set", "train.peer_timeout=20", *more]
        with started_ranks([str(script), *args]) as procs:
            return [(p.wait(timeout=120), p.communicate()[1]) for p in procs]

    assert [rc for rc, _ in run(whole)] == [0, 0]
    monkeypatch.setenv("FULL", "1")
    (rc0, err0), (rc1, err1) = run(out)
    monkeypatch.delenv("FULL")
    full, ckpt = f"cannot write in {out.resolve()}: {os.strerror(errno.ENOSPC)} (ENOSPC)", \
        out.resolve() / "checkpoints" / "step-000003"
    room = "free space on that file system (or make it writable), then continue with --resume"
    assert (rc1, err1) == (1, f"error: {full}; this run stopped after step 3; the last intact checkpoint is "
                              f"{ckpt}: {room}\n")
    assert (rc0, err0) == (1, f"error: rank 0: rank 1 of 2 stopped: {full}; this process stops after step 3; "
                              f"the last intact checkpoint is {ckpt}: {room}\n")
    assert json.loads((out / "run.json").read_text())["scratch"] == []
    assert not (out / "prediction.npy").exists()
    assert [rc for rc, _ in run(out, "--resume")] == [0, 0]
    for name in ("model.safetensors", "prediction.npy"):
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name


def test_a_process_torchrun_ends_after_a_full_disk_on_another_names_the_cause_and_checkpoint(vol, tmp_path) -> None:
    # torchrun ended rank 0 (SIGTERM) as rank 1 failed on a full disk, rank 0 busy in no wait
    # for it: its line said another process "failed or was killed", not that the disk was full
    script, out = tmp_path / "full.py", tmp_path / "out"
    script.write_text(_FULL_IN_SLAB)
    args = [*_args(vol, out), "--set", "parallel.space=2", "--set", "data.batch_size=2",
            "--set", "volume.baselines=", "--set", "train.peer_timeout=20"]
    repo = Path(__file__).parents[2]
    proc = torchrun(2, [str(script), *args], env=launch_env(pythonpath=[repo / "src", repo], FULL="busy"),
                    clean=lambda: shutil.rmtree(out, True), done=lambda p: "ended by SIGTERM" in p.stderr)
    full, ckpt = f"cannot write in {out.resolve()}: {os.strerror(errno.ENOSPC)} (ENOSPC)", \
        out.resolve() / "checkpoints" / "step-000003"
    room = "free space on that file system (or make it writable), then continue with --resume"
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {full}; this run stopped after step 3; the last intact checkpoint is {ckpt}: {room}",
                     f"error: rank 0: ended by SIGTERM (torchrun's, as rank 1 of 2 stopped: {full}); this process "
                     f"stops after step 3; the last intact checkpoint is {ckpt}: {room}"], lines
