"""Output folders of runs: which folder may be written, and what may be replaced there.

A run folder carries ``run.json``, written by fhcnn: the tool, the version, the command, the
fingerprints of the inputs, a hash of the resolved config and the list of every file fhcnn
wrote there (each is recorded *before* it is written, so the list survives a crash). Only a
folder with that marker counts as a run; ``--overwrite`` removes only the files in its list;
``--resume`` is refused when the inputs or the config differ from the recorded ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from . import atomic
from .errors import InputError
from .training.distributed import is_main_process

__all__ = ["prepare_output_dir", "check_output_file", "RunFolder", "RUN_FILE", "OUTPUTS",
           "fingerprint", "config_digest"]

#: The marker file of a run folder.
RUN_FILE = "run.json"

_COMMON = ("config.yaml", "metrics.jsonl", "checkpoints", "metrics.json", "model.safetensors",
           "figure.png")
#: Top-level names each command writes into its run folder (besides ``run.json``): a folder
#: without the marker is never written over where one of these exists.
OUTPUTS: dict[str, tuple[str, ...]] = {
    "segment": _COMMON + ("prediction.npy", "masks", "overlay.gif", "labelled_frames.png",
                          "training_curves.png"),
    "change": _COMMON + ("prediction.npy", "prediction.png", "change_probability.npy",
                         "labels_train.npy", "labels_scored.npy"),
    "volume": _COMMON + ("prediction.npy", "prediction.nii.gz", "prediction.zarr", "probabilities.zarr"),
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


def config_digest(cfg: Any) -> str:
    """sha256 of the resolved config, without the keys that do not change the result
    (``train.device``, ``threads``)."""
    from .config import config_to_dict

    d = config_to_dict(cfg) if not isinstance(cfg, Mapping) else dict(cfg)
    d = json.loads(json.dumps(d, default=str))
    d.pop("threads", None)
    if isinstance(d.get("train"), dict):
        d["train"].pop("device", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _read_marker(out: Path) -> dict[str, Any] | None:
    p = out / RUN_FILE
    if not p.exists():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("files", []), list):
            raise ValueError("not a run marker")
    except (OSError, ValueError):
        raise InputError(f"{p} is damaged (not a run marker written by fhcnn); move it away "
                         f"or choose another output folder") from None
    return data


class RunFolder:
    """The marker of one run folder: records every file fhcnn writes there (through
    :mod:`fhcnn.atomic`) in ``run.json`` before the file is created."""

    active: "RunFolder | None" = None

    def __init__(self, root: Path, marker: dict[str, Any], created: bool = False) -> None:
        self.root = root
        self.marker = marker
        self.created = created  # the folder did not exist before this run
        self._files: set[str] = set(marker.get("files", []))

    def _save(self) -> None:
        self.marker["files"] = sorted(self._files)
        atomic.set_write_observer(None)  # the marker itself is not a recorded output
        try:
            atomic.atomic_write_text(self.root / RUN_FILE, json.dumps(self.marker, indent=1) + "\n")
        finally:
            if RunFolder.active is self:
                atomic.set_write_observer(self.record)

    def record(self, *paths: str | os.PathLike[str]) -> None:
        """Note ``paths`` (inside the folder) as written by fhcnn (one save of the marker)."""
        new = set()
        for path in paths:
            p = Path(path).resolve()
            if not p.is_relative_to(self.root):
                continue
            rel = p.relative_to(self.root).as_posix()
            if rel != RUN_FILE and rel not in self._files:
                new.add(rel)
        if new:
            self._files |= new
            self._save()

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> "RunFolder | None":
        """The run folder ``root`` if it carries a marker, else ``None``."""
        r = Path(root).resolve()
        marker = _read_marker(r) if r.is_dir() else None
        return cls(r, marker) if marker is not None else None

    def activate(self) -> None:
        RunFolder.active = self
        atomic.set_write_observer(self.record)

    @staticmethod
    def abandon() -> None:
        """A run refused after its folder was made (e.g. a scene too small for the network,
        found by the first training step): remove the folder if this run created it (only the
        files fhcnn wrote; a folder that holds anything else stays)."""
        run = RunFolder.active
        RunFolder.deactivate()
        if run is not None and run.created:
            _remove_recorded(run.root, [*run._files, RUN_FILE])
            try:
                run.root.rmdir()
            except OSError:
                pass

    @staticmethod
    def deactivate() -> None:
        RunFolder.active = None
        atomic.set_write_observer(None)


def _remove_recorded(out: Path, files: Iterable[str]) -> None:
    """Remove the files fhcnn recorded (and folders left empty by that); nothing else."""
    parents: set[Path] = set()
    for rel in files:
        p = out / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts \
                or not p.parent.resolve().is_relative_to(out.resolve()):  # e.g. a folder now a link
            continue
        if p.is_symlink() or p.is_file():
            p.unlink()
        parents.update(q for q in p.parents if q.is_relative_to(out) and q != out)
    for d in sorted(parents, key=lambda q: len(q.parts), reverse=True):
        try:
            d.rmdir()  # only if empty
        except OSError:
            pass


def _check_inputs(out_path: Path, out_abs: Path, inputs: Iterable[Any]) -> None:
    for inp in inputs:
        if inp is None:
            continue
        ip = Path(inp).expanduser().resolve()
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


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    diff = []
    old_in, new_in = old.get("inputs", {}) or {}, new.get("inputs", {}) or {}
    for role in sorted(set(old_in) | set(new_in)):
        a, b = old_in.get(role), new_in.get(role)
        if a is None or b is None:
            diff.append(f"--{role.replace('_', '-')} {'added' if a is None else 'dropped'}")
        elif a.get("fingerprint") != b.get("fingerprint"):
            diff.append(f"{role} ({b.get('path')}) is not the recorded one ({a.get('path')})")
    old_opt, new_opt = old.get("options", {}) or {}, new.get("options", {}) or {}
    for k in sorted(set(old_opt) | set(new_opt)):
        if old_opt.get(k) != new_opt.get(k):
            diff.append(f"--{k.replace('_', '-')} {new_opt.get(k)} is not the recorded {old_opt.get(k)}")
    if old.get("config_sha256") != new.get("config_sha256"):
        diff.append("the resolved config (--config/--set) differs")
    return diff


def prepare_output_dir(out: str | os.PathLike[str], resume: bool = False, overwrite: bool = False,
                       inputs: Iterable[str | os.PathLike[str] | None] = (), *,
                       tool: str = "fhcnn", roles: Mapping[str, Any] | None = None,
                       config: Any = None, config_file: str | os.PathLike[str] | None = None,
                       extra: Mapping[str, Any] | None = None,
                       outputs: Sequence[str] | None = None) -> Path:
    """Check and create the output folder of a run and its marker ``run.json``; returns it.

    Refused (``InputError``, before anything in ``out`` is created, changed or removed) when:

    * ``out`` is an existing file, or a damaged ``run.json`` is there;
    * ``out`` holds a run (``run.json``) and neither ``resume`` nor ``overwrite`` is set;
    * ``resume`` and ``out`` holds no run, or the run's inputs (``roles``: name -> path,
      fingerprinted) or resolved ``config`` differ from the recorded ones (the message names
      what differs);
    * ``out`` holds other files and ``overwrite`` is not set; or, with ``overwrite``, a file
      or folder named like one of the run's ``outputs`` exists that fhcnn did not write;
    * ``out`` is, or lies inside, an input folder; or is the folder holding an input file;
      or an input lies inside ``out``; or the ``config_file`` (``--config FILE``) lies inside
      ``out`` (allowed only to ``--resume`` with the run's own recorded ``config.yaml``).

    ``extra``: other options that define the run (e.g. ``--label-frames``), compared on resume.

    With ``overwrite`` only the files listed in ``run.json`` are removed; every other file
    stays. Files written afterwards through :mod:`fhcnn.atomic` are recorded in ``run.json``.

    Under multi-process training (``torchrun``: environment ``RANK``) only rank 0 checks and
    creates the folder; the other ranks just return the path.
    """
    out_path = Path(out).expanduser()
    if not is_main_process():
        return out_path
    out_abs = out_path.resolve()
    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other; choose one")
    roles = {k: v for k, v in (roles or {}).items() if v is not None}
    _check_inputs(out_path, out_abs, [*inputs, *roles.values()])
    if out_abs.exists() and not out_abs.is_dir():
        raise InputError(f"output {out_path} exists and is not a folder")
    names = tuple(outputs) if outputs is not None else OUTPUTS.get(tool, _COMMON)
    from . import __version__

    new = {"tool": tool, "version": __version__,
           "command": " ".join(shlex.quote(a) for a in ["fhcnn", *sys.argv[1:]]),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "inputs": {k: {"path": str(v), "fingerprint": fingerprint(v)} for k, v in roles.items()},
           "config_sha256": config_digest(config) if config is not None else None,
           "options": json.loads(json.dumps(dict(extra or {}), default=str)), "files": []}
    marker = _read_marker(out_abs) if out_abs.is_dir() else None
    if out_abs.is_dir():
        entries = [e.name for e in out_abs.iterdir()]
        if marker is not None and not (resume or overwrite):
            raise InputError(f"output folder {out_path} already holds a run of fhcnn "
                             f"{marker.get('tool', '')} ({RUN_FILE}); pass --resume to continue it "
                             f"or --overwrite to replace it (only the files fhcnn wrote there are "
                             f"removed)")
        if marker is None and resume:
            raise InputError(f"--resume: output folder {out_path} holds no fhcnn run to resume "
                             f"(no {RUN_FILE})")
        if marker is None and entries and not overwrite:
            raise InputError(f"output folder {out_path} is not empty and holds no fhcnn run; choose "
                             f"a new or empty folder")
        if resume and marker is not None:
            if marker.get("tool") != tool:
                raise InputError(f"--resume: {out_path} holds a {marker.get('tool')} run, not a {tool} run")
            diff = _differences(marker, new)
            if diff:
                raise InputError(f"--resume: {out_path} was run with other inputs or config: "
                                 f"{'; '.join(diff)}; resume with the same ones, or start a new run")
            new["files"] = marker.get("files", [])
            new["created"] = marker.get("created", new["created"])
        if config_file is not None:
            cf = Path(config_file).expanduser().resolve()
            if cf.is_relative_to(out_abs):
                rel = cf.relative_to(out_abs).as_posix()
                if not (resume and marker is not None and rel in marker.get("files", [])):
                    raise InputError(f"--config {config_file} lies inside the output folder {out_path}, "
                                     f"which this run writes; inputs are never written to: keep "
                                     f"the config outside (or give the run's own config.yaml "
                                     f"with --resume)")
        owned = {Path(f).parts[0] for f in (marker or {}).get("files", []) if Path(f).parts}
        clash = [n for n in names if (out_abs / n).exists() and n not in owned]
        if clash and not resume:
            raise InputError(f"{out_path / clash[0]} exists and was not written by fhcnn; it is never "
                             f"replaced or removed: choose another output folder")
        if overwrite and marker is not None:
            # fhcnn's own files only, and below a name it wrote that holds other files:
            # those files stay (a clash above would refuse a foreign one at the top level)
            _remove_recorded(out_abs, marker.get("files", []))
    created = not out_abs.exists()
    out_abs.mkdir(parents=True, exist_ok=True)
    run = RunFolder(out_abs, new, created)
    run._save()
    run.activate()
    return out_path


def check_output_file(path: str | os.PathLike[str], overwrite: bool = False,
                      inputs: Iterable[str | os.PathLike[str] | None] = (), what: str = "--out") -> Path:
    """Check one output file path (``vae sample --out F``, ``--npy F`` ...): never an existing
    file unless ``overwrite``, never an input, never inside an input folder or a run folder
    (a folder with ``run.json``) or over a file some run recorded as its own."""
    p = Path(path).expanduser()
    pa = p.absolute()
    if pa.is_dir():
        raise InputError(f"{what} {p} is a folder; give a file name")
    for inp in inputs:
        if inp is None:
            continue
        ip = Path(inp).expanduser().resolve()
        if pa.resolve() == ip or (ip.is_dir() and pa.resolve().is_relative_to(ip)):
            raise InputError(f"{what} {p} is {'inside ' if ip.is_dir() else ''}the input {inp}; "
                             f"choose another path (inputs are never written to)")
    for folder in [pa.parent, *pa.parent.parents]:
        if (folder / RUN_FILE).is_file():
            raise InputError(f"{what} {p} lies inside the run folder {folder}; write it outside "
                             f"(a run's own folder is only written by its run)")
    if pa.exists() and not overwrite:
        raise InputError(f"{what} {p} exists; choose a new file name or pass --overwrite")
    return p
