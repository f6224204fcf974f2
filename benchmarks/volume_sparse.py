"""Sparse-slice segmentation of 3D volumes: fhcnn against the three baselines of ``fhcnn volume``.

    python benchmarks/volume_sparse.py run VOLUME [--fractions 0.02,0.05,0.1] [--axes one,three]
        [--seeds 0,1,2] [--config volume] [--set KEY=VALUE ...] [--tag NAME] [--baselines copy,forest,unet]
    python benchmarks/volume_sparse.py report
    python benchmarks/volume_sparse.py speed [--size 240,240,155] [--slices 8]
    python benchmarks/volume_sparse.py predict-modes [--size 240,240,155] [--modes 0.5+flip,0.5,0.25,0]
    python benchmarks/volume_sparse.py costs [--size 240,240,155] [--layouts [--rounds 3]]

Volumes (generated ones from :mod:`fhcnn.data.synthetic_volumes`, with known truth):
``cells`` (``$VOLUME_SIZE``^3, default 96, two stains as two channels; ``cells-c0`` / ``cells-c1`` one stain each),
``seismic`` (96^3, fault voxels), ``layers`` (96^3, four formations), and ``mni`` (the MNI152
2009 T1 template that ships inside the nilearn wheel, at ``$MNI_MM`` mm, default 2: 98 x 116 x 94, classes
0 other / 1 grey matter / 2 white matter from the probability maps above 0.5; read from an
installed nilearn or from ``--nilearn-wheel``/``$NILEARN_WHEEL``, never downloaded by this
script). The seismic volumes state their depth (axis 0) as their vertical axis, as a SEG-Y cube's
samples do (``fhcnn.data.synthetic_volumes.VERTICAL_AXIS``): only along it are the labels checked
for layers, which are kept upright in training (``volume.vertical_axis``).

Annotation: ``fraction`` of the slices along axis 0 (D) (at least 1), evenly spaced from a
seeded offset (``one``), or the same number of slices spread over the three axes in turn
(``three``: D, H, W, D, ...). Every other voxel is scored against the truth. One torch thread.

A run with ``--baselines none`` (fhcnn alone) is reported with the baselines of another tag
on the same labels (same volume and size, fraction, axes and seed) and the same settings apart
from fhcnn's network (``model.*``) and the device (``train.device``, recorded in each run):
the baselines do not depend on them; a U-Net only from runs of as many training steps (each
file records its training as resolved, ``train``). ``run``
appends each result to ``results/volume_sparse_<volume>_<tag>.json`` (a rerun skips
what is there; ``--part P`` writes ``..._<tag>@P.json`` instead, for runs side by side; fewer
than three slices are not spread over three axes); ``report`` writes
``results/volume_sparse_summary.json`` (mean, spread = max - min, per-class IoU) and
``results/volume_sparse.png`` (the shipped config's tables: ``--plot TAG,...``) and prints the tables.
``costs`` measures the CPU seconds (one thread, process time) of one training step and one
prediction call of the config, the fhcnn time they add up to for ``--size`` and the float32 values
a voxel of a training window autograd keeps for the backward; ``costs --layouts``
those of the layouts compared in docs/volume.md, in turn, ``--rounds`` times.
``speed`` times the shipped ``volume`` config on a generated two-channel volume of ``--size``
annotated on ``--slices`` slices of axis 0 (threads chosen as by default: free cores);
``predict-modes`` trains on that case once and predicts it with each prediction mode
(``data.predict_overlap``, with or without the mirror tiling): seconds and held-out mIoU.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import re
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from fhcnn.apps.volume import VolumeConfig, segment_volume
from fhcnn.apps.volume.inputs import inputs_from_arrays
from fhcnn.atomic import atomic_path, atomic_write_text
from fhcnn.bench.reference import environment
from fhcnn.config import load_config
from fhcnn.data.synthetic_volumes import VERTICAL_AXIS, generate_volume
from fhcnn.errors import InputError

RESULTS = Path(__file__).resolve().parent / "results"
GENERATED = {"cells": ("cells", 2), "cells-c0": ("cells", 1), "cells-c1": ("cells", 1),
             "seismic": ("seismic", 1), "layers": ("seismic-layers", 1)}
SIZE = int(os.environ.get("VOLUME_SIZE", "96"))
MNI_MM = int(os.environ.get("MNI_MM", "2"))
MNI_FILES = {"t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
             "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
             "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}


def _mni_bytes(name: str, wheel: str | None) -> bytes:
    wheel = wheel or os.environ.get("NILEARN_WHEEL")
    if wheel:
        with zipfile.ZipFile(wheel) as z:
            return z.read(f"nilearn/datasets/data/{name}")
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        sys.exit("the MNI152 template needs nilearn installed, or --nilearn-wheel PATH to its wheel")
    return (Path(spec.origin).parent / "datasets" / "data" / name).read_bytes()


def load_volume(name: str, wheel: str | None = None) -> dict:
    """``{"channels": [(D, H, W) float32, ...], "truth": (D, H, W) uint8, "spacing", "about"}``."""
    if name in GENERATED:
        kind, nch = GENERATED[name]
        chans = [0, 1] if nch == 2 else [1 if name.endswith("c1") else 0]
        out = []
        truth = None
        for c in chans:
            img, truth = generate_volume(kind, (SIZE,) * 3, seed=0, channel=c, dtype="float32")  # type: ignore[arg-type]
            out.append(img)
        return {"channels": out, "truth": truth, "spacing": None, "vertical_axis": VERTICAL_AXIS[kind],
                "about": f"generated {kind} {SIZE}^3, channels {chans}"}
    if name == "mni":
        import nibabel as nib

        arrs = {}
        for key, fname in MNI_FILES.items():
            nifti = nib.Nifti1Image.from_bytes(gzip.decompress(_mni_bytes(fname, wheel)))
            arrs[key] = np.asarray(nifti.dataobj, np.float32)
        # MNI_MM mm (default 2): means of f x f x f blocks (the template is 1 mm, 197 x 233 x 189)
        f = MNI_MM

        def down(a: np.ndarray) -> np.ndarray:
            s = [n // f * f for n in a.shape]
            a = a[:s[0], :s[1], :s[2]]
            return a.reshape(s[0] // f, f, s[1] // f, f, s[2] // f, f).mean((1, 3, 5))
        t1, gm, wm = (down(arrs[k]) for k in ("t1", "gm", "wm"))
        truth = np.zeros(t1.shape, np.uint8)
        truth[gm > 0.5] = 1
        truth[wm > 0.5] = 2
        return {"channels": [t1], "truth": truth, "spacing": (float(f),) * 3, "vertical_axis": None,
                "about": f"MNI152 2009c T1 at {f} mm {t1.shape}; 0 other / 1 GM / 2 WM (maps > 0.5)"}
    sys.exit(f"unknown volume {name!r}")


def annotate(truth: np.ndarray, fraction: float, axes: str, seed: int) -> tuple[np.ndarray, dict]:
    """Sparse labels: ``fraction`` of the slices of axis 0, evenly spaced from a seeded offset,
    or the same number spread over the three axes in turn; 255 elsewhere."""
    n = max(1, int(round(fraction * truth.shape[0])))
    rng = np.random.default_rng(1000 + seed)
    per_axis = [n, 0, 0] if axes == "one" else [len(range(a, n, 3)) for a in range(3)]
    lab = np.full(truth.shape, 255, np.uint8)
    where: dict[str, list[int]] = {}
    for a, k in enumerate(per_axis):
        if not k:
            continue
        size = truth.shape[a]
        u = rng.uniform()
        idx = sorted({min(size - 1, int((i + u) * size / k)) for i in range(k)})
        sl: list = [slice(None)] * 3
        sl[a] = idx
        lab[tuple(sl)] = truth[tuple(sl)]
        where["DHW"[a]] = idx
    return lab, {"slices": n, "where": where}


def cmd_run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    vol = load_volume(args.volume, args.nilearn_wheel)
    part = f"@{args.part}" if args.part else ""
    path = RESULTS / f"volume_sparse_{args.volume}_{args.tag}{part}.json"
    done = json.loads(path.read_text()) if path.exists() else {"volume": args.volume, "about": vol["about"],
                                                                "tag": args.tag, "runs": {}}
    overrides = ["train.threads=1", f"volume.baselines={args.baselines}", *args.overrides]
    cfg = load_config(VolumeConfig, args.config, overrides)
    done["config"] = args.config
    done["overrides"] = overrides
    done["model"] = dataclasses.asdict(cfg.model)  # the network as resolved (configs change)
    done["train"] = dataclasses.asdict(cfg.train)  # the training as resolved (its steps decide the U-Net's)
    for frac in (float(f) for f in args.fractions.split(",")):
        for axes in args.axes.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                key = f"{frac:g}|{axes}|{seed}"
                if key in done["runs"]:
                    continue
                if axes == "three" and max(1, int(round(frac * vol["truth"].shape[0]))) < 3:
                    continue  # fewer than 3 slices cannot be spread over three axes
                lab, where = annotate(vol["truth"], frac, axes, seed)
                try:
                    inputs = inputs_from_arrays(vol["channels"], lab, vol["truth"], spacing=vol["spacing"],
                                                vertical_axis=vol["vertical_axis"], name=args.volume)
                except InputError as e:  # e.g. the annotated slices miss a class: `fhcnn volume` refuses it
                    print(f"{key}: refused, not run: {e}", file=sys.stderr)
                    continue
                cfg.train.seed = seed
                cfg.volume.seed = seed
                t0 = time.perf_counter()
                m = segment_volume(inputs, cfg, None, quiet=True, log=lambda s: None)
                rec = {"slices": where, "fhcnn": _short(m["fhcnn"]),
                       **{b: _short(v) for b, v in m["baselines"].items()},
                       "train_time_s": m["train_time_s"], "predict_time_s": m["predict_time_s"],
                       "unet_train_time_s": m["baselines"].get("unet", {}).get("train_time_s"),
                       "time_s": round(time.perf_counter() - t0, 1), "device": m["device"],
                       "upright": m["vertical_axis"], "flips": m["flips"]}
                done["runs"][key] = rec
                done["environment"] = environment()
                RESULTS.mkdir(exist_ok=True)
                atomic_write_text(path, json.dumps(done, indent=1) + "\n")  # then say so
                print(f"{args.volume} {args.tag} {key}: " + "  ".join(
                    f"{n} {rec[n]['miou']:.3f} [{', '.join(f'{v:.2f}' for v in rec[n]['iou'])}]"
                    for n in ("fhcnn", *m["baselines"])) + f"  ({rec['time_s']:.0f} s)", flush=True)


def _short(m: dict) -> dict:
    return {"miou": round(m["miou"], 4), "iou": [None if v is None else round(v, 4) for v in m["iou"]],
            "dice": [None if v is None else round(v, 4) for v in m["dice"]]}


def _stats(v: list[float]) -> dict:
    a = np.asarray(v, float)
    return {"mean": round(float(a.mean()), 4), "spread": round(float(a.max() - a.min()), 4),
            "min": round(float(a.min()), 4), "max": round(float(a.max()), 4), "n": int(a.size)}


def _annotation_order(group: str) -> tuple[str, float]:
    """Sort key of a ``"fraction|axes"`` group: one axis before three, then by fraction."""
    frac, axes = group.split("|")
    return axes, float(frac)


def _baseline_settings(data: dict, baseline: str) -> list[str]:
    """The overrides ``baseline`` depends on. The U-Net: all but fhcnn's network (``model.*``
    other than the U-Net's), the threads, the device and the baselines run; the copy and the
    forest (no network, no training windows): the ``volume.*`` settings but the baselines run
    and the vertical axis (which only rules out flips of training windows), and the seed."""
    keep = [o for o in data.get("overrides") or []
            if not o.startswith(("train.threads=", "train.device=", "volume.baselines="))]
    if baseline != "unet":
        return sorted(o for o in keep if o.startswith(("volume.", "train.seed="))
                      and not o.startswith("volume.vertical_axis="))
    keep = [o for o in keep if not o.startswith("train.steps=")] + [f"train.steps={_train_steps(data)}"]
    return sorted(o for o in keep if not o.startswith("model.") or o.startswith("model.unet_"))


def _upright(rec: dict) -> str | None:
    """The axis a run kept upright in training (``volume.vertical_axis``; the U-Net of another
    run is its baseline only if trained with the same flips): ``upright``, else read from the
    ``flips`` line (runs that recorded no ``upright``), else ``None`` (runs that recorded
    neither flipped every axis the config flips)."""
    if "upright" in rec:
        return rec["upright"]
    found = re.match(r"(?:kept upright along|vertical axis) ([DHW])\b", rec.get("flips", ""))
    return found.group(1) if found else None


def _train_steps(data: dict) -> int:
    """The training steps of a result file's runs: as resolved (``train``), else its
    ``train.steps`` override, else 600 (the shipped ``volume`` config's steps when the results
    recorded neither)."""
    if "train" in data:
        return int(data["train"]["steps"])
    given = [o.split("=", 1)[1] for o in data.get("overrides") or [] if o.startswith("train.steps=")]
    return int(given[-1]) if given else 600


def cmd_report(args: argparse.Namespace) -> None:
    summary: dict = {}
    lines = []
    merged: dict = {}
    for path in sorted(RESULTS.glob("volume_sparse_*_*.json")):
        if path.name == "volume_sparse_summary.json":
            continue
        data = json.loads(path.read_text())
        name = f"{data['volume']}/{data['tag']}"
        if name in merged:
            merged[name]["runs"].update(data["runs"])
        else:
            merged[name] = data
    for data in merged.values():   # fhcnn-only runs take the baselines of the same labels and training
        for key, rec in data["runs"].items():
            for other in merged.values():
                if other["about"] != data["about"] or other is data or key not in other["runs"]:
                    continue
                for b in ("copy", "forest", "unet"):
                    if (b not in rec and b in other["runs"][key]
                            and _baseline_settings(other, b) == _baseline_settings(data, b)
                            and (b != "unet" or _upright(other["runs"][key]) == _upright(rec))):
                        rec[b] = other["runs"][key][b]
                        rec.setdefault("baselines_from", other["tag"])
    for name, data in merged.items():
        table: dict = {}
        groups: dict = {}
        seeds: dict = {}
        for key, rec in data["runs"].items():
            frac, axes, seed = key.split("|")
            groups.setdefault(f"{frac}|{axes}", []).append(rec)
            seeds.setdefault(f"{frac}|{axes}", []).append(seed)
        for g, recs in sorted(groups.items(), key=lambda kv: _annotation_order(kv[0])):
            methods = [m for m in ("fhcnn", "copy", "forest", "unet") if m in recs[0]]
            row: dict = {"slices": recs[0]["slices"]["slices"], "seeds": len(recs)}
            for meth in methods:
                k = len(recs[0][meth]["iou"])
                row[meth] = {"miou": _stats([r[meth]["miou"] for r in recs]),
                             "iou": [_stats([r[meth]["iou"][c] or 0.0 for r in recs])["mean"] for c in range(k)],
                             "by_seed": dict(sorted(zip(seeds[g], [r[meth]["miou"] for r in recs]),
                                                    key=lambda sv: int(sv[0])))}
            f = [r["fhcnn"]["miou"] for r in recs]
            for meth in methods[1:]:
                row[f"margin_over_{meth}"] = _stats([a - r[meth]["miou"] for a, r in zip(f, recs)])
            row["fhcnn_time_s"] = round(float(np.mean([r["train_time_s"] + r["predict_time_s"] for r in recs])), 1)
            table[g] = row
            lines.append(f"{name:22s} {g:12s} " + "  ".join(
                f"{m} {row[m]['miou']['mean']:.3f}±{row[m]['miou']['spread']:.3f} "
                f"[{', '.join(f'{v:.2f}' for v in row[m]['iou'])}]" for m in methods))
        summary[name] = {"about": data["about"], "config": data.get("config"),
                         "overrides": data.get("overrides"), "steps": _train_steps(data), "table": table}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "volume_sparse_summary.json", json.dumps(summary, indent=1) + "\n")
    print("\n".join(lines))
    _plot(summary, args.plot.split(","))


def _plot(summary: dict, tags: list[str]) -> None:
    """One panel a volume that has baselines: its table from the first of ``tags`` that has the
    volume."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, dict] = {}
    for tag in tags:
        for name, entry in summary.items():
            volume, t = name.split("/", 1)
            if t == tag and not any(p.split("/")[0] == volume for p in panels) and any(
                    "copy" in row for row in entry["table"].values()):
                panels[name] = entry["table"]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, table) in zip(axes[0], panels.items()):
        groups = sorted(table, key=_annotation_order)
        x = np.arange(len(groups))
        # the methods run on every annotation of the panel
        methods = [m for m in ("fhcnn", "copy", "forest", "unet") if all(m in table[g] for g in groups)]
        for i, m in enumerate(methods):
            mean = [table[g][m]["miou"]["mean"] for g in groups]
            lo = [table[g][m]["miou"]["mean"] - table[g][m]["miou"]["min"] for g in groups]
            hi = [table[g][m]["miou"]["max"] - table[g][m]["miou"]["mean"] for g in groups]
            ax.errorbar(x + (i - 1.5) * 0.12, mean, yerr=[lo, hi], fmt="o", label=m, capsize=2)
        ax.set_xticks(x, [g.replace("|", "\n") for g in groups], fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("held-out mIoU")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(RESULTS / "volume_sparse.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def cmd_speed(args: argparse.Namespace) -> None:
    size, chans, lab, truth, where = _speed_case(args)
    cfg = load_config(VolumeConfig, args.config, [f"volume.baselines={args.baselines}", *args.overrides])
    inputs = inputs_from_arrays(chans, lab, truth, name="cells")
    t0, c0 = time.perf_counter(), time.process_time()
    m = segment_volume(inputs, cfg, None, quiet=True, log=print)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    rec = {"size": list(size), "channels": 2, "slices": where, "config": args.config, "overrides": args.overrides,
           "train_time_s": m["train_time_s"], "predict_time_s": m["predict_time_s"],
           "fhcnn_total_s": round(m["train_time_s"] + m["predict_time_s"], 1), "run_total_s": round(total, 1),
           "run_cpu_s": round(cpu, 1), "load_average": os.getloadavg(),
           "miou": m["fhcnn"]["miou"], "baselines": {b: v["miou"] for b, v in m["baselines"].items()},
           "cpu_count": os.cpu_count(), "model": dataclasses.asdict(cfg.model), "train": dataclasses.asdict(cfg.train),
           "environment": environment()}
    print(json.dumps(rec, indent=1))
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"volume_speed{args.tag}.json", json.dumps(rec, indent=1) + "\n")


def _speed_case(args: argparse.Namespace) -> tuple[tuple[int, ...], list[np.ndarray], np.ndarray, np.ndarray, dict]:
    """The speed case: two stains of generated cells of ``--size``, annotated on ``--slices``
    slices of axis 0: ``(size, channels, labels, truth, where)``."""
    size = tuple(int(v) for v in args.size.split(","))
    chans = [generate_volume("cells", size, seed=0, channel=c, dtype="uint8")[0] for c in (0, 1)]
    _, truth = generate_volume("cells", size, seed=0, channel=0, dtype="uint8")
    lab, where = annotate(truth, args.slices / size[0], "one", 0)
    return size, chans, lab, truth, where


def _parse_modes(text: str) -> list[tuple[float, bool]]:
    """``"0.5+flip,0.25,0"`` -> ``[(0.5, True), (0.25, False), (0.0, False)]``."""
    out = []
    for item in text.split(","):
        overlap, _, flip = item.partition("+")
        if flip not in ("", "flip"):
            raise SystemExit(f"--modes: {item!r} is not OVERLAP or OVERLAP+flip")
        out.append((float(overlap), flip == "flip"))
    return out


def cmd_predict_modes(args: argparse.Namespace) -> None:
    """Train the config once on the speed case, then predict it with each prediction mode
    (window overlap, mirror tiling): seconds and held-out mIoU of each
    (``results/volume_predict_modes<tag>.json``)."""
    from fhcnn.apps.volume.pipeline import plan_volume
    from fhcnn.engine.metrics import scores_of_confusion
    from fhcnn.engine.run import predict
    from fhcnn.engine.store import ConfusionSink
    from fhcnn.engine.train import train

    size, chans, lab, truth, where = _speed_case(args)
    cfg = load_config(VolumeConfig, args.config, ["volume.baselines=none", *args.overrides])
    inputs = inputs_from_arrays(chans, lab, truth, name="cells")
    plan = plan_volume(inputs, cfg).plan
    result = train(plan, None, quiet=True)
    held = inputs.held_out()
    modes = []
    for overlap, flip in _parse_modes(args.modes):
        d = dataclasses.replace(plan.config.data, predict_overlap=overlap, predict_flip=flip)
        result.config = dataclasses.replace(plan.config, data=d)
        tilings = result.tilings(size, shifts=d.predict_shifts)  # from result.config, not the plan's
        mode_plan = dataclasses.replace(plan, config=result.config, tilings=tilings)
        result.plan = mode_plan
        sink = ConfusionSink(held, inputs.num_classes)
        seconds = predict(mode_plan, result, [sink])
        m = scores_of_confusion(sink.matrix)
        windows = sum(t.count for t in tilings)
        per_voxel = windows * float(np.prod(plan.predict_window)) / float(np.prod(size))
        modes.append({"overlap": overlap, "flip": flip, "windows": windows, "windows_per_voxel": round(per_voxel, 2),
                      "predict_time_s": round(seconds, 1), "miou": round(m["miou"], 4),
                      "iou": [round(v, 4) for v in m["iou"]]})
        print(json.dumps(modes[-1]), flush=True)
    rec = {"size": list(size), "channels": 2, "slices": where, "config": args.config, "overrides": args.overrides,
           "train_time_s": round(result.train_time_s, 1), "modes": modes, "load_average": os.getloadavg(),
           "cpu_count": os.cpu_count(), "model": dataclasses.asdict(cfg.model), "train": dataclasses.asdict(cfg.train),
           "environment": environment()}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"volume_predict_modes{args.tag}.json", json.dumps(rec, indent=1) + "\n")


