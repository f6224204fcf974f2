"""Markdown tables from the result JSON files, and the docs that show them.

Every results table in ``README.md`` and ``docs/*.md`` sits between two markers::

    <!-- table:NAME -->
    ...generated, do not edit...
    <!-- /table:NAME -->

and is generated from the JSON files in ``benchmarks/results/`` by the function registered
under ``NAME`` in :data:`TABLES`. Regenerate them all after a benchmark run with::

    python -m fhcnn.bench.report benchmarks/results --docs README.md docs

``--check`` only reports (exit code 1) which files are out of date; without ``--docs`` the
benchmark tables (memory, table1, peers, time, drift) are printed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from statistics import mean
from typing import Any, Callable

__all__ = ["TABLES", "markdown", "render", "replace_tables", "update_docs"]

DAVIS_SEQUENCES = ("blackswan", "car-shadow", "cows", "dog", "goat", "horsejump-high",
                   "kite-surf", "parkour")


def _load(d: Path, name: str) -> dict[str, Any] | None:
    p = d / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _need(d: Path, name: str) -> dict[str, Any]:
    r = _load(d, name)
    if r is None:
        raise FileNotFoundError(f"{d / (name + '.json')} is missing")
    return r


def _mib(b: float | None) -> str:
    return "–" if b is None else f"{b / 2**20:.1f}"


def _f3(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _memory(r: dict[str, Any]) -> list[str]:
    out = []
    for name, rec in r["sweeps"].items():
        act = rec.get("peak_minus_param_grads", rec["peak"])
        out += [f"*{name} sweep* — MiB: saved for backward / measured peak / peak − parameter "
                "gradients", "",
                f"| {rec['x_name']} | plain | block | reversible | param. grads | "
                "plain / rev. (saved) | plain / rev. (peak − grads) | block / rev. (peak − grads) |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for i, x in enumerate(rec["x"]):
            cells = []
            for m in ("plain", "block", "reversible"):
                cells.append(f"{_mib(rec['saved'][m][i])} / {_mib(rec['peak'][m][i])} / "
                             f"{_mib(act[m][i])}")
            pb = rec.get("param_bytes", [None] * len(rec["x"]))[i]
            sr = rec["saved"]["plain"][i] / rec["saved"]["reversible"][i]
            pr, br, rr = (act[m][i] for m in ("plain", "block", "reversible"))
            ratio = f"{pr / rr:.1f} | {br / rr:.1f}" if pr and rr and br else "– | –"
            out.append(f"| {x} | " + " | ".join(cells) + f" | {_mib(pb)} | {sr:.0f} | {ratio} |")
        out.append("")
    return out


def _time(r: dict[str, Any]) -> list[str]:
    out = ["| layers | stages | plain (s) | block / plain | reversible / plain |",
           "|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        out.append(f"| {row['depth']} | {row['spec'].get('stages', 0)} | {row['median']['plain']:.3f} | "
                   f"{row['ratio']['block']:.2f} | {row['ratio']['reversible']:.2f} |")
    return out + [""]


def _peers(r: dict[str, Any]) -> list[str]:
    rows = r["rows"]
    state = r["state_bytes"]
    out = ["| method | peak MiB | peak − param. grads MiB | peak / fhcnn | step s | time / fhcnn | time / plain |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for m in r["methods"]:
        x = rows[m]
        best = " (best k)" if m == r.get("best_checkpoint") else ""
        out.append(f"| {m}{best} | {_mib(x.get('peak'))} | {_mib(x.get('peak_minus_param_grads'))} | "
                   f"{x.get('peak_vs_reversible', float('nan')):.2f} | "
                   f"{x['median_s']:.3f} | {x['time_vs_reversible']:.2f} | {x['time_vs_plain']:.2f} |")
    out.append(f"\nOne state = {state / 2**20:.2f} MiB.")
    return out + [""]


def _table1(r: dict[str, Any]) -> list[str]:
    out = ["| network | paper: reversible / non-reversible (MB) | fhcnn exact, saved: reversible / block / plain (MB) | in states: paper | fhcnn |",
           "|---|---:|---:|---:|---:|"]
    for name, row in r["rows"].items():
        p = row["paper_MB"]
        e = {m: row[m]["exact_saved_MB"] for m in ("reversible", "block", "plain")}
        s = {m: row[m]["exact_saved_states"] for m in ("reversible", "block", "plain")}
        ps = row["paper_in_states"]
        out.append(f"| {name} | {p['reversible']} / {p['plain']} | {e['reversible']:.0f} / {e['block']:.0f} / "
                   f"{e['plain']:.0f} | {ps['reversible']:.2f} / {ps['plain']:.2f} | "
                   f"{s['reversible']:.0f} / {s['block']:.0f} / {s['plain']:.2f} |")
    return out + [""]


def _drift(r: dict[str, Any]) -> list[str]:
    fa = r["first_depth_above_threshold"]
    from .drift import usable_depth

    out = ["| h | depth L where fp32 inverse error passes 1e-4 | fp32 inverse error at max depth | "
           "fp64 inverse error at max depth | fp32 gradient error > 1e-4 from: reversible / plain |",
           "|---:|---:|---:|---:|---:|"]
    for h in r["hs"]:
        e32 = r["inverse"]["float32"][str(h)]["error"][-1]
        e64 = r["inverse"]["float64"][str(h)]["error"][-1]
        d = fa["inverse_float32"][str(h)]
        depths = r["inverse"]["float32"][str(h)]["depth"]
        where = "never"
        if d is not None:
            i = depths.index(d)
            where = f"{depths[i - 1]} < L ≤ {d}" if i > 0 else f"≤ {d}"
        g = r["gradient"][str(h)]
        gr = usable_depth(g["depth"], g["reversible_fp32"])
        gp = usable_depth(g["depth"], g["plain_fp32"])
        out.append(f"| {h:g} | {where} | {e32:.1e} | {e64:.1e} | "
                   f"{gr if gr is not None else 'never'} / {gp if gp is not None else 'never'} |")
    return out + [""]


_BENCH = (("memory", _memory), ("table1", _table1), ("peers", _peers), ("time", _time),
          ("drift", _drift))


def markdown(d: str | Path) -> str:
    """The benchmark tables (memory, table1, peers, time, drift) for whatever ``d`` holds."""
    d = Path(d)
    parts: list[str] = []
    for name, fn in _BENCH:
        r = _load(d, name)
        if r is not None:
            parts += [f"### {name}", ""] + fn(r)
    return "\n".join(parts)


# --- tables for the docs: each takes the results folder and returns markdown ---------------

def _bench_table(name: str, fn: Callable[[dict[str, Any]], list[str]]) -> Callable[[Path], str]:
    return lambda d: "\n".join(fn(_need(d, name))).rstrip("\n")


def _memory_headline(d: Path) -> str:
    rec = _need(d, "memory")["sweeps"]["depth"]
    i = len(rec["x"]) - 1
    act = rec.get("peak_minus_param_grads", rec["peak"])
    s_p, s_r = rec["saved"]["plain"][i], rec["saved"]["reversible"][i]
    return (f"At {rec['x'][i]} layers ({_spec(rec['specs'][i])}) one training step keeps **{_mib(s_r)} MiB** for the backward pass, fully reversible, "
            f"against {_mib(s_p)} MiB with plain autograd ({s_p / s_r:.0f}× less); the measured "
            f"step peak without parameter gradients is {_mib(act['reversible'][i])} against "
            f"{_mib(act['plain'][i])} MiB."
            + (f" The fully reversible bytes are the same from {rec['x'][0]} to {rec['x'][i]} layers."
               if len(set(rec["saved"]["reversible"])) == 1 else ""))


def _spec(sp: dict[str, Any]) -> str:
    size = "×".join([str(sp["size"])] * sp["dim"])
    return (f"{sp['dim']}D, {sp['channels']} channels, {size}, {sp['stages']} coarsenings and "
            f"{sp['stages']} refinements")


def _davis_runs(d: Path, prefix: str) -> dict[str, dict[str, Any]]:
    out = {}
    for seq in DAVIS_SEQUENCES:
        r = _load(d, f"{prefix}_{seq}")
        if r is not None:
            out[seq] = r["results"][0]
    return out


def _miou_j(x: dict[str, Any] | None) -> str:
    return "–" if x is None else f"{x['miou']:.3f} / {x['J']:.3f}"


def _mean_row(runs: dict[str, dict[str, Any]], n: int) -> str:
    if not runs:
        return "–"
    m = f"{mean(x['miou'] for x in runs.values()):.3f}"
    return m if len(runs) == n else f"{m} ({len(runs)} seq.)"


def _davis(d: Path) -> str:
    hyp = _davis_runs(d, "davis_hyperbolic")
    if not hyp:
        raise FileNotFoundError(f"{d}/davis_hyperbolic_<sequence>.json: none found")
    unet = _davis_runs(d, "davis_unet")
    unet1 = _davis_runs(d, "davis_unet_dice_balance1")
    pix = (_load(d, "davis_pixelwise") or {}).get("results", {})
    out = ["| sequence | frames (labelled) | copy nearest mask: mIoU / J | pixel RGB, linear: mIoU / J | "
           "pixel RGB, forest: mIoU / J | **fhcnn**: mIoU / J | fhcnn − better pixelwise (mIoU) | "
           "fg precision / recall | train + predict (s) | 3D U-Net, same loss: mIoU / J | "
           "3D U-Net, Dice + `count^-1` weights: mIoU / J |",
           "|---|---|---|---|---|---|---:|---|---|---|---|"]
    margins = []
    for seq, x in hyp.items():
        frames = f"{x['frames']} ({', '.join(map(str, x['label_frames']))})"
        p = pix.get(seq)
        margin = "–"
        if p is not None:
            margins.append(x["miou"] - max(p["linear"]["miou"], p["forest"]["miou"]))
            margin = f"{margins[-1]:+.3f}"
        out.append(f"| {seq} | {frames} | {x['copy_nearest_miou']:.3f} / {x['copy_nearest_J']:.3f} | "
                   f"{_miou_j(p and p['linear'])} | {_miou_j(p and p['forest'])} | "
                   f"**{x['miou']:.3f} / {x['J']:.3f}** | {margin} | {x['fg_precision']:.2f} / "
                   f"{x['fg_recall']:.2f} | {x['train_time_s']:.0f} + {x['predict_time_s']:.0f} | "
                   f"{_miou_j(unet.get(seq))} | {_miou_j(unet1.get(seq))} |")
    copy = mean(x["copy_nearest_miou"] for x in hyp.values())
    lin = {s: p["linear"] for s, p in pix.items() if s in hyp}
    forest = {s: p["forest"] for s, p in pix.items() if s in hyp}
    worst = f"{mean(margins):+.3f} (worst {min(margins):+.3f})" if margins else "–"
    out.append(f"| **mean mIoU** | | {copy:.3f} | {_mean_row(lin, len(hyp))} | {_mean_row(forest, len(hyp))} | "
               f"**{_mean_row(hyp, len(hyp))}** | {worst} | | | "
               f"{_mean_row(unet, len(hyp))} | {_mean_row(unet1, len(hyp))} |")
    x = next(iter(hyp.values()))
    a = x["activation_bytes"]
    u = next(iter((unet or unet1).values()), None)
    line = (f"\nActivation memory of one training step (batch of {x['batch']} windows of "
            f"{'×'.join(map(str, x['window']))}): fhcnn {_mib(a['reversible'])} MiB fully "
            f"reversible ({_mib(a['block'])} block-reversible, {_mib(a['plain'])} plain autograd)")
    if u is not None:
        line += f", 3D U-Net {_mib(u['activation_bytes']['plain'])} MiB"
    out.append(line + ".")
    return "\n".join(out)


#: the shipped ``video`` config on the 8 DAVIS sequences (one file per sequence)
_DAVIS_SHIPPED = "seg_video_davis_d8p8s1000_*.json"

#: (key, result files, column title) of the DAVIS speed table
_DAVIS_SPEED_COLUMNS = (("shipped", _DAVIS_SHIPPED, "**shipped**: 1000 one-cycle steps on 8-frame windows"),
                        ("shipped_seed1", "seg_video_davis_d8p8s1000seed1_*.json", "shipped, `train.seed=1`"),
                        ("d8_predict16", "seg_video_davis_d8s1000_*.json",
                         "the same, predicted on 16-frame windows"),
                        ("450", "seg_video_davis_450.json", "450 one-cycle steps, 2 shifts"),
                        ("450_teacher", "seg_video_davis_450_teacher_*.json",
                         "450 steps + mean teacher (`data.unlabelled=teacher`)"),
                        ("520_onecycle", "seg_video_davis_520_onecycle.json", "520 one-cycle steps"),
                        ("520_cosine", "seg_video_davis_520_cosine.json", "520 cosine steps at lr 2e-3"),
                        ("700", "seg_video_davis_700.json", "700 one-cycle steps, 2 shifts"),
                        ("800_bf16", "seg_video_davis_800_bf16_*.json", "800 one-cycle steps, bf16 autocast"))


def _davis_glob(d: Path, pattern: str) -> dict[str, dict[str, Any]]:
    """The DAVIS results of the files matching ``pattern``, by sequence."""
    runs: dict[str, dict[str, Any]] = {}
    for path in sorted(d.glob(pattern)):
        runs.update({r["name"]: r for r in json.loads(path.read_text())["results"]})
    return runs


def _davis_speed(d: Path) -> str:
    """DAVIS with the previous ``video`` schedule (``davis_hyperbolic_<seq>.json``) against the
    current one (the files of ``_DAVIS_SPEED_COLUMNS``): held-out mIoU and wall time per
    sequence, one torch thread each."""
    old = _davis_runs(d, "davis_hyperbolic")
    runs = {key: _davis_glob(d, pattern) for key, pattern, _ in _DAVIS_SPEED_COLUMNS}
    out = ["| sequence | before: 1000 cosine steps, 4 shifts: mIoU, wall (s) | "
           + " | ".join(f"{title}: mIoU, wall (s)" for _, _, title in _DAVIS_SPEED_COLUMNS) + " |",
           "|---|---:|" + "---:|" * len(_DAVIS_SPEED_COLUMNS)]

    def cell(r: dict[str, Any] | None, base: dict[str, Any] | None) -> str:
        if r is None:
            return "–"
        ratio = f" ({r['wall_s'] / base['wall_s']:.0%})" if base else ""
        return f"{r['miou']:.3f}, {r['wall_s']:.0f}{ratio}"

    for seq in DAVIS_SEQUENCES:
        base = old.get(seq)
        out.append(f"| {seq} | {cell(base, None)} | "
                   + " | ".join(cell(runs.get(k, {}).get(seq), base) for k, _, _ in _DAVIS_SPEED_COLUMNS) + " |")
    means = [_mean_row(old, len(DAVIS_SEQUENCES))] + [
        _mean_row(runs.get(k, {}), len(DAVIS_SEQUENCES)) for k, _, _ in _DAVIS_SPEED_COLUMNS]
    out.append("| **mean mIoU** | " + " | ".join(means) + " |")
    return "\n".join(out)


_SPEED_GOALS = {"segment": ("`fhcnn segment`, generated 48×96×160", "≤ 180 s at ≥ 0.98"),
                "change": ("`fhcnn change`, generated 96×96×32", "≤ 60 s at ≥ 0.928"),
                "landsat": ("`fhcnn change`, Taizhou 400×400×6 (30 %)", "≤ 60 s at ≥ 0.971"),
                "demo": ("`fhcnn demo`, 32×64×96", "≤ 60 s at ≥ 0.94")}


def _speed_final(d: Path) -> str:
    """Complete runs of the shipped configs (``speed_final.json``) and the side-by-side sampled
    DAVIS projections (``speed_davis_sampled*.json``) of ``benchmarks/speed.py``."""
    out = ["| case | goal | wall (s): train + predict | held-out mIoU | steps, threads | load (start / end) |",
           "|---|---|---:|---:|---|---|"]
    for r in _need(d, "speed_final")["results"]:
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
        sampled = _load(d, tag)
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


def _davis_loss(d: Path) -> str:
    ce = {x["name"]: x for x in _need(d, "davis_hyperbolic_crossentropy")["results"]}
    dice = _davis_runs(d, "davis_hyperbolic_dice_balance1")
    default = _davis_runs(d, "davis_hyperbolic")
    out = ["| sequence | cross entropy, `count^-1` weights | + Dice | + Dice, `count^-0.5` weights (default) |",
           "|---|---:|---:|---:|"]
    seqs = [s for s in DAVIS_SEQUENCES if s in ce or s in dice or s in default]
    for s in seqs:
        out.append(f"| {s} | {_f3(ce.get(s, {}).get('miou'))} | {_f3(dice.get(s, {}).get('miou'))} | "
                   f"**{_f3(default.get(s, {}).get('miou'))}** |")
    out.append(f"| **mean** | {_mean_row(ce, len(seqs))} | {_mean_row(dice, len(seqs))} | "
               f"**{_mean_row(default, len(seqs))}** |")
    return "\n".join(out)


def _segment_generated(d: Path) -> str:
    r = _need(d, "segment_generated")
    out = ["| network | held-out mIoU | per-class IoU | steps | train time (s) | activation memory / step |",
           "|---|---:|---|---:|---:|---|"]
    first = r["results"][0]
    out.append(f"| copy the nearest labelled mask | {first['copy_nearest_miou']:.3f} | | | | |")
    for x in r["results"]:
        a = x["activation_bytes"]
        if x["arch"] == "hyperbolic":
            name = "**fhcnn** (fully reversible)"
            mem = (f"**{_mib(a['reversible'])} MiB** (block-reversible {_mib(a['block'])}, "
                   f"plain autograd {_mib(a['plain'])})")
        else:
            name = "3D U-Net" if x["arch"] == "unet" else x["arch"]
            mem = f"{_mib(a['plain'])} MiB"
        iou = " / ".join(f"{v:.3f}" for v in x["iou"])
        out.append(f"| {name} | {x['miou']:.3f} | {iou} | {x['steps']} | {x['train_time_s']:.0f} | {mem} |")
    return "\n".join(out)


def _loss_name(cfg: dict[str, Any]) -> str:
    data = cfg.get("data") or {}
    b = data.get("balance", 1.0)
    s = "cross entropy" + ("" if b == 0 else f", `count^-{b:g}` weights")
    return s + (" + Dice" if data.get("dice") else "")


def _change_rows(scene: str, r: dict[str, Any], method: str, label: str, bold: bool = False) -> str:
    x = r["results"][method]
    m = x["metrics"]
    cfg = x.get("config") or {}
    miou = f"**{m['miou']:.3f}**" if bold else f"{m['miou']:.3f}"
    if method == "linear":
        return (f"| {scene} | {label} | – | – | {miou} | {m['iou_positive']:.3f} | "
                f"{m['iou_negative']:.3f} | – | < 1 |")
    return (f"| {scene} | {label} | {cfg.get('steps', '–')} | {_loss_name(cfg)} | {miou} | "
            f"{m['iou_positive']:.3f} | {m['iou_negative']:.3f} | {_mib(x['activation_bytes'])} MiB | "
            f"{x['train_time_s']:.0f} |")


def _change(d: Path) -> str:
    out = ["| scene | method | steps | loss | mIoU | changed IoU | unchanged IoU | activations / step | train time (s) |",
           "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for scene in ("generated", "landsat"):
        cur = _load(d, f"change_{scene}")
        if cur is None:
            continue
        base = _load(d, f"change_{scene}_baselines") or {"results": {}}
        ce = _load(d, f"change_{scene}_crossentropy") or {"results": {}}
        title = (f"{cur['case'].split(',')[0]}; {cur['train_pixels']} training / "
                 f"{cur['scored_pixels']} scored pixels")
        rows = []
        if "linear" in base["results"]:
            rows.append(_change_rows(title, base, "linear", "logistic regression"))
        rows.append(_change_rows(title, cur, "hyperbolic", "**fhcnn** (`change` config)", bold=True))
        if "hyperbolic" in ce["results"]:
            rows.append(_change_rows(title, ce, "hyperbolic", "fhcnn without Dice"))
        if "unet" in base["results"]:
            rows.append(_change_rows(title, base, "unet", "3D U-Net"))
        out += [rows[0]] + [r.replace(f"| {title} |", "| |", 1) for r in rows[1:]]
    return "\n".join(out)


def _vae_digits(d: Path) -> str:
    r = _need(d, "vae_digits")
    h, c = r["hyperbolic"], r["conv_vae"]
    return "\n".join([
        "| model | latent dim | recon MSE | energy distance | classifier confidence on samples | train time (s) | steps |",
        "|---|---|---:|---|---:|---:|---:|",
        f"| **fhcnn** hyperbolic VAE | **{h['latent_dim']}** of {h['full_dim']} | {h['recon_mse']:.4f} | "
        f"{h['energy_distance_before']:.2f} (untrained, `P = I`) → **{h['energy_distance_after']:.4f}** | "
        f"{h['classifier_confidence_samples']:.3f} | {h['train_time_s']:.0f} | {h['steps']} |",
        f"| `ConvVAE` ({c['parameters']} parameters) | {c['latent_dim']} (set) | {c['recon_mse']:.4f} | "
        f"{c['energy_distance_after']:.4f} | {c['classifier_confidence_samples']:.3f} | "
        f"{c['train_time_s']:.0f} | {c['steps']} |",
        "",
        f"Held-out: {h['n_eval']} digits ({h['n_train']} train). The classifier scores "
        f"{h['classifier_accuracy_real_eval']:.1%} accuracy and mean confidence "
        f"{h['classifier_confidence_real_eval']:.3f} on the real held-out digits.",
    ])


def _vae_mnist(d: Path) -> str:
    r = _need(d, "vae_mnist")
    return "\n".join([
        "| latent dim | recon MSE (normalized) | energy distance | classifier confidence on samples | steps | train time (s) |",
        "|---|---:|---|---:|---:|---:|",
        f"| **{r['latent_dim']}** of {r['full_dim']} | {r['recon_mse']:.3f} ({r['recon_mse_normalized']:.2f}) | "
        f"{r['energy_distance_before']:.0f} (untrained, `P = I`) → **{r['energy_distance_after']:.2f}** | "
        f"{r['classifier_confidence_samples']:.2f} | {r['steps']} | {r['train_time_s']:.0f} |",
        "",
        f"{r['n_train']} training / {r['n_eval']} held-out images. The classifier scores "
        f"{r['classifier_accuracy_real_eval']:.1%} accuracy and mean confidence "
        f"{r['classifier_confidence_real_eval']:.2f} on the real held-out digits.",
    ])


def _gpu(d: Path) -> str:
    r = _need(d, "gpu_h200")
    ds = r["depth_sweep"]
    pk = ds["peak_bytes"]
    out = [f"Peak memory of one training step ({r['gpu']}, torch {r['torch']}; 2D, "
           f"{ds['input'][1]} channels, {ds['input'][2]}×{ds['input'][3]}, one coarsening), MiB:", "",
           "| layers | plain | block | reversible |", "|---:|---:|---:|---:|"]
    for i, n in enumerate(ds["depths"]):
        out.append(f"| {n} | {_mib(pk['plain'][i])} | {_mib(pk['block'][i])} | **{_mib(pk['reversible'][i])}** |")
    out += ["", "The paper's video network (`--config paper-video`) on DAVIS blackswan, "
            "saved for backward / peak of a training step:", "",
            "| training input | plain autograd | fully reversible | saved: plain / reversible |",
            "|---|---|---|---:|"]
    pv = r["paper_video_memory"]
    inputs = dict.fromkeys(k.split(", ", 1)[1] for k in pv)
    for inp in inputs:
        p, v = pv[f"plain, {inp}"], pv[f"reversible, {inp}"]
        out.append(f"| {inp} | {_mib(p['activation_bytes'])} MiB / {p['peak_bytes'] / 2**30:.2f} GiB | "
                   f"**{_mib(v['activation_bytes'])} MiB / {v['peak_bytes'] / 2**30:.2f} GiB** | "
                   f"{p['activation_bytes'] / v['activation_bytes']:.0f}× |")
    t = r["paper_video_training"]
    out += ["", f"Trained for {t['steps']} steps ({t['train_time_s']:.0f} s) on "
            f"{t['video']} at {t['volume_size'][1]}×{t['volume_size'][2]} (labels on frames "
            f"{', '.join(map(str, t['label_frames']))}; {t['parameters'] / 1e6:.1f} M parameters): "
            f"held-out mIoU **{t['miou']:.3f}**, J {t['J']:.3f} (copy nearest mask "
            f"{t['copy_nearest_baseline']['miou']:.3f}); prediction {t['predict_time_s']:.0f} s."]
    return "\n".join(out)


def _headline(d: Path) -> str:
    out = ["| task | fhcnn | comparison |", "|---|---|---|"]
    mem = _load(d, "memory")
    if mem is not None:
        rec = mem["sweeps"]["depth"]
        i = len(rec["x"]) - 1
        s = rec["saved"]
        sp = rec["specs"][i]
        out.append(f"| memory for backward, {rec['x'][i]} layers, {sp['dim']}D {sp['size']}² | **{_mib(s['reversible'][i])} MiB** "
                   f"(constant in depth) | plain autograd {_mib(s['plain'][i])} MiB, "
                   f"block-reversible {_mib(s['block'][i])} MiB |")
    gpu = _load(d, "gpu_h200")
    if gpu is not None:
        pv = gpu["paper_video_memory"]
        key = next((k.split(", ", 1)[1] for k in pv if "whole" in k), None)
        if key:
            p, v = pv[f"plain, {key}"], pv[f"reversible, {key}"]
            out.append(f"| the paper's video network, {key}, peak on {gpu['gpu']} | "
                       f"**{v['peak_bytes'] / 2**30:.2f} GiB** | plain autograd "
                       f"{p['peak_bytes'] / 2**30:.2f} GiB |")
    old, hyp = _davis_runs(d, "davis_hyperbolic"), _davis_glob(d, _DAVIS_SHIPPED)
    if len(hyp) < len(DAVIS_SEQUENCES):
        old, hyp = {}, old
    if hyp:
        m = mean(x["miou"] for x in hyp.values())
        c = mean(x["copy_nearest_miou"] for x in hyp.values())
        pix = _load(d, "davis_pixelwise")
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
        cur, base = _load(d, f"change_{scene}"), _load(d, f"change_{scene}_baselines")
        if cur is None or base is None:
            continue
        res = base["results"]
        others = [f"{n} {res[k]['metrics']['miou']:.3f}"
                  + (f" ({res[k]['config']['steps']} steps)" if k == "unet" else "") for k, n in
                  (("linear", "logistic regression"), ("unet", "3D U-Net")) if k in res]
        x = cur["results"]["hyperbolic"]
        out.append(f"| change detection, {label}, held-out mIoU | **{x['metrics']['miou']:.3f}** "
                   f"({x['config']['steps']} steps) | {', '.join(others)} |")
    sparse = _load(d, "sparse_summary")
    cell = None if sparse is None else sparse.get("taizhou", {}).get("0.01|random", {})
    if cell and "features+head_300" in cell:
        f = cell["features+head_300"]
        best = max(cell[b]["mean"] for b in ("linear", "forest", "linear_dates", "forest_dates"))
        out.append(f"| change detection, Taizhou, 1 % of the pixels labelled (3 seeds), held-out mIoU | "
                   f"**{f['mean']:.3f}** | best of 4 pixelwise baselines {best:.3f} |")
    vae = _load(d, "vae_digits")
    if vae is not None:
        h, c = vae["hyperbolic"], vae["conv_vae"]
        out.append(f"| VAE on 8×8 digits: latent dimension found, energy distance to the prior | "
                   f"**{h['latent_dim']}** of {h['full_dim']}, **{h['energy_distance_after']:.4f}** | "
                   f"conventional VAE: {c['latent_dim']} (set), {c['energy_distance_after']:.4f} |")
    return "\n".join(out)


def _sparse_cell(x: dict[str, Any] | None, margin: bool) -> str:
    if x is None:
        return "–"
    text = f"{x['mean']:.3f} ± {x['std']:.3f}"
    m = x.get("margin_over_better_baseline")
    if margin and m is not None:
        text += f" ({m['mean']:+.3f} / {m['min']:+.3f})"
    return text


_SPARSE_COLUMNS = {
    "taizhou": [("linear, dates", "linear_dates"), ("forest, dates", "forest_dates"),
                ("linear, features", "linear"), ("forest, features", "forest"),
                ("fhcnn: dates", "default_300"),
                ("fhcnn: + analyst features", "features_300"),
                ("**fhcnn**: + features + spectral head (default)", "features+head_300")],
    "generated": [("linear, dates", "linear_dates"), ("forest, dates", "forest_dates"),
                  ("linear, features", "linear"), ("forest, features", "forest"),
                  ("fhcnn: dates, 100 steps", "default"),
                  ("fhcnn: + features, 100 steps", "features"),
                  ("+ features, 400 steps", "features_400"),
                  ("fhcnn: + features + spectral head, 100 steps", "features+head"),
                  ("**fhcnn**: + features + spectral head, 400 steps (default)", "features+head_400")],
}


def _sparse(scene: str) -> Callable[[Path], str]:
    """Held-out mIoU (mean ± std over seeds; fhcnn with its margin over the best pixelwise
    baseline, mean / worst seed) from ``sparse_summary.json``."""
    def table(d: Path) -> str:
        rows = _need(d, "sparse_summary")[scene]
        cols = _SPARSE_COLUMNS[scene]
        out = ["| labels | " + " | ".join(c for c, _ in cols) + " |",
               "|---|" + "---:|" * len(cols)]
        order = sorted(rows, key=lambda k: (float(k.split("|")[0]), k.split("|")[1] != "random"))
        for key in order:
            density, pattern = key.split("|")
            cells = [_sparse_cell(rows[key].get(name), name.startswith(("default", "features")))
                     for _, name in cols]
            out.append(f"| {100 * float(density):.1f}% {pattern} | " + " | ".join(cells) + " |")
        return "\n".join(out)
    return table


def _sparse_hsi(d: Path) -> str:
    """Held-out mIoU on the hyperspectral scenes from ``n`` labelled pixels per class (mean ±
    std over seeds; fhcnn with its margin over the better pixelwise baseline, mean / worst
    seed) from ``sparse_hsi_summary.json`` (``benchmarks/sparse_hsi.py report``)."""
    summary = _need(d, "sparse_hsi_summary")
    out = ["| scene | labelled pixels per class | linear (spectrum) | forest (spectrum) | fhcnn | "
           "**fhcnn** (margin: mean / worst seed) | fhcnn steps | fhcnn train + predict (s) |",
           "|---|---:|---:|---:|---|---:|---:|---:|"]
    for name, s in summary.items():
        scene = name.split("_")[0]
        overrides = s["fhcnn"]["overrides"]
        steps = next((o.split("=", 1)[1] for o in overrides[::-1] if o.startswith("train.steps=")), "config")
        head = next((o.split("=", 1)[1] for o in overrides[::-1] if o.startswith("model.spectral_head=")), "0")
        variant = f"+ spectral head ({head})" if head != "0" else "network only"
        for n, row in s["by_n"].items():
            f = row.get("fhcnn")
            times = "–" if f is None else (f"{f['train_time_s']['mean']:.0f} + "
                                           f"{f['predict_time_s']['mean']:.0f}")
            out.append(f"| {scene} | {n} | {_sparse_cell(row['linear'], False)} | "
                       f"{_sparse_cell(row['forest'], False)} | {variant} | {_sparse_cell(f, True)} | "
                       f"{steps} | {times} |")
    return "\n".join(out)


TABLES: dict[str, Callable[[Path], str]] = {
    **{name: _bench_table(name, fn) for name, fn in _BENCH},
    "memory_headline": _memory_headline,
    "gpu": _gpu,
    "davis": _davis,
    "davis_loss": _davis_loss,
    "davis_speed": _davis_speed,
    "speed_final": _speed_final,
    "segment_generated": _segment_generated,
    "change": _change,
    "vae_digits": _vae_digits,
    "vae_mnist": _vae_mnist,
    "headline": _headline,
    "sparse_taizhou": _sparse("taizhou"),
    "sparse_generated": _sparse("generated"),
    "sparse_hsi": _sparse_hsi,
}

_MARKER = re.compile(r"<!-- (/?)table:([\w-]+) -->")


def render(name: str, results: str | Path) -> str:
    """The markdown of table ``name`` from the JSON files in ``results``."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; known: {', '.join(sorted(TABLES))}")
    return TABLES[name](Path(results))


