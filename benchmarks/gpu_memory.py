"""GPU memory of training, measured with ``torch.cuda.max_memory_allocated`` (needs CUDA).

    python benchmarks/gpu_memory.py depth  OUT.json
    python benchmarks/gpu_memory.py segment OUT.json -- <fhcnn segment arguments>
    python benchmarks/gpu_memory.py report RUN_DIR [--tag h200]

``depth``: peak memory of one forward+backward of a 2D net (4 channels, 512x512, units
``[(d/2, down), (d/2, up)]``) for depths 8, 32, 128 in plain / block / reversible mode, after
one warm-up step (cuDNN workspaces), above the memory held before the step.
``segment``: runs ``fhcnn segment`` with the given arguments and records the peak memory of
the whole run (training and prediction) with the wall time.
``report``: gathers RUN_DIR's JSON files (written by ``benchmarks/gpu_check.sh``) into
``benchmarks/results/gpu_<tag>.json`` and a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _paths import RESULTS  # noqa: E402

DEPTHS = (8, 32, 128)


def depth_sweep() -> dict:
    import torch

    from fhcnn import HyperbolicNetwork
    from fhcnn.memory import cuda_peak_bytes

    peaks: dict[str, list[int]] = {}
    for mode, name in ((False, "plain"), ("block", "block"), (True, "reversible")):
        row = []
        for d in DEPTHS:
            torch.manual_seed(0)
            net = HyperbolicNetwork(4, [(d // 2, "down"), (d // 2, "up")], dim=2, reversible=mode).cuda()
            x = torch.randn(1, 4, 512, 512, device="cuda")
            net(x).square().sum().backward()  # warm-up
            net.zero_grad(set_to_none=True)
            row.append(cuda_peak_bytes(lambda: net(x).square().sum().backward())[0])
            del net, x
        peaks[name] = row
    return {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "input": [1, 4, 512, 512],
            "units": "[(d/2, 'down'), (d/2, 'up')], dim=2", "depths": list(DEPTHS), "peak_bytes": peaks}


def segment_peak(argv: list[str]) -> dict:
    import torch

    from fhcnn.bench.reference import environment
    from fhcnn.cli import main

    env = environment("cuda")  # the machine, its load and the CPU reference workload, before the run
    t0 = time.time()
    torch.cuda.reset_peak_memory_stats()
    rc = main(argv)
    return {"rc": rc, "wall_s": round(time.time() - t0, 1), "gpu": torch.cuda.get_device_name(0),
            "torch": torch.__version__, "argv": argv,
            "max_memory_allocated_bytes": torch.cuda.max_memory_allocated(),
            "max_memory_reserved_bytes": torch.cuda.max_memory_reserved(), "environment": env}


def report(run_dir: Path, tag: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fhcnn.atomic import atomic_path, atomic_write_text

    def load(name: str) -> dict:
        return json.loads((run_dir / name).read_text())

    depth = load("depth.json")
    cases = {}
    for mem in ("plain", "reversible"):
        for where, label in (("win", "2 windows 32x128x128"), ("full", "whole video 1x48x240x428")):
            peak = load(f"pv_{mem}_{where}.json")
            metrics = load(f"pv_{mem}_{where}_metrics.json")
            cases[f"{mem}, {label}"] = {"peak_bytes": peak["max_memory_allocated_bytes"],
                                        "activation_bytes": metrics["activation_bytes"],
                                        "train_time_s": metrics["train_time_s"],
                                        "steps": peak["steps"]}
    train = load("pv_train_metrics.json")
    train_peak = load("pv_train.json")
    keep = ("miou", "J", "iou", "copy_nearest_baseline", "train_time_s", "predict_time_s", "activation_bytes",
            "parameters", "volume_size", "padded_size", "train_window", "label_frames", "scale", "frames")
    result = {"benchmark": "gpu_memory", "gpu": depth["gpu"], "torch": depth["torch"],
              "depth_sweep": depth, "paper_video_memory": cases,
              "paper_video_training": {**{k: train.get(k) for k in keep}, "steps": train_peak["steps"],
                                       "peak_bytes": train_peak["max_memory_allocated_bytes"],
                                       "video": "DAVIS 2016 blackswan, first 48 frames"},
              "environment": train_peak.get("environment")}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"gpu_{tag}.json"
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, row in depth["peak_bytes"].items():
        a.plot(depth["depths"], [v / 2**20 for v in row], "o-", label=name)
    a.set(xscale="log", xlabel="layers", ylabel="peak GPU memory of one step (MiB)",
          title=f"depth sweep, 4x512x512 input ({depth['gpu']})")
    a.set_xticks(depth["depths"], [str(d) for d in depth["depths"]])
    a.legend()
    labels = list(cases)
    b.barh(range(len(labels)), [cases[k]["peak_bytes"] / 2**30 for k in labels],
           color=["tab:blue" if k.startswith("plain") else "tab:green" for k in labels])
    b.set_yticks(range(len(labels)), labels, fontsize=8)
    b.set(xlabel="peak GPU memory (GiB)", title="paper-video net (Table 2, 20.4 M parameters)")
    for i, k in enumerate(labels):
        b.text(cases[k]["peak_bytes"] / 2**30, i, f" {cases[k]['peak_bytes'] / 2**30:.2f}", va="center")
    fig.tight_layout()
    with atomic_path(RESULTS / f"gpu_{tag}.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["depth", "segment", "report"])
    p.add_argument("path", help="output JSON (depth, segment) or the run folder (report)")
    p.add_argument("--tag", default="gpu")
    p.add_argument("--steps", type=int, default=None, help="segment: recorded with the result")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args, rest = p.parse_args(argv[:cut]), argv[cut + 1:]  # after "--": fhcnn segment arguments
    if args.what == "report":
        print(report(Path(args.path), args.tag))
        return
    import torch
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA device")
    res = depth_sweep() if args.what == "depth" else {**segment_peak(rest), "steps": args.steps}
    print(json.dumps(res))
    Path(args.path).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
