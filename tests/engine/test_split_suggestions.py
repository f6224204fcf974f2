"""Every change a ``parallel.space`` error suggests passes the same check.

:func:`fhcnn.engine.parallel.check_space_split` refuses a split that cannot work and says what
would: a window length, ``data.predict_shifts=1``, another number of slabs (with the number of
processes to launch), another split axis, a batch size. Each suggestion is applied the way a
user applies it (``--set key=value``, ``torchrun --nproc-per-node N``) and the check rerun.
"""

from __future__ import annotations

import os
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhcnn.config import load_config
from fhcnn.engine import SegmentConfig
from fhcnn.engine.parallel import SplitError, check_space_split, fix_sets, fix_text

SIZE = st.integers(1, 40)


def _check(sets: list[str], shape: tuple[int, int, int], world: int) -> None:
    cfg = load_config(SegmentConfig, "video-tiny", sets)
    with mock.patch.dict(os.environ, {"WORLD_SIZE": str(world)}):
        os.environ.pop("RANK", None)
        check_space_split(cfg, shape, cfg.data.reduce_depth)


def _suggestions_pass(sets: list[str], shape: tuple[int, int, int], world: int) -> list[dict[str, Any]]:
    """Run the check; apply every suggestion of its error and rerun it. Returns the suggestions."""
    try:
        _check(sets, shape, world)
    except SplitError as e:
        message = str(e)
        assert "\n" not in message
        for fix in e.fixes:
            assert fix_text(fix) in message, (fix, message)
            applied = sets + fix_sets(fix)
            try:
                _check(applied, shape, int(fix.get("processes", world)))
            except SplitError as again:
                raise AssertionError(f"the suggestion {fix_text(fix)!r} of\n  {message}\nfails the same "
                                     f"check:\n  {again}") from None
        return e.fixes
    return []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.tuples(SIZE, SIZE, SIZE),
       window=st.tuples(st.integers(0, 24), st.integers(0, 24), st.integers(0, 24)),
       predict=st.tuples(st.integers(-1, 48), st.integers(-1, 48), st.integers(-1, 48)),
       shifts=st.integers(1, 4), pre_levels=st.integers(0, 2), batch=st.integers(1, 4),
       split=st.sampled_from([(2, [0], []), (2, [1], []), (2, [2], []), (3, [2], []), (4, [1], []),
                              (4, [0, 1], [2, 2]), (4, [1, 2], [2, 2]), (6, [0, 2], [3, 2])]),
       reduce_depth=st.booleans(), head=st.sampled_from([0, 0, 4]),
       replicas=st.sampled_from([1, 1, 2]), off=st.booleans())
def test_every_suggestion_passes_the_check(shape, window, predict, shifts, pre_levels, batch, split,
                                           reduce_depth, head, replicas, off) -> None:
    space, axes, grid = split
    if head and not reduce_depth:
        head = 0  # a spectral head needs one 2D label map (refused elsewhere, before this check)
    keys = ("window_depth", "window_height", "window_width")
    pkeys = ("predict_depth", "predict_height", "predict_width")
    sets = ([f"data.{k}={v}" for k, v in zip(keys, window)]
            + [f"data.{k}={v}" for k, v in zip(pkeys, predict)]
            + [f"data.predict_shifts={shifts}", f"model.pre_levels={pre_levels}",
               f"data.batch_size={batch}", f"data.reduce_depth={str(reduce_depth).lower()}",
               f"model.spectral_head={head}", f"parallel.space={space}",
               f"parallel.axes=[{','.join(map(str, axes))}]", f"parallel.grid=[{','.join(map(str, grid))}]"])
    world = space * replicas + (1 if off else 0)  # sometimes a world size the split cannot use
    _suggestions_pass(sets, shape, world)


def test_whole_width_prediction_window_suggests_a_width_that_passes() -> None:
    """A 64-wide video, the whole width as prediction window, 2 shifted tilings: the tilings
    continue W to 64 and 66, so 2 slabs of a multiple of 2 fail on 66. Proposing the nearest
    multiple of 4 above (68) fails again (the window is cut to the padded 66); 64 passes."""
    sets = ["parallel.space=2", "parallel.axes=[2]", "data.predict_width=0"]
    fixes = _suggestions_pass(sets, (6, 16, 64), 2)
    assert fixes[0] == {"data.predict_width": 64}
    assert {"data.predict_shifts": 1} in fixes
    with pytest.raises(SplitError):  # what was proposed before
        _check(sets + ["data.predict_width=68"], (6, 16, 64), 2)


@pytest.mark.parametrize("sets,shape,world,first", [
    # 4 slabs of a 4-deep window: 8 fails at prediction (the 6 frames continue to 6 and 8)
    (["parallel.space=4"], (6, 16, 24), 4, {"parallel.space": 2, "processes": 2}),
    (["parallel.space=2"], (6, 16, 24), 3, {"processes": 2}),
    (["parallel.space=2"], (6, 16, 24), 4, {"data.batch_size": 2}),
    # unsplit, every process is a data-parallel replica: video-tiny's batch of 1 becomes 2
    (["parallel.space=2", "model.arch=unet"], (6, 16, 24), 2, {"parallel.space": 1, "data.batch_size": 2}),
    (["parallel.space=2", "model.arch=unet", "data.batch_size=2"], (6, 16, 24), 2, {"parallel.space": 1}),
    (["parallel.space=2", "parallel.axes=[1]", "data.window_height=10"], (6, 16, 24), 2,
     {"data.window_height": 8}),
])
def test_each_error_offers_a_passing_fix(sets, shape, world, first) -> None:
    fixes = _suggestions_pass(sets, shape, world)
    assert fixes and fixes[0] == first
