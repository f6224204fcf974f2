"""Reading and validating the inputs of ``fhcnn segment``: frames, label masks, label frames,
evaluation masks. Everything is checked here, before any output is created."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...data.video import apply_classes, check_mask_encodings, mask_classes, read_masks, read_video
from ...errors import InputError
from ...options import IGNORE

__all__ = ["VideoInputs", "load_video_inputs", "parse_frames"]


@dataclass
class VideoInputs:
    """Validated inputs: frames ``(T, H, W, 3)`` in their own bit depth, per-frame class masks ``(T, H, W)`` uint8
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
    frames, names = read_video(video)
    t, h, w = frames.shape[:3]
    if frames.min() == frames.max():
        raise InputError(f"every pixel of every frame of {video} has the value {frames.flat[0]}: "
                         f"nothing to segment")
    lab_raw = read_masks(masks, names, (h, w))
    ev_raw = read_masks(eval_labels, names, (h, w)) if eval_labels is not None else None
    check_mask_encodings([(str(masks), lab_raw)] + ([(str(eval_labels), ev_raw)] if ev_raw else []),
                         names)
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
