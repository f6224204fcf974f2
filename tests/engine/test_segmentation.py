"""The volume-segmentation engine: metrics, windows, prediction over any size, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fhcnn.apps.segment import copy_nearest_baseline
from fhcnn.config import load_config
from fhcnn.engine import (
    IGNORE,
    SegmentConfig,
    build_model,
    parse_units,
    predict_volume,
    segmentation_metrics,
    train_segmentation,
)
from fhcnn.engine.models import parse_hidden
from fhcnn.engine.sizes import reflect_indices
from fhcnn.models import UNet3D


def test_metrics_hand_checked():
    # 2 frames of 2x3; frame 1 has one ignored voxel
    truth = np.array([[[0, 0, 1], [0, 1, 1]],
                      [[0, 0, 0], [1, 1, IGNORE]]])
    pred = np.array([[[0, 1, 1], [0, 1, 1]],
                     [[0, 0, 0], [0, 1, 1]]])
    m = segmentation_metrics(pred, truth, 2)
    # class 0: tp = 2 + 3 = 5, truth 0 count = 3 + 3 = 6, pred 0 count = 2 + 4 = 6 -> 5 / 7
    # class 1: tp = 3 + 1 = 4, truth 1 = 3 + 2 = 5, pred 1 = 4 + 1 (scored) = 5 -> 4 / 6
    assert m["iou"][0] == pytest.approx(5 / 7) and m["iou"][1] == pytest.approx(4 / 6)
    assert m["miou"] == pytest.approx((5 / 7 + 4 / 6) / 2) and m["J"] == pytest.approx(4 / 6)
    assert m["scored_voxels"] == 11 and m["accuracy"] == pytest.approx(9 / 11)
    assert m["confusion"] == [[5, 1], [1, 4]]
    # per frame: frame 0: class0 2/3, class1 3/4; frame 1: class0 3/4, class1 1/2
    assert m["per_frame_miou"] == pytest.approx([(2 / 3 + 3 / 4) / 2, (3 / 4 + 1 / 2) / 2])
    assert m["per_frame_iou"][1] == pytest.approx([3 / 4, 1 / 2])


def test_metrics_absent_class_and_errors():
    m = segmentation_metrics(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), 3, per_frame=False)
    assert m["iou"] == [1.0, None, None] and m["miou"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        segmentation_metrics(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="truth labels"):
        segmentation_metrics(np.zeros((2, 2)), np.full((2, 2), 5), 2)


def test_reflect_indices_any_overshoot():
    assert reflect_indices(-3, 10, 4).tolist() == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    assert reflect_indices(-2, 3, 1).tolist() == [0, 0, 0]
    np.testing.assert_array_equal(reflect_indices(-2, 9, 5).numpy(),
                                  np.pad(np.arange(5), 2, mode="reflect"))


def test_parse_units():
    assert parse_units("5up,6up,8") == [(5, "up"), (6, "up"), (8, None)]
    assert parse_units([[1, "down"], [2, None]]) == [(1, "down"), (2, None)]
    with pytest.raises(ValueError, match="bad unit"):
        parse_units("5sideways")
    # a list is checked like the string: no layer count truncated (2.7 -> 2) or taken from a bool
    assert parse_units([(np.int64(3), "up")]) == [(3, "up")]
    for bad in ([[2.7, "up"]], [[True, None]], [[-1, None]]):
        with pytest.raises(ValueError, match="layers of a unit must be an int >= 0"):
            parse_units(bad)


def test_parse_hidden_takes_counts_only():
    assert parse_hidden(32) == 32 and parse_hidden(np.int64(8)) == 8 and parse_hidden([64, 16, 8]) == [64, 16, 8]
    for bad in (True, 2.5, 0, [64, 2.5], [True, 8]):
        with pytest.raises(ValueError, match="hidden must be an int >= 1"):
            parse_hidden(bad)


def test_shipped_configs_build():
    for name in ("video", "video-tiny", "video-demo", "paper-video"):
        cfg = load_config(SegmentConfig, name)
        model = build_model(cfg.model, 3, 2)
        assert model.size_multiple in (2, 4, 8)
    paper = load_config(SegmentConfig, "paper-video")
    net = build_model(paper.model, 3, 2).core.net
    assert [s.channels for s in net.stages] == [384, 48, 6] and net.depth == 19


@pytest.mark.parametrize("arch", ["hyperbolic", "unet"])
def test_predict_any_size_with_shifts(arch):
    cfg = load_config(SegmentConfig, "video-tiny", [f"model.arch={arch}", "model.unet_base=4",
                                                    "model.unet_levels=1"])
    model = build_model(cfg.model, 3, 3)
    vol = torch.rand(3, 5, 7, 9)  # odd sizes: continued by reflection, cropped back
    p = predict_volume(model, vol, shifts=2, flip=True, window=(4, 0, 4))
    assert p.shape == (3, 5, 7, 9)
    torch.testing.assert_close(p.sum(0), torch.ones(5, 7, 9))


@pytest.mark.parametrize("window", [(4, 0, 4), (0, 0, 0), (4, 4, 8)])
def test_batched_prediction_equals_one_window_at_a_time(window):
    # windows of several tilings (shifts, flips; whole-axis windows change size between
    # shifts) share network calls; every normalization is per window, so the result is the same
    torch.manual_seed(0)
    cfg = load_config(SegmentConfig, "video-tiny", [])
    model = build_model(cfg.model, 3, 3)
    vol = torch.rand(3, 6, 7, 13)
    one = predict_volume(model, vol, shifts=3, flip=True, window=window, batch=1)
    for batch in (2, 3, 64):
        torch.testing.assert_close(predict_volume(model, vol, shifts=3, flip=True, window=window,
                                                  batch=batch), one, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="batch"):
        predict_volume(model, vol, batch=0)


class _Pointwise(torch.nn.Module):
    """A 1x1x1 convolution: every voxel's output depends on that voxel only."""

    size_multiple = 4

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 3, 1)

    def forward(self, x):
        return self.conv(x)


