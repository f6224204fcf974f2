"""The Trainer: optimization, schedules, clipping, autocast, logging, validation, errors."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fhcnn.errors import InputError
from fhcnn.models import DenseHyperbolicModel
from fhcnn.training import (
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    lr_factor,
    resolve_device,
    seed_everything,
    step_generator,
)
from fhcnn.training.progress import Progress
from tests._train_script import batch_fn, build, loss_fn, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _linear_problem():
    w_true = torch.tensor([[1.0, -2.0, 0.5]])

    def batch(step, gen):
        x = torch.randn(16, 3, generator=gen)
        return {"x": x, "y": x @ w_true.T}

    def loss(model, b):
        pred = model(b["x"])
        return F.mse_loss(pred, b["y"]), {"mae": (pred - b["y"]).abs().mean()}
    return batch, loss


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=30, lr=0.05, device="cpu", log_every=5, checkpoint_every=10)
    base.update(kw)
    return TrainConfig(**base)


def test_fit_learns_and_writes_metrics_and_checkpoints(tmp_path: Path) -> None:
    batch, loss = _linear_problem()
    seed_everything(0)
    t = Trainer(nn.Linear(3, 1), _cfg(optimizer="sgd", lr=0.1, momentum=0.0), tmp_path, batch, loss, quiet=True)
    hist = t.fit()
    assert hist["step"] == 30 and hist["train"]["loss"] < 0.05
    assert set(hist["train"]) >= {"loss", "mae", "lr"}
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [5, 10, 15, 20, 25, 30]
    assert all(r["split"] == "train" and math.isfinite(r["loss"]) for r in recs)
    assert recs[-1]["loss"] < recs[0]["loss"]
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000010", "step-000020", "step-000030"]
    assert hist["checkpoint"].endswith("step-000030")
    assert t.model is not None and next(t.model.parameters()).device == t.device


def test_metric_named_loss_is_not_double_counted(tmp_path: Path) -> None:
    def loss(model, x):
        value = model(x).square().mean()
        return value, {"loss": float(value.detach()), "twice": 2 * float(value.detach())}
    t = Trainer(nn.Linear(3, 1), _cfg(steps=4, log_every=2), tmp_path,
                lambda s, g: torch.randn(4, 3, generator=g), loss, quiet=True)
    hist = t.fit()
    assert hist["train"]["twice"] == pytest.approx(2 * hist["train"]["loss"])


def test_same_seed_same_weights_other_seed_differs() -> None:
    def run(seed: int) -> dict:
        seed_everything(0)  # same initialization
        t = Trainer(build(), _cfg(steps=4, seed=seed), None, batch_fn, loss_fn, quiet=True)
        t.fit()
        return t.model.state_dict()
    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_batch_generator_depends_on_seed_and_step_only() -> None:
    a = torch.randn(5, generator=step_generator(3, 7))
    assert torch.equal(a, torch.randn(5, generator=step_generator(3, 7)))
    assert not torch.equal(a, torch.randn(5, generator=step_generator(3, 8)))
    assert not torch.equal(a, torch.randn(5, generator=step_generator(4, 7)))


def test_non_finite_loss_stops_with_step_and_keeps_weights(tmp_path: Path) -> None:
    batch, loss = _linear_problem()

    def bad_loss(model, b):
        value, metrics = loss(model, b)
        return (value * float("nan") if b["step"] == 7 else value), metrics

    def batch_with_step(step, gen):
        return {**batch(step, gen), "step": step}

    t = Trainer(nn.Linear(3, 1), _cfg(checkpoint_every=5), tmp_path, batch_with_step, bad_loss,
                quiet=True)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 7") as e:
        t.fit()
    assert e.value.step == 7 and isinstance(e.value, RuntimeError)
    assert "step-000005" in str(e.value)  # names the last good checkpoint
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert t.step == 6


def test_non_finite_gradient_is_caught_with_clipping() -> None:
    def loss(model, batch):
        x, step = batch
        if step == 2:  # finite loss, infinite gradient
            model.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
        return model(x).mean(), {}

    t = Trainer(nn.Linear(3, 1), _cfg(grad_clip=1.0), None,
                lambda s, g: (torch.randn(4, 3, generator=g), s), loss, quiet=True)
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient norm \(inf\) at step 2"):
        t.fit()
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_gradient_clipping_bounds_the_update() -> None:
    m = nn.Linear(3, 1)
    before = torch.cat([p.detach().flatten() for p in m.parameters()]).clone()

    def loss(model, x):
        return 1e4 * model(x).mean(), {}
    cfg = _cfg(steps=1, lr=1.0, optimizer="sgd", momentum=0.0, grad_clip=0.01)
    hist = Trainer(m, cfg, None, lambda s, g: torch.randn(4, 3, generator=g), loss, quiet=True).fit()
    after = torch.cat([p.detach().flatten() for p in m.parameters()])
    assert (after - before).norm().item() == pytest.approx(0.01, rel=1e-4)
    assert hist["train"]["grad_norm"] > 100  # the norm before clipping is logged


def test_schedules() -> None:
    cos = TrainConfig(steps=100, schedule="cosine", warmup_steps=10)
    assert lr_factor(cos, 0) == pytest.approx(0.1) and lr_factor(cos, 9) == pytest.approx(1.0)
    assert lr_factor(cos, 55) == pytest.approx(0.5) and lr_factor(cos, 100) == pytest.approx(0.0)
    one = TrainConfig(steps=100, schedule="onecycle")
    assert lr_factor(one, 0) == pytest.approx(1 / 25) and lr_factor(one, 30) == pytest.approx(1.0)
    assert lr_factor(one, 100) == pytest.approx(1e-4)
    assert lr_factor(TrainConfig(steps=10), 5) == 1.0
    # the trainer applies it: after warm-up + cosine the logged lr decays
    m = nn.Linear(3, 1)
    t = Trainer(m, _cfg(steps=10, schedule="cosine", log_every=1, lr=0.1), None,
                lambda s, g: torch.randn(2, 3, generator=g), lambda mod, x: (mod(x).mean(), {}),
                quiet=True)
    t.fit()
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("sgd", torch.optim.SGD)])
def test_optimizers(name: str, cls: type) -> None:
    t = Trainer(nn.Linear(2, 1), _cfg(optimizer=name, weight_decay=0.1), None,
                lambda s, g: torch.randn(2, 2), lambda m, x: (m(x).mean(), {}), quiet=True)
    assert type(t.optimizer) is cls and t.optimizer.param_groups[0]["weight_decay"] == 0.1


@pytest.mark.parametrize("mode", [True, "block", False])
def test_bf16_autocast_on_cpu(mode) -> None:
    seed_everything(0)
    t = Trainer(build(mode), _cfg(steps=3, autocast="bf16", lr=1e-2), None, batch_fn, loss_fn,
                quiet=True)
    hist = t.fit()
    assert math.isfinite(hist["train"]["loss"])
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in t.model.parameters())


def test_validation_and_best_checkpoint(tmp_path: Path) -> None:
    batch, loss = _linear_problem()
    calls = []
    scores = iter([0.3, 0.9, 0.5, 0.6])

    def val_fn(model):
        calls.append((model.training, torch.is_grad_enabled()))
        return {"score": next(scores)}
    t = Trainer(nn.Linear(3, 1), _cfg(steps=20, val_every=5, checkpoint_every=0, keep_last=1,
                                     best_metric="score", best_mode="max"),
                tmp_path, batch, loss, val_fn, quiet=True)
    hist = t.fit()
    assert calls == [(False, False)] * 4 and t.model.training  # eval + no_grad, then train again
    assert hist["val"] == {"score": 0.6}
    assert hist["best"] == {"metric": "score", "value": 0.9, "mode": "max", "step": 10}
    best = json.loads((tmp_path / "checkpoints" / "best.json").read_text())
    assert best["dir"] == "step-000010" and best["value"] == 0.9
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert kept == ["step-000010", "step-000020"]  # the last one and the best one
    vals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in vals if r["split"] == "val"] == [5, 10, 15, 20]
    final = {k: v.clone() for k, v in t.model.state_dict().items()}
    assert t.load_best()["step"] == 10
    assert not torch.equal(final["weight"], t.model.weight)
    t.load_best("latest")
    assert torch.equal(final["weight"], t.model.weight)


def test_fresh_fit_refuses_existing_checkpoints(tmp_path: Path) -> None:
    batch, loss = _linear_problem()
    Trainer(nn.Linear(3, 1), _cfg(steps=2, checkpoint_every=1), tmp_path, batch, loss, quiet=True).fit()
    with pytest.raises(InputError, match="holds checkpoints of another run"):
        Trainer(nn.Linear(3, 1), _cfg(steps=2), tmp_path, batch, loss, quiet=True).fit()


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        Trainer("nope", _cfg(), None, batch_fn, loss_fn)
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        Trainer(nn.Linear(1, 1), {"steps": 3}, None, batch_fn, loss_fn)
    with pytest.raises(ValueError, match="resume=True needs an out_dir"):
        Trainer(nn.Linear(1, 1), _cfg(), None, batch_fn, loss_fn).fit(resume=True)
    with pytest.raises(InputError, match="fp16 needs a GPU"):
        Trainer(nn.Linear(1, 1), _cfg(autocast="fp16"), None, batch_fn, loss_fn)
    t = Trainer(nn.Linear(3, 1), _cfg(steps=1), None, lambda s, g: torch.randn(2, 3),
                lambda m, x: m(x), quiet=True)
    with pytest.raises(TypeError, match="scalar tensor loss"):
        t.fit()
    for bad in (dict(steps=0), dict(lr=0.0), dict(keep_last=0), dict(grad_clip=-1.0),
                dict(warmup_steps=5, steps=3), dict(log_every=0)):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_device_selection(monkeypatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="CUDA is not available"):
        resolve_device("cuda:0")
    with pytest.raises(InputError, match="MPS is not available"):
        resolve_device("mps")
    with pytest.raises(InputError, match="not understood"):
        resolve_device("tpu-ish")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").type == "mps"


def test_cpu_threads_choice_is_logged_and_restored(monkeypatch) -> None:
    from fhcnn.training import device

    before = torch.get_num_threads()
    said: list[str] = []
    with device.CpuThreads(2, log=said.append) as t:
        assert torch.get_num_threads() == 2 and t.chosen == 2
        with device.CpuThreads(0, log=said.append) as inner:  # nested: leaves the choice alone
            assert torch.get_num_threads() == 2 and inner.chosen == 2
    assert torch.get_num_threads() == before and said == ["torch threads: 2 (2 requested)"]
    with device.CpuThreads(None) as t:
        assert t.chosen == before
    # automatic: the physical cores minus those other processes keep busy, at least 1
    monkeypatch.setattr(device, "physical_cores", lambda: 4)
    for busy, want in ((0.0, 4), (1.0, 3), (1.5, 2), (2.9, 1), (8.0, 1)):
        clock = iter([0.0, 1.0, 1.0, 2.0])
        monkeypatch.setattr(device.time, "perf_counter", lambda: next(clock))
        monkeypatch.setattr(device.time, "process_time", lambda: 0.0)
        seconds = iter([100.0, 100.0 + busy])
        monkeypatch.setattr(device, "_cpu_busy_seconds", lambda: next(seconds))
        monkeypatch.setattr(device.time, "sleep", lambda s: None)
        said.clear()
        with device.CpuThreads(0, log=said.append) as t:
            assert t.chosen == want and torch.get_num_threads() == want
        assert said and said[0].startswith(f"torch threads: {want} (auto: 4 physical core(s)")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        TrainConfig(threads=-2)


def test_fit_uses_and_logs_the_thread_choice(tmp_path: Path) -> None:
    batch, loss = _linear_problem()
    before = torch.get_num_threads()
    Trainer(nn.Linear(3, 1), _cfg(steps=5, threads=2), tmp_path, batch, loss, quiet=True).fit()
    assert torch.get_num_threads() == before
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["threads"] for r in lines if r["split"] == "train"} == {2}


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_modes() -> None:
    quiet = io.StringIO()
    p = Progress(10, quiet=True, stream=quiet)
    for _ in range(10):
        p.update(1, loss=0.5)
    p.close()
    assert quiet.getvalue() == ""
    log = io.StringIO()  # not a terminal: quiet by default, a few lines on request
    p = Progress(10, stream=log)
    for _ in range(10):
        p.update(1, loss=0.5)
    assert log.getvalue() == ""
    plain = io.StringIO()
    p = Progress(10, stream=plain, lines=5, plain=True)
    for _ in range(10):
        p.update(1, loss=0.5)
    lines = plain.getvalue().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("train step 10/10  loss 0.5") and "ETA" in lines[-1]
    tty = _FakeTTY()
    p = Progress(10, stream=tty)
    assert p.uses_bar
    for _ in range(10):
        p.update(1, loss=0.25, miou=0.5)
    p.close()
    assert "10/10" in tty.getvalue() and "loss=0.25" in tty.getvalue() and "miou=0.5" in tty.getvalue()


def test_a_metric_measured_on_some_steps_is_averaged_over_them_and_logged_as_strict_json(tmp_path: Path) -> None:
    """A metric a step does not measure (NaN, e.g. the VAE's energy before its term starts) is
    left out of that step's average: the window that never measured it logs ``null`` (strict
    JSON, not ``NaN``), the window that measured it on some steps logs their mean."""
    batch, loss = _linear_problem()

    def loss_late(model, b):
        value, m = loss(model, b)
        step = len(seen) + 1
        seen.append(step)
        return value, {**m, "late": float(step) if step >= 8 else math.nan}

    seen: list[int] = []
    seed_everything(0)
    Trainer(nn.Linear(3, 1), _cfg(steps=10), tmp_path, batch, loss_late, quiet=True).fit()

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    recs = [json.loads(line, parse_constant=refuse) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [5, 10]
    assert recs[0]["late"] is None and recs[1]["late"] == pytest.approx(9.0)
    assert all(math.isfinite(r["mae"]) for r in recs)


def test_deterministic_training_writes_no_nan_into_new_tensors_and_keeps_the_weights() -> None:
    """``train.deterministic`` leaves PyTorch's NaN filling of every new tensor off during
    ``fit`` (waste: the kernels overwrite them whole) and restores it after; the weights equal
    those of a run with the filling on, bit for bit (a 3D reversible network with wavelets)."""
    fill = torch.utils.deterministic
    seen: list[bool] = []

    def batch(step: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(2, 2, 8, 8, 8, generator=gen)
        return x, (x[:, 0] > 0.2).long() + (x[:, 1] > 0.5).long()

    def loss(model: torch.nn.Module, b: tuple[torch.Tensor, torch.Tensor]):
        seen.append(fill.fill_uninitialized_memory)
        return F.cross_entropy(model(b[0]), b[1]), {}

    def run(deterministic: bool) -> dict:
        seed_everything(0)
        model = DenseHyperbolicModel(2, 3, 4, [(1, "down"), (1, "up"), (1, None)], dim=3)
        Trainer(model, _cfg(steps=3, deterministic=deterministic), None, batch, loss, quiet=True).fit()
        return model.state_dict()

    assert fill.fill_uninitialized_memory
    new = run(True)
    assert seen == [False] * 3 and fill.fill_uninitialized_memory and not torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)  # the old way: filled with NaN
    try:
        seen.clear()
        old = run(False)
    finally:
        torch.use_deterministic_algorithms(False)
    assert seen == [True] * 3
    assert all(torch.equal(old[k], new[k]) for k in old)
