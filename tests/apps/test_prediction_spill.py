"""Where a prediction spills: the chunks a :class:`~fhcnn.engine.store.BlendStore` holds beyond
its ``cache_bytes`` go to a hidden scratch folder of the run folder (``.spill.XXXXXXXX.tmp``,
listed in ``run.json`` before it exists), never to ``TMPDIR`` (a tmpfs there is RAM, and a
killed run would leave its spill there for good); the folder is gone when the prediction ends,
and a run killed while it spills leaves nothing after the next ``--resume`` or ``--overwrite``.

Every test forces the spill: output chunks of 4 voxels a side (``fhcnn.engine.plan.CHUNK``) and
no chunk cache (``cache_bytes=0``: every open chunk but the last goes to disk)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import fhcnn.engine.plan as engine_plan
from fhcnn.cli import main
from fhcnn.data.hyperspectral import make_bitemporal_scene
from fhcnn.data.video import generate_video
from fhcnn.engine.store import SPILL_PREFIX, BlendStore
from tests.apps._volumes import write_tiny_volume

ROOT = Path(__file__).parents[2]

# Forces every prediction to spill (see the module docstring) and, at each store's first spill,
# appends to SPILLS (a file outside OUT) the store's spill folder, whether the run folder's
# record lists its scratch folder as scratch at that moment, and the rank. With a third
# argument "kill", the process kills itself (SIGKILL: no finally block, no atexit) right after
# the first chunk is on disk.
_DRIVER = r"""
import json, os, signal, sys
from pathlib import Path
import fhcnn.engine.plan as plan
from fhcnn.engine import store

plan.CHUNK = 4
spills, kill, argv = Path(sys.argv[1]), sys.argv[2] == "kill", sys.argv[3:]
init, evict = store.BlendStore.__init__, store.BlendStore._evict

def forced(self, *args, **kwargs):
    init(self, *args, **{**kwargs, "cache_bytes": 0})

def spilling(self):
    first = self._spill_dir is None
    evict(self)
    if first and self._spill_dir is not None:
        folder = self._spill_dir.parent
        record = folder.parent / "run.json"
        listed = record.is_file() and folder.name in json.loads(record.read_text())["scratch"]
        with open(spills, "a") as f:
            f.write(json.dumps({"spill": str(self._spill_dir), "listed": listed,
                                "rank": os.environ.get("RANK", "0")}) + "\n")
        if kill:
            os.kill(os.getpid(), signal.SIGKILL)

store.BlendStore.__init__, store.BlendStore._evict = forced, spilling
from fhcnn.cli import main
sys.exit(main(argv))
"""


class Spills:
    """What :func:`forced_spill` saw: ``seen`` (each store's spill folder, and whether
    ``run.json`` listed its scratch folder when the first chunk went to disk) and ``cache_bytes``
    (the stores' cache: 0, every prediction spills)."""

    def __init__(self) -> None:
        self.seen: list[tuple[Path, bool]] = []
        self.cache_bytes = 0


@pytest.fixture
def forced_spill(monkeypatch, tmp_path):
    """Every store spills (see the module docstring); ``TMPDIR`` is a folder of the test's own,
    left without a spill."""
    monkeypatch.setattr(engine_plan, "CHUNK", 4)
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    spills = Spills()
    init, evict = BlendStore.__init__, BlendStore._evict

    def forced(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "cache_bytes": spills.cache_bytes})

    def spilling(self):
        first = self._spill_dir is None
        evict(self)
        if first and self._spill_dir is not None:
            folder = self._spill_dir.parent
            record = folder.parent / "run.json"
            spills.seen.append((self._spill_dir,
                                record.is_file() and folder.name in json.loads(record.read_text())["scratch"]))

    monkeypatch.setattr(BlendStore, "__init__", forced)
    monkeypatch.setattr(BlendStore, "_evict", spilling)
    yield spills
    assert not [p for p in tmpdir.iterdir() if p.name.startswith("fhcnn-blend-")]


def _hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock")


def _check_spilled_into(out: Path, seen: list[tuple[Path, bool]], predictions: int = 1) -> None:
    """``seen``'s spills (at least ``predictions``) were each in a scratch folder of ``out``
    listed in ``run.json`` while it spilled, and nothing of them is left."""
    assert len(seen) >= predictions, seen
    for spill, listed in seen:
        assert spill.parent.parent == out and spill.parent.name.startswith(SPILL_PREFIX), spill
        assert listed, spill  # recorded before the chunks were written
        assert not spill.parent.exists()
    assert _hidden(out) == [] and json.loads((out / "run.json").read_text())["scratch"] == []


@pytest.fixture(scope="module")
def vol(tmp_path_factory):
    return write_tiny_volume(tmp_path_factory.mktemp("spill"))


def test_volume_spills_into_its_run_folder_and_predicts_the_same(vol, tmp_path, forced_spill):
    plain, out = tmp_path / "plain", tmp_path / "out"
    args = ["volume", str(vol / "c0.npy"), "--labels", str(vol / "lab.npy"), "--eval-labels", str(vol / "truth.npy"),
            "--config", "volume-tiny", "--quiet", "--save-probs", "--set", "data.eval_every=2",
            "--set", "volume.baselines=unet"]
    assert main(args + ["--out", str(out)]) == 0
    # the scoring during training (steps 2 and 3), fhcnn's prediction and the U-Net baseline's
    _check_spilled_into(out, forced_spill.seen, predictions=4)
    # the chunks read back from disk make the prediction of a run that spilled nothing
    forced_spill.seen.clear()
    forced_spill.cache_bytes = 2**30
    assert main(args + ["--out", str(plain)]) == 0
    assert forced_spill.seen == []
    np.testing.assert_array_equal(np.load(out / "prediction.npy"), np.load(plain / "prediction.npy"))
    import zarr

    np.testing.assert_array_equal(zarr.open_array(str(out / "probabilities.zarr"), mode="r")[...],
                                  zarr.open_array(str(plain / "probabilities.zarr"), mode="r")[...])
    m, p = (json.loads((f / "metrics.json").read_text()) for f in (out, plain))
    assert m["miou"] == p["miou"] and m["baselines"]["unet"]["miou"] == p["baselines"]["unet"]["miou"]
    assert [h.get("miou") for h in m["history"]] == [h.get("miou") for h in p["history"]]


