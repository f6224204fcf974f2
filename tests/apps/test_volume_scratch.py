"""Scratch of a run folder (temporary files and folders fhcnn makes there and removes itself):
recorded in ``run.json`` before it exists, so that what a run killed with SIGKILL leaves is
removed by the next run of the folder (``--resume`` or ``--overwrite``, whatever that run
writes), and nothing of anyone else's is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fhcnn import atomic
from fhcnn.cli import main
from fhcnn.errors import InputError
from fhcnn.rundir import RunFolder, prepare_output_dir
from tests.apps._volumes import write_tiny_volume

TINY = ["--config", "volume-tiny", "--quiet"]

# Runs ``fhcnn volume`` and kills its own process (SIGKILL: no finally block, no atexit) at one
# point: "copy" in the one-time copy of a compressed input, once the staging file holds its
# first box (the copy is forced through the staging file); "predict" once the prediction's
# sinks (prediction file, probabilities) exist; "place" once the first file of the
# probabilities has been moved into probabilities.zarr (its folders made and recorded).
_KILLER = r"""
import os, signal, sys
import fhcnn.data.lazy as lazy
import fhcnn.data.lazy.copies as copies
from fhcnn.cli import main

where, argv = sys.argv[1], sys.argv[2:]
if where == "copy":
    copy = lazy.copy_to_zarr
    lazy.copy_to_zarr = lambda *a, **k: copy(*a, **{**k, "max_bytes": 1024})  # copy_input imports it when called
    copies.release_pages = lambda view: os.kill(os.getpid(), signal.SIGKILL)  # where copy_to_zarr reads it
elif where == "place":
    replace = os.replace
    def killed(src, dst):
        replace(src, dst)
        if os.sep + "probabilities.zarr" + os.sep in str(dst):
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = killed
else:
    import fhcnn.apps.volume.pipeline as pipeline
    sinks = pipeline._Outputs.sinks
    def killed(self, result):
        made = sinks(self, result)
        os.kill(os.getpid(), signal.SIGKILL)
    pipeline._Outputs.sinks = killed
