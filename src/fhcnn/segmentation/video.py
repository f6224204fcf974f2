"""Video object segmentation from a few labelled frames (the pipeline behind ``fhcnn segment``).

``load_video_inputs`` reads and validates everything (before any output is created);
``segment_video`` resizes the video into one ``(3, T, h, w)`` volume, trains on the labelled
frames only, predicts every frame, maps the prediction back to the input frame size and
writes the outputs.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import atomic_path, atomic_write_text
from ..errors import InputError
from .config import SegmentConfig
from .metrics import IGNORE, segmentation_metrics

__all__ = ["VideoInputs", "load_video_inputs", "parse_frames", "segment_video", "copy_nearest_baseline",
           "resize_video", "resize_labels"]


@dataclass
class VideoInputs:
    """Validated inputs: frames ``(T, H, W, 3)`` uint8, per-frame class masks ``(T, H, W)`` uint8
    (255 = no label), the training frames, optional evaluation masks, class values."""

    frames: np.ndarray
    names: list[str]
    labels: np.ndarray
    label_frames: list[int]
    eval_labels: np.ndarray | None
    eval_source: str | None
    classes: list[int]
    sources: dict[str, str] = field(default_factory=dict)


def parse_frames(text: str | None, t: int) -> list[int] | None:
    """``"5,24,43"`` -> ``[5, 24, 43]`` (negative = from the end); checked against ``t`` frames."""
    if text is None:
        return None
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            k = int(part)
        except ValueError:
            raise InputError(f"--label-frames: {part!r} is not a frame index (use e.g. 0,23,47)") from None
        if not -t <= k < t:
            raise InputError(f"--label-frames: frame {k} is out of range; the video has {t} frames (0..{t - 1})")
        out.append(k % t)
    if not out:
        raise InputError("--label-frames is empty")
    return sorted(set(out))


def load_video_inputs(video: str | Path, masks: str | Path, label_frames: str | None = None,
                      eval_labels: str | Path | None = None) -> VideoInputs:
    """Read and validate the video, the label masks and the optional evaluation masks.

    Raises ``InputError``/``FileNotFoundError`` with a one-line message for: unreadable files,
    a mask size different from the frame size, a label frame out of range or without a mask,
    labels without foreground (or without background).
    """
    from ..data.video import apply_classes, mask_classes, read_masks, read_video

    frames, names = read_video(video)
    t, h, w = frames.shape[:3]
    lab_raw = read_masks(masks, names, (h, w))
    ev_raw = read_masks(eval_labels, names, (h, w)) if eval_labels is not None else None
    chosen = parse_frames(label_frames, t)
    if chosen is None:
        if len(lab_raw) >= t:
            chosen = sorted({0, (t - 1) // 2, t - 1})
        else:
            chosen = sorted(lab_raw)
    missing = [k for k in chosen if k not in lab_raw]
    if missing:
        raise InputError(f"no mask for label frame(s) {', '.join(names[k] for k in missing)} in {masks} "
                         f"(it has masks for {len(lab_raw)} frame(s))")
    classes = mask_classes({k: lab_raw[k] for k in chosen}, *( [ev_raw] if ev_raw else []))
    if len(classes) > 255:
        raise InputError(f"too many distinct mask values ({len(classes)}) in {masks}")
    labels = np.full((t, h, w), IGNORE, np.uint8)
    for k in chosen:
        labels[k] = apply_classes(lab_raw[k], classes)
    present = set(np.unique(labels[chosen]).tolist()) - {IGNORE}
    if not present - {0}:
        raise InputError(f"the label frames {chosen} of {masks} hold no foreground (every mask value is 0)")
    if 0 not in present:
        raise InputError(f"the label frames {chosen} of {masks} hold no background (value 0)")
    ev = None
    ev_source = None
    if ev_raw is not None:
        ev = np.full((t, h, w), IGNORE, np.uint8)
        for k, m in ev_raw.items():
            ev[k] = apply_classes(m, classes)
        ev_source = str(eval_labels)
    elif len(set(lab_raw) - set(chosen)) > 0:  # masks of other frames: score them (never trained on)
        ev = np.full((t, h, w), IGNORE, np.uint8)
        for k, m in lab_raw.items():
            ev[k] = apply_classes(m, classes)
        ev_source = f"{masks} (frames not in --label-frames)"
    return VideoInputs(frames, names, labels, chosen, ev, ev_source, classes,
                       {"video": str(video), "labels": str(masks),
                        **({"eval_labels": str(eval_labels)} if eval_labels is not None else {})})


def resize_video(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 -> ``(T, h, w, 3)`` float32 in [0, 1] (area-averaging resize)."""
    from PIL import Image

    h, w = size
    if frames.shape[1:3] == (h, w):
        return frames.astype(np.float32) / 255
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BOX if h < f.shape[0] else Image.BILINEAR),
                                dtype=np.float32) / 255 for f in frames])


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(T, H, W)`` uint8 labels -> ``(T, h, w)`` by nearest neighbour."""
    from PIL import Image

    h, w = size
    if labels.shape[1:3] == (h, w):
        return labels.copy()
    return np.stack([np.asarray(Image.fromarray(l).resize((w, h), Image.NEAREST)) for l in labels])


def copy_nearest_baseline(labels: np.ndarray, label_frames: Sequence[int]) -> np.ndarray:
    """The trivial baseline: every frame gets the mask of the nearest labelled frame."""
    lf = np.asarray(sorted(label_frames))
    out = np.empty_like(labels)
    for k in range(labels.shape[0]):
        out[k] = labels[lf[np.argmin(np.abs(lf - k))]]
    return out


def _score(pred: np.ndarray, truth: np.ndarray, held_out: Sequence[int], k: int) -> dict[str, Any]:
    tr = truth.copy()
    keep = np.zeros(tr.shape[0], bool)
    keep[list(held_out)] = True
    tr[~keep] = IGNORE
    m = segmentation_metrics(pred, tr, k)
    m.pop("confusion", None)
    return m


def segment_video(inputs: VideoInputs, cfg: SegmentConfig, out: Path | None, *, scale: float = 1.0,
                  quiet: bool = False, resume: bool = False, log=print, eval_every: int = 0
                  ) -> dict[str, Any]:
    """Train on ``inputs`` and write every output into ``out`` (which must exist; ``None``: write
    nothing). Returns the metrics (held-out scores at the input frame size if evaluation masks
    exist). ``eval_every``: also score the held-out frames at the training resolution every so
    many steps (into ``metrics["history"]``, for mIoU-versus-time curves)."""
    import torch

    from ..config import save_config
    from .engine import train_segmentation
    from .models import build_model

    t, h0, w0 = inputs.frames.shape[:3]
    h, w = max(1, int(round(h0 * scale))), max(1, int(round(w0 * scale)))
    k = len(inputs.classes)
    m = build_model(cfg.model, 3 + (2 if cfg.data.coords else 0), k).size_multiple
    pad = [-(-n // m) * m for n in (t, h, w)]
    log(f"video: {t} frames of {h0}x{w0}, resized by {scale:g} to {h}x{w}; volume (3, {t}, {h}, {w}), "
        f"padded by reflection to ({pad[0]}, {pad[1]}, {pad[2]}) for the network (sizes must be "
        f"multiples of {m}) and cropped back")
    log(f"classes: {k} (mask values {inputs.classes}); training on frames {inputs.label_frames} only"
        + (f"; scoring the other frames with {inputs.eval_source}" if inputs.eval_labels is not None else ""))
    vol = resize_video(inputs.frames, (h, w)).transpose(3, 0, 1, 2)
    labels = resize_labels(inputs.labels, (h, w))
    if out is not None:
        save_config(cfg, out / "config.yaml")
    t0 = time.perf_counter()
    ev_small = None
    if eval_every and inputs.eval_labels is not None:
        ev_small = resize_labels(inputs.eval_labels, (h, w))
        ev_small[inputs.label_frames] = IGNORE
        cfg = copy.deepcopy(cfg)
        cfg.data.eval_every = eval_every
    result = train_segmentation(vol, labels, cfg, out, num_classes=k, quiet=quiet, resume=resume,
                                eval_labels=ev_small)
    from ..training import is_main_process

    if not is_main_process():  # under torchrun only rank 0 predicts, writes and reports
        return {}
    log(f"trained {cfg.train.steps} steps in {result.train_time_s:.0f} s on {result.device}; "
        f"activation memory of one step ({cfg.data.batch_size} windows of {result.window}): "
        f"{result.activation_bytes / 2**20:.1f} MiB")
    t1 = time.perf_counter()
    probs = result.predict_proba(vol)  # (K, T, h, w)
    full = torch.nn.functional.interpolate(probs.permute(1, 0, 2, 3), size=(h0, w0), mode="bilinear",
                                           align_corners=False)
    pred = full.argmax(1).numpy().astype(np.uint8)  # (T, H, W)
    predict_s = time.perf_counter() - t1
    metrics: dict[str, Any] = {
        "video": inputs.sources, "frames": t, "frame_size": [h0, w0], "scale": scale,
        "volume_size": [t, h, w], "padded_size": pad, "size_multiple": m, "classes": inputs.classes,
        "label_frames": inputs.label_frames, "train_time_s": round(result.train_time_s, 2),
        "predict_time_s": round(predict_s, 2), "total_time_s": round(time.perf_counter() - t0, 2),
        "activation_bytes": result.activation_bytes, "train_window": list(result.window),
        "device": str(result.device), "arch": cfg.model.arch,
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "predicted_fraction": [float((pred == c).mean()) for c in range(k)],
    }
    if inputs.eval_labels is not None:
        held = [i for i in range(t) if i not in inputs.label_frames and (inputs.eval_labels[i] != IGNORE).any()]
        ours = _score(pred, inputs.eval_labels, held, k)
        base_pred = copy_nearest_baseline(inputs.labels, inputs.label_frames)
        base = _score(base_pred, inputs.eval_labels, held, k)
        metrics.update({
            "eval_labels": inputs.eval_source, "scored_frames": held,
            "miou": ours["miou"], "iou": ours["iou"], **({"J": ours["J"]} if "J" in ours else {}),
            "per_frame_miou": ours["per_frame_miou"], "per_frame_iou": ours["per_frame_iou"],
            "accuracy": ours["accuracy"],
            "copy_nearest_baseline": {"miou": base["miou"], "iou": base["iou"],
                                      **({"J": base["J"]} if "J" in base else {})},
        })
        log(f"held-out frames ({len(held)}): mIoU {ours['miou']:.4f}"
            + (f", J {ours['J']:.4f}" if "J" in ours and ours["J"] is not None else "")
            + f"  (copy-nearest-labelled-mask baseline: mIoU {base['miou']:.4f})")
    metrics["history"] = result.history
    if out is not None:
        _write_outputs(out, inputs, pred, result, metrics)
    metrics["prediction"] = pred
    return metrics


def _write_outputs(out: Path, inputs: VideoInputs, pred: np.ndarray, result: Any, metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from safetensors.torch import save_file
    from PIL import Image

    from ..data.video import davis_palette, write_mask_png

    with atomic_path(out / "prediction.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, pred)
    for i, name in enumerate(inputs.names):
        write_mask_png(out / "masks" / f"{name}.png", pred[i])
    # overlay GIF (frames at most 480 pixels wide)
    pal = np.asarray(davis_palette(), np.float32).reshape(256, 3)
    t, h, w = pred.shape
    f = min(1.0, 480 / w)
    size = (max(1, int(w * f)), max(1, int(h * f)))
    ims = []
    for i in range(t):
        fr = inputs.frames[i].astype(np.float32)
        col = pal[pred[i]]
        a = (pred[i] > 0)[..., None] * 0.5
        ov = (fr * (1 - a) + col * a).clip(0, 255).astype(np.uint8)
        ims.append(Image.fromarray(ov).resize(size, Image.BILINEAR).convert("P", palette=Image.ADAPTIVE))
    with atomic_path(out / "overlay.gif") as tmp:
        ims[0].save(tmp, format="GIF", save_all=True, append_images=ims[1:], duration=80, loop=0)
    # labelled frames figure
    lf = inputs.label_frames
    fig, axes = plt.subplots(2, len(lf), figsize=(3.2 * len(lf), 4.6), squeeze=False)
    for j, kf in enumerate(lf):
        axes[0, j].imshow(inputs.frames[kf])
        axes[0, j].set_title(f"frame {inputs.names[kf]} (labelled)", fontsize=9)
        lab = inputs.labels[kf]
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
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"classes": json.dumps(inputs.classes),
                                             "arch": result.config.model.arch})
    atomic_write_text(out / "metrics.json", json.dumps({k: v for k, v in metrics.items() if k != "prediction"},
                                                       indent=1) + "\n")
