"""``fhcnn bench``: memory, time, numerical drift, Table 1 and peer comparisons."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

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
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace this benchmark's results of an earlier 'fhcnn bench' in "
                             "--out (the other benchmarks' results there stay)")


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..bench import IN_ALL, load
    from ..rundir import prepare_output_dir

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(IN_ALL) if args.which == "all" else [args.which]
    mods = {n: load(n) for n in names}
    # a results folder gathers the benchmarks' files: this run's are the only ones it replaces
    out = Path(prepare_output_dir(args.out, overwrite=args.overwrite, tool="bench", collect=True,
                                  outputs=[f"{m.NAME}{e}" for m in mods.values() for e in (".json", ".png")],
                                  resumable=False))
    total = sum(m.work(args.quick) for m in mods.values())
    t0 = time.perf_counter()
    with tqdm(total=total, desc="bench", unit="step", disable=args.quiet, dynamic_ncols=True) as bar:
        def tick(msg: str) -> None:
            bar.set_postfix_str(msg, refresh=False)
            bar.update(1)

        for name, mod in mods.items():
            bar.set_description(name)
            mod.run(out, quick=args.quick, device=device if name != "drift" else "cpu", tick=tick)
            if not args.quiet:
                bar.write(f"{name}: wrote {out / (name + '.json')} and {out / (name + '.png')}")
    if not args.quiet:
        print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0
