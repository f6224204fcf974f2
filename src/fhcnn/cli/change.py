"""``fhcnn change``: time-lapse hyperspectral change detection from a few labelled pixels."""

from __future__ import annotations

import argparse

HELP = "detect change between two hyperspectral images from a few labelled pixels"


def _config_class() -> type:
    """The config class of ``--config`` (imported when the help lists its shipped configs)."""
    from ..apps.change import ChangeConfig

    return ChangeConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._options import add_config_arguments

    parser.usage = ("fhcnn change BEFORE [AFTER] (--labels MAP | --changed MASK [--unchanged MASK]) "
                    "--out OUT [options]")
    parser.description = (
        "Train a 3D network (the two dates as channels, the bands as depth) on one bitemporal "
        "scene from a few labelled pixels and predict the change map of the whole scene. "
        "BEFORE/AFTER: .npy (H, W, bands), .mat (v5 or v7.3), ENVI (.hdr/.HDR header or the raw "
        "file), .tif/.tiff; or one 4D file (2, H, W, bands) holding both dates. "
        "Labels: 1 changed, 0 unchanged, 255 or NaN unlabelled. "
        "OUT gets prediction.npy/.png, figure.png, metrics.json, config.yaml and the checkpoint.")
    parser.add_argument("before", metavar="BEFORE", help="date-1 image, or one 4D file with both dates")
    parser.add_argument("after", metavar="AFTER", nargs="?", help="date-2 image (same H, W, bands)")
    parser.add_argument("--key", help="variable name inside .mat dates, not label maps (default: the largest array; "
                        "two of that size are refused; refused for dates of other formats); for one .mat "
                        "holding both dates: BEFORE_VAR,AFTER_VAR (default: the two 3D arrays in "
                        "name order, numbers by value, printed)")
    g = parser.add_argument_group("labels")
    g.add_argument("--labels", metavar="MAP", help="2D change map .npy/.png/.bmp/.tif/.mat: 1 changed, "
                   "0 unchanged, 255 (or NaN) unlabelled")
    g.add_argument("--changed", metavar="MASK", help="mask of known changed pixels (nonzero; a palette "
                   "image by its palette index, not its colour); alone it is a full binary map (zero = unchanged)")
    g.add_argument("--unchanged", metavar="MASK", help="mask of known unchanged pixels (nonzero)")
    g.add_argument("--label-fraction", type=float, metavar="F",
                   help="train on a stratified random fraction F of the labelled pixels and score "
                        "the rest (e.g. 0.088)")
    g.add_argument("--label-seed", type=int, default=0, help="seed of --label-fraction (default 0)")
    g.add_argument("--eval-labels", metavar="MAP", help="full change map to score against (never "
                   "trained on; training pixels are excluded from the score)")
    parser.add_argument("--scale", type=float, default=None,
                        help="resize the scene by this factor before training (data.scale); "
                             "below 1 a held-out pixel can share a downscaled cell with a "
                             "training pixel, so held-out scores are optimistic")
    add_config_arguments(parser, default_config="change", config_class=_config_class)


def run(args: argparse.Namespace) -> int:
    from .. import log
    from ..apps.change import ChangeConfig
    from ..apps.change.pipeline import change_command
    from ._options import config_file_input, config_from_args

    metrics, out = change_command(
        args.before, args.after, config_from_args(ChangeConfig, args), args.out, key=args.key, labels=args.labels,
        changed=args.changed, unchanged=args.unchanged, label_fraction=args.label_fraction,
        label_seed=args.label_seed, eval_labels=args.eval_labels, resume=args.resume, overwrite=args.overwrite,
        quiet=args.quiet, config_file=config_file_input(args.config))
    if metrics.get("heldout"):
        log.result(f"held-out mIoU {metrics['miou']:.4f} on {metrics['labels']['scored_pixels']} "
                   f"pixels; outputs in {out}")
    elif metrics:
        log.result(f"outputs in {out}")
    return 0
