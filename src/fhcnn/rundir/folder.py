"""The run folder: its record ``run.json`` and the guard of every file operation in it.

:class:`RunFolder` reads and writes the record (every file fhcnn wrote there with its size and
sha256, every folder it created, the scratch it is making), tells which files are fhcnn's own,
checks every write, folder and removal of :mod:`fhcnn.atomic` while the run is active, and holds
the folder's lock (:func:`_lock`). :attr:`RunFolder.active` and :attr:`RunFolder.joined` are the
process-wide state of the run this process takes part in.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from .. import atomic
from ..errors import InputError

#: The record of a run folder.
RUN_FILE = "run.json"
#: Format of the record: 1 lists names only; 2 adds ``written`` (size, sha256) and ``dirs``.
FORMAT = 2


def _bad_marker(p: Path, why: str) -> InputError:
    return InputError(f"{p} is damaged ({why}; not a run record written by fhcnn): move it away "
                      f"or choose another output folder")


def _read_marker(out: Path) -> dict[str, Any] | None:
    """The parsed ``run.json`` of ``out`` (``None`` without one); every entry type-checked."""
    p = out / RUN_FILE
    if not os.path.lexists(p):
        return None
    if p.is_symlink() or not p.is_file():
        raise _bad_marker(p, "not a plain file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise _bad_marker(p, f"unreadable: {type(e).__name__}") from None
    if not isinstance(data, dict):
        raise _bad_marker(p, "not a JSON object")
    files, written, dirs = data.get("files", []), data.get("written", {}), data.get("dirs", [])
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise _bad_marker(p, "'files' is not a list of names")
    if not isinstance(dirs, list) or not all(isinstance(f, str) for f in dirs):
        raise _bad_marker(p, "'dirs' is not a list of names")
    scratch = data.get("scratch", [])  # removed whole by the next run: only a list of names
    if not isinstance(scratch, list) or not all(isinstance(f, str) for f in scratch):
        raise _bad_marker(p, "'scratch' is not a list of names")
    if not isinstance(written, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("size"), int)
            and isinstance(v.get("sha256"), str) and isinstance(v.get("prev", ""), str)
            for k, v in written.items()):
        raise _bad_marker(p, "'written' is not a table of sizes and hashes")
    for key in ("tool", "config_sha256", "created", "command"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise _bad_marker(p, f"'{key}' is not a string")
    for key in ("inputs", "options"):
        if not isinstance(data.get(key, {}) or {}, dict):
            raise _bad_marker(p, f"'{key}' is not a table")
    if not all(isinstance(v, dict) for v in (data.get("inputs") or {}).values()):
        raise _bad_marker(p, "'inputs' holds entries that are not tables")
    return data


def _inside(rel: str) -> bool:
    """``rel`` names a path inside the folder (relative, no ``..``, not empty)."""
    q = PurePosixPath(rel)
    return bool(rel) and not q.is_absolute() and ".." not in q.parts and "." not in rel.split("/")


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _link_error(p: Path) -> InputError:
    return InputError(f"{p} is a link; fhcnn never writes through a link it did not create: "
                      f"remove the link or choose another output folder")


def _foreign_folder_error(p: Path) -> InputError:
    return InputError(f"{p} is a folder fhcnn did not create; it never writes into one: move it "
                      f"away or choose another output folder")


class RunFolder:
    """The record (``run.json``) of one run folder, and the guard of every file operation in it.

    The record lists every file fhcnn wrote (``files``), the size and sha256 of each
    (``written``; both are saved just before the finished temporary file replaces the file, and
    ``prev`` keeps the hash of the content it replaces, so a crash in between leaves a file that
    matches one of them), the folders fhcnn created (``dirs``, saved before each is made) and the
