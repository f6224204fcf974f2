"""Tables of ``benchmarks/vae_digits.py`` and ``benchmarks/vae_mnist.py``."""

from __future__ import annotations

from pathlib import Path

from ._files import need


def vae_digits(d: Path) -> str:
    r = need(d, "vae_digits")
    h, c = r["hyperbolic"], r["conv_vae"]
    return "\n".join([
        "| model | latent dim | recon MSE | energy distance | classifier confidence on samples | train time (s) | steps |",
        "|---|---|---:|---|---:|---:|---:|",
        f"| **fhcnn** hyperbolic VAE | **{h['latent_dim']}** of {h['full_dim']} | {h['recon_mse']:.4f} | "
        f"{h['energy_distance_before']:.2f} (untrained, `P = I`) → **{h['energy_distance_after']:.4f}** | "
        f"{h['classifier_confidence_samples']:.3f} | {h['train_time_s']:.0f} | {h['steps']} |",
        f"| `ConvVAE` ({c['parameters']} parameters) | {c['latent_dim']} (set) | {c['recon_mse']:.4f} | "
        f"{c['energy_distance_after']:.4f} | {c['classifier_confidence_samples']:.3f} | "
        f"{c['train_time_s']:.0f} | {c['steps']} |",
        "",
        f"Held-out: {h['n_eval']} digits ({h['n_train']} train). The classifier scores "
        f"{h['classifier_accuracy_real_eval']:.1%} accuracy and mean confidence "
        f"{h['classifier_confidence_real_eval']:.3f} on the real held-out digits.",
    ])


def vae_mnist(d: Path) -> str:
    r = need(d, "vae_mnist")
    return "\n".join([
        "| latent dim | recon MSE (normalized) | energy distance | classifier confidence on samples | steps | train time (s) |",
        "|---|---:|---|---:|---:|---:|",
        f"| **{r['latent_dim']}** of {r['full_dim']} | {r['recon_mse']:.3f} ({r['recon_mse_normalized']:.2f}) | "
        f"{r['energy_distance_before']:.0f} (untrained, `P = I`) → **{r['energy_distance_after']:.2f}** | "
        f"{r['classifier_confidence_samples']:.2f} | {r['steps']} | {r['train_time_s']:.0f} |",
        "",
        f"{r['n_train']} training / {r['n_eval']} held-out images. The classifier scores "
        f"{r['classifier_accuracy_real_eval']:.1%} accuracy and mean confidence "
        f"{r['classifier_confidence_real_eval']:.2f} on the real held-out digits.",
    ])
