"""``fhcnn volume``: segment a 3D volume (medical, microscopy, seismic) from sparse labels."""

from __future__ import annotations

import argparse

HELP = "segment a 3D volume (CT/MRI, microscopy, seismic) from a few labelled slices or scribbles"


def _config_class() -> type:
    """The config class of ``--config`` (imported when the help lists its shipped configs)."""
    from ..apps.volume import VolumeConfig

    return VolumeConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._options import add_config_arguments

    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="co-registered volumes, one channel each (e.g. FLAIR and T1c), or one file "
                             "holding several channels: .npy, NIfTI, TIFF, zarr (x.zarr:path), HDF5 "
                             "(x.h5:dataset), SEG-Y")
    parser.add_argument("--labels", required=True, metavar="LABELS",
                        help="label volume of the same grid: classes 0..K-1, --ignore for unlabelled")
    parser.add_argument("--eval-labels", default=None, metavar="FULL",
                        help="complete labels, scored where LABELS is unlabelled (fhcnn and baselines)")
    parser.add_argument("--ignore", type=int, default=255, metavar="VALUE",
                        help="the label value of unlabelled voxels (default 255)")
    parser.add_argument("--channel-axis", type=int, default=None, metavar="N",
                        help="the channel axis of a single multi-channel IMAGE, where it is ambiguous")
    parser.add_argument("--save-probs", action="store_true",
                        help="also write the class probabilities (probabilities.zarr, float16)")
    add_config_arguments(parser, default_config="volume", out_required=True, config_class=_config_class)


def run(args: argparse.Namespace) -> int:
    from .. import log
    from ..apps.volume import VolumeConfig, volume_command
    from ._options import config_file_input, config_from_args

    metrics, out = volume_command(args.images, args.labels, config_from_args(VolumeConfig, args), args.out,
                                  eval_labels=args.eval_labels, ignore=args.ignore,
                                  channel_axis=args.channel_axis, save_probs=args.save_probs,
                                  resume=args.resume, overwrite=args.overwrite, quiet=args.quiet,
                                  config_file=config_file_input(args.config))
    if not metrics:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    if "miou" in metrics:
        base = ", ".join(f"{n} {m['miou']:.4f}" for n, m in metrics.get("baselines", {}).items())
        log.result(f"mIoU {metrics['miou']:.4f} where the labels are unlabelled"
                   + (f" (baselines: {base})" if base else "") + f"; outputs in {out}")
    else:
        log.result(f"outputs in {out}")
    return 0
