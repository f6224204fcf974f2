"""Spatial (domain) parallelism: a volume split over 2 and 4 Gloo processes equals one process.

The multi-process tests spawn their own processes (``tests/_spatial_worker.py``) or launch
``torchrun`` (``benchmarks/spatial_train.py``); they skip where ``torch.distributed`` or Gloo
is missing.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from fhcnn import HyperbolicNetwork
from fhcnn.models import DenseHyperbolicModel
from fhcnn.spatial import (
    SpatialSplit,
    SplitBatchNorm,
    SplitGroupNorm,
    SplitLearnableWavelet,
    SplitSymmetricLayer,
    halo_pad,
    nearest_valid_split,
    reduce_gradients,
    size_multiple,
    split_module,
)
from fhcnn.training.distributed import launch_env
from tests.conftest import rel_err

REPO = Path(__file__).resolve().parents[3]
# loopback only on Linux: the tests must not depend on how the machine resolves its host name
LOOPBACK = "lo" if sys.platform.startswith("linux") else None
TOL = {"float32": 1e-5, "float64": 1e-10}

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with Gloo is not available here")


def _spawn(world: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    import torch.multiprocessing as mp

    from tests._spatial_worker import worker

    if LOOPBACK:
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", LOOPBACK)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(worker, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world, join=True)
    results = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("result-*.json"))]
    skips = [r["skip"] for r in results if "skip" in r]
    if skips:
        pytest.skip(f"cannot start Gloo processes here: {skips[0]}")
    errors = [r["error"] for r in results if "error" in r]
    assert not errors, errors[0]
    return json.loads((tmp_path / "result-0.json").read_text())


@needs_gloo
def test_split_equals_single_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On 2 and 4 processes (one spawn): forward, inverse, input and parameter gradients (all
    three gradient modes, fp32 and fp64), batch-norm running statistics, input statistics, and
    saved bytes per process of a reversible step."""
    result = _spawn(4, tmp_path, monkeypatch)
    assert sum(k.startswith("2 processes") for k in result) == 7
    assert sum(k.startswith("4 processes") for k in result) == 5
    worst = {}
    for case, modes in result.items():
        world, dtype = int(case.split()[0]), case.rsplit(" ", 1)[1]
        for mode, r in modes.items():
            for what, err in r["errors"].items():
                key = (world, dtype, mode)
                worst[key] = max(worst.get(key, 0.0), err)
                assert err <= TOL[dtype], f"{case}, reversible={mode}: {what} rel. error {err:.2e}"
            if mode in ("true", "block"):  # the stored pairs are slabs: exactly 1/N
                assert r["saved_split"] * world == r["saved_single"], (case, mode, r)
    print("max relative error:", {f"N={n} {d} {m}": f"{e:.1e}" for (n, d, m), e in sorted(worst.items())})


