"""CPU speed of ``fhcnn segment`` / ``fhcnn change`` / ``fhcnn demo``: profiles and before/after runs.

    python benchmarks/speed.py profile [--tag _before] [--threads 1] [--predict-batch 1]
    python benchmarks/speed.py threads [--sample 6] [--repeats 2] [--compete 0]
    python benchmarks/speed.py summary          # speed.json / speed.png from the files above
    python benchmarks/speed.py run [--cases segment,change,demo] [--variants before,after]
                                   [--threads 0] [--compete 0] [--tag ""] [--after-set KEY=VALUE]

``profile``: a ``torch.profiler`` table of one training step (after two warm-up steps) and of
the prediction of the whole volume (one tiling: no shift, no flip), by operator and by Python
frame, for the ``video`` config
on the generated 48x96x160 video and the ``change`` config on the generated 96x96x32 scene;
written to ``benchmarks/results/profile_<case>_<train|predict><tag>.txt``.

``run``: each case end to end (training + prediction, held-out score) once per variant, the
variants alternating so both see the same machine load. ``before`` = the settings the package
shipped before the speed work (the old schedules and windows, one prediction window per forward,
torch's default thread count, one-sample convolutions left to PyTorch's slow reference kernel
instead of :func:`fhcnn.layers.conv`'s two halves), ``after`` = the shipped configs as they are
now. ``--compete N`` starts N busy-looping processes for the whole run (a busy machine). Writes
``benchmarks/results/speed<tag>.json`` and ``speed<tag>.png``; the load (``os.getloadavg``)
before and after each run is recorded.

Cases: ``segment`` (the generated 48x96x160 video, seed 0, labels on frames 0/23/47, the 45
others scored), ``change`` (``make_bitemporal_scene(96, 96, 32, seed=0)``, 8.8 % of the pixels
labelled, the rest scored; see ``change_detection.py``), ``landsat`` (Taizhou, 30 % of the
reference trains, 70 % scored), ``demo`` (the demo's 32x64x96 video), ``davis:<seq>`` (DAVIS
2016, first 48 frames, scale 0.2, scored at full size).
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

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: settings of the package before the speed work (issue #16), per config, as ``--set`` overrides
BEFORE: dict[str, list[str]] = {
    "video": ["data.window_depth=16", "train.steps=1000", "train.warmup_steps=20", "train.schedule=cosine",
              "train.lr=0.002",
              "data.batch_size=2", "data.predict_shifts=4", "data.predict_flip=true",
              "data.predict_batch=1", "train.threads=-1"],
    "video-demo": ["data.window_depth=16", "train.steps=400", "train.warmup_steps=10", "train.schedule=cosine",
                   "train.lr=0.002",
                   "data.batch_size=2", "data.predict_shifts=4", "data.predict_flip=true",
                   "data.predict_batch=1", "train.threads=-1"],
    "change": ["train.steps=400", "train.warmup_steps=20", "train.schedule=cosine", "train.lr=0.002",
               "data.batch_size=4", "data.predict_shifts=2", "data.predict_flip=true",
               "data.predict_batch=1", "train.threads=-1"],
}


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
            "threads": torch.get_num_threads()}


def _demo_inputs(frames: int, height: int, width: int) -> Any:
    from fhcnn.apps.segment import VideoInputs
    from fhcnn.data.video import generate_video
    from fhcnn.options import IGNORE

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
            "miou": s["miou"], "steps": cfg.train.steps, "threads": torch.get_num_threads()}


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
            "threads": torch.get_num_threads()}


def run_case(name: str, variant: str, extra: list[str] | None = None) -> dict[str, Any]:
    """One case with one variant's settings (``extra``: overrides for both variants)."""
    extra = list(extra or [])

    def ovr(config: str) -> list[str]:
        return (BEFORE[config] if variant == "before" else []) + extra

    if name == "segment":
        return _video_case("video", 48, 96, 160, ovr("video"))
    if name == "demo":
        return _demo_case(ovr("video-demo"))
    if name == "demo-video":  # the demo's pipeline without the demo's extras (sampled runs)
        return _video_case("video-demo", 32, 64, 96, ovr("video-demo"))
    if name.startswith("davis:"):
        return _video_case("video", 48, 0, 0, ovr("video"), scale=0.2, davis=name.split(":", 1)[1])
    if name == "change":
        return _change_case("generated", ovr("change"))
    if name == "landsat":
        return _change_case("landsat", ovr("change"), steps=300 if variant == "before" else None)
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
    from fhcnn.engine.inference import _starts
    from fhcnn.engine.sizes import round_up

    total = 0
    for o in sorted({int(round(i * multiple / shifts)) % multiple for i in range(shifts)}):
        oo = [o if (axis > 0 or shift_depth) else 0 for axis in range(3)]
        padded = [round_up(n + oa, multiple) for n, oa in zip(size, oo)]
        win = [p if (w <= 0 or w >= p) else round_up(w, multiple) for w, p in zip(window, padded)]
        n = 1
        for p_, w_ in zip(padded, win):
            n *= len(_starts(p_, min(w_, p_), multiple))
        total += n * (2 if flip else 1)
    return total


