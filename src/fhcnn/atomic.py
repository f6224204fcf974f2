"""Atomic file output: a crash at any instant leaves either the old file or the new one.

Write to a temporary file in the destination's folder, flush and fsync it, then
``os.replace`` it over the destination (atomic on POSIX and Windows), and fsync the folder.

Inside a run folder every write, folder creation and removal goes through a :class:`WriteGuard`
(the run's record, :class:`fhcnn.rundir.RunFolder`): it refuses a destination behind a link or
in a folder fhcnn did not create, and records what was written (size and sha256) before the
temporary file replaces the destination. Outside a run folder (no guard set) nothing is checked.

Temporary files and folders are *scratch* (:func:`scratch`, :func:`begin_scratch`; the
temporary file of every write, a zarr array written under a temporary name, a staging file):
inside a run folder each is recorded before it is made and forgotten once it is gone, so
whatever a process killed mid-write (SIGKILL) left under such a name is removed by the next run
of that folder (``--resume`` or ``--overwrite``), and nothing else. Outside a run folder the
next complete write of the same destination removes the hidden temporary files of earlier
killed writes of it (one writer per destination: fhcnn writes each output from one process).
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence

if TYPE_CHECKING:
    import numpy as np

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_save_npy",
           "append_text", "make_dir", "remove", "note_written", "place_tree",
           "scratch", "scratch_name", "begin_scratch", "end_scratch", "WriteGuard", "set_write_guard", "unguarded"]


class WriteGuard(Protocol):
    """What a run folder checks and records around each file operation (see module doc)."""

    def before_write(self, dest: Path) -> None:
        """Raise unless ``dest`` may be written; create its missing folders (recorded)."""

    def after_write(self, dest: Path, tmp: Path) -> None:
        """Record ``tmp``'s size and hash as ``dest``'s, just before it replaces ``dest``."""

    def before_append(self, dest: Path, data: bytes) -> None:
        """Raise unless ``dest`` may be appended to; record its size and hash with ``data``
        appended (before it is appended)."""

    def make_dir(self, folder: Path) -> bool:
        """Create ``folder`` (recorded); ``False`` if it lies outside the run folder."""

    def remove(self, path: Path) -> bool:
        """Remove the files fhcnn wrote below ``path`` (and folders it made, once empty);
        ``False`` if ``path`` lies outside the run folder."""

    def record(self, paths: list[Path], sources: list[Path] | None = None) -> None:
        """Record files fhcnn wrote by other means (size and hash; one save of the record);
        with ``sources``, the content of each is that of its source, about to be moved in."""

    def begin_scratch(self, path: Path) -> None:
        """Raise unless ``path`` may be made (as :meth:`before_write`); record it as scratch
        before it exists, removing what a killed run left under that recorded name first."""

    def end_scratch(self, path: Path) -> None:
        """Drop ``path`` (removed or moved into place) from the scratch of the record."""


#: The guard of the active run folder, or ``None``.
_guard: WriteGuard | None = None


def set_write_guard(guard: WriteGuard | None) -> None:
    """Route every write, :func:`make_dir` and :func:`remove` through ``guard`` (``None``: stop)."""
    global _guard
    _guard = guard


@contextlib.contextmanager
def unguarded() -> Iterator[None]:
    """No guard inside the block (the run folder's own record is written this way)."""
    global _guard
    saved, _guard = _guard, None
    try:
        yield
    finally:
        _guard = saved


def _umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def append_text(path: str | os.PathLike[str], text: str) -> None:
    """Append ``text`` (UTF-8) to ``path`` (a log, e.g. ``metrics.jsonl``): one ``write`` of the
    whole text; inside a run folder the file's new size and hash are recorded first."""
    data = text.encode("utf-8")
    p = Path(path)
    if _guard is not None:
        _guard.before_append(p, data)
    with open(p, "ab") as f:
        f.write(data)
        f.flush()


def note_written(*paths: str | os.PathLike[str],
                 sources: Sequence[str | os.PathLike[str]] | None = None) -> None:
    """Record files fhcnn wrote by other means than :func:`atomic_path` (the chunk files of a
    zarr folder written under a temporary name and renamed into place as a whole): inside a run
    folder each is recorded with its size and hash, in one save of the record. ``sources``: the
    files (one per path) about to be moved to ``paths``, recorded with their content before the
    move, so that a process killed while they move leaves no file the record does not list."""
    if _guard is not None and paths:
        _guard.record([Path(p) for p in paths], None if sources is None else [Path(q) for q in sources])


def scratch_name(folder: str | os.PathLike[str], prefix: str, suffix: str = ".tmp") -> Path:
    """A name for scratch in ``folder`` that nothing there has yet: ``PREFIX`` + 8 random
    characters + ``SUFFIX`` (made by the caller, after :func:`begin_scratch`)."""
    while True:
        p = Path(folder) / f"{prefix}{secrets.token_hex(4)}{suffix}"
        if not os.path.lexists(p):
            return p


def begin_scratch(path: str | os.PathLike[str]) -> Path:
    """Say that fhcnn is about to make ``path``, a temporary file or folder that it removes (or
    moves into place) itself, with :func:`end_scratch`. Inside a run folder it is checked like a
    write (no link on the way, in a folder fhcnn made, nobody else's file there) and recorded
    before it exists, so that a run killed before :func:`end_scratch` leaves nothing the next
    run of the folder does not remove. Returns ``path``."""
    p = Path(path)
    if _guard is not None:
        _guard.begin_scratch(p)
    return p


def end_scratch(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` if it is still there (a file, or a folder with what is inside; a link is
    never followed) and drop it from the run folder's record."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    if _guard is not None:
        _guard.end_scratch(p)


@contextlib.contextmanager
def scratch(path: str | os.PathLike[str]) -> Iterator[Path]:
    """:func:`begin_scratch` around the block and :func:`end_scratch` after it, however it
    ends: ``path`` is gone afterwards unless the block moved it into place."""
    p = begin_scratch(path)
    try:
        yield p
    finally:
        end_scratch(p)


def place_tree(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> Path:
    """Move a folder written under a temporary name (e.g. a zarr array) to ``final``: an earlier
    ``final`` removed first (:func:`remove`), each folder made (:func:`make_dir`), each file
    recorded with its size and hash (:func:`note_written`, one save) and then moved in, ``tmp``
    removed. A process killed while the files move leaves none in ``final`` that the run
    folder's record does not list (so the next run of the folder removes them)."""
    src, dest = Path(tmp), Path(final)
    files = [p.relative_to(src) for p in src.rglob("*") if p.is_file()]
    dirs = sorted((p.relative_to(src) for p in src.rglob("*") if p.is_dir()), key=lambda p: len(p.parts))
    if dest.exists() or dest.is_symlink():
        remove(dest)
    for d in [Path("."), *dirs]:
        make_dir(dest / d)
    note_written(*(dest / f for f in files), sources=[src / f for f in files])
    for f in files:
        os.replace(src / f, dest / f)
    shutil.rmtree(src)
    return dest


def make_dir(folder: str | os.PathLike[str]) -> Path:
    """``mkdir -p folder``; inside a run folder the guard checks and records it."""
    p = Path(folder)
    if _guard is None or not _guard.make_dir(p):
        p.mkdir(parents=True, exist_ok=True)
    return p


def remove(path: str | os.PathLike[str]) -> None:
    """Remove a file or a folder tree. Inside a run folder only what fhcnn wrote there goes
    (files still as written, folders it made once empty); anything else stays."""
    p = Path(path)
    if _guard is not None and _guard.remove(p):
        return
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The caller writes the file at the yielded path (any library: ``np.save``, ``Image.save``,
    ``safetensors.torch.save_file`` ...). If the block raises, the temporary file is removed
    and ``path`` is untouched.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_path(d / "a.npy") as tmp:
        ...     np.save(tmp, np.zeros(3))
        >>> np.load(d / "a.npy").shape
        (3,)
    """
    dest = Path(path)
    guard = _guard
    if guard is not None:
        guard.before_write(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = f".{dest.name}.", ".tmp" + dest.suffix
    # scratch: inside a run folder recorded before it exists, so that a process killed while
    # it writes leaves nothing the next run of the folder does not remove
    tmp = begin_scratch(scratch_name(dest.parent, prefix, suffix))
    try:
        with open(tmp, "xb"):
            pass
        yield tmp
        # the permissions of an ordinary new file (umask), set after the writer is done: some
        # writers (safetensors) replace the file by one of their own
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        if guard is not None:
            guard.after_write(dest, tmp)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        end_scratch(tmp)  # gone already when it replaced ``dest``
    if guard is None:  # outside a run folder: the leftovers of earlier killed writes of ``dest``
        for stale in dest.parent.glob(glob.escape(prefix) + "?" * 8 + glob.escape(suffix)):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | os.PathLike[str], array: "np.ndarray") -> None:
    """Write ``array`` as a ``.npy`` file at ``path`` atomically (no pickled objects)."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array), allow_pickle=False)
