"""`python benchmarks/bench_backward.py [--quick] [--out DIR] [--threads N]`: the reversible
backward peak decomposed in states, and the plain / reversible peak on a Table-2-shaped net
(:mod:`fhcnn.bench.backward`; writes backward_peak.json and backward_peak.png). CPU only."""

import argparse

import torch

from fhcnn.bench import backward

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    r = backward.run(a.out, quick=a.quick, tick=print)
    for name, row in r["rows"].items():
        parts = ", ".join(f"{k} {v:.2f}" for k, v in row["decomposition"]["parts_states"].items())
        print(f"{name}: peak {row['decomposition']['peak_states']:.2f} states ({parts}); "
              f"RSS plain / reversible = {row['rss']['plain_over_reversible']:.2f}x")