class _Neighbourhood(torch.nn.Module):
    """A 3x3x3 convolution with a random kernel: its mirror image is another function."""

    size_multiple = 4

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_the_mirrored_tiling_mirrors_along_its_axis(axis):
    # one whole-volume window (no blending, no padding): the prediction is the mean of the
    # network's softmax and the mirror image of its softmax of the mirrored volume
    torch.manual_seed(0)
    model, vol = _Neighbourhood(), torch.rand(3, 8, 12, 4)
    got = predict_volume(model, vol, flip=True, mirror_axis=axis, window=(0, 0, 0))
    with torch.no_grad():
        plain = torch.softmax(model(vol[None]), 1)[0]
        mirrored = torch.softmax(model(vol.flip(axis + 1)[None]), 1)[0].flip(axis + 1)
    torch.testing.assert_close(got, (plain + mirrored) / 2)
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # the mirror is not the same function


def test_windowed_prediction_blends_to_the_whole_volume_prediction():
    # windows overlap and are blended with centre-peaked weights: for a model without context
    # the result must equal one pass over the whole volume (weights normalized exactly)
    torch.manual_seed(0)
    model, vol = _Pointwise(), torch.rand(3, 10, 13, 9)
    whole = predict_volume(model, vol, shifts=3, flip=True, window=(0, 0, 0))
    for window in [(4, 8, 4), (8, 0, 4), (4, 4, 4)]:
        torch.testing.assert_close(predict_volume(model, vol, shifts=3, flip=True, window=window), whole)


def test_prediction_window_defaults_to_the_training_window():
    from fhcnn.engine.sizes import prediction_window_of

    assert prediction_window_of((-1, -1, -1), (16, 64, 64), False) == (16, 64, 64)
    assert prediction_window_of((-1, 0, -1), (16, 64, 64), False) == (16, 0, 64)
    assert prediction_window_of((-1, -1, 8), (16, 64, 64), True) == (0, 64, 8)


def test_unet_shapes():
    net = UNet3D(3, 4, base=4, levels=2)
    assert net(torch.rand(1, 3, 4, 8, 12)).shape == (1, 4, 4, 8, 12) and net.size_multiple == 4
    with pytest.raises(ValueError, match=r"UNet3D input \(1, 3, 6, 8, 12\) \(2 poolings\): spatial axis 0 has size 6"):
        net(torch.rand(1, 3, 6, 8, 12))
    with pytest.raises(ValueError, match=r"input must be \(N, 3, D, H, W\), got \(1, 2, 4, 8, 12\)"):
        net(torch.rand(1, 2, 4, 8, 12))
    with pytest.raises(ValueError, match=r"got \(3, 4, 8, 12\)"):
        net(torch.rand(3, 4, 8, 12))


