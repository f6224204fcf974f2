"""The vertical axis of a volume (a SEG-Y cube's samples, or ``volume.vertical_axis``): training
windows are never turned upside down along it, and the mirrored prediction tiling flips another
axis. Upside down, formations ordered in depth come in the reverse order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fhcnn.apps.volume import VolumeConfig, plan_volume, segment_volume
from fhcnn.apps.volume.inputs import inputs_from_arrays, load_volume_inputs
from fhcnn.cli import main
from fhcnn.config import load_config
from fhcnn.engine.plan import class_positions
from fhcnn.engine.sampling import WindowSampler

from .test_volume_edge_inputs import SHAPE, _geometry_file, _volume

#: volume-tiny flipping along every axis, with the mirrored prediction tiling
EVERY_FLIP = ["data.flip_height=true", "data.reverse_depth=true", "data.predict_flip=true", "volume.baselines="]


def _turned_over(vplan, axis: int, windows: int = 64) -> list[bool]:
    """Of ``windows`` windows augmented as training augments them, whether each was flipped along
    ``axis`` (a window whose values grow along ``axis`` comes out decreasing)."""
    plan = vplan.plan
    sampler = WindowSampler(plan.volume, plan.labels, plan.train_window, plan.config.data, torch.ones(1),
                            class_positions(plan))
    shape = [1, 1, 1, 1]
    shape[axis + 1] = plan.train_window[axis]
    ramp = torch.arange(plan.train_window[axis], dtype=torch.float32).reshape(shape).expand(1, *plan.train_window)
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(windows):
        x, _ = sampler.augment(ramp.clone(), torch.zeros(plan.train_window, dtype=torch.int64), gen)
        steps = x[0].diff(dim=axis)
        assert bool((steps > 0).all()) or bool((steps < 0).all())
        out.append(bool((steps < 0).all()))
    return out


def test_a_segy_cube_is_never_flipped_along_its_samples(tmp_path):
    """A SEG-Y cube is (inline, crossline, sample): its samples (W) point down. Training windows
    are flipped along D and H but never along W, the U-Net's too, and the mirrored prediction
    tiling flips H; ``volume.vertical_axis=none`` flips W again."""
    pytest.importorskip("segyio")
    _, lab = _volume(tmp_path, np.zeros(SHAPE, np.float32))
    img = _geometry_file(tmp_path / "img.sgy", np.random.default_rng(0).normal(size=SHAPE), "sgy", {})
    inputs = load_volume_inputs([img], lab)
    assert inputs.vertical_axis == 2
    cfg = load_config(VolumeConfig, "volume-tiny", EVERY_FLIP)
    vplan = plan_volume(inputs, cfg)
    d = vplan.plan.config.data
    assert (d.reverse_depth, d.flip_height, d.flip_width) == (True, True, False)
    assert vplan.vertical == 2 and {t.mirror for t in vplan.plan.tilings} == {None, 1}
    assert "vertical axis W (the segy file's samples)" in vplan.vertical_line
    assert not any(_turned_over(vplan, 2))
    assert any(_turned_over(vplan, 1)) and any(_turned_over(vplan, 0))  # the other axes still are

    free = plan_volume(inputs, load_config(VolumeConfig, "volume-tiny", EVERY_FLIP + ["volume.vertical_axis=none"]))
    assert free.plan.config.data.flip_width and {t.mirror for t in free.plan.tilings} == {None, 2}
    assert any(_turned_over(free, 2))


def test_a_stated_vertical_axis_is_kept_upright_in_the_log_and_metrics(tmp_path, capsys):
    """``--set volume.vertical_axis=D`` on a ``.npy`` (which states none): no window turned over
    along D; the log line and metrics.json say so."""
    img, lab = _volume(tmp_path, np.random.default_rng(0).normal(size=SHAPE).astype(np.float32))
    full = np.load(lab)
    full[full == 255] = 0
    np.save(tmp_path / "full.npy", full)
    out = tmp_path / "out"
    args = ["volume", img, "--labels", lab, "--eval-labels", str(tmp_path / "full.npy"), "--out", str(out),
            "--config", "volume-tiny"] + [a for s in EVERY_FLIP + ["volume.vertical_axis=D"] for a in ("--set", s)]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["vertical_axis"] == "D"
    assert metrics["flips"] == ("vertical axis D (volume.vertical_axis); training windows are not flipped along "
                                "it; flipped along H, W; mirrored prediction tiling: W")
    assert metrics["flips"] in capsys.readouterr().err
    vplan = plan_volume(load_volume_inputs([img], lab), load_config(
        VolumeConfig, "volume-tiny", EVERY_FLIP + ["volume.vertical_axis=D"]))
    assert not any(_turned_over(vplan, 0))


def test_arrays_with_a_vertical_axis_train_as_without_its_flip():
    """``inputs_from_arrays(vertical_axis=0)`` (how the benchmarks give a seismic volume) trains
    exactly as ``data.reverse_depth=false``, and not as the config's flips."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(8, 8, 8)).astype(np.float32).cumsum(0)
    truth = (image > 0).astype(np.uint8)
    lab = np.full_like(truth, 255)
    lab[::3] = truth[::3]
    tiny = ["train.steps=4", "volume.baselines=", "data.reverse_depth=true"]

    def miou(vertical, overrides):
        cfg = load_config(VolumeConfig, "volume-tiny", tiny + overrides)
        inputs = inputs_from_arrays([image], lab, truth, vertical_axis=vertical)
        return segment_volume(inputs, cfg, None, quiet=True, log=lambda s: None)["fhcnn"]["iou"]

    upright = miou(0, [])
    assert upright == miou(None, ["data.reverse_depth=false"])
    assert upright != miou(None, [])
    with pytest.raises(ValueError, match="vertical_axis"):
        inputs_from_arrays([image], lab, vertical_axis=3)
