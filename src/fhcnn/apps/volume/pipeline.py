"""Segment one 3D volume from sparse labels: the pipeline behind ``fhcnn volume``.

:func:`plan_volume` works the run out before any output exists: the voxel spacing resolved into
per-axis windows (:func:`engine_config`), the engine's plan (:func:`fhcnn.engine.plan.prepare`:
label scan, streamed normalization, NaN check, model and split checks). :func:`segment_volume`
trains and predicts chunk by chunk into the prediction file (the input's geometry format) and
scores the prediction and the baselines (:mod:`.baselines`) where the labels are unlabelled and
``--eval-labels`` has a class; :func:`volume_command` is the whole command. Split in space
(``parallel.space``), each process finishes its own slab of the prediction (``_Outputs``).

Under ``torchrun`` every process trains fhcnn and then the U-Net baseline; only then is anything
predicted: by every process of a split model, else by rank 0 alone, while the other processes,
done, end (none waits on rank 0's prediction, outputs or baselines).

fhcnn's network goes through :func:`fit_predict`, the U-Net baseline's through :class:`_UNet`.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ... import log as _log
from ...data.lazy import ONE_PROCESS, LazyVolume, PassShare, iter_slabs
from ...data.volumes.sinks import volume_array_path, volume_store
from ...engine import SegmentConfig, size_multiple_of
from ...engine.metrics import confusion_matrix, scores_of_confusion
from ...engine.parallel import SplitError, fix_text
from ...engine.plan import DenseInputs, RunPlan, prepare
from ...engine.run import Ownership, predict_run
from ...engine.sizes import Geometry, round_up
from ...engine.store import ConfusionSink, LabelSink, ProbabilitySink, Resized, Sink
from ...engine.train import train
from ...errors import InputError
from ...options import IGNORE
from ...resources import check_memory
from ...training import is_main_process
from ...training.distributed import all_reduce_sum, barrier, broadcast_object, pass_share
from .baselines import SLAB_VOXELS, ForestPrediction, NearestLabel, baseline_bytes, confusion_by_slabs, labelled_voxels
from .config import VolumeConfig, VolumeOptions, parse_baselines, parse_spacing
from .inputs import AXIS_NAMES, HeldOut, VolumeInputs
from .vertical import keep_upright, vertical_axis

__all__ = ["segment_volume", "volume_command", "plan_volume", "VolumePlan", "engine_config", "fit_predict",
           "score", "resolve_spacing", "unet_plan", "at_input_size", "region_at_input_size"]


def resolve_spacing(cfg: VolumeConfig, inputs: VolumeInputs) -> tuple[tuple[float, float, float] | None, str]:
    """The voxel spacing used (``volume.spacing`` over the file's) and where it came from: of
    the file's, its length unit where it names one, and the axes whose spacing it does not
    state with what they hold (``VolumeGeometry.spacing_stated``: a TIFF's slice axis without
    ImageJ ``spacing`` or ``PhysicalSizeZ``), so that no spacing is taken without a word; of a
    file without one, what it holds that is taken as none (``VolumeGeometry.spacing_note``)."""
    if cfg.volume.spacing:
        return parse_spacing(cfg.volume.spacing), "volume.spacing"
    if inputs.spacing is not None:
        spacing = tuple(float(s) for s in inputs.spacing)
        g = inputs.geometry
        unit = f", in {g.unit}" if g is not None and g.unit else ""
        unstated = [a for a, said in enumerate(g.spacing_stated if g is not None else (True,) * 3) if not said]
        if unstated:
            axes = ", ".join(AXIS_NAMES[a] for a in unstated)
            held = ", ".join(f"{spacing[a]:g}" for a in unstated)
            unit += (f"; it states none along {axes}: taken as {held}, unknown (--set volume.spacing=D,H,W "
                     f"gives it)")
        if g is not None and g.spacing_note:  # e.g. an ImageJ stack's 72 pixels an inch
            unit += f"; {g.spacing_note}"
        return spacing, f"the {inputs.format} header{unit}"  # type: ignore[return-value]
    note = inputs.geometry.spacing_note if inputs.geometry is not None else None
    return None, f"none in {inputs.format}{f' ({note})' if note else ''}: taken as isotropic"


#: The ``data`` sizes :func:`engine_config` scales, by axis (D, H, W).
WINDOW_KEYS = (("window_depth", "predict_depth"), ("window_height", "predict_height"),
               ("window_width", "predict_width"))


def engine_config(cfg: VolumeConfig, spacing: Sequence[float] | None, shape: Sequence[int]
                  ) -> tuple[SegmentConfig, str]:
    """The engine's :class:`SegmentConfig` for this volume and one log line saying what was done
    about the spacing.

    With ``volume.physical_windows`` and anisotropic ``spacing``, the window (training, and a
    prediction window the config sets) along each axis is the configured one times
    ``finest spacing / spacing of the axis``, rounded up to the network's size multiple: every
    window spans about the same physical length on each axis (a 3 mm axis gets a third of the
    voxels of a 1 mm axis). Windows never exceed the volume (rounded up to the multiple).
    """
    d = copy.deepcopy(cfg.data)
    seg = SegmentConfig(model=copy.deepcopy(cfg.model), data=d, train=copy.deepcopy(cfg.train),
                        parallel=copy.deepcopy(cfg.parallel))
    m = size_multiple_of(cfg.model)
    if spacing is None or len(set(float(s) for s in spacing)) == 1:
        what = "isotropic voxels" if spacing is None else f"isotropic voxels of {spacing[0]:g}"
        return seg, f"voxel spacing: {what}; windows as configured"
    sp = [float(s) for s in spacing]
    if not cfg.volume.physical_windows:
        return seg, (f"voxel spacing {tuple(sp)} (anisotropic); windows as configured in voxels "
                     f"(volume.physical_windows=false)")
    fine = min(sp)
    for a, pair in enumerate(WINDOW_KEYS):
        f = fine / sp[a]
        whole = round_up(int(shape[a]), m)
        for name in pair:
            v = getattr(d, name)
            if v > 0:
                setattr(d, name, min(whole, round_up(max(1, int(round(v * f))), m)))
    win = (d.window_depth, d.window_height, d.window_width)
    phys = tuple(round(w * s, 1) for w, s in zip(win, sp))
    return seg, (f"voxel spacing {tuple(sp)} (anisotropic): training windows {win} voxels, "
                 f"{phys} in physical units (each axis's window scaled by the finest spacing over "
                 f"its own, volume.physical_windows)")


@dataclass
class VolumePlan:
    """A ``fhcnn volume`` run worked out: the engine's plan and what was decided about the spacing."""

    plan: RunPlan
    spacing: tuple[float, float, float] | None
    spacing_source: str
    spacing_line: str
    #: the statistics of the channels as stored (``plan.stats``: as read, some standardized)
    raw_stats: list[Any] | None = None
    #: seconds the inputs took to read, check and summarize (labels scanned, channel statistics),
    #: where :func:`volume_command` measured it
    read_time_s: float | None = None
    #: the vertical axis (0 = D, 1 = H, 2 = W; :mod:`.vertical`), or ``None``
    vertical: int | None = None
    #: the log line on the vertical axis and the flips training and prediction use
    vertical_line: str = ""


def plan_volume(inputs: VolumeInputs, cfg: VolumeConfig, share: PassShare = ONE_PROCESS) -> VolumePlan:
    """Resolve the spacing and prepare the engine's plan (every check, nothing written);
    ``share``: this process's share of the statistics pass (under ``torchrun``).

    Raises:
        InputError: as :func:`fhcnn.engine.plan.prepare` (NaN voxels, a model or split that
            cannot work ...), ``data.eval_every`` without ``--eval-labels``, a volume whose
            every channel holds one value, baselines to score (``--eval-labels``) whose
            whole-volume arrays exceed the available memory, the forest baseline without
            scikit-learn, or a U-Net baseline that cannot run (:func:`unet_plan`).
    """
    spacing, source = resolve_spacing(cfg, inputs)
    seg, line = engine_config(cfg, spacing, inputs.shape)
    vertical, vertical_source = vertical_axis(cfg, inputs, seg.data)
    vertical_line = keep_upright(seg.data, vertical, vertical_source)
    volume = LazyVolume(inputs.channels, names=inputs.names or None, slab_axes=inputs.slab_axes or None)
    if seg.data.eval_every and inputs.eval_labels is None:
        raise InputError(f"data.eval_every={seg.data.eval_every} scores the held-out voxels during training: "
                         f"give the complete labels with --eval-labels, or leave it 0")
    raw_stats = volume.channel_stats(share=share)
    held = inputs.held_out() if seg.data.eval_every else None  # scored every data.eval_every steps
    try:  # a channel whose contrast a float32 read would lose is read standardized (plan.as_read)
        plan = prepare(DenseInputs(volume, inputs.labels, inputs.num_classes, held, stats=raw_stats,
                                   label_scan=inputs.summary.scan), seg)
    except SplitError as e:  # its window sizes are the scaled ones: offered as the ones to --set
        raise configured_split_error(e, cfg, spacing, inputs.shape) from None
    if all(s.max == s.min for s in raw_stats):
        raise InputError(f"every voxel of {', '.join(inputs.sources.get('images', []))} has the value "
                         f"{raw_stats[0].min:g}: nothing to segment")
    names = parse_baselines(cfg.volume.baselines) if inputs.eval_labels is not None else []
    if names:
        labelled = inputs.summary.labelled
        check_memory(baseline_bytes(labelled, names),
                     f"scoring the baselines ({','.join(names)}) on {labelled:,} labelled voxels",
                     "they keep every labelled voxel; --set volume.baselines= scores fhcnn alone")
    if "forest" in names:
        try:
            import sklearn.ensemble  # noqa: F401
        except ImportError:
            raise InputError("the forest baseline (volume.baselines) needs scikit-learn, which is not installed: "
                             "pip install 'fhcnn[volume]', or --set volume.baselines=copy,unet") from None
    if "unet" in names:  # checked now; made again where it trains (the volume may be a local copy by then)
        unet_plan(plan)
    return VolumePlan(plan, spacing, source, line, raw_stats, vertical=vertical, vertical_line=vertical_line)


def configured_split_error(error: SplitError, cfg: VolumeConfig, spacing: Sequence[float] | None,
                           shape: Sequence[int]) -> SplitError:
    """``error`` with each window size it offers (``data.window_*``, ``data.predict_*``: sizes
    :func:`engine_config` made from the configured ones, scaled by the spacing) replaced by the
    configured size that :func:`engine_config` turns into it, the nearest to the unscaled value:
    the change to ``--set``. Unchanged where no size is scaled."""
    text, fixes = str(error), []
    for fix in error.fixes:
        mine = dict(fix)
        for key, want in fix.items():
            name = key.removeprefix("data.")
            if key == name or not any(name in pair for pair in WINDOW_KEYS):
                continue
            given = [u for u in range(1, 4 * int(want) + 64) if _scaled(cfg, name, u, spacing, shape) == want]
            if given:
                mine[key] = min(given, key=lambda u: (abs(u - want * _factor(name, spacing)), u))
        if mine != fix:
            text = text.replace(fix_text(fix), fix_text(mine))
        fixes.append(mine)
    return SplitError(text, fixes)


def _factor(name: str, spacing: Sequence[float] | None) -> float:
    """Spacing of the axis of the window size ``name`` over the finest spacing (1 without)."""
    if not spacing:
        return 1.0
    axis = next(a for a, pair in enumerate(WINDOW_KEYS) if name in pair)
    return float(spacing[axis]) / min(float(s) for s in spacing)


def _scaled(cfg: VolumeConfig, name: str, value: int, spacing: Sequence[float] | None,
            shape: Sequence[int]) -> int:
    """The engine's ``data.NAME`` when the configured one is ``value``."""
    trial = copy.deepcopy(cfg)
    setattr(trial.data, name, value)
    return int(getattr(engine_config(trial, spacing, shape)[0].data, name))


def unet_plan(plan: RunPlan) -> RunPlan:
    """The plan of the 3D U-Net baseline: ``plan``'s config with ``model.arch=unet``, not split in
    space (under ``torchrun`` it trains data parallel over every process), on the same volume,
    labels, statistics and label scan, at the same size (``plan.volume`` already has
    ``data.scale``: not resized again).

    Raises:
        InputError: what keeps the U-Net from this run (e.g. a batch the processes cannot share),
            naming the baseline and how to leave it out.
    """
    ucfg = copy.deepcopy(plan.config)
    ucfg.model.arch = "unet"
    ucfg.parallel.space = 1
    ucfg.data.scale = 1.0  # plan.volume and plan.labels are at the network's size already
    try:
        return prepare(DenseInputs(plan.volume, plan.labels, plan.num_classes, stats=plan.stats,
                                   label_scan=plan.scan), ucfg)
    except InputError as e:
        raise InputError(f"the U-Net baseline (volume.baselines, model.arch=unet, not split in space): {e}; "
                         f"or --set volume.baselines=copy,forest") from None


@dataclass
class Fit:
    """One trained network on the volume: the engine's result and times (``then``: what
    :func:`fit_predict`'s ``then()`` returned)."""

    result: Any
    train_time_s: float
    predict_time_s: float
    then: Any = None


def fit_predict(plan: RunPlan, out: Path | None, sinks: Callable[[Any], Sequence[Sink]], *,
                quiet: bool = False, resume: bool = False, ownership: Ownership = "main",
                then: Callable[[], Any] | None = None) -> Fit:
    """Train the plan (every process of a ``torchrun`` job), call ``then()`` (what every process
    still takes part in before the prediction: the U-Net baseline's training) and predict its
    volume chunk by chunk into ``sinks(result)`` (the part of the volume ``ownership`` gives this
    process, :func:`fhcnn.engine.run.owned_region`; spilled into scratch of the run folder
    ``out``) on the processes that predict (:func:`fhcnn.engine.run.predicts`: every process of
    a split model, else rank 0 alone; another's ``predict_time_s`` is 0 and ``sinks`` is not
    called)."""
    result = train(plan, out, quiet=quiet, resume=resume)
    after = then() if then is not None else None
    seconds = predict_run(plan, result, out, sinks, ownership=ownership)
    return Fit(result, result.train_time_s, seconds, after)


def score(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[str, Any]:
    """:func:`~fhcnn.engine.metrics.scores_of_confusion` of the prediction ``pred`` against
    ``truth`` (255 = not scored)."""
    return scores_of_confusion(confusion_matrix(pred, truth, num_classes))


def _line(name: str, m: dict[str, Any]) -> str:
    """One log line of scores: a baseline's with the seconds it took (``time_s``; fhcnn's times
    have their own line)."""
    iou = ", ".join("-" if v is None else f"{v:.3f}" for v in m["iou"])
    took = f" in {m['time_s']:.0f} s" if "time_s" in m else ""
    return f"{name:7s} mIoU {m['miou']:.4f}  (IoU per class: {iou}){took}"


def segment_volume(inputs: VolumeInputs, cfg: VolumeConfig, out: Path | None, *, vplan: VolumePlan | None = None,
                   quiet: bool = False, resume: bool = False, save_probs: bool = False,
                   log: Callable[[str], None] = _log.info) -> dict[str, Any]:
    """Train on ``inputs``, predict, score, write every output into ``out`` (``None``: nothing
    written, the prediction kept in memory); returns the metrics (``{}`` on a non-zero rank
    under ``torchrun``)."""
    t_start = time.perf_counter()
    vplan = vplan or plan_volume(inputs, cfg)
    plan = vplan.plan
    k, shape = inputs.num_classes, inputs.shape
    log(f"volume: {len(inputs.channels)} channel(s) of (D, H, W) = {shape} ({inputs.format}); "
        f"spacing from {vplan.spacing_source}")
    log(vplan.spacing_line)
    log(vplan.vertical_line)
    log(f"{k} classes; {inputs.summary.describe()}")
    for note in inputs.notes:
        log(note)
    for c, st in enumerate(vplan.raw_stats or plan.stats):
        log(f"channel {c}: mean {st.mean:.4g}, std {st.std:.4g}, range [{st.min:.4g}, {st.max:.4g}]")
    if vplan.read_time_s is not None:
        log(f"inputs read, checked and summarized (labels scanned, channel statistics) in {vplan.read_time_s:.0f} s")
    log(plan.describe())
    if out is not None:
        from ...config import save_config

        save_config(cfg, out / "config.yaml")
    held = inputs.held_out()
    # a run folder of a run split in space: each process of the split finishes its own slab
    slabs = out is not None and plan.config.parallel.space > 1
    outputs = _Outputs(out, inputs, k, save_probs and out is not None, held, plan.chunks, plan.geometry, slabs,
                       vplan.spacing)
    # the U-Net baseline trains on every process (data parallel, as fhcnn) before anything is
    # predicted, and only where there is something to score it on
    wanted = held is not None and "unet" in parse_baselines(cfg.volume.baselines)
    unet = _UNet(unet_plan(plan), log) if wanted and held_out_voxels(held, pass_share()) else None
    try:
        fit = fit_predict(plan, out, outputs.sinks, quiet=quiet, resume=resume,
                          ownership="slabs" if slabs else "main", then=unet.train if unet else None)
        outputs.gather()  # a split run's processes meet again: one may be lost there too
        if not is_main_process():
            return {}
        pred_file = outputs.close()  # e.g. compressing a NIfTI: long, and may be interrupted too
    except BaseException:
        outputs.abort()  # no temporary prediction file is left in OUT (a refused run removes OUT)
        raise
    # whether there is anything to score: the held-out confusion matrix of the whole volume
    scored = outputs.confusion is not None and outputs.confusion.matrix.sum() > 0
    names = parse_baselines(cfg.volume.baselines) if scored else []
    res = fit.result
    seg_cfg = plan.config
    log(f"fhcnn: trained {seg_cfg.train.steps} steps in {fit.train_time_s:.0f} s on {res.device} "
        f"(windows {tuple(res.window)}, batch {seg_cfg.data.batch_size}), predicted in "
        f"{fit.predict_time_s:.0f} s")
    metrics: dict[str, Any] = {
        "images": inputs.sources.get("images"), "labels": inputs.sources.get("labels"),
        "shape": list(shape), "channels": len(inputs.channels), "format": inputs.format,
        "spacing": list(vplan.spacing) if vplan.spacing else None, "spacing_source": vplan.spacing_source,
        "spacing_handling": vplan.spacing_line,
        "vertical_axis": AXIS_NAMES[vplan.vertical] if vplan.vertical is not None else None,
        "flips": vplan.vertical_line, "num_classes": k, "annotation": inputs.summary.to_json(),
        "train_window": list(res.window), "predict_window": list(plan.predict_window),
        "steps": seg_cfg.train.steps, "arch": seg_cfg.model.arch,
        **({"inputs_time_s": round(vplan.read_time_s, 2)} if vplan.read_time_s is not None else {}),
        "train_time_s": round(fit.train_time_s, 2), "predict_time_s": round(fit.predict_time_s, 2),
        "activation_bytes": int(res.activation_bytes), "device": str(res.device),
        "parameters": int(sum(p.numel() for p in res.model.parameters())),
    }
    if outputs.regions:
        metrics["prediction_slabs"] = outputs.regions
        log(f"prediction: {len(outputs.regions)} processes of the split each finished a slab of the volume: "
            + ", ".join(f"{r['shape']} at {r['origin']}" for r in outputs.regions))
    if pred_file is not None:
        metrics["prediction_file"] = pred_file.name
        if outputs.probs_path is not None:
            metrics["probabilities_file"] = outputs.probs_path.name
    if scored:
        assert outputs.confusion is not None
        ours = scores_of_confusion(outputs.confusion.matrix)
        metrics.update({"eval_labels": inputs.sources.get("eval_labels"), "miou": ours["miou"],
                        "iou": ours["iou"], "dice": ours["dice"], "fhcnn": ours, "baselines": {}})
        log(_line("fhcnn", ours))
        voxels = labelled_voxels(inputs.labels) if {"copy", "forest"} & set(names) else None
        for name in names:  # box by box (plan_volume checked what they keep fits)
            if name == "unet":
                assert unet is not None  # trained: held_out_voxels counted what the matrix holds
                m = unet.score(held, k, plan.geometry, out)
            else:
                t0 = time.perf_counter()
                matrix, extra = _baseline(name, inputs, plan.as_read(inputs.channels), cfg.volume, vplan.spacing,
                                          held, voxels)
                m = scores_of_confusion(matrix)
                m.update(extra, time_s=round(time.perf_counter() - t0, 2))
            metrics["baselines"][name] = m
            log(_line(name, m))
    elif held is not None:
        log("--eval-labels has no class where the labels are unlabelled: nothing to score")
    metrics["total_time_s"] = round(time.perf_counter() - t_start, 2)
    metrics["history"] = res.history
    if out is not None:
        from .outputs import write_outputs

        write_outputs(out, inputs, plan.as_read(inputs.channels[:1])[0], outputs.centre, res, metrics, vplan.spacing)
    else:
        metrics["prediction"] = outputs.prediction
    return metrics


#: Temporary names of the arrays ``_Outputs`` shares in ``out`` (scratch of the run folder,
#: :func:`fhcnn.atomic.scratch_name`): the labels of a split run's slabs, the probabilities.
_SLABS, _PROBS = ".prediction-slabs.", ".probabilities.zarr."


class _Outputs:
    """The sinks of the fhcnn prediction: the labels (the prediction file in ``out``, or an
    in-memory array), the held-out confusion matrix, the float16 probabilities.

    With ``slabs`` (a run split in space) every process of the split finishes its own slab
    (:func:`fhcnn.engine.run.owned_region`, edges at multiples of ``chunks``) into arrays the
    processes share in ``out``: the labels into a scratch zarr array of ``chunks``, which rank 0
    copies into the prediction file once every slab is written (:meth:`close`), the
    probabilities straight into ``probabilities.zarr``'s temporary folder (chunks of ``chunks``,
    so no two processes write one chunk); :meth:`gather` sums the held-out confusion matrices.
    Every sink is at the input's size: behind the resize back from the network's where
    ``geometry`` (the plan's) resizes the volume (:func:`at_input_size`)."""

    def __init__(self, out: Path | None, inputs: VolumeInputs, k: int, probs: bool, held: Any,
                 chunks: Sequence[int], geometry: Geometry, slabs: bool = False,
                 spacing: Sequence[float] | None = None) -> None:
        self.out, self.inputs, self.k, self.want_probs, self.held = out, inputs, k, probs, held
        self.chunks, self.geometry, self.slabs = tuple(int(c) for c in chunks), geometry, slabs
        #: the spacing the run used (:func:`resolve_spacing`), recorded in the outputs where the
        #: input states none or another (:func:`~fhcnn.data.volumes.sinks.output_spacing`)
        self.spacing = spacing
        self.file: Any = None
        self.prediction: Any = None
        self.confusion: ConfusionSink | None = None
        self.probs_path: Path | None = None
        self._probs: Any = None
        self._tmp: Path | None = None
        self._scratch: Path | None = None
        self.centre: list[np.ndarray] = []
        #: ``(origin, shape)`` of the region this process finished; after :meth:`gather`, those
        #: of every process that finished one, in rank order (``slabs`` only)
        self.owned: Any = None
        self.regions: list[Any] = []

    def sinks(self, result: Any) -> list[Sink]:
        """Called on every process that predicts (:func:`fhcnn.engine.run.predicts`; split in space:
        every process, the shared arrays made by rank 0, then opened by all)."""
        if self.slabs:
            from ...engine.run import owned_region

            self.owned = region_at_input_size(self.geometry, owned_region(result.plan, result, "slabs"))
            self._scratch = self._shared(_SLABS, lambda path: _zarr_array(path, self.inputs.shape, self.chunks))
            self.prediction = _open_zarr(self._scratch)
        elif self.out is not None and is_main_process():
            self.file = self._prediction_file()
            self.prediction = self.file
        else:
            self.prediction = np.zeros(self.inputs.shape, np.uint8)
        out: list[Sink] = [LabelSink(self.prediction)]
        if self.held is not None:
            self.confusion = ConfusionSink(self.held, self.k)
            out.append(self.confusion)
        if self.want_probs and (self.slabs or is_main_process()):
            # on the input's grid like the prediction: its spacing, axis names after "class", source
            # (and, of an OME-Zarr input, an OME-Zarr image with a channel axis "class")
            self._tmp = self._shared(_PROBS, lambda path: volume_store(
                path, self._geometry(), (self.k, *self.inputs.shape), (1, *self.chunks), "float16", self._source(),
                leading="class", spacing=self.spacing))
            self._probs = _open_zarr(volume_array_path(self._tmp, self._geometry()))
            out.append(ProbabilitySink(self._probs))
        return at_input_size(self.geometry, out)

    def _shared(self, prefix: str, make: Callable[[Path], Any]) -> Path:
        """A zarr store in ``out`` under a temporary name (scratch of the run folder), made by
        rank 0 (``make(path)``); its path on every process of the split (one process: made here)."""
        from ... import atomic

        assert self.out is not None
        path = None
        if is_main_process():
            path = atomic.begin_scratch(atomic.scratch_name(self.out, prefix))
            make(path)
        return Path(broadcast_object(path)) if self.slabs else path  # type: ignore[return-value]

    def _geometry(self) -> Any:
        """The first image's :class:`~fhcnn.data.volumes.VolumeGeometry` (none for arrays)."""
        return self.inputs.geometry or _npy_geometry()

    def _source(self) -> str | None:
        return (self.inputs.sources.get("images") or [None])[0]

    def _prediction_file(self) -> Any:
        from ...data.volumes import prediction_sink

        assert self.out is not None
        return prediction_sink(self.out, self.inputs.format, self.inputs.shape,  # type: ignore[arg-type]
                               self._geometry(), np.uint8, source=self._source(), spacing=self.spacing)

    def gather(self) -> None:
        """After the prediction, on every process: with ``slabs``, the held-out confusion matrix
        summed over the processes (each scored the slab it finished), and every slab written
        before rank 0 reads them."""
        if not self.slabs:
            return
        if self.confusion is not None:
            self.confusion.matrix = all_reduce_sum(torch.as_tensor(self.confusion.matrix)).numpy()
        regions = pass_share().combine(self.owned)
        self.regions = [{"origin": list(o), "shape": list(n)} for o, n in regions if min(n) > 0]
        barrier()

    def abort(self) -> None:
        """Remove the temporary files of the prediction (training, prediction or :meth:`gather` failed)."""
        from ... import atomic

        if self.file is not None:
            self.file.abort()
            self.file = None
        if is_main_process():
            for tmp in (self._tmp, self._scratch):
                if tmp is not None:
                    atomic.end_scratch(tmp)
        self._tmp = self._scratch = None

    def close(self) -> Path | None:
        """On rank 0: put the files in place; returns the prediction file (``None`` in memory).
        Keeps the prediction's slices through the centre (``centre``, for the figure)."""
        from ... import atomic
        from .outputs import centre_slices

        if self._scratch is not None:  # the slabs, copied box by box into the input's format
            from ...data.volumes.sinks import OUTPUT_CHUNK

            self.file = self._prediction_file()
            shape = self.inputs.shape
            for start in itertools.product(*(range(0, n, OUTPUT_CHUNK) for n in shape)):
                box = tuple(slice(s, min(s + OUTPUT_CHUNK, n)) for s, n in zip(start, shape))
                self.file[box] = np.asarray(self.prediction[box])
            atomic.end_scratch(self._scratch)
            self._scratch = None
            self.prediction = self.file
        self.centre = centre_slices(self.prediction, [n // 2 for n in self.inputs.shape])
        if self._probs is not None:
            assert self.out is not None and self._tmp is not None
            self.probs_path = atomic.place_tree(self._tmp, self.out / "probabilities.zarr")
            atomic.end_scratch(self._tmp)
            self._tmp = None
        return Path(self.file.close()) if self.file is not None else None


def at_input_size(g: Geometry, sinks: Sequence[Sink]) -> list[Sink]:
    """``sinks`` of the input's ``(D, H, W)`` (the prediction file, the probabilities, the
    held-out scores) behind the bilinear resize back from the network's ``(h, w)``
    (:class:`~fhcnn.engine.store.Resized`) where ``data.scale`` resized the volume; as they are
    otherwise (``g``: the plan's :class:`~fhcnn.engine.sizes.Geometry`)."""
    return list(sinks) if g.scaled == g.size else [Resized(s, g.size, g.scaled) for s in sinks]


def region_at_input_size(g: Geometry, region: tuple[Sequence[int], Sequence[int]]
                         ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(origin, shape)`` of a region of the network's ``(D, h, w)`` volume (a slab a process
    finishes) on the input's ``(D, H, W)`` grid, where ``data.scale`` resized the planes (``g``:
    the plan's :class:`~fhcnn.engine.sizes.Geometry`): along ``H`` and ``W`` its edges scaled
    (chunks then hold whole planes, so the edges are 0 and the plane's size)."""
    (o, n) = region
    sizes = (g.depth, *g.size)
    scaled = (g.depth, *g.scaled)
    lo = [int(round(int(a) * s / t)) for a, s, t in zip(o, sizes, scaled)]
    hi = [int(round((int(a) + int(b)) * s / t)) for a, b, s, t in zip(o, n, sizes, scaled)]
    return (lo[0], lo[1], lo[2]), (hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2])


def _open_zarr(path: Path) -> Any:
    import zarr

    return zarr.open_array(str(path), mode="r+")


def _zarr_array(path: Path, shape: Sequence[int], chunks: Sequence[int]) -> Any:
    """A uint8 zarr array of 0 at ``path`` (the labels of a split run's slabs)."""
    import zarr

    return zarr.open_array(str(path), mode="w", shape=tuple(shape), chunks=tuple(chunks), dtype="uint8", fill_value=0)


def _npy_geometry() -> Any:
    from ...data.volumes import VolumeGeometry

    return VolumeGeometry(spacing=None, affine=None, nifti_header=None, attrs={}, axis_names=("D", "H", "W"))


def _baseline(name: str, inputs: VolumeInputs, channels: Sequence[Any], opt: VolumeOptions,
              spacing: Sequence[float] | None, held: Any,
              voxels: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, dict[str, Any]]:
    """The confusion matrix of the ``copy`` or ``forest`` baseline on the same labels against
    ``held`` (scored box by box), and what to record; ``channels``: the image as the network
    reads it (``plan.as_read``); ``voxels``: the labelled voxels
    (:func:`.baselines.labelled_voxels`). Rank 0 alone computes them."""
    k = inputs.num_classes
    if name == "copy":
        near = NearestLabel(inputs.labels, spacing, voxels, threads=max(1, torch.get_num_threads()))
        return confusion_by_slabs(near, held, k), {}
    forest = ForestPrediction(channels, inputs.labels, k, trees=opt.forest_trees, samples=opt.forest_samples,
                              seed=opt.seed, threads=max(1, torch.get_num_threads()), voxels=voxels)
    matrix = confusion_by_slabs(forest, held, k)
    return matrix, forest.costs()


def held_out_voxels(held: Any, share: PassShare = ONE_PROCESS) -> int:
    """Voxels the array-like ``held`` (``(D, H, W)``, ``IGNORE`` = not scored) scores, counted
    box by box (:func:`~fhcnn.data.lazy.iter_slabs`); ``share``: this process's block of the
    boxes (under ``torchrun`` the processes count together)."""
    boxes = list(iter_slabs(tuple(int(n) for n in held.shape), 1, SLAB_VOXELS))
    mine = sum(int(np.count_nonzero(np.asarray(held[boxes[i]]) != IGNORE)) for i in share.block(len(boxes)))
    return int(sum(share.combine(mine)))


class _UNet:
    """The 3D U-Net baseline of :func:`unet_plan`: :meth:`train` on every process of the run
    (under ``torchrun`` data parallel like fhcnn, the same global batch), then :meth:`score` on
    rank 0 alone (the model is never split in space: no other process takes part). Nothing of
    it is written; its prediction spills into scratch of the run folder."""

    def __init__(self, uplan: RunPlan, log: Callable[[str], None] = _log.info) -> None:
        self.plan = uplan
        self.log = log
        self.result: Any = None
        self.train_wall_s = 0.0

    def train(self) -> None:
        t0 = time.perf_counter()
        if is_main_process():  # no progress bar of its own: the wait is named
            self.log(f"unet baseline (volume.baselines): training {self.plan.config.train.steps} steps before "
                     f"fhcnn predicts")
        # a lost process's message names fhcnn's last step and checkpoint, not the U-Net's
        self.result = train(self.plan, None, quiet=True, reports_progress=False)
        self.train_wall_s = time.perf_counter() - t0

    def score(self, held: Any, k: int, geometry: Geometry, out: Path | None) -> dict[str, Any]:
        """The trained U-Net predicted and scored against ``held``: what the scores of
        :func:`score` hold, with its times and parameters; ``geometry``: fhcnn's plan's, whose
        ``data.scale`` the U-Net's volume already has (resized back to score)."""
        t0 = time.perf_counter()
        sink = ConfusionSink(held, k)
        seconds = predict_run(self.plan, self.result, out, lambda r: at_input_size(geometry, [sink]))
        m = scores_of_confusion(sink.matrix)
        m.update(train_time_s=round(self.result.train_time_s, 2), predict_time_s=round(seconds, 2),
                 parameters=int(sum(p.numel() for p in self.result.model.parameters())),
                 time_s=round(self.train_wall_s + time.perf_counter() - t0, 2))
        return m


def image_role(i: int) -> str:
    """The name of the ``i``-th IMAGE among the run's inputs (``run.json``): ``image``, ``image1`` ..."""
    return f"image{i}" if i else "image"


def volume_command(images: Sequence[str], labels: str, cfg: VolumeConfig, out: str, *,
                   eval_labels: str | None = None, ignore: int = 255, channel_axis: int | None = None,
                   save_probs: bool = False, resume: bool = False, overwrite: bool = False, quiet: bool = False,
                   config_file: str | None = None) -> tuple[dict[str, Any], Path]:
    """``fhcnn volume``: read and check every input and work out the run (each refusal one
    :class:`~fhcnn.errors.InputError` line, before ``out`` exists), make the run folder, train,
    predict and write. Returns the metrics (``{}`` on a non-zero rank) and the folder."""
    from ... import log as _logging
    from ...data.volumes import split_spec
    from ...rundir import prepare_output_dir, same_inputs_everywhere
    from .inputs import load_volume_inputs

    specs = {**{image_role(i): p for i, p in enumerate(images)}, "labels": labels,
             "eval_labels": eval_labels}
    # a zarr or HDF5 spec (x.zarr:raw) stands for its store: that is what is fingerprinted and what
    # OUT may neither be, lie in nor contain; the array inside it is part of the run's identity
    split = {role: split_spec(spec) for role, spec in specs.items() if spec is not None}
    arrays = {role: inner for role, (_, inner) in split.items() if inner is not None}
    roles = {role: path for role, (path, _) in split.items()}
    share = _join_processes(cfg)
    # compared before the shared passes mix what each process reads into one summary
    records = same_inputs_everywhere(roles) if share.processes > 1 else None
    t0 = time.perf_counter()
    inputs = load_volume_inputs(images, labels, eval_labels, ignore=ignore, channel_axis=channel_axis, share=share)
    vplan = plan_volume(inputs, cfg, share)
    vplan.read_time_s = time.perf_counter() - t0
    folder = prepare_output_dir(out, resume, overwrite, tool="volume", config=cfg, config_file=config_file,
                                roles=roles, records=records,
                                extra={"ignore": ignore, "channel_axis": channel_axis, "save_probs": save_probs,
                                       **({"arrays": arrays} if arrays else {})})
    _logging.setup(quiet)
    local_copies(vplan.plan, inputs, folder, resume=resume)
    return segment_volume(inputs, cfg, folder, vplan=vplan, quiet=quiet, resume=resume,
                          save_probs=save_probs), folder


def _join_processes(cfg: VolumeConfig) -> PassShare:
    """Under ``torchrun``, join the process group now (``train.peer_timeout`` bounds every wait),
    so the processes share the passes that check and summarize the inputs: each reads a block of
    the slabs (:func:`~fhcnn.training.distributed.pass_share`). One process: the whole pass."""
    from ...rundir import join_processes
    from ...training.distributed import pass_share

    join_processes(cfg.train)
    return pass_share()


def local_copies(plan: RunPlan, inputs: VolumeInputs, folder: Path, log: Callable[[str], None] = _log.info,
                 resume: bool = False) -> None:
    """Copy every input that is slow to read by window (a compressed NIfTI, a compressed TIFF) once,
    in one streamed pass along the axis its file reads fastest, into a chunked zarr array in the
    run folder (``inputs/``, recorded in ``run.json``), and point the plan and ``inputs`` at the
    copies: training, prediction, the baselines and the figure then read from them. With ``resume``
    the copies the interrupted run made are read again where they are complete and unchanged."""
    from ...rundir import copy_input, stop_watching_input

    slow = inputs.compressed
    if not any(slow):
        return
    n = len(inputs.channels)
    arrays: dict[str, Any] = {f"image{i}": c for i, c in enumerate(inputs.channels)}
    arrays["labels"] = inputs.labels
    if inputs.eval_labels is not None:
        arrays["eval_labels"] = inputs.eval_labels
    axes = list(inputs.slab_axes or [0] * n) + list(inputs.label_slab_axes or [0, 0])
    copies: dict[str, Any] = {}
    for (name, array), is_slow, axis in zip(arrays.items(), slow, axes):
        if not is_slow:
            continue
        copies[name] = copy_input(folder, name, array, (64, 64, 64), axis=axis, train=plan.config.train,
                                  why="its file is compressed", log=log, resume=resume)
    # from now on the run reads the copies: the files of those inputs may change without harm
    # (the image files, once every channel is read from a copy: which file holds which is not kept)
    images = [image_role(i) for i in range(len(inputs.sources.get("images", [])))]
    roles = (images if all(f"image{i}" in copies for i in range(n)) else []) \
        + [role for role in ("labels", "eval_labels") if role in copies]
    for role in roles:
        stop_watching_input(role)
    inputs.channels = [copies.get(f"image{i}", c) for i, c in enumerate(inputs.channels)]
    plan.read_from(inputs.channels)
    if "labels" in copies:
        if plan.labels is inputs.labels:
            plan.labels = copies["labels"]
        inputs.labels = copies["labels"]
    if "eval_labels" in copies:
        inputs.eval_labels = copies["eval_labels"]
    if isinstance(plan.eval_labels, HeldOut) and {"labels", "eval_labels"} & set(copies):
        plan.eval_labels = inputs.held_out()  # scored during training (data.eval_every): from the copies
