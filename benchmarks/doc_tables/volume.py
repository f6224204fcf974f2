"""The sparse-slice tables of ``fhcnn volume`` (``benchmarks/volume_sparse.py report`` writes
``volume_sparse_summary.json``): the shipped config against the three baselines of the same
labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._files import load, need

#: the results of the shipped ``volume`` config and of the same network trained fewer steps
SHIPPED, SHORTER = "x_ch32s1000", "x_ch32"
#: the same of the volumes whose labels are layers along an axis (kept upright in training,
#: ``volume.vertical_axis``; the others' results are the same with or without it)
LAYERED_SHIPPED, LAYERED_SHORTER = "v_vert", "v_vert600"
LAYERED = ("layers",)


def shipped(volume: str, shorter: bool = False) -> str:
    """The tag of ``volume``'s results of the shipped config (``shorter``: trained fewer steps)."""
    if volume in LAYERED:
        return LAYERED_SHORTER if shorter else LAYERED_SHIPPED
    return SHORTER if shorter else SHIPPED

VOLUMES = (("cells", "cells 48³, 2 channels"), ("seismic", "seismic 48³, faults"),
           ("layers", "seismic 48³, four formations"), ("mni", "MNI152 T1 at 3 mm"))
_METHODS = ("fhcnn", "unet", "copy", "forest")


def _annotation(group: str, slices: int) -> str:
    frac, axes = group.split("|")
    pct = f"{float(frac) * 100:g} %"
    if axes == "three":
        return f"{slices} slices over the three axes ({pct})"
    return f"{pct} of axis 0 ({slices} slice{'s' if slices > 1 else ''})"


def _cell(row: dict[str, Any], method: str, best: bool) -> str:
    if method not in row:
        return "–"
    m = row[method]["miou"]
    text = f"{m['mean']:.3f} ± {m['spread']:.3f}"
    return (f"**{text}**" if best else text) + f" [{', '.join(f'{v:.2f}' for v in row[method]['iou'])}]"


def _signed(x: float) -> str:
    text = f"{x:+.3f}"
    return "0.000" if text in ("+0.000", "-0.000") else text


def _table(summary: dict[str, Any], volume: str, tag: str) -> dict[str, Any]:
    """The rows of ``volume``'s results under ``tag`` by annotation group (``{}`` without them)."""
    return summary.get(f"{volume}/{tag}", {}).get("table", {})


def _steps(summary: dict[str, Any], tag: str) -> int:
    """The training steps of ``tag``'s results (the same for every volume that has them)."""
    steps = {entry["steps"] for name, entry in summary.items() if name.endswith(f"/{tag}")}
    if len(steps) != 1:
        raise ValueError(f"the results of {tag} trained {sorted(steps)} steps, not one number")
    return steps.pop()


def _rows(summary: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], dict[str, Any] | None]]:
    out = []
    for volume, label in VOLUMES:
        table, shorter = _table(summary, volume, shipped(volume)), _table(summary, volume, shipped(volume, True))
        for group, row in table.items():  # in the report's order: one axis first, then by fraction
            out.append((label, _annotation(group, row["slices"]), row, shorter.get(group)))
    return out


def volume_sparse(d: Path) -> str:
    """One row a benchmark: fhcnn (the shipped config) and the 3D U-Net trained as long, the
    copy and the forest, mean ± spread over the seeds with per-class IoU; fhcnn's margin over the
    U-Net a seed; and the means of both networks trained fewer steps (``SHORTER``)."""
    summary = need(d, "volume_sparse_summary")
    out = ["| volume, annotation | seeds | fhcnn (`volume`) | 3D U-Net | fhcnn − U-Net a seed | "
           f"copy nearest | random forest | {_steps(summary, SHORTER)} steps: fhcnn / U-Net |",
           "|---|---|---|---|---|---|---|---|"]
    for label, annotation, row, shorter in _rows(summary):
        best = max(row[m]["miou"]["mean"] for m in _METHODS if m in row)
        margin = row.get("margin_over_unet")
        gap = "–" if margin is None else f"{_signed(margin['min'])} to {_signed(margin['max'])}"
        short = "–" if not shorter or "unet" not in shorter else (
            f"{shorter['fhcnn']['miou']['mean']:.3f} / {shorter['unet']['miou']['mean']:.3f}")
        fh, un, co, fo = (_cell(row, m, m in row and row[m]["miou"]["mean"] == best) for m in _METHODS)
        out.append(f"| {label}, {annotation} | {row['seeds']} | {fh} | {un} | {gap} | {co} | {fo} | {short} |")
    return "\n".join(out)


#: the cells annotated on 5 % of axis 0 with both stains, and with each stain alone
STAINS = (("cells", "both stains (2 channels)"), ("cells-c0", "the first stain alone (`cells-c0`)"),
          ("cells-c1", "the second stain alone (`cells-c1`)"))
_STAINS_GROUP = "0.05|one"


