"""The engine works out a run once (engine/plan.py): every size is computed in one place, one
time per command, and every check happens before the output folder exists."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest

from fhcnn.cli import main
from fhcnn.data.hyperspectral import make_bitemporal_scene


@pytest.fixture
def scene(tmp_path):
    s = make_bitemporal_scene(20, 24, 6, seed=2, field_size=10)
    for name in ("before", "after", "change"):
        np.save(tmp_path / f"{name}.npy", getattr(s, name))
    return tmp_path


def _count_calls(monkeypatch, targets: list[tuple[object, str]]) -> collections.Counter:
    calls: collections.Counter = collections.Counter()
    for owner, name in targets:
        original = getattr(owner, name)

        def counted(*a, _f=original, _n=name, **k):
            calls[_n] += 1
            return _f(*a, **k)

        monkeypatch.setattr(owner, name, counted)
    return calls


def test_one_change_command_works_out_each_size_once(scene: Path, tmp_path, monkeypatch) -> None:
    import fhcnn.apps.change.config as change_config
    import fhcnn.apps.change.pipeline as change_pipeline
    import fhcnn.engine.parallel as parallel
    import fhcnn.engine.plan as plan
    from fhcnn.engine.sizes import Geometry

    calls = _count_calls(monkeypatch, [
        (change_pipeline, "derive_settings"), (change_pipeline, "prepare"), (plan, "prediction_tilings"),
        (plan, "training_window"), (parallel, "check_space_split")])
    # derive_settings estimates the cost of one tiling before it picks the shifts: counted apart
    estimate = _count_calls(monkeypatch, [(change_config, "prediction_tilings")])
    geometry = collections.Counter()
    original = Geometry.of.__func__

    def of(cls, *a, **k):
        geometry["Geometry.of"] += 1
        return original(cls, *a, **k)

    monkeypatch.setattr(Geometry, "of", classmethod(of))
    rc = main(["change", str(scene / "before.npy"), str(scene / "after.npy"), "--labels", str(scene / "change.npy"),
               "--label-fraction", "0.2", "--out", str(tmp_path / "out"), "--config", "change-tiny", "--quiet",
               "--set", "change.auto=true", "--set", "train.steps=2"])
    assert rc == 0
    assert dict(calls + geometry) == {"derive_settings": 1, "prepare": 1, "prediction_tilings": 1,
                                      "training_window": 1, "check_space_split": 1, "Geometry.of": 1}
    assert dict(estimate) == {"prediction_tilings": 1}


def test_the_plan_is_checked_before_the_output_folder_exists(scene: Path, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    nan = np.load(scene / "before.npy")
    nan[3, 4, 1] = np.nan
    np.save(scene / "nan.npy", nan)
    base = ["change", str(scene / "before.npy"), str(scene / "after.npy"), "--labels", str(scene / "change.npy"),
            "--out", str(out), "--config", "change-tiny", "--quiet"]
    cases = [(base + ["--set", "model.width=0"], "width must be >= 1"),
             (base + ["--set", "model.units=2down,2down,2down,2", "--set", "model.hidden=x"], "hidden"),
             (base + ["--set", "parallel.space=2"], "cannot be split into 2 slabs"),
             (["change", str(scene / "nan.npy"), *base[2:]], "NaN")]
    for args, what in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert what in err and err.count("\n") == 1, err
        assert not out.exists()


def test_a_channel_float32_would_flatten_is_read_standardized_and_read_from_keeps_it() -> None:
    """``prepare`` reads a float64 channel far from zero standardized in float64 (every app);
    ``read_from`` (the run folder's copy of the same values) reads it the same way."""
    from fhcnn.engine import SegmentConfig
    from fhcnn.engine.plan import DenseInputs, prepare

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 8, 8, 8))
    labels = np.full((8, 8, 8), 255, np.uint8)
    labels[0, :4], labels[0, 4:] = 0, 1
    cfg = SegmentConfig()
    near = prepare(DenseInputs(x, labels, 2), cfg)
    far = prepare(DenseInputs(x + 1e9, labels, 2), cfg)
    assert near.standardized == [None] and far.standardized[0] is not None
    w_near = near.volume.window((0, 0, 0), (8, 8, 8))
    w_far = far.volume.window((0, 0, 0), (8, 8, 8))
    # the same values up to the standardization: correlation 1 (a float32 read at 1e9: steps of 64)
    assert np.corrcoef(w_near.ravel(), w_far.ravel())[0, 1] > 0.999999
    far.read_from([(x + 1e9)[0].copy()])
    np.testing.assert_array_equal(far.volume.window((0, 0, 0), (8, 8, 8)), w_far)
    # a volume handed to prepare already read through a view: read_from takes the values the
    # view reads and does not standardize them again
    from fhcnn.data.lazy import LazyVolume, Standardized

    view = Standardized((x + 1e9)[0], 1e9, 1.0)
    given = prepare(DenseInputs(LazyVolume([view]), labels, 2), cfg)
    assert given.standardized == [None]
    given.read_from([view[...]])
    np.testing.assert_allclose(given.volume.window((0, 0, 0), (8, 8, 8)), view[...][None], atol=1e-6)


def test_change_dates_equal_only_as_float32_are_not_identical(tmp_path, capsys) -> None:
    """Two float64 dates differing by 1 at 1e9 are different dates (a float32 comparison
    equated them and refused the pair as identical)."""
    rng = np.random.default_rng(0)
    a = rng.random((16, 16, 4))
    b = a.copy()
    b[4:9, 4:9] += 1
    np.save(tmp_path / "a.npy", a + 1e9)
    np.save(tmp_path / "b.npy", b + 1e9)
    lab = np.full((16, 16), 255, np.uint8)
    lab[4:6, 4:6], lab[12:, 12:] = 1, 0
    np.save(tmp_path / "l.npy", lab)
    assert main(["change", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--labels", str(tmp_path / "l.npy"),
                 "--config", "change-tiny", "--quiet", "--out", str(tmp_path / "o")]) == 0
