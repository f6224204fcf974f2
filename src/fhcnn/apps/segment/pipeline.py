"""Video object segmentation from a few labelled frames (the pipeline behind ``fhcnn segment``).

:func:`~fhcnn.apps.segment.inputs.load_video_inputs` opens and validates everything (before any
output is created); :func:`segment_video` sees the frames as one ``(3, T, H, W)`` volume of
raw values (:func:`frames_volume`, nothing read: the engine streams the statistics it
normalizes with), trains on the labelled frames only (the engine scales, pads and crops),
predicts every frame chunk by chunk into ``prediction.npy`` (memory-mapped), maps the
prediction back to the input frame size and writes the outputs. Frames that are decoded one by
one (image files, GIF, video files) are copied once into the run folder (``inputs/video.zarr``)
and read by window from there.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage

from ... import log as _log
from ...config import save_config
from ...data.lazy import ChannelView
from ...data.video import VideoFrames, frames_to_unit
from ...data.volumes.sinks import NpySink
from ...engine import SegmentConfig
from ...engine.metrics import confusion_matrix, iou_from_confusion, scores_of_confusion
from ...engine.plan import DenseInputs, RunPlan, prepare
from ...engine.run import run
from ...engine.store import LabelSink, Resized
from ...errors import InputError
from ...options import IGNORE
from ...training import is_main_process
from .inputs import FrameLabels, VideoInputs, frames_volume, mask_value, value_name
from .outputs import write_outputs

__all__ = ["segment_video", "plan_segmentation", "copy_nearest_baseline", "frames_to_volume", "frames_volume",
           "held_out_frames", "score_held_out", "local_copy"]


def frames_to_volume(frames: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` frames of any bit depth -> ``(3, T, H, W)`` float32 volume in [0, 1]
    (:func:`~fhcnn.data.video.frames_to_unit`: 8-bit frames divided by 255, 16-bit, 12-bit or
    other float frames scaled from the video's own range)."""
    return np.ascontiguousarray(frames_to_unit(frames).transpose(3, 0, 1, 2))


class NearestLabelled:
    """The trivial baseline, read frame by frame: every frame gets the mask of the nearest
    labelled frame (``np.asarray`` gives the whole ``(T, H, W)`` volume). A pixel that mask
    leaves unlabelled (``IGNORE``, void) takes the label of the next nearest frame labelled
    there, and one no label frame labels takes its nearest labelled pixel's in the frame: the
    baseline labels every pixel with a class."""

    def __init__(self, labels: Any, label_frames: Sequence[int]) -> None:
        self.labels, self.label_frames = labels, np.asarray(sorted(label_frames))
        self.shape = tuple(labels.shape)

    def __getitem__(self, k: int) -> np.ndarray:
        order = self.label_frames[np.argsort(np.abs(self.label_frames - k), kind="stable")]
        out = np.array(self.labels[int(order[0])])
        for f in order[1:]:
            void = out == IGNORE
            if not void.any():
                break
            out[void] = np.asarray(self.labels[int(f)])[void]
        void = out == IGNORE
        if void.any() and not void.all():
            nearest = ndimage.distance_transform_edt(void, return_distances=False, return_indices=True)
            out = out[tuple(nearest)]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.stack([self[k] for k in range(self.shape[0])])
        return out if dtype is None else out.astype(dtype)


def copy_nearest_baseline(labels: Any, label_frames: Sequence[int]) -> np.ndarray:
    """The trivial baseline: every frame gets the mask of the nearest labelled frame."""
    return np.asarray(NearestLabelled(labels, label_frames))


def held_out_frames(inputs: VideoInputs) -> list[int]:
    """The frames ``segment_video`` scores: every frame with an evaluation mask that is not a
    label frame (none without evaluation masks)."""
    if inputs.eval_labels is None:
        return []
    return [i for i in range(inputs.frames.shape[0]) if i not in inputs.label_frames
            and (inputs.eval_labels[i] != IGNORE).any()]


