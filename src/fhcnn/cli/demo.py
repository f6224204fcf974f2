"""``fhcnn demo``: generate a small video, label 3 frames, train a fully reversible 3D network,
segment every frame, print mIoU and training memory, write the figures."""

from __future__ import annotations

import argparse
import sys

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
    import json
    import time
    from pathlib import Path

    import torch

    from ..atomic import atomic_write_text
    from ..config import load_config, prepare_output_dir
    from ..data.video import generate_video
    from ..errors import InputError
    from ..memory import saved_tensor_bytes
    from ..segmentation import SegmentConfig, build_model
    from ..segmentation.video import load_video_inputs, segment_video

    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise InputError(f"--size must look like 64x96, got {args.size!r}") from None
    if args.frames < 3 or h < 8 or w < 8:
        raise InputError("--frames must be >= 3 and --size at least 8x8")
    overrides = list(args.overrides) + ([f"train.steps={args.steps}"] if args.steps else [])
    cfg = load_config(SegmentConfig, args.config, overrides)
    out = Path(args.out)
    previous_demo = (out / "demo.json").is_file()
    out = prepare_output_dir(out, overwrite=previous_demo)
    t_start = time.perf_counter()
    data = out / "video"
    print(f"1. generating a {args.frames}-frame {h}x{w} video with 2 moving, rotating, scaling, "
          f"occluding objects -> {data}")
    generate_video(data, frames=args.frames, height=h, width=w, objects=2, seed=args.seed, name="demo")
    seq_f, seq_m = data / "JPEGImages" / "480p" / "demo", data / "Annotations" / "480p" / "demo"
    t = args.frames
    frames = f"0,{(t - 1) // 2},{t - 1}"
    inputs = load_video_inputs(seq_f, seq_m, frames, seq_m)
    print(f"2. training on the masks of frames {frames} only; the other {t - 3} frames are scored")
    log = (lambda s: None) if args.quiet else (lambda s: print("   " + s, file=sys.stderr, flush=True))
    res = out / "segmentation"
    res.mkdir(exist_ok=True)
    for stale in ("checkpoints", "metrics.jsonl"):
        p = res / stale
        if p.is_dir():
            import shutil
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    metrics = segment_video(inputs, cfg, res, quiet=args.quiet, log=log)
    print(f"3. held-out mIoU {metrics['miou']:.3f} (per object IoU "
          f"{', '.join(f'{v:.3f}' for v in metrics['iou'][1:] if v is not None)}); copying the "
          f"nearest labelled mask gives {metrics['copy_nearest_baseline']['miou']:.3f}; "
          f"training took {metrics['train_time_s']:.0f} s")
    # memory: the same network, one training window, three gradient modes
    model = build_model(cfg.model, 3, len(inputs.classes))
    x = torch.rand(1, 3, *metrics["train_window"])
    mem = {}
    for mode, name in ((False, "plain autograd"), ("block", "block-reversible"), (True, "fully reversible")):
        if cfg.model.arch != "hyperbolic":
            break
        model.core.net.reversible = mode
        mem[name] = saved_tensor_bytes(lambda: model(x).sum())[0]
    print(f"4. activation memory of one training window {tuple(metrics['train_window'])} (batch 1):")
    for name, b in mem.items():
        ratio = "" if name == "plain autograd" else f"  ({mem['plain autograd'] / max(b, 1):.1f}x less)"
        print(f"     {name:17s} {b / 2**20:8.2f} MiB{ratio}")
    summary = {"miou": metrics["miou"], "iou": metrics["iou"],
               "copy_nearest_baseline": metrics["copy_nearest_baseline"]["miou"],
               "train_time_s": metrics["train_time_s"], "activation_bytes": mem,
               "total_time_s": round(time.perf_counter() - t_start, 1), "video": [t, h, w]}
    atomic_write_text(out / "demo.json", json.dumps(summary, indent=1) + "\n")
    print(f"5. figures: {res / 'overlay.gif'}, {res / 'labelled_frames.png'}, "
          f"{res / 'training_curves.png'}; masks in {res / 'masks'}")
    print(f"done in {summary['total_time_s']:.0f} s")
    return 0
