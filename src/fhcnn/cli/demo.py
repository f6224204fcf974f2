"""``fhcnn demo``: generate a small video, label 3 frames, train a fully reversible 3D network,
segment every frame, print mIoU and training memory, write the figures."""

from __future__ import annotations

import argparse

#: The config ``fhcnn demo`` runs by default; a ``--config`` file is read over it.
DEMO_CONFIG = "video-demo"

HELP = "segment a generated video from 3 labelled frames (a few minutes on a CPU) and compare memory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="fhcnn-demo", help="output folder (default ./fhcnn-demo; "
                                                             "a previous demo there is replaced)")
    parser.add_argument("--frames", type=int, default=32, help="frames of the generated video, at least 4 (default 32)")
    parser.add_argument("--size", default="64x96", help="frame size HxW (default 64x96)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the demo config's)")
    parser.add_argument("--config", default=DEMO_CONFIG, help=f"network/training config: a shipped name or a file "
                                                              f"read over {DEMO_CONFIG} (default {DEMO_CONFIG})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated video")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from .. import log
    from ..apps.segment.demo import demo_command

    demo_command(args.out, args.config, args.overrides, frames=args.frames, size=args.size, steps=args.steps,
                 seed=args.seed, quiet=args.quiet, start=DEMO_CONFIG, say=log.result, log=lambda s: log.info("   " + s))
    return 0
