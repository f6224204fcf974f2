"""Segment one 3D volume from sparse labels: the pipeline behind ``fhcnn volume``.

:func:`~fhcnn.apps.volume.inputs.load_volume_inputs` reads and validates everything (before any
output exists); :func:`segment_volume` resolves the voxel spacing into per-axis training windows
(:func:`engine_config`), trains the dense engine on the labelled voxels, predicts every voxel,
scores the prediction and the baselines (:mod:`.baselines`) where the labels are unlabelled and
``--eval-labels`` has a class, and writes the outputs (:mod:`.outputs`).

Every call into the engine goes through :func:`fit_predict` (one place to change when the engine
takes lazy volumes).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ... import log as _log
from ...engine import SegmentConfig, segmentation_metrics, size_multiple_of, train_segmentation
from ...engine.parallel import check_space_split
from ...engine.sizes import round_up
from ...options import IGNORE
from ...training import is_main_process
from .baselines import copy_nearest_label, forest_baseline
from .config import VolumeConfig, parse_baselines, parse_spacing
from .config import VolumeOptions
from .inputs import VolumeInputs, describe_labels, label_summary

__all__ = ["segment_volume", "engine_config", "fit_predict", "Fit", "score", "resolve_spacing",
           "check_setup"]


def resolve_spacing(cfg: VolumeConfig, inputs: VolumeInputs) -> tuple[tuple[float, float, float] | None, str]:
    """The voxel spacing used (``volume.spacing`` over the file's) and where it came from."""
    if cfg.volume.spacing:
        return parse_spacing(cfg.volume.spacing), "volume.spacing"
    if inputs.spacing is not None:
        return tuple(float(s) for s in inputs.spacing), f"the {inputs.format} header"  # type: ignore[return-value]
    return None, f"none in {inputs.format}: taken as isotropic"


def engine_config(cfg: VolumeConfig, spacing: Sequence[float] | None, shape: Sequence[int]
                  ) -> tuple[SegmentConfig, str]:
    """The engine's :class:`SegmentConfig` for this volume and one log line saying what was done
    about the spacing.

    With ``volume.physical_windows`` and anisotropic ``spacing``, the window (training, and a
    prediction window the config sets) along each axis is the configured one times
    ``finest spacing / spacing of the axis``, rounded up to the network's size multiple: every
    window spans about the same physical length on each axis (a 3 mm axis gets a third of the
    voxels of a 1 mm axis). Windows never exceed the volume (rounded up to the multiple).
    """
    d = copy.deepcopy(cfg.data)
    seg = SegmentConfig(model=copy.deepcopy(cfg.model), data=d, train=copy.deepcopy(cfg.train),
                        parallel=copy.deepcopy(cfg.parallel))
    m = size_multiple_of(cfg.model)
    if spacing is None or len(set(float(s) for s in spacing)) == 1:
        what = "isotropic voxels" if spacing is None else f"isotropic voxels of {spacing[0]:g}"
        return seg, f"voxel spacing: {what}; windows as configured"
    sp = [float(s) for s in spacing]
    if not cfg.volume.physical_windows:
        return seg, (f"voxel spacing {tuple(sp)} (anisotropic); windows as configured in voxels "
                     f"(volume.physical_windows=false)")
    fine = min(sp)
    names = (("window_depth", "predict_depth"), ("window_height", "predict_height"),
             ("window_width", "predict_width"))
    for a, (tw, pw) in enumerate(names):
        f = fine / sp[a]
        whole = round_up(int(shape[a]), m)
        for name in (tw, pw):
            v = getattr(d, name)
            if v > 0:
                setattr(d, name, min(whole, round_up(max(1, int(round(v * f))), m)))
    win = (d.window_depth, d.window_height, d.window_width)
    phys = tuple(round(w * s, 1) for w, s in zip(win, sp))
    return seg, (f"voxel spacing {tuple(sp)} (anisotropic): training windows {win} voxels, "
                 f"{phys} in physical units (each axis's window scaled by the finest spacing over "
                 f"its own, volume.physical_windows)")


@dataclass
class Fit:
    """One trained network on the volume: probabilities ``(K, D, H, W)`` float32, the engine's
    result (``.model``, ``.history``, ``.window``...) and times."""

    probs: torch.Tensor
    result: Any
    train_time_s: float
    predict_time_s: float


def fit_predict(volume: np.ndarray, labels: np.ndarray, cfg: SegmentConfig, out: Path | None, *,
                num_classes: int, quiet: bool = False, resume: bool = False) -> Fit:
    """Train the engine on ``volume`` ``(C, D, H, W)`` with ``labels`` ``(D, H, W)`` (255 =
    unlabelled) and predict every voxel: the one place this application calls the engine."""
    result = train_segmentation(volume, labels, cfg, out, num_classes=num_classes, quiet=quiet, resume=resume)
    if not is_main_process():
        return Fit(torch.empty(0), result, result.train_time_s, 0.0)
    t0 = time.perf_counter()
    probs = result.predict_proba(volume)
    return Fit(probs, result, result.train_time_s, time.perf_counter() - t0)


def score(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[str, Any]:
    """mIoU, per-class IoU and Dice (``None`` for a class absent from both), accuracy and the
    confusion matrix of ``pred`` against ``truth`` (255 = not scored)."""
    m = segmentation_metrics(pred, truth, num_classes, per_frame=False)
    cm = np.asarray(m["confusion"], np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1)
    dice = [None if d == 0 else float(2 * t / d) for t, d in zip(tp, denom)]
    return {"miou": m["miou"], "iou": m["iou"], "dice": dice,
            "mdice": float(np.mean([v for v in dice if v is not None])) if any(v is not None for v in dice) else None,
            "accuracy": m["accuracy"], "scored_voxels": m["scored_voxels"], "confusion": m["confusion"]}


def _held_out(inputs: VolumeInputs) -> np.ndarray | None:
    """The evaluation labels where the training labels are unlabelled (255 elsewhere)."""
    if inputs.eval_labels is None:
        return None
    return np.where(inputs.labels == IGNORE, inputs.eval_labels, IGNORE).astype(np.uint8)


def _line(name: str, m: dict[str, Any]) -> str:
    iou = ", ".join("-" if v is None else f"{v:.3f}" for v in m["iou"])
    return f"{name:7s} mIoU {m['miou']:.4f}  (IoU per class: {iou})"


def segment_volume(inputs: VolumeInputs, cfg: VolumeConfig, out: Path | None, *, quiet: bool = False,
                   resume: bool = False, save_probs: bool = False,
                   log: Callable[[str], None] = _log.info) -> dict[str, Any]:
    """Train on ``inputs``, predict, score, write every output into ``out`` (``None``: nothing
    written); returns the metrics (``{}`` on a non-zero rank under ``torchrun``)."""
    t_start = time.perf_counter()
    k = inputs.num_classes
    shape = inputs.shape
    spacing, source = resolve_spacing(cfg, inputs)
    seg_cfg, spacing_line = engine_config(cfg, spacing, shape)
    log(f"volume: {len(inputs.channels)} channel(s) of (D, H, W) = {shape} ({inputs.format}); "
        f"spacing from {source}")
    log(spacing_line)
    summary = label_summary(inputs.labels, k)
    log(f"{k} classes; " + describe_labels(summary))
    for st, c in zip(inputs.stats, range(len(inputs.stats))):
        log(f"channel {c}: mean {st.mean:.4g}, std {st.std:.4g}, range [{st.min:.4g}, {st.max:.4g}]")
    vol = inputs.volume()
    if out is not None:
        from ...config import save_config

        save_config(cfg, out / "config.yaml")
    fit = fit_predict(vol, inputs.labels, seg_cfg, out, num_classes=k, quiet=quiet, resume=resume)
    if not is_main_process():
        return {}
    res = fit.result
    pred = fit.probs.argmax(0).numpy().astype(np.uint8)
    log(f"fhcnn: trained {seg_cfg.train.steps} steps in {fit.train_time_s:.0f} s on {res.device} "
        f"(windows {tuple(res.window)}, batch {seg_cfg.data.batch_size}), predicted in "
        f"{fit.predict_time_s:.0f} s")
    metrics: dict[str, Any] = {
        "images": inputs.sources.get("images"), "labels": inputs.sources.get("labels"),
        "shape": list(shape), "channels": len(inputs.channels), "format": inputs.format,
        "spacing": list(spacing) if spacing else None, "spacing_source": source,
        "spacing_handling": spacing_line, "num_classes": k, "annotation": summary,
        "train_window": list(res.window), "predict_window": list(res.predict_window),
        "steps": seg_cfg.train.steps, "arch": seg_cfg.model.arch,
        "train_time_s": round(fit.train_time_s, 2), "predict_time_s": round(fit.predict_time_s, 2),
        "activation_bytes": int(res.activation_bytes), "device": str(res.device),
        "parameters": int(sum(p.numel() for p in res.model.parameters())),
        "predicted_fraction": [float((pred == c).mean()) for c in range(k)],
    }
    truth = _held_out(inputs)
    baselines: dict[str, np.ndarray] = {}
    if truth is not None and (truth != IGNORE).any():
        ours = score(pred, truth, k)
        metrics.update({"eval_labels": inputs.sources.get("eval_labels"), "miou": ours["miou"],
                        "iou": ours["iou"], "dice": ours["dice"], "fhcnn": ours})
        log(_line("fhcnn", ours))
        metrics["baselines"] = {}
        for name in parse_baselines(cfg.volume.baselines):
            t0 = time.perf_counter()
            bpred, extra = _baseline(name, inputs, vol, seg_cfg, cfg.volume, spacing)
            m = score(bpred, truth, k)
            m.update(extra, time_s=round(time.perf_counter() - t0, 2))
            metrics["baselines"][name] = m
            baselines[name] = bpred
            log(_line(name, m))
    elif truth is not None:
        log("--eval-labels has no class where the labels are unlabelled: nothing to score")
    metrics["total_time_s"] = round(time.perf_counter() - t_start, 2)
    metrics["history"] = res.history
    if out is not None:
        from .outputs import write_outputs

        write_outputs(out, inputs, pred, fit.probs if save_probs else None, res, metrics, spacing)
    metrics["prediction"] = pred
    metrics["baseline_predictions"] = baselines
    return metrics


def _baseline(name: str, inputs: VolumeInputs, vol: np.ndarray, seg_cfg: SegmentConfig,
              opt: VolumeOptions, spacing: Sequence[float] | None) -> tuple[np.ndarray, dict[str, Any]]:
    """The prediction ``(D, H, W)`` of one baseline on the same labels, and what to record."""
    if name == "copy":
        return copy_nearest_label(inputs.labels, spacing), {}
    if name == "forest":
        threads = max(1, torch.get_num_threads())
        return forest_baseline(vol, inputs.labels, inputs.num_classes, trees=opt.forest_trees,
                               samples=opt.forest_samples, seed=opt.seed, threads=threads)
    ucfg = copy.deepcopy(seg_cfg)
    ucfg.model.arch = "unet"
    ucfg.parallel.space = 1
    fit = fit_predict(vol, inputs.labels, ucfg, None, num_classes=inputs.num_classes, quiet=True)
    return fit.probs.argmax(0).numpy().astype(np.uint8), {
        "train_time_s": round(fit.train_time_s, 2), "predict_time_s": round(fit.predict_time_s, 2),
        "parameters": int(sum(p.numel() for p in fit.result.model.parameters()))}


def check_setup(inputs: VolumeInputs, cfg: VolumeConfig) -> None:
    """The device, the model of the config for these channels and classes, and a ``parallel``
    split of this volume; call before the output folder exists (one ``InputError`` line)."""
    from .._setup import check_dense_setup

    check_dense_setup(cfg, len(inputs.channels), inputs.num_classes)
    spacing, _ = resolve_spacing(cfg, inputs)
    seg, _ = engine_config(cfg, spacing, inputs.shape)
    check_space_split(seg, inputs.shape)