def score_held_out(pred: Any, truth: Any, held_out: Sequence[int], k: int) -> dict[str, Any]:
    """Scores of ``pred`` ``(T, H, W)`` against ``truth`` on the ``held_out`` frames only (the
    held-out mIoU every ``fhcnn segment`` result and its baselines report), read frame by frame:
    ``miou``, ``iou``, ``dice``, ``accuracy``, ``scored_voxels`` (``J`` for two classes), and
    ``per_frame_miou`` / ``per_frame_iou`` (``None`` for frames not scored)."""
    held = set(int(i) for i in held_out)
    cm = np.zeros((k, k), np.int64)
    per_miou: list[float | None] = []
    per_iou: list[list[float | None] | None] = []
    for i in range(int(pred.shape[0])):
        cmk = confusion_matrix(np.asarray(pred[i]), np.asarray(truth[i]), k) if i in held else None
        if cmk is None or cmk.sum() == 0:
            per_miou.append(None)
            per_iou.append(None)
            continue
        cm += cmk
        iou = iou_from_confusion(cmk)
        per_miou.append(float(np.nanmean(iou)) if np.isfinite(iou).any() else None)
        per_iou.append([None if np.isnan(v) else float(v) for v in iou])
    m = scores_of_confusion(cm)
    m.pop("confusion", None)
    m["per_frame_miou"], m["per_frame_iou"] = per_miou, per_iou
    return m


def plan_segmentation(inputs: VideoInputs, cfg: SegmentConfig) -> RunPlan:
    """The run of ``inputs`` under ``cfg``, worked out and checked (before any output exists):
    the frames as one ``(3, T, H, W)`` volume, the label frames' masks as labels; with
    ``data.eval_every`` the held-out frames' masks are scored every so many steps.

    Raises:
        InputError: as :func:`~fhcnn.engine.plan.prepare`; ``data.eval_every`` without
            evaluation masks.
    """
    truth = None
    if cfg.data.eval_every:
        ev = inputs.eval_labels
        if ev is None:
            raise InputError(f"data.eval_every={cfg.data.eval_every} scores the held-out frames during "
                             f"training: give their masks with --eval-labels, or leave it 0")
        truth = (ev.without(inputs.label_frames) if isinstance(ev, FrameLabels)
                 else _blank_frames(ev, inputs.label_frames))
    return prepare(DenseInputs(frames_volume(inputs.frames), inputs.labels, len(inputs.classes), truth,
                               stats=inputs.stats), cfg)


def _blank_frames(labels: Any, frames: Sequence[int]) -> np.ndarray:
    out = np.array(labels, copy=True)
    out[list(frames)] = IGNORE
    return out


def local_copy(plan: RunPlan, inputs: VideoInputs, folder: Path, log: Callable[[str], None] = _log.info,
               resume: bool = False) -> None:
    """Frames decoded one by one (image files, GIF, video files) are copied once, in one pass,
    into the run folder (``inputs/video.zarr``, chunks of 64 frames x 64 x 64 pixels per colour,
    recorded in ``run.json``), and the plan reads its windows from the copy."""
    frames = inputs.frames
    if not (isinstance(frames, VideoFrames) and frames.sequential):
        return
    from ...rundir import copy_input, stop_watching_input

    copy_ = copy_input(folder, "video", frames.planar(), (1, 64, 64, 64), axis=1, train=plan.config.train,
                       why=f"{frames.path} is decoded frame by frame", log=log, resume=resume)
    stop_watching_input("video")  # read from the copy from now on
    plan.read_from([ChannelView(copy_, c, axis=0) for c in range(3)])


def segment_video(inputs: VideoInputs, cfg: SegmentConfig, out: Path | None, *, quiet: bool = False,
                  resume: bool = False, log: Callable[[str], None] = _log.info,
                  plan: RunPlan | None = None) -> dict[str, Any]:
    """Train on ``inputs`` and write every output into ``out`` (which must exist; ``None``: write
    nothing). Returns the metrics (held-out scores at the input frame size if evaluation masks
    exist). The frames are resized by ``cfg.data.scale`` for the network and the prediction
    resized back (:class:`~fhcnn.engine.sizes.Geometry`). With ``data.eval_every`` the
    held-out frames are also scored at the training resolution every so many steps (into
    ``metrics["history"]``, for mIoU-versus-time curves). ``plan``: the run, if already
    worked out by :func:`plan_segmentation`."""
    t, h0, w0 = inputs.frames.shape[:3]
    k = len(inputs.classes)
    plan = plan or plan_segmentation(inputs, cfg)
    cfg, geom = plan.config, plan.geometry
    log(f"video: {t} frames of {h0}x{w0}; " + geom.describe())
    log(f"classes: {k} (mask values {', '.join(map(value_name, inputs.classes))}); "
        f"training on frames {inputs.label_frames} only"
        + (f"; scoring the other frames with {inputs.eval_source}" if inputs.eval_labels is not None else ""))
    if out is not None:
        save_config(cfg, out / "config.yaml")
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        pred: Any = np.zeros((0, 0, 0), np.uint8)
        if is_main_process():
            pred = np.zeros((t, h0, w0), np.uint8) if out is None else \
                stack.enter_context(NpySink(out, (t, h0, w0), np.dtype(np.uint8)))
        result, predict_s = run(plan, out, lambda r: [Resized(LabelSink(pred), (h0, w0), geom.scaled)],
                                resume=resume, quiet=quiet)
        if not is_main_process():  # under torchrun only rank 0 writes and reports
            return {}
        metrics = _report(inputs, plan, pred, result, predict_s, t0, log)
        if out is not None:
            write_outputs(out, inputs, pred, result, metrics)
    metrics["prediction"] = np.load(out / "prediction.npy", mmap_mode="r") if out is not None else pred
    return metrics