@needs_gloo
def test_training_under_torchrun_equals_one_process(tmp_path: Path) -> None:
    """5 SGD steps on 4 processes (2 data replicas x 2 slabs along D) end at the one-process weights."""
    from safetensors.torch import load_file

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import spatial_train
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    env = launch_env(pythonpath=[REPO / "src"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
           str(REPO / "benchmarks" / "spatial_train.py"), "--data", "2", "--grid", "2", "--axes", "0",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    split = SpatialSplit(3, (0,), (1,))
    single = spatial_train.train(split)
    got = load_file(str(tmp_path / "model.safetensors"))
    start = spatial_train.build().state_dict()
    diff = max((got[k] - v).abs().max().item() for k, v in single["state"].items())
    moved = max((start[k] - v).abs().max().item() for k, v in single["state"].items())
    logged = json.loads((tmp_path / "train.json").read_text())["losses"]
    print(f"torchrun data 2 x space 2 vs one process: max |weight difference| {diff:.2e} "
          f"(training moved the weights by up to {moved:.2e})")
    assert moved > 1e-2
    assert diff < 1e-6
    assert logged == pytest.approx(single["losses"], rel=1e-6)


# ----------------------------------------------------------------- one process
@pytest.mark.parametrize("wavelet,norm", [("haar", "group"), ("learnable", "batch")])
def test_one_slab_is_the_network(wavelet: str, norm: str) -> None:
    """A split over one process (local halo: zeros, or the periodic wrap) is the same network."""
    torch.manual_seed(0)
    net = HyperbolicNetwork(2, [(1, "down"), (1, "up"), (1, None)], dim=3, hidden=4, norm=norm,
                            wavelet=wavelet, wavelet_init="db2", h=0.5).double()
    ref = copy.deepcopy(net)
    split = SpatialSplit(3, (0, 2), (1, 1))
    split_module(net, split)
    assert isinstance(net.layers[0], SplitSymmetricLayer)
    assert isinstance(net.layers[0].norm, SplitGroupNorm if norm == "group" else SplitBatchNorm)
    if wavelet == "learnable":
        assert isinstance(net.transitions[0], SplitLearnableWavelet)
    x = torch.randn(2, 2, 4, 4, 4, dtype=torch.float64)
    for mode in (True, False):
        net.reversible = ref.reversible = mode
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = net(xa), ref(xb)
        ya.square().sum().backward()
        yb.square().sum().backward()
        assert rel_err(ya, yb) < 1e-13 and rel_err(xa.grad, xb.grad) < 1e-12
        for (n, p), q in zip(net.named_parameters(), ref.parameters()):
            assert rel_err(p.grad, q.grad) < 1e-12, n
        net.zero_grad()
        ref.zero_grad()
    reduce_gradients(net, split)  # no group: a no-op
    net.eval()
    ref.eval()  # batch norm: the running statistics, updated identically in training
    with torch.no_grad():
        assert rel_err(net(x), ref(x)) < 1e-13


def test_split_module_shares_parameters_and_state_dict() -> None:
    torch.manual_seed(0)
    model = DenseHyperbolicModel(1, 2, 8, [(1, "down"), (1, "up"), (1, "up")], dim=3, pre_levels=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    split_module(model, SpatialSplit(3, (1,), (1,)))
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert size_multiple(model) == 4 and size_multiple(model.net) == 2
    assert "split=(1,) on axes (1,)" in repr(model.net.layers[0])
    twin = copy.deepcopy(model)  # the split (process groups) is shared, not copied
    assert twin.net.layers[0].split is model.net.layers[0].split


def test_split_errors_name_the_axis_and_the_nearest_valid_split() -> None:
    split = SpatialSplit(3, (0, 2), (1, 1))
    split.grid = (4, 2)  # validation only: pretend a 4 x 2 grid
    with pytest.raises(ValueError, match=r"spatial axis 0 \(D\) of size 24 cannot be split into 4 slabs.*"
                                         r"multiple of 4.*Nearest valid size for 4 slabs: 32; or split this "
                                         r"size into 3 slab\(s\) \(valid: \[3, 2, 6, 1\]\)"):
        split.check((24, 8, 8), multiple=4)
    with pytest.raises(ValueError, match=r"spatial axis 2 \(W\) of size 12 .* into 2 slabs: each slab "
                                         r"\(12/2 = 6\).*Nearest valid size for 2 slabs: 16.*valid: \[1, 3\]"):
        split.check((32, 8, 12), multiple=4)
    with pytest.raises(ValueError, match=r"size 9 .*no number of slabs works"):
        split.check((32, 8, 9), multiple=2)
    split.check((32, 8, 16), multiple=4)
    assert nearest_valid_split(30, 4, 4) == (32, [])
    assert nearest_valid_split(24, 4, 2) == (24, [4, 3, 2, 6, 1, 12])
    with pytest.raises(ValueError, match="grid .* needs 2 processes, but the space group has 1"):
        SpatialSplit(3, (0,), (2,))
    with pytest.raises(ValueError, match="axes must be distinct"):
        SpatialSplit(2, (2,), (1,))
    one = SpatialSplit(3, (0,), (1,))
    with pytest.raises(ValueError, match=r"spatial axis 0 \(D\): the slab has 1 plane\(s\) but the halo needs 2"):
        halo_pad(torch.zeros(1, 1, 1, 4, 4), one, 2)
    with pytest.raises(ValueError, match="the split is 3D but the layer is 2D"):
        split_module(HyperbolicNetwork(2, [(1, None)], dim=2), one)
    with pytest.raises(TypeError, match="looks at neighbours"):
        split_module(torch.nn.Sequential(torch.nn.Conv3d(1, 1, 3)), one)


def test_scatter_gather_one_process() -> None:
    split = SpatialSplit(3, (1,), (1,))
    x = torch.randn(1, 2, 4, 8, 4)
    assert torch.equal(split.gather(split.scatter(x, 4)), x)
    assert split.local_shape((4, 8, 4)) == (4, 8, 4)
    assert "H x1" in split.describe()
