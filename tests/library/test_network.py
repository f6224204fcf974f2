"""HyperbolicNetwork: exact inverse, determinism, modes sharing parameters, clear errors."""

from __future__ import annotations

import re

import pytest
import torch

from fhcnn import HyperbolicNetwork
from tests.conftest import rel_err

DEEP_3D = [(20, "down"), (20, "down"), (20, "up"), (20, "up"), (20, None)]  # 100 layers


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_inverse_of_deep_3d_network(dtype, tol):
    net = HyperbolicNetwork(4, DEEP_3D, dim=3).to(dtype)
    assert net.depth == 100
    x = torch.randn(1, 4, 8, 8, 8, dtype=dtype)
    with torch.no_grad():
        yp, yc = net.forward_pair(x)
        assert yc.shape == x.shape
        assert rel_err(net.inverse(yp, yc), x) <= tol
        # and the other order: forward(inverse(pair)) == pair
        xp, xc = net.inverse(yp, yc, return_pair=True)
        zp, zc = net.forward_pair(xp, xc)
    assert rel_err(zc, yc) <= tol and rel_err(zp, yp) <= tol


@pytest.mark.parametrize("wavelet", ["haar", "learnable"])
@pytest.mark.parametrize("norm", ["none", "batch", "group", "instance"])
def test_inverse_2d_all_options(wavelet, norm):
    net = HyperbolicNetwork(3, [(3, "down"), (2, None), (3, "up")], dim=2, norm=norm,
                            wavelet=wavelet, wavelet_init="db2").double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for mode in (True, False):
        net.train(mode)
        with torch.no_grad():
            yp, yc = net.forward_pair(x)
            assert rel_err(net.inverse(yp, yc), x) < 1e-12


def test_starting_pair_can_be_two_tensors():
    net = HyperbolicNetwork(2, [(4, "down"), (4, "up")], dim=2).double()
    a, b = torch.randn(2, 1, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        pair = net.forward_pair(a, b)
        ra, rb = net.inverse(*pair, return_pair=True)
    assert rel_err(ra, a) < 1e-12 and rel_err(rb, b) < 1e-12


def test_coarse_start_like_the_papers_table2_net():
    net = HyperbolicNetwork(384, [(1, "up"), (1, "up"), (1, None)], dim=3, hidden=8)
    x = torch.randn(1, 384, 2, 2, 2)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, 6, 8, 8, 8) and net.out_channels == 6
    assert "384 channels" in net.describe() and "then up" in net.describe()
    assert net.output_shape((1, 384, 2, 2, 2)) == (1, 6, 8, 8, 8)


def test_same_seed_same_parameters_and_state_dict_shared_across_modes():
    nets = []
    for mode in (True, "block", False):
        torch.manual_seed(123)
        nets.append(HyperbolicNetwork(4, [(2, "down"), (2, "up")], dim=2, reversible=mode,
                                      norm="batch", wavelet="learnable"))
    sds = [n.state_dict() for n in nets]
    for sd in sds[1:]:
        assert sd.keys() == sds[0].keys()
        assert all(torch.equal(sd[k], sds[0][k]) for k in sd)
    nets[2].load_state_dict(sds[0])
    x = torch.randn(2, 4, 8, 8)
    nets[0].eval(), nets[2].eval()
    with torch.no_grad():
        assert torch.equal(nets[0](x), nets[2](x))


def test_mode_switch_validation():
    net = HyperbolicNetwork(4, [(2, None)])
    net.reversible = "block"
    net.reversible = False
    for bad in ("yes", 2, None):
        with pytest.raises(ValueError, match="reversible"):
            net.reversible = bad


