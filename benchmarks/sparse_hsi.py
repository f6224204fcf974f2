"""Hyperspectral scenes from a few labelled pixels per class: fhcnn against two pixelwise baselines.

    python benchmarks/sparse_hsi.py run samson|jasper [--data DIR] [--n 5,10,20] [--seeds 0,1,2]
                                       [--steps N] [--bands B] [--no-band-index] [--set KEY=VALUE ...]
                                       [--tag NAME]
    python benchmarks/sparse_hsi.py report

Scenes (the unmixing benchmarks of F. Zhu, read from ``--data``, default
``../shared/data/hsi_unmixing_samson_jasper``): ``samson`` (``Samson.mat``, 95 x 95 x 156,
3 classes rock / tree / water) and ``jasper`` (``JasperRidge2_R198.mat``, 100 x 100 x 198,
4 classes tree / water / dirt / road). The class of a pixel is the argmax of its ground-truth
abundances (``_End*.mat``, ``A``; pixels in MATLAB column order, as the cube).
Training labels: ``n`` pixels of every class drawn at random
(:func:`fhcnn.apps.change.sparse.per_class_labels`), seeds 0, 1, 2; every other pixel is
scored (held-out mIoU over the classes, :func:`fhcnn.engine.segmentation_metrics`).

Baselines (scikit-learn, same labels, on each pixel's spectrum with every band standardized
over the scene): a class-balanced logistic regression (``linear``) and a random forest
(``forest``: 300 trees, balanced subsamples, ``n_jobs=1``).

fhcnn: the ``change`` config's model, data and training sections (``--set`` overrides) on the
cube as one volume ``(channels, bands, H, W)`` (bands standardized, then averaged down to ``--bands``
adjacent-band means for time; a second channel holds each band's position unless
``--no-band-index``: convolutions along the bands are otherwise blind to where they are),
labels as one ``(H, W)`` map for the band-mean of the logits (:func:`fhcnn.engine.maps.fit_map`,
the engine's ``data.reduce_depth`` path, as ``fhcnn change`` with ``change.target=mean``), one torch thread.

``run`` keeps every (n, seed) in ``results/sparse_<scene>.json`` (``sparse_<scene>_<tag>.json``
with ``--tag``, for a variant of the fhcnn settings; a rerun skips the runs already there and
refuses a file made with other fhcnn settings). ``report`` writes
``results/sparse_hsi_summary.json`` (mean, std, min, max over seeds; fhcnn's margin over the
better baseline on every seed) and ``results/sparse_hsi.png``, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from fhcnn.apps.change import ChangeConfig
from fhcnn.apps.change.sparse import per_class_labels
from fhcnn.atomic import atomic_path, atomic_write_text
from fhcnn.bench.reference import environment
from fhcnn.config import load_config
from fhcnn.data.hyperspectral import IGNORE, read_cube
from fhcnn.engine import SegmentConfig, segmentation_metrics
from fhcnn.engine.maps import cube_volume, fit_map

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _paths import DATA, RESULTS  # noqa: E402
from _pixelwise import baselines, stats  # noqa: E402

HSI = DATA / "hsi_unmixing_samson_jasper"
SCENES = {"samson": ("Samson.mat", "_EndSamson.mat", ["rock", "tree", "water"]),
          "jasper": ("JasperRidge2_R198.mat", "_EndJasperRidge2_R198.mat", ["tree", "water", "dirt", "road"])}
BASELINES = ["linear", "forest"]


def load_scene(scene: str, data: Path) -> dict:
    import scipy.io

    cube_file, truth_file, names = SCENES[scene]
    if not (data / cube_file).is_file():
        sys.exit(f"{data / cube_file} not found (give the folder with --data)")
    cube = read_cube(data / cube_file, key="Y")                      # (H, W, B)
    h, w, b = cube.shape
    abund = np.asarray(scipy.io.loadmat(data / truth_file)["A"], np.float64)  # (K, H*W)
    ref = abund.argmax(0).reshape(h, w, order="F").astype(np.uint8)
    return {"cube": cube, "reference": ref, "classes": names,
            "description": f"{cube_file} {h}x{w}x{b}, {len(names)} classes ({', '.join(names)}), "
                           f"class = argmax of the abundances in {truth_file}"}


def scores(pred: np.ndarray, held: np.ndarray, k: int) -> dict:
    m = segmentation_metrics(pred[None], held[None], k, per_frame=False)
    return {"miou": m["miou"], "iou": m["iou"], "accuracy": m["accuracy"], "scored_pixels": int(m["scored_voxels"])}


def run_baselines(cube: np.ndarray, train: np.ndarray, held: np.ndarray, k: int, seed: int) -> dict:
    feats = cube_volume(cube)[0].reshape(cube.shape[2], -1).T         # (H*W, B), standardized
    tr = train.reshape(-1)
    keep = tr != IGNORE
    out = {}
    for name, clf in baselines(seed, max_iter=5000):
        t0 = time.perf_counter()
        clf.fit(feats[keep], tr[keep])
        pred = clf.predict(feats).reshape(train.shape).astype(np.uint8)
        out[name] = {**scores(pred, held, k), "time_s": round(time.perf_counter() - t0, 2)}
    return out


def run_fhcnn(cube: np.ndarray, train: np.ndarray, held: np.ndarray, k: int, overrides: list[str],
              bands: int, band_index: bool = False) -> dict:
    cc = load_config(ChangeConfig, "change", overrides)
    cfg = SegmentConfig(model=cc.model, data=cc.data, train=cc.train, parallel=cc.parallel)
    fit = fit_map(cube_volume(cube, bands=bands, band_index=band_index), train, cfg, num_classes=k)
    return {**scores(fit.pred, held, k), "train_time_s": round(fit.train_time_s, 1),
            "predict_time_s": round(fit.predict_time_s, 1), "steps": int(cfg.train.steps),
            "window": list(fit.result.window)}


def cmd_run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    case = load_scene(args.scene, args.data)
    k = len(case["classes"])
    path = RESULTS / f"sparse_{args.scene}{'_' + args.tag if args.tag else ''}.json"
    overrides = list(args.overrides) + [f"train.steps={args.steps}"]
    fh = {"config": "change", "overrides": overrides, "bands": args.bands, "band_index": not args.no_band_index,
          "torch_threads": 1}
    rec = json.loads(path.read_text()) if path.exists() else {"scene": args.scene, "runs": {}}
    if rec.get("fhcnn", fh) != fh:
        sys.exit(f"{path} was made with fhcnn settings {rec['fhcnn']}, not {fh}")
    rec.update(description=case["description"], classes=case["classes"], fhcnn=fh,
               class_counts=np.bincount(case["reference"].reshape(-1), minlength=k).tolist())
    for n in (int(v) for v in args.n.split(",")):
        for seed in (int(v) for v in args.seeds.split(",")):
            key = f"{n}|{seed}"
            if key in rec["runs"]:
                continue
            train, held = per_class_labels(case["reference"], n, seed)
            env = environment()  # the machine, its load and the reference workload, before the run
            r = run_baselines(case["cube"], train, held, k, seed)
            r["fhcnn"] = run_fhcnn(case["cube"], train, held, k, overrides, args.bands, fh["band_index"])
            r["train_pixels"] = int((train != IGNORE).sum())
            rec["runs"][key] = r
            print(f"{args.scene} n={n} seed {seed}: " + " ".join(
                f"{m} {v['miou']:.4f}" for m, v in r.items() if isinstance(v, dict))
                + f" (fhcnn train {r['fhcnn']['train_time_s']} s, predict {r['fhcnn']['predict_time_s']} s)",
                flush=True)
            r["environment"] = env
            RESULTS.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(rec, indent=1) + "\n")



def summarize(rec: dict) -> dict:
    """``{n: {method: stats}}`` over the seeds; fhcnn also with its margin over the better
    baseline (per seed) and its times."""
    by_n: dict[int, list[dict]] = {}
    for key, r in rec["runs"].items():
        by_n.setdefault(int(key.split("|")[0]), []).append(r)
    out: dict = {}
    for n, runs in sorted(by_n.items()):
        row: dict = {m: stats([r[m]["miou"] for r in runs]) for m in BASELINES}
        fh = [r for r in runs if "fhcnn" in r]
        if fh:
            row["fhcnn"] = {**stats([r["fhcnn"]["miou"] for r in fh]),
                            "margin_over_better_baseline": stats(
                                [r["fhcnn"]["miou"] - max(r[m]["miou"] for m in BASELINES) for r in fh]),
                            "train_time_s": stats([r["fhcnn"]["train_time_s"] for r in fh]),
                            "predict_time_s": stats([r["fhcnn"]["predict_time_s"] for r in fh])}
        out[str(n)] = row
    return out


def cmd_report(args: argparse.Namespace) -> None:
    summary: dict = {}
    paths = [p for scene in SCENES for p in [RESULTS / f"sparse_{scene}.json",
                                             *sorted(RESULTS.glob(f"sparse_{scene}_*.json"))]]
    for path in paths:
        if not path.exists():
            continue
        rec = json.loads(path.read_text())
        scene = path.stem[len("sparse_"):]
        summary[scene] = {"description": rec["description"], "fhcnn": rec["fhcnn"], "by_n": summarize(rec)}
        print(f"\n## {scene}: {rec['description']}\n")
        print("| labels per class | " + " | ".join(BASELINES) + " | fhcnn (margin: mean / worst seed) |")
        print("|---|---:|---:|---:|")
        for n, row in summary[scene]["by_n"].items():
            cells = [f"{row[m]['mean']:.3f} ± {row[m]['std']:.3f}" for m in BASELINES]
            f = row.get("fhcnn")
            cells.append("–" if f is None else f"{f['mean']:.3f} ± {f['std']:.3f} "
                         f"({f['margin_over_better_baseline']['mean']:+.3f} / "
                         f"{f['margin_over_better_baseline']['min']:+.3f})")
            print(f"| {n} | " + " | ".join(cells) + " |")
    if not summary:
        sys.exit(f"no {RESULTS}/sparse_<scene>.json for {', '.join(SCENES)}")
    atomic_write_text(RESULTS / "sparse_hsi_summary.json", json.dumps(summary, indent=1) + "\n")
    _plot(summary)


def _steps(s: dict) -> str:
    return next((o.split("=", 1)[1] for o in s["fhcnn"]["overrides"][::-1] if o.startswith("train.steps=")),
                "config")


def _plot(summary: dict) -> None:
    """One panel per scene: the two baselines and every fhcnn variant (mean, min-max over seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenes = [sc for sc in SCENES if any(k.split("_")[0] == sc for k in summary)]
    fig, axes = plt.subplots(1, len(scenes), figsize=(5.5 * len(scenes), 3.8), squeeze=False)
    for ax, scene in zip(axes[0], scenes):
        variants = [(k, s) for k, s in summary.items() if k.split("_")[0] == scene]
        lines = [(m, variants[0][1], m) for m in BASELINES]
        lines += [(f"fhcnn, {_steps(s)} steps" + (f" ({k.split('_', 1)[1]})" if "_" in k else ""), s, "fhcnn")
                  for k, s in variants]
        for j, (label, s, m) in enumerate(lines):
            ns = [n for n in s["by_n"] if m in s["by_n"][n]]
            st = [s["by_n"][n][m] for n in ns]
            ax.errorbar([int(n) for n in ns], [x["mean"] for x in st],
                        yerr=[[x["mean"] - x["min"] for x in st], [x["max"] - x["mean"] for x in st]],
                        marker="o", capsize=3, label=label, color=f"C{j}")
        ns = list(variants[0][1]["by_n"])
        ax.set_xscale("log", base=2)
        ax.set_xticks([int(n) for n in ns], ns)
        ax.set_xlabel("labelled pixels per class")
        ax.set_ylabel("held-out mIoU (mean, min-max over seeds)")
        ax.set_title(variants[0][1]["description"].split(",")[0], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(RESULTS / "sparse_hsi.png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["run", "report"])
    ap.add_argument("scene", nargs="?", choices=list(SCENES))
    ap.add_argument("--data", type=Path, default=HSI, help="folder with the .mat files")
    ap.add_argument("--n", default="5,10,20", help="labelled pixels per class")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=150, help="fhcnn training steps")
    ap.add_argument("--bands", type=int, default=32, help="fhcnn: adjacent-band means (0: every band)")
    ap.add_argument("--no-band-index", action="store_true", help="fhcnn: no band-position channel")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--tag", default="", help="a variant: results/sparse_<scene>_<tag>.json")
    args = ap.parse_args(argv)
    if args.command == "report":
        cmd_report(args)
    else:
        if args.scene is None:
            ap.error("a scene is needed")
        cmd_run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
