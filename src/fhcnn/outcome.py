"""How a command's run ends: its exit status and its one line (the command line,
:mod:`fhcnn.cli`, parses arguments and hands each command's run to :func:`exit_status`; the
``fhcnn`` program is :func:`run_program`).

Errors: ``InputError``, ``ValueError``, ``TypeError`` and file errors raised by a command are
one line ``error: <message>``, exit 2 (under ``torchrun`` the other processes wait
:data:`REFUSAL_GRACE_S` before they print an ``InputError``, which every process meets alike,
so rank 0's line is the one read); a ``TrainingError`` (a non-finite loss, a lost process:
``PeerLostError``) and a file system that takes no more writes (full, over quota, read-only:
``rundir.UNWRITABLE_ERRNOS``; the line names the last intact checkpoint to ``--resume`` from
once there is room) exit 1 (``--debug`` re-raises to show the traceback). Ctrl-C (SIGINT) is
one line ``interrupted (SIGINT)``, in a run folder with the last completed step, the last
intact checkpoint and ``--resume``, exit 130 (under ``torchrun``, which passes Ctrl-C on to
every process, rank 0 prints it; the others end with exit 130 without a word). SIGTERM (a batch
scheduler at its time limit, ``kill PID``) is answered alike outside ``torchrun``: ``terminated
(SIGTERM)``, exit 143; under ``torchrun``, which sends it to the other processes when one fails,
``training.distributed`` answers it.

The program answers Ctrl-C from its first moment, while torch and the commands are imported
too: this module imports nothing heavy (the standard library and :mod:`fhcnn.signals`; the
run folder, the trainer and the logger when a run ends, once they were imported).
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Callable, NoReturn

from .signals import INTERRUPTED, TERMINATED, answer_signals, ended_by, ignore_signals

if TYPE_CHECKING:
    from argparse import Namespace

__all__ = ["REFUSAL_GRACE_S", "exit_status", "run_program"]

#: Seconds a process of a ``torchrun`` launch other than rank 0 waits before it prints a refusal
#: of the input (an ``InputError``, which every process meets alike): rank 0 prints it and exits,
#: the launcher then ends the other processes, and the user reads the line once. A process that
#: meets a refusal alone still prints it, after the wait. (Rank 0 alone printing lost the line
#: whenever another process exited first: the launcher ended rank 0 before it printed.)
REFUSAL_GRACE_S = 3.0

_USER_ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError,
                NotADirectoryError, FileExistsError)


def _line(text: str) -> None:
    """One line to stderr in one write: the processes of a ``torchrun`` launch share the
    terminal, and ``print`` writes the text and its newline separately, so their lines ran
    together."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def exit_status(run: Callable[[Namespace], int | None], args: Namespace) -> int:
    """``run(args)`` (a command's run on its parsed command line ``args``) ended as the module
    docstring says: its exit status, and for an error, an interruption or a full disk its one
    line on stderr. ``args.debug`` re-raises the errors instead; ``args`` having ``resume``
    makes the lines of a stopped run name ``--resume``. The active run folder is deactivated
    however the run ends."""
    try:
        return int(run(args) or 0)
    except BrokenPipeError:  # e.g. `fhcnn info | head -1`
        return 0
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: what happened and, in a run folder, where to go on from
        # the process ends: a read through zarr's event loop that the signal cut short leaves
        # coroutines behind, reported as warnings when collected (as soon as this handler ends)
        importlib.import_module("fhcnn.log").silence_abandoned_work(teardown=True)
        return _interrupted(hasattr(args, "resume"), e)
    except _USER_ERRORS as e:
        importlib.import_module("fhcnn.rundir").RunFolder.abandon()  # a refused run leaves no OUT
        if getattr(args, "debug", False):
            raise
        # before the line: zarr's asyncio reads a refused read left behind are reported when collected
        log = importlib.import_module("fhcnn.log")
        log.silence_abandoned_work()
        if isinstance(e, importlib.import_module("fhcnn.errors").InputError):
            from .training.distributed import leave_it_to_rank_0

            leave_it_to_rank_0(REFUSAL_GRACE_S)  # every process meets it: rank 0 says it
        _line(f"error: {e}")
        return 2
    except OSError as e:  # a full or read-only file system while the run writes: exit 1, one line
        folders = importlib.import_module("fhcnn.rundir")
        if e.errno not in folders.UNWRITABLE_ERRNOS or getattr(args, "debug", False):
            raise
        _line(folders.unwritable_line(e, hasattr(args, "resume")))
        return 1
    except Exception as e:  # a training failure (e.g. non-finite loss, a lost process): exit 1, one line
        from .training import TrainingError
        from .training.distributed import peer_failure
        lost = peer_failure(e)  # another process stopped answering (in training or after it)
        if not (isinstance(e, TrainingError) or lost is not None) or getattr(args, "debug", False):
            raise
        if isinstance(e, importlib.import_module("fhcnn.rundir").InputsChangedError):
            from .training.distributed import leave_it_to_rank_0

            leave_it_to_rank_0(REFUSAL_GRACE_S)  # every process found it: rank 0 says it
        _line(f"error: {lost or e}")
        return 1
    finally:
        rundir = _imported("fhcnn.rundir")
        if rundir is not None:
            rundir.RunFolder.deactivate()


