"""Tables of ``benchmarks/change_detection.py``, ``benchmarks/sparse_labels.py`` and
``benchmarks/sparse_hsi.py``: dense and sparse change detection, single-date scenes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ._files import load, mib, need


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
            f"{m['iou_positive']:.3f} | {m['iou_negative']:.3f} | {mib(x['activation_bytes'])} MiB | "
            f"{x['train_time_s']:.0f} |")


def change(d: Path) -> str:
    out = ["| scene | method | steps | loss | mIoU | changed IoU | unchanged IoU | activations / step | train time (s) |",
           "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for scene in ("generated", "landsat"):
        cur = load(d, f"change_{scene}")
        if cur is None:
            continue
        base = load(d, f"change_{scene}_baselines") or {"results": {}}
        ce = load(d, f"change_{scene}_crossentropy") or {"results": {}}
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


def sparse(scene: str) -> Callable[[Path], str]:
    """Held-out mIoU (mean ± std over seeds; fhcnn with its margin over the best pixelwise
    baseline, mean / worst seed) from ``sparse_summary.json``."""
    def table(d: Path) -> str:
        rows = need(d, "sparse_summary")[scene]
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


def sparse_hsi(d: Path) -> str:
    """Held-out mIoU on the hyperspectral scenes from ``n`` labelled pixels per class (mean ±
    std over seeds; fhcnn with its margin over the better pixelwise baseline, mean / worst
    seed) from ``sparse_hsi_summary.json`` (``benchmarks/sparse_hsi.py report``)."""
    summary = need(d, "sparse_hsi_summary")
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
