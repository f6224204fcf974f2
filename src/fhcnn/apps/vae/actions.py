"""The ``fhcnn vae`` actions on a trained run: sample, interpolate, normality; and the
``--dataset`` shortcut's config overrides."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from ...atomic import atomic_save_npy
from ...data.images import DATASETS
from ...errors import InputError
from ...rundir import RunFolder, check_output_file, prepare_output_dir
from .outputs import interpolate_latents, normality_report, save_grid
from .pipeline import load_run, load_run_images, resolve_image

__all__ = ["dataset_overrides", "sample", "interpolate", "normality", "train_summary", "train_command"]


def dataset_overrides(dataset: Sequence[str] | None, config_dataset: str, resize: int | None = None,
                      crop: int | None = None, limit: int | None = None, threads: int | None = None,
                      overrides: Sequence[str] = ()) -> list[str]:
    """``--set`` strings for ``--dataset NAME [PATH]``, ``--resize``, ``--crop``, ``--limit``,
    ``--threads`` (``train.threads``), then ``overrides`` (``--set``). A dataset other than the
    config's gets its own default size (``data.size=null``: a folder is then resized only with
    ``--resize``)."""
    return [o for o, _ in _dataset_pairs(dataset, config_dataset, resize, crop, limit, threads,
                                         [(o, f"--set {o}") for o in overrides])]


def _dataset_pairs(dataset: Sequence[str] | None, config_dataset: str, resize: int | None,
                   crop: int | None, limit: int | None, threads: int | None,
                   overrides: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """:func:`dataset_overrides` as ``(override, the option as the user typed it)`` pairs (the
    ``data.*`` keys of ``--dataset folder PATH`` all as ``--dataset folder PATH``), for the
    line refusing a bad value; ``overrides`` are pairs already."""
    from ...resources import check_threads

    if threads is not None:
        check_threads(threads, "--threads")
    for flag, v in (("--resize", resize), ("--crop", crop), ("--limit", limit)):
        if v is not None and v < 1:
            raise InputError(f"{flag} must be >= 1, got {v}")
    out: list[tuple[str, str]] = []
    if dataset:
        name, *rest = dataset
        typed = f"--dataset {' '.join(dataset)}"
        if name != config_dataset:
            out += [("data.size=null", typed), ("data.crop=null", typed)]
        if name not in DATASETS:
            raise InputError(f"--dataset must be digits, lfw, mnist-idx PATH or folder PATH, got {name!r}")
        if name in ("mnist-idx", "folder"):
            if len(rest) != 1:
                raise InputError(f"--dataset {name} needs exactly one PATH")
            out += [(f"data.dataset={name}", typed), (f"data.path={rest[0]}", typed)]
        else:
            if rest:
                raise InputError(f"--dataset {name} takes no PATH (got {' '.join(rest)})")
            out += [(f"data.dataset={name}", typed), ("data.path=null", typed)]
    for key, flag, v in (("data.size", "--resize", resize), ("data.crop", "--crop", crop),
                         ("data.limit", "--limit", limit)):
        if v is not None:
            out.append((f"{key}={v}", f"{flag} {v}"))
    out += list(overrides)
    if threads is not None:
        out.append((f"train.threads={threads}", f"--threads {threads}"))
    return out


def _check_files(outputs: dict[str, str | Path | None], overwrite: bool, cfg: Any, run_dir: Path,
                 inputs: Sequence[str | Path | None] = ()) -> None:
    """Every output file: not an input, not in an input folder or a run folder, not an existing
    file unless ``overwrite``, and no two outputs the same file."""
    seen: dict[Path, str] = {}
    for what, path in outputs.items():
        if path is None:
            continue
        check_output_file(path, overwrite, [run_dir, cfg.data.path, *inputs], what)
        key = Path(path).expanduser().resolve()
        if key in seen:
            raise InputError(f"{what} and {seen[key]} are the same file {path}")
        seen[key] = what


def _check_images(n: int, model: Any, what: str) -> None:
    """Refuse ``n`` decoded images (and their PNG grid) that cannot fit in memory."""
    from ...resources import check_memory

    c, (h, w) = model.in_channels, model.image_size
    scale = max(1, 64 // w)
    check_memory(n * c * h * w * (4 * 3 + scale * scale), f"{what}: {n} decoded images of {c}x{h}x{w}",
                 "latents, decodings and the PNG grid")


def _check_suffix(flag: str, path: str | Path, suffix: Literal[".png", ".npy"]) -> None:
    """The file ``flag`` names must say what it holds: ``--out`` a PNG grid (``x.jpg`` would
    hold PNG data), ``--npy`` a NumPy array (``x`` or ``x.txt`` would hold ``.npy`` data
    that ``np.load("x.npy")`` does not find)."""
    if Path(path).suffix.lower() != suffix:
        what = "the image is written as PNG" if suffix == ".png" else "the array is written as .npy"
        raise InputError(f"{flag} {path}: {what}; give a file name ending in {suffix}")


def sample(checkpoint: str, n: int, out: str | Path, *, seed: int = 0, sigma: float | None = None,
           npy: str | Path | None = None, overwrite: bool = False) -> str:
    """Decode ``n`` samples of the prior into a PNG grid at ``out`` (and a ``(N, C, H, W)``
    ``.npy`` if ``npy``); returns the result line. Existing files are refused unless
    ``overwrite``."""
    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise InputError(f"--sigma must be a positive number, got {sigma}")
    _check_suffix("--out", out, ".png")
    if npy is not None:
        _check_suffix("--npy", npy, ".npy")
    cfg, model, run_dir = load_run(checkpoint)
    _check_files({"--out": out, "--npy": npy}, overwrite, cfg, run_dir)
    _check_images(n, model, "--n")
    if sigma is not None:
        model.sigma = sigma
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = model.sample(n, generator=g).clamp(0, 1)
    scale = max(1, 64 // model.image_size[1])
    save_grid(x, out, ncol=min(n, int(np.ceil(np.sqrt(n)))), scale=scale)
    if npy is not None:
        atomic_save_npy(npy, x.numpy())
    return f"wrote {n} samples (latent dim {model.latent_dim}, s = {model.sigma:g}) to {out}"


def interpolate(checkpoint: str, a: str, b: str, steps: int, out: str | Path,
                overwrite: bool = False) -> str:
    """Decode ``steps`` points on the line between the latents of images ``a`` and ``b`` (files,
    or indices into the run's training images) into a PNG row ``[a, points..., b]``; returns the
    result line, which names the two images (the files as given, the training images' indices,
    a negative one counted from the end)."""
    if steps < 2:
        raise InputError(f"--steps must be >= 2 (the endpoints), got {steps}")
    _check_suffix("--out", out, ".png")
    cfg, model, run_dir = load_run(checkpoint)
    _check_files({"--out": out}, overwrite, cfg, run_dir, [a, b])
    _check_images(steps + 2, model, "--steps")
    (xa, named_a), (xb, named_b) = (resolve_image(a, cfg, model, run_dir, "--a"),
                                    resolve_image(b, cfg, model, run_dir, "--b"))
    line = interpolate_latents(model, xa, xb, steps).clamp(0, 1)
    row = torch.cat([xa, line, xb])
    save_grid(row, out, ncol=len(row), scale=max(1, 64 // model.image_size[1]))
    return f"wrote [a, {steps} interpolated decodings, b] to {out} (a: {named_a}, b: {named_b})"


def normality(checkpoint: str, out: str | Path | None, n: int, split: str,
              overwrite: bool = False) -> str:
    """Energy distance, Q-Q plot and histograms of ``n`` latents of the run's ``split`` images
    against the prior, into ``out`` (default ``<run>/normality``, recorded in the run's
    ``run.json``). ``out`` follows the rules of every output folder; an existing report is
    replaced only with ``overwrite``; returns the result line."""
    if n < 2:
        raise InputError(f"--n must be >= 2, got {n}")
    cfg, model, run_dir = load_run(checkpoint)
    train, held = load_run_images(cfg, run_dir)
    images = held if split == "eval" else train
    x = images.batch(slice(0, n))
    names = ("normality.png", "normality.json")
    if out is not None:
        folder = prepare_output_dir(out, overwrite=overwrite, tool="vae-normality", outputs=names,
                                    roles={"run": run_dir, "data": cfg.data.path}, resumable=False)
    else:
        folder = run_dir / "normality"
        run = RunFolder.open(run_dir)
        if run is not None:  # the report is a file of the run: checked, locked and recorded
            run.lock(run_dir)
            try:
                for name in names:
                    run.check_target(folder / name)
            except InputError:
                run.unlock()
                raise
        elif folder.is_symlink():
            raise InputError(f"{folder} is a link; fhcnn never writes through a link it did not "
                             f"create: give --out DIR")
        for name in names:
            if (folder / name).exists() and not overwrite:
                if run is not None:
                    run.unlock()
                raise InputError(f"{folder / name} exists; pass --overwrite to replace it or "
                                 f"--out DIR for a new folder")
        if run is not None:
            run.activate()
    r = normality_report(model, x, folder, seed=cfg.eval.seed)
    return (f"energy distance of {r['n']} {split} latents (dim {r['latent_dim']}) to "
            f"N(0, {r['sigma']:g}^2 I): {r['energy_distance']:.4f} (two samples of the prior: "
            f"{r['energy_distance_prior_vs_prior']:.4f}); wrote {folder}/normality.png, normality.json")


def train_summary(m: dict[str, Any], out: Path) -> str:
    """The result line of ``fhcnn vae train`` from its metrics."""
    return (f"latent_dim {m['latent_dim']} of {m['full_dim']}, recon MSE {m['recon_mse']:.5f}, "
            f"energy distance {m['energy_distance_before']:.4g} -> {m['energy_distance_after']:.4g}"
            + (f", classifier confidence on samples {m['classifier_confidence_samples']:.3f}"
               if "classifier_confidence_samples" in m else "")
            + f"; {m['train_time_s']:.0f} s; wrote {out}")


def train_command(config: str | None, overrides: list[str], out: str, *, dataset: Sequence[str] | None = None,
                  resize: int | None = None, crop: int | None = None, limit: int | None = None,
                  threads: int | None = None, resume: bool = False, overwrite: bool = False, quiet: bool = False,
                  config_file: str | None = None, start: str | None = None,
                  given: Sequence[str] | None = None) -> str:
    """``fhcnn vae train``: the config with the dataset options, the images, device and model
    checked (before ``out`` exists), the run folder, the training; returns the summary line
    (empty on a non-zero rank under ``torchrun``). ``start``: the shipped config a ``config``
    file is read over (see :func:`fhcnn.config.load_config`). ``given``: ``overrides`` as the
    command line gave them, one each (default ``--set`` each), for the line refusing a bad
    value."""
    from ... import log
    from ...config import load_config
    from .config import VAEConfig
    from .pipeline import prepare_training, train_vae

    base = load_config(VAEConfig, config, start=start)
    typed = list(given) if given is not None else [f"--set {o}" for o in overrides]
    pairs = _dataset_pairs(dataset, base.data.dataset, resize, crop, limit, threads, list(zip(overrides, typed)))
    given = list(dict.fromkeys(g for _, g in pairs))  # --dataset once for its four keys
    cfg = load_config(VAEConfig, config, [o for o, _ in pairs], start=start, given=given)
    data = prepare_training(cfg, Path(out) if resume else None)  # images, device, model: before --out exists
    folder = prepare_output_dir(out, resume, overwrite, tool="vae", config=cfg, config_file=config_file,
                                roles={"data": cfg.data.path})
    log.setup(quiet)
    # its log lines as every command's: stderr, rank 0 only, none with --quiet
    m = train_vae(cfg, folder, resume=resume, quiet=quiet, log=log.info, data=data)
    return train_summary(m, folder) if m else ""
