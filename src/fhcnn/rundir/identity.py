"""The identity of a run: what ``run.json`` records of its inputs and its config.

An input file or folder is identified by its :func:`fingerprint` (size and sha256 up to
:data:`HASH_LIMIT` bytes, else size and modification time) and, where that holds modification
times (:func:`by_time`), by its :func:`content_digest` too (read whole, the same for every copy);
the resolved config by :func:`config_digest`, without the keys of :data:`LAYOUT_KEYS` (where and
how a run computes, which ``--resume`` may change).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

#: Files up to this size are fingerprinted by their sha256, larger ones by size and mtime.
HASH_LIMIT = 64 * 2**20


#: Files a desktop's file browser writes into any folder it shows (Finder's ``.DS_Store`` and
#: ``._`` AppleDouble files, Windows' ``Thumbs.db`` and ``desktop.ini``, KDE's ``.directory``):
#: never an input's contents, so never part of a folder's identity.
OS_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", ".directory"})


def _folder_files(p: Path) -> list[Path]:
    """The files below the folder ``p`` that make its contents (sorted; :data:`OS_FILES` and
    ``._*`` left out)."""
    return sorted(q for q in p.rglob("*") if q.is_file() and q.name not in OS_FILES and not q.name.startswith("._"))


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
    """A fingerprint of an input file or folder (every file below it but :data:`OS_FILES`, by relative name):
    size and sha256 of a file up to ``HASH_LIMIT`` bytes (of every file of a folder whose
    files add up to at most that), else size and mtime."""
    p = Path(path).expanduser()
    if p.is_file():
        return _file_print(p)
    if p.is_dir():
        files = _folder_files(p)
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
        return sum(f.stat().st_size for f in _folder_files(p)) > HASH_LIMIT
    return False


def content_digest(path: str | os.PathLike[str]) -> str:
    """The sha256 of everything an input holds (of a folder, its files by relative name), read
    whole: unlike :func:`fingerprint` it does not depend on where and when the files were written,
    so another copy on another machine's disk has the same one."""
    p = Path(path).expanduser()
    files = _folder_files(p) if p.is_dir() else [p] if p.is_file() else []
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
    from ..config import config_to_dict

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
    from ..config import config_to_dict

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
