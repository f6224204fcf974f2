"""Thin wrapper: `python benchmarks/bench_memory.py [--quick] [--out DIR]` = `fhcnn bench memory`."""

import sys

from fhcnn.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", "benchmarks/results"]
    sys.exit(main(["bench", "memory", *args]))
