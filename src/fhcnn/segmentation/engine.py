"""Train a dense 3D network on ONE volume from sparse labels, and predict the whole volume.

The volume is ``(C, D, H, W)`` (video: RGB x time x height x width; hyperspectral: dates x
bands x height x width), the labels ``(D, H, W)`` with ``IGNORE = 255`` for unlabelled voxels.
What makes a strided (wavelet or pooling) network work from a few labelled slices:

* training windows are cut at *any* position around a labelled voxel (the volume continued
  by reflection past its ends), so every labelled voxel is seen at every position modulo the
  network's stride ``2**levels`` -- otherwise slices at positions no label shares get garbage;
* prediction averages class probabilities over several shifted tilings (and a flip);
* the loss is class-balanced (weights ``count**-balance``), else it sits at "all background".

With ``data.reduce_depth`` the labels are a 2D ``(H, W)`` map instead (e.g. a change map of a
hyperspectral scene whose bands are the depth): the loss is taken on the depth-mean of the
logits, training windows span the whole depth axis, and the model (:class:`DepthMean`) returns
the depth-mean logits broadcast over depth, so :func:`predict_volume` works unchanged.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import MEMORY_MODES, SegmentConfig
from .metrics import IGNORE, segmentation_metrics
from .models import VolumeSegmenter, build_model

__all__ = ["SegmentationResult", "train_segmentation", "predict_volume", "prepare_inputs",
           "prediction_window", "DepthMean",
           "reflect_indices", "activation_bytes", "num_classes_of"]


def reflect_indices(start: int, length: int, n: int) -> Tensor:
    """Indices ``start .. start+length-1`` folded into ``[0, n)`` by reflection (no edge repeat,
    like ``numpy.pad(mode="reflect")``, for any overshoot)."""
    idx = torch.arange(start, start + length)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * n - 2
    idx = idx.remainder(period)
    return torch.where(idx >= n, period - idx, idx)


def _gather(x: Tensor, starts: Sequence[int], sizes: Sequence[int]) -> Tensor:
    """Window of ``x`` (``(..., D, H, W)``) at ``starts`` with ``sizes``, reflected past the ends."""
    nd = len(starts)
    for k, (s, w) in enumerate(zip(starts, sizes)):
        axis = x.dim() - nd + k
        x = x.index_select(axis, reflect_indices(s, w, x.shape[axis]))
    return x


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def num_classes_of(labels: np.ndarray | Tensor) -> int:
    """Classes in a label volume: largest label other than ``IGNORE`` plus one (at least 2)."""
    lab = torch.as_tensor(np.asarray(labels))
    vals = lab[lab != IGNORE]
    return max(2, int(vals.max()) + 1) if vals.numel() else 2


def prepare_inputs(volume: np.ndarray | Tensor, coords: bool = False) -> Tensor:
    """``(C, D, H, W)`` float32 tensor, with two normalized (h, w) coordinate channels appended
    if ``coords``."""
    v = torch.as_tensor(np.asarray(volume), dtype=torch.float32)
    if v.dim() != 4:
        raise ValueError(f"volume must have shape (C, D, H, W), got {tuple(v.shape)}")
    if coords:
        _, d, h, w = v.shape
        yy = torch.linspace(-1, 1, h).view(1, 1, h, 1).expand(1, d, h, w)
        xx = torch.linspace(-1, 1, w).view(1, 1, 1, w).expand(1, d, h, w)
        v = torch.cat([v, yy, xx], 0)
    return v


def _blend_weight(win: Sequence[int], padded: Sequence[int]) -> Tensor:
    """``(d, h, w)`` positive weights of one prediction window: ``sin(pi (i + 1/2) / n)`` along
    each axis the window cuts (smaller than the padded volume), 1 along the others."""
    out = torch.ones(())
    for ax, (w, p) in enumerate(zip(win, padded)):
        v = torch.sin(math.pi * (torch.arange(w) + 0.5) / w) if w < p else torch.ones(w)
        out = out[..., None] * v if ax else v
    return out


@torch.no_grad()
def predict_volume(model: nn.Module, volume: Tensor, *, shifts: int = 1, flip: bool = False,
                   window: Sequence[int] = (0, 0, 0), device: torch.device | str | None = None,
                   shift_depth: bool = True) -> Tensor:
    """Class probabilities ``(K, D, H, W)`` (float32, CPU) of a whole volume ``(C, D, H, W)``.

    The volume is continued by reflection to a multiple of ``model.size_multiple`` (any size
    works), cut into windows of ``window`` voxels (0 = whole axis; overlapping by half, blended
    with weights ``sin(pi (i + 1/2) / w)`` along each cut axis, so a voxel's prediction comes
    mostly from windows that hold it near their centre, where the net sees its context), and
    the softmax averaged over ``shifts`` tilings offset by ``i * multiple / shifts`` voxels on
    every axis (only H and W if not ``shift_depth``; and over a flip of the last axis if
    ``flip``); cropped back to ``(D, H, W)``.
    """
    if volume.dim() != 4:
        raise ValueError(f"volume must have shape (C, D, H, W), got {tuple(volume.shape)}")
    m = int(getattr(model, "size_multiple", 1))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    _, *size = volume.shape
    offsets = sorted({int(round(i * m / max(shifts, 1))) % m for i in range(max(shifts, 1))})
    acc: Tensor | None = None
    runs = 0
    for o in offsets:
        oo = [o if (axis > 0 or shift_depth) else 0 for axis in range(3)]
        padded = [_round_up(n + oa, m) for n, oa in zip(size, oo)]
        win = [p if (w <= 0 or w >= p) else _round_up(w, m) for w, p in zip(window, padded)]
        win = [min(w, p) for w, p in zip(win, padded)]
        x = _gather(volume, [-oa for oa in oo], padded)
        axes_starts = []
        for p, w in zip(padded, win):
            stride = max(m, (w // 2) // m * m)
            st = list(range(0, p - w + 1, stride))
            if st[-1] != p - w:
                st.append(p - w)
            axes_starts.append(st)
        for flipped in ([False, True] if flip else [False]):
            xin = x.flip(-1) if flipped else x
            out: Tensor | None = None
            cnt = torch.zeros(padded)
            weight = _blend_weight(win, padded)
            for s0 in axes_starts[0]:
                for s1 in axes_starts[1]:
                    for s2 in axes_starts[2]:
                        sl = (slice(s0, s0 + win[0]), slice(s1, s1 + win[1]), slice(s2, s2 + win[2]))
                        xb = xin[(slice(None),) + sl][None].to(device)
                        prob = torch.softmax(model(xb).float(), 1)[0].cpu()
                        if out is None:
                            out = torch.zeros((prob.shape[0], *padded))
                        out[(slice(None),) + sl] += prob * weight
                        cnt[sl] += weight
            assert out is not None
            out = out / cnt
            if flipped:
                out = out.flip(-1)
            out = out[:, oo[0]:oo[0] + size[0], oo[1]:oo[1] + size[1], oo[2]:oo[2] + size[2]]
            acc = out if acc is None else acc + out
            runs += 1
    if was_training:
        model.train()
    assert acc is not None
    return acc / runs


def activation_bytes(model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
                     ) -> int:
    """Bytes autograd keeps for the backward pass of one training step on ``(x, y)``."""
    from ..memory import saved_tensor_bytes

    nbytes, loss = saved_tensor_bytes(lambda: loss_fn(model(x), y))
    del loss
    return nbytes


class DepthMean(nn.Module):
    """Wraps a dense 3D model (``(N, C, D, H, W) -> (N, K, D, H, W)`` logits): the logits
    averaged over the depth axis and broadcast back (a view, no copy), so every depth slice
    holds the same ``mean_d logits`` and :func:`predict_volume` returns ``softmax(mean_d logits)``
    at every depth. The model of a ``data.reduce_depth`` run; the wrapped one is ``.inner``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    @property
    def size_multiple(self) -> int:
        return int(getattr(self.inner, "size_multiple", 1))

    def forward(self, x: Tensor) -> Tensor:
        lo = self.inner(x)
        return lo.mean(2, keepdim=True).expand_as(lo)


