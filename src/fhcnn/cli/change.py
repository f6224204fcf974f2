"""``fhcnn change``: time-lapse (bitemporal) hyperspectral change detection from a few labelled pixels.

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
labelled, the segmentation engine's per-voxel loss) and ``"slice"`` (one labelled band slice)
are the alternatives measured in ``benchmarks/change_detection.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

HELP = "detect change between two hyperspectral images from a few labelled pixels"

__all__ = ["ChangeOptions", "ChangeConfig", "load_inputs", "build_volume", "HELP", "add_arguments", "run"]


def _segment_classes() -> tuple[type, type, type]:
    from ..segmentation.config import DataConfig, ModelConfig, TrainConfig
    return ModelConfig, DataConfig, TrainConfig


@dataclass
class ChangeOptions:
    """Change-detection specific settings.

    Attributes:
        channels: ``"dates"`` (2 channels: before, after) or ``"dates+diff"`` (3: + after - before).
        target: where the 2D labels meet the 3D output ``(2, B, H, W)``: ``"mean"`` (default):
            the loss is taken on the band-mean of the logits (a 2D x-y map), the prediction is
            the softmax of that mean (the engine's ``data.reduce_depth``, which this option
            sets: on for ``"mean"``, off otherwise); ``"all"``: every band slice carries the labels (the
            engine's per-voxel loss; prediction = band-mean of the probabilities);
            ``"slice"``: only band ``slice_index`` carries them (the paper's wording) and the
            prediction is read there.
        slice_index: band used with ``target="slice"`` (-1 = the middle band).
        normalize: ``"band"``: standardize each band over both dates; ``"none"``.
        scale: spatial resize factor applied before training (prediction is resized back).
            Below 1 a downscaled cell mixes several pixels, so a scored (held-out) pixel can
            share a cell with a training pixel and the held-out score is optimistic; score
            with ``scale = 1`` when the numbers matter.
        threshold: change probability above which a pixel is called changed.
    """

    channels: Literal["dates", "dates+diff"] = "dates"
    target: Literal["mean", "all", "slice"] = "mean"
    slice_index: int = -1
    normalize: Literal["band", "none"] = "band"
    scale: float = 1.0
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.scale <= 4:
            raise ValueError(f"scale must be in (0, 4], got {self.scale}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")


def _make_config_class() -> type:
    ModelConfig, DataConfig, TrainConfig = _segment_classes()

    @dataclass
    class ChangeConfig:
        """``fhcnn change`` run configuration: engine model/data/train + :class:`ChangeOptions`."""

        model: ModelConfig = field(default_factory=ModelConfig)  # type: ignore[valid-type]
        data: DataConfig = field(default_factory=DataConfig)  # type: ignore[valid-type]
        change: ChangeOptions = field(default_factory=ChangeOptions)
        train: TrainConfig = field(default_factory=TrainConfig)  # type: ignore[valid-type]

    ChangeConfig.__annotations__ = {"model": ModelConfig, "data": DataConfig,
                                    "change": ChangeOptions, "train": TrainConfig}
    ChangeConfig.__module__ = __name__
    ChangeConfig.__qualname__ = "ChangeConfig"
    return ChangeConfig


_CONFIG_CLASS: type | None = None


def __getattr__(name: str) -> Any:  # lazy: the engine imports torch
    global _CONFIG_CLASS
    if name == "ChangeConfig":
        if _CONFIG_CLASS is None:
            _CONFIG_CLASS = _make_config_class()
        return _CONFIG_CLASS
    raise AttributeError(name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..config import add_config_arguments

    parser.usage = ("fhcnn change BEFORE [AFTER] (--labels MAP | --changed MASK [--unchanged MASK]) "
                    "--out OUT [options]")
    parser.description = (
        "Train a 3D network (the two dates as channels, the bands as depth) on one bitemporal "
        "scene from a few labelled pixels and predict the change map of the whole scene. "
        "BEFORE/AFTER: .npy (H, W, bands), .mat (v5 or v7.3), ENVI (.hdr/.HDR header or the raw "
        "file), .tif/.tiff; or one 4D file (2, H, W, bands) holding both dates. "
        "Labels: 1 changed, 0 unchanged, 255 or NaN unlabelled. "
        "OUT gets prediction.npy/.png, figure.png, metrics.json, config.yaml and the checkpoint.")
    parser.add_argument("before", metavar="BEFORE", help="date-1 image, or one 4D file with both dates")
    parser.add_argument("after", metavar="AFTER", nargs="?", help="date-2 image (same H, W, bands)")
    parser.add_argument("--key", help="variable name inside .mat inputs (default: the largest array)")
    g = parser.add_argument_group("labels")
    g.add_argument("--labels", metavar="MAP", help="2D change map .npy/.png/.bmp/.tif: 1 changed, "
                   "0 unchanged, 255 (or NaN) unlabelled")
    g.add_argument("--changed", metavar="MASK", help="mask of known changed pixels (nonzero); alone "
                   "it is a full binary map (zero = unchanged)")
    g.add_argument("--unchanged", metavar="MASK", help="mask of known unchanged pixels (nonzero)")
    g.add_argument("--label-fraction", type=float, metavar="F",
                   help="train on a stratified random fraction F of the labelled pixels and score "
                        "the rest (e.g. 0.088)")
    g.add_argument("--label-seed", type=int, default=0, help="seed of --label-fraction (default 0)")
    g.add_argument("--eval-labels", metavar="MAP", help="full change map to score against (never "
                   "trained on; training pixels are excluded from the score)")
    parser.add_argument("--scale", type=float, default=None,
                        help="resize the scene by this factor before training (change.scale); "
                             "below 1 a held-out pixel can share a downscaled cell with a "
                             "training pixel, so held-out scores are optimistic")
    add_config_arguments(parser, default_config="change")


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------

def load_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Read and validate every input (nothing is written). Raises InputError/FileNotFoundError."""
    import numpy as np

    from ..data.hyperspectral import (IGNORE, check_labels, labels_from_masks, read_change_map,
                                      read_cube, read_pair, sample_labels)
    from ..errors import InputError

    if args.after is None:
        before, after = read_pair(args.before, key=args.key)
    else:
        before, after = read_cube(args.before, key=args.key), read_cube(args.after, key=args.key)
        if before.shape != after.shape:
            raise InputError(f"BEFORE {args.before} is {before.shape} (H, W, bands) but AFTER "
                             f"{args.after} is {after.shape}; both dates must have the same size and bands")
    shape = before.shape[:2]
    if args.labels and (args.changed or args.unchanged):
        raise InputError("give either --labels or --changed/--unchanged, not both")
    if args.labels:
        labels = read_change_map(args.labels, shape)
        source = str(args.labels)
    elif args.changed or args.unchanged:
        labels = labels_from_masks(args.changed, args.unchanged, shape)
        source = " + ".join(str(p) for p in (args.changed, args.unchanged) if p)
    else:
        raise InputError("no labels: give --labels MAP or --changed MASK [--unchanged MASK]")
    check_labels(labels, source)
    eval_map = read_change_map(args.eval_labels, shape) if args.eval_labels else None
    if args.label_fraction is not None:
        train, held = sample_labels(labels, args.label_fraction, args.label_seed)
        check_labels(train, f"{source} with --label-fraction {args.label_fraction}")
    else:
        train, held = labels, np.full(labels.shape, IGNORE, np.uint8)
    if eval_map is not None:
        held = eval_map.copy()
        held[train != IGNORE] = IGNORE
    return {"before": before, "after": after, "labels": labels, "train": train, "scored": held,
            "label_source": source}


def build_volume(before: Any, after: Any, channels: str = "dates", normalize: str = "band") -> Any:
    """``(C, B, H, W)`` float32 volume from two ``(H, W, B)`` cubes (see the module docstring)."""
    import numpy as np

    x = np.stack([before, after], 0).astype(np.float32)        # (2, H, W, B)
    if normalize == "band":
        mu = x.mean(axis=(0, 1, 2), keepdims=True)
        sd = x.std(axis=(0, 1, 2), keepdims=True)
        x = (x - mu) / np.maximum(sd, 1e-6 * np.maximum(np.abs(mu), 1e-12))
    if channels == "dates+diff":
        x = np.concatenate([x, x[1:2] - x[0:1]], 0)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))       # (C, B, H, W)