def volume_stains(d: Path) -> str:
    """The two stains of the cells against each one alone (5 % of axis 0, the shipped config):
    mIoU mean ± spread with per-class IoU, each seed's mIoU, the margin of both stains over the
    better single stain a seed, and the means trained fewer steps (``SHORTER``)."""
    summary = need(d, "volume_sparse_summary")
    missing = [volume for volume, _ in STAINS if _STAINS_GROUP not in _table(summary, volume, SHIPPED)]
    if missing:
        raise ValueError(f"volume_sparse_summary has no {SHIPPED} results of {_STAINS_GROUP} for "
                         f"{', '.join(missing)}")
    rows = {volume: _table(summary, volume, SHIPPED)[_STAINS_GROUP] for volume, _ in STAINS}
    by_seed = {volume: row["fhcnn"]["by_seed"] for volume, row in rows.items()}
    seeds = sorted(set.intersection(*(set(v) for v in by_seed.values())), key=int)
    out = [f"| channels | fhcnn ({_steps(summary, SHIPPED)} steps) | "
           + " | ".join(f"seed {s}" for s in seeds)
           + f" | both − better single a seed | {_steps(summary, SHORTER)} steps |",
           "|---|---|" + "---|" * len(seeds) + "---|---|"]
    for volume, label in STAINS:
        row = rows[volume]
        if volume == STAINS[0][0]:
            margins = [by_seed[volume][s] - max(by_seed[v][s] for v, _ in STAINS[1:]) for s in seeds]
            gap = f"{_signed(min(margins))} to {_signed(max(margins))}"
        else:
            gap = ""
        shorter = _table(summary, volume, SHORTER).get(_STAINS_GROUP)
        short = "–" if shorter is None else f"{shorter['fhcnn']['miou']['mean']:.3f}"
        out.append(f"| {label} | {_cell(row, 'fhcnn', False)} | "
                   + " | ".join(f"{by_seed[volume][s]:.3f}" for s in seeds) + f" | {gap} | {short} |")
    return "\n".join(out)


def volume_headline(d: Path) -> tuple[str, str] | None:
    """The README headline's row: the template annotated on one slice (``None`` without it)."""
    summary = load(d, "volume_sparse_summary") or {}
    row = _table(summary, "mni", SHIPPED).get("0.02|one")
    if row is None or "unet" not in row:
        return None
    steps = _steps(summary, SHIPPED)
    others = ", ".join(f"{name} {row[m]['miou']['mean']:.3f}" for m, name in
                       (("copy", "copy the nearest labelled slice"), ("forest", "random forest"),
                        ("unet", "3D U-Net")) if m in row)
    return (f"3D volume from 1 labelled slice, MNI152 T1 at 3 mm, grey/white matter "
            f"({row['seeds']} seeds), held-out mIoU",
            f"**{row['fhcnn']['miou']['mean']:.3f}** ({steps} steps) | {others} ({steps} steps)")


def volume_predict_modes(d: Path) -> str:
    """The speed case trained once and predicted in each mode (``volume_sparse.py
    predict-modes``): windows a voxel, seconds (and relative to the shipped mode, the first),
    held-out mIoU with per-class IoU."""
    rec = need(d, "volume_predict_modes")
    modes = rec["modes"]
    first = modes[0]
    out = ["| `data.predict_overlap` | mirror tiling (`predict_flip`) | windows a voxel | predict s | "
           "time / shipped | held-out mIoU [per class] |", "|---|---|---|---|---|---|"]
    for m in modes:
        out.append(f"| {m['overlap']:g} | {'yes' if m['flip'] else 'no'} | {m['windows_per_voxel']:.1f} | "
                   f"{m['predict_time_s']:.0f} | {m['predict_time_s'] / first['predict_time_s']:.2f} | "
                   f"{m['miou']:.4f} [{', '.join(f'{v:.2f}' for v in m['iou'])}] |")
    return "\n".join(out)


#: networks tried on the four formations at 5 % of axis 0, trained as long as the shipped one:
#: (tag, what, ``--set``)
FORMATIONS = ((LAYERED_SHIPPED, "shipped (kept upright along D, the axis the labels are layers along)", ""),
              (SHIPPED, "flipped along D too", "`volume.vertical_axis=none`"),
              ("s1000", "flipped along D too, without the conv head", "`volume.vertical_axis=none model.conv_head=0`"),
              ("q_l2", "flipped along D too, a second coarsening at the same cost",
               "`volume.vertical_axis=none model.units=2down,1down,2up,1up,2 model.hidden=8,32,32,32,8`"),
              ("q_nh48", "flipped along D too, without the conv head, hidden width 48 at half resolution, a quarter "
               "overlap", "`volume.vertical_axis=none model.conv_head=0 model.hidden=8,48,8 "
               "data.predict_overlap=0.25`"),
              ("q_wd48", "flipped along D too, training windows as deep as the cube", "`volume.vertical_axis=none "
               "data.window_depth=48`"))


def volume_formations(d: Path) -> str:
    """The four formations at 5 % of axis 0: each setting of :data:`FORMATIONS` (those with
    results): fhcnn's mIoU mean ± spread with per-class IoU and each seed's mIoU, and the U-Net
    trained with the same flips on the same labels and steps (a network's setting does not
    change it), likewise, with fhcnn's margin over it a seed."""
    summary = need(d, "volume_sparse_summary")
    out = ["| setting | `--set` | fhcnn | fhcnn a seed | 3D U-Net of the same runs | U-Net a seed | "
           "fhcnn − U-Net a seed |", "|---|---|---|---|---|---|---|"]
    for tag, what, sets in FORMATIONS:
        row = _table(summary, "layers", tag).get("0.05|one")
        if row is None:
            continue
        margin = row.get("margin_over_unet")
        gap = "–" if margin is None else f"{_signed(margin['min'])} to {_signed(margin['max'])}"
        by_seed = [", ".join(f"{s}: {v:.3f}" for s, v in row[m]["by_seed"].items()) if m in row else "–"
                   for m in ("fhcnn", "unet")]
        out.append(f"| {what} | {sets} | {_cell(row, 'fhcnn', False)} | {by_seed[0]} | {_cell(row, 'unet', False)} | "
                   f"{by_seed[1]} | {gap} |")
    return "\n".join(out)