def sampled_case(name: str, variant: str, extra: list[str], sample: int) -> dict[str, Any]:
    """Train only ``sample`` steps and predict one tiling (no shift, no flip); the whole run's
    wall time is projected as ``train_s / sample * steps + predict_s(one tiling) * windows(all
    tilings) / windows(one tiling) + the rest``; the score is not reported."""
    from fhcnn.config import load_config
    from fhcnn.engine import size_multiple_of

    config, kind = _config_of(name)
    base = (BEFORE[config] if variant == "before" else []) + extra
    full = load_config(kind, config, base)
    steps = 300 if (name == "landsat" and variant == "before") else full.train.steps
    short = [f"train.steps={sample}", f"train.warmup_steps={min(full.train.warmup_steps, sample)}",
             "data.predict_shifts=1", "data.predict_flip=false"]
    d = full.data
    if name in ("change", "landsat"):
        from change_detection import load_case, run_net

        case = load_case("generated" if name == "change" else "landsat", None, 0)
        t0 = time.perf_counter()
        r = run_net(case, "hyperbolic", sample, 0, [o for o in base if not o.startswith("train.steps=")] + short[1:])
        wall, train_s, pred_s = time.perf_counter() - t0, r["train_time_s"], r["predict_time_s"]
        h, w, b = case["before"].shape
        size, win, shift_depth = [b, h, w], [0, d.window_height, d.window_width], False
    else:
        r = run_case("demo-video" if name == "demo" else name, variant, extra + short)
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
            "threads": torch.get_num_threads()}


def _worker(name: str, variant: str, threads: int, sample: int, after: list[str], q: Any) -> None:
    extra = [f"train.threads={threads}"] if threads else []
    if variant == "after":
        extra += after
    else:  # the package before #16 sent one-sample convolutions to PyTorch's slow reference kernel
        import fhcnn.layers
        fhcnn.layers._one_sample_slow_on_cpu = lambda x, w: False
    try:
        q.put(sampled_case(name, variant, extra, sample) if sample else run_case(name, variant, extra))
    except BaseException as e:  # noqa: BLE001 - reported in the JSON
        q.put({"error": f"{type(e).__name__}: {e}"})