def _toy(d=8, h=16, w=16):
    """Bright box moving in time over noise: classes separable by colour."""
    rng = np.random.default_rng(0)
    truth = np.zeros((d, h, w), np.uint8)
    for t in range(d):
        truth[t, 4:11, 2 + t:9 + t] = 1
    vol = rng.random((3, d, h, w)).astype(np.float32) * 0.5
    vol[1][truth == 1] += 1.0
    return vol, truth


def test_train_learns_from_two_frames_and_reports():
    vol, truth = _toy()
    lab = np.full_like(truth, IGNORE)
    lab[[0, 7]] = truth[[0, 7]]
    cfg = load_config(SegmentConfig, "video-tiny", ["train.steps=30", "train.lr=0.01",
                                                    "data.window_depth=4", "data.window_height=8",
                                                    "data.window_width=8", "data.eval_every=30"])
    held = truth.copy()
    held[[0, 7]] = IGNORE
    r = train_segmentation(vol, lab, cfg, eval_labels=held, quiet=True)
    assert r.num_classes == 2 and r.window == (4, 8, 8) and r.activation_bytes > 0
    assert len(r.history) == 30 and "miou" in r.history[-1]
    pred = r.predict(vol)
    assert pred.shape == truth.shape and pred.dtype == np.uint8
    m = segmentation_metrics(pred, held, 2)
    assert m["miou"] > 0.65, m["miou"]
    assert r.history[-1]["miou"] == pytest.approx(m["miou"], abs=0.05)


def test_partial_slice_labels_hyperspectral_style():
    # (C, D, H, W) with only a few pixels of one D-slice labelled
    vol, truth = _toy(d=4, h=8, w=8)
    lab = np.full_like(truth, IGNORE)
    lab[2, ::3, ::2] = truth[2, ::3, ::2]
    cfg = load_config(SegmentConfig, "video-tiny", ["data.window_depth=0", "data.window_height=8",
                                                    "data.window_width=8", "data.coords=true",
                                                    "data.rotate=30", "data.zoom=0.2"])
    r = train_segmentation(vol, lab, cfg, quiet=True)
    assert r.predict_proba(vol).shape == (2, 4, 8, 8)


def test_reversible_saves_less_memory_than_plain():
    vol, truth = _toy()
    lab = np.full_like(truth, IGNORE)
    lab[[0, 7]] = truth[[0, 7]]
    got = {}
    for mode in ("plain", "reversible"):
        cfg = load_config(SegmentConfig, "video-tiny", [f"model.memory={mode}", "train.steps=1",
                                                        "model.units=3up,3"])
        got[mode] = train_segmentation(vol, lab, cfg, quiet=True).activation_bytes
    assert got["reversible"] * 2 < got["plain"]


def test_engine_errors():
    vol, truth = _toy(d=4, h=8, w=8)
    cfg = load_config(SegmentConfig, "video-tiny")
    with pytest.raises(ValueError, match="labels shape"):
        train_segmentation(vol, truth[:3], cfg, quiet=True)
    with pytest.raises(ValueError, match="at least two classes"):
        train_segmentation(vol, np.zeros_like(truth), cfg, quiet=True)
    with pytest.raises(ValueError, match=r"value 7 at voxel \(0, 0, 0\), which is neither a class \(0..1\)"):
        train_segmentation(vol, np.full_like(truth, 7), cfg, num_classes=2, quiet=True)


def test_copy_nearest_baseline():
    lab = np.full((5, 1, 1), IGNORE, np.uint8)
    lab[0], lab[4] = 1, 2
    assert copy_nearest_baseline(lab, [0, 4]).ravel().tolist() == [1, 1, 1, 2, 2]


def test_copy_nearest_baseline_labels_the_void_pixels_of_a_mask():
    """A void (255) pixel of the nearest mask takes the next nearest frame's label there; a
    pixel void in every label frame its nearest labelled pixel's (the baseline is scored)."""
    lab = np.full((4, 1, 3), IGNORE, np.uint8)
    lab[0] = [[1, IGNORE, IGNORE]]
    lab[3] = [[2, 0, IGNORE]]
    got = copy_nearest_baseline(lab, [0, 3])
    assert got[:, 0].tolist() == [[1, 0, 0], [1, 0, 0], [2, 0, 0], [2, 0, 0]]