sys.exit(main(argv))
"""


@pytest.fixture(scope="module")
def vol(tmp_path_factory):
    root = write_tiny_volume(tmp_path_factory.mktemp("scratch"))
    nib = pytest.importorskip("nibabel")
    for name in ("c0", "lab"):
        nib.save(nib.Nifti1Image(np.load(root / f"{name}.npy"), np.eye(4)), str(root / f"{name}.nii.gz"))
    return root


def _killed_run(where: str, args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _KILLER, where, *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]


def _hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock")


@pytest.mark.parametrize("again", ["--resume", "--overwrite with another input"])
def test_a_run_killed_in_the_one_time_copy_leaves_nothing_after_the_next_run(vol, tmp_path, again):
    out = tmp_path / "out"
    args = ["volume", str(vol / "c0.nii.gz"), "--labels", str(vol / "lab.nii.gz"), "--out", str(out)] + TINY
    _killed_run("copy", args)
    left = _hidden(out)
    assert any(n.endswith(".zarr.tmp.staging") for n in left) and any(n.endswith(".zarr.tmp") for n in left), left
    assert set(json.loads((out / "run.json").read_text())["scratch"]) == set(left)
    mine = out / ".c0.zarr.tmp.notes"  # a file of the user's beside them: never removed
    mine.write_text("mine")
    if again == "--resume":
        assert main(args + ["--resume"]) == 0
    else:  # an uncompressed input: this run makes no copy at all
        assert main(["volume", str(vol / "c0.npy"), "--labels", str(vol / "lab.npy"), "--out", str(out),
                     "--overwrite"] + TINY) == 0
    assert _hidden(out) == [mine.name]
    assert json.loads((out / "run.json").read_text())["scratch"] == []


@pytest.mark.parametrize("flag", ["--resume", "--overwrite", "--overwrite without --save-probs"])
def test_a_run_killed_while_it_predicts_leaves_nothing_after_the_next_run(vol, tmp_path, flag):
    # the prediction file under its temporary name (an uncompressed .nii, memory-mapped) and the
    # probabilities' zarr folder; the next run removes them, even one that writes no probabilities
    out = tmp_path / "out"
    args = ["volume", str(vol / "c0.nii.gz"), "--labels", str(vol / "lab.nii.gz"), "--out", str(out),
            "--save-probs"] + TINY
    _killed_run("predict", args)
    left = _hidden(out)
    assert [n for n in left if n.startswith(".prediction.nii.")] and \
        [n for n in left if n.startswith(".probabilities.zarr.")], left
    again = args + [flag.split()[0]]
    if "without" in flag:
        again.remove("--save-probs")
    assert main(again) == 0
    assert _hidden(out) == []
    assert (out / "prediction.nii.gz").is_file()


def test_an_overwrite_removes_the_empty_folders_fhcnn_made_and_no_other(vol, tmp_path):
    # a run killed while it moves the probabilities into probabilities.zarr: its folders are made
    # (and recorded), one file is in. An --overwrite without --save-probs removed that file and
    # the folders that held it, and left the other (empty) folders of probabilities.zarr for good
    out = tmp_path / "out"
    args = ["volume", str(vol / "c0.npy"), "--labels", str(vol / "lab.npy"), "--out", str(out)] + TINY
    _killed_run("place", args + ["--save-probs"])
    made = [p for p in (out / "probabilities.zarr").rglob("*") if p.is_dir()]
    assert len(made) >= 3 and len([p for p in (out / "probabilities.zarr").rglob("*") if p.is_file()]) == 1
    (out / "my-empty").mkdir()  # the user's empty folders, beside and inside a folder fhcnn made
    (out / "checkpoints" / "my-empty").mkdir()
    assert main(args + ["--overwrite"]) == 0
    assert not (out / "probabilities.zarr").exists()
    assert (out / "my-empty").is_dir() and (out / "checkpoints" / "my-empty").is_dir()
    dirs = json.loads((out / "run.json").read_text())["dirs"]
    assert not [d for d in dirs if d.startswith("probabilities.zarr")] and "checkpoints" in dirs


def test_a_run_killed_while_it_writes_prediction_npy_leaves_nothing_after_an_overwrite(vol, tmp_path):
    # prediction.npy is written in place under its temporary name (a memory map as large as the
    # volume); an --overwrite whose prediction is another file (a NIfTI input) removes it
    out = tmp_path / "out"
    _killed_run("predict", ["volume", str(vol / "c0.npy"), "--labels", str(vol / "lab.npy"), "--out", str(out)]
                + TINY)
    left = _hidden(out)
    assert [n for n in left if n.startswith(".prediction.npy.") and n.endswith(".tmp.npy")], left
    assert main(["volume", str(vol / "c0.nii.gz"), "--labels", str(vol / "lab.nii.gz"), "--out", str(out),
                 "--overwrite"] + TINY) == 0
    assert _hidden(out) == []
    assert not (out / "prediction.npy").exists() and (out / "prediction.nii.gz").is_file()


def _run_folder(out: Path, **flags) -> RunFolder:
    prepare_output_dir(out, tool="volume", **flags)
    run = RunFolder.active
    assert run is not None
    return run


def test_scratch_is_recorded_before_it_exists_and_forgotten_once_gone(tmp_path):
    out = tmp_path / "out"
    run = _run_folder(out)
    try:
        with atomic.scratch(out / ".a.tmp") as p:
            assert json.loads((out / "run.json").read_text())["scratch"] == [".a.tmp"]
            assert not p.exists()  # recorded first, made by the caller
            p.mkdir()
            (p / "chunk").write_bytes(b"x")
        assert not p.exists() and run.scratch == set()
        assert json.loads((out / "run.json").read_text())["scratch"] == []
        name = atomic.scratch_name(out, ".b.")
        assert name.parent == out and name.name.startswith(".b.") and name.name.endswith(".tmp")
        assert len(name.name) == len(".b.") + 8 + len(".tmp")
    finally:
        RunFolder.deactivate()


def test_only_recorded_scratch_is_removed_and_never_through_a_link(tmp_path):
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("keep")
    run = _run_folder(out)
    for name in (".killed.tmp", ".linked.tmp"):
        atomic.begin_scratch(out / name)  # a run killed before end_scratch
    (out / ".killed.tmp").mkdir()
    (out / ".killed.tmp" / "chunk").write_bytes(b"x")
    (out / ".linked.tmp").symlink_to(elsewhere, target_is_directory=True)  # put there by someone
    (out / ".theirs.tmp").write_text("theirs")  # a temporary name, but never recorded
    RunFolder.deactivate()
    assert run.scratch == {".killed.tmp", ".linked.tmp"}
    _run_folder(out, overwrite=True)
    RunFolder.deactivate()
    assert not (out / ".killed.tmp").exists()
    assert (out / ".linked.tmp").is_symlink() and (elsewhere / "keep").read_text() == "keep"
    assert (out / ".theirs.tmp").read_text() == "theirs"
    assert json.loads((out / "run.json").read_text())["scratch"] == []


def test_scratch_never_takes_the_name_of_a_file_fhcnn_did_not_write(tmp_path):
    out = tmp_path / "out"
    _run_folder(out)
    try:
        (out / ".theirs.tmp").write_text("theirs")
        with pytest.raises(InputError, match="not written by this run"):
            atomic.begin_scratch(out / ".theirs.tmp")
        assert (out / ".theirs.tmp").read_text() == "theirs"
        assert json.loads((out / "run.json").read_text())["scratch"] == []
    finally:
        RunFolder.deactivate()


def test_every_write_in_a_run_folder_is_scratch_until_it_takes_its_name(tmp_path):
    out = tmp_path / "out"
    _run_folder(out)
    try:
        with atomic.atomic_path(out / "metrics.json") as tmp:
            assert json.loads((out / "run.json").read_text())["scratch"] == [tmp.name]
            tmp.write_text("{}")
        assert (out / "metrics.json").read_text() == "{}" and not tmp.exists()
        assert json.loads((out / "run.json").read_text())["scratch"] == []
        with pytest.raises(ValueError), atomic.atomic_path(out / "metrics.json") as tmp:
            tmp.write_text("torn")
            raise ValueError
        assert not tmp.exists() and (out / "metrics.json").read_text() == "{}"
        assert json.loads((out / "run.json").read_text())["scratch"] == []
    finally:
        RunFolder.deactivate()


def test_scratch_outside_a_run_folder_is_only_removed(tmp_path):
    with atomic.scratch(tmp_path / "s.tmp") as p:
        p.write_bytes(b"x")
    assert not p.exists()


@pytest.mark.parametrize("scratch", ["ab", 5, [5], {"a": 1}])
def test_a_record_whose_scratch_is_not_a_list_of_names_is_damaged_and_nothing_is_removed(tmp_path, scratch):
    # "ab" read as a list would name the files a and b: files of the user's, never recorded
    out = tmp_path / "out"
    _run_folder(out)
    RunFolder.deactivate()
    record = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**record, "scratch": scratch}))
    for name in ("a", "b"):
        (out / name).write_text("mine")
    for flags in ({"overwrite": True}, {"resume": True}):
        with pytest.raises(InputError, match="damaged.*'scratch' is not a list of names"):
            _run_folder(out, **flags)
        RunFolder.deactivate()
        assert (out / "a").read_text() == "mine" and (out / "b").read_text() == "mine"


def test_a_folder_moved_into_place_is_recorded_before_its_files_take_their_names(tmp_path, monkeypatch):
    # a zarr array written under a temporary name (the one-time copy, the probabilities) is moved
    # in file by file; a process that stops after the first move leaves no file the record does
    # not list, so the next --overwrite removes it (before: left in OUT, unlisted, for good)
    out = tmp_path / "out"
    _run_folder(out)
    tmp = out / ".probabilities.zarr.abcd1234.tmp"
    try:
        atomic.begin_scratch(tmp)
        for name in ("zarr.json", "c/0/0", "c/1/0"):
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(name)
        replace, moved = os.replace, []

        def killed(src, dst):  # the run's record is written with os.replace too
            if Path(src).is_relative_to(tmp):
                if moved:
                    raise KeyboardInterrupt
                moved.append(dst)
            replace(src, dst)

        monkeypatch.setattr(atomic.os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            atomic.place_tree(tmp, out / "probabilities.zarr")
    finally:
        RunFolder.deactivate()
    monkeypatch.undo()
    written = json.loads((out / "run.json").read_text())["written"]
    there = [p for p in (out / "probabilities.zarr").rglob("*") if p.is_file()]
    assert there and all(p.relative_to(out).as_posix() in written for p in there), written
    _run_folder(out, overwrite=True)
    RunFolder.deactivate()
    assert not [p for p in out.rglob("*") if p.is_file() and p.name not in ("run.json",)]


def test_an_overwrite_removes_no_empty_folder_through_a_link(tmp_path):
    # folders fhcnn made, recorded; one of them replaced by a link to a folder of the user's
    # that holds an empty folder of the same name as a recorded one: never removed through it
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    _run_folder(out)
    try:
        atomic.make_dir(out / "a" / "b")
        atomic.make_dir(out / "c" / "d")
    finally:
        RunFolder.deactivate()
    (elsewhere / "b").mkdir(parents=True)
    (out / "a" / "b").rmdir()
    (out / "a").rmdir()
    (out / "a").symlink_to(elsewhere, target_is_directory=True)
    _run_folder(out, overwrite=True)
    RunFolder.deactivate()
    assert (elsewhere / "b").is_dir() and (out / "a").is_symlink()
    assert not (out / "c").exists()


def test_an_input_changed_during_the_prediction_stops_the_run_and_leaves_no_scratch(vol, tmp_path, monkeypatch):
    """``fhcnn volume``'s labels (memory-mapped) saved again while the volume is predicted: one
    line naming them, exit 1; the prediction's scratch is removed and no prediction file is
    left in OUT. The image, a compressed NIfTI read from its copy in ``OUT/inputs``, may change
    after the copy is made: the run reading it alone ends as usual."""
    import nibabel as nib

    import fhcnn.engine.run as engine_run
    from fhcnn.rundir import RunFolder as Folder

    nib.save(nib.Nifti1Image(np.load(vol / "c0.npy"), np.eye(4)), tmp_path / "c0.nii.gz")
    predict = engine_run.predict

    def touched(target):
        def run(*args, **kwargs):
            seconds = predict(*args, **kwargs)
            if target.suffix == ".npy":
                a = np.load(target)
                a[0, 0, 0] = 1 - a[0, 0, 0] if a[0, 0, 0] < 2 else 0
                np.save(target, a)
            else:
                nib.save(nib.Nifti1Image(np.load(vol / "c1.npy"), np.eye(4)), target)
            return seconds
        return run

    labels = tmp_path / "lab.npy"
    labels.write_bytes((vol / "lab.npy").read_bytes())
    out = tmp_path / "o"
    monkeypatch.setattr(engine_run, "predict", touched(labels))
    assert main([str(a) for a in ["volume", tmp_path / "c0.nii.gz", "--labels", labels, "--out", out, *TINY]]) == 1
    marker = json.loads((out / "run.json").read_text())
    assert not marker["scratch"], marker["scratch"]
    assert not [p for p in out.iterdir() if p.name.startswith(("prediction", "probabilities", "."))]
    assert Folder.active is None

    labels.write_bytes((vol / "lab.npy").read_bytes())
    monkeypatch.setattr(engine_run, "predict", touched(tmp_path / "c0.nii.gz"))
    again = tmp_path / "p"
    assert main([str(a) for a in ["volume", tmp_path / "c0.nii.gz", "--labels", labels, "--out", again, *TINY]]) == 0
    assert (again / "prediction.nii.gz").exists()
