"""Shared fixtures and helpers for the fhcnn test suite."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
import torch

# Tiny tensors: one intra-op thread is much faster than two (and avoids oversubscription
# when tests start subprocesses, e.g. the DDP and resume tests).
torch.set_num_threads(1)

# pytest-xdist's workers ignore SIGINT (the controller alone answers Ctrl-C), and a process
# inherits that: the tests' `fhcnn` processes would ignore the SIGINT the Ctrl-C tests send them
# (fhcnn keeps SIGINT ignored when started so, as a background job needs). Answered as Python
# answers it by default, in the workers as in a run without them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def taylor_slopes(f, x, dx, g, hs):
    """Slopes log2(r(h)/r(h/2)) of the first-order Taylor remainder: near 2 iff g is right."""
    r = [abs(f(x + h * dx) - f(x) - h * (g * dx).sum().item()) for h in hs]
    return [math.log2(a / b) for a, b in zip(r, r[1:])]


def write_video_files(folder: Path, video) -> tuple[Path, Path, Path]:
    """The frames of ``video`` (``(T, H, W, 3)`` uint8) as a folder of PNGs (``frames/``), a GIF
    (``v.gif``) and an ``.npy`` (``v.npy``) in ``folder``; returns the three paths."""
    import numpy as np
    from PIL import Image

    fdir = folder / "frames"
    fdir.mkdir()
    for i, f in enumerate(video):
        Image.fromarray(f).save(fdir / f"{i:05d}.png")
    ims = [Image.fromarray(f) for f in video]
    ims[0].save(folder / "v.gif", save_all=True, append_images=ims[1:])
    np.save(folder / "v.npy", video)
    return fdir, folder / "v.gif", folder / "v.npy"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (a fresh clone has no shared data)")
    return SHARED_DATA
