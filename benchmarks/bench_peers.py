"""Thin wrapper: `python benchmarks/bench_peers.py [--quick] [--out DIR]` = `fhcnn bench peers`."""

import sys

from fhcnn.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", "benchmarks/results"]
    sys.exit(main(["bench", "peers", *args]))
