"""A small but real training run for the subprocess tests (resume after SIGKILL).

    python tests/_train_script.py OUT [--steps N] [--resume] [--sleep S] [--reversible MODE]

Trains a 2D DenseHyperbolicModel (width 4, 16x16 images) with the Trainer; checkpoints every
5 steps. ``--sleep`` slows each step down so a test can kill the process mid-run.
"""

from __future__ import annotations

import argparse
import time

import pytest
import torch
import torch.nn.functional as F

from fhcnn.models import DenseHyperbolicModel
from fhcnn.training import TrainConfig, Trainer, seed_everything


@pytest.fixture(autouse=False)
def one_thread():
    """Tiny models on a busy 2-core machine: one intra-op thread is ~100x faster than two
    threads spinning against other processes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def build(reversible: bool | str = True) -> DenseHyperbolicModel:
    return DenseHyperbolicModel(1, 2, 4, [(2, "down"), (2, "up")], dim=2, reversible=reversible)


def batch_fn(step: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(4, 1, 16, 16, generator=gen)
    flip = torch.rand(4, generator=gen) < 0.5  # random "augmentation" from the same generator
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    y = (x[:, 0] > 0.3).long()
    return x, y


def loss_fn(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).float().mean()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--reversible", default="true")
    args = p.parse_args()
    torch.set_num_threads(1)
    mode = {"true": True, "false": False, "block": "block"}[args.reversible]
    seed_everything(7)
    model = build(mode)
    cfg = TrainConfig(steps=args.steps, lr=3e-3, optimizer="adamw", weight_decay=1e-4,
                      schedule="cosine", warmup_steps=3, grad_clip=1.0, seed=7, device="cpu",
                      log_every=2, checkpoint_every=5, keep_last=2)

    def slow_batch(step: int, gen: torch.Generator):
        if args.sleep:
            time.sleep(args.sleep)
        return batch_fn(step, gen)

    trainer = Trainer(model, cfg, args.out, slow_batch, loss_fn, quiet=True)
    hist = trainer.fit(resume=args.resume)
    print(f"done step={hist['step']} loss={hist['train']['loss']:.6f}", flush=True)


if __name__ == "__main__":
    main()
