"""An axis the labels are layers along (or ``volume.vertical_axis``): training windows are never
turned over along it, and the mirrored prediction tiling flips another axis. Turned over,
formations ordered in depth come in the reverse order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fhcnn.apps.volume import VolumeConfig, plan_volume, segment_volume
from fhcnn.apps.volume.inputs import inputs_from_arrays, load_volume_inputs
from fhcnn.apps.volume.vertical import LabelOrder, label_order
from fhcnn.cli import main
from fhcnn.config import load_config
from fhcnn.engine.plan import class_positions
from fhcnn.engine.sampling import WindowSampler

from .test_volume_edge_inputs import SHAPE, _geometry_file

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


def _brute_order(labels: np.ndarray) -> tuple[list[int], list[int]]:
    """Rises and falls from each labelled voxel to the next labelled one of its column, along each axis."""
    rises, falls = [0, 0, 0], [0, 0, 0]
    for a in range(3):
        moved = np.moveaxis(labels, a, -1).reshape(-1, labels.shape[a])
        for column in moved:
            seq = [int(v) for v in column if v != 255]
            rises[a] += sum(b > c for c, b in zip(seq, seq[1:]))
            falls[a] += sum(b < c for c, b in zip(seq, seq[1:]))
    return rises, falls


@settings(max_examples=60, deadline=None)
@given(shape=st.tuples(st.integers(1, 6), st.integers(1, 7), st.integers(1, 7)), seed=st.integers(0, 2**16),
       density=st.sampled_from([0.1, 0.5, 1.0]), max_bytes=st.sampled_from([2, 14, 1 << 20]), axis=st.integers(0, 2))
def test_label_order_counts_the_steps_between_labelled_neighbours(shape, seed, density, max_bytes, axis):
    """Against a brute force over every column, read slice by slice along any axis, in bands of
    rows of any size."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=shape).astype(np.uint8)
    labels[rng.random(shape) > density] = 255
    slices = [i for i in range(shape[axis]) if (np.take(labels, i, axis) != 255).any()]
    got = label_order(labels, slices, axis, max_bytes=max_bytes)
    assert (list(got.rises), list(got.falls)) == _brute_order(labels)


@pytest.mark.parametrize("rises, falls, layered", [((90, 0, 0), (10, 0, 0), True), ((89, 0, 0), (11, 0, 0), False),
                                                    ((0, 0, 0), (11, 0, 0), True), ((0, 0, 0), (10, 0, 0), False),
                                                    ((0, 0, 0), (0, 0, 0), False)])
def test_layers_change_one_way_nine_times_in_ten_beyond_chance(rises, falls, layered):
    """At least 90 % of the changes one way, and no fair coin that likely to split so: ten
    changes all one way (a chance of 0.002) are not enough, eleven (0.001) are."""
    assert LabelOrder(rises, falls).ordered(0) is layered