def replace_tables(text: str, table: Callable[[str], str]) -> str:
    """Replace the body between every ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``
    with ``table(NAME)``; markers stay. Raises ValueError for unpaired or nested markers."""
    out: list[str] = []
    pos = 0
    open_name: str | None = None
    for m in _MARKER.finditer(text):
        closing, name = m.group(1) == "/", m.group(2)
        line = text.count("\n", 0, m.start()) + 1
        if not closing:
            if open_name is not None:
                raise ValueError(f"line {line}: table:{name} opens inside table:{open_name}")
            out.append(text[pos:m.end()])
            open_name = name
        else:
            if open_name != name:
                raise ValueError(f"line {line}: /table:{name} closes "
                                 + (f"table:{open_name}" if open_name else "nothing"))
            out.append("\n" + table(name).strip("\n") + "\n" + m.group(0))
            open_name = None
        pos = m.end()
    if open_name is not None:
        raise ValueError(f"table:{open_name} is never closed")
    out.append(text[pos:])
    return "".join(out)


def _markdown_files(paths: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.md")) if p.is_dir() else [p]
    return files


def update_docs(results: str | Path, paths: list[str | Path], check: bool = False) -> list[Path]:
    """Regenerate the marked tables in ``paths`` (markdown files, or folders of them) from the
    JSON in ``results``. Returns the files whose text changed (with ``check``, would change;
    nothing is written)."""
    changed = []
    for f in _markdown_files(paths):
        text = f.read_text()
        try:
            new = replace_tables(text, lambda name: render(name, results))
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise ValueError(f"{f}: {e}") from e
        if new != text:
            changed.append(f)
            if not check:
                f.write_text(new)
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fhcnn.bench.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="?", default="benchmarks/results", help="folder of result JSON files")
    p.add_argument("--docs", nargs="+", metavar="PATH", help="markdown files or folders to update")
    p.add_argument("--check", action="store_true", help="only say which files are out of date")
    args = p.parse_args(argv)
    if not args.docs:
        print(markdown(args.results))
        return 0
    try:
        changed = update_docs(args.results, args.docs, check=args.check)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for f in changed:
        print(f"{'out of date' if args.check else 'updated'}: {f}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
