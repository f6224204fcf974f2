"""The one-time local copies of inputs that are slow to read by window, inside a run folder.

:func:`copy_input` makes the chunked copy (``OUT/inputs/<name>.zarr``) once, rank 0 alone under
``torchrun``; with ``--resume`` a complete, unchanged copy of the interrupted run is read again
(:func:`_reusable_copy`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .. import atomic
from ..training.distributed import is_main_process
from .folder import RunFolder
from .inputs import join_processes

if TYPE_CHECKING:
    from ..training.config import TrainConfig


def _reusable_copy(final: Path, array: Any) -> bool:
    """``final`` is a complete chunked copy this run made of ``array`` and nobody changed since:
    the active run folder owns the whole tree (:meth:`RunFolder.owns_tree`: sizes and sha256 as
    recorded, no recorded file missing) and its shape and dtype are ``array``'s."""
    import numpy as np
    import zarr

    run = RunFolder.active
    if run is None or not run.owns_tree(final):
        return False
    try:
        copy = zarr.open_array(str(final), mode="r")
    except Exception:  # noqa: BLE001 - an unreadable copy is made again
        return False
    return tuple(copy.shape) == tuple(array.shape) and np.dtype(copy.dtype) == np.dtype(array.dtype)


def copy_input(folder: Path, name: str, array: Any, chunks: Sequence[int], axis: int = 0, *,
               train: TrainConfig, why: str, log: Callable[[str], None], resume: bool = False) -> Any:
    """The one-time chunked copy of an input that is slow to read by window (compressed or
    sequential files), inside a run folder: :func:`~fhcnn.data.lazy.copy_to_zarr` along ``axis``
    into ``folder/inputs/<name>.zarr``, written under a temporary name and moved in (every file
    recorded in ``run.json``). Returns the copy, opened for reading, and logs one line naming
    the copy and ``why`` it was made.

    With ``resume`` (the run's inputs are fingerprinted as unchanged) a copy the run made before
    is read again instead of made again, if it is complete and unchanged
    (:func:`_reusable_copy`); otherwise it is made again.

    Under ``torchrun`` (``WORLD_SIZE > 1``) the processes join their group here (on the device
    type of ``train.device``) and rank 0 alone copies while the others wait at a barrier, then
    every process opens the copy; a copy that takes longer than ``train.peer_timeout`` stops the
    run with :class:`PeerLostError` (one line that says to raise it).
    """
    import zarr

    from ..data.lazy import copy_to_zarr

    peer_timeout = train.peer_timeout
    final = Path(folder) / "inputs" / f"{name}.zarr"
    info = join_processes(train)
    main = is_main_process()
    reused = resume and main and _reusable_copy(final, array)
    t0 = time.perf_counter()
    if main and not reused:
        # scratch: a copy that stops, or a run killed while it copies, leaves nothing behind
        with atomic.scratch(Path(folder) / f".{name}.zarr.tmp") as tmp:
            copy_to_zarr(array, tmp, chunks, axis=axis)
            atomic.place_tree(tmp, final)
    if info is not None and info.world_size > 1:
        import torch.distributed as dist

        from ..training.distributed import PeerLostError, waited_too_long

        try:
            dist.barrier()
        except Exception as e:  # Gloo's are RuntimeErrors; another loss: the CLI's lost-process line
            if main or not waited_too_long(e):
                raise
            raise PeerLostError(f"the copy of {name} into {final} was not finished by rank 0 within "
                                f"train.peer_timeout={peer_timeout:g} s ({str(e).splitlines()[0][:120]}); "
                                f"raise train.peer_timeout for a large compressed or sequential input") from None
    log(f"{name}: read by window from a chunked copy made once in {final} ({why})"
        + ("; the copy of the interrupted run, unchanged, is read again" if reused
           else f"; copied in {time.perf_counter() - t0:.0f} s"))
    return zarr.open_array(str(final), mode="r")
