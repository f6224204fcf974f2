"""Tables of ``benchmarks/segmentation_video.py`` and ``benchmarks/davis_pixelwise.py``:
DAVIS 2016 and the generated video."""

from __future__ import annotations

from pathlib import Path
from statistics import mean
from typing import Any

from ._files import DAVIS_SEQUENCES, davis_glob, davis_runs, f3, load, mean_row, mib, need


def miou_j(x: dict[str, Any] | None) -> str:
    return "–" if x is None else f"{x['miou']:.3f} / {x['J']:.3f}"


def davis(d: Path) -> str:
    hyp = davis_runs(d, "davis_hyperbolic")
    if not hyp:
        raise FileNotFoundError(f"{d}/davis_hyperbolic_<sequence>.json: none found")
    unet = davis_runs(d, "davis_unet")
    unet1 = davis_runs(d, "davis_unet_dice_balance1")
    pix = (load(d, "davis_pixelwise") or {}).get("results", {})
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
                   f"{miou_j(p and p['linear'])} | {miou_j(p and p['forest'])} | "
                   f"**{x['miou']:.3f} / {x['J']:.3f}** | {margin} | {x['fg_precision']:.2f} / "
                   f"{x['fg_recall']:.2f} | {x['train_time_s']:.0f} + {x['predict_time_s']:.0f} | "
                   f"{miou_j(unet.get(seq))} | {miou_j(unet1.get(seq))} |")
    copy = mean(x["copy_nearest_miou"] for x in hyp.values())
    lin = {s: p["linear"] for s, p in pix.items() if s in hyp}
    forest = {s: p["forest"] for s, p in pix.items() if s in hyp}
    worst = f"{mean(margins):+.3f} (worst {min(margins):+.3f})" if margins else "–"
    out.append(f"| **mean mIoU** | | {copy:.3f} | {mean_row(lin, len(hyp))} | {mean_row(forest, len(hyp))} | "
               f"**{mean_row(hyp, len(hyp))}** | {worst} | | | "
               f"{mean_row(unet, len(hyp))} | {mean_row(unet1, len(hyp))} |")
    x = next(iter(hyp.values()))
    a = x["activation_bytes"]
    u = next(iter((unet or unet1).values()), None)
    line = (f"\nActivation memory of one training step (batch of {x['batch']} windows of "
            f"{'×'.join(map(str, x['window']))}): fhcnn {mib(a['reversible'])} MiB fully "
            f"reversible ({mib(a['block'])} block-reversible, {mib(a['plain'])} plain autograd)")
    if u is not None:
        line += f", 3D U-Net {mib(u['activation_bytes']['plain'])} MiB"
    out.append(line + ".")
    return "\n".join(out)


#: the shipped ``video`` config on the 8 DAVIS sequences (one file per sequence)
DAVIS_SHIPPED = "seg_video_davis_d8p8s1000_*.json"

#: (key, result files, column title) of the DAVIS speed table
_DAVIS_SPEED_COLUMNS = (("shipped", DAVIS_SHIPPED, "**shipped**: 1000 one-cycle steps on 8-frame windows"),
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


def davis_speed(d: Path) -> str:
    """DAVIS with the previous ``video`` schedule (``davis_hyperbolic_<seq>.json``) against the
    current one (the files of ``_DAVIS_SPEED_COLUMNS``): held-out mIoU and wall time per
    sequence, one torch thread each."""
    old = davis_runs(d, "davis_hyperbolic")
    runs = {key: davis_glob(d, pattern) for key, pattern, _ in _DAVIS_SPEED_COLUMNS}
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
    means = [mean_row(old, len(DAVIS_SEQUENCES))] + [
        mean_row(runs.get(k, {}), len(DAVIS_SEQUENCES)) for k, _, _ in _DAVIS_SPEED_COLUMNS]
    out.append("| **mean mIoU** | " + " | ".join(means) + " |")
    return "\n".join(out)


def davis_loss(d: Path) -> str:
    ce = {x["name"]: x for x in need(d, "davis_hyperbolic_crossentropy")["results"]}
    dice = davis_runs(d, "davis_hyperbolic_dice_balance1")
    default = davis_runs(d, "davis_hyperbolic")
    out = ["| sequence | cross entropy, `count^-1` weights | + Dice | + Dice, `count^-0.5` weights (default) |",
           "|---|---:|---:|---:|"]
    seqs = [s for s in DAVIS_SEQUENCES if s in ce or s in dice or s in default]
    for s in seqs:
        out.append(f"| {s} | {f3(ce.get(s, {}).get('miou'))} | {f3(dice.get(s, {}).get('miou'))} | "
                   f"**{f3(default.get(s, {}).get('miou'))}** |")
    out.append(f"| **mean** | {mean_row(ce, len(seqs))} | {mean_row(dice, len(seqs))} | "
               f"**{mean_row(default, len(seqs))}** |")
    return "\n".join(out)


def segment_generated(d: Path) -> str:
    r = need(d, "segment_generated")
    out = ["| network | held-out mIoU | per-class IoU | steps | train time (s) | activation memory / step |",
           "|---|---:|---|---:|---:|---|"]
    first = r["results"][0]
    out.append(f"| copy the nearest labelled mask | {first['copy_nearest_miou']:.3f} | | | | |")
    for x in r["results"]:
        a = x["activation_bytes"]
        if x["arch"] == "hyperbolic":
            name = "**fhcnn** (fully reversible)"
            mem = (f"**{mib(a['reversible'])} MiB** (block-reversible {mib(a['block'])}, "
                   f"plain autograd {mib(a['plain'])})")
        else:
            name = "3D U-Net" if x["arch"] == "unet" else x["arch"]
            mem = f"{mib(a['plain'])} MiB"
        iou = " / ".join(f"{v:.3f}" for v in x["iou"])
        out.append(f"| {name} | {x['miou']:.3f} | {iou} | {x['steps']} | {x['train_time_s']:.0f} | {mem} |")
    return "\n".join(out)
