"""Run a prepared plan: train, then predict the whole volume chunk by chunk into sinks.

    plan = prepare(DenseInputs(volume, labels, eval_labels=truth), cfg)   # before OUT exists
    out = prepare_output_dir(...)                                          # the application's
    result = run(plan, out, sinks=lambda result: [LabelSink(labels_array)])

Every process of a ``torchrun`` job calls :func:`run`; the model's collective calls (a split in
space) need them all. Which part of the output a process finishes is ``owned``: the whole
volume on one process; under ``torchrun`` by default rank 0 finishes everything and the other
ranks nothing (they still run every window of a split model), or, with ``owned="slabs"``, each
process of the split finishes its own slab of the volume (its part of a shared on-disk output).
A model that is not split is predicted by rank 0 alone (:func:`predicts`): the other processes
of a data-parallel run are done once it is trained and wait for nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Literal, Sequence

from ..rundir import check_inputs_unchanged
from ..training import is_main_process
from .plan import RunPlan
from .store import CACHE_BYTES, Sink, spill_folder
from .train import SegmentationResult, train

__all__ = ["run", "predict", "predict_run", "predicts", "owned_region", "Ownership"]

#: Which part of the output each process finishes (see the module docstring).
Ownership = Literal["main", "slabs"]


def owned_region(plan: RunPlan, result: SegmentationResult, ownership: Ownership = "main"
                 ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(origin, shape)`` of the output region this process finishes.

    ``"main"``: everything on the main process (rank 0, or the only one), nothing elsewhere.
    ``"slabs"``: with a split in space, this process's slab of the volume along the split axes
    (the volume cut like a window: :meth:`~fhcnn.spatial.SpatialSplit.local_slices`, edges at
    multiples of ``chunks`` where they fit); the first data-parallel replica finishes, the
    others nothing.
    """
    size = plan.volume.spatial
    nothing = ((0, 0, 0), (0, 0, 0))
    space = result.space
    if ownership == "slabs" and space is not None:
        split = space.split
        if split.data_rank != 0:
            return nothing
        origin, shape = [0, 0, 0], list(size)
        for axis, parts in zip(split.axes, split.grid):
            n, c = size[axis], plan.chunks[axis]
            pos = split.coords[split.axes.index(axis)]
            edges = [min(n, round(i * n / parts / c) * c) for i in range(parts)] + [n]
            origin[axis], shape[axis] = edges[pos], edges[pos + 1] - edges[pos]
        return (origin[0], origin[1], origin[2]), (shape[0], shape[1], shape[2])
    return ((0, 0, 0), size) if is_main_process() else nothing


def predicts(result: SegmentationResult) -> bool:
    """Whether this process takes part in predicting ``result``: every process of a model split
    in space (each runs every window), else the main process alone (a data-parallel replica
    other than rank 0 would run every window for nothing: it finishes no region)."""
    return result.space is not None or is_main_process()


def predict(plan: RunPlan, result: SegmentationResult, sinks: Sequence[Sink], *, work: Path | None = None,
            ownership: Ownership = "main", cache_bytes: int = CACHE_BYTES) -> float:
    """Predict the plan's volume into ``sinks`` (this process's ``owned_region``); chunks beyond
    ``cache_bytes`` spill to a private folder in ``work`` (default ``TMPDIR``). Returns the
    seconds it took."""
    t0 = time.perf_counter()
    result.predict_into(plan.volume, sinks, work=work, cache_bytes=cache_bytes,
                        owned=owned_region(plan, result, ownership))
    return time.perf_counter() - t0


def run(plan: RunPlan, out: Path | None, sinks: Callable[[SegmentationResult], Sequence[Sink]], *,
        resume: bool = False, quiet: bool = False,
        eval_fn: Callable[[SegmentationResult], dict[str, float]] | None = None,
        ownership: Ownership = "main", cache_bytes: int = CACHE_BYTES,
        spill_in: Path | None = None) -> tuple[SegmentationResult, float]:
    """Train on the plan (checkpoints and ``metrics.jsonl`` in ``out``), then predict its volume
    into ``sinks(result)`` (see :func:`predict`), spilling into a scratch folder of the run folder
    ``spill_in`` (default ``out``; :func:`~fhcnn.engine.store.spill_folder`, made by rank 0 for
    every process; neither: ``TMPDIR``). Returns the result and the prediction's seconds."""
    result = train(plan, out, eval_fn=eval_fn, quiet=quiet, resume=resume)
    seconds = predict_run(plan, result, spill_in if spill_in is not None else out, sinks, ownership=ownership,
                          cache_bytes=cache_bytes)
    return result, seconds


def predict_run(plan: RunPlan, result: SegmentationResult, out: Path | None,
                sinks: Callable[[SegmentationResult], Sequence[Sink]], *, ownership: Ownership = "main",
                cache_bytes: int = CACHE_BYTES) -> float:
    """Predict the trained ``result`` into ``sinks(result)`` (see :func:`predict`), spilling
    into a scratch folder of the run folder ``out`` (:func:`~fhcnn.engine.store.spill_folder`;
    ``None``: ``TMPDIR``), on the processes that take part (:func:`predicts`; a split model: all
    of them, rank 0 makes the folder for every one). Another process returns ``0.0`` at once:
    neither ``sinks`` is called nor any window run, and it waits for no other process. Returns
    the prediction's seconds."""
    if not predicts(result):
        return 0.0
    with spill_folder(out, every_process=result.space is not None) as work:
        seconds = predict(plan, result, sinks(result), work=work, ownership=ownership, cache_bytes=cache_bytes)
    # the processes that predict (all of a split model, else rank 0 alone) say it together
    check_inputs_unchanged("during the prediction", collective=result.space is not None)
    return seconds
