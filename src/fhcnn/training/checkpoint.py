"""Crash-safe checkpoints: safetensors weights, a state file, and a checksum manifest.

Layout of a run's ``checkpoints/`` folder::

    checkpoints/
      step-000100/
        model.safetensors     model weights (state_dict incl. buffers)
        state.pt              optimizer, scheduler, grad scaler, RNG states, step, best, ...
        manifest.json         written LAST: step, metrics, sha256 and size of both files
      step-000200/ ...
      best.json               which step folder holds the best checkpoint (if tracked)

Every file is written through :func:`fhcnn.atomic.atomic_path` (temporary file in the same
folder, fsync, ``os.replace``), and the manifest only after both data files are complete, so
a crash at any instant leaves at most one folder without a manifest. A folder without a
manifest, or whose files do not match the manifest's sizes and sha256 sums, is reported and
skipped; :func:`latest_checkpoint` falls back to the previous one. Nothing is loaded without
its checksum having been verified.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from ..atomic import atomic_path, atomic_write_text, make_dir, remove
from ..errors import InputError

__all__ = ["CheckpointError", "CheckpointWarning", "Checkpoint", "CheckpointManager",
           "save_checkpoint", "verify_checkpoint", "load_checkpoint", "list_checkpoints",
           "latest_checkpoint", "find_checkpoint", "load_weights", "sha256_file",
           "MODEL_FILE", "STATE_FILE", "MANIFEST_FILE"]

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
BEST_FILE = "best.json"
FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(InputError):
    """A checkpoint is missing, incomplete or corrupt (the message names the file)."""


class CheckpointWarning(UserWarning):
    """A corrupt or incomplete checkpoint was skipped."""


@dataclass
class Checkpoint:
    """A verified checkpoint: its folder, step, weights, state and manifest."""

    path: Path
    step: int
    model_state: dict[str, Tensor]
    state: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)


def _brief(e: BaseException) -> str:
    """First line of an exception message, shortened (checkpoint errors stay one line)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def _cpu_state(model_or_state: nn.Module | dict[str, Tensor]) -> dict[str, Tensor]:
    sd = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for k, v in sd.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"state_dict entry {k!r} is not a tensor ({type(v).__name__})")
        t = v.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            t = t.clone()  # tied/shared tensors: safetensors needs each in its own storage
        seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def _sorted_metadata(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its ``__metadata__`` in key order. safetensors writes
    the metadata from a hash map, in an order that changes from one save to the next, so the same
    weights made files that differ in their bytes (and sha256). The header keeps its length
    (padded with spaces, as safetensors pads it), so the tensors' data stays where it was."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict):
        return data
    text = json.dumps({"__metadata__": dict(sorted(meta.items())), **header}, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")
    if len(text) > n:
        return data
    return data[:8] + text + b" " * (n - len(text)) + data[8 + n:]


def save_weights(path: str | os.PathLike[str], model: nn.Module | dict[str, Tensor],
                 metadata: dict[str, str] | None = None) -> Path:
    """Write a model's ``state_dict`` (buffers included) as one safetensors file, atomically:
    the one writer of weights (final models and checkpoints alike). Serialized in memory and
    written through :func:`~fhcnn.atomic.atomic_path` (``save_file`` would write a temporary
    file of its own, private and left behind by a killed process)."""
    path = Path(path)
    data = _sorted_metadata(save(_cpu_state(model), metadata={"format": "pt", **(metadata or {})}))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def save_checkpoint(folder: str | os.PathLike[str], step: int,
                    model: nn.Module | dict[str, Tensor], state: dict[str, Any],
                    metrics: dict[str, Any] | None = None) -> Path:
    """Write one checkpoint folder; the manifest (with sha256 sums) is written last.

    An existing manifest in ``folder`` is removed first, so a folder being rewritten is
    never mistaken for a complete checkpoint.
    """
    folder = make_dir(folder)
    manifest_path = folder / MANIFEST_FILE
    if manifest_path.exists():
        remove(manifest_path)
    files: dict[str, dict[str, Any]] = {}
    save_weights(folder / MODEL_FILE, model, {"step": str(step)})
    with atomic_path(folder / STATE_FILE) as tmp:
        torch.save(state, tmp)
    for name in (MODEL_FILE, STATE_FILE):
        p = folder / name
        files[name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = {"format": FORMAT, "step": int(step), "time": time.time(),
                "metrics": metrics or {}, "files": files}
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, default=float) + "\n")
    return folder


def verify_checkpoint(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a checkpoint folder against its manifest; return the manifest.

    Raises:
        CheckpointError: no/unreadable manifest, a missing file, or a size or sha256 mismatch.
    """
    folder = Path(folder)
    mpath = folder / MANIFEST_FILE
    if not mpath.is_file():
        raise CheckpointError(f"{folder}: incomplete checkpoint (no {MANIFEST_FILE}; the write was "
                              f"interrupted)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        files = manifest["files"]
        int(manifest["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{mpath}: unreadable checkpoint manifest ({e})") from e
    for name in (MODEL_FILE, STATE_FILE):
        p = folder / name
        if name not in files:
            raise CheckpointError(f"{mpath}: manifest lists no {name}")
        if not p.is_file():
            raise CheckpointError(f"{p}: missing checkpoint file")
        size = p.stat().st_size
        if size != files[name]["bytes"]:
            raise CheckpointError(f"{p}: corrupt checkpoint file (size {size} bytes, manifest says "
                                  f"{files[name]['bytes']}; truncated?)")
        digest = sha256_file(p)
        if digest != files[name]["sha256"]:
            raise CheckpointError(f"{p}: corrupt checkpoint file (sha256 {digest[:12]}... does not "
                                  f"match the manifest's {str(files[name]['sha256'])[:12]}...)")
    return manifest


def load_checkpoint(folder: str | os.PathLike[str], map_location: str | torch.device = "cpu"
                    ) -> Checkpoint:
    """Verify and load one checkpoint folder (weights to CPU by default)."""
    folder = Path(folder)
    manifest = verify_checkpoint(folder)
    try:
        model_state = load_file(str(folder / MODEL_FILE), device=str(map_location))
    except Exception as e:
        raise CheckpointError(f"{folder / MODEL_FILE}: cannot load weights ({_brief(e)})") from e
    try:
        state = torch.load(folder / STATE_FILE, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{folder / STATE_FILE}: cannot load training state ({_brief(e)})") from e
    return Checkpoint(folder, int(manifest["step"]), model_state, state, manifest)


def list_checkpoints(root: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``step-N`` folder under ``root``, ascending (unverified)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def _report(msg: str, log: Callable[[str], None] | None) -> None:
    if log is not None:
        log(msg)
    else:
        warnings.warn(msg, CheckpointWarning, stacklevel=3)


def latest_checkpoint(root: str | os.PathLike[str], map_location: str | torch.device = "cpu",
                      log: Callable[[str], None] | None = None, max_step: int | None = None
                      ) -> Checkpoint | None:
    """The newest checkpoint under ``root`` that passes verification, or ``None`` if there is none.

    Every skipped (incomplete or corrupt) folder is reported through ``log`` (the Trainer
    prints ``warning: ...`` to stderr), or as a :class:`CheckpointWarning` if ``log`` is None.

    Raises:
        CheckpointError: checkpoints exist but every complete one is corrupt (nothing valid to
            fall back to: refusing to silently start over).
    """
    found = list_checkpoints(root)
    corrupt: list[str] = []
    for step, folder in reversed(found):
        if max_step is not None and step > max_step:
            continue
        try:
            ckpt = load_checkpoint(folder, map_location)
        except CheckpointError as e:
            if (folder / MANIFEST_FILE).exists():
                corrupt.append(str(e))
                _report(f"skipping corrupt checkpoint: {e}; trying the previous one", log)
            else:
                _report(f"skipping {e}", log)
            continue
        return ckpt
    if corrupt:
        raise CheckpointError(f"no valid checkpoint under {root}: " + "; ".join(corrupt))
    return None


def find_checkpoint(path: str | os.PathLike[str], which: str = "best") -> Path:
    """Resolve a run folder, a ``checkpoints/`` folder or a step folder to a step folder.

    ``which``: ``"best"`` (the folder named in ``best.json``; the latest if none is tracked)
    or ``"latest"``.
    """
    p = Path(path)
    if (p / MANIFEST_FILE).exists() or _STEP_DIR.match(p.name):
        return p
    root = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    if which == "best" and (root / BEST_FILE).is_file():
        try:
            best = json.loads((root / BEST_FILE).read_text(encoding="utf-8"))
            return root / best["dir"]
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{root / BEST_FILE}: unreadable ({e})") from e
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    found = list_checkpoints(root)
    for _, folder in reversed(found):
        if (folder / MANIFEST_FILE).exists():
            return folder
    raise CheckpointError(f"{p}: no checkpoint found (expected a run folder, its checkpoints/ "
                          f"folder or a step-N folder)")


def load_weights(model: nn.Module, path: str | os.PathLike[str], which: str = "best",
                 strict: bool = True) -> dict[str, Any]:
    """Load verified weights into ``model`` for inference; returns the checkpoint's manifest.

    ``path``: a run folder, its ``checkpoints/`` folder, a ``step-N`` folder, or a bare
    ``.safetensors`` file (no checksum then). ``which``: ``"best"`` or ``"latest"``.
    """
    p = Path(path)
    if p.suffix == ".safetensors" and p.is_file():
        try:
            sd = load_file(str(p))
        except Exception as e:
            raise CheckpointError(f"{p}: cannot load weights ({_brief(e)})") from e
        manifest: dict[str, Any] = {}
    else:
        folder = find_checkpoint(p, which)
        manifest = verify_checkpoint(folder)
        sd = load_file(str(folder / MODEL_FILE))
    dev = next((t.device for t in model.state_dict().values()), torch.device("cpu"))
    try:
        model.load_state_dict({k: v.to(dev) for k, v in sd.items()}, strict=strict)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{p}: weights do not fit this model ({first})") from e
    return manifest


class CheckpointManager:
    """Saves step folders under ``root``, keeps the last ``keep_last`` plus the best one.

    Args:
        root: the ``checkpoints`` folder.
        keep_last: complete checkpoints to keep (older ones are deleted after a new one is
            complete); the best one is always kept.
        log: where to report skipped checkpoints (e.g. ``print`` to stderr).
    """

    def __init__(self, root: str | os.PathLike[str], keep_last: int = 3,
                 log: Callable[[str], None] | None = None) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last
        self.log = log

    def best_dir(self) -> Path | None:
        p = self.root / BEST_FILE
        if not p.is_file():
            return None
        try:
            return self.root / json.loads(p.read_text(encoding="utf-8"))["dir"]
        except (OSError, ValueError, KeyError):
            return None

    def save(self, step: int, model: nn.Module | dict[str, Tensor], state: dict[str, Any],
             metrics: dict[str, Any] | None = None, best: dict[str, Any] | None = None) -> Path:
        """Save the checkpoint of ``step``; if ``best`` is given, mark it as the best one."""
        folder = save_checkpoint(self.root / step_dir_name(step), step, model, state, metrics)
        if best is not None:
            atomic_write_text(self.root / BEST_FILE,
                              json.dumps({"dir": folder.name, "step": int(step), **best},
                                         default=float) + "\n")
        self.prune(current=step)
        return folder

    def prune(self, current: int | None = None) -> None:
        """Delete complete checkpoints beyond the last ``keep_last`` (never the best one) and
        leftovers of interrupted writes older than ``current``."""
        best = self.best_dir()
        found = list_checkpoints(self.root)
        complete = [(s, p) for s, p in found if (p / MANIFEST_FILE).exists()]
        keep = {p for _, p in complete[-self.keep_last:]}
        if best is not None:
            keep.add(best)
        for s, p in found:
            if p in keep:
                continue
            if not (p / MANIFEST_FILE).exists() and (current is None or s >= current):
                continue
            if (p / MANIFEST_FILE).exists() or current is not None:
                with contextlib.suppress(OSError):
                    remove(p)  # in a run folder: only the files fhcnn wrote there

    def latest(self, map_location: str | torch.device = "cpu", max_step: int | None = None
               ) -> Checkpoint | None:
        return latest_checkpoint(self.root, map_location, self.log, max_step)


