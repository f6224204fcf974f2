"""Prediction of a whole volume: padding, tiling, blending, shift/flip averaging, cropping.

One function (:func:`predict_volume`) owns the tiling, as in MONAI's sliding-window inference;
sizes come from :mod:`fhcnn.engine.sizes`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .config import SegmentConfig
from .sizes import gather, round_up

__all__ = ["predict_volume", "prediction_window", "blend_weight", "labels_of"]


def blend_weight(win: Sequence[int], padded: Sequence[int]) -> Tensor:
    """``(d, h, w)`` positive weights of one prediction window: ``sin(pi (i + 1/2) / n)`` along
    each axis the window cuts (smaller than the padded volume), 1 along the others."""
    out = torch.ones(())
    for ax, (w, p) in enumerate(zip(win, padded)):
        v = torch.sin(math.pi * (torch.arange(w) + 0.5) / w) if w < p else torch.ones(w)
        out = out[..., None] * v if ax else v
    return out


def _starts(padded: int, win: int, multiple: int) -> list[int]:
    """Window starts along one axis: overlapping by about half, the last one flush with the end."""
    stride = max(multiple, (win // 2) // multiple * multiple)
    st = list(range(0, padded - win + 1, stride))
    if st[-1] != padded - win:
        st.append(padded - win)
    return st


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
        padded = [round_up(n + oa, m) for n, oa in zip(size, oo)]
        win = [p if (w <= 0 or w >= p) else round_up(w, m) for w, p in zip(window, padded)]
        win = [min(w, p) for w, p in zip(win, padded)]
        x = gather(volume, [-oa for oa in oo], padded)
        axes_starts = [_starts(p, w, m) for p, w in zip(padded, win)]
        weight = blend_weight(win, padded)
        for flipped in ([False, True] if flip else [False]):
            xin = x.flip(-1) if flipped else x
            out: Tensor | None = None
            cnt = torch.zeros(padded)
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
            if out is None:
                raise RuntimeError("no prediction window was evaluated")
            out = out / cnt
            if flipped:
                out = out.flip(-1)
            out = out[:, oo[0]:oo[0] + size[0], oo[1]:oo[1] + size[1], oo[2]:oo[2] + size[2]]
            acc = out if acc is None else acc + out
            runs += 1
    if was_training:
        model.train()
    if acc is None:
        raise RuntimeError("no prediction tiling was evaluated")
    return acc / runs


def labels_of(prob: Tensor, reduce_depth: bool) -> Tensor:
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
