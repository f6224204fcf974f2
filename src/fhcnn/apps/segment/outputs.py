"""What ``fhcnn segment`` writes besides ``prediction.npy`` (written chunk by chunk during the
prediction): per-frame PNG masks, an overlay GIF (at most :data:`GIF_FRAMES` frames, evenly
spaced), figures, the model's weights and ``metrics.json``; everything read frame by frame."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...atomic import atomic_path, atomic_write_text
from ...data.video import davis_palette, frames_for_display, write_mask_png
from ...options import IGNORE
from ...training.checkpoint import save_weights
from .inputs import VideoInputs

__all__ = ["write_outputs", "GIF_FRAMES"]

#: Frames of the overlay GIF at most (a GIF is assembled in memory).
GIF_FRAMES = 400


def write_outputs(out: Path, inputs: VideoInputs, pred: Any, result: Any, metrics: dict) -> None:
    """Write the outputs of a segmentation into ``out`` (``pred``: the ``(T, H, W)`` labels, read
    frame by frame)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    shown = frames_for_display(inputs.frames)
    for i, name in enumerate(inputs.names):
        write_mask_png(out / "masks" / f"{name}.png", np.asarray(pred[i]))
    # overlay GIF (frames at most 480 pixels wide)
    pal = np.asarray(davis_palette(), np.float32).reshape(256, 3)
    t, h, w = pred.shape
    f = min(1.0, 480 / w)
    size = (max(1, int(w * f)), max(1, int(h * f)))
    ims = []
    for i in np.unique(np.linspace(0, t - 1, min(t, GIF_FRAMES)).round().astype(int)):
        fr = shown(i).astype(np.float32)
        p = np.asarray(pred[i])
        col = pal[p]
        a = (p > 0)[..., None] * 0.5
        ov = (fr * (1 - a) + col * a).clip(0, 255).astype(np.uint8)
        small = Image.fromarray(ov).resize(size, Image.Resampling.BILINEAR)
        ims.append(small.convert("P", palette=Image.Palette.ADAPTIVE))
    with atomic_path(out / "overlay.gif") as tmp:
        ims[0].save(tmp, format="GIF", save_all=True, append_images=ims[1:], duration=80, loop=0)
    # labelled frames figure
    lf = inputs.label_frames
    fig, axes = plt.subplots(2, len(lf), figsize=(3.2 * len(lf), 4.6), squeeze=False)
    for j, kf in enumerate(lf):
        axes[0, j].imshow(shown(kf))
        axes[0, j].set_title(f"frame {inputs.names[kf]} (labelled)", fontsize=9)
        lab = np.asarray(inputs.labels[kf])
        axes[1, j].imshow(pal[np.where(lab == IGNORE, 0, lab)].astype(np.uint8))
        for a in axes[:, j]:
            a.axis("off")
    fig.tight_layout()
    with atomic_path(out / "labelled_frames.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    # training curves
    hist = result.history
    fig, ax = plt.subplots(1, 2 if any("miou" in r for r in hist) else 1, figsize=(9, 3.2), squeeze=False)
    ax = ax[0]
    if hist:
        steps = [r["step"] for r in hist]
        loss = np.array([r["loss"] for r in hist])
        kern = max(1, len(loss) // 30)
        smooth = np.convolve(loss, np.ones(kern) / kern, mode="valid")
        ax[0].plot(steps, loss, alpha=0.3, color="C0")
        ax[0].plot(steps[kern - 1:], smooth, color="C0")
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("training loss")
    ax[0].set_yscale("log")
    if len(ax) > 1:
        ev = [r for r in hist if "miou" in r]
        ax[1].plot([r["time_s"] for r in ev], [r["miou"] for r in ev], "o-")
        ax[1].set_xlabel("training time (s)")
        ax[1].set_ylabel("mIoU (eval frames)")
    fig.tight_layout()
    with atomic_path(out / "training_curves.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    save_weights(out / "model.safetensors", result.model,
                 {"classes": json.dumps(inputs.classes), "arch": result.config.model.arch})
    atomic_write_text(out / "metrics.json", json.dumps({k: v for k, v in metrics.items() if k != "prediction"},
                                                       indent=1) + "\n")