#: The layouts of docs/volume.md's table: ``--set`` overrides of the ``volume`` config (the
#: networks compared there without the conv head carry ``model.conv_head=0``).
_NO_HEAD = ["model.conv_head=0"]
LAYOUTS = {"shipped": [], "nohead": _NO_HEAD, "1down": [*_NO_HEAD, "model.units=1down,4up,2"],
           "pre1w64": [*_NO_HEAD, "model.pre_levels=1", "model.width=64", "model.units=4up,2", "model.hidden=32,8"],
           "w16": [*_NO_HEAD, "model.width=16", "model.hidden=16,32,16"], "unet": ["model.arch=unet"]}


def _costs(config: str, overrides: list[str], size: tuple[int, ...]) -> dict:
    """CPU seconds (one thread, process time) of one training step and one prediction call of the
    config, the fhcnn time they give for ``size`` (steps x step + prediction calls x call), and
    the float32 values a voxel of a training window that autograd keeps for the backward."""
    import torch

    from fhcnn.engine import activation_bytes, build_model
    from fhcnn.engine.sizes import prediction_tilings

    torch.set_num_threads(1)
    cfg = load_config(VolumeConfig, config, overrides)
    model = build_model(cfg.model, 2, 3)
    d = cfg.data
    win = (d.window_depth, d.window_height, d.window_width)
    x, y = torch.randn(d.batch_size, 2, *win), torch.randint(0, 3, (d.batch_size, *win))
    opt = torch.optim.Adam(model.parameters())

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    kept = activation_bytes(model, x, y, torch.nn.functional.cross_entropy) / 4 / x[:, 0].numel()
    step()
    t = time.process_time()
    for _ in range(5):
        step()
    t_step = (time.process_time() - t) / 5
    model.eval()
    xb = torch.randn(d.predict_batch, 2, *win)
    with torch.no_grad():
        model(xb)
        t = time.process_time()
        for _ in range(5):
            model(xb)
        t_call = (time.process_time() - t) / 5
    tilings = prediction_tilings(size, win, model.size_multiple, d.predict_shifts, True, d.prediction_mirror)
    windows = sum(tl.count for tl in tilings)
    calls = -(-windows // d.predict_batch)
    return {"size": list(size), "channels": 2, "config": config, "overrides": overrides,
            "train_step_cpu_s": round(t_step, 3), "predict_call_cpu_s": round(t_call, 3),
            "kept_float32_per_voxel": round(kept, 1),
            "steps": cfg.train.steps, "prediction_windows": windows, "prediction_calls": calls,
            "train_cpu_s": round(cfg.train.steps * t_step, 1), "predict_cpu_s": round(calls * t_call, 1),
            "fhcnn_cpu_s": round(cfg.train.steps * t_step + calls * t_call, 1), "load_average": os.getloadavg()}


def cmd_costs(args: argparse.Namespace) -> None:
    """The costs of the config (``results/volume_costs<tag>.json``), or with ``--layouts`` those of
    every layout of :data:`LAYOUTS` in turn, ``--rounds`` times, with each one's cost relative to
    the shipped layout's in the same round (the machine's speed drifts between minutes; the
    medians over rounds go to ``results/volume_costs_layouts.json``)."""
    size = tuple(int(v) for v in args.size.split(","))
    RESULTS.mkdir(exist_ok=True)
    if not args.layouts:
        rec = {**_costs(args.config, args.overrides, size), "environment": environment()}
        print(json.dumps(rec, indent=1))
        atomic_write_text(RESULTS / f"volume_costs{args.tag}.json", json.dumps(rec, indent=1) + "\n")
        return
    rounds: list[dict] = []
    for r in range(args.rounds):
        rounds.append({name: _costs(args.config, sets, size) for name, sets in LAYOUTS.items()})
        print(f"round {r}: " + ", ".join(f"{n} {c['train_step_cpu_s']}/{c['predict_call_cpu_s']}"
                                         for n, c in rounds[-1].items()), flush=True)

    def median(name: str, key: str, relative: bool) -> float:
        v = [rd[name][key] / (rd["shipped"][key] if relative else 1.0) for rd in rounds]
        return round(float(np.median(v)), 3)

    layouts = {name: {"overrides": sets, "kept_float32_per_voxel": rounds[0][name]["kept_float32_per_voxel"],
                      **{f"{k}{'_relative' if rel else ''}": median(name, k, rel)
                         for k in ("train_step_cpu_s", "predict_call_cpu_s", "fhcnn_cpu_s") for rel in (False, True)}}
               for name, sets in LAYOUTS.items()}
    rec = {"size": list(size), "config": args.config, "rounds": rounds, "median": layouts,
           "environment": environment()}
    print(json.dumps(layouts, indent=1))
    atomic_write_text(RESULTS / "volume_costs_layouts.json", json.dumps(rec, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("volume")
    r.add_argument("--fractions", default="0.02,0.05,0.1")
    r.add_argument("--axes", default="one,three")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--config", default="volume")
    r.add_argument("--set", dest="overrides", action="append", default=[])
    r.add_argument("--tag", default="default")
    r.add_argument("--baselines", default="copy,forest,unet")
    r.add_argument("--nilearn-wheel", default=None)
    r.add_argument("--part", default="", help="write results/volume_sparse_<volume>_<tag>@PART.json "
                                             "(parallel runs; report merges the parts)")
    rp = sub.add_parser("report")
    rp.add_argument("--plot", default="v_vert,x_ch32s1000,x_ch32",
                    help="the tags whose tables volume_sparse.png shows, one panel a volume with "
                         "baselines (its table from the first tag that has it)")
    s = sub.add_parser("speed")
    s.add_argument("--size", default="240,240,155")
    s.add_argument("--slices", type=int, default=8)
    s.add_argument("--config", default="volume")
    s.add_argument("--set", dest="overrides", action="append", default=[])
    s.add_argument("--baselines", default="copy,forest")
    s.add_argument("--tag", default="")
    pm = sub.add_parser("predict-modes")
    pm.add_argument("--size", default="240,240,155")
    pm.add_argument("--slices", type=int, default=8)
    pm.add_argument("--config", default="volume")
    pm.add_argument("--set", dest="overrides", action="append", default=[])
    pm.add_argument("--modes", default="0.5+flip,0.5,0.25+flip,0.25,0+flip,0",
                    help="prediction modes: OVERLAP (data.predict_overlap) or OVERLAP+flip (and the mirror tiling)")
    pm.add_argument("--tag", default="")
    c = sub.add_parser("costs")
    c.add_argument("--size", default="240,240,155")
    c.add_argument("--config", default="volume")
    c.add_argument("--set", dest="overrides", action="append", default=[])
    c.add_argument("--tag", default="")
    c.add_argument("--layouts", action="store_true", help="every layout of LAYOUTS in turn (docs/volume.md)")
    c.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    {"run": cmd_run, "report": cmd_report, "speed": cmd_speed, "predict-modes": cmd_predict_modes,
     "costs": cmd_costs}[args.cmd](args)


if __name__ == "__main__":
    main()
