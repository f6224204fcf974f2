"""Markdown tables from the benchmark JSON files (for the README's Performance section).

``python -m fhcnn.bench.report DIR`` prints the tables for whatever ``DIR`` holds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["markdown"]


def _load(d: Path, name: str) -> dict[str, Any] | None:
    p = d / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _mib(b: float | None) -> str:
    return "–" if b is None else f"{b / 2**20:.1f}"


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
    out = ["| method | peak MiB | peak − param. grads MiB | peak / ours | step s | time / ours | time / plain |",
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
    out = ["| network | paper: reversible / non-reversible (MB) | ours exact, saved: reversible / block / plain (MB) | in states: paper | ours |",
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


def markdown(d: str | Path) -> str:
    d = Path(d)
    parts: list[str] = []
    for name, fn in (("memory", _memory), ("table1", _table1), ("peers", _peers), ("time", _time),
                     ("drift", _drift)):
        r = _load(d, name)
        if r is not None:
            parts += [f"### {name}", ""] + fn(r)
    return "\n".join(parts)


if __name__ == "__main__":
    print(markdown(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results"))