def _layers(shape, every: int) -> tuple[np.ndarray, np.ndarray]:
    """Truth of 3 layers along D (a wavy boundary along W) and labels on every ``every``-th D slice."""
    d = np.arange(shape[0])[:, None, None] + np.sin(np.arange(shape[2]) / 2)[None, None, :]
    truth = np.broadcast_to(np.clip(d * 3 // shape[0], 0, 2), shape).astype(np.uint8)
    lab = np.full(shape, 255, np.uint8)
    lab[1::every] = truth[1::every]
    return truth.copy(), lab


def test_labels_that_are_layers_along_segy_samples_keep_them_upright(tmp_path):
    """A SEG-Y cube is (inline, crossline, sample): labels layered along its samples (W) keep W
    upright: training windows flipped along D and H only (the U-Net's too), the mirrored tiling
    flips H. Labels that are not layers keep every flip; so does ``volume.vertical_axis=none``."""
    pytest.importorskip("segyio")
    layered = np.full(SHAPE, 255, np.uint8)
    layered[[2, 5]] = np.arange(SHAPE[2]) >= SHAPE[2] // 2  # two D slices: class 0, then 1 along W
    np.save(tmp_path / "lab.npy", layered)
    lab = str(tmp_path / "lab.npy")
    img = _geometry_file(tmp_path / "img.sgy", np.random.default_rng(0).normal(size=SHAPE), "sgy", {})
    inputs = load_volume_inputs([img], lab)
    assert inputs.vertical_axis == 2
    vplan = plan_volume(inputs, load_config(VolumeConfig, "volume-tiny", EVERY_FLIP))
    d = vplan.plan.config.data
    assert (d.reverse_depth, d.flip_height, d.flip_width) == (True, True, False)
    assert vplan.vertical == 2 and {t.mirror for t in vplan.plan.tilings} == {None, 1}
    assert vplan.vertical_line.startswith("kept upright along W (the labels are layers along it")
    assert not any(_turned_over(vplan, 2))
    assert any(_turned_over(vplan, 1)) and any(_turned_over(vplan, 0))  # the other axes still are

    free = plan_volume(inputs, load_config(VolumeConfig, "volume-tiny", EVERY_FLIP + ["volume.vertical_axis=none"]))
    assert free.plan.config.data.flip_width and {t.mirror for t in free.plan.tilings} == {None, 2}
    assert any(_turned_over(free, 2))

    mixed = np.load(lab)
    mixed[[2, 5], :, :3] = 1  # class 1, then 0, then 1 along W: not layers
    np.save(tmp_path / "mixed.npy", mixed)
    again = plan_volume(load_volume_inputs([img], str(tmp_path / "mixed.npy")),
                        load_config(VolumeConfig, "volume-tiny", EVERY_FLIP))
    assert again.vertical is None and again.plan.config.data.flip_width
    assert again.vertical_line.startswith("no axis kept upright (the labels are layers along none of W;")


def test_an_axis_kept_upright_is_in_the_log_and_metrics(tmp_path, capsys):
    """Layers along D annotated on a few D slices of a ``.npy``: D kept upright, said in the log
    line and metrics.json; ``--set volume.vertical_axis=H`` keeps H upright instead."""
    truth, lab = _layers(SHAPE, 3)
    np.save(tmp_path / "img.npy", np.random.default_rng(0).normal(size=SHAPE).astype(np.float32))
    np.save(tmp_path / "lab.npy", lab)
    np.save(tmp_path / "full.npy", truth)
    out = tmp_path / "out"
    sets = [a for s in EVERY_FLIP for a in ("--set", s)]
    args = ["volume", str(tmp_path / "img.npy"), "--labels", str(tmp_path / "lab.npy"), "--eval-labels",
            str(tmp_path / "full.npy"), "--out", str(out), "--config", "volume-tiny", *sets]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["vertical_axis"] == "D"
    assert metrics["flips"].startswith("kept upright along D (the labels are layers along it: from one labelled "
                                       "voxel to the next of a column the class rises ")
    assert metrics["flips"].endswith("; training windows flipped along H, W; mirrored prediction tiling: W")
    assert metrics["flips"] in capsys.readouterr().err
    inputs = load_volume_inputs([str(tmp_path / "img.npy")], str(tmp_path / "lab.npy"))
    assert not any(_turned_over(plan_volume(inputs, load_config(VolumeConfig, "volume-tiny", EVERY_FLIP)), 0))
    stated = plan_volume(inputs, load_config(VolumeConfig, "volume-tiny", EVERY_FLIP + ["volume.vertical_axis=H"]))
    assert stated.vertical == 1 and stated.plan.config.data.reverse_depth and not any(_turned_over(stated, 1))


def test_layers_train_as_without_the_flip_along_them():
    """Labels that are layers along D train exactly as ``data.reverse_depth=false``, and not as
    the config's flips (``volume.vertical_axis=none``)."""
    image = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32).cumsum(0)
    truth, lab = _layers((8, 8, 8), 3)
    tiny = ["train.steps=4", "volume.baselines=", "data.reverse_depth=true"]

    def iou(overrides):
        cfg = load_config(VolumeConfig, "volume-tiny", tiny + overrides)
        inputs = inputs_from_arrays([image], lab, truth)
        return segment_volume(inputs, cfg, None, quiet=True, log=lambda s: None)["fhcnn"]["iou"]

    upright = iou([])
    assert upright == iou(["volume.vertical_axis=none", "data.reverse_depth=false"])
    assert upright != iou(["volume.vertical_axis=none"])
    with pytest.raises(ValueError, match="vertical_axis"):
        inputs_from_arrays([image], lab, vertical_axis=3)
