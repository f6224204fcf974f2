"""Change detection from very few labels: fhcnn against two pixelwise baselines (``fhcnn change``).

    python benchmarks/sparse_labels.py baselines taizhou|generated [--densities ...] [--seeds ...]
    python benchmarks/sparse_labels.py run taizhou|generated --variant NAME [--set KEY=VALUE ...]
    python benchmarks/sparse_labels.py report

Scenes: ``taizhou`` (the Landsat pair, 400 x 400 x 6, partial reference: 13 % of the scene,
20 % of it changed; from ``../shared/data/landsat_cd_taizhou``) and ``generated``
(:func:`fhcnn.data.hyperspectral.make_bitemporal_scene`, 96 x 96 x 32, seed 0, full truth).
Training labels: ``density`` of the *scene's* pixels (0.5 %, 1 %, 2 %) drawn from the reference
by :func:`fhcnn.apps.change.sparse.sparse_labels`, ``random`` (stratified) or ``clustered``
(about 20 patches), seeds 0, 1, 2; every other reference pixel is scored (mIoU of changed and
unchanged).

Baselines (scikit-learn, same labels): a class-balanced logistic regression (``linear``) and a
random forest (``forest``: 300 trees, balanced subsamples) on each pixel's features
``[before, after, after - before, log ratio, spectral angle]`` (standardized bands; the
features fhcnn gets with ``change.channels=dates+diff+ratio+angle``), and the same two on the
standardized dates alone (``linear_dates``, ``forest_dates``: the "12 values of each pixel" of
a 6-band pair). Margins are taken over the best of the four on the same labels.

``run`` trains the ``change`` config with the variant's ``--set`` overrides (one torch
thread) on every (density, pattern, seed) and keeps each result in
``results/sparse_<scene>_<variant>.json`` (a rerun skips the runs already there; ``--part P``
writes ``sparse_<scene>_<variant>@P.json`` instead, and ``report`` merges the parts). ``report``
writes ``results/sparse_summary.json`` (mean, std, min, max over seeds, and the margin over the
better baseline on every seed) and ``results/sparse_<scene>.png``, and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from fhcnn.apps.change import ChangeConfig, build_volume, change_metrics, fit_change
from fhcnn.apps.change.sparse import sparse_labels
from fhcnn.atomic import atomic_path, atomic_write_text
from fhcnn.bench.reference import environment
from fhcnn.config import load_config
from fhcnn.data.hyperspectral import IGNORE, labels_from_masks, make_bitemporal_scene, read_cube

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _paths import DATA, RESULTS  # noqa: E402
from _pixelwise import baselines, stats  # noqa: E402

LANDSAT = DATA / "landsat_cd_taizhou" / "Taizhou"
SCENES = ("taizhou", "generated")
BASELINES = ["linear_dates", "forest_dates", "linear", "forest"]


def load_scene(scene: str) -> dict:
    if scene == "generated":
        s = make_bitemporal_scene(96, 96, 32, seed=0)
        return {"before": s.before, "after": s.after, "reference": s.change.astype(np.uint8),
                "description": "generated 96x96x32 (seed 0), full truth"}
    if not LANDSAT.is_dir():
        sys.exit(f"{LANDSAT} not found (the shared data folder is not present)")
    before, after = read_cube(LANDSAT / "2000TM.HDR"), read_cube(LANDSAT / "2003TM.HDR")
    ref = labels_from_masks(LANDSAT / "change.bmp", LANDSAT / "unchanged.bmp", before.shape[:2])
    return {"before": before, "after": after, "reference": ref,
            "description": "Taizhou Landsat 400x400x6, partial reference (13 % of the scene)"}


def key(density: float, pattern: str, seed: int) -> str:
    return f"{density:g}|{pattern}|{seed}"


def grid(args: argparse.Namespace) -> list[tuple[float, str, int]]:
    return [(float(d), p, int(s)) for d in args.densities.split(",") for p in args.patterns.split(",")
            for s in args.seeds.split(",")]


def short(m: dict) -> dict:
    return {k: m[k] for k in ("miou", "iou_positive", "iou_negative", "scored_pixels")}


def run_baselines(case: dict, train: np.ndarray, held: np.ndarray, seed: int) -> dict:
    tr = train.reshape(-1)
    keep = tr != IGNORE
    out = {}
    for feat_name, channels in (("", "dates+diff+ratio+angle"), ("_dates", "dates")):
        vol = build_volume(case["before"], case["after"], channels)        # (C, B, H, W)
        feats = vol.reshape(-1, vol.shape[2] * vol.shape[3]).T             # (H*W, C*B)
        for name, clf in baselines(seed):
            t0 = time.perf_counter()
            clf.fit(feats[keep], tr[keep])
            pred = clf.predict(feats).reshape(train.shape).astype(np.uint8)
            out[name + feat_name] = {**short(change_metrics(pred, held)),
                                     "time_s": round(time.perf_counter() - t0, 2)}
    return out


def run_fhcnn(case: dict, train: np.ndarray, held: np.ndarray, overrides: list[str]) -> dict:
    cfg = load_config(ChangeConfig, "change", overrides)
    lines: list[str] = []
    fit = fit_change(case["before"], case["after"], train, cfg, None, quiet=True, log=lines.append)
    return {**short(change_metrics(fit["pred"], held)), "train_time_s": round(fit["train_time_s"], 1),
            "predict_time_s": round(fit["predict_time_s"], 1), "steps": int(cfg.train.steps),
            "window": list(fit["result"].window), "derived": fit.get("derived"), "log": lines}


def cmd_run(args: argparse.Namespace, baselines_only: bool) -> None:
    import torch

    torch.set_num_threads(args.threads)
    case = load_scene(args.scene)
    name = "baselines" if baselines_only else args.variant
    path = RESULTS / f"sparse_{args.scene}_{name}{'@' + args.part if args.part else ''}.json"
    rec = json.loads(path.read_text()) if path.exists() else {"scene": args.scene, "variant": name, "runs": {}}
    rec["description"] = case["description"]
    if not baselines_only:
        overrides = list(args.overrides) + ([f"train.steps={args.steps}"] if args.steps else [])
        if rec.get("overrides", overrides) != overrides:
            sys.exit(f"{path} was made with overrides {rec['overrides']}, not {overrides}")
        rec["overrides"] = overrides
        rec["torch_threads"] = args.threads
    for density, pattern, seed in grid(args):
        k = key(density, pattern, seed)
        if k in rec["runs"]:
            continue
        train, held = sparse_labels(case["reference"], density, pattern, seed)  # type: ignore[arg-type]
        env = environment()  # the machine, its load and the reference workload, before the run
        t0 = time.perf_counter()
        r = (run_baselines(case, train, held, seed) if baselines_only
             else run_fhcnn(case, train, held, rec["overrides"]))
        r_common = {"train_pixels": int((train != IGNORE).sum()), "train_changed": int((train == 1).sum())}
        rec["runs"][k] = {**r, **r_common, "environment": env}
        summary = (" ".join(f"{m} {v['miou']:.4f}" for m, v in r.items()) if baselines_only
                   else f"miou {r['miou']:.4f} (pos {r['iou_positive']:.3f}) train {r['train_time_s']} s "
                        f"predict {r['predict_time_s']} s")
        print(f"{args.scene} {name} {k}: {summary} [{time.perf_counter() - t0:.0f} s]", flush=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(rec, indent=1) + "\n")


def cmd_report(args: argparse.Namespace) -> None:
    summary: dict = {}
    for scene in SCENES:
        base_path = RESULTS / f"sparse_{scene}_baselines.json"
        if not base_path.exists():
            continue
        base = json.loads(base_path.read_text())["runs"]
        variants = sorted(p for p in RESULTS.glob(f"sparse_{scene}_*.json") if p != base_path)
        table: dict = {}
        for vp in variants:
            rec = json.loads(vp.read_text())
            v = rec["variant"]
            for k, r in rec["runs"].items():
                if k not in base:
                    continue
                d, p, _ = k.split("|")
                cell = table.setdefault(f"{d}|{p}", {})
                b = base[k]
                best = max(b[m]["miou"] for m in BASELINES)
                cell.setdefault(v, []).append((r["miou"], r["miou"] - best, r.get("train_time_s"),
                                               r.get("predict_time_s")))
                for m in BASELINES:
                    cell.setdefault(f"_{m}", {})[k] = b[m]["miou"]
        out: dict = {}
        for cell_key, cell in sorted(table.items()):
            row: dict = {m: stats(list(cell["_" + m].values())) for m in BASELINES}
            for v, vals in cell.items():
                if v.startswith("_"):
                    continue
                row[v] = {**stats([x[0] for x in vals]), "margin_over_better_baseline": stats([x[1] for x in vals]),
                          "train_time_s": stats([x[2] for x in vals]),
                          "predict_time_s": stats([x[3] for x in vals])}
            out[cell_key] = row
        summary[scene] = out
        if not out:
            continue
        print(f"\n## {scene}\n")
        names = sorted({v for row in out.values() for v in row if v not in BASELINES})
        print("| density | pattern | " + " | ".join(BASELINES + names) + " |")
        print("|---|---|" + "---:|" * (len(BASELINES) + len(names)))
        for cell_key, row in out.items():
            d, p = cell_key.split("|")
            cells = [f"{row[m]['mean']:.3f} ± {row[m]['std']:.3f}" for m in BASELINES]
            for v in names:
                if v in row:
                    r = row[v]
                    cells.append(f"{r['mean']:.3f} ± {r['std']:.3f} ({r['margin_over_better_baseline']['mean']:+.3f},"
                                 f" min {r['margin_over_better_baseline']['min']:+.3f}, n={r['n']})")
                else:
                    cells.append("–")
            print(f"| {float(d):.1%} | {p} | " + " | ".join(cells) + " |")
        _plot(scene, out)
    atomic_write_text(RESULTS / "sparse_summary.json", json.dumps(summary, indent=1) + "\n")


def _plot(scene: str, out: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(out)
    methods = list(BASELINES) + sorted({v for row in out.values() for v in row} - set(BASELINES))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cells)), 4))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i, c in enumerate(cells) if m in out[c]]
        st = [out[c][m] for c in cells if m in out[c]]
        ax.bar(xs, [s["mean"] for s in st], width, label=m, color=plt.cm.tab20(j % 20),
               yerr=[[s["mean"] - s["min"] for s in st], [s["max"] - s["mean"] for s in st]], capsize=2)
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels([f"{float(c.split('|')[0]):.1%}\n{c.split('|')[1]}" for c in cells], fontsize=8)
    lo = min(out[c][m]["min"] for c in cells for m in out[c])
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set_ylabel("held-out mIoU (mean, min-max over seeds)")
    ax.set_title(f"sparse labels: {scene}", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    with atomic_path(RESULTS / f"sparse_{scene}.png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["run", "baselines", "report"])
    ap.add_argument("scene", nargs="?", choices=SCENES)
    ap.add_argument("--variant", default="default")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=0, help="train.steps (0: the config's)")
    ap.add_argument("--densities", default="0.005,0.01,0.02")
    ap.add_argument("--patterns", default="random,clustered")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--part", default="", help="write this part of the grid to its own file "
                    "(sparse_<scene>_<variant>@<part>.json), so several processes can share a grid")
    args = ap.parse_args(argv)
    if args.command == "report":
        cmd_report(args)
    else:
        if args.scene is None:
            ap.error("a scene is needed")
        cmd_run(args, baselines_only=args.command == "baselines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
