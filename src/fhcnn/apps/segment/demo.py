"""The demo behind ``fhcnn demo``: generate a small video, label 3 frames, train a fully
reversible 3D network, segment every frame, and measure the activation memory of one
training window in the three gradient modes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ...atomic import atomic_write_text, make_dir, remove
from ...data.video import generate_video
from ...engine import SegmentConfig, build_model
from ...memory import saved_tensor_bytes
from ...options import MemoryMode
from .inputs import load_video_inputs
from .pipeline import segment_video

__all__ = ["run_demo", "demo_command", "GRADIENT_MODES"]

#: The gradient modes the demo compares, with their display names.
GRADIENT_MODES: dict[MemoryMode, str] = {"plain": "plain autograd", "block": "block-reversible",
                                         "reversible": "fully reversible"}


def run_demo(out: Path, cfg: SegmentConfig, *, frames: int = 32, size: tuple[int, int] = (64, 96),
             seed: int = 0, quiet: bool = False, say: Callable[[str], None] = print,
             log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the demo into the existing folder ``out``; returns the summary written to
    ``out/demo.json``. ``say`` prints the numbered results, ``log`` the engine's log lines."""
    t_start = time.perf_counter()
    h, w = size
    data = out / "video"
    say(f"1. generating a {frames}-frame {h}x{w} video with 2 moving, rotating, scaling, "
        f"occluding objects -> {data}")
    generate_video(data, frames=frames, height=h, width=w, objects=2, seed=seed, name="demo")
    seq_f, seq_m = data / "JPEGImages" / "480p" / "demo", data / "Annotations" / "480p" / "demo"
    label_frames = f"0,{(frames - 1) // 2},{frames - 1}"
    inputs = load_video_inputs(seq_f, seq_m, label_frames, seq_m)
    say(f"2. training on the masks of frames {label_frames} only; the other {frames - 3} frames are scored")
    res = out / "segmentation"
    make_dir(res)
    for stale in ("checkpoints", "metrics.jsonl"):  # the previous demo's run: only fhcnn's own files
        remove(res / stale)
    metrics = segment_video(inputs, cfg, res, quiet=quiet, log=log)
    say(f"3. held-out mIoU {metrics['miou']:.3f} (per object IoU "
        f"{', '.join(f'{v:.3f}' for v in metrics['iou'][1:] if v is not None)}); copying the "
        f"nearest labelled mask gives {metrics['copy_nearest_baseline']['miou']:.3f}; "
        f"training took {metrics['train_time_s']:.0f} s")
    mem = window_memory(cfg, len(inputs.classes), metrics["train_window"])
    say(f"4. activation memory of one training window {tuple(metrics['train_window'])} (batch 1):")
    for name, b in mem.items():
        ratio = "" if name == "plain autograd" else f"  ({mem['plain autograd'] / max(b, 1):.1f}x less)"
        say(f"     {name:17s} {b / 2**20:8.2f} MiB{ratio}")
    summary = {"miou": metrics["miou"], "iou": metrics["iou"],
               "copy_nearest_baseline": metrics["copy_nearest_baseline"]["miou"],
               "train_time_s": metrics["train_time_s"], "activation_bytes": mem,
               "total_time_s": round(time.perf_counter() - t_start, 1), "video": [frames, h, w]}
    atomic_write_text(out / "demo.json", json.dumps(summary, indent=1) + "\n")
    say(f"5. figures: {res / 'overlay.gif'}, {res / 'labelled_frames.png'}, "
        f"{res / 'training_curves.png'}; masks in {res / 'masks'}")
    say(f"done in {summary['total_time_s']:.0f} s")
    return summary


def window_memory(cfg: SegmentConfig, num_classes: int, window: list[int]) -> dict[str, int]:
    """Bytes saved for backward by one training window (batch 1) of the config's network, in
    each gradient mode (the hyperbolic network only; empty for the U-Net)."""
    if cfg.model.arch != "hyperbolic":
        return {}
    x = torch.rand(1, 3, *window)
    mem = {}
    for mode, name in GRADIENT_MODES.items():
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model, 3, num_classes, memory=mode)
        mem[name] = saved_tensor_bytes(lambda: model(x).sum())[0]
    return mem


def demo_command(out: str, config: str, overrides: list[str], *, frames: int = 32, size: str = "64x96",
                 steps: int | None = None, seed: int = 0, quiet: bool = False, start: str | None = None,
                 say: Callable[[str], None] = print, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """``fhcnn demo``: check the options and what the run needs of the machine (before ``out``
    exists), make the run folder (replacing the demo's own earlier run there) and run the demo.
    ``start``: the shipped config a ``config`` file is read over (see :func:`fhcnn.config.load_config`)."""
    from ... import log as _logging
    from ...config import load_config
    from ...engine.models import size_multiple_of
    from ...engine.plan import check_resources
    from ...engine.sizes import distinct_windows, prediction_tilings, prediction_window_of, training_window
    from ...errors import InputError
    from ...rundir import RunFolder, prepare_output_dir

    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise InputError(f"--size must look like 64x96, got {size!r}") from None
    if frames < 4 or h < 8 or w < 8:  # 3 label frames and at least one frame to score
        raise InputError("--frames must be >= 4 (3 frames are labelled, the others scored) and --size at "
                         "least 8x8")
    if steps is not None and steps < 1:
        raise InputError(f"--steps must be >= 1, got {steps}")
    cfg = load_config(SegmentConfig, config, list(overrides) + ([f"train.steps={steps}"] if steps is not None else []),
                      start=start)
    d, m = cfg.data, size_multiple_of(cfg.model)
    win = training_window((d.window_depth, d.window_height, d.window_width), (frames, h, w), m)
    pwin = prediction_window_of((d.predict_depth, d.predict_height, d.predict_width), win, False)
    tilings = prediction_tilings((frames, h, w), pwin, m, d.predict_shifts, True, d.prediction_mirror,
                                 d.predict_overlap)
    check_resources(cfg, 3, 3, win, distinct_windows(tilings))  # before OUT exists
    previous = RunFolder.open(out) if out and Path(out).is_dir() else None
    folder = prepare_output_dir(out, overwrite=previous is not None and previous.marker.get("tool") == "demo",
                                tool="demo", config=cfg, outputs=("video", "segmentation", "demo.json"),
                                resumable=False)
    _logging.setup(quiet)
    return run_demo(folder, cfg, frames=frames, size=(h, w), seed=seed, quiet=quiet, say=say, log=log)