def _report(inputs: VideoInputs, plan: RunPlan, pred: Any, result: Any, predict_s: float, t0: float,
            log: Callable[[str], None]) -> dict[str, Any]:
    """The metrics of a finished run (held-out scores frame by frame) and their log lines."""
    cfg, geom = plan.config, plan.geometry
    t, h0, w0 = inputs.frames.shape[:3]
    k = len(inputs.classes)
    log(f"trained {cfg.train.steps} steps in {result.train_time_s:.0f} s on {result.device}; "
        f"activation memory of one step ({cfg.data.batch_size} windows of {result.window}): "
        f"{result.activation_bytes / 2**20:.1f} MiB")
    h, w = geom.scaled
    metrics: dict[str, Any] = {
        "video": inputs.sources, "frames": t, "frame_size": [h0, w0], "scale": cfg.data.scale,
        "volume_size": [t, h, w], "padded_size": list(geom.padded), "size_multiple": geom.multiple,
        "classes": [mask_value(v) for v in inputs.classes],   # class k of the prediction: the k-th
        "label_frames": inputs.label_frames, "train_time_s": round(result.train_time_s, 2),
        "predict_time_s": round(predict_s, 2), "total_time_s": round(time.perf_counter() - t0, 2),
        "activation_bytes": result.activation_bytes, "train_window": list(result.window),
        "device": str(result.device), "arch": cfg.model.arch,
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "predicted_fraction": _fractions(pred, k),
    }
    held = held_out_frames(inputs)
    if inputs.eval_labels is not None and not held:
        metrics["scored_frames"] = []
        log("no held-out frames to score (every frame with a mask is a label frame)")
    elif inputs.eval_labels is not None:
        ours = score_held_out(pred, inputs.eval_labels, held, k)
        base = score_held_out(NearestLabelled(inputs.labels, inputs.label_frames), inputs.eval_labels, held, k)
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
    return metrics


def _fractions(pred: Any, k: int) -> list[float]:
    """The fraction of the voxels predicted as each class, counted frame by frame."""
    counts = np.zeros(k, np.int64)
    for i in range(pred.shape[0]):
        counts += np.bincount(np.asarray(pred[i]).ravel(), minlength=k)[:k]
    return (counts / max(1, int(np.prod(pred.shape)))).tolist()


def segment_command(video: str, labels: str, cfg: SegmentConfig, out: str, *, label_frames: str | None = None,
                    eval_labels: str | None = None, resume: bool = False, overwrite: bool = False,
                    quiet: bool = False, config_file: str | None = None) -> tuple[dict[str, Any], Path]:
    """``fhcnn segment``: read and check every input and work out the run (each refusal one
    :class:`~fhcnn.errors.InputError` line, before ``out`` exists), make the run folder, train,
    predict and write. Returns the metrics (``{}`` on a non-zero rank) and the folder."""
    from ... import log as _logging
    from ...rundir import prepare_output_dir
    from .inputs import load_video_inputs

    inputs = load_video_inputs(video, labels, label_frames, eval_labels)
    plan = plan_segmentation(inputs, cfg)
    folder = prepare_output_dir(out, resume, overwrite, tool="segment", config=cfg, config_file=config_file,
                                roles={"video": video, "labels": labels, "eval_labels": eval_labels},
                                extra={"label_frames": inputs.label_frames})
    _logging.setup(quiet)
    local_copy(plan, inputs, folder, resume=resume)
    return segment_video(inputs, cfg, folder, quiet=quiet, resume=resume, plan=plan), folder
