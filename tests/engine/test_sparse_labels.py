"""Learning from sparse labels: the unlabelled loss term, context windows, the change analyst's
features, the sparse label sampler and the settings derived from the scene."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fhcnn.apps.change import ChangeConfig, build_volume, fit_change
from fhcnn.apps.change.sparse import sparse_labels
from fhcnn.config import load_config
from fhcnn.data.hyperspectral import make_bitemporal_scene
from fhcnn.data.lazy import LazyVolume
from fhcnn.engine import DataConfig, class_weights
from fhcnn.engine.losses import UnlabelledTerm
from fhcnn.engine.sampling import WindowSampler
from fhcnn.options import IGNORE


class _Scale(torch.nn.Module):
    """A per-voxel model: logits = weight * x (so each output voxel depends on its input only)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x


@pytest.mark.parametrize("kind", ["entropy", "pseudo", "teacher"])
def test_unlabelled_term_gives_no_gradient_through_labelled_voxels(kind):
    model = _Scale()
    x = torch.randn(2, 1, 3, 4, 5, requires_grad=True)
    y = torch.full((2, 3, 4, 5), IGNORE)
    y[:, :, :2] = torch.randint(2, (2, 3, 2, 5))          # the first two rows are labelled
    term = UnlabelledTerm(kind, 1.0, torch.ones(2), threshold=0.55, start=0, full=0)
    loss = term(model, x, model(x), y, step=5)
    assert loss.requires_grad and float(loss.detach()) > 0
    (g,) = torch.autograd.grad(loss, x)
    assert (g[:, :, :, :2] == 0).all()                    # labelled voxels: no gradient
    assert (g[:, :, :, 2:] != 0).any()


def test_unlabelled_term_ramp_and_reduce_depth():
    term = UnlabelledTerm("entropy", 2.0, torch.ones(2), start=10, full=20, reduce_depth=True)
    assert [term.ramp(s) for s in (0, 9, 10, 15, 20, 99)] == [0, 0, 0, 1.0, 2.0, 2.0]
    logits = torch.randn(1, 2, 4, 3, 3, requires_grad=True)     # (N, K, D, h, w)
    y = torch.full((1, 3, 3), IGNORE)                            # 2D labels: depth-mean logits
    assert float(term(None, None, logits, y, 0).detach()) == 0  # before the ramp: zero
    loss = term(None, None, logits, y, 15)
    p = torch.softmax(logits.mean(2), 1)
    assert float(loss.detach()) == pytest.approx(float(-(p * p.log()).sum(1).mean().detach()), rel=1e-5)
    with pytest.raises(ValueError, match="kind"):
        UnlabelledTerm("bogus", 1.0, torch.ones(2))


def test_pseudo_labels_only_where_confident():
    # voxel 0: confident class 0, voxel 1: unsure
    logits = torch.stack([torch.tensor([5.0, 0.1]), torch.tensor([-5.0, 0.0])]).view(1, 2, 1, 2, 1)
    y = torch.full((1, 1, 2, 1), IGNORE)
    term = UnlabelledTerm("pseudo", 1.0, torch.ones(2), threshold=0.9)
    term(None, None, logits, y, 0)
    assert term.last["pseudo_fraction"] == 0.5


def test_teacher_follows_the_student_slowly():
    model = _Scale()
    term = UnlabelledTerm("teacher", 1.0, torch.ones(2), ema=0.5)
    x, y = torch.randn(1, 1, 2, 2, 2), torch.full((1, 2, 2, 2), IGNORE)
    term(model, x, model(x), y, 0)
    with torch.no_grad():
        model.w.add_(2.0)
    term(model, x, model(x), y, 1)
    assert term.teacher is not None
    torch.testing.assert_close(term.teacher.w, torch.tensor([2.0, 0.0]).view(1, 2, 1, 1, 1))


