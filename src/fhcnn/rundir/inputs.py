"""The inputs a run reads: their records in ``run.json`` and their contents while it runs.

The record of each input role (:func:`_role_record`: path and fingerprint; the contents of the
inputs fingerprinted by modification time, kept for ``--resume``: :func:`_add_contents`,
:func:`_same_contents`); the same contents on every process of a ``torchrun`` launch
(:func:`join_processes`, :func:`same_inputs_everywhere`); and inputs unchanged while the run
reads them (:func:`check_inputs_unchanged`, :func:`stop_watching_input`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from ..errors import InputError
from ..training.trainer import TrainingError
from .folder import RunFolder
from .identity import by_time, content_digest, fingerprint

if TYPE_CHECKING:
    from ..training.config import TrainConfig
    from ..training.distributed import DistInfo


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


def join_processes(train: TrainConfig) -> DistInfo | None:
    """Under ``torchrun`` (``WORLD_SIZE > 1``) join the process group now, if not yet joined:
    on the device type of ``train.device``, every wait bounded by ``train.peer_timeout``
    (:func:`~fhcnn.training.distributed.init_distributed`). ``None`` for one process."""
    from ..training.device import resolve_device
    from ..training.distributed import init_distributed

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
    from ..training.distributed import all_gather_objects, world_size

    if world_size() <= 1:
        return records
    everyone = all_gather_objects(records)
    # a fingerprint of a file over HASH_LIMIT holds its modification time, which differs between
    # identical copies on the machines' own disks: where one differs, every process compares
    # what those inputs hold, read whole (each process takes part: the gather is collective)
    differ = sorted(role for role in records if any(
        _print_of(theirs.get(role, {})) != _print_of(everyone[0][role]) for theirs in everyone[1:]))
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
    """The inputs of ``run.read_inputs`` (of ``roles``) whose contents differ from those at the
    start. A fingerprint by modification time that differs (the file touched, or saved again
    unchanged by the tool that holds it open) is compared by the contents the run recorded
    (read whole); where they are the same, the record takes the new fingerprint."""
    changed = []
    for role, (paths, record) in run.read_inputs.items():
        if roles is not None and role not in roles:
            continue
        now = _role_record(paths)
        if _print_of(now) == _print_of(record):
            continue
        if _same_contents(record, dict(now), _role_paths(paths)):
            record.update({k: v for k, v in now.items() if k in ("fingerprint", "also")})
            continue
        changed.append(role)
    return changed


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
        from ..training.distributed import broadcast_object, world_size

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
