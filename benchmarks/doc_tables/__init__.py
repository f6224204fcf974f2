"""The generated tables of ``README.md`` and ``docs/*.md``, by name.

Each entry of :data:`TABLES` takes the results folder (``benchmarks/results``) and returns the
markdown that ``benchmarks/report.py`` writes between ``<!-- table:NAME -->`` and
``<!-- /table:NAME -->``. The tables are grouped by the scripts that write their JSON:
:mod:`.core` (``fhcnn bench``, ``gpu_memory.py``), :mod:`.segment`, :mod:`.change`, :mod:`.vae`,
:mod:`.volume` (``fhcnn volume``'s sparse slices) and :mod:`.summary` (the README's headline,
the shipped configs' complete runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import change, core, segment, summary, vae, volume

__all__ = ["TABLES"]

TABLES: dict[str, Callable[[Path], str]] = {
    **{name: core.bench_table(name, fn) for name, fn in core.BENCH},
    "memory_headline": core.memory_headline,
    "gpu": core.gpu,
    "volume_memory": core.volume_memory("volume_memory"),
    "volume_memory_volume": core.volume_memory("volume_memory_volume"),
    "volume_reads": core.volume_reads,
    "copy_memory": core.copy_memory,
    "davis": segment.davis,
    "davis_loss": segment.davis_loss,
    "davis_schedules": segment.davis_schedules,
    "speed_configs": summary.speed_configs("speed_configs"),
    "segment_generated": segment.segment_generated,
    "change": change.change,
    "vae_digits": vae.vae_digits,
    "vae_mnist": vae.vae_mnist,
    "headline": summary.headline,
    "sparse_taizhou": change.sparse("taizhou"),
    "sparse_generated": change.sparse("generated"),
    "sparse_hsi": change.sparse_hsi,
    "volume_sparse": volume.volume_sparse,
    "volume_stains": volume.volume_stains,
    "volume_predict_modes": volume.volume_predict_modes,
    "volume_formations": volume.volume_formations,
}