def test_context_windows_keep_one_labelled_window_per_batch():
    vol = LazyVolume.from_array(np.random.default_rng(0).standard_normal((1, 4, 64, 64), np.float32))
    lab = np.full((64, 64), IGNORE, np.uint8)
    lab[30, 30], lab[31, 31] = 0, 1
    positions = [np.array([[30, 30]]), np.array([[31, 31]])]
    data = DataConfig(batch_size=4, reduce_depth=True, context_windows=1.0, jitter=0, noise=0)
    s = WindowSampler(vol, lab, (4, 8, 8), data, torch.ones(1), positions)
    assert s.context_count == 3
    gen = torch.Generator().manual_seed(0)
    for step in range(5):
        _, y = s(step, gen)
        assert (y[0] != IGNORE).any()                     # the first window is around a label
    half = DataConfig(batch_size=4, context_windows=0.5, reduce_depth=True)
    assert WindowSampler(vol, lab, (4, 8, 8), half, torch.ones(1), positions).context_count == 2


def test_change_features_shapes_and_zeros():
    """The log-ratio and spectral-angle channels of the change volume: standardized, the angle the
    same on every band, zero for constant features and for no change."""
    rng = np.random.default_rng(0)
    b, a = rng.uniform(0, 1, (5, 6, 4)), rng.uniform(0, 1, (5, 6, 4))

    def features(before, after):  # (2, B, H, W): ratio, angle
        return build_volume(before, after, "dates+diff+ratio+angle")[3:]

    f = features(b, a)
    assert f.shape == (2, 4, 5, 6) and f.dtype == np.float32
    np.testing.assert_allclose(f.reshape(2, -1).mean(1), 0, atol=1e-5)    # standardized
    assert (f[1] == f[1][:1]).all()                                       # angle: same on every band
    z = features(np.zeros((5, 6, 4)), np.zeros((5, 6, 4)))
    assert np.isfinite(z).all() and (z == 0).all()                        # constant features -> 0
    assert (features(b, b) == 0).all()                                    # no change: zero ratio/angle
    vol = build_volume(b.astype(np.float32), a.astype(np.float32), "dates+diff+ratio+angle")
    assert vol.shape == (5, 4, 5, 6) and np.isfinite(vol).all()
    np.testing.assert_allclose(vol[2], vol[1] - vol[0], atol=1e-6)


@pytest.mark.parametrize("pattern", ["random", "clustered"])
def test_sparse_labels_density_partition_and_classes(pattern):
    ref = np.full((60, 50), IGNORE, np.uint8)
    ref[5:40, 5:45] = 0
    ref[20:30, 10:20] = 1
    train, held = sparse_labels(ref, 0.02, pattern, seed=3)
    n = int((train != IGNORE).sum())
    assert abs(n - 0.02 * ref.size) <= 2 + (8 if pattern == "clustered" else 0)
    assert set(np.unique(train[train != IGNORE]).tolist()) == {0, 1}
    assert not ((train != IGNORE) & (held != IGNORE)).any()
    np.testing.assert_array_equal(np.where(train != IGNORE, train, held), ref)
    again, _ = sparse_labels(ref, 0.02, pattern, seed=3)
    np.testing.assert_array_equal(train, again)                           # seeded


def test_clustered_labels_are_compact():
    ref = np.zeros((80, 80), np.uint8)
    ref[:, 40:] = 1
    def spread(t):   # mean distance of a labelled pixel to its nearest other labelled pixel
        from scipy.spatial import cKDTree
        pts = np.argwhere(t != IGNORE)
        return float(cKDTree(pts).query(pts, k=2)[0][:, 1].mean())
    rand, _ = sparse_labels(ref, 0.02, "random", seed=0)
    clus, _ = sparse_labels(ref, 0.02, "clustered", seed=0, cluster_size=16)
    assert spread(clus) < 1.5 < spread(rand)


