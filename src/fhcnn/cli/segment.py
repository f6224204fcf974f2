"""``fhcnn segment``: segment a whole video from a few labelled frames (one 3D volume)."""

from __future__ import annotations

import argparse

HELP = "segment a video from a few labelled frames with a fully reversible 3D network"


def _config_class() -> type:
    """The config class of ``--config`` (imported when the help lists its shipped configs)."""
    from ..apps.segment import SegmentConfig

    return SegmentConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._options import add_config_arguments

    parser.add_argument("video", help="folder of numbered frames (DAVIS JPEGImages/480p/<seq>; "
                                      "PNG, JPEG, BMP, TIFF, WebP), .gif, a video file "
                                      "(.mp4, .m4v, .avi, .mov, .mkv, .webm), or .npy (T, H, W, 3) or (T, H, W)")
    parser.add_argument("--labels", required=True, metavar="MASKS",
                        help="folder of masks (PNG, TIFF, BMP) named like the frames: label indices "
                             "(0 = background, other palette or grey values = objects, 255 = void "
                             "beside several objects) or RGB colours (one class each, black = "
                             "background); or .npy (T, H, W) of whole numbers (255 or NaN = unlabelled)")
    parser.add_argument("--label-frames", default=None, metavar="I,J,K",
                        help="frames whose masks are used for training, 0-based; negative counts from "
                             "the end (-1 = the last frame). Default: first, middle, last; or the "
                             "frames MASKS has masks for, if not all")
    parser.add_argument("--eval-labels", default=None, metavar="FULL_MASKS",
                        help="masks to score the result on the other frames (never trained on)")
    parser.add_argument("--scale", type=float, default=None,
                        help="resize factor of the frames before training (data.scale, default 1)")
    add_config_arguments(parser, default_config="video", out_required=True, config_class=_config_class)


def run(args: argparse.Namespace) -> int:
    from .. import log
    from ..apps.segment import SegmentConfig
    from ..apps.segment.pipeline import segment_command
    from ._options import config_file_input, config_from_args

    metrics, out = segment_command(args.video, args.labels, config_from_args(SegmentConfig, args), args.out,
                                   label_frames=args.label_frames, eval_labels=args.eval_labels,
                                   resume=args.resume, overwrite=args.overwrite, quiet=args.quiet,
                                   config_file=config_file_input(args.config))
    if not metrics:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    if "miou" in metrics:
        log.result(f"mIoU {metrics['miou']:.4f} on {len(metrics['scored_frames'])} held-out frames "
                   f"(copy-nearest baseline {metrics['copy_nearest_baseline']['miou']:.4f}); "
                   f"outputs in {out}")
    else:
        log.result(f"outputs in {out}")
    return 0
