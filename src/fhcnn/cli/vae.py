"""``fhcnn vae``: train, sample, interpolate, normality of the hyperbolic autoencoder (paper
sections 4 and 6.2); examples in ``docs/vae.md``."""

from __future__ import annotations

import argparse

HELP = "hyperbolic autoencoder/VAE: train, sample, interpolate, normality (paper section 4)"


def _config_class() -> type:
    """The config class of ``--config`` (imported when the help lists its shipped configs)."""
    from ..apps.vae import VAEConfig

    return VAEConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._options import add_config_arguments

    sub = parser.add_subparsers(dest="vae_command", metavar="<action>")
    t = sub.add_parser("train", help="train an autoencoder; writes metrics.json, figure.png, "
                                     "samples, checkpoints and the resolved config to --out",
                       description="Train the hyperbolic autoencoder Z = P^T F(X), "
                                   "X_hat = F^-1(P Z) with group-norm pruning of P and an "
                                   "energy-distance Gaussianity term.")
    t.add_argument("--dataset", nargs="+", metavar=("NAME", "PATH"),
                   help="digits | lfw | mnist-idx PATH | folder PATH (default: the config's)")
    t.add_argument("--resize", type=int, metavar="SIZE",
                   help="folders: centre-crop each image to a square and resize to SIZE x SIZE "
                        "(needed when the images have different sizes)")
    t.add_argument("--crop", type=int, metavar="PIXELS",
                   help="folders, with --resize: side of the centred square cut before resizing "
                        "(CelebA: 140)")
    t.add_argument("--limit", type=int, metavar="N", help="use only the first N images")
    add_config_arguments(t, default_config="vae-digits", out_required=True, config_class=_config_class)
    t.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads: train.threads (0 = the free physical cores; default: "
                        "the config's)")

    s = sub.add_parser("sample", help="decode samples of the latent prior N(0, s^2 I)")
    s.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--out", required=True, help="PNG file (a grid of the samples)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sigma", type=float, default=None, help="prior std (default: the model's)")
    s.add_argument("--npy", default=None, metavar="F.npy",
                   help="also save the samples as a .npy array (N, C, H, W); the name must end in .npy")

    i = sub.add_parser("interpolate", help="decode the straight line between two latents")
    i.add_argument("--a", required=True, metavar="IMG",
                   help="an image file, or an integer index into the run's training images")
    i.add_argument("--b", required=True, metavar="IMG", help="as --a")
    i.add_argument("--steps", type=int, default=8, help="points on the line, endpoints included")
    i.add_argument("--out", required=True, help="PNG file: a row [a, decoded points..., b]")

    n = sub.add_parser("normality", help="energy distance, Q-Q plot and histograms of the "
                                         "latents against N(0, s^2 I)")
    n.add_argument("--out", default=None, metavar="DIR", help="folder (default: <run>/normality)")
    n.add_argument("--n", type=int, default=1000, help="held-out images to encode (default 1000)")
    n.add_argument("--split", choices=("eval", "train"), default="eval")
    for p in (s, i, n):
        p.add_argument("--checkpoint", required=True, metavar="C",
                       help="run folder, its checkpoints/ folder, a step-N folder or model.safetensors")
        p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def _train(args: argparse.Namespace) -> str:
    from ..apps.vae import VAEConfig, train_command
    from ._options import check_shipped_config, command_line_overrides, config_file_input

    check_shipped_config(VAEConfig, args)
    pairs = command_line_overrides(VAEConfig, args)
    return train_command(args.config, [o for o, _ in pairs], args.out, dataset=args.dataset,
                         resize=args.resize, crop=args.crop, limit=args.limit, threads=args.threads,
                         resume=args.resume, overwrite=args.overwrite, quiet=args.quiet,
                         config_file=config_file_input(args.config), start=args.start_config,
                         given=[g for _, g in pairs])


def _sample(args: argparse.Namespace) -> str:
    from ..apps.vae import sample

    return sample(args.checkpoint, args.n, args.out, seed=args.seed, sigma=args.sigma, npy=args.npy,
                  overwrite=args.overwrite)


def _interpolate(args: argparse.Namespace) -> str:
    from ..apps.vae import interpolate

    return interpolate(args.checkpoint, args.a, args.b, args.steps, args.out, overwrite=args.overwrite)


def _normality(args: argparse.Namespace) -> str:
    from ..apps.vae import normality

    return normality(args.checkpoint, args.out, args.n, args.split, overwrite=args.overwrite)


ACTIONS = {"train": _train, "sample": _sample, "interpolate": _interpolate, "normality": _normality}


def run(args: argparse.Namespace) -> int:
    from .. import log

    action = getattr(args, "vae_command", None)
    if action is None:
        raise ValueError("fhcnn vae needs an action: train, sample, interpolate or normality "
                         "(see fhcnn vae --help)")
    message = ACTIONS[action](args)
    if message:  # a non-zero rank under torchrun trains silently: rank 0 reports
        log.result(message)
    return 0
