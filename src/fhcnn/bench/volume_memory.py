"""Peak memory of a whole dense run against the volume's size: out of core vs in memory.

For each size (``128^3``, ``512^3`` and ``512 x 1024 x 1024`` voxels; ``--quick``: ``64^3`` and
``128^3``) a generated ``cells`` volume (:mod:`fhcnn.data.synthetic_volumes`, a ``128^3`` one
repeated periodically) is written to disk as uint8 zarr with its truth and sparse labels (a few
labelled slices along each axis) and segmented
in a fresh process (``python -m fhcnn.bench.volume_memory '<job>'``) by the engine: prepare
(streamed statistics and label scan), train, predict into an on-disk zarr label volume, score
against the truth by chunk. The process reports the peak resident set (``VmHWM``) of each phase,
reset between phases (``/proc/self/clear_refs``), and the phase's wall time.

Modes: ``out-of-core`` (the volume read by window from zarr, the prediction finished chunk by
chunk into zarr: what every fhcnn run does) and ``in-memory`` (the same run with the volume and
labels loaded into memory first and the prediction's probabilities collected in one array, as a
script holding everything would; only where it fits in ``IN_MEMORY_MAX`` voxels); and
``out-of-core x2``: ``torchrun`` with 2 processes splitting the volume in space
(``parallel.space=2``), each reading its slab of every window and finishing its slab of the
output (the peak of each process is reported).

Writes ``volume_memory.json`` and ``volume_memory.png``.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["run", "work", "SIZES", "QUICK_SIZES", "worker", "NAME"]

NAME = "volume_memory"

#: (D, H, W) of the measured volumes.
SIZES: list[tuple[int, int, int]] = [(128, 128, 128), (512, 512, 512), (512, 1024, 1024)]
QUICK_SIZES: list[tuple[int, int, int]] = [(64, 64, 64), (128, 128, 128)]
#: The in-memory mode and the split (2 processes) run up to this many voxels (side by side with
#: the out-of-core run at the same size; at the larger sizes the out-of-core run alone takes
#: 20 minutes to over an hour of prediction on one CPU core).
IN_MEMORY_MAX = 128**3
#: The config the runs use, and its overrides: few training steps (training memory is set by
#: the window, not the steps), windows of 32 x 64 x 64 voxels and one tiling (each tiling costs
#: the same memory; the tiny config's 8^3 windows would take hours on the largest volume).
CONFIG = "volume-tiny"
OVERRIDES = ["train.steps=20", "data.window_depth=32", "data.window_height=64", "data.window_width=64",
             "data.predict_shifts=1", "data.predict_flip=false", "data.predict_batch=2"]
#: Labelled slices along each axis (evenly spread).
LABELLED_SLICES = 3


def _modes(voxels: int) -> list[tuple[str, int]]:
    """``(mode, processes)`` measured at a size."""
    small = voxels <= IN_MEMORY_MAX
    return [("out-of-core", 1)] + ([("in-memory", 1), ("out-of-core x2", 2)] if small else [])


def work(quick: bool) -> int:
    return sum(len(_modes(d * h * w)) for d, h, w in (QUICK_SIZES if quick else SIZES))


#: Side of the generated cells volume the measured volumes repeat (generating cells voxel by
#: voxel costs about a second per 64^3 block; the memory measured does not depend on content).
TILE = 128


def _write_inputs(root: Path, shape: tuple[int, int, int], seed: int = 0) -> dict[str, str]:
    """The image and truth (a generated ``TILE^3`` cells volume repeated periodically to
    ``shape``, uint8) and the sparse labels (``LABELLED_SLICES`` slices along each axis) as zarr
    arrays, written chunk by chunk."""
    import numpy as np
    import zarr

    from ..data.synthetic_volumes import generate_volume

    path = root / f"cells-{'x'.join(map(str, shape))}.zarr"
    tile = tuple(min(TILE, n) for n in shape)
    base_img, base_lab = generate_volume("cells", tile, seed, dtype="uint8")
    zarr.open_group(str(path), mode="w")
    img = zarr.open_array(str(path / "image"), mode="w", shape=shape, chunks=(64, 64, 64), dtype=np.uint8)
    truth = zarr.open_array(str(path / "labels"), mode="w", shape=shape, chunks=(64, 64, 64), dtype=np.uint8)
    for z in range(0, shape[0], 64):
        for y in range(0, shape[1], 64):
            for x in range(0, shape[2], 64):
                box = (slice(z, min(z + 64, shape[0])), slice(y, min(y + 64, shape[1])),
                       slice(x, min(x + 64, shape[2])))
                idx = np.ix_(*(np.arange(b.start, b.stop) % t for b, t in zip(box, tile)))
                img[box], truth[box] = base_img[idx], base_lab[idx]
    sparse = zarr.open_array(str(path / "sparse"), mode="w", shape=shape, chunks=(64, 64, 64), dtype=np.uint8,
                             fill_value=255)
    for axis, n in enumerate(shape):
        for i in np.linspace(0, n - 1, LABELLED_SLICES + 2)[1:-1].round().astype(int):
            key = tuple(slice(int(i), int(i) + 1) if a == axis else slice(None) for a in range(3))
            if axis == 0:
                sparse[key] = truth[key]
            else:  # a plane across the other axes: written slab by slab along D
                for z0 in range(0, shape[0], 64):
                    k2 = (slice(z0, min(z0 + 64, shape[0])),) + key[1:]
                    sparse[k2] = truth[k2]
    return {"image": f"{path}:image", "truth": f"{path}:labels", "labels": f"{path}:sparse"}


def _open(spec: str) -> Any:
    import zarr

    path, _, inner = spec.partition(".zarr:")
    return zarr.open_array(path + ".zarr/" + inner, mode="r")


class _Counted:
    """An array-like that counts the voxels read from it (``voxels``)."""

    def __init__(self, array: Any) -> None:
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim
        self.voxels = 0

    def __getitem__(self, key: Any) -> Any:
        out = self.array[key]
        self.voxels += int(getattr(out, "size", 1))
        return out


def _phase(name: str, record: dict[str, Any], fn: Callable[[], Any], counted: _Counted | None = None) -> Any:
    from ._worker import _reset_peak, peak_rss

    gc.collect()
    _reset_peak()
    before = counted.voxels if counted is not None else 0
    t0 = time.perf_counter()
    out = fn()
    record[name] = {"peak_rss": peak_rss(), "seconds": round(time.perf_counter() - t0, 2)}
    if counted is not None:
        record[name]["voxels_read"] = counted.voxels - before
    return out


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """One run in this process; returns the peaks and times of its phases."""
    import numpy as np
    import torch

    from ..config import load_config
    from ..data.lazy import LazyVolume
    from ..engine import SegmentConfig
    from ..engine.plan import DenseInputs, prepare
    from ..engine.run import predict
    from ..engine.store import ConfusionSink, LabelSink, TensorSink
    from ..engine.train import train
    from ..training import is_main_process
    from ._worker import peak_rss

    torch.set_num_threads(job["threads"])
    rec: dict[str, Any] = {"mode": job["mode"], "threads": job["threads"], "start_rss": peak_rss()}
    if job["config"].startswith("volume"):  # fhcnn volume's config: its engine sections
        from ..apps.volume import VolumeConfig
        from ..apps.volume.pipeline import engine_config

        cfg, _ = engine_config(load_config(VolumeConfig, job["config"], job["overrides"]), None, (0, 0, 0))
    else:
        cfg = load_config(SegmentConfig, job["config"], job["overrides"])
    image, labels, truth = _open(job["image"]), _open(job["labels"]), _open(job["truth"])
    in_memory = job["mode"] == "in-memory"

    def load() -> tuple[Any, Any, Any]:
        if in_memory:
            return np.asarray(image[...]), np.asarray(labels[...]), np.asarray(truth[...])
        return image, labels, truth

    image, labels, truth = _phase("read", rec, load)
    counted = _Counted(image)  # the image voxels each phase reads
    plan = _phase("prepare", rec, lambda: prepare(DenseInputs(LazyVolume([counted]), labels, 3), cfg), counted)
    result = _phase("train", rec, lambda: train(plan, None, quiet=True), counted)
    out = Path(job["out"])
    if in_memory:
        target: Any = np.zeros(plan.volume.spatial, np.uint8)
        sinks: list[Any] = [TensorSink(3, plan.volume.spatial), LabelSink(target)]
    else:
        import zarr

        if is_main_process() and not (out / "prediction.zarr").exists():
            zarr.open_array(str(out / "prediction.zarr"), mode="w", shape=plan.volume.spatial,
                            chunks=plan.chunks, dtype=np.uint8)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        target = zarr.open_array(str(out / "prediction.zarr"), mode="r+")
        sinks = [LabelSink(target)]
    score = ConfusionSink(truth, 3)
    _phase("predict", rec, lambda: predict(plan, result, [*sinks, score], work=out, ownership="slabs"), counted)
    from ..engine.run import owned_region

    rec["owned_voxels"] = int(np.prod(owned_region(plan, result, "slabs")[1]))
    matrix = torch.as_tensor(score.matrix)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(matrix)
    from ..engine.metrics import scores_of_confusion

    rec["miou"] = scores_of_confusion(matrix.numpy())["miou"]
    rec["voxels"] = int(np.prod(plan.volume.spatial))
    rec["chunks"] = list(plan.chunks)
    rec["window"] = list(plan.train_window)
    return rec


def _launch(job: dict[str, Any], nproc: int = 1) -> list[dict[str, Any]]:
    from ..training.distributed import launch_env

    env = launch_env(job["threads"], MALLOC_MMAP_THRESHOLD_="65536")
    if nproc == 1:
        cmd = [sys.executable, "-m", "fhcnn.bench.volume_memory", json.dumps(job)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "fhcnn.bench.volume_memory", json.dumps(job)]
    results = [Path(job["out"]) / f"result-{rank}.json" for rank in range(nproc)]
    for p in results:
        p.unlink(missing_ok=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not all(p.exists() for p in results):
        raise RuntimeError(f"volume_memory worker failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return [json.loads(p.read_text()) for p in results]


def run(out_dir: str | Path, quick: bool = False, device: str = "cpu",
        tick: Callable[[str], None] | None = None, config: str = CONFIG,
        sizes: list[tuple[int, int, int]] | None = None, stem: str | None = None,
        overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Measure every size (``sizes``, default :data:`SIZES`) and mode; writes
    ``volume_memory.json`` and ``.png`` into ``out_dir`` (``volume_memory_CONFIG.*`` for another
    config than :data:`CONFIG`, with its own windows and one tiling; ``stem``: another name;
    ``overrides``: ``KEY=VALUE`` settings applied after the benchmark's own). Each
    run records the image voxels each phase reads and the output voxels the process finishes
    (``owned_voxels``). Its processes share
    the torch threads of this one (``fhcnn bench --threads``)."""
    import tempfile

    import torch

    from ._common import write_json
    from .reference import environment

    out = Path(out_dir)
    # the generated volumes (up to 1 GB) and predictions: scratch in the system's temporary
    # folder (TMPDIR), removed after each size
    scratch = Path(tempfile.mkdtemp(prefix="fhcnn-volume-memory-"))
    rows: list[dict[str, Any]] = []
    env = environment(device)
    stem = stem or (NAME if config == CONFIG else f"{NAME}_{config}")
    overrides = [*(OVERRIDES if config == CONFIG else [o for o in OVERRIDES if not o.startswith("data.window_")]),
                 *overrides]
    result = {"config": config, "overrides": overrides, "labelled_slices_per_axis": LABELLED_SLICES,
              "rows": rows, "environment": env}
    try:
        for shape in sizes or (QUICK_SIZES if quick else SIZES):
            t0 = time.perf_counter()
            inputs = _write_inputs(scratch, shape)
            gen_s = round(time.perf_counter() - t0, 1)
            voxels = shape[0] * shape[1] * shape[2]
            for mode, nproc in _modes(voxels):
                split = [f"parallel.space={nproc}", "parallel.axes=[1]"] if nproc > 1 else []
                threads = max(1, torch.get_num_threads() // nproc)
                job = {**inputs, "config": config, "mode": mode.split(" ")[0], "out": str(scratch),
                       "threads": threads, "overrides": overrides + split + [f"train.threads={threads}"]}
                shutil.rmtree(scratch / "prediction.zarr", ignore_errors=True)
                for rank, rec in enumerate(_launch(job, nproc)):
                    rows.append({**rec, "shape": list(shape), "mode": mode, "processes": nproc, "rank": rank,
                                 "generate_s": gen_s})
                write_json(out / f"{stem}.json", result)  # what is measured so far
                if tick:
                    tick(f"{'x'.join(map(str, shape))} {mode}")
            for p in scratch.iterdir():
                shutil.rmtree(p, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    plot(result, out / f"{stem}.png")
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    """Peak RSS of training and of prediction against the voxels, a line per mode, from zero."""
    from ._common import pyplot, save_figure

    rows = result["rows"]
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, phase in zip(axes, ("train", "predict")):
        for mode in dict.fromkeys(r["mode"] for r in rows):
            pts = sorted((r["voxels"], r[phase]["peak_rss"] / 2**20) for r in rows
                         if r["mode"] == mode and r["rank"] == 0)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=mode)
        ax.set_xscale("log")
        ax.set_xlabel("voxels")
        ax.set_ylabel(f"peak RSS while {'training' if phase == 'train' else 'predicting'} (MiB)")
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    import torch.distributed as dist

    job = json.loads(sys.argv[1])
    rec = worker(job)  # a split run joins its process group when training starts
    Path(job["out"], f"result-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(rec))
    if dist.is_initialized():
        dist.barrier()
        from ..training.distributed import exit_program

        exit_program(0)

