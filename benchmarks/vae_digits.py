"""Hyperbolic VAE vs a conventional convolutional VAE on the scikit-learn digits.

    python benchmarks/vae_digits.py [--out benchmarks/results] [--steps N] [--set KEY=VALUE ...]

Trains the default ``vae-digits`` configuration (``fhcnn vae train --dataset digits``), then a
:class:`fhcnn.models.ConvVAE` with the same latent dimension, the same number of steps, batch
size and learning rate, and measures both the same way: reconstruction MSE on held-out
digits (pixels in [0, 1]), energy distance of the held-out latents to the prior
``N(0, s^2 I)``, and the mean top-class probability that an MLP classifier trained on the
digits training split gives to 500 generated samples. Writes ``vae_digits.json`` and
``vae_digits.png`` (samples and reconstructions side by side); the hyperbolic run itself
goes to ``<out>/vae_digits_run/`` (or ``--reuse RUN`` takes a finished run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    from fhcnn.apps.vae import BaselineConfig, VAEConfig, grid_array, train_baseline, train_vae
    from fhcnn.atomic import atomic_path, atomic_write_text
    from fhcnn.bench.reference import environment
    from fhcnn.config import load_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--steps", type=int, default=None, help="override train.steps (both models)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--reuse", metavar="RUN", default=None,
                   help="take the hyperbolic numbers from this finished run (default config) "
                        "instead of training it again")
    args = p.parse_args(argv)
    out = Path(args.out)
    overrides = list(args.overrides) + ([f"train.steps={args.steps}"] if args.steps else [])
    cfg = load_config(VAEConfig, "vae-digits", overrides)
    env = environment()  # the machine, its load and the reference workload, before the runs
    if args.reuse:  # a finished `fhcnn vae train --dataset digits` run of the same config
        run = Path(args.reuse)
        ours = json.loads((run / "metrics.json").read_text())
        ours["reused_run"] = str(run)
    else:
        run = out / "vae_digits_run"
        if run.exists():
            shutil.rmtree(run)
        ours = train_vae(cfg, run, quiet=True)
    print(f"hyperbolic: latent {ours['latent_dim']}, recon {ours['recon_mse']:.5f}, energy "
          f"{ours['energy_distance_before']:.3f} -> {ours['energy_distance_after']:.4f}, "
          f"confidence {ours.get('classifier_confidence_samples', float('nan')):.3f}, "
          f"{ours['train_time_s']:.0f} s", flush=True)
    base_cfg = BaselineConfig()
    base_cfg.train.steps = cfg.train.steps
    base_cfg.train.lr = cfg.train.lr
    base_cfg.train.seed = cfg.train.seed
    base = train_baseline(cfg, base_cfg, ours["latent_dim"])
    print(f"ConvVAE:    latent {base['latent_dim']}, recon {base['recon_mse']:.5f}, energy "
          f"{base['energy_distance_after']:.4f}, confidence "
          f"{base.get('classifier_confidence_samples', float('nan')):.3f}, "
          f"{base['train_time_s']:.0f} s", flush=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    with Image.open(run / "samples.png") as im:
        samples_ours = np.array(im)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.8))
    axes[0].imshow(samples_ours, cmap="gray")
    axes[0].set_title(f"hyperbolic VAE samples (latent {ours['latent_dim']})", fontsize=10)
    axes[1].imshow(grid_array(base["_samples"], ncol=8)[:, :, 0], cmap="gray")
    axes[1].set_title(f"ConvVAE samples (latent {base['latent_dim']})", fontsize=10)
    axes[2].imshow(grid_array(torch.stack([base["_recons"][:8]], 1).flatten(0, 1), ncol=4)[:, :, 0],
                   cmap="gray")
    axes[2].set_title("ConvVAE reconstructions", fontsize=10)
    for a in axes:
        a.axis("off")
    fig.tight_layout()
    with atomic_path(out / "vae_digits.png") as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    keys = ("latent_dim", "recon_mse", "energy_distance_after", "classifier_confidence_samples",
            "train_time_s", "steps")
    result = {
        "benchmark": "vae_digits",
        "device": "cpu", "threads": torch.get_num_threads(), "environment": env,
        "hyperbolic": {k: v for k, v in ours.items() if k != "final_train"},
        "conv_vae": {k: v for k, v in base.items() if not k.startswith("_")},
        "summary": {name: {k: m.get(k) for k in keys} for name, m in
                    (("hyperbolic", ours), ("conv_vae", base))},
    }
    atomic_write_text(out / "vae_digits.json", json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
