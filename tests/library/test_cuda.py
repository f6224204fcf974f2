"""The same guarantees on a CUDA device: exact inverse, gradients equal to plain autograd,
CPU/CUDA agreement, GPU memory constant in depth, segmentation training end to end.

Skipped where CUDA is absent (CI has no GPU); run on a GPU machine with
``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fhcnn import HyperbolicNetwork
from fhcnn.memory import cuda_peak_bytes
from tests.conftest import rel_err

from .test_gradients import _grads
from .test_wavelets import _transforms

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")

CUDA = torch.device("cuda")


@pytest.fixture
def no_tf32():
    """Full float32 convolutions. On Ampere and newer GPUs PyTorch runs cuDNN convolutions in
    TF32 (10-bit mantissa) by default; the exactness tests below check the algorithm, so they
    switch that off; :func:`test_tf32_default_keeps_inverse_and_gradients_accurate` covers the
    default."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_wavelets_on_cuda_invert_and_match_cpu(dim):
    shape = (2, 3) + (16,) * dim
    for T in _transforms(dim, levels=2):
        T = T.double()
        x = torch.randn(shape, dtype=torch.float64)
        with torch.no_grad():
            y_cpu = T(x)
            Tc = T.to(CUDA)
            y = Tc(x.to(CUDA))
            assert y.device.type == "cuda"
            assert rel_err(y.cpu(), y_cpu) <= 1e-12
            assert rel_err(Tc.inverse(y).cpu(), x) <= 1e-12
            assert abs(y.norm().item() / x.norm().item() - 1) <= 1e-12
        Tf = T.float()
        with torch.no_grad():
            xf = x.float().to(CUDA)
            assert rel_err(Tf.inverse(Tf(xf)), xf) <= 1e-6


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_deep_3d_network_inverse_on_cuda(dtype, tol, no_tf32):
    units = [(10, "down"), (10, "down"), (10, "up"), (10, "up"), (10, None)]
    net = HyperbolicNetwork(4, units, dim=3, norm="group", wavelet="learnable").to(CUDA, dtype)
    x = torch.randn(1, 4, 16, 16, 16, dtype=dtype, device=CUDA)
    with torch.no_grad():
        yp, yc = net.forward_pair(x)
        assert rel_err(net.inverse(yp, yc), x) <= tol


