"""Video segmentation from 3 labelled frames: the fully reversible hyperbolic net vs a 3D U-Net.

    python benchmarks/segmentation_video.py generated [--steps N] [--seeds 0,1]
    python benchmarks/segmentation_video.py davis [--sequences blackswan,dog] [--arch hyperbolic,unet]

``generated``: synthetic videos (48 frames of 96x160, 2 textured objects that move, rotate,
scale and occlude over a panning textured background; ``fhcnn.data.video.generate_video``),
labels on frames 0, 23, 47, every other frame scored. ``davis``: DAVIS 2016 sequences from
``../shared/data/davis2016`` (first 48 frames, ``--scale 0.2``, labels on frames 0, 23, 47,
scored at full size on the other frames), next to the copy-nearest-labelled-mask baseline.

Each network is trained with the same loss, labels, windows and schedule (the ``video``
config; the U-Net with ``model.arch=unet``). Records mIoU against training time (held-out
frames at the training resolution, evaluated every ``--eval-every`` steps), the final
full-size mIoU, and the activation memory of one training step (bytes autograd saves,
counted exactly with ``fhcnn.memory``). Writes ``benchmarks/results/seg_video_<mode>.json``
and ``.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fhcnn.apps.segment import VideoInputs, load_video_inputs, segment_video
from fhcnn.atomic import atomic_path, atomic_write_text
from fhcnn.bench.reference import environment
from fhcnn.config import load_config
from fhcnn.data.video import generate_video
from fhcnn.engine import IGNORE, SegmentConfig, build_model, confusion_matrix
from fhcnn.memory import saved_tensor_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _paths import DATA, RESULTS  # noqa: E402

DAVIS = DATA / "davis2016" / "DAVIS"
LABEL_FRAMES = [0, 23, 47]


def memory_of(cfg: SegmentConfig, window: tuple[int, int, int], batch: int, k: int) -> dict[str, int]:
    """Activation bytes of one training step for the configured net in each gradient mode."""
    out = {}
    x = torch.rand(batch, 3, *window)
    modes = ("reversible", "block", "plain") if cfg.model.arch == "hyperbolic" else ("plain",)
    for mode in modes:
        model = build_model(cfg.model, 3, k, memory=mode)
        out[mode] = saved_tensor_bytes(lambda: model(x).sum())[0]
    return out


def run_one(inputs: VideoInputs, cfg: SegmentConfig, scale: float, eval_every: int, name: str) -> dict:
    env = environment()  # the machine, its load and the reference workload, just before the run
    t0 = time.perf_counter()
    cfg = copy.deepcopy(cfg)
    cfg.data.scale = scale
    cfg.data.eval_every = eval_every
    m = segment_video(inputs, cfg, None, quiet=True,
                      log=lambda s: print("   " + s, file=sys.stderr, flush=True))
    curve = [{"step": r["step"], "time_s": r["time_s"], "miou": r["miou"]} for r in m["history"] if "miou" in r]
    k = len(inputs.classes)
    res = {"name": name, "arch": cfg.model.arch, "label_frames": inputs.label_frames,
           "frames": len(inputs.names), "miou": m["miou"], "iou": m["iou"], "J": m.get("J"),
           "copy_nearest_miou": m["copy_nearest_baseline"]["miou"],
           "copy_nearest_J": m["copy_nearest_baseline"].get("J"),
           "train_time_s": m["train_time_s"], "predict_time_s": m["predict_time_s"],
           "wall_s": round(time.perf_counter() - t0, 1), "steps": cfg.train.steps,
           "window": m["train_window"], "batch": cfg.data.batch_size, "volume": m["volume_size"],
           "parameters": m["parameters"], "curve": curve, **_precision_recall(m, inputs, k),
           "activation_bytes": memory_of(cfg, tuple(m["train_window"]), cfg.data.batch_size, k),
           "model": {k2: getattr(cfg.model, k2) for k2 in vars(cfg.model)}, "environment": env}
    print(f"{name:28s} {cfg.model.arch:10s} mIoU {res['miou']:.4f}"
          + (f" J {res['J']:.4f}" if res["J"] is not None else "")
          + (f" P {res['fg_precision']:.3f} R {res['fg_recall']:.3f}" if "fg_precision" in res else "")
          + f" (copy {res['copy_nearest_miou']:.4f})  train {res['train_time_s']:.0f} s  "
          f"act {res['activation_bytes'].get('reversible', res['activation_bytes']['plain']) / 2**20:.1f} MiB",
          flush=True)
    return res


def _precision_recall(m: dict, inputs: VideoInputs, k: int) -> dict:
    """Foreground precision and recall on the scored frames (two classes only): tells whether
    a low J comes from predicting too much foreground or too little."""
    if k != 2 or inputs.eval_labels is None:
        return {}
    held = m["scored_frames"]
    cm = confusion_matrix(m["prediction"][held], inputs.eval_labels[held], 2)  # M[truth, pred]
    return {"fg_precision": float(cm[1, 1]) / max(float(cm[:, 1].sum()), 1.0),
            "fg_recall": float(cm[1, 1]) / max(float(cm[1, :].sum()), 1.0)}


def generated_inputs(seed: int, frames: int, height: int, width: int) -> VideoInputs:
    video, masks = generate_video(None, frames=frames, height=height, width=width, objects=2, seed=seed)
    lab = np.full_like(masks, IGNORE)
    lab[LABEL_FRAMES] = masks[LABEL_FRAMES]
    return VideoInputs(video, [f"{i:05d}" for i in range(frames)], lab, LABEL_FRAMES, masks,
                       "generated ground truth", [0, 1, 2], {"video": f"generated seed {seed}"})


def davis_inputs(seq: str, frames: int = 48, root: Path = DAVIS) -> VideoInputs:
    """The first ``frames`` frames of a DAVIS sequence, labels on frames 0, 23, 47 (first,
    middle, last if the sequence is shorter)."""
    inp = load_video_inputs(root / "JPEGImages" / "480p" / seq, root / "Annotations" / "480p" / seq, "0")
    t = min(frames, len(inp.names))
    lf = LABEL_FRAMES if t == 48 else [0, (t - 1) // 2, t - 1]
    inp.frames, inp.names, inp.eval_labels = inp.frames[:t], inp.names[:t], inp.eval_labels[:t]
    inp.labels = np.full_like(inp.eval_labels, IGNORE)
    inp.labels[lf] = inp.eval_labels[lf]
    inp.label_frames = lf
    return inp


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for i, r in enumerate(results):
        c = r["curve"]
        style = "-" if r["arch"] == "hyperbolic" else "--"
        ax[0].plot([p["time_s"] for p in c], [p["miou"] for p in c], style, marker="o", ms=3,
                   label=f"{r['name']} ({r['arch']})", color=f"C{i % 10}")
    ax[0].set_xlabel("training time (s, CPU)")
    ax[0].set_ylabel("held-out mIoU")
    ax[0].set_title(title)
    ax[0].grid(alpha=0.3)
    ax[0].legend(fontsize=7)
    names = [f"{r['name']}\n{r['arch']}" for r in results]
    ours = [r["activation_bytes"].get("reversible", r["activation_bytes"]["plain"]) / 2**20 for r in results]
    ax[1].bar(range(len(results)), ours, color=["C0" if r["arch"] == "hyperbolic" else "C1" for r in results])
    ax[1].set_xticks(range(len(results)), names, fontsize=7)
    ax[1].set_ylabel("activation memory of one training step (MiB)")
    ax[1].set_yscale("log")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["generated", "davis"])
    p.add_argument("--seeds", default="0", help="generated video seeds")
    p.add_argument("--sequences", default="blackswan,car-shadow,cows,dog,goat,horsejump-high,kite-surf,parkour")
    p.add_argument("--arch", default="hyperbolic,unet")
    p.add_argument("--config", default="video")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--unet-set", action="append", default=[], help="extra overrides for the U-Net")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--scale", type=float, default=0.2, help="DAVIS frame scale")
    p.add_argument("--size", default="48x96x160", help="generated video TxHxW")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--tag", default="", help="suffix of the result files")
    p.add_argument("--davis", type=Path, default=DAVIS, help="DAVIS root (holds JPEGImages/480p, Annotations/480p)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    out = RESULTS / f"seg_video_{args.mode}{args.tag}"
    if args.mode == "generated":
        t, h, w = (int(v) for v in args.size.split("x"))
        cases = [(f"generated seed {s}", lambda s=int(s): generated_inputs(s, t, h, w), 1.0)
                 for s in args.seeds.split(",")]
    else:
        if not args.davis.is_dir():
            sys.exit(f"DAVIS data not found at {args.davis}")
        cases = [(seq, lambda seq=seq: davis_inputs(seq, root=args.davis), args.scale)
                 for seq in args.sequences.split(",")]
    for name, make, scale in cases:
        inputs = make()
        for arch in args.arch.split(","):
            ovr = list(args.overrides) + [f"model.arch={arch}"] + (args.unet_set if arch == "unet" else [])
            cfg = load_config(SegmentConfig, args.config, ovr)
            results.append(run_one(inputs, cfg, scale, args.eval_every, name))
            payload = {"mode": args.mode, "config": args.config, "overrides": args.overrides,
                       "unet_overrides": args.unet_set, "label_frames": LABEL_FRAMES,
                       "torch_threads": torch.get_num_threads(), "results": results}
            # out.name + suffix, not with_suffix: a tag like "_balance0.5" holds a dot
            atomic_write_text(out.parent / (out.name + ".json"), json.dumps(payload, indent=1) + "\n")
            plot(results, out.parent / (out.name + ".png"), f"video segmentation ({args.mode})")
    print(f"wrote {out}.json and .png")


if __name__ == "__main__":
    main()
