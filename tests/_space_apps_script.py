"""Worker for tests/test_space_apps.py, launched by torchrun with 2 processes (Gloo on CPU).

    torchrun --standalone --nproc-per-node 2 tests/_space_apps_script.py ROOT

ROOT holds the tiny inputs the test generated (:func:`make_inputs`). With ``parallel.space=2``
each run splits the volume over the two processes:

* ``fhcnn segment`` (split along W) -> ``ROOT/segment-2``; the same frames as a folder of PNGs
  (copied once by rank 0 into the run folder) along D -> ``ROOT/segment-2d``;
  copies of ``segment-2`` stopped after 2 of the 3 steps (the last checkpoint removed, as if
  killed before writing it) resumed split along W -> ``ROOT/resumed-2``, along D ->
  ``ROOT/w-to-d``, and a one-process run stopped likewise (``ROOT/1-to-w``, prepared by the
  test) resumed split along W; ``ROOT/w-to-1`` is left for the test to resume on one process;
* ``fhcnn change`` (split along the bands, the depth axis, with a Dice term) -> ``ROOT/change-2``;
* the engine (``train_segmentation``, split along D, ``memory=block``, held-out scoring every
  2 steps) -> rank 0 saves the weights and the predicted probabilities to ``ROOT/engine-2.pt``.

* ``fhcnn segment`` with a batch of 2 windows, plain data parallelism (no split) -> ``ROOT/ddp``.

The test runs the same commands on one process and compares. With a second argument ``mesh``
(4 processes) it runs only ``fhcnn segment`` with a batch of 2 windows as 2 data-parallel
replicas x 2 slabs -> ``ROOT/mesh``, to compare with ``ROOT/ddp``.
A process that cannot join the Gloo group writes ``ROOT/skip-<rank>.txt`` and exits 0 (the test then skips).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# SGD, not Adam: Adam's first step is lr * sign(gradient) for every entry, so an entry whose
# gradient is rounding noise around zero moves by +-lr in either run and would hide how closely
# the split run follows the single-process one; an SGD step is proportional to the gradient.
TRAIN = ["--set", "train.optimizer=sgd", "--set", "train.lr=0.05", "--device", "cpu", "--quiet"]


def make_inputs(root: Path) -> None:
    from PIL import Image

    from fhcnn.data.hyperspectral import make_bitemporal_scene
    from fhcnn.data.video import generate_video

    video, masks = generate_video(root / "davis", frames=6, height=16, width=24, objects=2, seed=5)
    np.save(root / "video.npy", video)
    (root / "frames").mkdir()
    for i, frame in enumerate(video):  # the same frames, lossless, decoded one by one
        Image.fromarray(frame).save(root / "frames" / f"{i:05d}.png")
    np.save(root / "masks.npy", masks)
    s = make_bitemporal_scene(20, 24, 8, seed=2, field_size=10)
    for name in ("before", "after", "change"):
        np.save(root / f"{name}.npy", getattr(s, name))


def segment_args(root: Path, out: Path, space: int, axes: str = "[2]", video: str = "video.npy") -> list[str]:
    """``fhcnn segment`` of ``root/video`` on ``space`` processes split along ``axes``, a checkpoint every step."""
    split = ["--set", f"parallel.space={space}", "--set", f"parallel.axes={axes}"] if space > 1 else []
    return ["segment", str(root / video), "--labels", str(root / "masks.npy"), "--out", str(out),
            "--config", "video-tiny", *TRAIN, "--set", "train.checkpoint_every=1", "--set", "train.keep_last=3",
            *split]


def stopped_copy(run: Path, to: Path) -> None:
    """A copy of the finished run folder ``run`` as if it had been killed after step 2 of 3."""
    from fhcnn.training.checkpoint import step_dir_name

    shutil.copytree(run, to)
    shutil.rmtree(to / "checkpoints" / step_dir_name(3))


def change_args(root: Path, out: Path, space: int, axes: str = "[0]", head: int = 0) -> list[str]:
    """``fhcnn change`` split along ``axes`` (the bands by default); ``head``: model.spectral_head."""
    split = ["--set", f"parallel.space={space}", "--set", f"parallel.axes={axes}"] if space > 1 else []
    return ["change", str(root / "before.npy"), str(root / "after.npy"), "--labels", str(root / "change.npy"),
            "--label-fraction", "0.2", "--out", str(out), "--config", "change-tiny",
            "--set", "data.dice=0.5", "--set", f"model.spectral_head={head}", *TRAIN, *split]


class _Recorded:
    """An array-like that records the boxes read from it (depth extent of each)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.depths = array, []

    shape = property(lambda self: self.array.shape)
    dtype = property(lambda self: self.array.dtype)

    def __getitem__(self, key):
        out = self.array[key]
        self.depths.append(out.shape[0])
        return out