def test_rotate_zoom_is_rigid_and_keeps_labels():
    from fhcnn.engine.sampling import rotate_zoom as _rotate_zoom

    x = torch.zeros(1, 1, 8, 16)
    x[0, 0, 3:5, 2:14] = 1
    y = x[0].long()
    y[0, 0, 0] = IGNORE
    xr, yr = _rotate_zoom(x, y, 90.0, 1.0)
    assert set(yr.unique().tolist()) <= {0, 1, IGNORE}
    assert yr[0, :, 7:9].eq(1).all() and yr[0, :, 2:6].eq(0).all()  # the bar is now vertical
    xs, ys = _rotate_zoom(x, y, 0.0, 1.0)
    torch.testing.assert_close(xs, x)
    assert ys.eq(y).all()


def _toy_depth_mean(d=6, h=12, w=12):
    """(2, D, H, W) unit Gaussian noise; class-1 pixels (a box: the 2D (H, W) truth map) are
    brighter by 1 in channel 1 at every depth: one voxel is ambiguous (a threshold gets 68 %
    of them right), the depth mean much less so (88 %)."""
    rng = np.random.default_rng(1)
    truth = np.zeros((h, w), np.uint8)
    truth[3:9, 2:8] = 1
    vol = rng.normal(0, 1, (2, d, h, w)).astype(np.float32)
    vol[1] += truth
    return vol, truth


