"""Preparing the output folder of a run: every check before anything in OUT is written.

:func:`prepare_output_dir` checks, creates and locks OUT and writes its record (:func:`_plan`
holds every check, reading only; :func:`_differences` and :func:`_config_changes` name what
``--resume`` finds changed); :func:`check_output_file` checks one output file outside any run
folder; :func:`check_own_checkpoint` refuses a checkpoint that is not its run folder's own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping, Sequence

from ..errors import InputError
from ..training.distributed import is_main_process
from .folder import FORMAT, RUN_FILE, RunFolder, _inside, _link_error, _lock, _read_marker, resolve_path
from .identity import LAYOUT_KEYS, _run_digest
from .inputs import _add_contents, _print_of, _role_paths, _same_contents, join_processes, same_inputs_everywhere

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
    from ..config import config_to_dict, load_config

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
    from .. import __version__

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
    from ..training.checkpoint import MANIFEST_FILE

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