temporary files and folders it is making (``scratch``: saved before each is made, dropped once
it is gone; what a killed run left there is removed by the next run of the folder). A file
    is fhcnn's own only while it still matches its record. A record without ``written``
    (``format`` 1, written by an older fhcnn) lists names only: its listed plain files are
    taken as fhcnn's, and the folders holding them as folders fhcnn created.

    While active (:meth:`activate`), :mod:`fhcnn.atomic` asks it before every write, folder and
    removal inside the folder (:class:`fhcnn.atomic.WriteGuard`).
    """

    active: "RunFolder | None" = None
    #: on a process of a ``torchrun`` launch other than rank 0: the folder of the run it takes
    #: part in (rank 0 holds it, as :attr:`active`), for the lines that name where to go on from
    joined: Path | None = None

    def __init__(self, root: Path, marker: dict[str, Any], created: bool = False,
                 alias: Path | None = None) -> None:
        self.root = root
        self.marker = marker
        self.created = created  # the folder did not exist before this run
        self.legacy = "written" not in marker and bool(marker.get("files"))
        self.files: set[str] = set(marker.get("files", []))
        self.written: dict[str, dict[str, Any]] = dict(marker.get("written", {}))
        self.dirs: set[str] = set(marker.get("dirs", []))
        self.scratch: set[str] = set(marker.get("scratch", []))
        if self.legacy:  # folders holding the listed files count as fhcnn's
            self.dirs |= {q.as_posix() for f in self.files if _inside(f)
                          for q in PurePosixPath(f).parents if q.as_posix() != "."}
        self._bases = [root] + ([alias] if alias is not None and alias != root else [])
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._lock_fd: int | None = None
        #: the inputs this run reads from their files (role -> (path or paths, record at the start),
        #: see :func:`check_inputs_unchanged`); an input copied into the run folder leaves it
        self.read_inputs: dict[str, tuple[Any, dict[str, Any]]] = {}

    # ------------------------------------------------------------------ the record
    def _save(self) -> None:
        self.marker.pop("files", None)
        self.marker.update(format=FORMAT, files=sorted(self.files),
                           written={k: self.written[k] for k in sorted(self.written)},
                           dirs=sorted(self.dirs), scratch=sorted(self.scratch))
        with atomic.unguarded():  # the record itself is not a recorded output
            atomic.atomic_write_text(self.root / RUN_FILE, json.dumps(self.marker, indent=1) + "\n")

    def _forget(self, rel: str) -> None:
        self.files.discard(rel)
        self.written.pop(rel, None)
        self._seen.pop(rel, None)

    def _rel(self, path: str | os.PathLike[str]) -> str | None:
        """``path`` relative to the folder ("" for the folder itself), or ``None`` outside it.
        Links inside the folder are not followed (a path through one is still "inside")."""
        a = Path(os.path.abspath(path))
        for base in self._bases:
            if a == base:
                return ""
            if a.is_relative_to(base):
                return a.relative_to(base).as_posix()
        try:
            parent = a.parent.resolve()
        except (OSError, RuntimeError):
            return None
        if parent == self.root or parent.is_relative_to(self.root):
            return (parent / a.name).relative_to(self.root).as_posix()
        return None

    def _chain_ok(self, rel: str) -> bool:
        """Every folder between the run folder and ``rel`` is a real folder (no link)."""
        cur = self.root
        for part in PurePosixPath(rel).parts[:-1]:
            cur = cur / part
            try:
                if not stat.S_ISDIR(os.lstat(cur).st_mode):
                    return False
            except OSError:
                return False
        return True

    def own(self, rel: str) -> bool:
        """``rel`` is a plain file fhcnn wrote and nobody changed since (by size and sha256)."""
        if not _inside(rel) or rel == RUN_FILE:
            return False
        p = self.root / rel
        try:
            st = os.lstat(p)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or not self._chain_ok(rel):
            return False
        if self.legacy:
            return rel in self.files
        entry = self.written.get(rel)
        if entry is None:
            return False
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        if self._seen.get(rel) == key:
            return True
        if st.st_size != entry["size"] and "prev" not in entry:
            return False
        if _sha256(p) in (entry["sha256"], entry.get("prev")):
            self._seen[rel] = key
            return True
        return False

    def adopt_legacy(self) -> None:
        """Turn a format-1 record (names only) into a full one: each listed plain file is
        recorded with its current size and hash (an older fhcnn's record is trusted)."""
        if not self.legacy:
            return
        for rel in sorted(self.files):
            if self.own(rel):
                p = self.root / rel
                self.written[rel] = {"size": p.stat().st_size, "sha256": _sha256(p)}
        self.dirs = {d for d in self.dirs if (self.root / d).is_dir() and not (self.root / d).is_symlink()}
        self.legacy = False

    # ------------------------------------------------------------------ the guard
    def _ensure_dirs(self, rel_dir: str, create: bool = True) -> None:
        """Every folder of ``rel_dir`` (relative) is a real folder fhcnn created; the missing
        ones are recorded, then created (``create``)."""
        cur, so_far = self.root, ""
        for part in PurePosixPath(rel_dir).parts:
            cur, so_far = cur / part, f"{so_far}/{part}" if so_far else part
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                if create:
                    if so_far not in self.dirs:
                        self.dirs.add(so_far)
                        self._save()  # recorded before it exists
                    cur.mkdir(exist_ok=True)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise _link_error(cur)
            if not stat.S_ISDIR(st.st_mode):
                raise InputError(f"{cur} is a file where fhcnn needs a folder; move it away or "
                                 f"choose another output folder")
            if so_far not in self.dirs:
                raise _foreign_folder_error(cur)

    def check_target(self, dest: str | os.PathLike[str], create: bool = False) -> str | None:
        """Raise unless fhcnn may write ``dest``: no link on the way, only folders fhcnn created,
        and an existing file only if it is fhcnn's own, unchanged. Returns its name in the
        folder (``None`` outside)."""
        rel = self._rel(dest)
        if rel is None:
            return None
        p = self.root / rel
        if not _inside(rel) or rel == RUN_FILE:
            raise InputError(f"{p}: fhcnn never writes over a run folder or its record")
        self._ensure_dirs(PurePosixPath(rel).parent.as_posix() if "/" in rel else "", create)
        if os.path.lexists(p):
            if p.is_symlink():
                raise _link_error(p)
            if not self.own(rel):
                raise InputError(f"{p} exists and was not written by this run of fhcnn (or was "
                                 f"changed since); it is never replaced: move it away or choose "
                                 f"another output folder")
        return rel

    def before_write(self, dest: Path) -> None:
        # nothing is recorded yet: until the rename only a temporary file exists; the name, size
        # and hash are saved together just before it (after_write)
        self.check_target(dest, create=True)

    def after_write(self, dest: Path, tmp: Path) -> None:
        rel = self._rel(dest)
        if rel is None:
            return
        st = os.stat(tmp)
        entry: dict[str, Any] = {"size": st.st_size, "sha256": _sha256(tmp)}
        old = self.written.get(rel)
        if old is not None and old["sha256"] != entry["sha256"]:
            entry["prev"] = old["sha256"]
        self.written[rel] = entry
        self.files.add(rel)
        self._seen[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)  # kept by os.replace
        self._save()

    def before_append(self, dest: Path, data: bytes) -> None:
        rel = self.check_target(dest, create=True)
        if rel is None:
            return
        p = self.root / rel
        h = hashlib.sha256()
        size = 0
        if p.exists():
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
                    size += len(chunk)
        old = self.written.get(rel)
        h.update(data)
        entry: dict[str, Any] = {"size": size + len(data), "sha256": h.hexdigest()}
        if old is not None and size:
            entry["prev"] = old["sha256"]
        self.written[rel] = entry
        self.files.add(rel)
        self._seen.pop(rel, None)
        self._save()

    def record(self, paths: list[Path], sources: list[Path] | None = None) -> None:
        for i, path in enumerate(paths):
            rel = self._rel(path)
            if rel is None:
                continue
            if not _inside(rel) or rel == RUN_FILE or not self._chain_ok(rel) or Path(path).is_symlink():
                raise InputError(f"{path}: fhcnn records only plain files it wrote inside its run folder")
            content = sources[i] if sources is not None else self.root / rel  # moved in after
            st = os.stat(content)  # the move (os.replace) keeps its size, mtime and inode
            self.written[rel] = {"size": st.st_size, "sha256": _sha256(content)}
            self.files.add(rel)
            self._seen[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
        self._save()

    def begin_scratch(self, path: Path) -> None:
        rel = self._rel(path)
        if rel is None:
            return
        if rel in self.scratch:
            self.drop_scratch(rel)  # what a killed run left under this name
        self.check_target(path, create=True)
        self.scratch.add(rel)
        self._save()

    def end_scratch(self, path: Path) -> None:
        rel = self._rel(path)
        if rel is not None and rel in self.scratch:
            self.scratch.discard(rel)
            self._save()

    def drop_scratch(self, rel: str) -> None:
        """Remove the recorded scratch ``rel`` (a file, or a folder with what is inside), where a
        killed run left it, and forget it (saved with the next change of the record). A link in
        its place, or on the way to it, is not fhcnn's: left alone."""
        p = self.root / rel
        if _inside(rel) and rel != RUN_FILE and self._chain_ok(rel) and not p.is_symlink():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        self.scratch.discard(rel)

    def owns_tree(self, folder: Path) -> bool:
        """``folder`` is a real folder inside the run holding at least one file, every file below
        it is fhcnn's own (:meth:`own`) and every file the record lists below it is there."""
        rel = self._rel(folder)
        if not rel or folder.is_symlink() or not folder.is_dir():
            return False
        found = {self._rel(p) for p in folder.rglob("*") if not p.is_dir()}
        recorded = {f for f in self.files if f.startswith(rel + "/")}
        return bool(found) and found == recorded and all(f is not None and self.own(f) for f in found)

    def make_dir(self, folder: Path) -> bool:
        rel = self._rel(folder)
        if rel is None:
            return False
        if rel:
            self._ensure_dirs(rel)
        return True

    def remove(self, path: Path) -> bool:
        rel = self._rel(path)
        if rel is None:
            return False
        p = self.root / rel if rel else self.root
        if p.is_symlink() or not p.exists():
            return True  # fhcnn never makes links: a link is not its own
        if p.is_file():
            if self.own(rel):
                p.unlink()
                self._forget(rel)
                self._save()
            return True
        if rel and rel not in self.dirs:
            return True  # a folder fhcnn did not create: untouched
        self._remove_tree(p)
        self._save()
        return True

    def _remove_tree(self, p: Path) -> None:
        for dirpath, _, filenames in os.walk(p, topdown=False, followlinks=False):
            d = Path(dirpath)
            for name in filenames:
                rel = (d / name).relative_to(self.root).as_posix()
                if self.own(rel):
                    (d / name).unlink()
                    self._forget(rel)
            rel_d = d.relative_to(self.root).as_posix()
            if d != self.root and rel_d in self.dirs:
                try:
                    d.rmdir()  # only once empty
                    self.dirs.discard(rel_d)
                except OSError:
                    pass

    # ------------------------------------------------------------------ life cycle
    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> "RunFolder | None":
        """The run folder ``root`` if it carries a record, else ``None``."""
        r = resolve_path(Path(root), str(root))
        marker = _read_marker(r) if r.is_dir() else None
        return cls(r, marker, alias=Path(os.path.abspath(root))) if marker is not None else None

    def lock(self, shown: str | os.PathLike[str] | None = None) -> None:
        """Hold the folder's lock until :meth:`deactivate` (or the process ends): a second run
        into the same folder is refused meanwhile (POSIX ``flock``; where the file system
        offers no locks, nothing is locked)."""
        if self._lock_fd is None:
            self._lock_fd = _lock(self.root, shown or self.root)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def activate(self) -> None:
        RunFolder.active = self
        atomic.set_write_guard(self)

    @staticmethod
    def abandon() -> None:
        """A run refused after its folder was made (e.g. a scene too small for the network,
        found by the first training step): remove the folder if this run created it (only the
        files fhcnn wrote; a folder that holds anything else stays)."""
        run = RunFolder.active
        if run is not None and run.created:
            with atomic.unguarded():
                for rel in sorted(run.scratch):
                    run.drop_scratch(rel)
                run._remove_tree(run.root)
                try:
                    (run.root / RUN_FILE).unlink()
                    run.root.rmdir()
                except OSError:
                    pass
        RunFolder.deactivate()

    @staticmethod
    def deactivate() -> None:
        run = RunFolder.active
        RunFolder.active = RunFolder.joined = None
        atomic.set_write_guard(None)
        if run is not None:
            run.unlock()


def _lock(folder: Path, shown: str | os.PathLike[str]) -> int | None:
    """An open descriptor of ``folder`` holding its exclusive ``flock``; ``InputError`` when
    another process holds it; ``None`` where locks are not available."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InputError(f"output folder {shown} is in use by another fhcnn run right now (it "
                         f"holds the folder's lock); wait for it to end or choose another "
                         f"output folder") from None
    except OSError:  # no locks on this file system
        os.close(fd)
        return None
    return fd


def resolve_path(p: Path, shown: str) -> Path:
    """``p`` made absolute with links resolved; a link loop or an unusable name is one line."""
    try:
        return p.expanduser().resolve()
    except (OSError, RuntimeError) as e:
        why = "a link loop" if "loop" in str(e).lower() or getattr(e, "errno", None) == errno.ELOOP \
            else (getattr(e, "strerror", None) or str(e))
        raise InputError(f"{shown}: cannot use this path ({why})") from None
