"""The spectral head (``model.spectral_head``): per-pixel, added to the network's logits, only
where the labels are one 2D map over the whole depth, refused everywhere else before OUT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fhcnn.cli import main
from fhcnn.config import load_config
from fhcnn.engine import IGNORE, SegmentConfig, build_model, segmentation_metrics, train_segmentation
from fhcnn.models import SpectralHead
from tests.apps.test_change_cli import _fails


def test_head_reads_the_whole_depth_of_one_pixel_only():
    torch.manual_seed(0)
    head = SpectralHead(in_channels=3, depth=8, num_classes=2, hidden=5)
    x = torch.randn(2, 3, 8, 6, 7)
    y = head(x)
    assert y.shape == (2, 2, 1, 6, 7)
    x2 = x.clone()
    x2[1, 2, 7, 4, 5] += 1.0  # one value of one pixel, at the last depth
    changed = (head(x2) - y).abs().sum(1)[:, 0] > 0
    assert changed[1, 4, 5] and changed.sum() == 1
    with pytest.raises(ValueError, match=r"\(N, 3, 8, H, W\).*got \(2, 3, 6, 6, 7\)"):
        head(x[:, :, :6])
    with pytest.raises(ValueError, match=r"\(N, 3, 8, H, W\).*got \(2, 2, 8, 6, 7\)"):
        head(x[:, :2])
    with pytest.raises(ValueError, match="depth must be an int >= 1, got 0"):
        SpectralHead(3, 0, 2, 5)


def test_model_adds_the_head_logits_at_every_depth():
    cfg = load_config(SegmentConfig, "video-tiny", ["model.spectral_head=4"])
    with pytest.raises(ValueError, match="data.reduce_depth"):
        build_model(cfg.model, 2, 2)
    torch.manual_seed(0)
    seg = build_model(cfg.model, 2, 2, depth=8)
    assert isinstance(seg.head, SpectralHead) and seg.head.depth == 8
    seg.set_normalization(torch.tensor([1.0, -2.0]), torch.tensor([2.0, 0.5]))
    x = torch.randn(1, 2, 8, 8, 8)
    z = (x - torch.tensor([1.0, -2.0]).view(1, 2, 1, 1, 1)) / torch.tensor([2.0, 0.5]).view(1, 2, 1, 1, 1)
    torch.testing.assert_close(seg(x), seg.core(z) + seg.head(z))
    # the head's parameters are in the state dict (saved with the weights)
    assert any(k.startswith("head.") for k in seg.state_dict())


def _scene(h=16, w=16, d=6, seed=0):
    """Class 1 differs from class 0 only in the *shape* of its spectrum (the first half of the
    bands up, the second half down: the same band mean)."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((h, w)) < 0.4).astype(np.uint8)
    vol = rng.normal(0, 0.5, (2, d, h, w)).astype(np.float32)
    shape = np.r_[np.ones(d // 2), -np.ones(d - d // 2)].astype(np.float32)
    vol[1] += truth[None] * shape[:, None, None]
    return vol, truth


def test_head_learns_a_spectral_shape_from_sparse_pixels():
    vol, truth = _scene()
    lab = np.full_like(truth, IGNORE)
    lab[::2] = truth[::2]
    held = np.where(lab == IGNORE, truth, IGNORE).astype(np.uint8)
    sets = ["data.reduce_depth=true", "train.steps=40", "train.lr=0.01", "data.window_height=8",
            "data.window_width=8", "data.jitter=0", "data.noise=0", "data.predict_shifts=1",
            "data.predict_flip=false"]
    with_head = train_segmentation(vol, lab, load_config(SegmentConfig, "video-tiny", sets + ["model.spectral_head=8"]),
                                   quiet=True)
    m = with_head.model.size_multiple
    assert with_head.model.inner.head.depth == -(-6 // m) * m  # the whole (rounded-up) depth
    score = segmentation_metrics(with_head.predict(vol), held, 2, per_frame=False)["miou"]
    assert score > 0.9, score


def test_head_refused_where_it_cannot_work():
    vol, truth = _scene()
    for sets, match in [([], "data.reduce_depth"),
                        (["data.reduce_depth=true", "data.predict_depth=4"], "data.predict_depth=-1 or 0")]:
        cfg = load_config(SegmentConfig, "video-tiny", sets + ["model.spectral_head=4"])
        with pytest.raises(ValueError, match=match):
            train_segmentation(vol, truth if "data.reduce_depth=true" in sets else np.repeat(truth[None], 6, 0),
                               cfg, quiet=True)
    with pytest.raises(ValueError, match="spectral_head must be >= 0"):
        load_config(SegmentConfig, "video-tiny", ["model.spectral_head=-1"])


def test_cli_change_with_head_and_refusals_before_out(tmp_path, capsys, monkeypatch):
    from fhcnn.data.hyperspectral import make_bitemporal_scene

    s = make_bitemporal_scene(20, 24, 6, seed=2, field_size=10)
    for name in ("before", "after", "change"):
        np.save(tmp_path / f"{name}.npy", getattr(s, name))
    args = ["change", str(tmp_path / "before.npy"), str(tmp_path / "after.npy"), "--labels",
            str(tmp_path / "change.npy"), "--config", "change-tiny", "--quiet"]
    out = tmp_path / "out"
    # features change the channel count (5): the pre-OUT model check builds the model for them
    assert main(args + ["--out", str(out), "--set", "model.spectral_head=4",
                        "--set", "change.channels=dates+diff+ratio+angle", "--label-fraction", "0.3"]) == 0
    from safetensors.torch import load_file
    weights = load_file(str(out / "model.safetensors"))
    head = [k for k in weights if ".head.spectrum.weight" in k or k.startswith("head.spectrum.weight")]
    assert head and weights[head[0]].shape[1:] == (5, 6, 1, 1)  # 5 channels x the whole depth (6 bands)
    bad = tmp_path / "bad"
    _fails(args + ["--out", str(bad), "--set", "model.spectral_head=4", "--set", "change.target=all"],
           capsys, "model.spectral_head=4 reads the whole depth axis")
    _fails(args + ["--out", str(bad), "--set", "model.spectral_head=4", "--set", "data.predict_depth=4"],
           capsys, "data.predict_depth=-1 or 0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    _fails(args + ["--out", str(bad), "--set", "model.spectral_head=4", "--set", "parallel.space=2",
                   "--set", "parallel.axes=[0]"], capsys, "the depth axis 0 is not split with it")
    monkeypatch.delenv("WORLD_SIZE")
    frames = tmp_path / "frames"
    frames.mkdir()
    from PIL import Image
    for i in range(8):
        Image.fromarray(np.full((16, 16, 3), 30 * i, np.uint8)).save(frames / f"{i:05d}.png")
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.eye(16, dtype=np.uint8) * 255).save(masks / "00000.png")
    _fails(["segment", str(frames), "--labels", str(masks), "--out", str(bad), "--config", "video-tiny",
            "--quiet", "--set", "model.spectral_head=4"], capsys, "data.reduce_depth")
    assert not bad.exists()
