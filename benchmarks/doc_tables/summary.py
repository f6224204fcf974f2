"""Tables across the applications: the README's headline and the complete runs of the shipped
configs (``benchmarks/speed.py``)."""

from __future__ import annotations

from pathlib import Path
from statistics import mean

from ._files import DAVIS_SEQUENCES, davis_glob, davis_runs, load, mib, need
from .segment import DAVIS_SHIPPED

_SPEED_GOALS = {"segment": ("`fhcnn segment`, generated 48×96×160", "≤ 180 s at ≥ 0.98"),
                "change": ("`fhcnn change`, generated 96×96×32", "≤ 60 s at ≥ 0.928"),
                "landsat": ("`fhcnn change`, Taizhou 400×400×6 (30 %)", "≤ 60 s at ≥ 0.971"),
                "demo": ("`fhcnn demo`, 32×64×96", "≤ 60 s at ≥ 0.94")}


def speed_final(d: Path) -> str:
    """Complete runs of the shipped configs (``speed_final.json``) and the side-by-side sampled
    DAVIS projections (``speed_davis_sampled*.json``) of ``benchmarks/speed.py``."""
    out = ["| case | goal | wall (s): train + predict | held-out mIoU | steps, threads | load (start / end) |",
           "|---|---|---:|---:|---|---|"]
    for r in need(d, "speed_final")["results"]:
        name, goal = _SPEED_GOALS[r["case"]]
        split = (f"{r['train_s']:.0f} + {r['predict_s']:.0f}" if "predict_s" in r
                 else f"{r['train_s']:.0f} training")
        out.append(f"| {name} | {goal} | **{r['wall_s']:.0f}**: {split} | "
                   f"**{r['miou']:.3f}** | {r['steps']}, {r['threads']} | {r['load_before']} / {r['load_after']} |")
    # the settings "after" stood for when each file was measured (the shipped config of the day)
    shipped = {"speed_davis_sampled_d8": "shipped: 1000 steps on 8-frame windows",
               "speed_davis_sampled_450": "450 steps on 16-frame windows"}
    for tag in ("speed_davis_sampled_d8", "speed_davis_sampled_450", "speed_davis_sampled",
                "speed_davis_sampled_bf16"):
        sampled = load(d, tag)
        if sampled is None:
            continue
        rows = {(r["case"], r["variant"]): r for r in sampled["results"]}
        for case in dict.fromkeys(c for c, _ in rows):
            b, a = rows.get((case, "before")), rows.get((case, "after"))
            if b is None or a is None:
                continue
            steps = (", ".join(a.get("after_set") or []) + ", 16-frame windows") if a.get("after_set") else shipped[tag]
            out.append(f"| DAVIS {case.split(':', 1)[1]}, scale 0.2, projected from 20 steps (one thread) | "
                       f"≤ 40 % of before | before {b['projected_wall_s']:.0f}, after ({steps}) "
                       f"{a['projected_wall_s']:.0f}: **{a['projected_wall_s'] / b['projected_wall_s']:.0%}** | "
                       f"see the DAVIS table | {b['steps']} → {a['steps']}, 1 | {b['load_before']} / {a['load_after']} |")
    return "\n".join(out)


def headline(d: Path) -> str:
    out = ["| task | fhcnn | comparison |", "|---|---|---|"]
    mem = load(d, "memory")
    if mem is not None:
        rec = mem["sweeps"]["depth"]
        i = len(rec["x"]) - 1
        s = rec["saved"]
        sp = rec["specs"][i]
        out.append(f"| memory for backward, {rec['x'][i]} layers, {sp['dim']}D {sp['size']}² | **{mib(s['reversible'][i])} MiB** "
                   f"(constant in depth) | plain autograd {mib(s['plain'][i])} MiB, "
                   f"block-reversible {mib(s['block'][i])} MiB |")
    gpu = load(d, "gpu_h200")
    if gpu is not None:
        pv = gpu["paper_video_memory"]
        key = next((k.split(", ", 1)[1] for k in pv if "whole" in k), None)
        if key:
            p, v = pv[f"plain, {key}"], pv[f"reversible, {key}"]
            out.append(f"| the paper's video network, {key}, peak on {gpu['gpu']} | "
                       f"**{v['peak_bytes'] / 2**30:.2f} GiB** | plain autograd "
                       f"{p['peak_bytes'] / 2**30:.2f} GiB |")
    old, hyp = davis_runs(d, "davis_hyperbolic"), davis_glob(d, DAVIS_SHIPPED)
    if len(hyp) < len(DAVIS_SEQUENCES):
        old, hyp = {}, old
    if hyp:
        m = mean(x["miou"] for x in hyp.values())
        c = mean(x["copy_nearest_miou"] for x in hyp.values())
        pix = load(d, "davis_pixelwise")
        forest = ("" if pix is None else ", random forest on each pixel's colour "
                  f"{mean(r['forest']['miou'] for r in pix['results'].values()):.3f}")
        first = next(iter(hyp.values()))
        before = ("" if len(old) < len(DAVIS_SEQUENCES) else
                  f", the previous schedule {mean(x['miou'] for x in old.values()):.3f} "
                  f"({next(iter(old.values()))['steps']} steps on {next(iter(old.values()))['window'][0]}-frame windows)")
        out.append(f"| DAVIS 2016 video segmentation from 3 labelled frames, mean mIoU over "
                   f"{len(hyp)} sequences | **{m:.3f}** ({first['steps']} steps on {first['window'][0]}-frame windows) | "
                   f"copy the nearest labelled mask {c:.3f}{forest}{before} |")
    for scene, label in (("generated", "generated 32-band scene"), ("landsat", "Landsat, Taizhou")):
        cur, base = load(d, f"change_{scene}"), load(d, f"change_{scene}_baselines")
        if cur is None or base is None:
            continue
        res = base["results"]
        others = [f"{n} {res[k]['metrics']['miou']:.3f}"
                  + (f" ({res[k]['config']['steps']} steps)" if k == "unet" else "") for k, n in
                  (("linear", "logistic regression"), ("unet", "3D U-Net")) if k in res]
        x = cur["results"]["hyperbolic"]
        out.append(f"| change detection, {label}, held-out mIoU | **{x['metrics']['miou']:.3f}** "
                   f"({x['config']['steps']} steps) | {', '.join(others)} |")
    sparse = load(d, "sparse_summary")
    cell = None if sparse is None else sparse.get("taizhou", {}).get("0.01|random", {})
    if cell and "features+head_300" in cell:
        f = cell["features+head_300"]
        best = max(cell[b]["mean"] for b in ("linear", "forest", "linear_dates", "forest_dates"))
        out.append(f"| change detection, Taizhou, 1 % of the pixels labelled (3 seeds), held-out mIoU | "
                   f"**{f['mean']:.3f}** | best of 4 pixelwise baselines {best:.3f} |")
    vae = load(d, "vae_digits")
    if vae is not None:
        h, c = vae["hyperbolic"], vae["conv_vae"]
        out.append(f"| VAE on 8×8 digits: latent dimension found, energy distance to the prior | "
                   f"**{h['latent_dim']}** of {h['full_dim']}, **{h['energy_distance_after']:.4f}** | "
                   f"conventional VAE: {c['latent_dim']} (set), {c['energy_distance_after']:.4f} |")
    return "\n".join(out)