@dataclass
class SegmentationResult:
    """What :func:`train_segmentation` returns.

    Attributes:
        model: the trained :class:`VolumeSegmenter` (on ``device``, eval mode); with
            ``data.reduce_depth`` a :class:`DepthMean` around it (depth-mean logits broadcast
            over depth).
        config: the resolved :class:`SegmentConfig`.
        num_classes: ``K``.
        history: per-step dicts ``{"step", "loss", "time_s"}`` (training time, evaluation
            excluded) and, at evaluations, ``"miou"`` etc.
        train_time_s: wall time of training (evaluations excluded).
        window: the training window ``(d, h, w)`` actually used.
        activation_bytes: bytes saved for backward by one training step (one window batch).
        device: where it trained.
    """

    model: VolumeSegmenter | DepthMean
    config: SegmentConfig
    num_classes: int
    history: list[dict[str, Any]] = field(default_factory=list)
    train_time_s: float = 0.0
    window: tuple[int, int, int] = (0, 0, 0)
    activation_bytes: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def predict_window(self) -> tuple[int, int, int]:
        """The prediction window ``(d, h, w)``: the config's ``predict_*`` with ``-1`` replaced by
        the training window (``0`` = whole axis)."""
        return prediction_window(self.config, self.window)

    def predict_proba(self, volume: np.ndarray | Tensor, shifts: int | None = None) -> Tensor:
        """``(K, D, H, W)`` probabilities of a ``(C, D, H, W)`` volume (same channels as trained).

        With ``data.reduce_depth`` every depth slice holds the softmax of the depth-mean logits
        (identical slices unless ``predict_depth`` cuts the depth axis into several windows);
        ``.mean(1)`` gives the ``(K, H, W)`` map :meth:`predict` takes its argmax of."""
        return self._predict_prepared(prepare_inputs(volume, self.config.data.coords), shifts)

    def _predict_prepared(self, v: Tensor, shifts: int | None = None) -> Tensor:
        """:meth:`predict_proba` of an input already through :func:`prepare_inputs`, on the
        model's device, with the config's shifts, flip and window."""
        d = self.config.data
        return predict_volume(self.model, v, shifts=d.predict_shifts if shifts is None else shifts,
                              flip=d.predict_flip, window=self.predict_window,
                              shift_depth=not d.reduce_depth)

    def predict(self, volume: np.ndarray | Tensor) -> np.ndarray:
        """``(D, H, W)`` uint8 label volume; with ``data.reduce_depth`` the ``(H, W)`` label map
        (argmax of the depth-mean probability), shaped like the labels it was trained on."""
        return _labels_of(self.predict_proba(volume), self.config.data.reduce_depth).numpy().astype(np.uint8)


