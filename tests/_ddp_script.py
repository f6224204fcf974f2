"""Worker for tests/test_ddp.py, launched by torchrun with 2 processes (gloo on CPU).

    torchrun --standalone --nproc-per-node 2 tests/_ddp_script.py OUT

For each gradient mode (reversible True / "block" / False) it trains the same model as
``tests/_train_script.py`` for a few steps with the Trainer (which joins the process group,
wraps the model in DistributedDataParallel and gives each rank half of the global batch),
and saves every rank's final weights to ``OUT/<mode>-rank<r>.safetensors``. The Trainer's own
output goes to ``OUT/<mode>/rank<r>`` so the test can check that only rank 0 wrote.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fhcnn.training import TrainConfig, Trainer, TrainingError, seed_everything, unwrap_model  # noqa: E402
from fhcnn.training.distributed import exit_program  # noqa: E402
from tests._train_script import batch_fn, build, loss_fn  # noqa: E402

MODES = {"true": True, "block": "block", "false": False}


def ddp_config() -> TrainConfig:
    return TrainConfig(steps=4, lr=1e-2, optimizer="adam", grad_clip=1.0, seed=5, device="cpu",
                       log_every=2, checkpoint_every=2, val_every=2, best_metric="wsum",
                       best_mode="max")


def val_fn(model: torch.nn.Module) -> dict[str, float]:
    """Runs on rank 0 only; the trainer broadcasts the result."""
    return {"wsum": float(sum(p.double().sum() for p in model.parameters())),
            "rank": float(dist.get_rank()) if dist.is_initialized() else 0.0}


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    for name, mode in MODES.items():
        seed_everything(100 + rank)  # different init per rank: DDP must broadcast rank 0's
        if rank == 0:
            seed_everything(11)
        model = build(mode)
        trainer = Trainer(model, ddp_config(), out / name / f"rank{rank}", batch_fn, loss_fn,
                          val_fn, quiet=True)
        assert trainer.world_size == 2 and trainer.rank == rank
        hist = trainer.fit()
        (out / f"{name}-rank{rank}.json").write_text(json.dumps(
            {"val": hist["val"], "train": hist["train"], "best": hist["best"]}))
        save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()},
                  str(out / f"{name}-rank{rank}.safetensors"))
    # a loss that bypasses DDP's forward leaves the ranks out of sync: detected after step 1
    def bypass(model: torch.nn.Module, batch):
        x, y = batch
        return F.cross_entropy(unwrap_model(model)(x), y), {}
    seed_everything(11)
    trainer = Trainer(build(True), ddp_config(), None, batch_fn, bypass, quiet=True)
    try:
        trainer.fit()
        outcome = "no error"
    except TrainingError as e:
        outcome = str(e)
    (out / f"bypass-rank{rank}.txt").write_text(outcome)


if __name__ == "__main__":
    main()
    # the group destroyed and the interpreter's teardown skipped (Gloo threads sometimes abort
    # the process there, after every output is written), as `python -m fhcnn` ends
    exit_program(0)
