"""Checkpoints: atomic writes, checksums, fallback to the previous one, pruning, loading weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import fhcnn.atomic
import fhcnn.training.checkpoint as ck
from fhcnn.training import (
    CheckpointError,
    CheckpointManager,
    CheckpointWarning,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    verify_checkpoint,
)


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3, 1))


def _state(step: int) -> dict:
    return {"step": step, "rng": torch.get_rng_state(), "list": [1, 2.5, "x", None], "t": (1, 2)}


def _same(a: nn.Module | dict, b: nn.Module | dict) -> bool:
    sa = a.state_dict() if isinstance(a, nn.Module) else a
    sb = b.state_dict() if isinstance(b, nn.Module) else b
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_load_round_trip(tmp_path: Path) -> None:
    m = _model(0)
    folder = ck.save_checkpoint(tmp_path / "step-000003", 3, m, _state(3), {"loss": 0.5})
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["manifest.json", "model.safetensors", "state.pt"]
    man = json.loads((folder / "manifest.json").read_text())
    assert man["step"] == 3 and man["metrics"] == {"loss": 0.5}
    assert man["files"]["model.safetensors"]["sha256"] == ck.sha256_file(folder / "model.safetensors")
    c = load_checkpoint(folder)
    assert c.step == 3 and c.state["list"] == [1, 2.5, "x", None] and c.state["t"] == (1, 2)
    assert _same(c.model_state, m)


def test_tied_weights_are_saved(tmp_path: Path) -> None:
    lin = nn.Linear(4, 4, bias=False)
    m = nn.ModuleDict({"a": lin, "b": lin})  # the same weight under two names
    ck.save_checkpoint(tmp_path / "step-000001", 1, m, {})
    m2 = nn.ModuleDict({"a": nn.Linear(4, 4, bias=False)})
    m2["b"] = m2["a"]
    load_weights(m2, tmp_path / "step-000001")
    assert torch.equal(m2["a"].weight, lin.weight)


@pytest.mark.parametrize("where", ["weights", "state", "manifest"])
def test_interrupted_write_keeps_previous_checkpoint(tmp_path: Path, monkeypatch, where: str) -> None:
    """Raise in the middle of writing checkpoint 2 (after a partial write): checkpoint 1 stays
    loadable, checkpoint 2 is never taken for a complete one, no temporary file is left."""
    mgr = CheckpointManager(tmp_path, keep_last=2)
    m1, m2 = _model(1), _model(2)
    mgr.save(1, m1, _state(1))

    class Crash(Exception):
        pass

    if where == "weights":
        real = Path.write_bytes

        def boom(self, data):  # the first file written: the weights' temporary file
            real(self, data[:100])  # torn
            raise Crash
        monkeypatch.setattr(Path, "write_bytes", boom)
    elif where == "state":
        def boom(obj, f, *a, **k):
            Path(f).write_bytes(b"partial")
            raise Crash
        monkeypatch.setattr(ck.torch, "save", boom)
    else:
        def boom(path, text):
            raise Crash
        monkeypatch.setattr(ck, "atomic_write_text", boom)
    with pytest.raises(Crash):
        mgr.save(2, m2, _state(2))
    monkeypatch.undo()

    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name], "temporary file left behind"
    assert not (tmp_path / "step-000002" / "manifest.json").exists()
    with pytest.warns(CheckpointWarning, match="step-000002.*incomplete"):
        c = latest_checkpoint(tmp_path)
    assert c is not None and c.step == 1 and _same(c.model_state, m1)
    # a later save of the same step completes normally
    mgr.save(2, m2, _state(2))
    assert latest_checkpoint(tmp_path).step == 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_corrupt_checkpoint_detected_and_previous_used(tmp_path: Path, damage: str) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=3)
    m1, m2 = _model(1), _model(2)
    mgr.save(1, m1, _state(1))
    mgr.save(2, m2, _state(2))
    f = tmp_path / "step-000002" / ("state.pt" if damage == "flip" else "model.safetensors")
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:-10])
        expect = "truncated"
    elif damage == "flip":
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 1
        f.write_bytes(bytes(data))
        expect = "sha256"
    elif damage == "delete":
        f.unlink()
        expect = "missing"
    else:
        (tmp_path / "step-000002" / "manifest.json").write_text("{not json")
        expect = "unreadable checkpoint manifest"
    with pytest.raises(CheckpointError, match=expect):
        verify_checkpoint(tmp_path / "step-000002")
    with pytest.warns(CheckpointWarning, match=f"corrupt checkpoint.*step-000002.*{expect}"):
        c = latest_checkpoint(tmp_path)
    assert c.step == 1 and _same(c.model_state, m1)


def test_all_corrupt_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    ck.save_checkpoint(tmp_path / "step-000001", 1, _model(1), {})
    (tmp_path / "step-000001" / "state.pt").write_bytes(b"garbage")
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="no valid checkpoint"):
        latest_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path / "nothing-here") is None


def test_keep_last_and_best(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=2)
    m = _model(0)
    for step in range(1, 7):
        best = {"metric": "miou", "value": 0.9, "mode": "max"} if step == 2 else None
        mgr.save(step, m, _state(step), best=best)
    kept = [p.name for _, p in ck.list_checkpoints(tmp_path)]
    assert kept == ["step-000002", "step-000005", "step-000006"]
    assert json.loads((tmp_path / "best.json").read_text())["dir"] == "step-000002"
    assert ck.find_checkpoint(tmp_path, "best").name == "step-000002"
    assert ck.find_checkpoint(tmp_path.parent / tmp_path.name, "latest").name == "step-000006"


def test_load_weights_for_inference(tmp_path: Path) -> None:
    run = tmp_path / "run"
    mgr = CheckpointManager(run / "checkpoints", keep_last=1)
    m1, m2 = _model(1), _model(2)
    mgr.save(1, m1, {}, best={"metric": "loss", "value": 0.1, "mode": "min"})
    mgr.save(2, m2, {})
    target = _model(3)
    man = load_weights(target, run)  # best by default
    assert man["step"] == 1 and _same(target, m1)
    load_weights(target, run, which="latest")
    assert _same(target, m2)
    load_weights(target, run / "checkpoints" / "step-000002" / "model.safetensors")
    assert _same(target, m2)
    with pytest.raises(CheckpointError, match="do not fit this model"):
        load_weights(nn.Linear(2, 2), run)
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        load_weights(target, tmp_path / "empty")


def test_atomic_path_is_used(tmp_path: Path, monkeypatch) -> None:
    """Every checkpoint file goes through fhcnn.atomic.atomic_path (tmp + fsync + os.replace)."""
    seen: list[str] = []
    real = fhcnn.atomic.atomic_path

    def spy(path):
        seen.append(Path(path).name)
        return real(path)
    monkeypatch.setattr(ck, "atomic_path", spy)
    monkeypatch.setattr(fhcnn.atomic, "atomic_path", spy)
    CheckpointManager(tmp_path).save(1, _model(0), {}, best={"metric": "x", "value": 1.0})
    assert seen == ["model.safetensors", "state.pt", "manifest.json", "best.json"]


def test_the_same_weights_make_the_same_file(tmp_path):
    # safetensors writes its metadata in a hash map's order, which changes from save to save:
    # a resumed run's model.safetensors differed by its bytes from an uninterrupted one's
    from safetensors import safe_open

    from fhcnn.training.checkpoint import save_weights

    model = torch.nn.Linear(3, 2)
    meta = {"num_classes": "3", "arch": "hyperbolic", "step": "7", "z": "é"}
    files = [save_weights(tmp_path / f"m{i}.safetensors", model, meta).read_bytes() for i in range(12)]
    assert len(set(files)) == 1
    with safe_open(str(tmp_path / "m0.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt", **meta}
        assert torch.equal(f.get_tensor("weight"), model.weight.detach())
