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