def engine_run(root: Path, space: int) -> dict[str, Any]:
    """``train_segmentation`` split along D (block gradients, a 3x3x3 conv head exchanging its own
    halos, scoring every 2 steps; windows flipped along D only); then the prediction of the
    volume (read through :class:`_Recorded`), with the tilings mirrored along D (the split axis:
    each process reads its slab of the mirrored window), into ``ROOT/engine-<space>.zarr``, each
    process finishing its own slab of the volume (``ownership="slabs"``)."""
    import zarr

    from fhcnn.apps.segment import SegmentConfig
    from fhcnn.apps.segment.pipeline import frames_to_volume
    from fhcnn.config import load_config
    from fhcnn.data.lazy import LazyVolume
    from fhcnn.engine import train_segmentation
    from fhcnn.engine.run import predict
    from fhcnn.engine.store import LabelSink, ProbabilitySink

    cfg = load_config(SegmentConfig, "video-tiny", [
        "train.optimizer=sgd", "train.lr=0.05", "train.steps=4", "train.device=cpu",
        "model.memory=block", "model.conv_head=3", "data.eval_every=2", f"parallel.space={space}",
        "parallel.axes=[0]", "data.flip_width=false", "data.reverse_depth=true", "data.predict_flip=true"])
    assert cfg.data.prediction_mirror == 0
    masks = np.load(root / "masks.npy")
    labels = np.full_like(masks, 255)
    labels[[0, 5]] = masks[[0, 5]]
    vol = frames_to_volume(np.load(root / "video.npy"))
    result = train_segmentation(vol, labels, cfg, num_classes=3, eval_labels=masks, quiet=True)
    plan = result.plan
    assert plan is not None
    rank = int(os.environ.get("RANK", "0"))
    store = root / f"engine-{space}.zarr"
    if rank == 0:
        zarr.open_group(str(store), mode="w")
        zarr.open_array(str(store / "labels"), mode="w", shape=masks.shape, chunks=plan.chunks, dtype=np.uint8)
        zarr.open_array(str(store / "probs"), mode="w", shape=(3, *masks.shape), chunks=(3, *plan.chunks),
                        dtype=np.float32)
    if space > 1:
        import torch.distributed as dist

        dist.barrier()
    channels = [_Recorded(c) for c in vol]
    plan.volume = LazyVolume(channels)
    predict(plan, result, [LabelSink(zarr.open_array(str(store / "labels"), mode="r+")),
                           ProbabilitySink(zarr.open_array(str(store / "probs"), mode="r+"))], ownership="slabs")
    return {"state": {k: v.detach().clone() for k, v in result.model.state_dict().items()},
            "prob": result.predict_proba(vol), "history": result.history,
            "read_depths": sorted(set(d for c in channels for d in c.depths))}


def main() -> None:
    import torch.distributed as dist

    from fhcnn.cli import main as cli

    root = Path(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "split"
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    try:
        dist.init_process_group("gloo")
    except Exception as e:  # the platform cannot start Gloo processes
        (root / f"skip-{rank}.txt").write_text(f"{type(e).__name__}: {e}")
        return
    if mode == "mesh":  # 4 processes: 2 replicas x 2 slabs
        assert cli(segment_args(root, root / "mesh", 2) + ["--set", "data.batch_size=2"]) == 0
        return
    assert cli(segment_args(root, root / "segment-2", 2)) == 0
    # from the folder of PNG frames: rank 0 copies them once into OUT/inputs/video.zarr
    assert cli(segment_args(root, root / "segment-2d", 2, axes="[0]", video="frames")) == 0
    if rank == 0:
        for name in ("resumed-2", "w-to-d", "w-to-1"):
            stopped_copy(root / "segment-2", root / name)
    dist.barrier()
    # resumed on the same split (bit-identical), along D instead of W, and from one process
    assert cli(segment_args(root, root / "resumed-2", 2) + ["--resume"]) == 0
    assert cli(segment_args(root, root / "w-to-d", 2, axes="[0]") + ["--resume"]) == 0
    assert cli(segment_args(root, root / "1-to-w", 2) + ["--resume"]) == 0
    assert cli(change_args(root, root / "change-2", 2)) == 0
    assert cli(change_args(root, root / "change-head-2", 2, axes="[1]", head=4)) == 0
    out = engine_run(root, 2)
    torch.save(out, root / f"engine-2-rank{rank}.pt")
    dist.barrier()
    # plain data parallelism (2 replicas), for the test of the 4-process mesh
    assert cli(segment_args(root, root / "ddp", 1) + ["--set", "data.batch_size=2"]) == 0


if __name__ == "__main__":
    from fhcnn.training.distributed import exit_program

    main()
    # the group destroyed and the interpreter's teardown skipped (Gloo threads sometimes abort
    # the process there, after every output is written), as `python -m fhcnn` ends
    exit_program(0)
