"""Time-lapse (bitemporal) hyperspectral change detection from a few labelled pixels: the
pipeline behind ``fhcnn change``.

Layout (as in the paper, section 6.1.1): the two dates become the *channels* and the spectral
bands the *depth* of one 3D volume::

    volume[c, b, y, x]   c = 0: BEFORE band b, c = 1: AFTER band b   (shape (2, B, H, W))
                         (+ c = 2: AFTER - BEFORE with change.channels="dates+diff")

each band standardized with the mean and standard deviation of both dates pooled (so the
difference between dates is kept). The network maps it to a 3D logit volume ``(2, B, H, W)``;
the loss is measured on a 2D x-y map: by default (``change.target="mean"``) the band-mean of
the logits, ``(2, H, W)``, whose softmax is also the predicted change probability. Training
windows always span the whole band axis (reflected up to the network's size multiple) and
``window_height x window_width`` pixels around a labelled pixel. ``"all"`` (every band slice
labelled, the engine's per-voxel loss) and ``"slice"`` (one labelled band slice) are the
alternatives measured in ``benchmarks/change_detection.py``. Scaling, padding and cropping
are the engine's (:class:`~fhcnn.engine.sizes.Geometry`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ... import log as _log
from ...engine import SegmentationResult, SegmentConfig, size_multiple_of
from ...engine.plan import DenseInputs, RunPlan, prepare
from ...engine.run import run
from ...engine.sizes import scaled_size
from ...engine.store import DepthMeanSink, spill_folder
from ...errors import InputError
from ...options import IGNORE
from ...training import is_main_process
from .config import BandNormalization, ChangeChannels, ChangeConfig, derive_settings
from .inputs import ChangeInputs
from .outputs import change_metrics, write_outputs
from .volume import change_volume

__all__ = ["build_volume", "plan_change", "fit_change", "held_out_scores", "run_change", "change_command",
           "local_copies"]


def build_volume(before: Any, after: Any, channels: ChangeChannels = "dates",
                 normalize: BandNormalization = "band") -> np.ndarray:
    """``(C, B, H, W)`` float32 volume of two ``(H, W, B)`` cubes, in memory: the whole of
    :func:`~fhcnn.apps.change.volume.change_volume` (``fhcnn change`` reads it on demand).

    ``channels`` names what is stacked, joined by ``+``: ``dates`` (before, after), ``diff``
    (after - before of the standardized bands), ``ratio+angle`` (the standardized log ratio of
    the dates and their spectral angle); the choices are
    :data:`~fhcnn.apps.change.config.ChangeChannels` (C = 2, 3 or 5).

    Example:
        >>> build_volume(np.zeros((4, 5, 3)), np.ones((4, 5, 3)), "dates+diff+ratio+angle").shape
        (5, 3, 4, 5)
    """
    return change_volume(before, after, channels, normalize).read((slice(None),) * 3)


def plan_change(before: Any, after: Any, train2d: np.ndarray, cfg: ChangeConfig
                ) -> tuple[RunPlan, ChangeConfig, dict[str, Any]]:
    """The run of one bitemporal scene, worked out and checked before any output exists: the
    settings the scene decides (:func:`~fhcnn.apps.change.config.derive_settings`), the volume
    (:func:`build_volume`), the labels for ``change.target`` and the engine's plan. Returns
    ``(plan, config with the derived settings, what was derived)``."""
    h, w, nb = before.shape
    multiple = size_multiple_of(cfg.model)
    scaled = scaled_size((h, w), cfg.data.scale)
    s2 = cfg.data.scale ** 2
    labels = np.asarray(train2d)
    cfg, derived = derive_settings(cfg, *scaled, max(1, round(int((labels != IGNORE).sum()) * s2)),
                                   round(int((labels == 1).sum()) * s2), bands=nb, multiple=multiple)
    ch = cfg.change
    slice_idx = nb // 2 if ch.slice_index < 0 else ch.slice_index
    if ch.target == "slice" and not 0 <= slice_idx < nb:
        raise InputError(f"change.slice_index={ch.slice_index} is outside the {nb} bands")
    if ch.target == "mean":     # one 2D map: the loss on the band-mean logits
        lab = labels
    elif ch.target == "all":
        lab = np.broadcast_to(labels, (nb, h, w))
    else:
        lab = np.full((nb, h, w), IGNORE, np.uint8)
        lab[slice_idx] = labels
    data = replace(cfg.data, reduce_depth=ch.target == "mean")
    seg_cfg = SegmentConfig(model=cfg.model, data=data, train=cfg.train, parallel=cfg.parallel)
    plan = prepare(DenseInputs(change_volume(before, after, ch.channels, ch.normalize), lab, 2), seg_cfg)
    return plan, cfg, derived


def fit_change(before: Any, after: Any, train2d: np.ndarray, cfg: ChangeConfig,
               out_dir: Path | None = None, *, log: Callable[[str], None] = _log.info,
               quiet: bool = False, label_source: str = "labels", n_scored: int = 0,
               eval_fn: Callable[[np.ndarray], dict[str, float]] | None = None,
               resume: bool = False, planned: tuple[RunPlan, ChangeConfig, dict[str, Any]] | None = None
               ) -> dict[str, Any]:
    """Train on one bitemporal scene and predict its change map (the work of ``fhcnn change``).

    Args:
        before, after: ``(H, W, B)`` cubes (array-likes, read on demand).
        train2d: ``(H, W)`` uint8 training labels (0, 1, 255 = unlabelled).
        cfg: a :class:`ChangeConfig`.
        out_dir: where the trainer writes its checkpoints/metrics (None: nothing written).
        eval_fn: optional ``change probability (H, W) -> dict`` called every
            ``cfg.data.eval_every`` steps.
        planned: what :func:`plan_change` returned for these inputs (else it is called).

    Returns:
        dict with ``pred`` (H, W) uint8, ``prob`` (H, W) float change probability, ``result``
        (the engine's :class:`SegmentationResult`), ``plan``, ``volume`` (as trained on),
        ``padded``, ``geometry``, times, ``derived`` (the settings derived from the scene, see
        :func:`~fhcnn.apps.change.config.derive_settings`, each logged) and ``config`` (the
        config with them, as trained).
    """
    h, w, nb = before.shape
    plan, cfg, derived = planned or plan_change(before, after, train2d, cfg)
    ch, geom = cfg.change, plan.geometry
    c = plan.volume.shape[0]
    slice_idx = nb // 2 if ch.slice_index < 0 else ch.slice_index
    n0, n1 = int((train2d == 0).sum()), int((train2d == 1).sum())
    log(f"scene {h}x{w} pixels, {nb} bands; volume (channels, bands, H, W) = {(c, nb, h, w)} "
        f"[{ch.channels}; bands standardized: {ch.normalize}]; " + geom.describe())
    log(f"labels ({label_source}): training {n0 + n1} pixels ({100 * (n0 + n1) / (h * w):.2f}% "
        f"of the scene; {n1} changed, {n0} unchanged); scoring {n_scored} other pixels")
    for name, item in derived.items():
        log(f"derived {name} = {item['value']} ({item['why']})")

    depth, index = plan.volume.spatial[0], None if ch.target in ("all", "mean") else slice_idx

    def change_sink(prob: np.ndarray) -> DepthMeanSink:
        """Into ``prob`` (2, H, W): the band mean of the probabilities, or the one band of
        ``change.target="slice"``, chunk by chunk (never the whole volume)."""
        return DepthMeanSink(prob, geom.size, geom.scaled, depth, index)

    wrapped = None
    if eval_fn is not None:
        def wrapped(res: SegmentationResult) -> dict[str, float]:
            prob = np.zeros((2, *geom.size), np.float32)
            with spill_folder(out_dir, every_process=res.space is not None) as work:
                res.predict_into(plan.volume, [change_sink(prob)], shifts=1, work=work)
            return eval_fn(prob[1])
    prob = np.zeros((2, *geom.size), np.float32)
    result, predict_time = run(plan, out_dir, lambda r: [change_sink(prob)], eval_fn=wrapped, quiet=quiet,
                               resume=resume)
    train_time, p_change = result.train_time_s, prob[1]
    log(f"training windows {tuple(result.window)}")
    pred = (p_change > ch.threshold).astype(np.uint8)
    return {"pred": pred, "prob": p_change, "result": result, "plan": plan, "volume": plan.volume,
            "padded": geom.padded, "geometry": geom, "train_time_s": train_time, "predict_time_s": predict_time,
            "derived": derived, "config": cfg}


def held_out_scores(scored: np.ndarray, threshold: float) -> Callable[[np.ndarray], dict[str, float]]:
    """The ``eval_fn`` of :func:`fit_change` that scores a change probability map ``(H, W)``
    (changed above ``threshold``) on the held-out pixels of ``scored`` (``IGNORE``: not scored):
    ``miou``, ``iou_positive``, ``iou_negative``."""
    def scores(prob: np.ndarray) -> dict[str, float]:
        m = change_metrics((prob > threshold).astype(np.uint8), scored)
        return {"miou": m["miou"], "iou_positive": m["iou_positive"], "iou_negative": m["iou_negative"]}
    return scores


def run_change(inputs: ChangeInputs, cfg: ChangeConfig, out: Path, *, label_fraction: float | None = None,
               label_seed: int = 0, eval_labels: str | None = None, quiet: bool = False,
               resume: bool = False, log: Callable[[str], None] = _log.info,
               planned: tuple[RunPlan, ChangeConfig, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train, predict, score the held-out pixels (also every ``data.eval_every`` steps, into the
    history) and write every output into ``out``; returns the metrics (``{}`` on a non-zero rank
    under ``torchrun``: rank 0 writes and reports)."""
    t_start = time.perf_counter()
    before, after, train2d, scored = inputs.before, inputs.after, inputs.train, inputs.scored
    h, w, nb = before.shape
    n_scored = int((scored != IGNORE).sum())
    if inputs.dates.get("order"):
        d = inputs.dates
        log(f"dates: BEFORE = {d['before']}, AFTER = {d['after']} ({d['order']})")
    eval_fn = held_out_scores(scored, cfg.change.threshold) if cfg.data.eval_every and n_scored else None
    fit = fit_change(before, after, train2d, cfg, out_dir=out, log=log, quiet=quiet,
                     label_source=inputs.label_source, n_scored=n_scored, eval_fn=eval_fn, resume=resume,
                     planned=planned)
    if not is_main_process():
        return {}
    result, pred = fit["result"], fit["pred"]
    n0, n1 = int((train2d == 0).sum()), int((train2d == 1).sum())
    metrics: dict[str, Any] = {
        "scene": {"height": h, "width": w, "bands": nb, "volume_shape": list(fit["plan"].volume.shape),
                  "padded_shape": list(fit["padded"]), "scale": cfg.data.scale, "dates": inputs.dates},
        "labels": {"source": inputs.label_source, "label_fraction": label_fraction,
                   "label_seed": label_seed, "train_pixels": n0 + n1, "train_changed": n1,
                   "train_unchanged": n0, "scored_pixels": n_scored,
                   "eval_labels": str(eval_labels) if eval_labels else None},
        "heldout": change_metrics(pred, scored) if n_scored else None,
        "train_fit": change_metrics(pred, train2d),
        "predicted_change_fraction": float(pred.mean()),
        "activation_bytes": int(result.activation_bytes),
        "parameters": int(sum(p.numel() for p in result.model.parameters())),
        "train_time_s": round(fit["train_time_s"], 2), "predict_time_s": round(fit["predict_time_s"], 2),
        "total_time_s": round(time.perf_counter() - t_start, 2),
        "device": str(result.device), "steps": int(fit["config"].train.steps),
        "derived": fit["derived"],
        "loss_curve": [[r["step"], round(r["loss"], 5)] for r in result.history],
        "history": result.history,   # per step: loss, time_s; the held-out scores of data.eval_every
    }
    if metrics["heldout"]:
        hm = metrics["heldout"]
        metrics.update(miou=hm["miou"], iou_positive=hm["iou_positive"], iou_negative=hm["iou_negative"])
    from ...config import save_config

    write_outputs(out, inputs, fit, metrics, show_eval=bool(eval_labels))
    save_config(cfg, out / "config.yaml")   # as given; the derived values are in metrics.json
    if metrics["heldout"]:
        log(f"held-out mIoU {metrics['miou']:.4f} (positive {metrics['iou_positive']:.4f}, negative "
            f"{metrics['iou_negative']:.4f}) on {n_scored} pixels")
    else:
        log("no held-out pixels (use --label-fraction or --eval-labels to score)")
    log(f"activation memory {result.activation_bytes / 2**20:.1f} MiB per step, training "
        f"{fit['train_time_s']:.1f} s, prediction {fit['predict_time_s']:.1f} s; outputs in {out}")
    return metrics


def change_command(before: str, after: str | None, cfg: ChangeConfig, out: str | None, *, key: str | None = None,
                   labels: str | None = None, changed: str | None = None, unchanged: str | None = None,
                   label_fraction: float | None = None, label_seed: int = 0, eval_labels: str | None = None,
                   resume: bool = False, overwrite: bool = False, quiet: bool = False,
                   config_file: str | None = None) -> tuple[dict[str, Any], Path]:
    """``fhcnn change``: read and check every input and work out the run (each refusal one
    :class:`~fhcnn.errors.InputError` line, before ``out`` exists), make the run folder, train,
    predict and write. Returns the metrics (``{}`` on a non-zero rank) and the folder."""
    from ...data.hyperspectral import input_files
    from ...rundir import prepare_output_dir
    from .inputs import load_inputs

    if not out:
        raise InputError("--out DIR is required")
    inputs = load_inputs(before, after, key=key, labels=labels, changed=changed, unchanged=unchanged,
                         label_fraction=label_fraction, label_seed=label_seed, eval_labels=eval_labels)
    if cfg.data.eval_every and not (inputs.scored != IGNORE).any():
        raise InputError(f"data.eval_every={cfg.data.eval_every} scores the held-out pixels during training: "
                         f"give --eval-labels or --label-fraction, or leave it 0")
    planned = plan_change(inputs.before, inputs.after, inputs.train, cfg)
    folder = prepare_output_dir(out, resume, overwrite, tool="change", config=cfg, config_file=config_file,
                                roles={"before": input_files(before), "after": input_files(after) if after else None,
                                       "labels": labels, "changed": changed, "unchanged": unchanged,
                                       "eval_labels": eval_labels},
                                extra={"key": key, "label_fraction": label_fraction, "label_seed": label_seed})
    _log.setup(quiet)
    local_copies(inputs, folder, cfg, resume=resume)
    metrics = run_change(inputs, cfg, folder, label_fraction=label_fraction, label_seed=label_seed,
                         eval_labels=eval_labels, quiet=quiet, resume=resume, planned=planned)
    return metrics, folder


def local_copies(inputs: ChangeInputs, folder: Path, cfg: ChangeConfig, log: Callable[[str], None] = _log.info,
                 resume: bool = False) -> None:
    """Dates that were decoded once into a private copy (a compressed TIFF,
    :class:`~fhcnn.data.lazy.StagedCopy`) are copied into the run folder (``inputs/before.zarr``,
    ``after.zarr``, or ``dates.zarr`` for one file holding both; recorded in ``run.json``) and
    read from there; the private copies are removed."""
    from ...data.lazy import staged_copies
    from ...rundir import copy_input, stop_watching_input

    before, after = staged_copies(inputs.before), staged_copies(inputs.after)
    named = {"dates": before[0]} if before and after and before[0] is after[0] else \
        {**({"before": before[0]} if before else {}), **({"after": after[0]} if after else {})}
    for name, staged in named.items():
        staged.adopt(copy_input(folder, name, staged.array, staged.array.chunks, axis=0, train=cfg.train,
                                why="its file is compressed", log=log, resume=resume))
        for role in ("before", "after") if name == "dates" else (name,):
            stop_watching_input(role)  # decoded whole before the run began: read from the copy
