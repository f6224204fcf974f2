"""Bitemporal hyperspectral change detection from a few labelled pixels (``fhcnn change``).

    python benchmarks/change_detection.py generated [--steps N] [--methods linear,hyperbolic,unet]
    python benchmarks/change_detection.py landsat   [--steps N] [--fraction 0.3]

``generated``: a scene from :func:`fhcnn.data.hyperspectral.make_bitemporal_scene` (96 x 96
pixels, 32 bands in 0.4-2.5 um, seed 0: new centre-pivot fields and changed crops, with crop
phenology, illumination and noise as nuisances), 8.8 % of the pixels labelled (stratified,
seed 0), every other pixel scored. ``landsat``: the Taizhou Landsat pair (400 x 400, 6 bands,
raw ENVI) from ``../shared/data/landsat_cd_taizhou``; 30 % of the partial reference
(change.bmp / unchanged.bmp) trains, the other 70 % is scored.

Methods: ``linear`` = logistic regression (scikit-learn, class-balanced) on each pixel's
stacked standardized spectra ``[before, after, after - before]``; ``hyperbolic`` = the
``change`` config (fully reversible net, loss on the band-mean logits); ``unet`` = the same
training with the segmentation engine's 3D U-Net (``model.arch=unet``). For the networks:
held-out mIoU against training time (evaluated every ``--eval-every`` steps, evaluation time
excluded) and the activation memory of one training step (bytes autograd saves, counted
exactly with ``fhcnn.memory``). Writes ``benchmarks/results/change_<mode>.json`` and ``.png``
(curves) and ``change_<mode>_figure.png`` (the paper's Figure 4 layout, hyperbolic net).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from fhcnn.apps.change import ChangeConfig, build_volume, change_metrics, fit_change, held_out_scores, write_figure
from fhcnn.atomic import atomic_path, atomic_write_text
from fhcnn.bench.reference import environment
from fhcnn.config import load_config
from fhcnn.data.hyperspectral import IGNORE, labels_from_masks, make_bitemporal_scene, read_cube, sample_labels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _paths import DATA, RESULTS  # noqa: E402

LANDSAT = DATA / "landsat_cd_taizhou" / "Taizhou"


def load_case(mode: str, fraction: float | None, seed: int) -> dict:
    if mode == "generated":
        s = make_bitemporal_scene(96, 96, 32, seed=seed)
        frac = 0.088 if fraction is None else fraction
        train, scored = sample_labels(s.change, frac, seed)
        return {"before": s.before, "after": s.after, "labels": s.change, "train": train,
                "scored": scored, "fraction": frac,
                "description": f"generated 96x96x32 (seed {seed}), {frac:.1%} of pixels labelled"}
    if not LANDSAT.is_dir():
        sys.exit(f"{LANDSAT} not found (the shared data folder is not present)")
    before, after = read_cube(LANDSAT / "2000TM.HDR"), read_cube(LANDSAT / "2003TM.HDR")
    labels = labels_from_masks(LANDSAT / "change.bmp", LANDSAT / "unchanged.bmp", before.shape[:2])
    frac = 0.3 if fraction is None else fraction
    train, scored = sample_labels(labels, frac, seed)
    return {"before": before, "after": after, "labels": labels, "train": train, "scored": scored,
            "fraction": frac,
            "description": f"Taizhou Landsat 400x400x6, {frac:.0%} of the reference pixels train"}


def run_linear(case: dict) -> dict:
    from sklearn.linear_model import LogisticRegression

    vol = build_volume(case["before"], case["after"], "dates+diff")       # (3, B, H, W)
    feats = vol.reshape(-1, vol.shape[2] * vol.shape[3]).T               # (H*W, 3B)
    tr = case["train"].reshape(-1)
    keep = tr != IGNORE
    t0 = time.perf_counter()
    clf = LogisticRegression(max_iter=3000, class_weight="balanced").fit(feats[keep], tr[keep])
    pred = clf.predict(feats).reshape(case["train"].shape).astype(np.uint8)
    return {"metrics": change_metrics(pred, case["scored"]), "train_time_s": time.perf_counter() - t0,
            "pred": pred}


def run_net(case: dict, arch: str, steps: int, eval_every: int, overrides: list[str]) -> dict:
    cfg = load_config(ChangeConfig, "change", [f"model.arch={arch}", f"train.steps={steps}",
                                               f"data.eval_every={eval_every}", *overrides])
    fit = fit_change(case["before"], case["after"], case["train"], cfg, None, quiet=True,
                     log=lambda *a: None, eval_fn=held_out_scores(case["scored"], cfg.change.threshold))
    res = fit["result"]
    curve = [{"step": h["step"], "time_s": h["time_s"], "miou": h["miou"]} for h in res.history if "miou" in h]
    return {"metrics": change_metrics(fit["pred"], scored), "train_time_s": fit["train_time_s"],
            "predict_time_s": fit["predict_time_s"], "activation_bytes": int(res.activation_bytes),
            "parameters": int(sum(p.numel() for p in res.model.parameters())),
            "window": list(res.window), "curve": curve, "pred": fit["pred"],
            "config": {"steps": steps, "overrides": overrides, "model": vars(cfg.model),
                       "data": vars(cfg.data), "change": vars(cfg.change)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["generated", "landsat"])
    ap.add_argument("--methods", default="linear,hyperbolic,unet")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--fraction", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="config override for both networks, e.g. model.h=1.0")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    args = ap.parse_args(argv)
    import torch

    case = load_case(args.mode, args.fraction, args.seed)
    out: dict = {"case": case["description"], "label_fraction": case["fraction"],
                 "train_pixels": int((case["train"] != IGNORE).sum()),
                 "scored_pixels": int((case["scored"] != IGNORE).sum()),
                 "shape": list(case["before"].shape), "torch_threads": torch.get_num_threads(),
                 "environment": environment(), "results": {}}
    preds = {}
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        r = run_linear(case) if method == "linear" else \
            run_net(case, method, args.steps, args.eval_every, args.overrides)
        preds[method] = r.pop("pred")
        out["results"][method] = r
        m = r["metrics"]
        print(f"{args.mode} {method:10s} mIoU {m['miou']:.4f} (pos {m['iou_positive']:.4f}, neg "
              f"{m['iou_negative']:.4f})  train {r['train_time_s']:.0f} s"
              + (f"  activations {r['activation_bytes'] / 2**20:.1f} MiB" if "activation_bytes" in r else "")
              + f"  [{time.perf_counter() - t0:.0f} s]", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"change_{args.mode}{args.tag}"
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(out, indent=2, default=str) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, r in out["results"].items():
        if r.get("curve"):
            ax.plot([c["time_s"] for c in r["curve"]], [c["miou"] for c in r["curve"]], "o-",
                    label=f"{method} ({r['activation_bytes'] / 2**20:.1f} MiB activations)")
        else:
            ax.axhline(r["metrics"]["miou"], ls="--", color="gray", label=f"{method}")
    ax.set_xlabel("training time (s, CPU)")
    ax.set_ylabel("held-out mIoU")
    ax.set_title(case["description"], fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(RESULTS / f"{stem}.png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    best = "hyperbolic" if "hyperbolic" in preds else next(iter(preds))
    m = out["results"][best]["metrics"]
    write_figure(RESULTS / f"{stem}_figure.png", case["before"], case["after"], case["labels"], preds[best],
                 case["scored"], f"{best}: mIoU {m['miou']:.3f} (positive {m['iou_positive']:.3f}, "
                 f"negative {m['iou_negative']:.3f}) on {out['scored_pixels']} held-out pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