def test_clear_errors_for_bad_inputs_and_options():
    net = HyperbolicNetwork(4, [(2, "down"), (2, "down"), (2, "up"), (2, "up")], dim=2)
    with pytest.raises(ValueError, match="3 channels, but the network expects 4"):
        net(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"axis 1 has size 18.*2\*\*2=4.*nearest valid size is (16|20)"):
        net(torch.randn(1, 4, 16, 18))
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        net(torch.randn(4, 16, 16))
    with pytest.raises(TypeError, match="floating-point"):
        net(torch.zeros(1, 4, 16, 16, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        net([1, 2, 3])
    with pytest.raises(ValueError, match=r"inverse y_prev .*axis 1 has size 18"):
        net.inverse(torch.randn(1, 4, 16, 18), torch.randn(1, 4, 16, 18))
    with pytest.raises(ValueError, match=r"y_prev \(1, 4, 16, 16\) and y_cur \(2, 4, 16, 16\) differ in shape"):
        net.inverse(torch.randn(1, 4, 16, 16), torch.randn(2, 4, 16, 16))
    with pytest.raises(ValueError, match=r"x \(1, 4, 16, 16\) and x_cur \(2, 4, 16, 16\) differ in shape"):
        net.forward_pair(torch.randn(1, 4, 16, 16), torch.randn(2, 4, 16, 16))
    x = torch.randn(1, 4, 16, 16)
    with pytest.raises(TypeError, match="x_cur must be a torch.Tensor, got list"):
        net.forward_pair(x, [1.0])
    with pytest.raises(ValueError, match=r"x \(torch.float32.* and x_cur \(torch.float64.* differ in dtype"):
        net.forward_pair(x, x.double())
    with pytest.raises(ValueError, match=r"y_prev \(torch.float64.* and y_cur \(torch.float32.* differ in dtype"):
        net.inverse(x.double(), x)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*dim"):
        HyperbolicNetwork(6, [(1, "up")], dim=2)
    with pytest.raises(ValueError, match="unit"):
        HyperbolicNetwork(4, [(2, "sideways")])
    with pytest.raises(ValueError, match="at least one layer"):
        HyperbolicNetwork(4, [(0, "down")])
    with pytest.raises(ValueError, match="h must be"):
        HyperbolicNetwork(4, [(1, None)], h=0)
    for h in (float("inf"), True):
        with pytest.raises(ValueError, match="h must be"):
            HyperbolicNetwork(4, [(1, None)], h=h)
    with pytest.raises(ValueError, match="dim must be 1, 2 or 3, got 2.0"):
        HyperbolicNetwork(4, [(1, "down")], dim=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="wavelet_init must be 'haar' or 'db2', got 'db4'"):
        HyperbolicNetwork(4, [(1, "down")], wavelet_init="db4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hidden must be None, an int or one int per unit"):
        HyperbolicNetwork(4, [(1, None)], hidden="8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hidden has 1 entries"):
        HyperbolicNetwork(4, [(1, None), (1, None)], hidden=[3])


def test_counts_are_ints_not_booleans_or_floats():
    """Every count the library's modules take (dims, levels, channels, widths, layers) refuses
    ``True`` and ``2.0`` in one line naming it, instead of building a module with one channel
    or one level."""
    from fhcnn import HaarDWT
    from fhcnn.layers import SymmetricLayer
    from fhcnn.models import ConvVAE, DenseHyperbolicModel, SpectralHead, UNet3D

    cases = [
        (lambda v: HaarDWT(2, levels=v), "levels"),
        (lambda v: HaarDWT(v), "dim"),
        (lambda v: HyperbolicNetwork(v, [(1, None)]), "channels"),
        (lambda v: HyperbolicNetwork(4, [(v, None)]), "each unit"),
        (lambda v: HyperbolicNetwork(4, [(1, None)], hidden=v), "hidden"),
        (lambda v: HyperbolicNetwork(4, [(1, None), (1, None)], hidden=[4, v]), "hidden"),
        (lambda v: SymmetricLayer(4, v), "hidden"),
        (lambda v: SymmetricLayer(4, dim=2, kernel_size=v), "kernel_size"),
        (lambda v: DenseHyperbolicModel(1, v, 8, [(1, None)], dim=2), "num_classes"),
        (lambda v: DenseHyperbolicModel(1, 2, 8, [(1, None)], dim=2, head_channels=v), "head_channels"),
        (lambda v: SpectralHead(3, 8, 2, v), "hidden"),
        (lambda v: UNet3D(1, 2, levels=v), "levels"),
        (lambda v: ConvVAE(1, (8, 8), v), "latent_dim"),
    ]
    for build, name in cases:
        for bad in (True, 2.0):
            with pytest.raises(ValueError, match=f"^{name} .*got .*{bad!r}"):
                build(bad)
    import numpy as np  # numpy integers are integers

    layer = SymmetricLayer(np.int64(4), np.int64(6), dim=np.int64(2))
    assert (layer.channels, layer.hidden, layer.dim) == (4, 6, 2) and type(layer.hidden) is int
    assert HaarDWT(2, levels=np.int32(2)).levels == 2
    assert len(HyperbolicNetwork(4, [(np.int64(2), None)], dim=2).layers) == 2
    unet = UNet3D(np.int64(1), 2, levels=np.int64(1))
    assert type(unet.levels) is int and type(unet.in_channels) is int


def test_output_shape_takes_whole_sizes_only():
    """``output_shape`` names a size that is not a whole number in one line: it gave back
    ``(1.5, 4, 8, 8)`` for a batch of 1.5, ``(True, ...)`` for ``True`` and a negative size."""
    import numpy as np

    net = HyperbolicNetwork(4, [(1, "down"), (1, None)], dim=2)
    assert net.output_shape((2, 4, 8, 8)) == net.output_shape(torch.Size([2, 4, 8, 8])) == (2, 16, 4, 4)
    shape = net.output_shape((np.int64(2), np.int32(4), 8, 8))  # numpy integers are integers
    assert shape == (2, 16, 4, 4) and all(type(s) is int for s in shape)
    for bad, name, least in (((1.5, 4, 8, 8), "input_shape[0]", 0), ((True, 4, 8, 8), "input_shape[0]", 0),
                             ((1, 4, 8.0, 8), "input_shape[2]", 1), ((1, 4, -8, 8), "input_shape[2]", 1),
                             ((-1, 4, 8, 8), "input_shape[0]", 0)):
        with pytest.raises(ValueError, match=rf"^{re.escape(name)} must be an int >= {least}, got "):
            net.output_shape(bad)
    for bad in ("abcd", 5, None):
        with pytest.raises(TypeError, match=r"^input_shape must be a sequence of ints \(N, C, \*S\), got "):
            net.output_shape(bad)


def test_hidden_width_per_unit():
    net = HyperbolicNetwork(4, [(1, "down"), (1, "up")], dim=2, hidden=[6, 10])
    assert [layer.hidden for layer in net.layers] == [6, 10]
    assert net.layers[1].channels == 16


def test_dtype_and_device_mixes_are_named_before_any_convolution():
    """A float64 batch into a float32 network (or a batch on another device) is one ValueError
    naming the input and a parameter, not PyTorch's ``expected scalar type Double but found
    Float`` from inside a convolution; under autocast the input's dtype is free, as in PyTorch."""
    from fhcnn.models import DenseHyperbolicModel, HyperbolicAutoencoder

    net = HyperbolicNetwork(4, [(1, "down"), (1, "up")], dim=2)
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"^input is torch.float64, but HyperbolicNetwork's parameter "
                                         r"layers.0.weight is torch.float32: convert one to the other"):
        net(x.double())
    with pytest.raises(ValueError, match=r"^inverse y_prev is torch.float64, but .* layers.0.weight is torch.float32"):
        net.inverse(x.double(), x.double())
    with pytest.raises(ValueError, match=r"^input is on meta, but .*'s parameter layers.0.weight is on cpu"):
        net(x.to("meta"))
    net.layers[1].double()  # one layer converted: named
    with pytest.raises(ValueError, match=r"^input is torch.float32, but .* layers.1.weight is torch.float64"):
        net.forward_pair(x)
    net.double()
    assert net(x.double()).dtype == torch.float64
    net.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(x.bfloat16()).dtype == torch.bfloat16

    model = DenseHyperbolicModel(2, 3, 8, [(1, "down"), (1, "up")], dim=2, opening="conv")
    with pytest.raises(ValueError, match=r"^input is torch.float64, but DenseHyperbolicModel's parameter open.weight"):
        model(torch.randn(1, 2, 8, 8, dtype=torch.float64))
    ae = HyperbolicAutoencoder(1, (8, 8), [(1, "down"), (1, None)])
    with pytest.raises(ValueError, match=r"^the image batch is torch.float64, but HyperbolicAutoencoder's parameter"):
        ae.encode(torch.rand(2, 1, 8, 8, dtype=torch.float64))


def test_a_16_bit_state_other_than_the_autocast_dtype_is_refused_in_every_mode():
    """Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` a float16 input made the reversible
    network return float16 and ``reversible=False`` float32 (``2c - p + h**2 f(c)`` mixes float16
    and bfloat16: plain autograd promotes, the reversible pass keeps the state's dtype). The mix is
    one ValueError in every mode, forward and inverse; the autocast dtype and float32 stay free."""
    net = HyperbolicNetwork(4, [(1, "down"), (1, "up")], dim=2)
    x = torch.randn(1, 4, 8, 8)
    for mode in (True, "block", False):
        net.reversible = mode
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with pytest.raises(ValueError, match=r"^input is torch.float16, but torch.autocast computes in "
                                                 r"torch.bfloat16: .*; give a torch.bfloat16 or torch.float32 input$"):
                net(x.half())
            with pytest.raises(ValueError, match=r"^inverse y_prev is torch.float16, but torch.autocast"):
                net.inverse(x.half(), x.half())
            assert net(x.bfloat16()).dtype == torch.bfloat16 and net(x).dtype == torch.float32
    assert net(x.half().float()).dtype == torch.float32  # outside autocast nothing changes


def test_units_not_a_list_of_pairs_and_a_step_whose_square_overflows_are_named():
    """``units`` as one flat list, a string or ``None``, and ``h`` too large to square (or set to
    0 after construction), are one ValueError naming them, not ``'int' object is not iterable``,
    a unit per character of ``"down"``, an ``OverflowError`` in the first call or a network that
    silently computes the identity."""
    for units, shown in (([2, None], "got 2"), ("down", "units must be a list of .* got 'down'"),
                         (None, "units must be a list of .* got None"), ([(1, None), "up"], "got 'up'")):
        with pytest.raises(ValueError, match=shown):
            HyperbolicNetwork(4, units)  # type: ignore[arg-type]
    assert HyperbolicNetwork(4, [[1, "down"], (1, "up")]).units == [(1, "down"), (1, "up")]
    with pytest.raises(ValueError, match="h must be a positive number whose square is finite, got 1e"):
        HyperbolicNetwork(4, [(1, None)], h=1e200)
    net = HyperbolicNetwork(4, [(1, None)])
    net.h = 0.0
    with pytest.raises(ValueError, match=r"got 0.0 \(net.h, set after construction\)"):
        net(torch.randn(1, 4, 8, 8))


def test_the_library_modules_name_a_bad_input_themselves():
    """SymmetricLayer, SpectralHead, the autoencoders' decoders and ConvVAE named as one
    TypeError or ValueError an input of the wrong rank, channel count, dtype or device, instead of
    ``IndexError: tuple index out of range``, ``Given groups=1, weight of size ...``, ``expected
    m1 and m2 to have the same dtype`` or ``Input type (double) and bias type (float)``."""
    from fhcnn.layers import SymmetricLayer
    from fhcnn.models import ConvVAE, HyperbolicAutoencoder, SpectralHead

    layer = SymmetricLayer(4, dim=2)
    x = torch.randn(1, 4, 8, 8)
    assert torch.equal(layer(x), -layer.neg_forward(x))
    for bad, shown in ((torch.randn(1, 4, 8, 8, 8), r"\(N, 4, H, W\) for channels=4, dim=2, got \(1, 4, 8, 8, 8\)"),
                       (torch.randn(1, 3, 8, 8), r"\(N, 4, H, W\) .* got \(1, 3, 8, 8\)"),
                       (x.double(), "input is torch.float64, but SymmetricLayer's parameter weight is torch.float32")):
        with pytest.raises(ValueError, match=shown):
            layer(bad)
    with pytest.raises(TypeError, match="floating-point torch.Tensor, got dtype torch.int64"):
        layer(x.long())
    with pytest.raises(ValueError, match="input is torch.float64, but SpectralHead's parameter spectrum.weight"):
        SpectralHead(2, 3, 2, 4)(torch.randn(1, 2, 3, 4, 4, dtype=torch.float64))
    ae = HyperbolicAutoencoder(1, (8, 8), [(1, "down"), (1, None)])
    with pytest.raises(ValueError, match="latents is torch.float64, but HyperbolicAutoencoder's parameter P"):
        ae.decode(torch.randn(2, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"F\(X\) is torch.float64"):
        ae.untransform(torch.randn(2, 64, dtype=torch.float64))
    vae = ConvVAE(1, (8, 8), 4)
    with pytest.raises(ValueError, match="the image batch is torch.float64, but ConvVAE's parameter"):
        vae(torch.rand(2, 1, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="latents is torch.float64, but ConvVAE's parameter"):
        vae.decode(torch.randn(2, 4, dtype=torch.float64))


def test_a_forward_without_autograd_keeps_the_values_in_one_new_tensor_a_step() -> None:
    """With autograd off (a prediction) a leapfrog step's ``c + ((c - p) + h2 f(c))`` is summed
    in one new tensor: the values are those of the out-of-place form plain autograd records,
    bit for bit (steps of both orientations, around a coarsening), and the live bytes peak at
    about 4 states (p, c, the new state and f's output) where the out-of-place form held 6."""
    from fhcnn.memory import live_bytes_peak

    torch.manual_seed(0)
    net = HyperbolicNetwork(2, [(2, "down"), (2, "up"), (1, None)], dim=3, hidden=4, norm="group")
    x = torch.randn(2, 2, 8, 8, 8)
    with torch.no_grad():
        fast = net(x)
    plain = HyperbolicNetwork(2, [(2, "down"), (2, "up"), (1, None)], dim=3, hidden=4, norm="group",
                              reversible=False)
    plain.load_state_dict(net.state_dict())
    slow = plain(x.clone().requires_grad_(True))  # the out-of-place form, recorded by autograd
    assert slow.grad_fn is not None and torch.equal(fast, slow.detach())

    one = HyperbolicNetwork(8, [(3, None)], dim=3, hidden=1).eval()  # f's own buffers small
    x = torch.randn(2, 8, 16, 16, 16).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        peak, _ = live_bytes_peak(lambda: one(x))
    assert peak <= 4.5 * x.numel() * x.element_size()
