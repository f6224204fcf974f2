"""``fhcnn vae``: the hyperbolic autoencoder / VAE (paper section 4 and 6.2).

    fhcnn vae train --dataset digits --out runs/digits            # default config vae-digits
    fhcnn vae train --dataset lfw --out runs/lfw --set train.steps=3000
    fhcnn vae train --dataset mnist-idx data/t10k-images-idx3-ubyte.gz --config vae-mnist --out runs/mnist
    fhcnn vae train --dataset folder img_align_celeba --resize 64 --crop 140 --config vae-celeba --out runs/celeba
    fhcnn vae sample --checkpoint runs/digits --n 64 --out samples.png
    fhcnn vae interpolate --checkpoint runs/digits --a 3 --b 17 --steps 8 --out interp.png
    fhcnn vae normality --checkpoint runs/digits --out runs/digits/normality

``--a``/``--b`` of ``interpolate`` are either an integer index into the run's training
images (the same split as in training) or an image file (converted to the model's
channels, centre-cropped to a square and resized to the model's image size).
"""

from __future__ import annotations

import argparse

HELP = "hyperbolic autoencoder/VAE: train, sample, interpolate, normality (paper section 4)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._options import add_config_arguments

    sub = parser.add_subparsers(dest="vae_command", metavar="<action>")
    t = sub.add_parser("train", help="train an autoencoder; writes metrics.json, figure.png, "
                                     "samples, checkpoints and the resolved config to --out",
                       description="Train the hyperbolic autoencoder Z = P^T F(X), "
                                   "X_hat = F^-1(P Z) with group-norm pruning of P and an "
                                   "energy-distance Gaussianity term.")
    t.add_argument("--dataset", nargs="+", metavar=("NAME", "PATH"),
                   help="digits | lfw | mnist-idx PATH | folder PATH (default: the config's "
                        "data.dataset)")
    t.add_argument("--resize", type=int, metavar="SIZE",
                   help="folders: centre-crop each image to a square and resize to SIZE x SIZE "
                        "(needed when the images have different sizes)")
    t.add_argument("--crop", type=int, metavar="PIXELS",
                   help="folders: side of the centred square cut before resizing (CelebA: 140)")
    t.add_argument("--limit", type=int, metavar="N", help="use only the first N images")
    add_config_arguments(t, default_config="vae-digits", out_required=True)
    t.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the config's 'threads', else torch's choice)")

    s = sub.add_parser("sample", help="decode samples of the latent prior N(0, s^2 I)")
    s.add_argument("--checkpoint", required=True, metavar="C",
                   help="run folder, its checkpoints/ folder, a step-N folder or model.safetensors")
    s.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--out", required=True, help="PNG file (a grid of the samples)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sigma", type=float, default=None,
                   help="prior standard deviation (default: the model's)")
    s.add_argument("--npy", default=None, help="also save the samples as a .npy array (N, C, H, W)")
    s.add_argument("--overwrite", action="store_true", help="replace existing --out/--npy files")

    i = sub.add_parser("interpolate", help="decode the straight line between two latents")
    i.add_argument("--checkpoint", required=True, metavar="C")
    i.add_argument("--a", required=True, metavar="IMG",
                   help="an image file, or an integer index into the run's training images")
    i.add_argument("--b", required=True, metavar="IMG", help="as --a")
    i.add_argument("--steps", type=int, default=8, help="points on the line, endpoints included")
    i.add_argument("--out", required=True, help="PNG file: a row [a, decoded points..., b]")
    i.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    n = sub.add_parser("normality", help="energy distance, Q-Q plot and histograms of the "
                                         "latents against N(0, s^2 I)")
    n.add_argument("--checkpoint", required=True, metavar="C")
    n.add_argument("--out", default=None, metavar="DIR",
                   help="folder for normality.png/.json (default: <run>/normality)")
    n.add_argument("--n", type=int, default=1000, help="held-out images to encode (default 1000)")
    n.add_argument("--split", choices=("eval", "train"), default="eval")
    n.add_argument("--overwrite", action="store_true", help="replace a previous normality report")


def _train(args: argparse.Namespace) -> int:
    from .. import log
    from ..apps._setup import config_file_input
    from ..apps.vae import VAEConfig, dataset_overrides, prepare_training, train_vae
    from ..config import load_config
    from ..rundir import prepare_output_dir
    from ._options import config_from_args

    base = load_config(VAEConfig, args.config)
    args.overrides = dataset_overrides(args.dataset, base.data.dataset, args.resize, args.crop,
                                       args.limit) + list(args.overrides or [])
    cfg = config_from_args(VAEConfig, args)
    if args.threads:
        cfg.threads = args.threads
    data = prepare_training(cfg)  # images, device, model: checked before --out exists
    out = prepare_output_dir(args.out, args.resume, args.overwrite, tool="vae", config=cfg,
                             config_file=config_file_input(args.config),
                             roles={"data": cfg.data.path})
    log.setup(args.quiet)
    m = train_vae(cfg, out, resume=args.resume, quiet=args.quiet, data=data)
    if m:  # a non-zero rank under torchrun returns {}: rank 0 reports
        log.result(f"latent_dim {m['latent_dim']} of {m['full_dim']}, recon MSE {m['recon_mse']:.5f}, "
                   f"energy distance {m['energy_distance_before']:.4g} -> {m['energy_distance_after']:.4g}"
                   + (f", classifier confidence on samples {m['classifier_confidence_samples']:.3f}"
                      if "classifier_confidence_samples" in m else "")
                   + f"; {m['train_time_s']:.0f} s; wrote {out}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .. import log
    from ..apps.vae import sample

    r = sample(args.checkpoint, args.n, args.out, seed=args.seed, sigma=args.sigma, npy=args.npy,
               overwrite=args.overwrite)
    log.result(f"wrote {r['n']} samples (latent dim {r['latent_dim']}, s = {r['sigma']:g}) to {args.out}")
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    from .. import log
    from ..apps.vae import interpolate

    interpolate(args.checkpoint, args.a, args.b, args.steps, args.out, overwrite=args.overwrite)
    log.result(f"wrote [a, {args.steps} interpolated decodings, b] to {args.out}")
    return 0


def _normality(args: argparse.Namespace) -> int:
    from .. import log
    from ..apps.vae import normality

    r, out = normality(args.checkpoint, args.out, args.n, args.split, overwrite=args.overwrite)
    log.result(f"energy distance of {r['n']} {args.split} latents (dim {r['latent_dim']}) to "
               f"N(0, {r['sigma']:g}^2 I): {r['energy_distance']:.4f} (two samples of the prior: "
               f"{r['energy_distance_prior_vs_prior']:.4f}); wrote {out}/normality.png, normality.json")
    return 0


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "vae_command", None)
    if action is None:
        print("usage: fhcnn vae {train,sample,interpolate,normality} ... (see fhcnn vae --help)")
        return 2
    return {"train": _train, "sample": _sample, "interpolate": _interpolate,
            "normality": _normality}[action](args)
