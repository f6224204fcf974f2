"""Tables of what ``fhcnn bench`` and ``benchmarks/gpu_memory.py`` measure: memory (the
paper's Figure 1), Table 1, peers, step time, numerical drift, the GPU check."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._files import load, mib, need


def memory(r: dict[str, Any]) -> list[str]:
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
                cells.append(f"{mib(rec['saved'][m][i])} / {mib(rec['peak'][m][i])} / "
                             f"{mib(act[m][i])}")
            pb = rec.get("param_bytes", [None] * len(rec["x"]))[i]
            sr = rec["saved"]["plain"][i] / rec["saved"]["reversible"][i]
            pr, br, rr = (act[m][i] for m in ("plain", "block", "reversible"))
            ratio = f"{pr / rr:.1f} | {br / rr:.1f}" if pr and rr and br else "– | –"
            out.append(f"| {x} | " + " | ".join(cells) + f" | {mib(pb)} | {sr:.0f} | {ratio} |")
        out.append("")
    return out


def step_time(r: dict[str, Any]) -> list[str]:
    ref = r.get("environment", {}).get("reference_s")
    out = ["| layers | stages | plain (s) | block / plain | reversible / plain |"
           + (" plain / reference |" if ref else ""),
           "|---:|---:|---:|---:|---:|" + ("---:|" if ref else "")]
    for row in r["rows"]:
        out.append(f"| {row['depth']} | {row['spec'].get('stages', 0)} | {row['median']['plain']:.3f} | "
                   f"{row['ratio']['block']:.2f} | {row['ratio']['reversible']:.2f} |"
                   + (f" {row['median']['plain'] / ref:.1f} |" if ref else ""))
    return out + [""]


def peers(r: dict[str, Any]) -> list[str]:
    rows = r["rows"]
    state = r["state_bytes"]
    out = ["| method | peak MiB | peak − param. grads MiB | peak / fhcnn | step s | time / fhcnn | time / plain |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for m in r["methods"]:
        x = rows[m]
        best = " (best k)" if m == r.get("best_checkpoint") else ""
        out.append(f"| {m}{best} | {mib(x.get('peak'))} | {mib(x.get('peak_minus_param_grads'))} | "
                   f"{x.get('peak_vs_reversible', float('nan')):.2f} | "
                   f"{x['median_s']:.3f} | {x['time_vs_reversible']:.2f} | {x['time_vs_plain']:.2f} |")
    out.append(f"\nOne state = {state / 2**20:.2f} MiB.")
    env = r.get("environment", {})
    if env.get("reference_s") and "reversible" in rows:
        out.append(f"Measured on {env['cpu_model']}, {env['torch_threads']} thread(s); the reference workload "
                   f"took {env['reference_s']:.3f} s, a fully reversible step "
                   f"{rows['reversible']['median_s'] / env['reference_s']:.1f}× that.")
    return out + [""]


def table1(r: dict[str, Any]) -> list[str]:
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


def drift(r: dict[str, Any]) -> list[str]:
    fa = r["first_depth_above_threshold"]
    from fhcnn.bench.drift import usable_depth

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


BENCH = (("memory", memory), ("table1", table1), ("peers", peers), ("time", step_time),
          ("drift", drift))


def markdown(d: str | Path) -> str:
    """The benchmark tables (memory, table1, peers, time, drift) for whatever ``d`` holds."""
    d = Path(d)
    parts: list[str] = []
    for name, fn in BENCH:
        r = load(d, name)
        if r is not None:
            parts += [f"### {name}", ""] + fn(r)
    return "\n".join(parts)


def bench_table(name: str, fn: Callable[[dict[str, Any]], list[str]]) -> Callable[[Path], str]:
    return lambda d: "\n".join(fn(need(d, name))).rstrip("\n")


def memory_headline(d: Path) -> str:
    rec = need(d, "memory")["sweeps"]["depth"]
    i = len(rec["x"]) - 1
    act = rec.get("peak_minus_param_grads", rec["peak"])
    s_p, s_r = rec["saved"]["plain"][i], rec["saved"]["reversible"][i]
    return (f"At {rec['x'][i]} layers ({_spec(rec['specs'][i])}) one training step keeps **{mib(s_r)} MiB** for the backward pass, fully reversible, "
            f"against {mib(s_p)} MiB with plain autograd ({s_p / s_r:.0f}× less); the measured "
            f"step peak without parameter gradients is {mib(act['reversible'][i])} against "
            f"{mib(act['plain'][i])} MiB."
            + (f" The fully reversible bytes are the same from {rec['x'][0]} to {rec['x'][i]} layers."
               if len(set(rec["saved"]["reversible"])) == 1 else ""))


def _spec(sp: dict[str, Any]) -> str:
    size = "×".join([str(sp["size"])] * sp["dim"])
    return (f"{sp['dim']}D, {sp['channels']} channels, {size}, {sp['stages']} coarsenings and "
            f"{sp['stages']} refinements")


def gpu(d: Path) -> str:
    r = need(d, "gpu_h200")
    ds = r["depth_sweep"]
    pk = ds["peak_bytes"]
    out = [f"Peak memory of one training step ({r['gpu']}, torch {r['torch']}; 2D, "
           f"{ds['input'][1]} channels, {ds['input'][2]}×{ds['input'][3]}, one coarsening), MiB:", "",
           "| layers | plain | block | reversible |", "|---:|---:|---:|---:|"]
    for i, n in enumerate(ds["depths"]):
        out.append(f"| {n} | {mib(pk['plain'][i])} | {mib(pk['block'][i])} | **{mib(pk['reversible'][i])}** |")
    out += ["", "The paper's video network (`--config paper-video`) on DAVIS blackswan, "
            "saved for backward / peak of a training step:", "",
            "| training input | plain autograd | fully reversible | saved: plain / reversible |",
            "|---|---|---|---:|"]
    pv = r["paper_video_memory"]
    inputs = dict.fromkeys(k.split(", ", 1)[1] for k in pv)
    for inp in inputs:
        p, v = pv[f"plain, {inp}"], pv[f"reversible, {inp}"]
        out.append(f"| {inp} | {mib(p['activation_bytes'])} MiB / {p['peak_bytes'] / 2**30:.2f} GiB | "
                   f"**{mib(v['activation_bytes'])} MiB / {v['peak_bytes'] / 2**30:.2f} GiB** | "
                   f"{p['activation_bytes'] / v['activation_bytes']:.0f}× |")
    t = r["paper_video_training"]
    out += ["", f"Trained for {t['steps']} steps ({t['train_time_s']:.0f} s) on "
            f"{t['video']} at {t['volume_size'][1]}×{t['volume_size'][2]} (labels on frames "
            f"{', '.join(map(str, t['label_frames']))}; {t['parameters'] / 1e6:.1f} M parameters): "
            f"held-out mIoU **{t['miou']:.3f}**, J {t['J']:.3f} (copy nearest mask "
            f"{t['copy_nearest_baseline']['miou']:.3f}); prediction {t['predict_time_s']:.0f} s."]
    return "\n".join(out)


def volume_memory(stem: str) -> Callable[[Path], str]:
    """The table of :func:`volume_memory_table` for ``results/<stem>.json``."""
    return lambda d: volume_memory_table(d, stem)


def volume_memory_table(d: Path, stem: str = "volume_memory") -> str:
    """Peak resident memory and time of each phase of a whole dense run against the volume's
    size and the mode (``volume_memory.json``, ``fhcnn bench volume_memory``)."""
    r = need(d, stem)
    phases = ("read", "prepare", "train", "predict")
    out = ["| volume | mode | " + " | ".join(f"{p}: peak MiB, s" for p in phases) + " | held-out mIoU |",
           "|---|---|" + "---:|" * len(phases) + "---:|"]
    for row in r["rows"]:
        if row["rank"] != 0:
            continue
        mode = row["mode"] + (" (per process)" if "x2" in row["mode"] else "")
        cells = [f"{mib(row[p]['peak_rss'])}, {row[p]['seconds']:.0f}" if p in row else "–" for p in phases]
        out.append(f"| {'×'.join(map(str, row['shape']))} | {mode} | " + " | ".join(cells)
                   + f" | {row.get('miou', float('nan')):.3f} |")
    env = r.get("environment", {})
    if env.get("reference_s"):
        out.append(f"\nMeasured on {env['cpu_model']} ({env['cpu_count']} cores); the reference workload "
                   f"took {env['reference_s']:.3f} s.")
    return "\n".join(out)


def copy_memory(d: Path) -> str:
    """Peak resident memory and time of the one-time chunked copy of a compressed input
    (``copy_memory.json``, ``fhcnn bench copy_memory``)."""
    r = need(d, "copy_memory")
    out = ["| file | stored shape | uncompressed MiB | slices along | through the staging file | "
           "copy's peak above its start, MiB | s |",
           "|---|---|---:|---|---|---:|---:|"]
    for row in r["rows"]:
        along = "pages" if row["format"] == "tif" else "Z"
        out.append(f"| {row['dtype']} `.{row['format']}` | {'×'.join(map(str, row['stored_shape']))} | "
                   f"{row['volume_bytes'] / 2**20:.0f} | {along} | {'yes' if row['staged'] else 'no'} | "
                   f"{mib(row['peak_rss'] - row['rss_before'])} | {row['seconds']:.1f} |")
    env = r.get("environment", {})
    if env.get("reference_s"):
        out.append(f"\nMeasured on {env['cpu_model']} ({env['cpu_count']} cores); the reference workload "
                   f"took {env['reference_s']:.3f} s.")
    return "\n".join(out)


def volume_reads(d: Path) -> str:
    """Image voxels each process reads in each phase and output voxels it finishes, one process
    against a split in two (``volume_memory_split.json``)."""
    r = need(d, "volume_memory_split")
    out = ["| mode | process | prepare: voxels read | train: voxels read | predict: voxels read | "
           "output voxels finished | predict: peak MiB |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        reads = [f"{row[p]['voxels_read']:,}" for p in ("prepare", "train", "predict")]
        out.append(f"| {row['mode']} | {row['rank']} | " + " | ".join(reads)
                   + f" | {row['owned_voxels']:,} | {mib(row['predict']['peak_rss'])} |")
    shape = r["rows"][0]["shape"]
    out.append(f"\n{'×'.join(map(str, shape))} voxels ({int(np.prod(shape)):,}), `{r['config']}`.")
    return "\n".join(out)