def run(args: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    competitors = [ctx.Process(target=_busy, daemon=True) for _ in range(args.compete)]
    for p in competitors:
        p.start()
    results: list[dict[str, Any]] = []
    out = RESULTS / f"speed{args.tag}"
    try:
        for name in args.cases.split(","):
            for variant in args.variants.split(","):
                load0 = os.getloadavg()[0]
                q = ctx.Queue()
                p = ctx.Process(target=_worker, args=(name, variant, args.threads, args.sample,
                                                       args.after_set, q))
                p.start()
                r = q.get()
                p.join()
                r.update(case=name, variant=variant, after_set=args.after_set if variant == "after" else [],
                         load_before=round(load0, 2), load_after=round(os.getloadavg()[0], 2), compete=args.compete)
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
    """Bars: wall time (measured, or projected from sampled steps) per case and variant,
    labelled with the held-out mIoU where the run was complete."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "wall_s" in r or "projected_wall_s" in r]
    cases = list(dict.fromkeys(f"{r['case']} (+{r['compete']} busy)" for r in ok))
    variants = list(dict.fromkeys(r["variant"] for r in ok))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cases) + 2), 4))
    wdt = 0.8 / max(1, len(variants))
    for j, v in enumerate(variants):
        for i, c in enumerate(cases):
            rs = [r for r in ok if f"{r['case']} (+{r['compete']} busy)" == c and r["variant"] == v]
            if not rs:
                continue
            wall = float(np.mean([r.get("wall_s", r.get("projected_wall_s")) for r in rs]))
            ax.bar(i + j * wdt, wall, wdt, color=f"C{j}", label=v if i == 0 else None)
            if "miou" in rs[0]:
                ax.text(i + j * wdt, wall, f"{np.mean([r['miou'] for r in rs]):.3f}", ha="center",
                        va="bottom", fontsize=7)
    ax.set_xticks([i + wdt * (len(variants) - 1) / 2 for i in range(len(cases))], cases, fontsize=8)
    ax.set_ylabel("wall time (s): training + prediction\n(measured, or projected from sampled steps)")
    ax.set_title("CPU speed, before / after side by side per case (the load differs between cases; "
                 "labels: held-out mIoU)", fontsize=8)
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------- profile
def _profile_tables(fn: Callable[[], Any], title: str) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=True) as prof:
        fn()
    ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=45)
    shapes = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=35, max_shapes_column_width=70)
    frames = prof.key_averages(group_by_stack_n=4).table(
        sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=35, max_src_column_width=90)
    return (f"# {title}\n# torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
            f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n\n## by operator\n{ops}\n"
            f"## by operator and input shape\n{shapes}\n## by Python frame (top 4 frames)\n{frames}\n")


def profile_case(kind: str, tag: str, batch: int) -> None:
    from fhcnn.apps.segment.pipeline import frames_to_volume
    from fhcnn.config import load_config
    from fhcnn.data.hyperspectral import make_bitemporal_scene, sample_labels
    from fhcnn.data.video import generate_video
    from fhcnn.engine import SegmentConfig
    from fhcnn.engine.losses import SegmentationLoss, class_weights
    from fhcnn.engine.models import DepthMean, build_model
    from fhcnn.engine.plan import DenseInputs, class_positions, prepare
    from fhcnn.engine.sampling import WindowSampler
    from fhcnn.training.trainer import step_generator

    if kind == "video":

        video, masks = generate_video(None, 48, 96, 160, objects=2, seed=0)
        vol = torch.as_tensor(frames_to_volume(video))
        lab = torch.full(masks.shape, 255, dtype=torch.long)
        lab[[0, 23, 47]] = torch.as_tensor(masks[[0, 23, 47]]).long()
        cfg = load_config(SegmentConfig, "video", [])
        k, reduce = 3, False
    else:
        from fhcnn.apps.change import ChangeConfig, build_volume

        s = make_bitemporal_scene(96, 96, 32, seed=0)
        train, _ = sample_labels(s.change, 0.088, 0)
        vol = torch.as_tensor(build_volume(s.before, s.after))
        lab = torch.as_tensor(train).long()
        from dataclasses import replace

        ccfg = load_config(ChangeConfig, "change", [])
        cfg = SegmentConfig(model=ccfg.model, data=replace(ccfg.data, reduce_depth=True), train=ccfg.train)
        k, reduce = 2, True
    d = cfg.data
    seg = build_model(cfg.model, vol.shape[0], k)
    flat = vol.flatten(1)
    seg.set_normalization(flat.mean(1), flat.std(1))
    model: torch.nn.Module = DepthMean(seg) if reduce else seg
    cfg.data.reduce_depth = reduce
    plan = prepare(DenseInputs(vol, lab.to(torch.uint8), k), cfg)
    win = plan.train_window
    sampler = WindowSampler(plan.volume, plan.labels, win, d, seg.std, class_positions(plan))
    lossf = SegmentationLoss(class_weights(lab, k, d.balance), d.dice, reduce)
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def step(s: int) -> None:
        x, y = sampler(s, step_generator(0, s))
        loss = lossf(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    for s in range(2):
        step(s)
    t0 = time.perf_counter()
    step(2)
    t_step = time.perf_counter() - t0
    text = _profile_tables(lambda: step(3), f"one training step, {kind} ({cfg.data.batch_size} windows "
                                            f"of {win}); unprofiled step {t_step:.3f} s")
    (RESULTS / f"profile_{kind}_train{tag}.txt").write_text(text)
    print(text[:3000])
    from fhcnn.engine.inference import predict_volume
    from fhcnn.engine.train import SegmentationResult

    res = SegmentationResult(model=model, config=cfg, num_classes=k, window=win, plan=plan)
    # one tiling (no shift, no flip): the per-window cost; the full prediction repeats it
    # predict_shifts * (1 + predict_flip) times
    kw: dict[str, Any] = dict(shifts=1, flip=False, window=res.predict_window,
                              shift_depth=not d.reduce_depth, batch=batch)
    t0 = time.perf_counter()
    text = _profile_tables(lambda: predict_volume(model, vol, **kw),
                           f"prediction of the whole volume {tuple(vol.shape)}, {kind} ({kw})")
    text = text.replace("\n", f"; profiled wall {time.perf_counter() - t0:.1f} s\n", 1)
    (RESULTS / f"profile_{kind}_predict{tag}.txt").write_text(text)
    print(text[:3000])


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
    (RESULTS / f"speed_threads{args.tag}.json").write_text(json.dumps(
        {"cpu_count": os.cpu_count(), "default_threads": default, "rows": rows}, indent=1) + "\n")


def _load(name: str) -> dict[str, Any]:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else {}


def _rows(name: str, case: str, variant: str) -> list[dict[str, Any]]:
    return [r for r in _load(name).get("results", []) if r.get("case") == case and r.get("variant") == variant]


def summarize() -> None:
    """``speed.json`` / ``speed.png``: one before/after row per goal of issue #16, from the result
    files the other modes wrote (before-scores of complete runs from the benchmarks' results)."""
    goals = [  # (goal, case, sampled file, complete after-run file, before score, its source)
        ("fhcnn segment, generated 48x96x160", "segment", "speed_sampled.json", "speed_after_segment.json",
         0.984, "docs/segmentation.md (1000 steps, previous video config)"),
        ("fhcnn change, generated 96x96x32", "change", "speed_sampled_change.json", "speed_after_cd.json",
         _load("change_generated.json").get("results", {}).get("hyperbolic", {}).get("metrics", {}).get("miou"),
         "change_generated.json"),
        ("fhcnn change, Taizhou 400x400x6", "landsat", "speed_sampled_change.json", "speed_after_landsat.json",
         _load("change_landsat.json").get("results", {}).get("hyperbolic", {}).get("metrics", {}).get("miou"),
         "change_landsat.json"),
        ("fhcnn demo, 32x64x96", "demo", "speed_sampled.json", "speed_after_demo320.json", 0.942,
         "docs/segmentation.md (400 steps, previous video-demo config)"),
        ("DAVIS goat, scale 0.2", "davis:goat", "", "speed_after_goat.json",
         _load("davis_hyperbolic_goat.json").get("results", [{}])[0].get("miou"), "davis_hyperbolic_goat.json"),
    ]
    out, bars = [], []
    for goal, case, sampled, after_file, before_miou, source in goals:
        row: dict[str, Any] = {"goal": goal, "before_miou": before_miou, "before_miou_source": source}
        for variant in ("before", "after"):
            rs = _rows(sampled, case, variant) if sampled else []
            if rs and variant == "after":  # re-projected to the shipped config's steps (it may have moved)
                from fhcnn.config import load_config

                config, kind = _config_of(case)
                steps = load_config(kind, config, []).train.steps
                rs = [{**r, "projected_wall_s": round(r["projected_wall_s"] - r["train_s"]
                                                      + r["train_s_per_step"] * steps, 1)} for r in rs]
            if rs:
                row[f"{variant}_projected_wall_s"] = float(np.mean([r["projected_wall_s"] for r in rs]))
                row[f"{variant}_load"] = rs[0]["load_before"]
                bars.append({"case": case, "variant": variant, "compete": 0,
                             "projected_wall_s": row[f"{variant}_projected_wall_s"],
                             **({"miou": before_miou} if variant == "before" and before_miou else {})})
        after = _rows(after_file, case, "after")
        if after:
            row.update(after_miou=after[-1]["miou"], after_complete_wall_s=after[-1]["wall_s"],
                       after_complete_load=after[-1]["load_before"])
            for b in bars:
                if b["case"] == case and b["variant"] == "after":
                    b["miou"] = after[-1]["miou"]
        if "before_projected_wall_s" in row and "after_projected_wall_s" in row:
            row["after_over_before"] = round(row["after_projected_wall_s"] / row["before_projected_wall_s"], 3)
        pair = _load("speed_segment_pair.json").get("results", []) if case == "segment" else []
        if pair:
            row["side_by_side_complete_runs"] = pair
        out.append(row)
    threads = _load("speed_threads.json")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "speed.json").write_text(json.dumps({"goals": out, "threads": threads}, indent=1) + "\n")
    plot(bars, RESULTS / "speed.png")
    print(json.dumps(out, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["profile", "run", "threads", "summary"])
    p.add_argument("--repeats", type=int, default=2, help="threads: alternating repeats")
    p.add_argument("--cases", default="segment,change,demo")
    p.add_argument("--variants", default="before,after")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = the package's choice)")
    p.add_argument("--compete", type=int, default=0, help="busy-looping competitor processes")
    p.add_argument("--sample", type=int, default=0,
                   help="run: train only this many steps, project the wall time (no score)")
    p.add_argument("--kinds", default="video,change", help="profile: which networks")
    p.add_argument("--tag", default="")
    p.add_argument("--after-set", action="append", default=[], metavar="KEY=VALUE",
                   help="run: an override of the shipped config for the 'after' variant only")
    p.add_argument("--predict-batch", type=int, default=4, help="profile: windows per network call")
    args = p.parse_args()
    if args.mode == "summary":
        summarize()
    elif args.mode == "threads":
        threads_case(args)
    elif args.mode == "profile":
        torch.set_num_threads(args.threads or 1)
        for kind in args.kinds.split(","):
            profile_case(kind, args.tag, args.predict_batch)
    else:
        run(args)


if __name__ == "__main__":
    main()