def _resize_labels(labels: Any, size: tuple[int, int]) -> Any:
    """Sparse labels to a coarser/finer grid: each labelled pixel votes for its target cell;
    ties stay unlabelled."""
    import numpy as np

    from ..data.hyperspectral import IGNORE

    h, w = labels.shape
    ys, xs = np.nonzero(labels != IGNORE)
    ty = np.minimum((ys * size[0]) // h, size[0] - 1)
    tx = np.minimum((xs * size[1]) // w, size[1] - 1)
    votes = np.zeros((2,) + tuple(size), np.int64)
    np.add.at(votes, (labels[ys, xs].astype(np.int64), ty, tx), 1)
    out = np.full(size, IGNORE, np.uint8)
    out[votes[1] > votes[0]] = 1
    out[votes[0] > votes[1]] = 0
    return out


def _resize_cube(cube: Any, size: tuple[int, int]) -> Any:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(cube).permute(2, 0, 1)[None]
    return F.interpolate(t, size=size, mode="area" if size[0] < cube.shape[0] else "bilinear",
                         **({} if size[0] < cube.shape[0] else {"align_corners": False}))[0] \
        .permute(1, 2, 0).contiguous().numpy()


# --------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------

def change_metrics(pred: Any, truth: Any) -> dict[str, Any]:
    """mIoU, positive (changed) and negative (unchanged) IoU of ``pred`` on pixels where
    ``truth`` is 0/1 (255 = not scored)."""
    from ..segmentation.metrics import segmentation_metrics

    m = segmentation_metrics(pred, truth, 2, per_frame=False)
    return {"miou": m["miou"], "iou_positive": m["iou"][1], "iou_negative": m["iou"][0],
            "accuracy": m["accuracy"], "scored_pixels": m["scored_voxels"], "confusion": m["confusion"]}


def write_figure(path: Path, before: Any, after: Any, truth: Any, pred: Any, scored: Any,
                 title: str = "") -> None:
    """The paper's Figure 4: the two dates (false colour), truth, prediction and error."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..atomic import atomic_path
    from ..data.hyperspectral import IGNORE, false_color

    b = before.shape[-1]
    bands = [min(b - 1, int(b * f)) for f in (0.75, 0.5, 0.25)] if b >= 3 else [0, 0, 0]
    both = np.concatenate([before[..., bands], after[..., bands]], 0)
    lo_hi = (np.percentile(both, 2, axis=(0, 1)), np.percentile(both, 98, axis=(0, 1)))
    truth_img = np.full(truth.shape + (3,), 0.5)
    truth_img[truth == 0] = 0.0
    truth_img[truth == 1] = 1.0
    err = np.full(pred.shape + (3,), 0.35)               # not scored: dark grey
    s = scored != IGNORE
    err[s & (pred == scored)] = 1.0                      # correct: white
    err[s & (pred == 1) & (scored == 0)] = (0.85, 0.1, 0.1)   # false change: red
    err[s & (pred == 0) & (scored == 1)] = (0.1, 0.3, 0.9)    # missed change: blue
    panels = [(false_color(before, bands, lo_hi), f"(a) before (bands {bands})"),
              (false_color(after, bands, lo_hi), "(b) after"),
              (truth_img, "labels (white 1, black 0, grey none)"),
              (pred, "prediction (white = change)"),
              (err, "error: red false, blue missed, grey unscored")]
    fig, axes = plt.subplots(1, 5, figsize=(20, 4.4))
    for ax, (img, name) in zip(axes, panels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def _save_png(path: Path, img: Any) -> None:
    from PIL import Image

    from ..atomic import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")


def _save_npy(path: Path, arr: Any) -> None:
    import numpy as np

    from ..atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)


# --------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------

def fit_change(before: Any, after: Any, train2d: Any, cfg: Any, out_dir: Any = None, *,
               log: Any = print, quiet: bool = False, label_source: str = "labels", n_scored: int = 0,
               eval_fn: Any = None, resume: bool = False) -> dict[str, Any]:
    """Train on one bitemporal scene and predict its change map (the work of ``fhcnn change``).

    Args:
        before, after: ``(H, W, B)`` float32 cubes.
        train2d: ``(H, W)`` uint8 training labels (0, 1, 255 = unlabelled).
        cfg: a ``ChangeConfig``.
        out_dir: where the trainer writes its checkpoints/metrics (None: nothing written).
        eval_fn: optional ``result -> dict`` called every ``cfg.data.eval_every`` steps.

    Returns:
        dict with ``pred`` (H, W) uint8, ``prob`` (H, W) float change probability, ``result``
        (the engine's :class:`SegmentationResult`), ``volume``, ``padded``, times.
    """
    import numpy as np
    import torch

    from ..data.hyperspectral import IGNORE
    from ..errors import InputError
    from ..segmentation.config import SegmentConfig
    from ..segmentation.engine import train_segmentation

    ch = cfg.change
    h, w, nb = before.shape
    if ch.scale != 1.0:
        size = (max(1, round(h * ch.scale)), max(1, round(w * ch.scale)))
        before_s, after_s = _resize_cube(before, size), _resize_cube(after, size)
        train_s = _resize_labels(train2d, size)
        log(f"scaled {h}x{w} -> {size[0]}x{size[1]} (change.scale={ch.scale}); "
            f"{int((train_s != IGNORE).sum())} labelled cells")
    else:
        before_s, after_s, train_s = before, after, train2d
    vol = build_volume(before_s, after_s, ch.channels, ch.normalize)
    c, nbv, hs, ws = vol.shape
    slice_idx = (nbv // 2 if ch.slice_index < 0 else ch.slice_index)
    if ch.target == "slice" and not 0 <= slice_idx < nbv:
        raise InputError(f"change.slice_index={ch.slice_index} is outside the {nbv} bands")
    if ch.target == "mean":     # one 2D map: the loss on the band-mean logits
        lab = train_s
    elif ch.target == "all":
        lab = np.broadcast_to(train_s, (nbv, hs, ws)).copy()
    else:
        lab = np.full((nbv, hs, ws), IGNORE, np.uint8)
        lab[slice_idx] = train_s
    n0, n1 = int((train2d == 0).sum()), int((train2d == 1).sum())
    log(f"scene {h}x{w} pixels, {nb} bands; volume (channels, bands, H, W) = {tuple(vol.shape)} "
        f"[{ch.channels}; bands standardized: {ch.normalize}]")
    log(f"labels ({label_source}): training {n0 + n1} pixels ({100 * (n0 + n1) / (h * w):.2f}% "
        f"of the scene; {n1} changed, {n0} unchanged); scoring {n_scored} other pixels")
    data = replace(cfg.data, reduce_depth=ch.target == "mean")
    seg_cfg = SegmentConfig(model=cfg.model, data=data, train=cfg.train)

    def reduce(prob: Any) -> Any:
        p = prob[1].mean(0) if ch.target in ("all", "mean") else prob[1, slice_idx]
        if (hs, ws) != (h, w):
            p = torch.nn.functional.interpolate(p[None, None], size=(h, w), mode="bilinear",
                                                align_corners=False)[0, 0]
        return p.numpy()

    wrapped = None
    if eval_fn is not None:
        def wrapped(res: Any) -> dict[str, float]:
            return eval_fn(reduce(res.predict_proba(vol, shifts=1)))
    t0 = time.perf_counter()
    result = train_segmentation(vol, lab, seg_cfg, out_dir=out_dir, num_classes=2, quiet=quiet,
                                eval_fn=wrapped, resume=resume)
    train_time = time.perf_counter() - t0
    m = result.model.size_multiple
    pad = tuple(-(-n // m) * m for n in (nbv, hs, ws))
    log(f"network takes sizes that are multiples of {m}: the (bands, H, W) = {(nbv, hs, ws)} volume "
        f"is continued by reflection to {pad} for prediction and cropped back; "
        f"training windows {tuple(result.window)}")
    t1 = time.perf_counter()
    p_change = reduce(result.predict_proba(vol))
    pred = (p_change > ch.threshold).astype(np.uint8)
    return {"pred": pred, "prob": p_change, "result": result, "volume": vol, "padded": pad,
            "train_time_s": train_time, "predict_time_s": time.perf_counter() - t1}


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..config import config_from_args, prepare_output_dir, save_config
    from ..data.hyperspectral import IGNORE
    from ..errors import InputError

    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    cls = __getattr__("ChangeConfig")
    if args.scale is not None:
        args.overrides = list(args.overrides or []) + [f"change.scale={args.scale}"]
    cfg = config_from_args(cls, args)
    if not args.out:
        raise InputError("--out DIR is required")
    t_start = time.perf_counter()
    inp = load_inputs(args)   # every input check happens before OUT is created
    before, after = inp["before"], inp["after"]
    h, w, nb = before.shape
    out = prepare_output_dir(args.out, args.resume, args.overwrite,
                             inputs=[p for p in (args.before, args.after, args.labels, args.changed,
                                                 args.unchanged, args.eval_labels) if p])
    train2d = inp["train"]
    n_scored = int((inp["scored"] != IGNORE).sum())
    fit = fit_change(before, after, train2d, cfg, out_dir=out, log=log, quiet=args.quiet,
                     label_source=inp["label_source"], n_scored=n_scored, resume=args.resume)
    result, vol, pad, pred, p_change = fit["result"], fit["volume"], fit["padded"], fit["pred"], fit["prob"]
    from ..training import is_main_process

    if not is_main_process():  # under torchrun only rank 0 writes outputs and prints
        return 0
    train_time, predict_time, ch = fit["train_time_s"], fit["predict_time_s"], cfg.change
    n0, n1 = int((train2d == 0).sum()), int((train2d == 1).sum())
    scored = inp["scored"]
    metrics: dict[str, Any] = {
        "scene": {"height": h, "width": w, "bands": nb, "volume_shape": list(vol.shape),
                  "padded_shape": list(pad), "scale": ch.scale},
        "labels": {"source": inp["label_source"], "label_fraction": args.label_fraction,
                   "label_seed": args.label_seed, "train_pixels": n0 + n1, "train_changed": n1,
                   "train_unchanged": n0, "scored_pixels": n_scored,
                   "eval_labels": str(args.eval_labels) if args.eval_labels else None},
        "heldout": change_metrics(pred, scored) if n_scored else None,
        "train_fit": change_metrics(pred, train2d),
        "predicted_change_fraction": float(pred.mean()),
        "activation_bytes": int(result.activation_bytes),
        "parameters": int(sum(p.numel() for p in result.model.parameters())),
        "train_time_s": round(train_time, 2), "predict_time_s": round(predict_time, 2),
        "total_time_s": round(time.perf_counter() - t_start, 2),
        "device": str(result.device), "steps": int(cfg.train.steps),
        "loss_curve": [[r["step"], round(r["loss"], 5)] for r in result.history],
    }
    if metrics["heldout"]:
        hm = metrics["heldout"]
        metrics.update(miou=hm["miou"], iou_positive=hm["iou_positive"], iou_negative=hm["iou_negative"])

    from safetensors.torch import save_file

    from ..atomic import atomic_path, atomic_write_text

    _save_npy(out / "prediction.npy", pred)
    _save_npy(out / "change_probability.npy", p_change.astype(np.float32))
    _save_npy(out / "labels_train.npy", train2d)
    _save_npy(out / "labels_scored.npy", scored)
    _save_png(out / "prediction.png", pred * 255)
    truth_show = inp["labels"].copy()
    if args.eval_labels:
        truth_show = np.where(scored != IGNORE, scored, train2d)
    title = (f"mIoU {metrics['miou']:.3f} (positive {metrics['iou_positive']:.3f}, negative "
             f"{metrics['iou_negative']:.3f}) on {n_scored} held-out pixels" if metrics["heldout"]
             else "no held-out pixels scored")
    write_figure(out / "figure.png", before, after, truth_show, pred, scored, title)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}, str(tmp))
    save_config(cfg, out / "config.yaml")
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if metrics["heldout"]:
        log(f"held-out mIoU {metrics['miou']:.4f} (positive {metrics['iou_positive']:.4f}, negative "
            f"{metrics['iou_negative']:.4f}) on {n_scored} pixels")
    else:
        log("no held-out pixels (use --label-fraction or --eval-labels to score)")
    log(f"activation memory {result.activation_bytes / 2**20:.1f} MiB per step, training {train_time:.1f} s, "
        f"prediction {predict_time:.1f} s; outputs in {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from . import main
    sys.exit(main(["change", *sys.argv[1:]]))
