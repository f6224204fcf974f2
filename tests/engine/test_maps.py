"""One 2D label map of a single-date cube (``fhcnn.engine.maps``): the volume it is given as,
and training and prediction through the engine's depth-mean path."""

from __future__ import annotations

import numpy as np
import pytest

from fhcnn.apps.change.sparse import per_class_labels
from fhcnn.config import load_config
from fhcnn.engine import IGNORE, SegmentConfig, segmentation_metrics
from fhcnn.engine.maps import cube_volume, fit_map


def _scene(h: int = 16, w: int = 20, bands: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes in vertical stripes, each with its own spectrum (level and shape), plus noise."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((h, w), np.uint8)
    truth[:, w // 3:] = 1
    truth[:, 2 * w // 3:] = 2
    spectra = np.stack([np.linspace(0, 1, bands), 1.5 + np.linspace(1, 0, bands),
                        3.5 + 0.5 * np.sin(np.linspace(0, 3, bands))])
    cube = spectra[truth] + 0.05 * rng.standard_normal((h, w, bands))
    return cube.astype(np.float32), truth


def test_cube_volume_bands_standardized_binned_and_indexed():
    cube, _ = _scene(bands=12)
    cube[..., 3] = 7.0                                  # a constant band
    v = cube_volume(cube)
    assert v.shape == (1, 12, 16, 20) and v.dtype == np.float32
    np.testing.assert_allclose(v[0].mean(axis=(1, 2)), 0, atol=1e-5)
    sd = v[0].std(axis=(1, 2))
    np.testing.assert_allclose(np.delete(sd, 3), 1, atol=1e-4)
    assert np.all(v[0, 3] == 0)
    raw = cube_volume(cube, normalize=False, bands=4)   # 12 bands -> 4 means of 3 adjacent bands
    assert raw.shape == (1, 4, 16, 20)
    np.testing.assert_allclose(raw[0, 1], cube[..., 3:6].mean(-1), rtol=1e-6)
    np.testing.assert_allclose(cube_volume(cube, normalize=False, bands=5)[0, -1], cube[..., 9:].mean(-1), rtol=1e-6)
    idx = cube_volume(cube, bands=4, band_index=True)
    assert idx.shape == (2, 4, 16, 20)
    np.testing.assert_allclose(idx[1, :, 0, 0], np.linspace(-1, 1, 4))
    assert np.all(idx[1] == idx[1, :, :1, :1])          # the same at every pixel
    with pytest.raises(ValueError, match=r"\(H, W, B\)"):
        cube_volume(cube[0])


@pytest.mark.parametrize("scale,band_index", [(1.0, False), (0.5, True)])
def test_fit_map_trains_a_single_date_cube_and_predicts_every_pixel(scale, band_index):
    cube, truth = _scene()
    train, held = per_class_labels(truth, 20, seed=0)
    vol = cube_volume(cube, band_index=band_index)
    # reduce_depth is off in the config: fit_map sets it (the labels are one 2D map)
    cfg = load_config(SegmentConfig, "video-tiny", [
        "train.steps=60", "train.lr=0.01", "data.window_height=8", "data.window_width=8",
        "data.window_depth=4", f"data.scale={scale}"])
    assert not cfg.data.reduce_depth
    fit = fit_map(vol, train, cfg)
    assert fit.result.config.data.reduce_depth and not cfg.data.reduce_depth   # config not modified
    assert fit.result.num_classes == 3
    assert fit.pred.shape == (16, 20) and fit.pred.dtype == np.uint8
    assert fit.prob.shape == (3, 16, 20)
    np.testing.assert_allclose(fit.prob.sum(0), 1, atol=1e-4)
    np.testing.assert_array_equal(fit.pred, fit.prob.argmax(0))
    assert fit.geometry.scaled == ((8, 10) if scale == 0.5 else (16, 20))
    m = fit.result.model.size_multiple
    assert fit.result.window[0] == -(-10 // m) * m        # the whole band axis, rounded up
    assert fit.train_time_s > 0 and fit.predict_time_s > 0
    score = segmentation_metrics(fit.pred, held, 3, per_frame=False)["miou"]
    assert score > 0.6, score


def test_fit_map_refuses_mismatched_inputs():
    cube, truth = _scene()
    cfg = load_config(SegmentConfig, "video-tiny", ["train.steps=1"])
    vol = cube_volume(cube)
    with pytest.raises(ValueError, match=r"labels shape \(16, 19\) must equal the volume's \(H, W\)"):
        fit_map(vol, truth[:, :19], cfg)
    with pytest.raises(ValueError, match=r"\(C, D, H, W\)"):
        fit_map(vol[0], truth, cfg)
    one = np.full_like(truth, IGNORE)
    one[0, 0] = 0
    with pytest.raises(ValueError, match="at least two classes"):
        fit_map(vol, one, cfg)