def _labels_of(prob: Tensor, reduce_depth: bool) -> Tensor:
    """Argmax labels of ``(K, D, H, W)`` probabilities: ``(D, H, W)``, or ``(H, W)`` (argmax of
    the depth-mean probability) if ``reduce_depth``."""
    return (prob.mean(1) if reduce_depth else prob).argmax(0)


def prediction_window(cfg: SegmentConfig, train_window: Sequence[int]) -> tuple[int, int, int]:
    """``cfg.data.predict_*`` with ``-1`` (the default) replaced by ``train_window``; with
    ``data.reduce_depth`` a ``-1`` depth is ``0`` (the whole axis, as in training: one depth
    window, so the depth mean is the same at every depth, whatever the tiling's shift)."""
    d = cfg.data
    asked = (d.predict_depth, d.predict_height, d.predict_width)
    train = (0 if d.reduce_depth else train_window[0],) + tuple(train_window[1:])
    return tuple(int(t) if a < 0 else int(a) for a, t in zip(asked, train))  # type: ignore[return-value]


def _rotate_zoom(x: Tensor, y: Tensor, degrees: float, zoom: float) -> tuple[Tensor, Tensor]:
    """Rotate every (h, w) slice of a window ``x`` ``(C, d, h, w)`` and its labels ``y`` ``(d, h, w)``
    (or ``(1, h, w)``: one label map for all slices) by ``degrees`` and magnify by ``zoom``
    (content continued by reflection)."""
    _, d, h, w = x.shape
    a = math.radians(degrees)
    # affine_grid works in normalized coordinates: the aspect factors keep the rotation rigid
    theta = torch.tensor([[math.cos(a), -math.sin(a) * h / w, 0.0],
                          [math.sin(a) * w / h, math.cos(a), 0.0]], dtype=x.dtype) / zoom
    grid = F.affine_grid(theta.expand(d, 2, 3), [d, 1, h, w], align_corners=False)
    xs = F.grid_sample(x.transpose(0, 1), grid, mode="bilinear", padding_mode="reflection",
                       align_corners=False).transpose(0, 1)
    ys = F.grid_sample(y[:, None].to(x.dtype), grid[: y.shape[0]], mode="nearest", padding_mode="reflection",
                       align_corners=False)[:, 0].round().long()
    return xs.contiguous(), ys


