"""Atomic file output: a crash at any instant leaves either the old file or the new one.

Write to a temporary file in the destination's folder, flush and fsync it, then
``os.replace`` it over the destination (atomic on POSIX and Windows), and fsync the folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:
    import numpy as np

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_save_npy",
           "set_write_observer", "note_written"]

#: Called with the destination of every atomic write, before the file is created (the run
#: folder's record of the files fhcnn wrote, :class:`fhcnn.rundir.RunFolder`); called with
#: several paths at once by :func:`note_written`.
_observer: Callable[..., None] | None = None


def set_write_observer(fn: Callable[..., None] | None) -> None:
    """Call ``fn(destination)`` before every atomic write (``None``: stop)."""
    global _observer
    _observer = fn


def note_written(*paths: str | os.PathLike[str]) -> None:
    """Tell the observer about files fhcnn writes by other means than :func:`atomic_path`
    (e.g. the chunk files of a zarr folder, renamed into place as a whole), in one call."""
    if _observer is not None and paths:
        _observer(*(Path(p) for p in paths))


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
    if _observer is not None:
        _observer(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp" + dest.suffix, dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # mkstemp creates the file 0600; give the result the permissions of an ordinary new file
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


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
