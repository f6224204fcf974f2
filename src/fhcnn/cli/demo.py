"""``fhcnn demo``: generate a small video, label 3 frames, train a fully reversible 3D network,
segment every frame, print mIoU and training memory, write the figures."""

from __future__ import annotations

import argparse

HELP = "segment a generated video from 3 labelled frames (a few minutes on a CPU) and compare memory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="fhcnn-demo", help="output folder (default ./fhcnn-demo; "
                                                             "a previous demo there is replaced)")
    parser.add_argument("--frames", type=int, default=32, help="frames of the generated video (default 32)")
    parser.add_argument("--size", default="64x96", help="frame size HxW (default 64x96)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the demo config's)")
    parser.add_argument("--config", default="video-demo", help="network/training config (default video-demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated video")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .. import log
    from ..apps._setup import check_resources
    from ..apps.segment.demo import run_demo
    from ..config import load_config
    from ..engine import SegmentConfig
    from ..errors import InputError
    from ..rundir import RunFolder, prepare_output_dir

    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise InputError(f"--size must look like 64x96, got {args.size!r}") from None
    if args.frames < 3 or h < 8 or w < 8:
        raise InputError("--frames must be >= 3 and --size at least 8x8")
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    overrides = list(args.overrides) + ([f"train.steps={args.steps}"] if args.steps is not None else [])
    cfg = load_config(SegmentConfig, args.config, overrides)
    check_resources(cfg, 3, 3, (args.frames, h, w))  # threads, steps, memory: before OUT exists
    previous = RunFolder.open(args.out) if args.out and Path(args.out).is_dir() else None
    # the demo's own earlier run is replaced
    out = prepare_output_dir(args.out, overwrite=previous is not None and previous.marker.get("tool") == "demo",
                             tool="demo", config=cfg, outputs=("video", "segmentation", "demo.json"),
                             resumable=False)
    log.setup(args.quiet)
    run_demo(out, cfg, frames=args.frames, size=(h, w), seed=args.seed, quiet=args.quiet,
             say=log.result, log=lambda s: log.info("   " + s))
    return 0
