"""What users would pick instead, on the same network and input, in one run.

* ``checkpoint:K`` -- plain autograd with :func:`torch.utils.checkpoint.checkpoint`
  (non-reentrant) around every ``K`` consecutive steps; the best ``K`` is reported.
* ``memcnn`` -- exactly our network written for memcnn: every leapfrog layer and every
  wavelet transition is an invertible module on the channel-concatenated pair
  ``[Y_prev, Y_cur]`` wrapped in ``memcnn.InvertibleModuleWrapper`` (same parameters, same
  function; its gradients are checked against ours).
* ``iunets`` -- ``iunets.iUNet`` with our leapfrog layer as its invertible module
  (``create_module_fn``) on the concatenated pair, fixed Haar resampling (no learnable
  resampling or channel mixing), as many layers and levels as our network. iUNet's layout
  differs (it splits off half the channels before every downsampling and concatenates them
  back on the way up), so the function is not ours, but depth, levels and layer type are.

Both peers are optional (``pip install fhcnn[bench]`` or ``pip install --no-deps iunets
memcnn``: their published requirements would replace the installed torch); a missing or
broken peer is reported with its import error and skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..memory import saved_tensor_bytes
from ._common import (
    Spec,
    build_net,
    environment,
    forward_method,
    make_input,
    measured_activation_peaks,
    median,
    pyplot,
    save_figure,
    spec_units,
    state_numel,
    time_interleaved,
    train_step,
    unit_levels,
    write_json,
)

__all__ = ["build_peer", "configs", "peer_forward", "peer_status", "run", "work"]

NAME = "peers"
OURS = ("plain", "block", "reversible")


def peer_status() -> dict[str, str | None]:
    """``{"memcnn": None | error, "iunets": None | error}`` (None: importable)."""
    out: dict[str, str | None] = {}
    for name in ("memcnn", "iunets"):
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                __import__(name)
            out[name] = None
        except Exception as e:  # noqa: BLE001 - report any import failure verbatim
            out[name] = f"{type(e).__name__}: {e}"
    return out


class PairLeapfrog(nn.Module):
    """One leapfrog layer on the concatenated pair ``[p, c] -> [c, 2c - p + h^2 f(c)]``."""

    def __init__(self, f: nn.Module, h2: float) -> None:
        super().__init__()
        self.f, self.h2 = f, h2

    def forward(self, x: Tensor) -> Tensor:
        p, c = x.chunk(2, dim=1)
        return torch.cat([c, 2 * c - p + self.h2 * self.f(c)], dim=1)

    def inverse(self, y: Tensor) -> Tensor:
        c, n = y.chunk(2, dim=1)
        return torch.cat([2 * c - n + self.h2 * self.f(c), c], dim=1)


class PairWavelet(nn.Module):
    """A wavelet transition on the concatenated pair (``up`` swaps forward and inverse)."""

    def __init__(self, wavelet: nn.Module, up: bool) -> None:
        super().__init__()
        self.wavelet, self.up = wavelet, up

    def _map(self, x: Tensor, inverse: bool) -> Tensor:
        p, c = x.chunk(2, dim=1)
        m = self.wavelet.inverse if inverse else self.wavelet
        return torch.cat([m(p), m(c)], dim=1)  # type: ignore[operator]

    def forward(self, x: Tensor) -> Tensor:
        return self._map(x, self.up)

    def inverse(self, y: Tensor) -> Tensor:
        return self._map(y, not self.up)


class PeerModel(nn.Module):
    """``x -> [x, x] -> body -> second half`` (the last ``Y_cur``)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(torch.cat([x, x], dim=1))
        return y.chunk(2, dim=1)[1]


def build_memcnn(spec: Spec) -> PeerModel:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import memcnn
    net = build_net(spec)
    mods: list[nn.Module] = []
    li = ti = 0
    for n, kind in net.units:
        for _ in range(n):
            mods.append(PairLeapfrog(net.layers[li], net.h ** 2))
            li += 1
        if kind is not None:
            mods.append(PairWavelet(net.transitions[ti], up=(kind == "up")))
            ti += 1
    wrapped = [memcnn.InvertibleModuleWrapper(m, keep_input=False, keep_input_inverse=False)
               for m in mods]
    return PeerModel(nn.Sequential(*wrapped))


def iunet_architecture(spec: Spec) -> list[int]:
    """Layers per level (used on both the down and the up path) to match our depth."""
    units = spec_units(spec)
    levels = max(unit_levels(units)) + 1
    depth = sum(n for n, _ in units)
    per = max(1, round(depth / (2 * levels)))
    return [per] * levels


