"""``fhcnn segment``: segment a whole video from a few labelled frames (one 3D volume)."""

from __future__ import annotations

import argparse

HELP = "segment a video from a few labelled frames with a fully reversible 3D network"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._options import add_config_arguments

    parser.add_argument("video", help="folder of frames (DAVIS JPEGImages/480p/<seq> or numbered "
                                      "JPEG/PNG), .gif, .mp4/.avi, or .npy (T, H, W, 3)")
    parser.add_argument("--labels", required=True, metavar="MASKS",
                        help="folder of PNG masks named like the frames (0 = background; other "
                             "palette indices or 255 = objects), or .npy (T, H, W)")
    parser.add_argument("--label-frames", default=None, metavar="I,J,K",
                        help="frames whose masks are used for training, 0-based; negative counts from "
                             "the end (-1 = the last frame). Default: first, middle, last; or the "
                             "frames MASKS has masks for, if not all")
    parser.add_argument("--eval-labels", default=None, metavar="FULL_MASKS",
                        help="masks to score the result on the other frames (never trained on)")
    parser.add_argument("--scale", type=float, default=None,
                        help="resize factor of the frames before training (data.scale, default 1)")
    add_config_arguments(parser, default_config="video", out_required=True)


def run(args: argparse.Namespace) -> int:
    from .. import log
    from ..apps._setup import check_dense_setup, check_resources, config_file_input
    from ..apps.segment import SegmentConfig, load_video_inputs, segment_video
    from ..apps.segment.pipeline import check_parallel
    from ..engine.sizes import scaled_size
    from ..rundir import prepare_output_dir
    from ._options import config_from_args

    # validate everything (inputs, device, model) before creating --out
    cfg = config_from_args(SegmentConfig, args)
    inputs = load_video_inputs(args.video, args.labels, args.label_frames, args.eval_labels)
    check_dense_setup(cfg, 3, len(inputs.classes))
    check_parallel(inputs, cfg)  # a parallel.space split that cannot work stops here
    t, h, w = inputs.frames.shape[:3]
    scaled = scaled_size((h, w), cfg.data.scale)
    check_resources(cfg, 3, len(inputs.classes), (t, *scaled))  # threads, steps, memory
    out = prepare_output_dir(args.out, args.resume, args.overwrite, tool="segment", config=cfg,
                             config_file=config_file_input(args.config),
                             roles={"video": args.video, "labels": args.labels,
                                    "eval_labels": args.eval_labels},
                             extra={"label_frames": inputs.label_frames})
    log.setup(args.quiet)
    metrics = segment_video(inputs, cfg, out, quiet=args.quiet, resume=args.resume)
    if not metrics:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    if "miou" in metrics:
        log.result(f"mIoU {metrics['miou']:.4f} on {len(metrics['scored_frames'])} held-out frames "
                   f"(copy-nearest baseline {metrics['copy_nearest_baseline']['miou']:.4f}); "
                   f"outputs in {out}")
    else:
        log.result(f"outputs in {out}")
    return 0
