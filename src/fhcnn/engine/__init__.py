"""The dense engine: segmentation of ONE large volume from sparse labels (video, hyperspectral).

Engine API (stable; used by ``fhcnn segment`` and ``fhcnn change``)::

    from fhcnn.engine import (SegmentConfig, ModelConfig, DataConfig, train_segmentation,
                           predict_volume, segmentation_metrics, IGNORE)

    cfg = SegmentConfig()                      # or fhcnn.config.load_config(SegmentConfig, "video")
    cfg.model.arch = "hyperbolic"              # or "unet" (3D U-Net baseline, same loss/training)
    cfg.train.steps = 400
    result = train_segmentation(
        volume,                                # (C, D, H, W) float, raw values (normalized inside)
        labels,                                # (D, H, W) ints in [0, K), IGNORE=255 = unlabelled
        cfg,
        out_dir=None,                          # or a folder: trainer metrics.jsonl + checkpoints/
        num_classes=None,                      # default: max label + 1 (>= 2)
        eval_labels=None,                      # optional (D, H, W) truth, 255 = not scored;
                                               # scored every cfg.data.eval_every steps + at the end
        eval_fn=None,                          # optional callable(result) -> {"name": float}
        quiet=False)
    result.model                               # VolumeSegmenter (nn.Module): raw (N,C,D,H,W) -> logits
    result.predict_proba(volume)               # (K, D, H, W) float32 tensor, averaged over shifts/flip
    result.predict(volume)                     # (D, H, W) uint8 labels
    result.history                             # [{"step", "loss", "time_s", ["miou", "iou_k"]}, ...]
    result.train_time_s, result.activation_bytes, result.window, result.num_classes, result.device

    probs = predict_volume(model, volume_tensor, shifts=4, flip=True, window=(0, 0, 0))
    m = segmentation_metrics(pred, truth, num_classes=None, ignore_index=255, per_frame=True)
    # -> {"miou", "iou": [per class], "J" (binary: foreground IoU), "accuracy", "confusion",
    #     "scored_voxels", "per_frame_miou": [...], "per_frame_iou": [[...], ...]}

``cfg.parallel.space = S`` (under ``torchrun``) splits every window in space over ``S``
processes (:mod:`fhcnn.engine.parallel`; ``docs/spatial.md``).

Sparse labels: ``cfg.data.unlabelled = "entropy" | "pseudo" | "teacher"`` adds a loss on the
unlabelled voxels of each window (:class:`~fhcnn.engine.losses.UnlabelledTerm`) and
``cfg.data.context_windows`` places part of each batch at random, not around a label.

One 2D label map of a single-date cube ``(H, W, bands)`` (bands as the depth, the loss on the
depth-mean of the logits, any number of classes)::

    fit = fit_map(cube_volume(cube), labels_2d, cfg)   # fit.pred (H, W), fit.prob (K, H, W)

Any volume size works: training windows are cut with reflection past the ends, prediction
continues the volume by reflection to a multiple of ``model.size_multiple`` and crops back.
Set ``cfg.data.window_depth/height/width`` (0 = whole axis), e.g. for a hyperspectral cube
``(dates, bands, H, W)`` use ``window_depth=0`` (all bands) and spatial windows.
"""

from ..options import IGNORE
from .config import DataConfig, ModelConfig, ParallelConfig, SegmentConfig, TrainConfig
from .inference import predict_into, predict_volume
from .losses import class_weights, segmentation_loss
from .maps import MapFit, cube_volume, fit_map
from .metrics import confusion_matrix, segmentation_metrics
from .models import DepthMean, VolumeSegmenter, build_model, parse_units, size_multiple_of
from .plan import DenseInputs, RunPlan, prepare
from .sizes import prediction_window_of
from .train import SegmentationResult, activation_bytes, num_classes_of, train, train_segmentation

__all__ = ["SegmentConfig", "ModelConfig", "DataConfig", "TrainConfig", "train_segmentation",
           "predict_volume", "predict_into", "prediction_window_of", "SegmentationResult",
           "DenseInputs", "RunPlan", "prepare", "train",
           "segmentation_metrics", "confusion_matrix", "IGNORE", "VolumeSegmenter", "DepthMean",
           "build_model", "parse_units", "size_multiple_of", "num_classes_of", "activation_bytes",
           "class_weights", "segmentation_loss", "ParallelConfig", "MapFit", "cube_volume", "fit_map"]