def _class_weights(labels: Tensor, k: int, balance: float) -> Tensor:
    counts = torch.bincount(labels[labels != IGNORE].flatten().long(), minlength=k).float()
    w = torch.where(counts > 0, counts.clamp_min(1) ** -balance, torch.zeros(()))
    return w * (counts > 0).sum() / w.sum()


def _loss(logits: Tensor, y: Tensor, weight: Tensor, dice: float) -> Tensor:
    loss = F.cross_entropy(logits.float(), y, weight=weight.to(logits.device), ignore_index=IGNORE)
    if dice > 0:
        keep = (y != IGNORE).unsqueeze(1)
        prob = torch.softmax(logits.float(), 1) * keep
        onehot = F.one_hot(y.clamp_max(logits.shape[1] - 1), logits.shape[1]).movedim(-1, 1) * keep
        dims = (0,) + tuple(range(2, logits.dim()))
        inter, total = (prob * onehot).sum(dims), (prob + onehot).sum(dims)
        present = onehot.sum(dims) > 0
        d = 1 - (2 * inter + 1) / (total + 1)
        loss = loss + dice * d[present].mean()
    return loss


def _fit(model: nn.Module, cfg: SegmentConfig, out_dir: Path | None, batch_fn: Callable,
         loss_fn: Callable, val_fn: Callable | None, quiet: bool, resume: bool) -> torch.device:
    from ..training import Trainer

    trainer = Trainer(model, cfg.train, out_dir, batch_fn=batch_fn, loss_fn=loss_fn,
                      val_fn=val_fn, quiet=quiet)
    trainer.fit(resume=resume)
    return trainer.device


