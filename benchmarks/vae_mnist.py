"""The paper's MNIST VAE experiment (section 6.2.1) at reduced size, on the real MNIST test split.

    python benchmarks/vae_mnist.py [--data $FHCNN_DATA/mnist_t10k] [--out benchmarks/results]
                                   [--steps N] [--set KEY=VALUE ...]

Uses the shipped ``vae-mnist`` configuration (the paper's network: 32x32 inputs, 5 units of
3 layers, D = 1024) on the 10000 images of ``t10k-images-idx3-ubyte.gz``: the first 8000 train,
the last 2000 evaluate. Reduced so that it runs in minutes on one CPU core: hidden width 16
instead of the state's channels, batch 64 instead of 512, 1500 Adam steps (12 epochs of the
8000 images) instead of 100 epochs of SGD, and h = 0.2 instead of 1e-2 (with h = 1e-2 the
network is within 1e-4 of the identity and P alone does the work). Writes ``vae_mnist.json``
and the run (figure, samples, metrics) to ``<out>/vae_mnist_run/``. Skips cleanly when the data folder is absent.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _paths import DATA  # noqa: E402

REDUCED = ["threads=1", "model.hidden=16", "model.h=0.2", "data.batch_size=64",
           "data.limit=10000", "data.n_eval=2000", "data.split=ordered", "eval.n_eval=2000",
           "train.optimizer=adam", "train.lr=0.002", "train.steps=1500", "loss.alpha=40",
           "train.checkpoint_every=0", "train.val_every=0", "train.log_every=25"]


def main(argv: list[str] | None = None) -> int:
    import torch

    from fhcnn.apps.vae import VAEConfig, train_vae
    from fhcnn.atomic import atomic_write_text
    from fhcnn.bench.reference import environment
    from fhcnn.config import load_config

    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DATA / "mnist_t10k"))
    p.add_argument("--out", default=str(here / "results"))
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    data = Path(args.data)
    if not data.exists():
        print(f"skipped: MNIST data folder {data} not found")
        return 0
    overrides = [f"data.path={data}", *REDUCED, *args.overrides]
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    cfg = load_config(VAEConfig, "vae-mnist", overrides)
    out = Path(args.out)
    run = out / "vae_mnist_run"
    if run.exists():
        shutil.rmtree(run)
    env = environment()  # the machine, its load and the reference workload, before the run
    m = train_vae(cfg, run, quiet=True)
    result = {"benchmark": "vae_mnist", "device": "cpu", "threads": torch.get_num_threads(), "environment": env,
              "data": str(data), "overrides": overrides,
              **{k: v for k, v in m.items() if k != "final_train"}}
    atomic_write_text(out / "vae_mnist.json", json.dumps(result, indent=2) + "\n")
    print(f"MNIST (8000 train / 2000 eval): latent dim {m['latent_dim']} of {m['full_dim']}, "
          f"recon MSE {m['recon_mse']:.5f}, energy distance {m['energy_distance_before']:.3f} -> "
          f"{m['energy_distance_after']:.4f}, classifier confidence on samples "
          f"{m.get('classifier_confidence_samples', float('nan')):.3f}, {m['train_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
