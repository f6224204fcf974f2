"""The ``fhcnn`` command line: ``fhcnn <command> ...`` (also ``python -m fhcnn``).

Each command lives in its own module ``fhcnn.cli.<name>`` exposing::

    HELP: str                                   # one line for ``fhcnn --help``
    def add_arguments(parser) -> None           # fill its argparse sub-parser
    def run(args) -> int                        # do the work, return the exit code

A bad command line is one line ``error: <message>``, exit 2. How a command's run ends (its
errors, Ctrl-C and SIGTERM, their lines and exit codes) is :mod:`fhcnn.outcome`'s, and so is
the program, :func:`program`, which answers Ctrl-C from its first moment: this module imports
nothing heavy before it does.
"""

from __future__ import annotations

import argparse
import importlib
from typing import NoReturn, Sequence

from ..outcome import exit_status, run_program

__all__ = ["main", "program", "COMMANDS"]

# command name -> module; a module that is not present (yet) is simply not offered
COMMANDS: dict[str, str] = {
    "info": "fhcnn.cli.info",
    "demo": "fhcnn.cli.demo",
    "segment": "fhcnn.cli.segment",
    "change": "fhcnn.cli.change",
    "volume": "fhcnn.cli.volume",
    "vae": "fhcnn.cli.vae",
    "bench": "fhcnn.cli.bench",
}


def _load_commands() -> dict[str, object]:
    mods: dict[str, object] = {}
    for name, path in COMMANDS.items():
        try:
            mods[name] = importlib.import_module(path)
        except ModuleNotFoundError as e:  # only skip a command whose own module is absent
            if e.name != path:
                raise
    return mods


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    from .. import __version__
    from ._options import OneLineErrors

    parser = OneLineErrors(prog="fhcnn", description="Fully hyperbolic (end-to-end reversible) CNNs: constant "
                     "training memory in depth, exact inverse. Run 'fhcnn <command> --help' for details.")
    parser.add_argument("--version", action="version", version=f"fhcnn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    mods = _load_commands()
    for name, mod in mods.items():
        p = sub.add_parser(name, help=getattr(mod, "HELP", ""), description=getattr(mod, "HELP", ""))
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show full tracebacks on errors")
        mod.add_arguments(p)  # type: ignore[attr-defined]
    return parser, mods


def main(argv: Sequence[str] | None = None) -> int:
    parser, mods = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or the one-line error of a bad command line
        return int(e.code or 0)
    if not args.command:
        parser.print_help()
        return 0
    return exit_status(mods[args.command].run, args)  # type: ignore[attr-defined]


def program() -> NoReturn:
    """The ``fhcnn`` program (the console script and ``python -m fhcnn``): :func:`main` on
    ``sys.argv``, run by :func:`fhcnn.outcome.run_program` (Ctrl-C and SIGTERM answered from
    its first moment, the exit status)."""
    run_program(main)
