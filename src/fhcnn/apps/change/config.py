"""Configuration of ``fhcnn change``: the dense engine's model/data/train sections plus the
change-detection options (:class:`ChangeOptions`). The scene's resize factor is the engine's
``data.scale`` (``--scale``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from ...engine.config import DataConfig, ModelConfig, ParallelConfig, TrainConfig
from ...engine.losses import weights_of_counts
from ...engine.sizes import prediction_tilings, prediction_window_of

__all__ = ["ChangeOptions", "ChangeConfig", "ChangeChannels", "ChangeTarget", "BandNormalization",
           "DEFAULT_CONFIG", "derive_settings", "SPARSE_DENSITY"]

#: Input channels of a change volume, named by what :func:`~fhcnn.apps.change.pipeline.build_volume`
#: stacks: the two dates, + their difference, + the log ratio of the dates and the spectral
#: angle between them (the features a change analyst would compute).
ChangeChannels = Literal["dates", "dates+diff", "dates+diff+ratio+angle"]
#: Where 2D change labels meet the 3D output (see :class:`ChangeOptions`).
ChangeTarget = Literal["mean", "all", "slice"]
#: Standardization of a hyperspectral scene's bands.
BandNormalization = Literal["band", "none"]

#: The shipped config ``fhcnn change`` starts from (``src/fhcnn/configs/change.yaml``).
DEFAULT_CONFIG = "change"


@dataclass
class ChangeOptions:
    """Change-detection specific settings.

    Attributes:
        channels: ``"dates"`` (2 channels: before, after), ``"dates+diff"`` (3: + after - before)
            or ``"dates+diff+ratio+angle"`` (5: + the log ratio and the spectral angle of the
            dates, :class:`~fhcnn.apps.change.volume.ChangeChannel`).
        target: where the 2D labels meet the 3D output ``(2, B, H, W)``: ``"mean"`` (default):
            the loss is taken on the band-mean of the logits (a 2D x-y map), the prediction is
            the softmax of that mean (the engine's ``data.reduce_depth``, which this option
            sets: on for ``"mean"``, off otherwise); ``"all"``: every band slice carries the labels (the
            engine's per-voxel loss; prediction = band-mean of the probabilities);
            ``"slice"``: only band ``slice_index`` carries them (the paper's wording) and the
            prediction is read there.
        slice_index: band used with ``target="slice"`` (-1 = the middle band).
        normalize: ``"band"``: standardize each band over both dates; ``"none"``.
        threshold: change probability above which a pixel is called changed.
        auto: derive the settings the scene should decide from its size and label density
            (:func:`derive_settings`; logged, and in ``metrics.json`` under ``derived``);
            ``false`` uses the config as written.
    """

    channels: ChangeChannels = "dates"
    target: ChangeTarget = "mean"
    slice_index: int = -1
    normalize: BandNormalization = "band"
    threshold: float = 0.5
    auto: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")


@dataclass
class ChangeConfig:
    """``fhcnn change`` run configuration: engine model/data/train + :class:`ChangeOptions`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    change: ChangeOptions = field(default_factory=ChangeOptions)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # #17: 1 = no split


#: Label density (labelled pixels / scene pixels) below which a scene counts as sparsely
#: labelled. The dense benchmarks label 4-9 % of the scene, the sparse ones 0.5-2 %.
SPARSE_DENSITY = 0.03

#: Times the training windows cover the scene (steps x batch x window pixels / scene pixels)
#: at least: with labels spread over the scene, each labelled pixel is in about this many
#: training windows. The tuned Taizhou default (400 x 400, 300 steps of 4 windows of 32 x 32)
#: covers it 7.7 times.
COVERAGE = 8.0

#: Time of one prediction window's forward pass over that of one training step (a batch of
#: windows: forward, inverse and backward). On a CPU both are dominated by per-call overhead
#: at these window sizes, so this ratio hardly depends on the batch; measured on Taizhou
#: (32 x 32 windows, batch 4, one thread): 0.04 to 0.17 depending on the machine's load.
PREDICT_CALL = 0.1

#: Prediction may cost at most this fraction of the estimated training time.
PREDICT_BUDGET = 0.5


def derive_settings(cfg: ChangeConfig, height: int, width: int, n_train: int, n_changed: int | None = None,
                    *, bands: int = 1, multiple: int = 1) -> tuple[ChangeConfig, dict[str, Any]]:
    """The settings the scene decides, from its size and its label density.

    * **Steps** (``train.steps``): at least enough for the training windows to cover the scene
      :data:`COVERAGE` times (the config's steps on small scenes; an 800 x 800 scene gets 1250
      steps of 4 windows of 32 x 32).
    * **Class weights**: ``count**-data.balance`` of the labelled pixels (computed by the
      engine; recorded here).
    * **Prediction passes** (``data.predict_shifts``, ``data.predict_flip``): the most (from the
      config's down: halve the shifts, then drop the flip) whose estimated cost, prediction
      windows x passes x :data:`PREDICT_CALL` training steps, stays under
      :data:`PREDICT_BUDGET` of the training steps, so prediction does not outgrow training
      on a large scene.
    * **Sparse labels** (fewer than :data:`SPARSE_DENSITY` of the pixels labelled): the change
      analyst's features as extra channels (``change.channels="dates+diff+ratio+angle"``, if
      the config asks for ``"dates"``); measured in ``benchmarks/sparse_labels.py``
      (docs/change.md: +0.01 mIoU at 1 % random labels on Taizhou, +0.06 clustered, +0.13 on
      the generated scene). The unlabelled-voxel terms (``data.unlabelled``) did not help
      across seeds there and stay off.

    Args:
        cfg: the run's config (not modified).
        height, width: the scene's size in pixels (after ``data.scale``).
        n_train: labelled training pixels.
        n_changed: how many of them are changed (for the class weights' record).
        bands, multiple: the scene's bands and the network's size multiple (the prediction's
            windows are counted by :func:`~fhcnn.engine.sizes.prediction_tilings`).

    Returns:
        ``(config, record)``: the config with the derived values, and ``{name: {"value",
        "why"}}`` for each derived setting (empty if ``change.auto`` is off).
    """
    if not cfg.change.auto:
        return cfg, {}
    d, t = cfg.data, cfg.train
    record: dict[str, Any] = {}
    density = n_train / max(1, height * width)
    record["label_density"] = {"value": round(density, 5), "why": f"{n_train} of {height * width} pixels"}

    ch = cfg.change
    if density < SPARSE_DENSITY:
        why = f"sparse labels: {100 * density:.2f} % of the pixels < {100 * SPARSE_DENSITY:g} %"
        if ch.channels == "dates":
            ch = replace(ch, channels="dates+diff+ratio+angle")
            record["channels"] = {"value": ch.channels, "why": why}
    wh = d.window_height if d.window_height > 0 else height
    ww = d.window_width if d.window_width > 0 else width
    need = math.ceil(COVERAGE * height * width / (d.batch_size * wh * ww))
    if need > t.steps:
        t = replace(t, steps=need)
    cover = t.steps * d.batch_size * wh * ww / (height * width)
    record["steps"] = {"value": t.steps, "why": f"windows cover the scene {cover:.1f} times (at least "
                       f"{COVERAGE:g}; config: {cfg.train.steps} steps)"}
    if n_changed is not None:
        counts = [max(1, n_train - n_changed), max(1, n_changed)]
        w = weights_of_counts(torch.tensor(counts), d.balance).tolist()
        record["class_weights"] = {"value": [round(x, 3) for x in w],
                                   "why": f"count**-{d.balance:g} of {counts[0]} unchanged and "
                                          f"{counts[1]} changed pixels"}
    window = prediction_window_of((d.predict_depth, d.predict_height, d.predict_width), (0, wh, ww), True)
    one_tiling = prediction_tilings((bands, height, width), window, multiple, 1, False, None, d.predict_overlap)[0]
    per_pass = one_tiling.count * PREDICT_CALL / max(1, t.steps)
    options = []
    shifts, mirrored = d.predict_shifts, d.prediction_mirror is not None
    while True:
        options.append((shifts, mirrored))
        if shifts == 1:
            break
        shifts = max(1, shifts // 2)
    if mirrored:
        options.append((1, False))
    chosen = options[-1]
    for sh, fl in options:
        if sh * (2 if fl else 1) * per_pass <= PREDICT_BUDGET:
            chosen = sh, fl
            break
    ratio = chosen[0] * (2 if chosen[1] else 1) * per_pass
    d = replace(d, predict_shifts=chosen[0], predict_flip=chosen[1])
    record["predict_shifts"] = {"value": chosen[0], "why": f"estimated prediction/training time {ratio:.2f} "
                                f"(budget {PREDICT_BUDGET}; config: {cfg.data.predict_shifts} shifts, "
                                f"flip {cfg.data.predict_flip})"}
    record["predict_flip"] = {"value": chosen[1], "why": "see predict_shifts"}
    return replace(cfg, data=d, train=t, change=ch), record