def test_segment_and_change_spill_into_their_run_folders(tmp_path, forced_spill):
    video, masks = generate_video(None, frames=6, height=8, width=12, objects=1, seed=1)
    np.save(tmp_path / "video.npy", video)
    np.save(tmp_path / "masks.npy", masks)
    out = tmp_path / "seg"
    assert main(["segment", str(tmp_path / "video.npy"), "--labels", str(tmp_path / "masks.npy"),
                 "--label-frames", "0,5", "--out", str(out), "--config", "video-tiny", "--quiet"]) == 0
    _check_spilled_into(out, forced_spill.seen)
    forced_spill.seen.clear()
    s = make_bitemporal_scene(16, 16, 4, seed=2, field_size=6)
    for name, arr in (("before", s.before), ("after", s.after), ("truth", s.change)):
        np.save(tmp_path / f"{name}.npy", arr)
    out = tmp_path / "change"
    assert main(["change", str(tmp_path / "before.npy"), str(tmp_path / "after.npy"), "--labels",
                 str(tmp_path / "truth.npy"), "--label-fraction", "0.3", "--set", "data.eval_every=2",
                 "--set", "data.predict_height=8", "--set", "data.predict_width=8",  # several windows a chunk
                 "--out", str(out), "--config", "change-tiny", "--quiet"]) == 0
    _check_spilled_into(out, forced_spill.seen, predictions=2)  # the held-out scoring and the prediction


def _driven(spills: Path, how: str, args: list[str], tmpdir: Path) -> subprocess.CompletedProcess:
    """``fhcnn ARGS`` in a process of its own through :data:`_DRIVER` (``how``: "kill" or "run"),
    with ``TMPDIR`` set to ``tmpdir``."""
    env = {**os.environ, "TMPDIR": str(tmpdir),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", _DRIVER, str(spills), how, *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _spills(spills: Path) -> list[dict]:
    return [json.loads(line) for line in spills.read_text().splitlines()]


@pytest.mark.parametrize("again", ["--resume", "--overwrite"])
def test_a_run_killed_while_it_spills_leaves_nothing_after_the_next_run(vol, tmp_path, again):
    out, spills, tmpdir = tmp_path / "out", tmp_path / "spills.jsonl", tmp_path / "tmpdir"
    tmpdir.mkdir()
    args = ["volume", str(vol / "c0.npy"), "--labels", str(vol / "lab.npy"), "--out", str(out),
            "--config", "volume-tiny", "--quiet"]
    proc = _driven(spills, "kill", args, tmpdir)
    assert proc.returncode == -9, proc.stderr[-2000:]
    (spill,) = _spills(spills)
    folder = Path(spill["spill"]).parent
    assert folder.parent == out and spill["listed"], spill  # in OUT, recorded before it was written
    assert [p for p in Path(spill["spill"]).rglob("*") if p.is_file()]  # chunks on disk, left by the kill
    assert folder.name in json.loads((out / "run.json").read_text())["scratch"]
    assert list(tmpdir.iterdir()) == []
    assert main(args + [again]) == 0
    assert _hidden(out) == [] and json.loads((out / "run.json").read_text())["scratch"] == []
    assert (out / "prediction.npy").is_file()


def test_each_process_of_a_split_run_spills_into_its_own_folder_in_the_run_folder(vol, tmp_path, forced_spill):
    # a volume split in space over 2 processes, each finishing its slab (8 of the 16 planes):
    # each spills into a private folder of one scratch folder of OUT that rank 0 made, removed
    # after both are done; the prediction is one process's
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    from fhcnn.training.distributed import launch_env
    from tests._launch import torchrun

    single, out, spills = tmp_path / "single", tmp_path / "out", tmp_path / "spills.jsonl"
    args = ["volume", str(vol / "c0.npy"), "--labels", str(vol / "lab.npy"), "--config", "volume-tiny", "--quiet"]
    assert main(args + ["--out", str(single)]) == 0
    env = launch_env(pythonpath=[ROOT / "src", ROOT], TMPDIR=str(tmp_path / "tmpdir"))
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)

    def clean() -> None:
        shutil.rmtree(out, True)
        spills.unlink(missing_ok=True)

    torchrun(2, [str(script), str(spills), "run", *args, "--out", str(out), "--set", "parallel.space=2"],
             clean=clean, env=env)
    seen = _spills(spills)
    assert sorted(s["rank"] for s in seen) == ["0", "1"], seen
    folders = {Path(s["spill"]).parent for s in seen}
    assert len(folders) == 1 and len({s["spill"] for s in seen}) == 2  # one folder of OUT, a store each
    (folder,) = folders
    assert folder.parent == out and folder.name.startswith(SPILL_PREFIX) and all(s["listed"] for s in seen)
    assert _hidden(out) == [] and json.loads((out / "run.json").read_text())["scratch"] == []
    assert json.loads((out / "metrics.json").read_text())["prediction_slabs"] == [
        {"origin": [0, 0, 0], "shape": [8, 16, 16]}, {"origin": [8, 0, 0], "shape": [8, 16, 16]}]
    assert np.mean(np.load(single / "prediction.npy") == np.load(out / "prediction.npy")) >= 0.999
