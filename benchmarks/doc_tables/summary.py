"""Tables across the applications: the README's headline and the complete runs of the shipped
configs (``benchmarks/speed.py``)."""

from __future__ import annotations

from pathlib import Path
from statistics import mean
from typing import Callable

from ._files import davis_glob, load, mib, need, ref_units
from .segment import DAVIS_SHIPPED
from .volume import volume_headline

_CASES = {"change": "`fhcnn change`, generated 96×96×32 scene",
          "landsat": "`fhcnn change`, Taizhou 400×400×6, 30 % of the reference labelled",
          "segment": "`fhcnn segment`, generated 48×96×160 video",
          "demo": "`fhcnn demo`, 32×64×96 video"}


def speed_configs(name: str) -> Callable[[Path], str]:
    """Complete runs of the shipped configs (``<name>.json``, ``benchmarks/speed.py run``):
    wall time in seconds and in reference units, held-out mIoU, and the machine."""
    def table(d: Path) -> str:
        runs = need(d, name)["results"]
        envs = [r["environment"] for r in runs if "environment" in r]
        out = ["| case | wall (s): train + predict |" + (" wall / reference |" if envs else "")
               + " held-out mIoU | steps, threads | load (start / end) |",
               "|---|---:|" + ("---:|" if envs else "") + "---:|---|---|"]
        for r in runs:
            split = (f"{r['train_s']:.0f} + {r['predict_s']:.0f}" if "predict_s" in r
                     else f"{r['train_s']:.0f} training")
            out.append(f"| {_CASES.get(r['case'], r['case'])} | **{r['wall_s']:.0f}**: {split} |"
                       + (f" {ref_units(r['wall_s'], r.get('environment'))} |" if envs else "")
                       + f" **{r['miou']:.3f}** | {r['steps']}, {r['threads']} | {r['load_before']} / {r['load_after']} |")
        if envs:
            refs = sorted(e["reference_s"] for e in envs)
            out.append(f"\nMeasured on {envs[0]['cpu_model']} ({envs[0]['cpu_count']} cores, torch "
                       f"{envs[0]['torch']}); the reference workload took {refs[0]:.3f}–{refs[-1]:.3f} s "
                       "just before the runs.")
        return "\n".join(out)
    return table


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
    hyp = davis_glob(d, DAVIS_SHIPPED)
    if hyp:
        m = mean(x["miou"] for x in hyp.values())
        c = mean(x["copy_nearest_miou"] for x in hyp.values())
        pix = load(d, "davis_pixelwise")
        forest = ("" if pix is None else ", random forest on each pixel's colour "
                  f"{mean(r['forest']['miou'] for r in pix['results'].values()):.3f}")
        first = next(iter(hyp.values()))
        out.append(f"| DAVIS 2016 video segmentation from 3 labelled frames, mean mIoU over "
                   f"{len(hyp)} sequences | **{m:.3f}** ({first['steps']} steps on {first['window'][0]}-frame windows) | "
                   f"copy the nearest labelled mask {c:.3f}{forest} |")
    vol = volume_headline(d)
    if vol is not None:
        out.append(f"| {vol[0]} | {vol[1]} |")
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
