"""The one line of a run that stops: interrupted, or on a file system that takes no more writes.

Each names where the run of this process goes on from (the active run folder, or the one rank 0
holds under ``torchrun``): the last step and the last intact checkpoint to ``--resume`` from.
"""

from __future__ import annotations

import errno
from pathlib import Path

from .folder import RunFolder

#: ``OSError`` numbers of a file system that takes no more writes (full, over quota, read-only).
UNWRITABLE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _run_root() -> Path | None:
    """The folder of the run this process takes part in: the active run folder (rank 0, one
    process), or the one rank 0 holds for the run of a ``torchrun`` launch (:attr:`RunFolder.joined`)."""
    run = RunFolder.active
    return run.root if run is not None else RunFolder.joined


def stopped_run_line(what: str, resumable: bool, then: str = "continue") -> str:
    """The one line of a command stopped by ``what`` (``interrupted (SIGINT)``, ...) in the
    run folder of this process's run, if any (:func:`_run_root`):
    :func:`~fhcnn.training.distributed.stopped_line` (the last step, the last intact checkpoint,
    ``then`` ``--resume`` where the command is ``resumable``)."""
    from ..training.distributed import stopped_line

    return stopped_line(what, _run_root(), resumable, then)


#: What a run stopped by a file system that takes no more writes advises before ``--resume``.
_MAKE_ROOM = "free space on that file system (or make it writable), then continue"


def unwritable_line(e: OSError, resumable: bool) -> str:
    """The one line of a run whose file system took no more writes (``e.errno`` one of
    :data:`UNWRITABLE_ERRNOS`): what could not be written, and where to go on from once there is
    room (:func:`stopped_run_line`). Under ``torchrun`` the other processes of the run are told
    too (:func:`~fhcnn.training.distributed.tell_others`): the wait for this process that fails
    in each of them, or ``torchrun``'s SIGTERM, is then a line naming this cause and the same
    checkpoint, not a process that merely stopped answering."""
    from ..training.distributed import tell_others

    root = _run_root()
    where = f" {e.filename}" if e.filename else f" in {root}" if root is not None else ""
    cause = f"cannot write{where}: {e.strerror or e} ({errno.errorcode.get(e.errno or 0, '')})"
    tell_others(cause, _MAKE_ROOM if resumable else None)
    return f"error: {cause}; " + stopped_run_line("this run stopped", resumable, then=_MAKE_ROOM)
