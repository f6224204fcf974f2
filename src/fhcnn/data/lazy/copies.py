"""On-disk copies of array-likes slow to read by window.

* :func:`copy_to_zarr`: a chunked zarr copy made in one streamed pass (through a raw staging
  file, its disk space reserved first, where a slab one chunk thick is over the budget).
* :class:`StagedCopy`: such a copy in a private folder of the system's temporary folder, read
  before a run folder exists and adopted by the run's own copy; :func:`staged_copies` finds
  them behind views. Each private folder holds a lock while its process lives, so
  :func:`remove_stale_staged` removes only those of processes that ended.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ... import atomic
from ...errors import InputError
from .arrays import ArrayLike, Unmapped, release_pages
from .slabs import SLAB_BYTES, chunk_boxes, iter_slabs, storage_order


def copy_to_zarr(array: ArrayLike, path: str | Path, chunks: Sequence[int], axis: int | Sequence[int] = 0,
                 max_bytes: int = SLAB_BYTES, dtype: Any = None) -> Any:
    """Copy ``array`` into a new zarr array at ``path`` chunked ``chunks`` (each chunk written
    once, whole), reading the source once, in storage order along ``axis`` (the axis the
    source reads fastest by slab: the last one of a NIfTI file, the first of a TIFF stack or a
    video; or the whole order, slowest axis first, where the source is a view with its axes
    moved: :func:`storage_order`), in boxes of at most ``max_bytes``. Returns the zarr array
    (opened read-only).

    Where a slab one chunk thick along ``axis`` fits in ``max_bytes`` the copy is one pass of
    such slabs. Where it does not (large slices, or fewer slices than a chunk) the source is read
    in the boxes of :func:`iter_slabs` into a raw staging file beside ``path``
    (``<path>.staging``, in that storage order: disk for the whole volume uncompressed, for the
    length of the copy; its space is reserved first, so a full disk is an :class:`InputError`
    naming it, not a crash of the process in the middle of the copy), copied from there box by
    box of whole chunks (:func:`chunk_boxes`), and the staging file removed. The copy's chunks
    are the same either way, so what reads it later costs the same; the staging costs a second
    write and read of the volume (in the page cache, not this process's memory:
    :func:`release_pages` after every box).
    """
    import zarr

    shape = tuple(int(n) for n in array.shape)
    dt = np.dtype(dtype if dtype is not None else array.dtype)
    chunks = tuple(min(int(c), n) for c, n in zip(chunks, shape))
    # the storage order of iter_slabs and chunk_boxes: their boxes are contiguous runs of it
    layout = storage_order(shape, axis)
    slow = layout[0]
    out = zarr.open_array(str(path), mode="w", shape=shape, chunks=chunks, dtype=dt)
    if dt.itemsize * math.prod(shape) // max(shape[slow], 1) * chunks[slow] <= max_bytes:
        for box in chunk_boxes(shape, chunks, dt.itemsize, max_bytes, layout):
            out[box] = np.asarray(array[box], dtype=dt)
        return zarr.open_array(str(path), mode="r")
    back = tuple(int(a) for a in np.argsort(layout))
    with atomic.scratch(f"{path}.staging") as staging:  # in a run folder: recorded while it exists
        _reserve(staging, dt.itemsize * math.prod(shape))
        raw = np.memmap(staging, dtype=dt, mode="r+", shape=tuple(shape[a] for a in layout))
        view = raw.transpose(back)
        for box in iter_slabs(shape, dt.itemsize, max_bytes, layout):
            view[box] = np.asarray(array[box], dtype=dt)
            release_pages(view)
        del raw, view
        stage = Unmapped(np.memmap(staging, dtype=dt, mode="r", shape=tuple(shape[a] for a in layout)).transpose(back))
        for box in chunk_boxes(shape, chunks, dt.itemsize, max_bytes, layout):
            out[box] = stage[box]
        del stage
    return zarr.open_array(str(path), mode="r")


def _reserve(path: Path, size: int) -> None:
    """Create ``path`` with ``size`` bytes of disk reserved (``posix_fallocate``): writing a
    memory map of a sparse file on a full disk kills the process with ``SIGBUS`` (no error,
    no clean-up), so a disk without room for it is refused here, in one line naming it."""
    with open(path, "wb") as f:
        if size <= 0:
            return
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except AttributeError:  # no posix_fallocate (macOS): a sparse file, unreserved
            f.truncate(size)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                f.truncate(size)  # a file system without fallocate: a sparse file, unreserved
                return
            free = shutil.disk_usage(path.parent).free
            raise InputError(f"no room for the staging file {path} of the one-time copy: it needs "
                             f"{size / 2**30:.2f} GiB (the volume uncompressed, besides the copy), "
                             f"{free / 2**30:.2f} GiB are free there; free space on that disk "
                             f"({e.strerror or e})") from None


#: Name of a :class:`StagedCopy`'s private folder (+ random characters), and of the lock file
#: its process holds there while it lives.
STAGED_PREFIX, STAGED_LOCK = "fhcnn-staged-", "owner.lock"


def _hold(folder: Path) -> int | None:
    """An open descriptor holding the exclusive ``flock`` of ``folder/STAGED_LOCK``, which marks
    ``folder`` as this process's for as long as the descriptor is open: the kernel releases the
    lock when the process ends, however it ends (SIGKILL too). The file is locked under a
    temporary name first and then renamed, so it never exists unlocked while its process lives.
    ``None`` where there are no locks (the folder is then never taken for a stale one)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    tmp = folder / f".{STAGED_LOCK}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # no locks on this file system
        os.close(fd)
        tmp.unlink()
        return None
    os.rename(tmp, folder / STAGED_LOCK)
    return fd