def test_network_output_matches_cpu():
    torch.manual_seed(1)
    net = HyperbolicNetwork(4, [(3, "down"), (2, None), (3, "up")], dim=3, norm="group").double()
    x = torch.randn(2, 4, 8, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
        got = net.to(CUDA)(x.to(CUDA)).cpu()
    assert rel_err(got, ref) <= 1e-10


@pytest.mark.parametrize("dim", [2, 3])
def test_reversible_gradients_on_cuda_equal_plain_autograd(dim, no_tf32):
    """fp64: reversible and block gradients equal plain autograd to 1e-9. fp32: within 1e-4
    of the fp64 truth, or no further from it than 3x plain fp32 autograd is (the wavelet-angle
    gradients sum many cancelling terms; see tests/test_gradients.py)."""
    units = [(2, "down"), (2, "down"), (2, "up"), (2, "up")]
    x = torch.randn(2, 4, *([16] * dim), dtype=torch.float64, device=CUDA)
    grads = {}
    for dtype in (torch.float64, torch.float32):
        for mode in (False, True, "block"):
            torch.manual_seed(0)
            net = HyperbolicNetwork(4, units, dim=dim, reversible=mode, norm="group",
                                    wavelet="learnable", wavelet_init="db2").to(CUDA, dtype)
            grads[(mode, dtype)] = _grads(net, x.to(dtype))
    truth = grads[(False, torch.float64)]
    for mode in (True, "block"):
        for name in truth:
            assert rel_err(grads[(mode, torch.float64)][name], truth[name]) <= 1e-9, (mode, name)
            err = rel_err(grads[(mode, torch.float32)][name], truth[name])
            plain = rel_err(grads[(False, torch.float32)][name], truth[name])
            assert err <= max(1e-4, 3 * plain), (mode, name, err, plain)


def test_tf32_default_keeps_inverse_and_gradients_accurate():
    """With PyTorch's default TF32 convolutions the reconstruction is no longer exact to float32
    precision, but stays accurate (~1e-4 for 50 layers on an H200), and the memory-free gradient
    is as close to the float64 truth as plain autograd's TF32 gradient is."""
    assert torch.backends.cudnn.allow_tf32, "PyTorch's default is TF32 convolutions"
    units = [(10, "down"), (10, "down"), (10, "up"), (10, "up"), (10, None)]
    torch.manual_seed(0)
    net = HyperbolicNetwork(4, units, dim=3, norm="group", wavelet="learnable").to(CUDA)
    x = torch.randn(1, 4, 16, 16, 16, device=CUDA)
    with torch.no_grad():
        assert rel_err(net.inverse(*net.forward_pair(x)), x) <= 2e-3
    small = [(2, "down"), (2, "down"), (2, "up"), (2, "up")]
    xs = torch.randn(2, 4, 16, 16, 16, dtype=torch.float64, device=CUDA)
    grads = {}
    for mode, dtype in ((False, torch.float64), (False, torch.float32), (True, torch.float32)):
        torch.manual_seed(0)
        n = HyperbolicNetwork(4, small, dim=3, reversible=mode, norm="group").to(CUDA, dtype)
        grads[(mode, dtype)] = _grads(n, xs.to(dtype))
    truth = grads[(False, torch.float64)]
    for name in truth:
        plain = rel_err(grads[(False, torch.float32)][name], truth[name])
        rev = rel_err(grads[(True, torch.float32)][name], truth[name])
        assert rev <= max(1e-3, 3 * plain), (name, rev, plain)


def _peak_training_bytes(depth: int, reversible) -> int:
    """Peak CUDA memory of one forward+backward above what was allocated before. States
    dominate: 4 channels of 512x512 (4 MiB) at full and 16 of 256x256 at half resolution;
    the parameters are tiny (16-channel 3x3 kernels)."""
    n = depth // 2
    torch.manual_seed(0)
    net = HyperbolicNetwork(4, [(n, "down"), (n, "up")], dim=2, reversible=reversible).to(CUDA)
    x = torch.randn(1, 4, 512, 512, device=CUDA)
    return cuda_peak_bytes(lambda: net(x).square().sum().backward())[0]


def test_cuda_training_memory_constant_in_depth_for_reversible_only():
    rev = [_peak_training_bytes(d, True) for d in (8, 32)]
    plain = [_peak_training_bytes(d, False) for d in (8, 32)]
    state = 4 * 512 * 512 * 4
    assert rev[1] - rev[0] <= state // 4, (rev, plain)  # the 24 extra layers' gradients only
    assert plain[1] - plain[0] > 24 * state, (rev, plain)  # at least one state per extra layer
    assert plain[1] > 5 * rev[1], (rev, plain)


def test_segmentation_trains_and_predicts_on_cuda():
    from fhcnn.config import load_config
    from fhcnn.engine import IGNORE, SegmentConfig, segmentation_metrics, train_segmentation

    rng = np.random.default_rng(0)
    d, h, w = 8, 16, 16
    truth = np.zeros((d, h, w), np.int64)
    for t in range(d):
        truth[t, 4:11, 2 + t:9 + t] = 1
    vol = rng.random((3, d, h, w)).astype(np.float32) * 0.5
    vol[1][truth == 1] += 1.0
    lab = np.full_like(truth, IGNORE)
    lab[[0, 7]] = truth[[0, 7]]
    cfg = load_config(SegmentConfig, "video-tiny", ["train.steps=30", "train.lr=0.01", "train.device=cuda",
                                                    "data.window_depth=4", "data.window_height=8",
                                                    "data.window_width=8"])
    r = train_segmentation(vol, lab, cfg, quiet=True)
    assert r.device.type == "cuda"
    assert next(r.model.parameters()).device.type == "cuda"
    pred = r.predict(vol)
    held = truth.copy()
    held[[0, 7]] = IGNORE
    assert pred.shape == truth.shape
    assert segmentation_metrics(pred, held, 2)["miou"] > 0.65


def test_volume_command_trains_and_scores_on_cuda(tmp_path):
    """``fhcnn volume`` end to end with ``train.device=cuda``: fhcnn and the U-Net baseline train
    on the GPU, the probabilities (float16 zarr) sum to one and agree with the prediction, and
    both networks score above the pixelwise forest (a broken device path scores below it)."""
    import json

    import zarr

    from fhcnn.cli import main
    from fhcnn.data.synthetic_volumes import generate_volume

    shape = (32, 32, 32)
    c0, truth = generate_volume("cells", shape, seed=1, channel=0, dtype="uint8")
    lab = np.full(shape, 255, np.uint8)
    lab[[4, 15, 27]] = truth[[4, 15, 27]]
    for name, arr in (("c0", c0), ("truth", truth), ("lab", lab)):
        np.save(tmp_path / f"{name}.npy", arr)
    out = tmp_path / "out"
    small = [f"data.window_{a}=16" for a in ("depth", "height", "width")]
    rc = main(["volume", str(tmp_path / "c0.npy"), "--labels", str(tmp_path / "lab.npy"),
               "--eval-labels", str(tmp_path / "truth.npy"), "--out", str(out), "--save-probs",
               "--config", "volume-tiny", "--quiet"]
              + [a for s in ["train.device=cuda", "train.steps=150", "train.lr=0.01", "model.unet_base=8", *small]
                 for a in ("--set", s)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["device"].startswith("cuda")
    forest = m["baselines"]["forest"]["miou"]
    assert m["fhcnn"]["miou"] > forest + 0.05 and m["baselines"]["unet"]["miou"] > forest + 0.05, m
    p = np.asarray(zarr.open_array(str(out / "probabilities.zarr"), mode="r")[...]).astype(np.float32)
    np.testing.assert_allclose(p.sum(0), 1, atol=3e-3)
    top2 = np.sort(p, 0)[-2:]
    clear = top2[1] - top2[0] > 2e-3
    np.testing.assert_array_equal(p.argmax(0)[clear], np.load(out / "prediction.npy")[clear])
