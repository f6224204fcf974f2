"""``fhcnn bench``: memory, time, numerical drift, Table 1 and peer comparisons."""

from __future__ import annotations

import argparse

from ..bench import BENCHMARKS

HELP = "benchmark memory (Figure 1), Table 1, step time, numerical drift and peers; writes JSON + PNG"

CHOICES = (*BENCHMARKS, "all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("which", nargs="?", default="all", choices=CHOICES,
                        help="which benchmark to run (default: all)")
    parser.add_argument("--out", required=True,
                        help="output folder for <name>.json and <name>.png (created if missing)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: everything in a few minutes on 2 CPU cores")
    parser.add_argument("--device", default="auto",
                        help="cpu | cuda | cuda:N | auto (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: stable timings on a shared machine; "
                             "0 keeps torch's default)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar (the lines naming the files written stay)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace this benchmark's results of an earlier 'fhcnn bench' in "
                             "--out (the other benchmarks' results there stay)")


def run(args: argparse.Namespace) -> int:
    from ..bench import run_command

    run_command(args.which, args.out, quick=args.quick, device=args.device, threads=args.threads,
                quiet=args.quiet, overwrite=args.overwrite)
    return 0
