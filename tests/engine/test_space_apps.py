"""``fhcnn segment`` / ``fhcnn change`` with ``parallel.space``: the volume split in space over
processes (``fhcnn.engine.parallel``, issue #17).

One ``torchrun`` launch of 2 Gloo processes (``tests/_space_apps_script.py``, a module fixture)
runs the split commands and plain data parallelism; the tests run the same on one process (or
on 4 processes as 2 replicas x 2 slabs) and compare weights, predictions and losses.
It skips where ``torch.distributed``/Gloo is missing or the processes cannot join a group.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from fhcnn.cli import main
from fhcnn.config import load_config
from fhcnn.engine import SegmentConfig
from fhcnn.errors import InputError
from fhcnn.training.distributed import launch_env
from tests._launch import torchrun
from tests._space_apps_script import change_args, engine_run, make_inputs, segment_args, stopped_copy

REPO = Path(__file__).resolve().parents[2]

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with Gloo is not available here")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _launch(tmp_path: Path, nproc: int, *args: str, outputs: tuple[str, ...] = ()) -> None:
    """Run the worker under torchrun; skip when the processes cannot join a Gloo group."""
    def clean() -> None:
        for old in outputs:
            shutil.rmtree(tmp_path / old, ignore_errors=True)

    torchrun(nproc, [str(REPO / "tests" / "_space_apps_script.py"), str(tmp_path), *args], clean=clean,
             env=launch_env(pythonpath=[REPO / "src"]), timeout=600,
             done=lambda proc: proc.returncode == 0 or bool(list(tmp_path.glob("skip-*.txt"))))
    skips = sorted(tmp_path.glob("skip-*.txt"))
    if skips:
        pytest.skip(f"cannot start Gloo processes here: {skips[0].read_text()[:300]}")


@pytest.fixture(scope="module")
def split_launch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the one 2-process launch (``_space_apps_script.py``): the split runs, and
    the plain data-parallel run ``ddp`` that :func:`test_data_by_space_mesh_equals_data_parallel`
    compares with (one launch instead of two: each costs seconds of startup)."""
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with Gloo is not available here")
    root = tmp_path_factory.mktemp("space-apps")
    make_inputs(root)
    assert main(segment_args(root, root / "segment-1", 1)) == 0
    stopped_copy(root / "segment-1", root / "1-to-w")  # resumed split, by the launch
    _launch(root, 2, outputs=("segment-2", "segment-2d", "resumed-2", "w-to-d", "w-to-1",
                              "change-2", "change-head-2", "ddp"))
    return root