def _release(folder: str, fd: int | None) -> None:
    """Remove a private folder, then let go of its lock."""
    shutil.rmtree(folder, True)
    if fd is not None:
        os.close(fd)


def remove_stale_staged(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the private folders of :class:`StagedCopy` that processes which ended without
    removing them (killed, SIGKILL) left in ``root`` (default the system's temporary folder,
    ``TMPDIR``); returns them. A folder goes only when fhcnn can prove it is such a leftover:
    named ``fhcnn-staged-*``, a real folder (no link) of this user, holding the lock file
    :data:`STAGED_LOCK`, and that lock is free (a living process holds the lock of each of its
    folders; the kernel releases it when the process ends). Anything else stays: a folder
    without the lock file, another user's, a living process's."""
    try:
        import fcntl
    except ImportError:  # not POSIX: nothing can be proved
        return []
    import glob
    import tempfile

    removed = []
    for folder in sorted(Path(root if root is not None else tempfile.gettempdir()).glob(
            glob.escape(STAGED_PREFIX) + "*")):
        try:
            st = os.lstat(folder)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            fd = os.open(folder / STAGED_LOCK, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # still the folder's lock file (not one another cleaner removed meanwhile)
            if os.fstat(fd).st_ino == os.lstat(folder / STAGED_LOCK).st_ino:
                shutil.rmtree(folder, True)
                removed.append(folder)
        except OSError:  # held: its process lives (or no locks here)
            pass
        finally:
            os.close(fd)
    return removed


class StagedCopy:
    """An array-like that is slow to read by window (a compressed file decoded page by page),
    copied once, in one streamed pass of slabs along ``axis`` (:func:`copy_to_zarr`), into a
    zarr array in a private folder of the system's temporary folder (``TMPDIR``,
    ``fhcnn-staged-*``), and read from that copy: before a run folder exists, every check and
    statistic reads it fast. The run then makes its own copy (in the run folder, listed in
    ``run.json``) and adopts it (:meth:`adopt`); the private folder is removed then, or when this
    object is collected, or when the process ends. A process killed before that leaves its
    folder: the next :class:`StagedCopy` (of any fhcnn process of the same user) first removes
    such folders of processes that have ended (:func:`remove_stale_staged`; the process holds a
    lock in its folder while it lives).
    """

    def __init__(self, source: ArrayLike, axis: int | Sequence[int], chunks: Sequence[int], dtype: Any = None) -> None:
        import tempfile
        import weakref

        remove_stale_staged()
        folder = tempfile.mkdtemp(prefix=STAGED_PREFIX)
        try:
            fd = _hold(Path(folder))
        except BaseException:
            shutil.rmtree(folder, True)
            raise
        self._remove = weakref.finalize(self, _release, folder, fd)
        self.folder = Path(folder)
        self.array: Any = copy_to_zarr(source, self.folder / "copy.zarr", chunks, axis=axis, dtype=dtype)
        self.shape, self.dtype, self.ndim = tuple(self.array.shape), np.dtype(self.array.dtype), self.array.ndim

    def adopt(self, copy: ArrayLike) -> None:
        """Read ``copy`` (the same values) from now on and remove the private folder."""
        if tuple(copy.shape) != self.shape:
            raise ValueError(f"the adopted copy is {tuple(copy.shape)}, not {self.shape}")
        self.array = copy
        self._remove()

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.array[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def staged_copies(*arrays: Any) -> list[StagedCopy]:
    """The distinct :class:`StagedCopy` objects behind ``arrays`` (found through the ``.array``
    of views such as :class:`ChannelView` and :class:`MovedAxes`)."""
    found: dict[int, StagedCopy] = {}
    for a in arrays:
        while a is not None:
            if isinstance(a, StagedCopy):
                found.setdefault(id(a), a)
                break
            a = getattr(a, "array", None)
    return list(found.values())