def build_iunets(spec: Spec) -> PeerModel:
    import warnings

    from ..layers import SymmetricLayer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import iunets

    torch.manual_seed(spec.get("seed", 0))
    h2 = spec.get("h", 0.2) ** 2
    cap = spec.get("hidden_cap")

    def create(in_channels: int, **kwargs: Any) -> nn.Module:
        c = in_channels // 2
        if in_channels % 2:
            raise ValueError(f"iUNet level with an odd channel count {in_channels}")
        hidden = c if cap is None else min(c, cap)
        return PairLeapfrog(SymmetricLayer(c, hidden, spec["dim"], norm=spec.get("norm", "group"),
                                           init_scale=spec.get("init_scale", 1.0)), h2)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        body = iunets.iUNet(2 * spec["channels"], iunet_architecture(spec), spec["dim"],
                            create_module_fn=create, learnable_resampling=False,
                            resampling_init="haar", learnable_channel_mixing=False,
                            channel_mixing_freq=0, padding_mode=None, verbose=0)
    dtype = {"float32": torch.float32, "float64": torch.float64}[spec.get("dtype", "float32")]
    return PeerModel(body).to(dtype)


def build_peer(spec: Spec, method: str) -> PeerModel:
    if method == "memcnn":
        return build_memcnn(spec)
    if method == "iunets":
        return build_iunets(spec)
    raise ValueError(f"unknown peer {method!r}")


def peer_forward(model: nn.Module, x: Tensor, method: str) -> Tensor:
    return _quiet_call(model, x)


def configs(quick: bool) -> dict[str, Any]:
    if quick:
        return {"spec": {"dim": 2, "channels": 8, "size": 64, "stages": 2, "depth": 12,
                         "hidden_cap": 16},
                "ks": [2, 4], "repeats": 3}
    return {"spec": {"dim": 2, "channels": 8, "size": 256, "stages": 2, "depth": 30, "hidden_cap": 32},
            "ks": [1, 2, 3, 5, 6, 10], "repeats": 5}


def work(quick: bool, measure_peaks: bool = True) -> int:
    c = configs(quick)
    n = 3 + len(c["ks"]) + sum(1 for v in peer_status().values() if v is None)
    return (n if measure_peaks else 0) + c["repeats"]


