"""Output folders of runs: which folder may be written, and what may be replaced there.

A run folder carries ``run.json``, written by fhcnn: the tool, the version, the command, the
fingerprints of the inputs, a hash of the resolved config, every file fhcnn wrote there with
its size and sha256 (recorded *before* the finished file takes its name, so the record survives
a crash), every folder it created, and the scratch it is making (temporary files and folders,
recorded before they exist and forgotten once gone). Only a folder with that record counts as
a run; ``--overwrite`` removes only the listed files that still match their record and the
scratch a killed run left (``--resume`` too removes that scratch); ``--resume`` is refused
when the inputs or the config differ from the recorded ones. While a run writes, the folder is
locked and every write goes through its :class:`RunFolder`: never through a link, never into a
folder fhcnn did not create, never over a file that is not fhcnn's own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shlex
import shutil
import stat
import sys
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from . import atomic
from .errors import InputError
from .training.distributed import is_main_process
from .training.trainer import TrainingError

if TYPE_CHECKING:
    from .training.config import TrainConfig
    from .training.distributed import DistInfo

__all__ = ["prepare_output_dir", "check_output_file", "RunFolder", "RUN_FILE", "OUTPUTS", "resolve_path",
           "fingerprint", "config_digest", "copy_input", "check_own_checkpoint", "stopped_run_line",
           "unwritable_line", "UNWRITABLE_ERRNOS"]

#: The record of a run folder.
RUN_FILE = "run.json"
#: Format of the record: 1 lists names only; 2 adds ``written`` (size, sha256) and ``dirs``.
FORMAT = 2

_COMMON = ("config.yaml", "metrics.jsonl", "checkpoints", "metrics.json", "model.safetensors",
           "figure.png")
#: Top-level names each command writes into its run folder (besides ``run.json``): a folder
#: without the marker is never written over where one of these exists.
OUTPUTS: dict[str, tuple[str, ...]] = {
    "segment": _COMMON + ("prediction.npy", "masks", "overlay.gif", "labelled_frames.png",
                          "training_curves.png", "inputs"),
    "change": _COMMON + ("prediction.npy", "prediction.png", "change_probability.npy",
                         "labels_train.npy", "labels_scored.npy", "inputs"),
    "volume": _COMMON + ("prediction.npy", "prediction.nii.gz", "prediction.zarr", "probabilities.zarr",
                         "inputs"),
    "vae": _COMMON + ("samples.png", "reconstructions.png", "interpolation.png", "normality"),
}
#: Files up to this size are fingerprinted by their sha256, larger ones by size and mtime.
HASH_LIMIT = 64 * 2**20


def _file_print(p: Path) -> str:
    st = p.stat()
    if st.st_size <= HASH_LIMIT:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return f"{st.st_size}:sha256:{h.hexdigest()}"
    return f"{st.st_size}:mtime:{st.st_mtime_ns}"


def fingerprint(path: str | os.PathLike[str]) -> str:
    """A fingerprint of an input file or folder (every file below it, by relative name):
    size and sha256 of a file up to ``HASH_LIMIT`` bytes (of every file of a folder whose
    files add up to at most that), else size and mtime."""
    p = Path(path).expanduser()
    if p.is_file():
        return _file_print(p)
    if p.is_dir():
        files = sorted(q for q in p.rglob("*") if q.is_file())
        small = sum(f.stat().st_size for f in files) <= HASH_LIMIT  # else size and mtime per file
        h = hashlib.sha256()
        for f in files:
            st = f.stat()
            what = _file_print(f) if small else f"{st.st_size}:mtime:{st.st_mtime_ns}"
            h.update(f"{f.relative_to(p).as_posix()}={what}\n".encode())
        return f"dir:sha256:{h.hexdigest()}"
    return "missing"


def by_time(path: str | os.PathLike[str]) -> bool:
    """Whether :func:`fingerprint` of ``path`` holds modification times (a file, or the files of
    a folder, over ``HASH_LIMIT`` bytes): then it differs between identical copies."""
    p = Path(path).expanduser()
    if p.is_file():
        return p.stat().st_size > HASH_LIMIT
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) > HASH_LIMIT
    return False


def content_digest(path: str | os.PathLike[str]) -> str:
    """The sha256 of everything an input holds (of a folder, its files by relative name), read
    whole: unlike :func:`fingerprint` it does not depend on where and when the files were written,
    so another copy on another machine's disk has the same one."""
    p = Path(path).expanduser()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p] if p.is_file() else []
    h = hashlib.sha256()
    for f in files:
        one = hashlib.sha256()
        with open(f, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                one.update(chunk)
        h.update(f"{f.relative_to(p).as_posix() if p.is_dir() else ''}={one.hexdigest()}\n".encode())
    return f"sha256:{h.hexdigest()}" if files else "missing"


#: Config keys that say where and how a run computes, not what: left out of the run's identity
#: (``config_digest``), so ``--resume`` may change them. ``parallel`` (the split of the volume
#: over processes) changes the result only by float rounding: checkpoints hold the unsplit
#: model's state (``docs/spatial.md``).
LAYOUT_KEYS = ("threads", "parallel", "train.device", "train.threads", "train.peer_timeout")


def config_digest(cfg: Any) -> str:
    """sha256 of the resolved config, without the keys of :data:`LAYOUT_KEYS` (the device,
    the CPU threads, the split over processes and how long to wait for them)."""
    from .config import config_to_dict

    d = config_to_dict(cfg) if not isinstance(cfg, Mapping) else dict(cfg)
    d = json.loads(json.dumps(d, default=str))
    for key in LAYOUT_KEYS:
        *parents, name = key.split(".")
        section = d
        for part in parents:
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict):
            section.pop(name, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _run_digest(cfg: Any) -> tuple[str, set[str]]:
    """``(digest recorded in run.json, digests a recorded one may equal)``: the config without
    ``train.threads`` (a thread count never changes the result), and, for run folders written
    before that rule, the digest with the threads in (as given, and unset)."""
    from .config import config_to_dict

    d = config_to_dict(cfg) if not isinstance(cfg, Mapping) else dict(cfg)
    d = json.loads(json.dumps(d, default=str))
    train = d.get("train") if isinstance(d.get("train"), dict) else None
    accepted = {config_digest(json.loads(json.dumps(d)))}
    if train is not None:
        train["threads"] = None
        accepted.add(config_digest(json.loads(json.dumps(d))))
        train.pop("threads")
    digest = config_digest(d)
    return digest, accepted | {digest}


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


def _check_name(path: str | os.PathLike[str], what: str) -> Path:
    """Refuse an empty path, a name longer than the file system allows, and a link loop."""
    text = os.fspath(path)
    if not str(text).strip():
        raise InputError(f"{what} is empty; give a folder or file name")
    p = Path(text).expanduser()
    limit = 255
    for q in p.absolute().parents:  # the file system of the nearest existing folder decides
        try:
            if q.is_dir():
                limit = os.pathconf(q, "PC_NAME_MAX")
                break
        except (OSError, ValueError, AttributeError):
            continue
    for part in p.parts:
        if len(os.fsencode(part)) > limit:
            raise InputError(f"{what} {str(text)[:60]}...: the name {part[:40]}... is "
                             f"{len(os.fsencode(part))} bytes long; this file system allows {limit}")
    resolve_path(p, f"{what} {text}")
    return p


def _check_inputs(out_path: Path, out_abs: Path, inputs: Iterable[Any]) -> None:
    for inp in inputs:
        if inp is None:
            continue
        ip = resolve_path(Path(inp), str(inp))
        folder = ip if ip.is_dir() else ip.parent
        if ip.is_dir() and out_abs.is_relative_to(ip):
            raise InputError(f"output {out_path} is inside the input folder {inp}; "
                             f"choose an output outside it (inputs are never written to)")
        if not ip.is_dir() and out_abs == folder:
            raise InputError(f"output folder {out_path} is the folder of the input file {inp}; "
                             f"choose a separate output folder (inputs are never written to)")
        if out_abs == ip:
            raise InputError(f"output {out_path} is the input {inp}")
        if ip.is_relative_to(out_abs):
            raise InputError(f"input {inp} lies inside the output folder {out_path}; "
                             f"choose another output folder")


def _role_paths(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _role_record(value: Any) -> dict[str, Any]:
    """``{"path", "fingerprint"}`` of an input; a role of several files (an ENVI header and its
    raw data) adds ``"also": {path: fingerprint}`` for the others."""
    first, *rest = _role_paths(value)
    out: dict[str, Any] = {"path": str(first), "fingerprint": fingerprint(first)}
    if rest:
        out["also"] = {str(p): fingerprint(p) for p in rest}
    return out


def _print_of(record: Mapping[str, Any]) -> tuple[Any, Any]:
    """What identifies an input's contents in its record as read now: its fingerprints."""
    return record.get("fingerprint"), record.get("also")


def _add_contents(records: Mapping[str, dict[str, Any]], roles: Mapping[str, Any]) -> None:
    """Add ``"content"`` (the :func:`content_digest` of each of its files, in order) to the
    record of every input whose fingerprint holds modification times (:func:`by_time`), so that
    ``--resume`` accepts an identical copy of it, made later or elsewhere (read whole once)."""
    for role, record in records.items():
        paths = _role_paths(roles[role])
        if "content" not in record and any(by_time(q) for q in paths):
            record["content"] = [content_digest(q) for q in paths]


def _same_contents(old: Mapping[str, Any], new: dict[str, Any], paths: Sequence[Any]) -> bool:
    """Whether an input whose fingerprint differs from the recorded one (another modification
    time, another path) holds the recorded contents: compared by the digests the run recorded
    (``"content"``, read whole now; then kept in ``new``); ``False`` without them."""
    recorded = old.get("content")
    if not isinstance(recorded, list) or len(recorded) != len(paths):
        return False
    new["content"] = new.get("content") or [content_digest(q) for q in paths]
    return bool(new["content"] == recorded)


#: ``OSError`` numbers of a file system that takes no more writes (full, over quota, read-only).
UNWRITABLE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _run_root() -> Path | None:
    """The folder of the run this process takes part in: the active run folder (rank 0, one
    process), or the one rank 0 holds for the run of a ``torchrun`` launch (:attr:`RunFolder.joined`)."""
    run = RunFolder.active
    return run.root if run is not None else RunFolder.joined


def stopped_run_line(what: str, resumable: bool, then: str = "continue") -> str:
    """The one line of a command stopped by ``what`` (``interrupted (SIGINT)``, ...) in the
    run folder of this process's run, if any (:func:`_run_root`):
    :func:`~fhcnn.training.distributed.stopped_line` (the last step, the last intact checkpoint,
    ``then`` ``--resume`` where the command is ``resumable``)."""
    from .training.distributed import stopped_line

    return stopped_line(what, _run_root(), resumable, then)


#: What a run stopped by a file system that takes no more writes advises before ``--resume``.
_MAKE_ROOM = "free space on that file system (or make it writable), then continue"


def unwritable_line(e: OSError, resumable: bool) -> str:
    """The one line of a run whose file system took no more writes (``e.errno`` one of
    :data:`UNWRITABLE_ERRNOS`): what could not be written, and where to go on from once there is
    room (:func:`stopped_run_line`). Under ``torchrun`` the other processes of the run are told
    too (:func:`~fhcnn.training.distributed.tell_others`): the wait for this process that fails
    in each of them, or ``torchrun``'s SIGTERM, is then a line naming this cause and the same
    checkpoint, not a process that merely stopped answering."""
    from .training.distributed import tell_others

    root = _run_root()
    where = f" {e.filename}" if e.filename else f" in {root}" if root is not None else ""
    cause = f"cannot write{where}: {e.strerror or e} ({errno.errorcode.get(e.errno or 0, '')})"
    tell_others(cause, _MAKE_ROOM if resumable else None)
    return f"error: {cause}; " + stopped_run_line("this run stopped", resumable, then=_MAKE_ROOM)


def join_processes(train: TrainConfig) -> DistInfo | None:
    """Under ``torchrun`` (``WORLD_SIZE > 1``) join the process group now, if not yet joined:
    on the device type of ``train.device``, every wait bounded by ``train.peer_timeout``
    (:func:`~fhcnn.training.distributed.init_distributed`). ``None`` for one process."""
    from .training.device import resolve_device
    from .training.distributed import init_distributed

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return init_distributed(resolve_device(train.device).type, float(train.peer_timeout))


def same_inputs_everywhere(roles: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The record (:func:`_role_record`: path and fingerprint) of every input role of ``roles``
    (name -> path, or a list of paths), refused (``InputError`` on every process) when a process of
    the joined process group reads other contents there than rank 0: a file replaced between the
    processes' reads, a path that names another copy on another machine. Each process would train
    on its own data, averaged into one run recorded with rank 0's fingerprints. Without a group
    of several processes: the records, nothing compared."""
    records = {k: _role_record(v) for k, v in roles.items()}
    from .training.distributed import all_gather_objects, world_size

    if world_size() <= 1:
        return records
    everyone = all_gather_objects(records)
    # a fingerprint of a file over HASH_LIMIT holds its modification time, which differs between
    # identical copies on the machines' own disks: where one differs, every process compares
    # what those inputs hold, read whole (each process takes part: the gather is collective)
    differ = sorted(role for role in records if any(
        (theirs.get(role, {}).get("fingerprint"), theirs.get(role, {}).get("also"))
        != (everyone[0][role]["fingerprint"], everyone[0][role].get("also")) for theirs in everyone[1:]))
    if not differ:
        return records
    contents = all_gather_objects({k: [content_digest(p) for p in _role_paths(roles[k])] for k in differ})
    for rank, theirs in enumerate(contents[1:], 1):
        for role, mine in contents[0].items():
            if theirs.get(role) != mine:
                raise InputError(f"{role} {records[role]['path']}: rank {rank} of {len(everyone)} reads other contents "
                                 f"there than rank 0 (the file changed between their reads, or the path names "
                                 f"a copy with other contents on its machine): every process of the run must "
                                 f"read the same contents; give paths on a file system they all share, or "
                                 f"identical copies, unchanged while the run starts")
    return records


class InputsChangedError(TrainingError):
    """An input file changed while the run was reading it (:func:`check_inputs_unchanged`)."""


def _changed_roles(run: RunFolder, roles: Iterable[str] | None = None) -> list[str]:
    return [role for role, (paths, record) in run.read_inputs.items()
            if (roles is None or role in roles) and _print_of(_role_record(paths)) != _print_of(record)]


def _changed_line(run: RunFolder, changed: Sequence[str], when: str) -> str:
    what = ", ".join(f"{role} {run.read_inputs[role][1]['path']}" for role in changed)
    return (f"{what} changed {when} (its contents differ from those recorded when the run started), "
            f"so what the run read of it after the change is not what it started from; keep the inputs "
            f"of a run unchanged until it ends, and run it again with --overwrite")


def check_inputs_unchanged(when: str, collective: bool = False) -> None:
    """Refuse to go on when an input the active run reads from its file (:attr:`RunFolder.
    read_inputs`: memory-mapped, read by window) has other contents than when the run started
    (its fingerprint: sha256 up to ``HASH_LIMIT``, else size and mtime): the model or the
    prediction would mix what it held before and after, recorded as the run of the inputs at
    the start. ``when``: ``"during training"``, ``"during the prediction"``. ``collective``:
    every process of the joined group calls it, and all raise what rank 0 (which holds the run
    folder) found. Without an active run folder nothing is compared.

    Raises:
        InputsChangedError: one line naming the changed inputs (the CLI's exit status 1).
    """
    run = RunFolder.active
    changed = _changed_roles(run) if run is not None else []
    line = _changed_line(run, changed, when) if run is not None and changed else None
    if collective:
        from .training.distributed import broadcast_object, world_size

        if world_size() > 1:
            line = broadcast_object(line)
    if line is not None:
        raise InputsChangedError(line)


def stop_watching_input(role: str) -> None:
    """The active run reads input ``role`` (a role of ``run.json``) from a copy it made
    (:func:`copy_input`) from now on: a change of the file no longer reaches it, so it is
    compared now, once the copy is made, and no longer afterwards. Every process may call it
    (only the main one holds the run folder)."""
    run = RunFolder.active
    if run is not None and role in run.read_inputs:
        if _changed_roles(run, [role]):
            raise InputsChangedError(_changed_line(run, [role], "before the run copied it"))
        del run.read_inputs[role]


#: What a run records beside its command-line options (``run.json``'s ``options``), as named
#: when ``--resume`` finds it changed.
_RECORDED_NOT_OPTIONS = {"arrays": "the arrays read inside the input stores (x.zarr:path, x.h5:path)"}


CONFIG_DIFFERS = "the resolved config (--config/--set) differs"


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], accepted: set[str],
                 roles: Mapping[str, Any] | None = None) -> list[str]:
    """What differs between the recorded run ``old`` and the run ``new`` would be (``run.json``
    records). An input over ``HASH_LIMIT`` whose fingerprint differs (a copy made later, or at
    another path) but that holds the contents the run recorded is the same input (read whole to
    tell; its new record keeps those contents); with the same fingerprint it keeps them too."""
    diff = []
    old_in, new_in = old.get("inputs", {}) or {}, new.get("inputs", {}) or {}
    for role in sorted(set(old_in) | set(new_in)):
        a, b = old_in.get(role), new_in.get(role)
        if a is not None and b is not None and "content" in a:
            if _print_of(a) == _print_of(b):
                b.setdefault("content", a["content"])
            elif roles is not None and role in roles and _same_contents(a, b, _role_paths(roles[role])):
                continue
        if a is None or b is None:
            diff.append(f"--{role.replace('_', '-')} {'added' if a is None else 'dropped'}")
        elif a.get("fingerprint") != b.get("fingerprint") and a.get("path") == b.get("path"):
            diff.append(f"{role} ({b.get('path')}) changed since the run (its contents differ from the recorded ones)")
        elif a.get("fingerprint") != b.get("fingerprint"):
            diff.append(f"{role} ({b.get('path')}) is not the recorded one ({a.get('path')})")
        elif isinstance(a.get("also"), dict) and isinstance(b.get("also"), dict) \
                and sorted(map(str, a["also"].values())) != sorted(map(str, b["also"].values())):
            diff.append(f"{role}: the data of {b.get('path')} "
                        f"({', '.join(map(str, b['also']))}) is not the recorded data")
    old_opt, new_opt = old.get("options", {}) or {}, new.get("options", {}) or {}
    for k in sorted(set(old_opt) | set(new_opt)):
        if old_opt.get(k) != new_opt.get(k):
            what = _RECORDED_NOT_OPTIONS.get(k, f"--{k.replace('_', '-')}")
            diff.append(f"{what} {new_opt.get(k)} is not the recorded {old_opt.get(k)}")
    if old.get("config_sha256") != new.get("config_sha256") and old.get("config_sha256") not in accepted:
        diff.append(CONFIG_DIFFERS)
    return diff


def _config_changes(run: "RunFolder", config: Any) -> list[str]:
    """``key: recorded -> new`` for every config value that differs between the run's own
    ``config.yaml`` (only if unchanged since the run wrote it) and ``config`` (a config
    dataclass), the keys of :data:`LAYOUT_KEYS` left out; empty when it cannot tell."""
    from .config import config_to_dict, load_config

    if config is None or not dataclasses.is_dataclass(config) or not run.own("config.yaml"):
        return []
    try:
        old = config_to_dict(load_config(type(config), run.root / "config.yaml"))
    except Exception:  # a config this version no longer reads: the generic line
        return []
    new = json.loads(json.dumps(config_to_dict(config), default=str))
    old = json.loads(json.dumps(old, default=str))
    out: list[str] = []

    def walk(a: Any, b: Any, key: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
        elif a != b and key not in LAYOUT_KEYS:
            out.append(f"{key}: {json.dumps(a)} -> {json.dumps(b)}")

    walk(old, new, "")
    return out


def _plan(out_path: Path, out_abs: Path, new: dict[str, Any], *, tool: str, resume: bool,
          overwrite: bool, names: Sequence[str], config_file: str | os.PathLike[str] | None,
          accepted: set[str], resumable: bool, collect: bool,
          config: Any = None, roles: Mapping[str, Any] | None = None) -> tuple[RunFolder, list[str], list[str]]:
    """Every check of :func:`prepare_output_dir`, reading only: ``(the new run's record, files to
    remove, files kept that fhcnn listed but that changed since)``."""
    alias = Path(os.path.abspath(out_path))
    if out_abs.exists() and not out_abs.is_dir():
        raise InputError(f"output {out_path} exists and is not a folder")
    marker = _read_marker(out_abs) if out_abs.is_dir() else None
    entries = list(os.scandir(out_abs)) if out_abs.is_dir() else []
    flags = "--resume to continue it or --overwrite" if resumable else "--overwrite"
    if marker is not None and marker.get("tool") != tool:
        raise InputError(f"output folder {out_path} holds a run of fhcnn {marker.get('tool') or '(unknown)'}; "
                         f"fhcnn {tool} never writes into another command's run folder: choose "
                         f"another output folder")
    if marker is not None and not (resume or overwrite or collect):
        raise InputError(f"output folder {out_path} already holds a run of fhcnn {tool} "
                         f"({RUN_FILE}); pass {flags} to replace it (only the files fhcnn "
                         f"wrote there, unchanged, are removed)")
    if marker is None and resume and out_abs.is_dir():
        raise InputError(f"--resume: output folder {out_path} holds no fhcnn run to resume "
                         f"(no {RUN_FILE})")
    if marker is None and entries and not overwrite:
        raise InputError(f"output folder {out_path} is not empty and holds no fhcnn run; choose "
                         f"a new or empty folder")
    old = RunFolder(out_abs, marker or {}, alias=alias)
    if resume and marker is not None:
        diff = _differences(marker, new, accepted, roles)
        changes = _config_changes(old, config) if CONFIG_DIFFERS in diff else []
        if changes:  # name the keys
            diff[diff.index(CONFIG_DIFFERS)] = (f"the resolved config (--config/--set) differs: "
                                                f"{', '.join(changes)}")
        if diff:
            raise InputError(f"--resume: {out_path} was run with other inputs or config: "
                             f"{'; '.join(diff)}; resume with the same ones, or start a new run")
    if config_file is not None:
        cf = resolve_path(Path(config_file), str(config_file))
        if cf.is_relative_to(out_abs):
            rel = cf.relative_to(out_abs).as_posix()
            if not (resume and marker is not None and old.own(rel)):
                raise InputError(f"--config {config_file} lies inside the output folder {out_path}, "
                                 f"which this run writes; inputs are never written to: keep "
                                 f"the config outside (or give the run's own config.yaml "
                                 f"with --resume)")
    # what this run writes must be fhcnn's own: no link, no folder or file of anyone else
    under = [n.rstrip("/") for n in names]
    mine = [f for f in old.files if _inside(f) and PurePosixPath(f).parts[0] in under]
    for name in under:
        p = out_abs / name
        if p.is_symlink():
            raise _link_error(out_path / name)
        if not p.exists():
            continue
        if p.is_dir():
            if name not in old.dirs:
                raise InputError(f"{out_path / name} exists and was not written by fhcnn; it is "
                                 f"never replaced or removed: choose another output folder")
            for dirpath, dirnames, filenames in os.walk(p, followlinks=False):
                for n in dirnames + filenames:
                    q = Path(dirpath) / n
                    rel = q.relative_to(out_abs).as_posix()
                    if q.is_symlink() and (rel in old.dirs or rel in old.files):
                        raise _link_error(out_path / rel)
        elif not old.own(name):
            listed = name in old.files
            raise InputError(f"{out_path / name} exists and was "
                             f"{'changed after fhcnn wrote it' if listed else 'not written by fhcnn'}; "
                             f"it is never replaced or removed: move it away or choose another "
                             f"output folder")
        elif collect and not overwrite:
            raise InputError(f"{out_path / name} exists (written by an earlier fhcnn {tool}); "
                             f"pass --overwrite to replace it")
    changed = sorted(f for f in mine if os.path.lexists(out_abs / f) and not old.own(f))
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise InputError(f"{out_path / changed[0]}{more} changed after fhcnn wrote it; it is never "
                         f"replaced or removed: move it away or choose another output folder")
    ck = out_abs / "checkpoints"
    if "checkpoints" in under and ck.is_dir() and not ck.is_symlink():
        for m in sorted(ck.glob("*/manifest.json")):
            if not old.own(m.relative_to(out_abs).as_posix()):
                raise InputError(f"{out_path / 'checkpoints' / m.parent.name} holds a checkpoint "
                                 f"of another run (not written by this run folder's fhcnn); it "
                                 f"is never removed or resumed from: move it away or choose "
                                 f"another output folder")
    # the new record
    run = RunFolder(out_abs, new, alias=alias)
    run.scratch = set(old.scratch)  # removed by prepare_output_dir once every check has passed
    remove: list[str] = []
    kept: list[str] = []
    if marker is not None:
        if resume or collect:
            old.adopt_legacy()
            run.files, run.written, run.dirs = set(old.files), dict(old.written), set(old.dirs)
            run._seen = old._seen
            if resume:
                new["created"] = marker.get("created", new["created"])
        else:
            run.dirs = {d for d in old.dirs if (out_abs / d).is_dir() and not (out_abs / d).is_symlink()}
        if overwrite:
            pool = mine if collect else sorted(old.files)
            remove = [f for f in pool if old.own(f)]
            kept = sorted(f for f in old.files if f not in remove and os.path.lexists(out_abs / f)
                          and (not collect or f in mine) and f != RUN_FILE)
            for f in remove:
                run._forget(f)
    return run, remove, kept


def prepare_output_dir(out: str | os.PathLike[str], resume: bool = False, overwrite: bool = False,
                       inputs: Iterable[str | os.PathLike[str] | None] = (), *,
                       tool: str = "fhcnn", roles: Mapping[str, Any] | None = None,
                       config: Any = None, config_file: str | os.PathLike[str] | None = None,
                       extra: Mapping[str, Any] | None = None,
                       outputs: Sequence[str] | None = None, resumable: bool = True,
                       collect: bool = False, records: Mapping[str, dict[str, Any]] | None = None) -> Path:
    """Check, create and lock the output folder of a run and write its record ``run.json``.

    Refused (``InputError``, before anything in ``out`` is created, changed or removed) when:

    * ``out`` is empty, a name too long for the file system, a link loop, an existing file,
      or holds a damaged ``run.json``;
    * ``out`` holds a run of another command (``tool``): never, with any flag;
    * ``out`` holds a run and neither ``resume`` nor ``overwrite`` is set (``collect``: a
      folder that gathers several runs of ``tool``, e.g. benchmark results, is refused only
      when one of this run's ``outputs`` exists there);
    * ``resume`` and ``out`` holds no run, or the run's inputs (``roles``: name -> path, or a
      list of paths, all fingerprinted) or resolved ``config`` differ from the recorded ones
      (the message names what differs; ``train.threads`` and ``train.device`` never count);
    * ``out`` holds other files and ``overwrite`` is not set; or one of the run's ``outputs``
      there is a link, a folder fhcnn did not create, a file fhcnn did not write, a file it
      wrote but that changed since, or (``checkpoints``) a checkpoint of another run; with
      ``resume`` too;
    * ``out`` is, or lies inside, an input folder; or is the folder holding an input file;
      or an input lies inside ``out``; or the ``config_file`` (``--config FILE``) lies inside
      ``out`` (allowed only to ``--resume`` with the run's own recorded ``config.yaml``);
    * another process holds the folder's lock (a run writing there now).

    ``extra``: other options that define the run (e.g. ``--label-frames``), compared on resume.
    ``resumable``: the command has ``--resume`` (refusals advise it only then).

    With ``overwrite`` only the files listed in ``run.json`` that still match their recorded
    size and sha256 are removed (with ``collect``, only those among this run's ``outputs``);
    every other file stays, and the ones fhcnn listed but that changed since are named in one
    line on stderr. With ``overwrite`` or ``resume`` the scratch the record lists (temporary
    files and folders of a run killed while it made them) is removed. Afterwards, until the run
    ends, every write, folder and removal through
    :mod:`fhcnn.atomic` is checked and recorded (:class:`RunFolder`), and the folder is locked.

    Under multi-process training (``torchrun``: environment ``RANK``) only rank 0 checks and
    creates the folder; the other ranks just return the path (noted as :attr:`RunFolder.joined`).
    With a joined process group every process fingerprints the inputs (rank 0 once its checks of
    them passed), and a process that reads other contents than rank 0 is refused on every
    process (:func:`same_inputs_everywhere`);
    ``records``: what it returned for ``roles`` where the caller compared them already (read and
    compared once, not again here).
    """
    out_path = _check_name(out, "--out")
    roles = {k: v for k, v in (roles or {}).items() if v is not None}
    if roles and getattr(config, "train", None) is not None:
        join_processes(config.train)  # to compare what every process reads
    if not is_main_process():
        if records is None:
            same_inputs_everywhere(roles)  # as rank 0 does once its own checks of the inputs passed
        RunFolder.joined = resolve_path(out_path, str(out_path))
        return out_path
    RunFolder.deactivate()  # one run at a time per process: an earlier one's guard and lock end
    out_abs = resolve_path(out_path, str(out_path))
    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other; choose one")
    _check_inputs(out_path, out_abs, [*inputs, *(p for v in roles.values() for p in _role_paths(v))])
    records = same_inputs_everywhere(roles) if records is None else records
    names = tuple(outputs) if outputs is not None else OUTPUTS.get(tool, _COMMON)
    from . import __version__

    digest, accepted = _run_digest(config) if config is not None else (None, set())
    new = {"format": FORMAT, "tool": tool, "version": __version__,
           "command": " ".join(shlex.quote(a) for a in ["fhcnn", *sys.argv[1:]]),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "inputs": records,
           "config_sha256": digest,
           "options": json.loads(json.dumps(dict(extra or {}), default=str)), "files": []}
    how = dict(tool=tool, resume=resume, overwrite=overwrite, names=names, config_file=config_file,
               accepted=accepted, resumable=resumable, collect=collect, config=config, roles=roles)
    created = False
    if not out_abs.exists():
        _plan(out_path, out_abs, dict(new), **how)  # type: ignore[arg-type]
        try:
            out_abs.mkdir(parents=True)
            created = True
        except FileExistsError:
            pass
        except OSError as e:
            raise InputError(f"cannot create the output folder {out_path}: {e.strerror or e}") from None
    if not out_abs.is_dir():  # before the lock: a file is no run's folder, whoever holds a lock on it
        raise InputError(f"output {out_path} exists and is not a folder")
    fd = _lock(out_abs, out_path)
    try:
        run, remove, kept = _plan(out_path, out_abs, new, **how)  # type: ignore[arg-type]
    except BaseException:
        if fd is not None:
            os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                out_abs.rmdir()
        raise
    run.created, run._lock_fd = created, fd
    for rel in sorted(run.scratch):  # what a killed run was making
        run.drop_scratch(rel)
    for rel in remove:
        (out_abs / rel).unlink()
    # the folders fhcnn made that are empty now: with --overwrite every one (those of outputs
    # the new run no longer writes too, and those a killed run made before any file was moved
    # in); gathering several runs (collect), those that held the removed files
    made = set(run.dirs) if overwrite and not collect else \
        {q.as_posix() for f in remove for q in PurePosixPath(f).parents} & run.dirs
    for d in sorted(made, key=lambda s: s.count("/"), reverse=True):
        if run._chain_ok(d) and not (out_abs / d).is_symlink():  # never through a link
            try:
                (out_abs / d).rmdir()  # only once empty
                run.dirs.discard(d)
            except OSError:
                pass
    _add_contents(records, roles)  # once every check passed: inputs over HASH_LIMIT read whole
    run._save()
    run.read_inputs = {k: (roles[k], records[k]) for k in roles if k in records}
    run.activate()
    if kept:
        print(f"note: kept {len(kept)} file(s) in {out_path} that fhcnn listed but that changed "
              f"since it wrote them (or that it never wrote): {', '.join(kept[:5])}"
              f"{' ...' if len(kept) > 5 else ''}", file=sys.stderr)
    return out_path


def check_output_file(path: str | os.PathLike[str], overwrite: bool = False,
                      inputs: Iterable[str | os.PathLike[str] | None] = (), what: str = "--out") -> Path:
    """Check one output file path (``vae sample --out F``, ``--npy F`` ...): never an existing
    file unless ``overwrite``, never an input, never inside an input folder or a run folder
    (a folder with ``run.json``) or over a file some run recorded as its own."""
    p = _check_name(path, what)
    pa = p.absolute()
    if pa.is_dir():
        raise InputError(f"{what} {p} is a folder; give a file name")
    for inp in inputs:
        if inp is None:
            continue
        ip = resolve_path(Path(inp), str(inp))
        if pa.resolve() == ip or (ip.is_dir() and pa.resolve().is_relative_to(ip)):
            raise InputError(f"{what} {p} is {'inside ' if ip.is_dir() else ''}the input {inp}; "
                             f"choose another path (inputs are never written to)")
    for folder in [pa.parent, *pa.parent.parents, pa.resolve().parent, *pa.resolve().parent.parents]:
        if (folder / RUN_FILE).is_file():
            raise InputError(f"{what} {p} lies inside the run folder {folder}; write it outside "
                             f"(a run's own folder is only written by its run)")
    if pa.exists() and not overwrite:
        raise InputError(f"{what} {p} exists; choose a new file name or pass --overwrite")
    return p


def check_own_checkpoint(step_folder: str | os.PathLike[str]) -> None:
    """Refuse, in one line, a checkpoint (``checkpoints/step-N``) that lies in a run folder but
    that the folder's record does not list as its own (copied in from another run, or changed
    since it was written): weights loaded "from a run" must be that run's. A checkpoint outside
    any run folder is not checked."""
    from .training.checkpoint import MANIFEST_FILE

    folder = Path(os.path.abspath(step_folder))
    for root in folder.parents:
        if (root / RUN_FILE).is_file():
            run = RunFolder.open(root)
            rel = (folder / MANIFEST_FILE).relative_to(root).as_posix()
            if run is not None and not run.own(rel):
                raise InputError(f"{step_folder} is not a checkpoint of the run in {root} (its {RUN_FILE} does "
                                 f"not list it as written there, or it changed since); give the checkpoint "
                                 f"folder itself to load it anyway, or remove it")
            return


def _reusable_copy(final: Path, array: Any) -> bool:
    """``final`` is a complete chunked copy this run made of ``array`` and nobody changed since:
    the active run folder owns the whole tree (:meth:`RunFolder.owns_tree`: sizes and sha256 as
    recorded, no recorded file missing) and its shape and dtype are ``array``'s."""
    import numpy as np
    import zarr

    run = RunFolder.active
    if run is None or not run.owns_tree(final):
        return False
    try:
        copy = zarr.open_array(str(final), mode="r")
    except Exception:  # noqa: BLE001 - an unreadable copy is made again
        return False
    return tuple(copy.shape) == tuple(array.shape) and np.dtype(copy.dtype) == np.dtype(array.dtype)


def copy_input(folder: Path, name: str, array: Any, chunks: Sequence[int], axis: int = 0, *,
               train: TrainConfig, why: str, log: Callable[[str], None], resume: bool = False) -> Any:
    """The one-time chunked copy of an input that is slow to read by window (compressed or
    sequential files), inside a run folder: :func:`~fhcnn.data.lazy.copy_to_zarr` along ``axis``
    into ``folder/inputs/<name>.zarr``, written under a temporary name and moved in (every file
    recorded in ``run.json``). Returns the copy, opened for reading, and logs one line naming
    the copy and ``why`` it was made.

    With ``resume`` (the run's inputs are fingerprinted as unchanged) a copy the run made before
    is read again instead of made again, if it is complete and unchanged
    (:func:`_reusable_copy`); otherwise it is made again.

    Under ``torchrun`` (``WORLD_SIZE > 1``) the processes join their group here (on the device
    type of ``train.device``) and rank 0 alone copies while the others wait at a barrier, then
    every process opens the copy; a copy that takes longer than ``train.peer_timeout`` stops the
    run with :class:`PeerLostError` (one line that says to raise it).
    """
    import zarr

    from .data.lazy import copy_to_zarr

    peer_timeout = train.peer_timeout
    final = Path(folder) / "inputs" / f"{name}.zarr"
    info = join_processes(train)
    main = is_main_process()
    reused = resume and main and _reusable_copy(final, array)
    t0 = time.perf_counter()
    if main and not reused:
        # scratch: a copy that stops, or a run killed while it copies, leaves nothing behind
        with atomic.scratch(Path(folder) / f".{name}.zarr.tmp") as tmp:
            copy_to_zarr(array, tmp, chunks, axis=axis)
            atomic.place_tree(tmp, final)
    if info is not None and info.world_size > 1:
        import torch.distributed as dist

        from .training.distributed import PeerLostError, waited_too_long

        try:
            dist.barrier()
        except Exception as e:  # Gloo's are RuntimeErrors; another loss: the CLI's lost-process line
            if main or not waited_too_long(e):
                raise
            raise PeerLostError(f"the copy of {name} into {final} was not finished by rank 0 within "
                                f"train.peer_timeout={peer_timeout:g} s ({str(e).splitlines()[0][:120]}); "
                                f"raise train.peer_timeout for a large compressed or sequential input") from None
    log(f"{name}: read by window from a chunked copy made once in {final} ({why})"
        + ("; the copy of the interrupted run, unchanged, is read again" if reused
           else f"; copied in {time.perf_counter() - t0:.0f} s"))
    return zarr.open_array(str(final), mode="r")
