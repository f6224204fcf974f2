"""DAVIS 2016 from 3 labelled frames: two pixelwise baselines on the labels fhcnn gets.

    python benchmarks/davis_pixelwise.py [--sequences blackswan,dog] [--davis DIR] [--scale 0.2]

The inputs, labelled frames, resolution and score are those of the fhcnn DAVIS runs
(``benchmarks/segmentation_video.py davis``, ``results/davis_hyperbolic_<sequence>.json``):
the first 48 frames of each sequence, labels on frames 0, 23, 47, the frames resized by
``--scale`` (the engine's :class:`~fhcnn.engine.sizes.Geometry`: area averaging, labels by
majority vote), class probabilities resized back to full size and their argmax scored on every
other frame (:func:`fhcnn.apps.segment.score_held_out`, the same held-out mIoU).

Baselines (scikit-learn): each pixel's RGB, standardized over the video, classified by a
class-balanced logistic regression (``linear``) and a random forest (``forest``: ``--trees``
trees, balanced subsamples, ``n_jobs=1``) trained on the labelled frames' pixels (the forest
on a random ``--forest-pixels`` of them, for time). Writes ``results/davis_pixelwise.json``
(a rerun skips the sequences already there).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fhcnn.apps.segment import frames_to_volume, held_out_frames, score_held_out
from fhcnn.atomic import atomic_write_text
from fhcnn.bench.reference import environment
from fhcnn.engine import IGNORE
from fhcnn.engine.sizes import Geometry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pixelwise import baselines  # noqa: E402
from segmentation_video import DAVIS, RESULTS, davis_inputs  # noqa: E402

SEQUENCES = "blackswan,car-shadow,cows,dog,goat,horsejump-high,kite-surf,parkour"


def run_sequence(seq: str, root: Path, scale: float, trees: int, forest_pixels: int, seed: int) -> dict:
    inputs = davis_inputs(seq, root=root)
    t, h0, w0 = inputs.frames.shape[:3]
    k = len(inputs.classes)
    geom = Geometry.of((t, h0, w0), scale, 1)
    vol = geom.volume(frames_to_volume(inputs.frames))            # (3, T, h, w)
    lab = geom.labels(inputs.labels, k).reshape(-1)                # (T*h*w,)
    feats = vol.reshape(3, -1).T
    feats = (feats - feats.mean(0)) / np.maximum(feats.std(0), 1e-6)
    keep = np.flatnonzero(lab != IGNORE)
    rng = np.random.default_rng(seed)
    sub = rng.choice(keep, size=min(forest_pixels, keep.size), replace=False)
    held = held_out_frames(inputs)
    out: dict = {"name": seq, "frames": t, "label_frames": inputs.label_frames, "scored_frames": len(held),
                 "volume": [t, *geom.scaled], "train_pixels": int(keep.size), "environment": environment()}
    for (name, clf), idx in zip(baselines(seed, trees=trees, max_iter=2000), (keep, sub)):
        t0 = time.perf_counter()
        clf.fit(feats[idx], lab[idx])
        fit_s = time.perf_counter() - t0
        prob = np.zeros((k, feats.shape[0]), np.float32)
        prob[clf.classes_] = clf.predict_proba(feats).T
        full = geom.back(torch.from_numpy(prob.reshape(k, t, *geom.scaled)))   # (K, T, H, W)
        pred = full.argmax(0).numpy().astype(np.uint8)
        m = score_held_out(pred, inputs.eval_labels, held, k)
        out[name] = {"miou": m["miou"], "iou": m["iou"], "J": m.get("J"), "fit_pixels": int(idx.size),
                     "fit_s": round(fit_s, 2), "time_s": round(time.perf_counter() - t0, 2)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sequences", default=SEQUENCES)
    p.add_argument("--davis", type=Path, default=DAVIS, help="DAVIS root (holds JPEGImages/480p, Annotations/480p)")
    p.add_argument("--scale", type=float, default=0.2)
    p.add_argument("--trees", type=int, default=200)
    p.add_argument("--forest-pixels", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if not args.davis.is_dir():
        sys.exit(f"DAVIS data not found at {args.davis}")
    torch.set_num_threads(1)
    path = RESULTS / "davis_pixelwise.json"
    settings = {"scale": args.scale, "trees": args.trees, "forest_pixels": args.forest_pixels, "seed": args.seed}
    rec = json.loads(path.read_text()) if path.exists() else {"settings": settings, "results": {}}
    if rec["settings"] != settings:
        sys.exit(f"{path} was made with {rec['settings']}, not {settings}")
    for seq in args.sequences.split(","):
        if seq in rec["results"]:
            continue
        r = run_sequence(seq, args.davis, args.scale, args.trees, args.forest_pixels, args.seed)
        rec["results"][seq] = r
        print(f"{seq:16s} linear {r['linear']['miou']:.4f} ({r['linear']['time_s']:.0f} s)  "
              f"forest {r['forest']['miou']:.4f} ({r['forest']['time_s']:.0f} s)", flush=True)
        atomic_write_text(path, json.dumps(rec, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
