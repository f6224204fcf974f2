"""Run every benchmark: `python benchmarks/run_all.py [--quick] [--out DIR]` = `fhcnn bench all`.

Results measured for the README live in benchmarks/results/ (JSON with raw numbers and the
environment, PNG plots).
"""

import sys

from fhcnn.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", "benchmarks/results"]
    sys.exit(main(["bench", "all", *args]))
