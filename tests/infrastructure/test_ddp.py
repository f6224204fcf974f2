"""DistributedDataParallel: 2 processes (torchrun, gloo) equal 1 process with the same global batch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from fhcnn.training import Trainer, seed_everything, shard_batch
from tests._ddp_script import MODES, ddp_config, val_fn
from tests._launch import torchrun
from tests._train_script import batch_fn, build, loss_fn, one_thread  # noqa: F401

HERE = Path(__file__).resolve().parents[1]  # tests/, beside the worker scripts

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")]


def test_two_processes_equal_one(tmp_path: Path) -> None:
    def clean() -> None:  # a retry must not meet the failed launch's checkpoints
        for child in tmp_path.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()

    torchrun(2, [str(HERE / "_ddp_script.py"), str(tmp_path)], clean=clean)

    diffs = {}
    for name, mode in MODES.items():
        seed_everything(11)
        single = Trainer(build(mode), ddp_config(), tmp_path / "single" / name, batch_fn, loss_fn,
                         val_fn, quiet=True)
        hist = single.fit()
        ref = single.model.state_dict()
        r0 = load_file(str(tmp_path / f"{name}-rank0.safetensors"))
        r1 = load_file(str(tmp_path / f"{name}-rank1.safetensors"))
        for k in ref:
            assert torch.equal(r0[k], r1[k]), f"{name}: ranks disagree on {k}"
        diffs[name] = max((r0[k].double() - ref[k].double()).abs().max().item() for k in ref)
        moved = max((r0[k].double() - load_file(str(tmp_path / "single" / name / "checkpoints" /
                                                       "step-000002" / "model.safetensors"))[k]
                     .double()).abs().max().item() for k in ref)
        assert moved > 1e-4, "training did not change the weights"
        # validation ran on rank 0 and every rank got its result; losses averaged over ranks
        h0, h1 = (json.loads((tmp_path / f"{name}-rank{r}.json").read_text()) for r in (0, 1))
        assert h0 == h1 and h0["val"]["rank"] == 0.0 and h0["best"]["step"] in (2, 4)
        assert h0["val"]["wsum"] == pytest.approx(hist["val"]["wsum"], abs=1e-5)
        assert h0["train"]["loss"] == pytest.approx(hist["train"]["loss"], rel=1e-5)
        # only rank 0 wrote checkpoints and metrics
        assert (tmp_path / name / "rank0" / "checkpoints" / "step-000004" / "manifest.json").exists()
        assert (tmp_path / name / "rank0" / "metrics.jsonl").exists()
        assert not (tmp_path / name / "rank1").exists()
    for r in (0, 1):
        msg = (tmp_path / f"bypass-rank{r}.txt").read_text()
        assert "parameters differ between the 2 processes after step 1" in msg, msg
    print("DDP 2 processes vs 1 process, max |weight difference| after 4 steps:", json.dumps(diffs))
    for name, d in diffs.items():
        assert d < 1e-6, f"reversible={name}: 2-process weights differ from 1-process by {d:.3e}"


def test_shard_batch_slices_and_validates() -> None:
    x = torch.arange(8.0).reshape(4, 2)
    batch = {"x": x, "y": (torch.arange(4), [torch.zeros(4, 3)]), "scale": 2.0}
    a, b = shard_batch(batch, 0, 2), shard_batch(batch, 1, 2)
    assert torch.equal(torch.cat([a["x"], b["x"]]), x)
    assert a["y"][0].tolist() == [0, 1] and b["y"][0].tolist() == [2, 3]
    assert a["y"][1][0].shape == (2, 3) and a["scale"] == 2.0
    assert shard_batch(batch, 0, 1) is batch
    with pytest.raises(ValueError, match="global batch size 4 is not divisible by the 3"):
        shard_batch(batch, 0, 3)
    with pytest.raises(ValueError, match="different leading"):
        shard_batch((torch.zeros(4), torch.zeros(2)), 0, 2)
