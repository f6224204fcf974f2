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

#: (result files, column title) of the DAVIS schedules table: a glob, or the prefix of
#: ``<prefix>_<sequence>.json``; ``davis_hyperbolic`` is the schedule of the comparison with the
#: U-Net and the pixelwise baselines
_DAVIS_SCHEDULES = (
    (DAVIS_SHIPPED, "**`video` config**: 1000 one-cycle steps on 8-frame windows"),
    ("seg_video_davis_d8p8s1000seed1_*.json", "the same, `train.seed=1`"),
    ("seg_video_davis_d8s1000_*.json", "the same, predicted on 16-frame windows"),
    ("davis_hyperbolic", "16-frame windows, 1000 cosine steps at lr 2e-3, 4 shifts"),
    ("seg_video_davis_450.json", "16-frame windows, 450 one-cycle steps"),
    ("seg_video_davis_450_teacher_*.json", "the same + mean teacher (`data.unlabelled=teacher`)"),
    ("seg_video_davis_520_onecycle.json", "16-frame windows, 520 one-cycle steps"),
    ("seg_video_davis_520_cosine.json", "16-frame windows, 520 cosine steps at lr 2e-3"),
    ("seg_video_davis_700.json", "16-frame windows, 700 one-cycle steps"),
    ("seg_video_davis_800_bf16_*.json", "16-frame windows, 800 one-cycle steps, bf16 autocast"))


def davis_schedules(d: Path) -> str:
    """DAVIS under the shipped ``video`` config and other window depths, schedules and steps:
    held-out mIoU and wall time (training + prediction) per sequence, one torch thread each."""
    runs = [davis_glob(d, p) if p.endswith(".json") else davis_runs(d, p) for p, _ in _DAVIS_SCHEDULES]
    out = ["| sequence | " + " | ".join(f"{title}: mIoU, wall (s)" for _, title in _DAVIS_SCHEDULES) + " |",
           "|---|" + "---:|" * len(_DAVIS_SCHEDULES)]
    for seq in DAVIS_SEQUENCES:
        cells = [f"{r[seq]['miou']:.3f}, {r[seq]['wall_s']:.0f}" if seq in r else "–" for r in runs]
        out.append(f"| {seq} | " + " | ".join(cells) + " |")
    out.append("| **mean mIoU** | " + " | ".join(mean_row(r, len(DAVIS_SEQUENCES)) for r in runs) + " |")
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
