"""CPU time of ``fhcnn segment`` / ``fhcnn change`` / ``fhcnn demo`` end to end, the thread
choice, and profiles of a training step and a prediction.

    python benchmarks/speed.py run [--cases change,landsat,segment,demo] [--set KEY=VALUE ...]
                                   [--threads 0] [--sample N] [--compete 0] [--tag configs]
    python benchmarks/speed.py steps [--cases demo,segment,change] [--sample 20] [--repeats 2]
    python benchmarks/speed.py threads [--sample 6] [--repeats 2] [--compete 0]
    python benchmarks/speed.py profile [--cases segment,change] [--sample 20] [--threads 1]

``run``: each case end to end (training + prediction, held-out score) with its shipped config
(plus the ``--set`` overrides), each in a fresh process, one after the other. Writes
``benchmarks/results/speed_<tag>.json`` (default ``speed_configs.json``): per run the wall,
training and prediction seconds, the held-out mIoU, the steps, the ``train.threads`` setting
(0: the free cores, chosen during the run), the load average
before and after, and :func:`fhcnn.bench.reference.environment` (CPU model, threads, load and
the seconds of the fixed reference workload, measured in the same process just before the
run). ``--sample N`` trains only N steps and predicts one tiling, and projects the whole run's
wall time from them (no score). ``--compete N`` starts N busy-looping processes for the whole
run (a busy machine).

Cases: ``segment`` (the generated 48x96x160 video, seed 0, labels on frames 0/23/47, the 45
others scored), ``change`` (``make_bitemporal_scene(96, 96, 32, seed=0)``, 8.8 % of the pixels
labelled, the rest scored; see ``change_detection.py``), ``landsat`` (Taizhou, 30 % of the
reference trains, 70 % scored), ``demo`` (``fhcnn demo``: its 32x64x96 video, its figures),
``davis:<seq>`` (DAVIS 2016, first 48 frames, scale 0.2, scored at full size).

``steps``: seconds per training step (one thread, ``--sample`` steps, ``--repeats`` times) in units
of the reference workload timed just before and after each run, and one prediction in the same
units (``speed_steps.json``): a ratio that holds under load, where seconds do not.

``threads``: seconds per training step of the ``video`` config with torch's default thread
count and with ``train.threads=0``, alternating (``speed_threads<tag>.json``). ``profile``: the
``torch.profiler`` tables (by operator, by input shape, by Python frame) of ``--sample``
training steps and one prediction tiling of each case, on one thread unless ``--threads``
(``profile_<case>.txt``).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _paths import RESULTS  # noqa: E402


def _busy() -> None:  # a competing process: one core's worth of pure Python work
    x = 0
    while True:
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF


# ---------------------------------------------------------------- cases
def _video_case(config: str, frames: int, height: int, width: int, overrides: list[str],
                scale: float = 1.0, davis: str | None = None) -> dict[str, Any]:
    import copy

    from segmentation_video import davis_inputs, generated_inputs

    from fhcnn.apps.segment import segment_video
    from fhcnn.config import load_config
    from fhcnn.engine import SegmentConfig

    if davis:
        inputs = davis_inputs(davis)
    elif frames == 48:
        inputs = generated_inputs(0, frames, height, width)
    else:  # the demo's video: labels on the first, middle and last frame
        inputs = _demo_inputs(frames, height, width)
    cfg = load_config(SegmentConfig, config, overrides)
    cfg = copy.deepcopy(cfg)
    cfg.data.scale = scale
    t0 = time.perf_counter()
    m = segment_video(inputs, cfg, None, quiet=True, log=lambda s: print("   " + s, file=sys.stderr, flush=True))
    return {"wall_s": round(time.perf_counter() - t0, 1), "train_s": m["train_time_s"],
            "predict_s": m["predict_time_s"], "miou": m["miou"], "steps": cfg.train.steps,
            "volume": m["volume_size"],
            "train_threads": cfg.train.threads}


def _demo_inputs(frames: int, height: int, width: int) -> Any:
    from fhcnn.apps.segment import VideoInputs
    from fhcnn.data.video import generate_video
    from fhcnn.engine import IGNORE

    video, masks = generate_video(None, frames=frames, height=height, width=width, objects=2, seed=0)
    lf = [0, (frames - 1) // 2, frames - 1]
    lab = np.full_like(masks, IGNORE)
    lab[lf] = masks[lf]
    return VideoInputs(video, [f"{i:05d}" for i in range(frames)], lab, lf, masks,
                       "generated ground truth", [0, 1, 2], {"video": "demo"})


def _demo_case(overrides: list[str]) -> dict[str, Any]:
    import tempfile

    from fhcnn.apps.segment.demo import run_demo
    from fhcnn.config import load_config
    from fhcnn.engine import SegmentConfig

    cfg = load_config(SegmentConfig, "video-demo", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = run_demo(Path(tmp), cfg, quiet=True, say=lambda m: None)
    return {"wall_s": round(time.perf_counter() - t0, 1), "train_s": s["train_time_s"],
            "miou": s["miou"], "steps": cfg.train.steps, "train_threads": cfg.train.threads}


def _change_case(mode: str, overrides: list[str], steps: int | None = None) -> dict[str, Any]:
    from change_detection import load_case, run_net

    case = load_case(mode, None, 0)
    from fhcnn.apps.change import ChangeConfig
    from fhcnn.config import load_config

    cfg = load_config(ChangeConfig, "change", overrides)
    n = steps or cfg.train.steps
    t0 = time.perf_counter()  # run_net takes the steps as an argument: drop them from the overrides
    r = run_net(case, "hyperbolic", n, 0, [o for o in overrides if not o.startswith("train.steps=")])
    return {"wall_s": round(time.perf_counter() - t0, 1), "train_s": round(r["train_time_s"], 2),
            "predict_s": round(r["predict_time_s"], 2), "miou": r["metrics"]["miou"], "steps": n,
            "train_threads": cfg.train.threads}


def run_case(name: str, overrides: list[str]) -> dict[str, Any]:
    """One case end to end with its shipped config plus ``overrides``."""
    if name == "segment":
        return _video_case("video", 48, 96, 160, overrides)
    if name == "demo":
        return _demo_case(overrides)
    if name == "demo-video":  # the demo's pipeline without the demo's extras (sampled runs)
        return _video_case("video-demo", 32, 64, 96, overrides)
    if name.startswith("davis:"):
        return _video_case("video", 48, 0, 0, overrides, scale=0.2, davis=name.split(":", 1)[1])
    if name == "change":
        return _change_case("generated", overrides)
    if name == "landsat":
        return _change_case("landsat", overrides)
    raise SystemExit(f"unknown case {name!r}")


def _config_of(name: str) -> tuple[str, Any]:
    from fhcnn.apps.change import ChangeConfig
    from fhcnn.engine import SegmentConfig

    if name in ("change", "landsat"):
        return "change", ChangeConfig
    return ("video-demo" if name == "demo" else "video"), SegmentConfig


def count_windows(size: list[int], multiple: int, window: list[int], shifts: int, flip: bool,
                  shift_depth: bool) -> int:
    """Network calls of one window that :func:`fhcnn.engine.predict_volume` makes (its tiling)."""
    from fhcnn.engine.sizes import round_up, window_starts

    total = 0
    for o in sorted({int(round(i * multiple / shifts)) % multiple for i in range(shifts)}):
        oo = [o if (axis > 0 or shift_depth) else 0 for axis in range(3)]
        padded = [round_up(n + oa, multiple) for n, oa in zip(size, oo)]
        win = [p if (w <= 0 or w >= p) else round_up(w, multiple) for w, p in zip(window, padded)]
        n = 1
        for p_, w_ in zip(padded, win):
            n *= len(window_starts(p_, min(w_, p_), multiple))
        total += n * (2 if flip else 1)
    return total


def sampled_case(name: str, overrides: list[str], sample: int) -> dict[str, Any]:
    """Train only ``sample`` steps and predict one tiling (no shift, no flip); the whole run's
    wall time is projected as ``train_s / sample * steps + predict_s(one tiling) * windows(all
    tilings) / windows(one tiling) + the rest``; the score is not reported."""
    from fhcnn.config import load_config
    from fhcnn.engine import size_multiple_of

    config, kind = _config_of(name)
    full = load_config(kind, config, overrides)
    steps = full.train.steps
    short = [f"train.steps={sample}", f"train.warmup_steps={min(full.train.warmup_steps, sample)}",
             "data.predict_shifts=1", "data.predict_flip=false"]
    d = full.data
    if name in ("change", "landsat"):
        from change_detection import load_case, run_net

        case = load_case("generated" if name == "change" else "landsat", None, 0)
        t0 = time.perf_counter()
        kept = [o for o in overrides if not o.startswith("train.steps=")]
        r = run_net(case, "hyperbolic", sample, 0, kept + short[1:])
        wall, train_s, pred_s = time.perf_counter() - t0, r["train_time_s"], r["predict_time_s"]
        h, w, b = case["before"].shape
        size, win, shift_depth = [b, h, w], [0, d.window_height, d.window_width], False
    else:
        r = run_case("demo-video" if name == "demo" else name, overrides + short)
        wall, train_s, pred_s = r["wall_s"], r["train_s"], r.get("predict_s", 0.0)
        size, shift_depth = r["volume"], True
        win = [d.window_depth, d.window_height, d.window_width]
    m = size_multiple_of(full.model)
    ratio = (count_windows(size, m, win, d.predict_shifts, d.predict_flip, shift_depth)
             / count_windows(size, m, win, 1, False, shift_depth))
    return {"sampled_steps": sample, "steps": steps, "train_s_per_step": round(train_s / sample, 4),
            "train_s": round(train_s / sample * steps, 1), "predict_s_one_tiling": round(pred_s, 2),
            "predict_s": round(pred_s * ratio, 1), "tilings_windows_ratio": round(ratio, 2),
            "sample_wall_s": round(wall, 1),
            "projected_wall_s": round(train_s / sample * steps + pred_s * ratio + (wall - train_s - pred_s), 1),
            "train_threads": full.train.threads}


def _worker(name: str, threads: int, sample: int, overrides: list[str], q: Any) -> None:
    from fhcnn.bench.reference import environment

    overrides = ([f"train.threads={threads}"] if threads else []) + overrides
    try:
        env = environment()  # the machine, its load and the reference workload, just before the run
        r = sampled_case(name, overrides, sample) if sample else run_case(name, overrides)
        q.put({**r, "environment": env})
    except BaseException as e:  # noqa: BLE001 - reported in the JSON
        q.put({"error": f"{type(e).__name__}: {e}"})


def run(args: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    competitors = [ctx.Process(target=_busy, daemon=True) for _ in range(args.compete)]
    for p in competitors:
        p.start()
    results: list[dict[str, Any]] = []
    out = RESULTS / f"speed_{args.tag}"
    try:
        for name in args.cases.split(","):
            load0 = os.getloadavg()[0]
            q = ctx.Queue()
            p = ctx.Process(target=_worker, args=(name, args.threads, args.sample, args.overrides, q))
            p.start()
            r = q.get()
            p.join()
            r.update(case=name, overrides=args.overrides, load_before=round(load0, 2),
                     load_after=round(os.getloadavg()[0], 2), compete=args.compete)
            results.append(r)
            print(json.dumps(r), flush=True)
            payload = {"cpu_count": os.cpu_count(), "torch": torch.__version__,
                       "compete": args.compete, "results": results}
            RESULTS.mkdir(parents=True, exist_ok=True)
            (out.parent / (out.name + ".json")).write_text(json.dumps(payload, indent=1) + "\n")
    finally:
        for p in competitors:
            p.terminate()
    plot(results, out.parent / (out.name + ".png"))


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Bars: wall time (measured, or projected from sampled steps) per case, in seconds and in
    reference units, labelled with the held-out mIoU where the run was complete."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "wall_s" in r or "projected_wall_s" in r]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(ok) + 2), 4))
    for i, r in enumerate(ok):
        wall = r.get("wall_s", r.get("projected_wall_s"))
        ax.bar(i, wall, 0.7, color="C0")
        ref = r.get("environment", {}).get("reference_s")
        label = (f"{r['miou']:.3f}\n" if "miou" in r else "") + (f"{wall / ref:.0f} ref" if ref else "")
        ax.text(i, wall, label, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(ok)), [f"{r['case']} (+{r['compete']} busy)" for r in ok], fontsize=8)
    ax.set_ylabel("wall time (s): training + prediction\n(measured, or projected from sampled steps)")
    cpu = ok[0].get("environment", {}).get("cpu_model", "") if ok else ""
    ax.set_title(f"CPU time of the shipped configs ({cpu}; labels: held-out mIoU, reference units)", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------- profile
def steps_case(name: str, overrides: list[str], sample: int, repeats: int) -> dict[str, Any]:
    """Seconds per training step of case ``name`` on one thread, in units of the reference
    workload timed just before and just after each of ``repeats`` sampled runs (``sample``
    steps and one prediction tiling): the ratio holds under load, where seconds do not."""
    from fhcnn.bench.reference import environment, reference_seconds

    env = environment()
    rows = []
    for rep in range(repeats):
        before = reference_seconds()
        r = sampled_case(name, ["train.threads=1", *overrides], sample)
        after = reference_seconds()
        ref = (before + after) / 2
        rows.append({"repeat": rep, "s_per_step": r["train_s_per_step"],
                     "predict_s_one_tiling": r["predict_s_one_tiling"],
                     "tilings_windows_ratio": r["tilings_windows_ratio"], "steps": r["steps"],
                     "reference_s_before": round(before, 4), "reference_s_after": round(after, 4),
                     "step_in_reference": round(r["train_s_per_step"] / ref, 3),
                     "prediction_in_reference": round(r["predict_s_one_tiling"] * r["tilings_windows_ratio"] / ref, 1),
                     "load": round(os.getloadavg()[0], 2)})
        print(json.dumps(rows[-1]), flush=True)
    ratio = float(np.median([x["step_in_reference"] for x in rows]))
    pred = float(np.median([x["prediction_in_reference"] for x in rows]))
    return {"case": name, "overrides": overrides, "sample": sample, "rows": rows, "environment": env,
            "step_in_reference": round(ratio, 3), "prediction_in_reference": round(pred, 1),
            "run_in_reference": round(ratio * rows[0]["steps"] + pred)}


def _profile_tables(fn: Callable[[], Any], title: str) -> str:
    from torch.profiler import ProfilerActivity, profile

    from fhcnn.bench.reference import environment

    env = environment()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=True) as prof:
        fn()
    ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=45)
    shapes = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=35, max_shapes_column_width=70)
    frames = prof.key_averages(group_by_stack_n=4).table(
        sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=35, max_src_column_width=90)
    return (f"# {title}\n# torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
            f"load {env['load_1min']} on {os.cpu_count()} CPUs ({env['cpu_model']}); reference workload "
            f"{env['reference_s']} s (fhcnn.bench.reference)\n\n## by operator\n{ops}\n"
            f"## by operator and input shape\n{shapes}\n## by Python frame (top 4 frames)\n{frames}\n")


def profile_case(name: str, overrides: list[str], sample: int, tag: str) -> Path:
    """``profile_<name><tag>.txt``: the profiler tables of ``sample`` training steps and one
    prediction tiling of case ``name`` (:func:`sampled_case`), after an unprofiled run of the
    same (warm-up; its seconds per step and per tiling head the file)."""
    plain = sampled_case(name, overrides, sample)
    title = (f"{name}: {sample} training steps and one prediction tiling ({' '.join(overrides) or 'shipped config'}); "
             f"unprofiled {plain['train_s_per_step']} s a step, {plain['predict_s_one_tiling']} s a tiling")
    text = _profile_tables(lambda: sampled_case(name, overrides, sample), title)
    path = RESULTS / f"profile_{name.replace(':', '_')}{tag}.txt"
    path.write_text(text)
    print(text[:3000])
    return path


def threads_case(args: argparse.Namespace) -> None:
    """Seconds per training step of the ``video`` config with torch's default thread count (all
    cores) and with ``train.threads=0`` (the free physical cores), alternating, on the machine
    as it is (plus ``--compete`` busy processes); writes ``speed_threads<tag>.json``."""
    from segmentation_video import generated_inputs

    from fhcnn import log as flog
    from fhcnn.apps.segment.pipeline import frames_to_volume
    from fhcnn.config import load_config
    from fhcnn.engine import SegmentConfig, train_segmentation

    ctx = mp.get_context("spawn")
    competitors = [ctx.Process(target=_busy, daemon=True) for _ in range(args.compete)]
    for p in competitors:
        p.start()
    from fhcnn.bench.reference import environment

    env = environment()
    inp = generated_inputs(0, 48, 96, 160)
    vol = torch.as_tensor(frames_to_volume(inp.frames))
    rows = []
    default = torch.get_num_threads()
    try:
        for rep in range(args.repeats):
            for label, threads in (("torch default", -1), ("auto (train.threads=0)", 0)):
                torch.set_num_threads(default)
                cfg = load_config(SegmentConfig, "video", [f"train.steps={args.sample or 10}",
                                                           f"train.threads={threads}"])
                load0 = os.getloadavg()[0]
                said: list[str] = []
                handler = logging.Handler()
                handler.emit = lambda r: said.append(r.getMessage())  # type: ignore[method-assign]
                flog.logger.addHandler(handler)
                flog.logger.setLevel(logging.INFO)
                try:
                    res = train_segmentation(vol, inp.labels, cfg, num_classes=3, quiet=True)
                finally:
                    flog.logger.removeHandler(handler)
                chosen = [m for m in said if m.startswith("torch threads")] or [f"{default} (torch default)"]
                row = {"setting": label, "repeat": rep, "steps": cfg.train.steps,
                       "s_per_step": round(res.train_time_s / cfg.train.steps, 3), "load_before": round(load0, 2),
                       "compete": args.compete, "threads_chosen": chosen}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        for p in competitors:
            p.terminate()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"speed_threads{'_' + args.tag if args.tag else ''}.json").write_text(json.dumps(
        {"cpu_count": os.cpu_count(), "default_threads": default, "environment": env, "rows": rows},
        indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["profile", "run", "steps", "threads"])
    p.add_argument("--repeats", type=int, default=2, help="threads, steps: alternating repeats")
    p.add_argument("--cases", default="change,landsat,segment,demo", help="run, profile: comma list")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="run: an override of the shipped configs (repeatable)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = the package's choice)")
    p.add_argument("--compete", type=int, default=0, help="busy-looping competitor processes")
    p.add_argument("--sample", type=int, default=0,
                   help="run: train only this many steps, project the wall time (no score); "
                        "profile: the steps profiled (default 20)")
    p.add_argument("--tag", default="", help="suffix of the result files (run: speed_<tag>.json, default configs)")
    args = p.parse_args()
    if args.mode == "threads":
        threads_case(args)
    elif args.mode == "steps":
        torch.set_num_threads(1)
        out = [steps_case(name, args.overrides, args.sample or 20, args.repeats) for name in args.cases.split(",")]
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"speed_steps{'_' + args.tag if args.tag else ''}.json").write_text(
            json.dumps({"results": out}, indent=1) + "\n")
    elif args.mode == "profile":
        torch.set_num_threads(args.threads or 1)
        for name in args.cases.split(","):
            profile_case(name, [f"train.threads={args.threads or 1}", *args.overrides], args.sample or 20,
                         f"_{args.tag}" if args.tag else "")
    else:
        args.tag = args.tag or "configs"
        run(args)


if __name__ == "__main__":
    main()
