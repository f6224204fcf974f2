"""The hyperbolic VAE: data, model, training recipe, run loading (behind ``fhcnn vae``).

Used by ``fhcnn vae`` and ``benchmarks/vae_*.py``. The model is
:class:`fhcnn.models.HyperbolicAutoencoder`; training goes through
:class:`fhcnn.training.Trainer`.

Training recipe (one optimizer for the network ``theta`` and ``P``):

* ``P`` starts as the principal directions of ``F(X)`` of the untrained network
  (``model.p_init: pca``; or ``identity`` / ``orthogonal``): still square and orthogonal, so
  the autoencoder starts exact.
* loss ``||X_hat - X||^2 + alpha ||P||_{1,2} + beta(t) E(Z)``; ``beta`` is 0 for the first
  ``loss.energy_start`` of the run (the latent space is pruned first) and ramps up linearly
  over ``loss.energy_ramp``.
* after every optimizer step a proximal group soft-threshold with ``tau = lr * prox_weight``
  sets columns of ``P`` with a norm below ``tau`` exactly to zero, and columns below
  ``model.prune_threshold`` are switched off for good (the latent dimension shrinks).
* at the end the dead columns are removed; the latent dimension is what survives.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...atomic import atomic_write_text
from ...config import load_config, save_config
from ...data.images import (
    NATIVE_SIDES,
    ImageSet,
    center_square,
    fit_to_size,
    idx_image_shape,
    load_dataset,
    read_image,
    resize_square,
)
from ...errors import InputError
from ...models.autoencoder import HyperbolicAutoencoder, energy_distance
from ...rundir import RunFolder, check_own_checkpoint, fingerprint, resolve_path
from ...training import Trainer, load_weights, unwrap_model
from ...training.checkpoint import MANIFEST_FILE, find_checkpoint
from ...training.distributed import gather_batch
from ...training.seeding import step_seed
from .config import BaselineConfig, VAEConfig, VAELossConfig, VAEModelConfig
from .evaluation import (
    classifier_confidence,
    classifier_input,
    digit_classifier,
    evaluate,
    full_transform,
    latents,
    prior_energy,
    reconstruct,
)
from .outputs import interpolate_latents, save_figure, save_grid

__all__ = ["load_images", "absolute_data_path", "load_run_images", "prepare_training", "build_model", "beta_at",
           "train_vae", "load_run", "image_index", "resolve_image", "train_baseline"]


# ------------------------------------------------------------------------------ data
def load_images(cfg: VAEConfig) -> tuple[ImageSet, ImageSet]:
    """``(train, eval)`` image sets of the config.

    ``data.n_eval`` images are held out: a fraction (at most 0.5) of the images, rounded, or a
    count; at least 2 and at most half of the images (the energy distance needs two latents,
    and most images train). A count of more than half the images is refused (a count meant for
    a large dataset, e.g. ``vae-tiny``'s former 20 on a folder of 10 images, held out 8 and
    trained on 2). ``data.n_train`` (the first of the remaining images) may not ask for more
    than remain: refused in one line, not silently all of them."""
    d = cfg.data
    images = load_dataset(d.dataset, d.path, d.size, d.crop, d.limit)
    n = len(images)
    if n < 4:
        raise InputError(f"{images.name}: {n} image(s); the autoencoder needs at least 4")
    n_eval = d.n_eval
    k = int(round(n * n_eval)) if n_eval < 1 else int(n_eval)
    if k > n // 2:
        raise InputError(f"{images.name}: data.n_eval={n_eval:g} holds out {k} of its {n} images, leaving "
                         f"{n - k} to train on; at most half ({n // 2}) may be held out: set a smaller count or "
                         f"a fraction (--set data.n_eval=0.15)")
    k = max(2, k)
    if d.n_train is not None and d.n_train > n - k:
        cut = f" (data.limit={d.limit})" if d.limit is not None and n == d.limit else ""
        raise InputError(f"{images.name}: data.n_train={d.n_train} asks for more training images than there are: "
                         f"of its {n} images{cut} {k} are held out (data.n_eval={n_eval:g}), leaving {n - k}; "
                         f"set data.n_train to at most {n - k} (or null: all of them)")
    train, held = images.split(k, seed=cfg.train.seed, shuffle=d.split == "random")
    if d.n_train is not None:
        train = train.subset(slice(0, d.n_train))
    return train, held


def absolute_data_path(cfg: VAEConfig, resumed: Path | None = None) -> None:
    """Make ``data.path`` absolute (links resolved) in ``cfg``, as the run records it
    (``config.yaml``, ``run.json``): sample, interpolate and normality read the run's images
    again from it, from whatever folder they run in. Called once the images were read (a
    missing path is named as given). ``resumed``: the run folder ``--resume`` continues; a run
    written before paths were kept absolute recorded ``data.path`` as typed, and keeps that
    record where it names the same path from here (its config would differ otherwise, refusing
    it; the run folder's checks then compare the images with the recorded ones)."""
    if cfg.data.path is None:
        return
    cfg.data.path = str(resolve_path(Path(cfg.data.path), cfg.data.path))
    try:
        old = load_config(VAEConfig, resumed / "config.yaml").data.path if resumed is not None else None
    except Exception:  # no run there, or a config this version does not read: the folder checks say why
        return
    if old is not None and not Path(old).expanduser().is_absolute() and \
            str(resolve_path(Path(old), old)) == cfg.data.path:
        cfg.data.path = old


def _required_factor(cfg: VAEModelConfig) -> int:
    """The image sides must be divisible by this (pre-transforms plus the deepest coarsening)."""
    level = peak = 0
    for _, t in cfg.units:
        level += 1 if t == "down" else -1 if t == "up" else 0
        peak = max(peak, level)
    return 2 ** (cfg.pre_levels + peak)


def build_model(cfg: VAEConfig, train: ImageSet | None = None) -> HyperbolicAutoencoder:
    """The autoencoder of ``cfg`` (normalization from ``train`` if given, else placeholders
    that a checkpoint overwrites)."""
    m = cfg.model
    if m.in_channels is None or m.image_size is None:
        raise InputError("model.in_channels and model.image_size are not set (they come from the data)")
    h, w = m.image_size
    factor = _required_factor(m)
    if h % factor or w % factor:
        raise InputError(f"images of {w}x{h} pixels do not fit the network: both sides must be "
                         f"divisible by {factor} (pre_levels={m.pre_levels} plus the units' "
                         f"coarsenings); use --resize (folders) or data.size")
    mean: Any = 0.0
    std: Any = 1.0
    if train is not None:
        # mean: the mean image or the per-channel mean; std: the per-channel standard
        # deviation of the pixel values (not of the residual to the mean image)
        x = train.batch(slice(0, 5000))
        mean = x.mean(0) if m.normalize == "mean-image" else x.mean(dim=(0, 2, 3))
        std = x.transpose(0, 1).flatten(1).std(dim=1).clamp_min(1e-3)
    elif m.normalize == "mean-image":
        mean = torch.zeros(m.in_channels, h, w)
    p_init = "identity" if m.p_init == "pca" else m.p_init
    return HyperbolicAutoencoder(
        m.in_channels, (h, w), [(int(n), t) for n, t in m.units], pre_levels=m.pre_levels,
        sigma=m.sigma, p_init=p_init, prune_threshold=m.prune_threshold, mean=mean, std=std,
        hidden=m.hidden, h=m.h, norm=m.norm, activation=m.activation, wavelet=m.wavelet,
        reversible=m.reversible)


# ------------------------------------------------------------------------- training
class _ProxHook:
    """Global optimizer post-step hook: group soft-threshold of ``P`` after each step."""

    def __init__(self, model: HyperbolicAutoencoder, weight: float) -> None:
        self.model, self.weight = model, weight
        self.handle: Any = None

    def __call__(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for group in optimizer.param_groups:
            if any(p is self.model.P for p in group["params"]):
                self.model.prox_step(float(group["lr"]) * self.weight)
                return

    def __enter__(self) -> "_ProxHook":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.handle = register_optimizer_step_post_hook(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            self.handle.remove()


def beta_at(cfg: VAELossConfig, step: int, steps: int) -> float:
    """The energy weight at (1-based) ``step``: 0, then a linear ramp to ``beta``."""
    t = step / max(steps, 1)
    if cfg.energy_ramp <= 0:
        return cfg.beta if t >= cfg.energy_start else 0.0
    return cfg.beta * min(1.0, max(0.0, (t - cfg.energy_start) / cfg.energy_ramp))


def prepare_training(cfg: VAEConfig, resumed: Path | None = None) -> tuple[ImageSet, ImageSet]:
    """Everything :func:`train_vae` checks before its output folder exists: the images (their
    channels and size go into ``cfg.model``, their path made absolute: :func:`absolute_data_path`
    with ``resumed``), the device, and the model built once."""
    from ...resources import check_memory, check_steps, check_threads
    from ...training.device import resolve_device

    check_threads(cfg.train.threads)
    check_steps(cfg.train.steps)
    train, held = load_images(cfg)
    absolute_data_path(cfg, resumed)
    cfg.model.in_channels = train.channels
    cfg.model.image_size = train.size
    device = resolve_device(cfg.train.device)
    bs = min(cfg.data.batch_size, len(train))
    check_memory(4 * 4 * bs * train.channels * train.size[0] * train.size[1],
                 f"a training batch of {bs} images of {train.channels}x{train.size[0]}x{train.size[1]}",
                 "4 float32 copies: the images, the network's state, and their gradients", device)
    try:
        build_model(cfg)
    except InputError:
        raise
    except (ValueError, TypeError, RuntimeError) as e:
        raise InputError(f"the model of the config cannot be built: {e}") from None
    return train, held


def train_vae(cfg: VAEConfig, out_dir: str | Path, resume: bool = False, quiet: bool = False,
              log: Any = print, data: tuple[ImageSet, ImageSet] | None = None) -> dict[str, Any]:
    """Train the autoencoder of ``cfg`` and write the run into ``out_dir``.

    Writes ``config.yaml`` (resolved), ``metrics.jsonl`` and ``checkpoints/`` (Trainer),
    ``metrics.json``, ``figure.png``, ``samples.png``, ``reconstructions.png``,
    ``interpolation.png``. Returns the metrics dict. ``log`` takes the log lines (the data, and
    the network unless ``quiet``; ``fhcnn vae train`` passes :func:`fhcnn.log.info`).
    """
    from ...training.device import CpuThreads

    with CpuThreads(cfg.train.threads):  # the whole run, evaluation included
        return _train_vae(cfg, Path(out_dir), resume, quiet, log, data)


def _train_vae(cfg: VAEConfig, out: Path, resume: bool, quiet: bool, log: Any,
               data: tuple[ImageSet, ImageSet] | None) -> dict[str, Any]:
    t_start = time.perf_counter()
    train, held = data if data is not None else load_images(cfg)
    if data is None:  # else prepare_training did
        absolute_data_path(cfg, out if resume else None)
    cfg.model.in_channels = train.channels
    cfg.model.image_size = train.size
    save_config(cfg, out / "config.yaml")
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, train)
    ev = cfg.eval
    x_eval = held.batch(slice(0, ev.n_eval))
    # energy distance of the untrained model with P = I (the full D-dimensional F(X))
    f0 = full_transform(model, x_eval)
    e_before = prior_energy(f0, model.sigma, ev.seed)
    if cfg.model.p_init == "pca":
        model.init_pca(train.batch(slice(0, 4000)))
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    norms_init = model.column_norms().numpy()
    n_train, bs = len(train), min(cfg.data.batch_size, len(train))
    log(f"vae: {train.name}: {n_train} training / {len(held)} held-out images of "
        f"{train.channels}x{train.size[0]}x{train.size[1]}; D = {model.full_dim}")
    if not quiet:
        log(model.net.describe())

    def batch_fn(step: int, gen: torch.Generator) -> Tensor:
        return train.batch(torch.randint(0, n_train, (bs,), generator=gen))

    trainer: Trainer | None = None
    lc = cfg.loss

    def loss_fn(m: Any, x: Tensor) -> tuple[Tensor, dict[str, float]]:
        ae: HyperbolicAutoencoder = unwrap_model(m)  # type: ignore[assignment]
        step = (trainer.step if trainer is not None else 0) + 1
        beta = beta_at(lc, step, cfg.train.steps)
        x_hat, z = m(x)
        err = (x_hat - x) / ae.std
        recon = err.square().flatten(1).sum(1).mean()
        gn = ae.group_norm()
        loss = recon + lc.alpha * gn
        e_val = float("nan")
        z_all = gather_batch(z)  # under torchrun the energy distance is the whole batch's
        if beta > 0 and z_all.shape[0] > 1 and z_all.shape[1] > 0:
            # the prior sample of one process: drawn from the step's seed of rank 0, whole batch
            g = torch.Generator().manual_seed(step_seed(cfg.train.seed, step, 1))
            prior = torch.randn(z_all.shape, generator=g, dtype=z.dtype).to(z.device) * ae.sigma
            e = energy_distance(z_all, prior)
            loss = loss + beta * e
            e_val = float(e.detach())
        return loss, {"recon": float(recon.detach()), "mse": float(err.detach().square().mean()),
                      "latent_dim": float(ae.latent_dim), "group_norm": float(gn.detach()),
                      "energy": e_val, "beta": beta}

    def val_fn(m: Any) -> dict[str, float]:
        return evaluate(unwrap_model(m), x_eval, ev.seed)

    trainer = Trainer(model, cfg.train, out, batch_fn=batch_fn, loss_fn=loss_fn, val_fn=val_fn,
                      quiet=quiet)
    with _ProxHook(trainer.model, lc.prox_weight):  # type: ignore[arg-type]
        history = trainer.fit(resume=resume)
    fit_time = trainer.train_time_s  # the whole run's, a resumed one's included
    if not trainer.is_main:  # under torchrun only rank 0 evaluates and writes outputs
        return {}
    model = trainer.model  # type: ignore[assignment]
    model.eval()
    norms_trained = model.column_norms().cpu().numpy()
    model.prune()
    model.cpu()
    metrics: dict[str, Any] = {"dataset": train.name, "n_train": n_train, "n_eval": len(x_eval),
                               "full_dim": model.full_dim, "latent_dim": model.latent_dim}
    res = evaluate(model, x_eval, ev.seed)
    metrics.update(recon_mse=res["recon_mse"], recon_mse_clamped=res["recon_mse_clamped"],
                   recon_mse_normalized=res["recon_mse"] / float(model.std.square().mean()),
                   energy_distance_before=e_before, energy_distance_after=res["energy_distance"])
    # same latent dimension before training: the untrained F with its first latent_dim
    # principal directions (what the model would be without learning F and P)
    untrained = build_model(cfg, train)
    untrained.load_state_dict(init_state)
    untrained.init_pca(train.batch(slice(0, 4000)))
    with torch.no_grad():
        keep = torch.zeros(untrained.full_dim, dtype=torch.bool)
        keep[: model.latent_dim] = True
        untrained.alive.copy_(keep)
    untrained.prune()
    metrics["energy_distance_before_same_dim"] = prior_energy(latents(untrained, x_eval),
                                                               model.sigma, ev.seed)
    # noise floor: two independent prior samples of the same size (unbiased, 0 in expectation:
    # about half of the draws are negative, see docs/vae.md)
    g = torch.Generator().manual_seed(ev.seed + 1)
    metrics["energy_distance_prior_vs_prior"] = float(energy_distance(
        torch.randn(len(x_eval), model.latent_dim, generator=g, dtype=torch.float64) * model.sigma,
        torch.randn(len(x_eval), model.latent_dim, generator=g, dtype=torch.float64) * model.sigma))
    g = torch.Generator().manual_seed(ev.seed)
    with torch.no_grad():
        samples = model.sample(max(ev.n_samples, 64), generator=g).clamp(0, 1)
    if ev.classifier and train.labels is not None:
        crop = 8 if cfg.data.dataset == "digits" else None
        clf = digit_classifier(train, crop)
        metrics["classifier_confidence_samples"] = classifier_confidence(clf, samples[:ev.n_samples])
        if held.labels is not None:
            xh = held.batch()
            metrics["classifier_confidence_real_eval"] = classifier_confidence(clf, xh)
            metrics["classifier_accuracy_real_eval"] = float(
                (clf.predict(classifier_input(xh, crop)) == held.labels.numpy()).mean())
    metrics.update(train_time_s=fit_time, total_time_s=time.perf_counter() - t_start,
                   steps=cfg.train.steps, threads=torch.get_num_threads(),
                   final_train=history.get("train", {}))
    # figures
    recons = reconstruct(model, x_eval[:16]).clamp(0, 1)
    n_pairs = min(4, len(x_eval) // 2)
    interp = torch.cat([interpolate_latents(model, x_eval[2 * i:2 * i + 1], x_eval[2 * i + 1:2 * i + 2], 8)
                        for i in range(n_pairs)]) if n_pairs else samples[:8]
    save_grid(samples[:64], out / "samples.png", ncol=8, scale=max(1, 96 // train.size[1]))
    save_grid(torch.stack([x_eval[:16], recons], 1).flatten(0, 1), out / "reconstructions.png",
              ncol=8, scale=max(1, 96 // train.size[1]))
    save_grid(interp, out / "interpolation.png", ncol=8, scale=max(1, 96 // train.size[1]))
    save_figure(out / "figure.png", x_eval[:16], recons, samples, interp, norms_init,
                norms_trained, model.prune_threshold,
                f"hyperbolic VAE on {train.name}: latent dim {model.latent_dim} of {model.full_dim}, "
                f"recon MSE {res['recon_mse']:.4f}, energy distance {e_before:.3g} -> "
                f"{res['energy_distance']:.3g}")
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


# ------------------------------------------------------------------------ loading runs
def _find_config(path: Path) -> Path:
    """The ``config.yaml`` of the run that holds ``path`` (``path`` or up to three folders
    above it). A run folder of another command (its ``run.json`` names the command) is refused
    in one line: its config is not a VAE's."""
    for folder in [path if path.is_dir() else path.parent, *list(path.parents)[:3]]:
        if (folder / "config.yaml").is_file():
            run = RunFolder.open(folder)
            tool = run.marker.get("tool") if run is not None else None
            if tool not in (None, "vae"):
                raise InputError(f"{path}: {folder} is a run folder of fhcnn {tool}, not of "
                                 f"fhcnn vae; give a run folder written by 'fhcnn vae train'")
            return folder / "config.yaml"
    raise InputError(f"{path}: no config.yaml found in it or the folders above it "
                     f"(expected a run folder written by 'fhcnn vae train')")


def load_run(path: str | Path, device: str = "cpu") -> tuple[VAEConfig, HyperbolicAutoencoder, Path]:
    """Load a trained autoencoder: ``path`` is a run folder, its ``checkpoints/``, a
    ``step-N`` folder or a ``model.safetensors`` file. Returns ``(config, model, run_dir)``
    with the model pruned, in eval mode."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such checkpoint or run folder")
    cfg_path = _find_config(p)
    cfg = load_config(VAEConfig, cfg_path)
    model = build_model(cfg)
    if p.is_dir() and not (p / MANIFEST_FILE).exists():  # fhcnn picks the run's latest checkpoint
        p = find_checkpoint(p, "latest")
        check_own_checkpoint(p)
    load_weights(model, p, which="latest")
    model.prune()
    model.to(device).eval()
    return cfg, model, cfg_path.parent


def load_run_images(cfg: VAEConfig, run_dir: Path | None) -> tuple[ImageSet, ImageSet]:
    """:func:`load_images` of a trained run: ``(train, eval)`` as the run split them. The
    images at ``data.path`` must still be those the run recorded in its ``run.json`` (their
    fingerprint): images added, removed or changed since (or another folder of that name from
    another working directory) split otherwise, and the "held-out" images would hold images
    the run trained on. Refused in one line, as are images no longer at ``data.path``; a run
    without a record is not checked."""
    path = cfg.data.path
    if path is not None and not Path(path).expanduser().exists():
        where = "" if Path(path).expanduser().is_absolute() else \
            ", a path relative to the folder the run was trained in: run from there"
        raise InputError(f"{path}: not found; the run's images (data.path of its config.yaml{where}) are read "
                         f"again to split them as the run did: restore them there (interpolate also takes image files)")
    run = RunFolder.open(run_dir) if run_dir is not None and path is not None else None
    recorded = ((run.marker.get("inputs") or {}).get("data") or {}) if run is not None else {}
    now = fingerprint(path) if path is not None and recorded.get("fingerprint") else None
    if now not in (None, "missing", recorded.get("fingerprint")):  # missing: load_images says so
        raise InputError(f"{path}: the run's images ({cfg.data.dataset} {recorded.get('path')}) changed "
                         f"since it was trained (its run.json records other contents), so its training and "
                         f"held-out images are no longer known; restore them (interpolate also takes image files)")
    return load_images(cfg)


def image_index(spec: str) -> int | None:
    """The index into the run's training images that ``spec`` (``--a``, ``--b``) gives, or
    ``None`` where it names an image file (not ``str.isdigit``: '--3' and '²' are no index)."""
    return int(spec) if re.fullmatch(r"\s*-?[0-9]+\s*", spec) else None


def resolve_image(spec: str, cfg: VAEConfig, model: HyperbolicAutoencoder,
                  run_dir: Path | None = None, flag: str | None = None) -> tuple[Tensor, str]:
    """``spec``: an integer index into the run's training images (checked to be the run's
    when ``run_dir`` is given, :func:`load_run_images`), or an image file (converted to the
    model's channels; of the native size of the run's ``digits`` (8x8) or ``mnist-idx`` images
    (their IDX file's, read from its header: :func:`_native_shape`), brought to the model's size
    as they were (:func:`~fhcnn.data.images.fit_to_size`); else centre-cropped to a square as
    the run's folder images were, ``data.crop`` pixels a side or the largest, and resized to
    the model's size). ``flag`` (``--a``): the option that gave ``spec``, named by a refusal.
    Returns the image ``(1, C, H, W)`` and what it is, as a result line names it: the file as
    given, or ``training image I`` (a negative index counted from the end: the index it names)."""
    shown = f"{flag} {spec}" if flag else spec
    i = image_index(spec)
    if i is not None:
        train, _ = load_run_images(cfg, run_dir)
        n = len(train)
        if not -n <= i < n:
            raise InputError(f"{shown}: image index {i} is out of range: the run's training set has {n} images "
                             f"(0 to {n - 1}, or -{n} to -1 from the end)")
        i %= n  # -1: the last
        return train.batch(slice(i, i + 1)), f"training image {i}"

    p = Path(spec)
    if not p.is_file():
        raise InputError(f"{shown}: neither an image file nor an index into the training set")
    a = read_image(p, "L" if model.in_channels == 1 else "RGB")
    d, size = cfg.data, (int(model.image_size[0]), int(model.image_size[1]))
    native = a.shape[:2] == _native_shape(cfg, shown) and size[0] == size[1]  # as the training images
    if not native:  # the centred square the run's folder images were cut to (--crop), else the largest
        crop = d.crop if d.dataset == "folder" and d.size is not None else None
        a = resize_square(center_square(a, crop), size)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] != model.in_channels:
        raise InputError(f"{spec}: {a.shape[2]} channel(s), the model takes {model.in_channels}")
    x = torch.from_numpy(a.copy()).permute(2, 0, 1)[None]
    if native:
        x = fit_to_size(x, size[0])
    return (x.float() / 255.0 if a.dtype == np.uint8 else x), spec  # 16-bit images are read as [0, 1] floats


def _native_shape(cfg: VAEConfig, shown: str) -> tuple[int, int] | None:
    """``(H, W)`` of the run's images as its data set holds them, where it brings them to the
    model's size with :func:`~fhcnn.data.images.fit_to_size` (zero-padded where they fit, else
    resized): the digits' 8x8; of ``mnist-idx``, its IDX file's (28x28 for MNIST, another size
    for another IDX file), read from the header at ``data.path``. ``None``: a folder, LFW.

    Raises:
        InputError: the run's IDX file cannot be read (moved, removed): without its images' size
            an image file cannot be brought to the model's size as they were (``shown``: the
            option and file, as the line names them).
    """
    d = cfg.data
    if d.dataset == "mnist-idx" and d.path is not None:
        try:
            return idx_image_shape(Path(d.path).expanduser())
        except InputError as e:
            raise InputError(f"{shown}: the size of the run's IDX images is needed to bring the file to the "
                             f"model's size as they were, but {e}; restore data.path of its config.yaml, or "
                             f"give an index into its training images") from None
    side = NATIVE_SIDES.get(d.dataset)
    return (side, side) if side is not None else None


def train_baseline(cfg: VAEConfig, base: BaselineConfig, latent_dim: int,
                   out_dir: str | Path | None = None, quiet: bool = True) -> dict[str, Any]:
    """Train a :class:`~fhcnn.models.ConvVAE` with ``latent_dim`` on the images of ``cfg`` and
    measure it like :func:`train_vae` (recon MSE of the posterior mean, energy distance of the
    posterior means to the prior, classifier confidence on samples). Returns the metrics."""
    from ...training.device import CpuThreads

    with CpuThreads(cfg.train.threads):
        return _train_baseline(cfg, base, latent_dim, out_dir, quiet)


def _train_baseline(cfg: VAEConfig, base: BaselineConfig, latent_dim: int,
                    out_dir: str | Path | None, quiet: bool) -> dict[str, Any]:
    from ...models.autoencoder import ConvVAE

    train, held = load_images(cfg)
    x = train.batch(slice(0, 5000))
    torch.manual_seed(base.train.seed)
    vae = ConvVAE(train.channels, train.size, latent_dim, width=base.width, levels=base.levels,
                  sigma=cfg.model.sigma, mean=float(x.mean()), std=float(x.std()))
    n_train, bs = len(train), min(cfg.data.batch_size, len(train))

    def batch_fn(step: int, gen: torch.Generator) -> Tensor:
        return train.batch(torch.randint(0, n_train, (bs,), generator=gen))

    def loss_fn(m: Any, xb: Tensor) -> tuple[Tensor, dict[str, float]]:
        return unwrap_model(m).loss(xb, base.kl_weight, base.noise_scale)  # type: ignore[operator]

    trainer = Trainer(vae, base.train, out_dir, batch_fn=batch_fn, loss_fn=loss_fn, quiet=quiet)
    trainer.fit()
    fit_time = trainer.train_time_s
    vae = trainer.model.cpu().eval()  # type: ignore[assignment]
    ev = cfg.eval
    x_eval = held.batch(slice(0, ev.n_eval))
    res = evaluate(vae, x_eval, ev.seed)
    g = torch.Generator().manual_seed(ev.seed)
    with torch.no_grad():
        samples = vae.sample(max(ev.n_samples, 64), generator=g).clamp(0, 1)
    metrics: dict[str, Any] = {"model": "ConvVAE", "latent_dim": latent_dim,
                               "parameters": sum(p.numel() for p in vae.parameters()),
                               "recon_mse": res["recon_mse"],
                               "energy_distance_after": res["energy_distance"],
                               "train_time_s": fit_time, "steps": base.train.steps}
    if ev.classifier and train.labels is not None:
        crop = 8 if cfg.data.dataset == "digits" else None
        clf = digit_classifier(train, crop)
        metrics["classifier_confidence_samples"] = classifier_confidence(clf, samples[:ev.n_samples])
    metrics["_samples"] = samples[:64]
    metrics["_recons"] = reconstruct(vae, x_eval[:16]).clamp(0, 1)
    return metrics
