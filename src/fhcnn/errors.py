"""Errors the command line reports as one clear line (exit code 2) instead of a traceback."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad user input (file, shape, label volume, option): the message names the problem.

    The CLI prints ``error: <message>`` and exits with code 2; ``--debug`` shows the traceback.
    Library code raises it (or a plain ``ValueError``/``TypeError``) at its public boundary.
    """
