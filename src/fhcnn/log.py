"""One logging convention for every command: progress and log lines go to stderr (through
the ``fhcnn`` logger), results go to stdout (:func:`result`), so ``fhcnn ... > result.txt``
keeps only results. Under ``torchrun`` only rank 0 logs; the other ranks print only their
warnings and the errors of a failed run (a line of their own), not the run's lines a second
time; a refusal (bad input, exit code 2, the same on every rank) is printed by rank 0 alone.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["logger", "rank", "setup", "info", "result", "silence_abandoned_work"]

logger = logging.getLogger("fhcnn")


def rank() -> int:
    """This process's rank under ``torchrun`` (environment ``RANK``; 0 without it)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def setup(quiet: bool = False) -> None:
    """Send the ``fhcnn`` logger's messages to stderr (as plain lines); ``quiet``, and every
    rank but 0 of a multi-process run: warnings only."""
    for h in list(logger.handlers):
        if getattr(h, "_fhcnn", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._fhcnn = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet or rank() != 0 else logging.INFO)
    logger.propagate = False


def info(message: str) -> None:
    """A log line (stderr, unless quiet)."""
    logger.info(message)


def result(message: str) -> None:
    """A result line (stdout, always)."""
    print(message, flush=True)


def silence_abandoned_work(teardown: bool = False) -> None:
    """After a refusal's one line (exit status 2), print nothing more about the work the
    refusal abandoned: a read of a damaged zarr chunk leaves zarr's other asyncio reads behind,
    which asyncio's logger reports when they are collected (silenced here), and which the
    interpreter's teardown reports at exit ("Exception ignored in: <coroutine ...>: Event loop
    is closed", "coroutine ... was never awaited", "Task was destroyed but it is pending!"):
    with ``teardown`` (a process about to exit) those are dropped too."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    if teardown:
        import warnings

        sys.unraisablehook = lambda unraisable: None
        warnings.simplefilter("ignore")