def test_sparse_labels_errors():
    ref = np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError, match="two classes"):
        sparse_labels(ref, 0.1)
    ref[0] = 1
    with pytest.raises(ValueError, match="density"):
        sparse_labels(ref, 0.0)
    with pytest.raises(ValueError, match="pattern"):
        sparse_labels(ref, 0.1, "grid")  # type: ignore[arg-type]


def test_fit_change_with_unlabelled_term_and_context_windows():
    s = make_bitemporal_scene(24, 24, 6, seed=1, field_size=10)
    train, _ = sparse_labels(s.change.astype(np.uint8), 0.05, "clustered", seed=0)
    cfg = load_config(ChangeConfig, "change-tiny", ["train.steps=4", "data.batch_size=2",
                                                    "data.unlabelled=teacher", "data.unlabelled_start=0",
                                                    "data.pseudo_threshold=0.5", "data.context_windows=0.5",
                                                    "change.channels=dates+diff+ratio+angle"])
    fit = fit_change(s.before, s.after, train, cfg, None, quiet=True, log=lambda *a: None)
    assert fit["pred"].shape == (24, 24)
    assert "pseudo_fraction" in fit["result"].history[-1]


def test_data_config_refuses_bad_unlabelled_values():
    with pytest.raises(ValueError, match="context_windows"):
        DataConfig(context_windows=1.5)
    with pytest.raises(ValueError, match="pseudo_threshold"):
        DataConfig(pseudo_threshold=1.0)
    with pytest.raises(ValueError, match="unlabelled"):
        load_config(ChangeConfig, "change-tiny", ["data.unlabelled=magic"])


def test_class_weights_are_the_unlabelled_terms_weights():
    lab = torch.tensor([0, 0, 0, 1, IGNORE])
    w = class_weights(lab, 2, 1.0)
    assert w[1] > w[0]


