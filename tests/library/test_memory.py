"""Activation memory, counted deterministically (bytes saved for backward)."""

from __future__ import annotations

import pytest
import torch

from fhcnn import HyperbolicNetwork
from fhcnn.memory import SavedTensorCounter, saved_tensor_bytes


def _saved(depth: int, mode, transitions: int = 2) -> int:
    n = depth // (2 * transitions)
    units = [(n, "down")] * transitions + [(n, "up")] * transitions
    torch.manual_seed(0)
    net = HyperbolicNetwork(4, units, dim=2, reversible=mode, norm="batch")
    x = torch.randn(1, 4, 16, 16)
    nbytes, loss = saved_tensor_bytes(lambda: net(x).square().sum())
    loss.backward()  # the graph is usable
    return nbytes


def test_reversible_memory_is_constant_in_depth_plain_grows_linearly():
    rev = [_saved(d, True) for d in (8, 32, 128)]
    plain = [_saved(d, False) for d in (8, 32, 128)]
    block = [_saved(d, "block") for d in (8, 32, 128)]
    assert rev[0] == rev[1] == rev[2]
    # exactly the final pair and the input (kept for a second backward; it is the caller's
    # batch, held anyway), float32
    assert rev[0] == 3 * 4 * 16 * 16 * 4
    assert block[0] == block[1] == block[2]
    # plain autograd: linear in depth (16x the layers -> ~16x the bytes)
    assert 12 < plain[2] / plain[0] < 17
    assert 3.5 < plain[1] / plain[0] < 4.5
    assert plain[0] > rev[0] and plain[2] > 50 * rev[2]


def test_block_memory_grows_with_the_number_of_transitions_only():
    block = {t: _saved(32, "block", t) for t in (1, 2)}
    rev = {t: _saved(32, True, t) for t in (1, 2)}
    assert rev[1] == rev[2]
    # one stored pair per transition: (down at full res, up at half res) vs 2 more at coarser levels
    assert block[2] > block[1]
    pair_full = 2 * 4 * 16 * 16 * 4
    assert block[1] == rev[1] + 2 * pair_full  # pair before "down" + pair before "up"


def test_counter_counts_unique_storages():
    x = torch.randn(100, requires_grad=True)
    with SavedTensorCounter() as c:
        y = (x * x).sum()  # x saved twice, one storage
    assert c.bytes == 400 and c.count == 2
    y.backward()


def test_tensor_bytes_names_what_is_not_a_tensor():
    """``tensor_bytes([1])`` said ``'list' object has no attribute 'untyped_storage'``."""
    from fhcnn.memory import tensor_bytes

    assert tensor_bytes(torch.zeros(3)) == 12 and tensor_bytes(torch.zeros(8)[2:4]) == 32
    for bad in ([1], None):
        with pytest.raises(TypeError, match=rf"^t must be a torch.Tensor, got {type(bad).__name__}$"):
            tensor_bytes(bad)


def test_backward_peak_decomposition_is_constant_in_depth():
    """Allocator events (deterministic): at the reversible backward's peak, what is live is the
    state pair, its gradient pair, one layer's internals, the parameter gradients and at most
    one more state (the output gradient autograd holds during the call), at any depth."""
    from fhcnn.bench.backward import decompose

    base = {"dim": 2, "channels": 8, "size": 64, "stages": 1, "hidden_cap": 8}
    results = [decompose(dict(base, depth=d)) for d in (6, 24)]
    parts = [r["parts_states"] for r in results]
    for r, p in zip(results, parts):
        assert p["saved_pair"] == 2 and p["gradient_pair"] in (1, 2)
        # one state, plus a few scalars (the loss and its gradient)
        assert r["parts_bytes"]["everything_else"] <= r["state_bytes"] + 64, p
        assert 0 < p["layer_internals"] <= 6, p
    assert abs(parts[0]["layer_internals"] - parts[1]["layer_internals"]) < 1e-6
    assert abs(parts[0]["everything_else"] - parts[1]["everything_else"]) < 1e-6


def test_backward_writes_only_its_own_buffers():
    """The backward reconstructs into, and accumulates gradients in, buffers it allocated
    itself: the caller's input and outputs and the gradients autograd hands in are unchanged."""
    torch.manual_seed(0)
    for mode in (True, "block"):
        net = HyperbolicNetwork(4, [(2, "down"), (1, "up"), (1, None)], dim=2, reversible=mode)
        x = torch.randn(2, 4, 16, 16, requires_grad=True)
        x0 = x.detach().clone()
        yp, yc = net.forward_pair(x)
        outs0 = (yp.detach().clone(), yc.detach().clone())
        seen = []
        yp.register_hook(lambda g, seen=seen: seen.append((g, g.clone())))
        yc.register_hook(lambda g, seen=seen: seen.append((g, g.clone())))
        (yp * yc).sum().backward()
        assert torch.equal(x.detach(), x0)
        assert torch.equal(yp.detach(), outs0[0]) and torch.equal(yc.detach(), outs0[1])
        assert len(seen) == 2 and all(torch.equal(g, g0) for g, g0 in seen)
        assert x.grad is not None and torch.isfinite(x.grad).all()