def _imported(name: str) -> ModuleType | None:
    """Module ``name`` if it was imported, else None (not imported here). After Ctrl-C only what
    was imported before it is used: importing torch again after an import of it was cut short
    fails with an ``ImportError`` (a partially initialized module) or crashes the interpreter."""
    return sys.modules.get(name)


def _interrupted(resumable: bool, e: KeyboardInterrupt) -> int:
    """The end of a command interrupted by Ctrl-C (``KeyboardInterrupt``) or SIGTERM
    (:class:`~fhcnn.signals.Terminated`, ``e``): its one line, by rank 0 alone under
    ``torchrun`` (which passes SIGINT on to every process), and exit status 130 (143). In an
    active run folder, ``rundir.stopped_run_line`` (the last step, the last intact checkpoint,
    ``--resume`` when the command is ``resumable``); before one, or where torch's import was cut
    short, ``interrupted (SIGINT)`` (``terminated (SIGTERM)``)."""
    from .log import rank

    ended, code = ended_by(e)
    rundir = _imported("fhcnn.rundir")  # it imports torch: a run folder was made after torch's import
    if rank() == 0:
        _line(rundir.stopped_run_line(ended, resumable) if rundir is not None else ended)
    return code


def run_program(main: Callable[[], int]) -> NoReturn:
    """The ``fhcnn`` program (the console script and ``python -m fhcnn``, :func:`fhcnn.cli.program`):
    ``main()`` (the command line on ``sys.argv``, its run through :func:`exit_status`), ended with
    its exit status (``training.distributed.exit_program``).

    Ctrl-C (SIGINT) at any moment is one line and exit status 130: in a command's run,
    :func:`exit_status`'s line (the run folder, the last checkpoint); before it (while torch and
    the commands are imported, which takes seconds) or after it, ``interrupted (SIGINT)``, where
    Python printed its ``KeyboardInterrupt`` traceback. The first SIGINT raises
    ``KeyboardInterrupt``, later ones are ignored: a second Ctrl-C cuts neither the line short
    nor the removal of what the interrupted run was writing. Once ``main`` has returned,
    SIGINT is ignored: the interpreter's teardown after a run takes up to a second, in which
    Ctrl-C printed an ``Exception ignored in atexit callback`` traceback or ended the finished
    command as killed by SIGINT, without a line. A program started with SIGINT ignored (a
    background job of a script, ``nohup``), which Python keeps, keeps ignoring it.

    SIGTERM (a batch scheduler at its time limit, ``kill PID``) is answered as Ctrl-C is
    (:class:`~fhcnn.signals.Terminated`): one line ``terminated (SIGTERM)`` with the same run
    information, the scratch removed, exit status 143; either signal then ignores both. Not
    under ``torchrun`` (``TORCHELASTIC_RUN_ID``), which ends the other processes with SIGTERM
    when one fails: there a process that refuses its input ends without a word and one in
    training says so in a line of its own (``training.distributed``); nor where SIGTERM was not
    ``SIG_DFL`` at the start (:func:`fhcnn.signals.answer_signals`)."""
    answer_signals()
    try:
        code = main()
        ignore_signals()  # the command has ended: its status stands
        if code not in (INTERRUPTED, TERMINATED):  # after Ctrl-C nothing is imported (see _imported)
            from .training.distributed import exit_program

            exit_program(code)
    except KeyboardInterrupt as e:  # outside a command's run: the imports, the command line, the exit
        code = _interrupted(False, e)
    distributed = _imported("fhcnn.training.distributed")  # after a run, it ends the process group
    if distributed is not None:
        distributed.exit_program(code)
    sys.exit(code)
