"""Video object segmentation from a few labelled frames (the pipeline behind ``fhcnn segment``).

:func:`~fhcnn.apps.segment.inputs.load_video_inputs` reads and validates everything (before any
output is created); :func:`segment_video` makes one ``(3, T, H, W)`` volume of the frames,
trains on the labelled frames only (the engine scales, pads and crops), predicts every frame,
maps the prediction back to the input frame size and writes the outputs.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ... import log as _log
from ...config import save_config
from ...data.video import frames_to_unit
from ...engine import SegmentConfig, segmentation_metrics, size_multiple_of, train_segmentation
from ...engine.parallel import check_space_split, follow_prediction
from ...engine.sizes import Geometry
from ...options import IGNORE
from ...training import is_main_process
from .inputs import VideoInputs
from .outputs import write_outputs

__all__ = ["segment_video", "copy_nearest_baseline", "frames_to_volume", "check_parallel",
           "held_out_frames", "score_held_out"]


def frames_to_volume(frames: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` frames of any bit depth -> ``(3, T, H, W)`` float32 volume in [0, 1]
    (:func:`~fhcnn.data.video.frames_to_unit`: 8-bit frames divided by 255, 16-bit, 12-bit or
    other float frames scaled from the video's own range)."""
    return np.ascontiguousarray(frames_to_unit(frames).transpose(3, 0, 1, 2))


def copy_nearest_baseline(labels: np.ndarray, label_frames: Sequence[int]) -> np.ndarray:
    """The trivial baseline: every frame gets the mask of the nearest labelled frame."""
    lf = np.asarray(sorted(label_frames))
    out = np.empty_like(labels)
    for k in range(labels.shape[0]):
        out[k] = labels[lf[np.argmin(np.abs(lf - k))]]
    return out


def held_out_frames(inputs: VideoInputs) -> list[int]:
    """The frames ``segment_video`` scores: every frame with an evaluation mask that is not a
    label frame (none without evaluation masks)."""
    if inputs.eval_labels is None:
        return []
    return [i for i in range(inputs.frames.shape[0]) if i not in inputs.label_frames
            and (inputs.eval_labels[i] != IGNORE).any()]


def score_held_out(pred: np.ndarray, truth: np.ndarray, held_out: Sequence[int], k: int) -> dict[str, Any]:
    """Scores of ``pred`` ``(T, H, W)`` against ``truth`` on the ``held_out`` frames only (the
    held-out mIoU every ``fhcnn segment`` result and its baselines report)."""
    tr = truth.copy()
    keep = np.zeros(tr.shape[0], bool)
    keep[list(held_out)] = True
    tr[~keep] = IGNORE
    m = segmentation_metrics(pred, tr, k)
    m.pop("confusion", None)
    return m


def segment_video(inputs: VideoInputs, cfg: SegmentConfig, out: Path | None, *, quiet: bool = False,
                  resume: bool = False, log: Callable[[str], None] = _log.info, eval_every: int = 0
                  ) -> dict[str, Any]:
    """Train on ``inputs`` and write every output into ``out`` (which must exist; ``None``: write
    nothing). Returns the metrics (held-out scores at the input frame size if evaluation masks
    exist). The frames are resized by ``cfg.data.scale`` for the network and the prediction
    resized back (:class:`~fhcnn.engine.sizes.Geometry`). ``eval_every``: also score the
    held-out frames at the training resolution every so many steps (into
    ``metrics["history"]``, for mIoU-versus-time curves)."""
    t, h0, w0 = inputs.frames.shape[:3]
    k = len(inputs.classes)
    geom = Geometry.of((t, h0, w0), cfg.data.scale, size_multiple_of(cfg.model))
    log(f"video: {t} frames of {h0}x{w0}; " + geom.describe())
    log(f"classes: {k} (mask values {inputs.classes}); training on frames {inputs.label_frames} only"
        + (f"; scoring the other frames with {inputs.eval_source}" if inputs.eval_labels is not None else ""))
    vol = geom.volume(frames_to_volume(inputs.frames))
    labels = geom.labels(inputs.labels, k)
    if out is not None:
        save_config(cfg, out / "config.yaml")
    t0 = time.perf_counter()
    ev_small = None
    if eval_every and inputs.eval_labels is not None:
        ev_small = geom.labels(inputs.eval_labels, k)
        ev_small[inputs.label_frames] = IGNORE
        cfg = copy.deepcopy(cfg)
        cfg.data.eval_every = eval_every
    result = train_segmentation(vol, labels, cfg, out, num_classes=k, quiet=quiet, resume=resume,
                                eval_labels=ev_small)
    if not is_main_process():  # under torchrun only rank 0 predicts, writes and reports
        follow_prediction(result, vol)  # #17: ... unless the volume is split (all processes predict)
        return {}
    log(f"trained {cfg.train.steps} steps in {result.train_time_s:.0f} s on {result.device}; "
        f"activation memory of one step ({cfg.data.batch_size} windows of {result.window}): "
        f"{result.activation_bytes / 2**20:.1f} MiB")
    t1 = time.perf_counter()
    probs = geom.back(result.predict_proba(vol))  # (K, T, H, W)
    pred = probs.argmax(0).numpy().astype(np.uint8)  # (T, H, W)
    predict_s = time.perf_counter() - t1
    h, w = geom.scaled
    metrics: dict[str, Any] = {
        "video": inputs.sources, "frames": t, "frame_size": [h0, w0], "scale": cfg.data.scale,
        "volume_size": [t, h, w], "padded_size": list(geom.padded), "size_multiple": geom.multiple,
        "classes": inputs.classes,
        "label_frames": inputs.label_frames, "train_time_s": round(result.train_time_s, 2),
        "predict_time_s": round(predict_s, 2), "total_time_s": round(time.perf_counter() - t0, 2),
        "activation_bytes": result.activation_bytes, "train_window": list(result.window),
        "device": str(result.device), "arch": cfg.model.arch,
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "predicted_fraction": [float((pred == c).mean()) for c in range(k)],
    }
    held = held_out_frames(inputs)
    if inputs.eval_labels is not None and not held:
        metrics["scored_frames"] = []
        log("no held-out frames to score (every frame with a mask is a label frame)")
    elif inputs.eval_labels is not None:
        ours = score_held_out(pred, inputs.eval_labels, held, k)
        base_pred = copy_nearest_baseline(inputs.labels, inputs.label_frames)
        base = score_held_out(base_pred, inputs.eval_labels, held, k)
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
        write_outputs(out, inputs, pred, result, metrics)
    metrics["prediction"] = pred
    return metrics


def check_parallel(inputs: VideoInputs, cfg: SegmentConfig) -> None:
    """Refuse (:class:`~fhcnn.errors.InputError`, one line) a ``parallel`` section that cannot
    split this video's volume; call before the output folder is created (#17)."""
    t, h0, w0 = inputs.frames.shape[:3]
    geom = Geometry.of((t, h0, w0), cfg.data.scale, size_multiple_of(cfg.model))
    check_space_split(cfg, (t, *geom.scaled))