def train_segmentation(
    volume: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    config: SegmentConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    num_classes: int | None = None,
    eval_labels: np.ndarray | Tensor | None = None,
    eval_fn: Callable[[SegmentationResult], dict[str, float]] | None = None,
    quiet: bool = False,
    resume: bool = False,
) -> SegmentationResult:
    """Train ``config.model`` on one volume from sparse labels.

    Args:
        volume: ``(C, D, H, W)`` float (raw values: normalization is learned from the volume
            and stored in the model).
        labels: ``(D, H, W)`` integer labels in ``[0, K)``, ``255`` = unlabelled; at least two
            classes must be labelled somewhere. With ``config.data.reduce_depth``: an ``(H, W)``
            map, matched by the depth-mean of the logits.
        config: :class:`SegmentConfig` (default: the ``video`` defaults).
        out_dir: where the trainer writes ``metrics.jsonl`` and ``checkpoints/`` (None: nothing
            is written).
        num_classes: ``K`` (default: largest label + 1).
        eval_labels: optional truth shaped like ``labels`` (255 = not scored) scored every
            ``config.data.eval_every`` steps and at the end into ``history`` (never trained on);
            with ``reduce_depth`` the argmax of the depth-mean probability is scored.
        eval_fn: alternative custom evaluation ``result -> {"name": value}`` called likewise.
        quiet: no progress output.
        resume: continue the run in ``out_dir`` from its latest checkpoint.

    Returns:
        :class:`SegmentationResult` (``.model``, ``.predict(volume)``, ``.history`` ...).

    Raises:
        ValueError: bad shapes, labels outside ``[0, K)``, fewer than two labelled classes.
    """
    cfg = copy.deepcopy(config) if config is not None else SegmentConfig()
    vol = prepare_inputs(volume, cfg.data.coords)
    lab = torch.as_tensor(np.asarray(labels)).long()
    d = cfg.data
    reduce = bool(d.reduce_depth)
    if reduce and lab.shape != vol.shape[2:]:
        raise ValueError(f"labels shape {tuple(lab.shape)} must equal the volume's (H, W) = "
                         f"{tuple(vol.shape[2:])}: with data.reduce_depth the labels are one 2D "
                         f"map for the depth-mean of the logits")
    if not reduce and lab.shape != vol.shape[1:]:
        hint = (" (2D (H, W) labels need data.reduce_depth=true)"
                if lab.shape == vol.shape[2:] else "")
        raise ValueError(f"labels shape {tuple(lab.shape)} must equal the volume's (D, H, W) = "
                         f"{tuple(vol.shape[1:])}{hint}")
    k = num_classes or num_classes_of(lab)
    bad = (lab != IGNORE) & ((lab < 0) | (lab >= k))
    if bad.any():
        raise ValueError(f"labels must lie in [0, {k}) or be {IGNORE}; found {lab[bad].unique()[:5].tolist()}")
    present = [c for c in range(k) if (lab == c).any()]
    if len(present) < 2:
        raise ValueError(f"the labels must contain at least two classes; found only {present}")
    if cfg.model.memory not in MEMORY_MODES:
        raise ValueError(f"model.memory must be one of {sorted(MEMORY_MODES)}, got {cfg.model.memory!r}")
    eval_t = torch.as_tensor(np.asarray(eval_labels)).long() if eval_labels is not None else None
    if eval_t is not None and eval_t.shape != lab.shape:
        raise ValueError(f"eval_labels shape {tuple(eval_t.shape)} must equal labels shape {tuple(lab.shape)}")
    torch.manual_seed(cfg.train.seed)
    seg = build_model(cfg.model, vol.shape[0], k)
    if cfg.model.arch == "hyperbolic":
        seg.core.net.reversible = MEMORY_MODES[cfg.model.memory]
    flat = vol.flatten(1)
    seg.set_normalization(flat.mean(1), flat.std(1))
    model: VolumeSegmenter | DepthMean = DepthMean(seg) if reduce else seg
    m = model.size_multiple
    win = tuple(_round_up(w if w > 0 else n, m) for w, n in
                zip((d.window_depth, d.window_height, d.window_width), vol.shape[1:]))
    if reduce:  # the whole depth axis (continued by reflection), windows cut in (H, W) only
        win = (_round_up(vol.shape[1], m),) + win[1:]
        lab_axes = (1, 2)
    else:
        lab_axes = (0, 1, 2)
    weight = _class_weights(lab, k, d.balance)
    by_class = [torch.nonzero(lab == c) for c in present]
    std = seg.std.view(-1, 1, 1, 1)[: vol.shape[0] - (2 if d.coords else 0)]
    nchan = std.shape[0]

    def batch_fn(step: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        xs, ys = [], []
        for _ in range(d.batch_size):
            pts = by_class[int(torch.randint(len(by_class), (1,), generator=gen))]
            p = pts[int(torch.randint(len(pts), (1,), generator=gen))]
            starts = [0, 0, 0]
            for j, a in enumerate(lab_axes):
                starts[a] = int(p[j]) - int(torch.randint(win[a], (1,), generator=gen))
            x = _gather(vol, starts, win)
            y = _gather(lab, [starts[a] for a in lab_axes], [win[a] for a in lab_axes])
            r = torch.rand(5, generator=gen)
            if d.flip_width and r[0] < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            if d.flip_height and r[1] < 0.5:
                x, y = x.flip(-2), y.flip(-2)
            if d.reverse_depth and not reduce and r[2] < 0.5:
                x, y = x.flip(-3), y.flip(-3)
            if d.rotate > 0 or d.zoom > 0:
                y = y[None] if reduce else y
                x, y = _rotate_zoom(x, y, float(r[3] * 2 - 1) * d.rotate,
                                    (1 + d.zoom) ** float(r[4] * 2 - 1))
                y = y[0] if reduce else y
            if d.jitter > 0 or d.noise > 0:
                x = x.clone()
                xc = x[:nchan]
                u = (torch.rand(2, nchan, 1, 1, 1, generator=gen) * 2 - 1) * d.jitter
                mu = xc.mean((1, 2, 3), keepdim=True)
                xc = mu + (xc - mu) * (1 + u[0]) + std * u[1]
                if d.noise > 0:
                    xc = xc + std * d.noise * torch.randn(xc.shape, generator=gen)
                x[:nchan] = xc
            xs.append(x)
            ys.append(y)
        return torch.stack(xs), torch.stack(ys)

    def step_loss(logits: Tensor, y: Tensor) -> Tensor:
        # reduce_depth: DepthMean's output is the depth-mean broadcast, so .mean(2) is that mean
        return _loss(logits.mean(2) if reduce else logits, y, weight, d.dice)

    history: list[dict[str, Any]] = []
    clock = {"start": time.perf_counter(), "excluded": 0.0, "step": 0}

    def now() -> float:
        return time.perf_counter() - clock["start"] - clock["excluded"]

    def loss_fn(model_: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, float]]:
        x, y = batch
        loss = step_loss(model_(x), y)
        clock["step"] += 1
        history.append({"step": clock["step"], "loss": float(loss.detach()), "time_s": round(now(), 3)})
        return loss, {"loss": float(loss.detach())}

    result = SegmentationResult(model=model, config=cfg, num_classes=k, history=history, window=win)

    def evaluate() -> dict[str, float]:
        t0 = time.perf_counter()
        out: dict[str, float] = {}
        if eval_t is not None:
            pred = _labels_of(result._predict_prepared(vol), reduce)
            met = segmentation_metrics(pred.numpy(), eval_t.numpy(), k, per_frame=False)
            out = {"miou": met["miou"], **{f"iou_{c}": v for c, v in enumerate(met["iou"]) if v is not None}}
        if eval_fn is not None:
            out.update(eval_fn(result))
        if history:
            history[-1].update(out)
        clock["excluded"] += time.perf_counter() - t0
        return out

    do_eval = eval_t is not None or eval_fn is not None
    val_fn = None
    if do_eval and d.eval_every > 0:
        cfg.train.val_every = d.eval_every

        def val_fn(model_: nn.Module) -> dict[str, float]:
            return evaluate()
    # memory of one training step (exact count of saved tensors), before training
    x0, y0 = batch_fn(0, torch.Generator().manual_seed(0))
    result.activation_bytes = activation_bytes(model, x0, y0, step_loss)
    clock["start"] = time.perf_counter()
    result.device = _fit(model, cfg, Path(out_dir) if out_dir is not None else None,
                         batch_fn, loss_fn, val_fn, quiet, resume)
    result.train_time_s = now()
    result.model = model.to(result.device)
    if do_eval and (not history or "miou" not in history[-1] or eval_t is None):
        evaluate()
    model.eval()
    return result