@needs_gloo
def test_split_runs_equal_one_process(split_launch: Path) -> None:
    tmp_path = split_launch
    found = {}
    # fhcnn segment, split along W: weights, predicted labels, logged losses
    one, two = tmp_path / "segment-1", tmp_path / "segment-2"
    w1 = load_file(str(one / "model.safetensors"))
    found["segment weights"] = _max_diff(w1, load_file(str(two / "model.safetensors")))
    np.testing.assert_array_equal(np.load(one / "prediction.npy"), np.load(two / "prediction.npy"))
    losses = [[json.loads(line)["loss"] for line in open(d / "metrics.jsonl")] for d in (one, two)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    resumed = load_file(str(tmp_path / "resumed-2" / "model.safetensors"))
    w2 = load_file(str(two / "model.safetensors"))
    assert all(torch.equal(resumed[k], w2[k]) for k in w2), "a resumed split run differs"
    cfg = load_config(SegmentConfig, two / "config.yaml")
    assert cfg.parallel.space == 2 and cfg.parallel.axes == [2]

    # a run stopped after 2 of its 3 steps, resumed on another layout: equal to the run that
    # layout computes uninterrupted, up to the float rounding of the first 2 steps' sums
    assert main(segment_args(tmp_path, tmp_path / "w-to-1", 1) + ["--resume"]) == 0
    for resumed, layout, began in (("w-to-d", "segment-2d", "segment-2"), ("w-to-1", "segment-1", "segment-2"),
                                   ("1-to-w", "segment-2", "segment-1")):
        r, u = tmp_path / resumed, tmp_path / layout
        lines = (r / "metrics.jsonl").read_text().splitlines()
        # steps 1-2 are those of the stopped run (their times too): it resumed, it did not restart
        assert lines[:2] == (tmp_path / began / "metrics.jsonl").read_text().splitlines()[:2]
        assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
        found[f"resumed {resumed} weights"] = _max_diff(load_file(str(u / "model.safetensors")),
                                                        load_file(str(r / "model.safetensors")))
        np.testing.assert_array_equal(np.load(r / "prediction.npy"), np.load(u / "prediction.npy"))
    assert load_config(SegmentConfig, tmp_path / "w-to-d" / "config.yaml").parallel.axes == [0]
    record = json.loads((tmp_path / "segment-2d" / "run.json").read_text())   # the frames' copy, made once
    assert any(f.startswith("inputs/video.zarr/") for f in record["files"])

    # fhcnn change, split along the bands (depth mean of the logits all-reduced), with Dice
    assert main(change_args(tmp_path, tmp_path / "change-1", 1)) == 0
    one, two = tmp_path / "change-1", tmp_path / "change-2"
    found["change weights"] = _max_diff(load_file(str(one / "model.safetensors")),
                                        load_file(str(two / "model.safetensors")))
    found["change probability"] = float(np.abs(np.load(one / "change_probability.npy")
                                               - np.load(two / "change_probability.npy")).max())
    np.testing.assert_array_equal(np.load(one / "prediction.npy"), np.load(two / "prediction.npy"))
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert [v for _, v in m2["loss_curve"]] == pytest.approx([v for _, v in m1["loss_curve"]], rel=1e-4)

    # fhcnn change with the spectral head (whole depth, pointwise in H/W), split along H
    assert main(change_args(tmp_path, tmp_path / "change-head-1", 1, head=4)) == 0
    one, two = tmp_path / "change-head-1", tmp_path / "change-head-2"
    w1 = load_file(str(one / "model.safetensors"))
    assert any(".head." in k for k in w1)
    found["change + head weights"] = _max_diff(w1, load_file(str(two / "model.safetensors")))
    found["change + head probability"] = float(np.abs(np.load(one / "change_probability.npy")
                                                      - np.load(two / "change_probability.npy")).max())

    # the engine, split along D: weights, probabilities, held-out scores during training
    single = engine_run(tmp_path, 1)
    split = torch.load(tmp_path / "engine-2-rank0.pt")
    import zarr

    # out of core: each process read only its slab of every prediction window (half the
    # depth) and finished only its slab of the shared output; together they equal one process
    window_depth = load_config(SegmentConfig, "video-tiny").data.window_depth
    one_depths = single["read_depths"]
    for rank in (0, 1):
        depths = torch.load(tmp_path / f"engine-2-rank{rank}.pt")["read_depths"]
        assert max(depths) <= max(one_depths) // 2 and max(one_depths) <= window_depth, (depths, one_depths)
    whole, parts = (zarr.open_group(str(tmp_path / f"engine-{n}.zarr"), mode="r") for n in (1, 2))
    found["engine slab probabilities"] = float(np.abs(whole["probs"][...] - parts["probs"][...]).max())
    assert (whole["labels"][...] == parts["labels"][...]).mean() > 0.999
    found["engine weights"] = _max_diff(single["state"], split["state"])
    found["engine probabilities"] = (single["prob"] - split["prob"]).abs().max().item()
    assert [h.get("miou") for h in split["history"]] == pytest.approx([h.get("miou") for h in single["history"]])
    assert [h["loss"] for h in split["history"]] == pytest.approx([h["loss"] for h in single["history"]], rel=1e-5)
    from fhcnn.engine import build_model

    torch.manual_seed(0)  # train.seed: the weights training started from
    start = build_model(load_config(SegmentConfig, "video-tiny", ["model.conv_head=3"]).model, 3, 3).state_dict()
    moved = max((single["state"][k] - v).abs().max().item() for k, v in start.items()
                if k not in ("mean", "std"))
    assert moved > 1e-3, f"training barely moved the weights ({moved:.1e})"

    print("parallel.space=2 vs one process, max |difference|:", json.dumps({k: f"{v:.1e}" for k, v in found.items()}))
    for what, diff in found.items():
        assert diff < 1e-5, f"{what}: split run differs from the one-process run by {diff:.2e}"


def _segment_inputs(tmp_path: Path) -> list[str]:
    make_inputs(tmp_path)
    return ["segment", str(tmp_path / "video.npy"), "--labels", str(tmp_path / "masks.npy"),
            "--config", "video-tiny", "--quiet"]


@pytest.mark.parametrize("world,sets,message", [
    ("4", ["parallel.space=4"],
     "spatial axis 0 (D) of size 4 cannot be split into 4 slabs that are whole multiples of 2 "
     "(2**coarsenings of the network); what works: --set parallel.space=2 with torchrun "
     "--nproc-per-node 2; or --set parallel.axes=[1]; or --set parallel.axes=[2]"),
    ("2", ["parallel.space=2", "parallel.axes=[1]", "data.predict_height=0"],
     "prediction window (4, 18, 16) (of the volume (6, 16, 24) continued to a multiple of 2, "
     "data.predict_shifts=2): spatial axis 1 (H) of size 18 cannot be split into 2 slabs"),
    ("2", ["parallel.space=2", "parallel.axes=[2]", "data.predict_width=0"],
     "spatial axis 2 (W) of size 26 cannot be split into 2 slabs"),
    ("1", ["parallel.space=2"], "but this run has 1; what works: torchrun --nproc-per-node 2"),
    ("3", ["parallel.space=2"], "but this run has 3"),
    ("4", ["parallel.space=2"], "data.batch_size=1 is not divisible by the 2 data-parallel replicas"),
    ("2", ["parallel.space=2", "model.arch=unet"], "model.arch=unet cannot"),
    ("2", ["parallel.space=2", "data.unlabelled=entropy"], "data.unlabelled=entropy is not supported"),
])
def test_bad_split_fails_before_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world: str,
                                    sets: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A split that cannot work stops with one line (exit 2) before OUT is created."""
    monkeypatch.setenv("WORLD_SIZE", world)  # what torchrun sets; no process group is joined
    monkeypatch.delenv("RANK", raising=False)
    args = _segment_inputs(tmp_path)
    out = tmp_path / "out"
    overrides = [a for s in sets for a in ("--set", s)]
    rc = main(args + ["--out", str(out)] + overrides)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert not out.exists()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err


def test_change_bad_band_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """6 bands (whole depth 6) cannot be cut in 2 slabs of a multiple of 2; the error says so
    and offers 3 slabs or the H/W axes."""
    from fhcnn.data.hyperspectral import make_bitemporal_scene

    s = make_bitemporal_scene(20, 24, 6, seed=2, field_size=10)
    for name in ("before", "after", "change"):
        np.save(tmp_path / f"{name}.npy", getattr(s, name))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    out = tmp_path / "out"
    rc = main(["change", str(tmp_path / "before.npy"), str(tmp_path / "after.npy"), "--labels",
               str(tmp_path / "change.npy"), "--out", str(out), "--config", "change-tiny", "--quiet",
               "--set", "parallel.space=2", "--set", "parallel.axes=[0]"])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert ("training window (6, 16, 16) (the whole depth): spatial axis 0 (D) of size 6 cannot be split "
            "into 2 slabs") in err
    assert ("what works: --set parallel.space=3 with torchrun --nproc-per-node 3; or --set parallel.axes=[1]; "
            "or --set parallel.axes=[2]") in err


@pytest.mark.parametrize("sets,message", [
    (["parallel.space=0"], "space must be >= 1"),
    (["parallel.axes=[3]"], "axes must be distinct spatial axes among 0 (D), 1 (H), 2 (W)"),
    (["parallel.space=2", "parallel.axes=[0, 1]"], "give parallel.grid"),
    (["parallel.space=2", "parallel.axes=[0, 1]", "parallel.grid=[2, 2]"], "grid [2, 2] has 4 processes but space=2"),
    (["parallel.spaces=2"], "unknown config key 'parallel.spaces'"),
])
def test_parallel_section_validated_on_load(sets: list[str], message: str) -> None:
    with pytest.raises(InputError) as e:
        load_config(SegmentConfig, "video-tiny", sets)
    assert message in str(e.value)


def test_default_is_no_split() -> None:
    from fhcnn.apps.change import ChangeConfig

    for cls, name in ((SegmentConfig, "video-tiny"), (ChangeConfig, "change-tiny")):
        cfg = load_config(cls, name)
        assert cfg.parallel.space == 1 and cfg.parallel.split_grid == (1,)
    cfg = load_config(SegmentConfig, "video-tiny", ["parallel.space=4", "parallel.axes=[1, 2]",
                                                    "parallel.grid=[2, 2]"])
    assert cfg.parallel.split_grid == (2, 2) and cfg.parallel.describe() == "H/2 x W/2"


@needs_gloo
def test_data_by_space_mesh_equals_data_parallel(split_launch: Path, tmp_path: Path) -> None:
    """The same command on 4 processes with parallel.space=2 (2 replicas x 2 slabs) ends with the
    weights of plain data parallelism on 2 processes (DistributedDataParallel; ``ddp``, run by
    the 2-process launch of :func:`split_launch`)."""
    make_inputs(tmp_path)
    _launch(tmp_path, 4, "mesh", outputs=("mesh",))
    mesh, ddp = (load_file(str(d / "model.safetensors")) for d in (tmp_path / "mesh", split_launch / "ddp"))
    diff = _max_diff(mesh, ddp)
    print(f"data 2 x space 2 vs data-parallel 2 processes: max |weight difference| {diff:.1e}")
    assert diff < 1e-5
    np.testing.assert_array_equal(np.load(tmp_path / "mesh" / "prediction.npy"),
                                  np.load(split_launch / "ddp" / "prediction.npy"))


@pytest.mark.parametrize("size,window,shifts,shift_depth", [
    ((6, 16, 24), (4, 16, 16), 2, True),
    ((6, 17, 23), (0, 0, 16), 4, True),
    ((5, 20, 24), (0, 16, 0), 3, False),
])
def test_prediction_windows_are_the_ones_predict_volume_uses(size, window, shifts, shift_depth) -> None:
    """The pre-check (before OUT exists) sees exactly the windows the tiled prediction evaluates,
    so a split the check accepts cannot fail at prediction time."""
    from fhcnn.engine import predict_volume
    from fhcnn.engine.parallel import prediction_windows

    class Recorder(torch.nn.Module):
        size_multiple = 4

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.seen: set[tuple[int, ...]] = set()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.add(tuple(x.shape[2:]))
            return torch.zeros(x.shape[0], 2, *x.shape[2:])

    model = Recorder()
    predict_volume(model, torch.randn(1, *size), shifts=shifts, window=window, shift_depth=shift_depth)
    assert model.seen == set(prediction_windows(size, window, 4, shifts, shift_depth))


@pytest.mark.parametrize("dice,reduce_depth", [(0.0, False), (0.5, False), (0.5, True)])
def test_split_loss_on_one_slab_is_the_loss(dice: float, reduce_depth: bool) -> None:
    """On one process the split loss (value and gradient) is the engine's loss: a change to
    ``fhcnn.engine.losses`` that the split loss does not follow fails here."""
    from fhcnn.engine.losses import SegmentationLoss, class_weights
    from fhcnn.engine.parallel import SplitSegmentationLoss
    from fhcnn.spatial import SpatialSplit

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 6, 8, generator=g, requires_grad=True)
    y = torch.randint(0, 3, (2, 6, 8) if reduce_depth else (2, 4, 6, 8), generator=g)
    y[..., :2] = 255
    base = SegmentationLoss(class_weights(y, 3, 1.0), dice, reduce_depth)
    split = SplitSegmentationLoss(base, SpatialSplit(3, (0,), (1,)), depth_split=True)
    want, got = base(logits, y), split(logits, y)
    (g_want,) = torch.autograd.grad(want, logits)
    (g_got,) = torch.autograd.grad(got, logits)
    # float32 sums in another order (in float64 both agree to the last bit)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-6)