def run(out_dir: str | Path, quick: bool = False, device: str = "cpu",
        tick: Callable[[str], None] | None = None, measure_peaks: bool = True,
        config_override: dict[str, Any] | None = None, name: str = NAME) -> dict[str, Any]:
    """Writes ``<name>.json`` and ``<name>.png`` (default ``peers``).

    ``config_override``: ``{"spec", "ks", "repeats"}`` as in :func:`configs`; a spec with
    ``"channels_last": True`` feeds every method a channels-last input."""
    tick = tick or (lambda msg: None)
    cfg = config_override or configs(quick)
    spec, ks, repeats = cfg["spec"], cfg["ks"], cfg["repeats"]
    status = peer_status()
    methods = list(OURS) + [f"checkpoint:{k}" for k in ks]
    methods += [p for p in ("memcnn", "iunets") if status[p] is None]
    models: dict[str, nn.Module] = {}
    net = build_net(spec, device)
    x = make_input(spec, device)
    errors: dict[str, str] = {}
    for p in ("memcnn", "iunets"):
        if p in methods:
            try:
                models[p] = build_peer(spec, p).to(device)
            except Exception as e:  # noqa: BLE001 - a peer that cannot express it is reported
                errors[p] = f"{type(e).__name__}: {e}"
                methods.remove(p)

    def fwd(m: str) -> Callable[[], Tensor]:
        if m in models:
            return lambda: _quiet_call(models[m], x)
        return lambda: forward_method(net, x, m)

    def model_of(m: str) -> nn.Module:
        return models.get(m, net)

    rows: dict[str, dict[str, Any]] = {m: {} for m in methods}
    # saved-for-backward bytes, ours only: checkpoint's hooks and memcnn's freed storages hide theirs
    for m in OURS:
        b, _ = saved_tensor_bytes(fwd(m))
        rows[m]["saved"] = b
    # gradient agreement with our reversible gradients (same function for memcnn/checkpoint)
    ref = _grads(net, x, lambda: forward_method(net, x, "reversible"))
    for m in methods:
        if m != "iunets":
            g = _grads(model_of(m), x, fwd(m), params=list(net.parameters()))
            rows[m]["grad_rel_diff_vs_reversible"] = float((g - ref).norm() / ref.norm())
    for m in methods:
        rows[m]["param_bytes"] = sum(p.numel() * p.element_size()
                                     for p in model_of(m).parameters() if p.requires_grad)
    if measure_peaks:
        for m in methods:
            r = measured_activation_peaks(spec, [m], device)[m]
            rows[m]["peak"] = r["peak"]
            rows[m]["peak_minus_param_grads"] = r["peak"] - rows[m]["param_bytes"]
            tick(f"peers peak {m}")
    raw = time_interleaved({m: (lambda m=m: train_step(model_of(m), x, fwd(m))) for m in methods},  # type: ignore[misc]
                           repeats, warmup=1, device=device, progress=lambda: tick("peers time"))
    for m in methods:
        rows[m]["seconds"] = raw[m]
        rows[m]["median_s"] = median(raw[m])
    rev = rows["reversible"]
    for m in methods:
        rows[m]["time_vs_reversible"] = rows[m]["median_s"] / rev["median_s"]
        rows[m]["time_vs_plain"] = rows[m]["median_s"] / rows["plain"]["median_s"]
        if measure_peaks:
            rows[m]["peak_vs_reversible"] = rows[m]["peak"] / rev["peak"]
    cks = [m for m in methods if m.startswith("checkpoint")]
    best = None
    if cks and measure_peaks:
        best = min(cks, key=lambda m: rows[m]["peak"])
    elif cks:
        best = min(cks, key=lambda m: rows[m]["median_s"])
    result = {"benchmark": NAME, "quick": quick, "environment": environment(device), "spec": spec,
              "state_bytes": state_numel(spec) * 4, "methods": methods, "rows": rows,
              "best_checkpoint": best, "peer_import_errors": {k: v for k, v in status.items() if v},
              "peer_build_errors": errors, "repeats": repeats,
              "iunets_architecture": iunet_architecture(spec),
              # ours (fully reversible) over each peer: < 1 means we use less / are faster
              "reversible_over_peer": {
                  p: {"time": rev["median_s"] / rows[p]["median_s"],
                      **({"peak": rev["peak"] / rows[p]["peak"]} if measure_peaks else {})}
                  for p in ("memcnn", "iunets") if p in rows},
              "notes": "ratios are X / ours (fully reversible); memcnn runs exactly our network; "
                       "iunets runs our layer in iUNet's layout"}
    out_dir = Path(out_dir)
    write_json(out_dir / f"{name}.json", result)
    plot(result, out_dir / f"{name}.png")
    return result


def _quiet_call(model: nn.Module, x: Tensor) -> Tensor:
    """Call a peer model without its deprecation warnings (old torch APIs in iunets/memcnn)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return model(x)


def _grads(model: nn.Module, x: Tensor, fwd: Callable[[], Tensor],
           params: list[Tensor] | None = None) -> Tensor:
    params = list(model.parameters()) if params is None else params
    for p in model.parameters():
        p.grad = None
    fwd().square().mean().backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for p in params])


def plot(result: dict[str, Any], path: str | Path) -> Path:
    from .memory import COLORS

    plt = pyplot()
    rows, methods = result["rows"], result["methods"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    color = [COLORS.get(m.split(":")[0], "gray") for m in methods]
    state = result["state_bytes"]
    if all("peak" in rows[m] for m in methods):
        vals = [rows[m]["peak"] / state for m in methods]
        a1.bar(range(len(methods)), vals, color=color, edgecolor="black", lw=0.5)
        for i, v in enumerate(vals):
            a1.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
        a1.set_ylabel("peak step memory / one state")
    a1.set_title("memory (measured peak above idle)", fontsize=10)
    t = [rows[m]["time_vs_plain"] for m in methods]
    a2.bar(range(len(methods)), t, color=color, edgecolor="black", lw=0.5)
    for i, v in enumerate(t):
        a2.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    a2.axhline(4 / 3, color="gray", ls="--", lw=1)
    a2.set_ylabel("step time / plain autograd (median)")
    a2.set_title("time", fontsize=10)
    for a in (a1, a2):
        a.set_xticks(range(len(methods)))
        a.set_xticklabels(methods, rotation=35, ha="right", fontsize=8)
        a.grid(True, axis="y", alpha=0.3)
    s = result["spec"]
    fig.suptitle(f"Same network and input: {s['dim']}D, {s['channels']} channels, {s['size']}$^2$, "
                 f"{s['depth']} layers, {s['stages']} coarsen + {s['stages']} refine stages",
                 fontsize=10)
    return save_figure(fig, path)