def test_derived_prediction_passes_fit_the_budget_and_are_logged():
    from fhcnn.apps.change.config import PREDICT_BUDGET, derive_settings

    cfg = load_config(ChangeConfig, "change", ["train.steps=300"])
    passes = []
    for side in (96, 400, 800, 1600):
        new, rec = derive_settings(cfg, side, side, side * side // 10)
        passes.append(new.data.predict_shifts * (2 if new.data.predict_flip else 1))
        assert {"predict_shifts", "predict_flip", "label_density"} <= set(rec)
        assert cfg.data.predict_shifts == 2 and cfg.data.predict_flip       # the input is not modified
        assert float(rec["predict_shifts"]["why"].split("time ")[1].split()[0]) <= PREDICT_BUDGET
    assert passes[0] == 4 and max(passes[1:]) < 4
    off = load_config(ChangeConfig, "change", ["change.auto=false"])
    assert derive_settings(off, 1600, 1600, 10) == (off, {})


def test_fit_change_logs_the_derived_settings():
    s = make_bitemporal_scene(24, 24, 6, seed=1, field_size=10)
    train, _ = sparse_labels(s.change.astype(np.uint8), 0.05, "random", seed=0)
    lines: list[str] = []
    cfg = load_config(ChangeConfig, "change-tiny", ["train.steps=2", "change.auto=true"])
    fit = fit_change(s.before, s.after, train, cfg, None, quiet=True, log=lines.append)
    assert set(fit["derived"]) >= {"predict_shifts", "label_density", "steps"}
    assert fit["config"].train.steps > 2                                  # covers the scene
    assert any(line.startswith("derived predict_shifts = ") for line in lines)


def test_derived_steps_cover_a_large_scene_and_class_weights_are_recorded():
    from fhcnn.apps.change.config import COVERAGE, derive_settings

    cfg = load_config(ChangeConfig, "change", ["train.steps=300"])
    small, rec = derive_settings(cfg, 96, 96, 900, 100)
    assert small.train.steps == 300                                  # small scene: the config's
    big, rec = derive_settings(cfg, 800, 800, 4400, 730)
    d = big.data
    assert big.train.steps * d.batch_size * d.window_height * d.window_width >= COVERAGE * 800 * 800
    w = rec["class_weights"]["value"]
    assert w[1] > w[0] and sum(w) == pytest.approx(2, abs=1e-2)


def test_sparse_scenes_get_the_analyst_features():
    from fhcnn.apps.change.config import SPARSE_DENSITY, derive_settings

    cfg = load_config(ChangeConfig, "change", [])
    n = 400 * 400
    sparse, rec = derive_settings(cfg, 400, 400, int(0.5 * SPARSE_DENSITY * n))
    assert sparse.change.channels == "dates+diff+ratio+angle" and sparse.data.unlabelled == "none"
    assert "sparse labels" in rec["channels"]["why"]
    dense, rec = derive_settings(cfg, 400, 400, int(2 * SPARSE_DENSITY * n))
    assert dense.change.channels == "dates" and dense.data.unlabelled == "none"
    assert "channels" not in rec


@pytest.mark.parametrize("kind", ["entropy", "pseudo", "teacher"])
def test_video_volume_trains_with_the_unlabelled_term(kind):
    """The engine's per-voxel path (video: labelled frames only) takes the same terms."""
    from fhcnn.engine import SegmentConfig, train_segmentation

    rng = np.random.default_rng(0)
    truth = np.zeros((8, 16, 16), np.uint8)
    for t in range(8):
        truth[t, 4:11, 2 + t:9 + t] = 1
    vol = rng.random((3, 8, 16, 16)).astype(np.float32) * 0.5
    vol[1][truth == 1] += 1.0
    lab = np.full_like(truth, IGNORE)
    lab[[0, 7]] = truth[[0, 7]]
    cfg = load_config(SegmentConfig, "video-tiny", ["train.steps=20", "train.lr=0.01", "data.window_depth=4",
                                                   "data.window_height=8", "data.window_width=8",
                                                   "data.batch_size=2", f"data.unlabelled={kind}",
                                                   "data.unlabelled_start=0.1", "data.pseudo_threshold=0.6",
                                                   "data.context_windows=0.5"])
    r = train_segmentation(vol, lab, cfg, quiet=True)
    assert len(r.history) == 20 and all(np.isfinite(h["loss"]) for h in r.history)
    assert r.predict(vol).shape == truth.shape


def test_per_class_labels_counts_partition_and_seeds():
    from fhcnn.apps.change.sparse import per_class_labels

    rng = np.random.default_rng(0)
    ref = rng.integers(0, 4, (30, 40)).astype(np.uint8)
    ref[:2] = 255                                              # no reference there
    ref[5, :3] = 4                                             # a class of 3 pixels
    train, held = per_class_labels(ref, 10, seed=1)
    lab = train != 255
    counts = np.bincount(train[lab], minlength=5)
    assert counts.tolist() == [10, 10, 10, 10, 2]              # n per class; the tiny class keeps one to score
    assert np.all(train[lab] == ref[lab])                      # the reference's classes
    assert not np.any(lab & (held != 255))                     # no pixel is both trained on and scored
    np.testing.assert_array_equal(np.where(lab, train, held), ref)  # every reference pixel in one of them
    assert np.all(held[:2] == 255) and np.all(train[:2] == 255)
    assert np.all(np.bincount(held[held != 255], minlength=5) >= 1)  # every class is scored
    again, _ = per_class_labels(ref, 10, seed=1)
    other, _ = per_class_labels(ref, 10, seed=2)
    np.testing.assert_array_equal(again, train)
    assert not np.array_equal(other, train)
    more, _ = per_class_labels(ref, 20, seed=1)
    assert np.bincount(more[more != 255], minlength=5).tolist() == [20, 20, 20, 20, 2]
    with pytest.raises(ValueError, match="at least 1"):
        per_class_labels(ref, 0)
    with pytest.raises(ValueError, match="two classes"):
        per_class_labels(np.zeros((4, 4), np.uint8), 2)