def test_reduce_depth_learns_a_2d_map_from_the_depth_mean():
    vol, truth = _toy_depth_mean()
    lab = np.full_like(truth, IGNORE)
    lab[::3, ::2] = truth[::3, ::2]
    held = np.where(lab == IGNORE, truth, IGNORE).astype(np.uint8)
    cfg = load_config(SegmentConfig, "video-tiny", [
        "data.reduce_depth=true", "train.steps=30", "train.lr=0.01", "data.window_height=8",
        "data.window_width=8", "data.eval_every=30", "data.flip_height=true", "data.rotate=20",
        "data.zoom=0.1", "data.jitter=0.05", "data.noise=0.02", "data.reverse_depth=true"])
    r = train_segmentation(vol, lab, cfg, eval_labels=held, quiet=True)
    m = r.model.size_multiple
    # the whole depth axis (6, rounded up to the size multiple), (H, W) windows as configured
    assert r.window == (-(-6 // m) * m, 8, 8) and r.activation_bytes > 0
    assert len(r.history) == 30 and "miou" in r.history[-1]
    prob = r.predict_proba(vol)
    assert prob.shape == (2, 6, 12, 12)
    torch.testing.assert_close(prob, prob[:, :1].expand_as(prob))  # depth-mean, broadcast
    pred = r.predict(vol)
    assert pred.shape == (12, 12) and pred.dtype == np.uint8
    np.testing.assert_array_equal(pred, prob.mean(1).argmax(0).numpy())
    score = segmentation_metrics(pred, held, 2, per_frame=False)["miou"]
    assert score > 0.7, score
    assert r.history[-1]["miou"] == pytest.approx(score, abs=0.05)


def test_reduce_depth_label_shape_errors_name_the_shapes():
    vol, truth = _toy_depth_mean()
    cfg = load_config(SegmentConfig, "video-tiny", ["data.reduce_depth=true"])
    with pytest.raises(ValueError, match=r"labels shape \(6, 12, 12\) must equal the volume's "
                                         r"\(H, W\) = \(12, 12\)"):
        train_segmentation(vol, np.repeat(truth[None], 6, 0), cfg, quiet=True)
    with pytest.raises(ValueError, match=r"labels shape \(12, 10\) .*\(H, W\) = \(12, 12\)"):
        train_segmentation(vol, truth[:, :10], cfg, quiet=True)
    with pytest.raises(ValueError, match=r"eval_labels shape \(6, 12, 12\) must equal labels shape "
                                         r"\(12, 12\)"):
        train_segmentation(vol, truth, cfg, eval_labels=np.repeat(truth[None], 6, 0), quiet=True)
    plain = load_config(SegmentConfig, "video-tiny")
    with pytest.raises(ValueError, match=r"labels shape \(12, 12\) must equal the volume's "
                                         r"\(D, H, W\) = \(6, 12, 12\).*reduce_depth"):
        train_segmentation(vol, truth, plain, quiet=True)


def test_prediction_can_keep_the_depth_phase():
    # a model that sees only even depth slices: a depth shift changes its input, H/W shifts don't
    class EvenDepth(torch.nn.Module):
        size_multiple = 2

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            even = x[:, :1, ::2].repeat_interleave(2, 2)
            return torch.cat([even, -even], 1) * self.w

    vol = torch.rand(1, 6, 4, 4)
    one = predict_volume(EvenDepth(), vol, shifts=1)
    torch.testing.assert_close(predict_volume(EvenDepth(), vol, shifts=2, shift_depth=False), one)
    assert not torch.allclose(predict_volume(EvenDepth(), vol, shifts=2), one)


def test_dice_loss_hand_checked_and_blind_to_unlabelled_voxels():
    from fhcnn.engine.losses import segmentation_loss as _loss

    logits = torch.zeros(1, 2, 1, 2, 2, requires_grad=True)  # softmax 0.5 everywhere
    y = torch.tensor([[[[0, 1], [1, IGNORE]]]])
    w = torch.ones(2)
    ce = math.log(2)
    # three labelled voxels. class 0: intersection 0.5, |p| + |y| = 1.5 + 1 -> 1 - 2/3.5;
    # class 1: intersection 1.0, |p| + |y| = 1.5 + 2 -> 1 - 3/4.5 (soft Dice, +1 smoothing)
    dice = ((1 - 2 / 3.5) + (1 - 3 / 4.5)) / 2
    loss = _loss(logits, y, w, 0.5)
    assert loss.item() == pytest.approx(ce + 0.5 * dice, rel=1e-6)
    assert _loss(logits, y, w, 0.0).item() == pytest.approx(ce, rel=1e-6)
    loss.backward()
    assert logits.grad[0, :, 0, 1, 1].abs().max() == 0  # the unlabelled voxel gets no gradient
    assert logits.grad[0, :, 0, 0, 0].abs().max() > 0
    # a class absent from the labels adds no Dice term: only class 0 labelled
    y0 = torch.tensor([[[[0, 0], [0, IGNORE]]]])
    d0 = 1 - (2 * 1.5 + 1) / (1.5 + 3 + 1)
    assert _loss(logits.detach(), y0, w, 1.0).item() == pytest.approx(math.log(2) + d0, rel=1e-6)


def test_held_out_frames_and_their_score():
    """The frames a video run scores (and the pixelwise baselines of benchmarks/davis_pixelwise.py
    with it): not the label frames, not frames without a mask; the score sees only them."""
    from fhcnn.apps.segment import VideoInputs, held_out_frames, score_held_out

    truth = np.zeros((5, 4, 4), np.uint8)
    truth[:, :2] = 1
    truth[3] = IGNORE                                          # frame 3 has no mask
    lab = np.full_like(truth, IGNORE)
    lab[[0, 4]] = truth[[0, 4]]
    inputs = VideoInputs(np.zeros((5, 4, 4, 3), np.uint8), [str(i) for i in range(5)], lab, [0, 4], truth,
                         "truth", [0, 1])
    assert held_out_frames(inputs) == [1, 2]
    assert held_out_frames(VideoInputs(inputs.frames, inputs.names, lab, [0, 4], None, None, [0, 1])) == []
    pred = truth.copy()
    pred[3] = 0
    pred[[0, 4]] = 1 - truth[[0, 4]]                           # wrong only on the label frames
    m = score_held_out(pred, truth, [1, 2], 2)
    assert m["miou"] == 1.0 and m["scored_voxels"] == 2 * 16
    pred[2, 0, 0] = 0                                          # one wrong pixel on a held-out frame
    assert score_held_out(pred, truth, [1, 2], 2)["miou"] < 1.0


@pytest.mark.parametrize("every, steps_scored", [(2, [2, 3]), (3, [3]), (0, [3])])
def test_a_custom_evaluation_runs_once_a_scored_step(every, steps_scored):
    # with data.eval_every, the trainer's validation of the last step called eval_fn, and train()
    # called it again at the end (each call a prediction of the whole volume: fhcnn change
    # predicted its scene twice at the end of every run with data.eval_every)
    vol, truth = _toy()
    lab = np.full_like(truth, IGNORE)
    lab[[0, 7]] = truth[[0, 7]]
    cfg = load_config(SegmentConfig, "video-tiny", ["train.steps=3", "data.window_depth=4", "data.window_height=8",
                                                    "data.window_width=8", f"data.eval_every={every}"])
    calls: list[int] = []

    def eval_fn(result):
        calls.append(result.history[-1]["step"])
        return {"score": float(len(calls))}

    r = train_segmentation(vol, lab, cfg, eval_fn=eval_fn, quiet=True)
    assert calls == steps_scored
    assert [h["step"] for h in r.history if "score" in h] == steps_scored and r.history[-1]["score"] == len(calls)
