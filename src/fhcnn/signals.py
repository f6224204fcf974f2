"""How the ``fhcnn`` program answers SIGINT (Ctrl-C) and SIGTERM (a batch scheduler at its time
limit, Kubernetes, ``kill PID``): the first raises ``KeyboardInterrupt`` (SIGTERM:
:class:`Terminated`, one), so that whatever answers Ctrl-C in a run (removing the scratch it was
writing, ending spawned workers) answers both; later ones are ignored, so that a second signal
cuts neither the run's last line short nor that removal. Imports only the standard library: the
program installs this before torch is imported (:func:`fhcnn.outcome.run_program`)."""

from __future__ import annotations

import os
import signal
from types import FrameType

__all__ = ["INTERRUPTED", "TERMINATED", "Terminated", "ANSWERED", "interrupt_once", "answer_signals",
           "ignore_signals", "ended_by"]

#: The exit status of a command ended by Ctrl-C (SIGINT): 128 + 2, as a shell reports it.
INTERRUPTED = 130

#: The exit status of a command ended by SIGTERM: 128 + 15, as a shell reports it.
TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM in the program, raised by :func:`interrupt_once`: a ``KeyboardInterrupt``, so that
    whatever answers Ctrl-C (a run removing the scratch it was writing, spawned workers ended)
    answers it too; its line says ``terminated (SIGTERM)`` and its exit status is
    :data:`TERMINATED`."""


#: The signals :func:`interrupt_once` answers.
ANSWERED = (signal.SIGINT, signal.SIGTERM)


def interrupt_once(signum: int, frame: FrameType | None) -> None:
    """The handler of SIGINT and SIGTERM: ``KeyboardInterrupt`` (SIGTERM: :class:`Terminated`)
    the first time, then neither signal again (each that it answers is ignored from then on)."""
    for answered in ANSWERED:
        if signal.getsignal(answered) is interrupt_once:
            signal.signal(answered, signal.SIG_IGN)
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def answer_signals() -> None:
    """Answer SIGINT and SIGTERM with :func:`interrupt_once` from now on. SIGINT where Python
    answers it (a program started with SIGINT ignored, a background job of a script or
    ``nohup``, keeps ignoring it); SIGTERM where it is ``SIG_DFL`` and not under ``torchrun``
    (``TORCHELASTIC_RUN_ID``), which ends the other processes with SIGTERM when one fails:
    ``training.distributed`` answers it there."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupt_once)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and "TORCHELASTIC_RUN_ID" not in os.environ:
        signal.signal(signal.SIGTERM, interrupt_once)


def ignore_signals() -> None:
    """Ignore SIGINT, and SIGTERM where :func:`interrupt_once` answered it: a command that has
    ended keeps its exit status through the interpreter's teardown (up to a second, in which
    Ctrl-C printed an ``Exception ignored in atexit callback`` traceback or ended the finished
    command as killed by SIGINT, without a line)."""
    for signum in ANSWERED:
        if signum == signal.SIGINT or signal.getsignal(signum) is interrupt_once:
            signal.signal(signum, signal.SIG_IGN)


def ended_by(e: KeyboardInterrupt) -> tuple[str, int]:
    """What ended a command that raised ``e`` and its exit status: ``("interrupted (SIGINT)",
    130)``, or ``("terminated (SIGTERM)", 143)`` for a :class:`Terminated`."""
    return ("terminated (SIGTERM)", TERMINATED) if isinstance(e, Terminated) else ("interrupted (SIGINT)", INTERRUPTED)
