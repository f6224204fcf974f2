"""Regenerate the result tables of the docs from the JSON files in ``benchmarks/results/``.

Every results table in ``README.md`` and ``docs/*.md`` sits between two markers::

    <!-- table:NAME -->
    ...generated, do not edit...
    <!-- /table:NAME -->

and is generated from the JSON files in ``benchmarks/results/`` by the function registered
under ``NAME`` in :data:`doc_tables.TABLES`. Regenerate them all after a benchmark run with::

    python benchmarks/report.py --docs README.md docs

``--check`` only reports (exit code 1) which files are out of date; without ``--docs`` the
tables of ``fhcnn bench`` (memory, table1, peers, time, drift) found in the folder are printed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from doc_tables import TABLES  # noqa: E402
from doc_tables.core import markdown  # noqa: E402

__all__ = ["TABLES", "markdown", "render", "replace_tables", "update_docs"]

#: the results folder next to this script
RESULTS = Path(__file__).resolve().parent / "results"


_MARKER = re.compile(r"<!-- (/?)table:([\w-]+) -->")


def render(name: str, results: str | Path) -> str:
    """The markdown of table ``name`` from the JSON files in ``results``."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; known: {', '.join(sorted(TABLES))}")
    return TABLES[name](Path(results))


def replace_tables(text: str, table: Callable[[str], str]) -> str:
    """Replace the body between every ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``
    with ``table(NAME)``; markers stay. Raises ValueError for unpaired or nested markers."""
    out: list[str] = []
    pos = 0
    open_name: str | None = None
    for m in _MARKER.finditer(text):
        closing, name = m.group(1) == "/", m.group(2)
        line = text.count("\n", 0, m.start()) + 1
        if not closing:
            if open_name is not None:
                raise ValueError(f"line {line}: table:{name} opens inside table:{open_name}")
            out.append(text[pos:m.end()])
            open_name = name
        else:
            if open_name != name:
                raise ValueError(f"line {line}: /table:{name} closes "
                                 + (f"table:{open_name}" if open_name else "nothing"))
            out.append("\n" + table(name).strip("\n") + "\n" + m.group(0))
            open_name = None
        pos = m.end()
    if open_name is not None:
        raise ValueError(f"table:{open_name} is never closed")
    out.append(text[pos:])
    return "".join(out)


def _markdown_files(paths: list[str | Path]) -> list[Path]:
    """The markdown files of ``paths`` (a folder: its ``*.md``). Raises ValueError naming a
    path that is neither a file nor a folder."""
    files: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir() and not p.is_file():
            raise ValueError(f"{p}: no such markdown file or folder")
        files += sorted(p.glob("*.md")) if p.is_dir() else [p]
    return files


def update_docs(results: str | Path, paths: list[str | Path], check: bool = False) -> list[Path]:
    """Regenerate the marked tables in ``paths`` (markdown files, or folders of them) from the
    JSON in ``results``. Returns the files whose text changed (with ``check``, would change;
    nothing is written). Every page is rendered before the first is written: a page that
    fails (ValueError naming it) leaves all of them as they were."""
    new_texts: dict[Path, str] = {}
    for f in _markdown_files(paths):
        text = f.read_text()
        try:
            new = replace_tables(text, lambda name: render(name, results))
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise ValueError(f"{f}: {e}") from e
        if new != text:
            new_texts[f] = new
    if not check:
        for f, new in new_texts.items():
            f.write_text(new)
    return list(new_texts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/report.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="?", default=str(RESULTS), help="folder of result JSON files")
    p.add_argument("--docs", nargs="+", metavar="PATH", help="markdown files or folders to update")
    p.add_argument("--check", action="store_true", help="only say which files are out of date")
    args = p.parse_args(argv)
    if not Path(args.results).is_dir():
        print(f"error: {args.results}: no such results folder", file=sys.stderr)
        return 2
    if not args.docs:
        print(markdown(args.results))
        return 0
    try:
        changed = update_docs(args.results, args.docs, check=args.check)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for f in changed:
        print(f"{'out of date' if args.check else 'updated'}: {f}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
