"""Output folders of runs: which folder may be written, and what may be replaced there."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable

from .errors import InputError
from .training.distributed import is_main_process

__all__ = ["prepare_output_dir", "RUN_MARKERS"]

#: Entries whose presence marks a folder as holding an fhcnn run.
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints")


def _is_relative_to(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


def prepare_output_dir(out: str | os.PathLike[str], resume: bool = False, overwrite: bool = False,
                       inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Check and create the output folder of a run; returns it as a ``Path``.

    Refused (``InputError``) when:

    * ``out`` is an existing file;
    * ``out`` holds another run (``config.yaml``, ``metrics.jsonl`` or ``checkpoints/``) and
      neither ``resume`` nor ``overwrite`` is set, or holds other files and ``overwrite`` is
      not set (so nothing a user wrote is mixed up or lost);
    * ``out`` is, or lies inside, an input folder; or is the folder holding an input file;
      or an input lies inside ``out``.

    With ``overwrite`` the previous run's ``checkpoints/`` and ``metrics.jsonl`` are removed
    (only those); other files are replaced atomically when the new run writes them. With
    ``resume`` the folder is kept as it is.

    Under multi-process training (``torchrun``: environment ``RANK``) only rank 0 checks and
    creates the folder; the other ranks just return the path, so they never race with
    rank 0's first writes.
    """
    out_path = Path(out).expanduser()
    if not is_main_process():
        return out_path
    out_abs = out_path.resolve()
    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other; choose one")
    for inp in inputs:
        if inp is None:
            continue
        ip = Path(inp).expanduser().resolve()
        folder = ip if ip.is_dir() else ip.parent
        if ip.is_dir() and _is_relative_to(out_abs, ip):
            raise InputError(f"output folder {out_path} is inside the input folder {inp}; "
                             f"choose an output folder outside it (inputs are never written to)")
        if not ip.is_dir() and out_abs == folder:
            raise InputError(f"output folder {out_path} is the folder of the input file {inp}; "
                             f"choose a separate output folder (inputs are never written to)")
        if out_abs == ip:
            raise InputError(f"output folder {out_path} is the input {inp}")
        if _is_relative_to(ip, out_abs):
            raise InputError(f"input {inp} lies inside the output folder {out_path}; "
                             f"choose another output folder")
    if out_abs.exists() and not out_abs.is_dir():
        raise InputError(f"output {out_path} exists and is not a folder")
    if out_abs.is_dir():
        entries = [e for e in out_abs.iterdir()]
        markers = [m for m in RUN_MARKERS if (out_abs / m).exists()]
        if markers and not (resume or overwrite):
            raise InputError(f"output folder {out_path} already holds a run ({', '.join(markers)}); "
                             f"pass --resume to continue it or --overwrite to start over")
        if entries and not markers and not overwrite:
            if resume:
                raise InputError(f"--resume: output folder {out_path} holds no run to resume "
                                 f"(no {', '.join(RUN_MARKERS)})")
            raise InputError(f"output folder {out_path} is not empty and holds no fhcnn run; "
                             f"choose a new or empty folder (or pass --overwrite to write into it)")
        if overwrite:
            ckpt = out_abs / "checkpoints"
            if ckpt.is_dir():
                shutil.rmtree(ckpt)
            for name in ("metrics.jsonl",):
                if (out_abs / name).is_file():
                    (out_abs / name).unlink()
    out_abs.mkdir(parents=True, exist_ok=True)
    return out_path
