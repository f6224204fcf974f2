"""Multi-process training helpers (``torch.distributed``, launched by ``torchrun``).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_distributed` then joins the process group (``nccl`` on CUDA,
``gloo`` on CPU). Every rank builds the same global batch from the ``(seed, step)``
generator and keeps its slice (:func:`shard_batch`), so a run on ``W`` processes computes the
same gradient as a run on one process with the same global batch, for a loss that is a mean over
the batch's samples. A loss normalized by totals of the batch (a class-weighted mean over labelled
voxels, a Dice term) must take the whole batch's totals on every process, as
:func:`fhcnn.engine.losses.shared_segmentation_loss` does.

**A stopped or lost process.** Every wait for another process is bounded by
``train.peer_timeout`` seconds (``init_process_group(timeout=...)``: Gloo raises when a
collective gets no data for that long; a process that disappears closes its connections and
the others' collectives fail at once). :func:`peer_failure` turns that failure into one line
(:class:`PeerLostError`) naming the process, the last completed step and the last intact
checkpoint. With two processes the lost one is the other; with more, under ``torchrun``,
each process beats a counter in the agent's rendezvous store from a background thread, and
the process whose counter stands still (stopped with SIGSTOP, killed, hung) is told from
those merely waiting in a collective. (Without ``torchrun`` the store lives in rank 0's
process, which may be the one that stopped: no heartbeat there.) A process that fails or is
killed under ``torchrun`` makes ``torchrun`` end the others with SIGTERM at once, before their
collectives could fail: once training has started, each then prints the same kind of line
(:func:`_on_terminate`) instead of vanishing without a word. A process that stops for a cause of
its own (a full file system) leaves it in the group's store first (:func:`tell_others`): the
others' lines name that cause, not a process that stopped answering.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Sequence

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from ..data.lazy import PassShare

__all__ = ["DistInfo", "dist_info", "init_distributed", "cleanup_distributed", "exit_program", "end_spawned_worker",
           "spawn_workers",
           "is_main_process", "end_silently_on_terminate", "leave_it_to_rank_0", "stopped_line", "tell_others",
           "world_size", "PeerLostError", "peer_failure", "waited_too_long", "note_progress", "DEFAULT_PEER_TIMEOUT",
           "shard_batch", "gather_batch", "all_reduce_mean", "all_reduce_sum", "broadcast_object", "all_gather_objects",
           "barrier",
           "params_in_sync",
           "pass_share"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def dist_info() -> DistInfo:
    """Rank, world size and local rank of this process (``(0, 1, 0)`` without a group)."""
    if _initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    return DistInfo(0, 1, 0)


def init_distributed(device_type: str | None = None, timeout: float | None = None) -> DistInfo:
    """Join the process group if launched by ``torchrun`` with ``WORLD_SIZE > 1``.

    Does nothing when a group is already initialized (e.g. by the caller) or when the
    environment describes a single process. Backend: ``nccl`` for CUDA, else ``gloo``.
    ``timeout``: seconds any wait for another process may last (joining the group, every
    collective) before it fails (``train.peer_timeout``; ``None``: torch's default, 30 min).
    Starts the heartbeat that tells a stopped process from a waiting one (:func:`peer_failure`).
    """
    if _initialized():  # joined by the caller: its timeout, not ours
        _start_heartbeat(None)
        return dist_info()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():  # pragma: no cover
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        if timeout is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout))
    except dist.DistError as e:
        if timeout is None:
            raise
        raise PeerLostError(f"the {world} processes did not all join the process group within "
                            f"train.peer_timeout={timeout:g} s ({_brief(e)}); check that every "
                            f"process was started") from None
    _start_heartbeat(timeout)
    return dist_info()


def launch_env(threads: int = 1, *, pythonpath: Sequence[str | Path] = (), **extra: str) -> dict[str, str]:
    """The environment of processes this one starts under ``torchrun`` on this machine: the
    caller's, with ``threads`` OpenMP/torch threads each, unbuffered output, Gloo on the
    loopback interface on Linux (a local run must not depend on how the machine resolves its
    host name), ``pythonpath`` in front of ``PYTHONPATH``, and ``extra`` as given."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1", **extra)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), os.environ.get("PYTHONPATH", "")])
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def cleanup_distributed() -> None:
    """Leave the process group (call once at the very end of a program)."""
    if _initialized():
        dist.destroy_process_group()


def exit_program(code: int) -> NoReturn:
    """End a command-line program with exit status ``code``. After a distributed run (a process
    group was joined) the group is destroyed and the interpreter's teardown skipped: torch's
    Gloo threads sometimes abort the process there ("terminate called without an active
    exception", after every output is written and ``destroy_process_group`` has returned),
    which would turn a finished run into a failed ``torchrun`` launch. After a lost process
    (:class:`PeerLostError`) the group is left as it is: tearing it down could wait for it."""
    if not _initialized():
        if code == 2:
            from ..log import silence_abandoned_work

            silence_abandoned_work(teardown=True)
        sys.exit(code)
    if not _failed:
        cleanup_distributed()
    _exit_without_teardown(code)


def end_spawned_worker() -> NoReturn:
    """End a process started by ``torch.multiprocessing.spawn`` once its results are written
    and its process group destroyed: exit status 0 without the interpreter's teardown, where
    torch's Gloo threads sometimes abort the process ("terminate called without an active
    exception", as in :func:`exit_program`) and turn a finished worker into a failed spawn."""
    _exit_without_teardown(0)


def spawn_workers(fn: Callable[..., None], args: tuple[Any, ...], nprocs: int) -> None:
    """``torch.multiprocessing.spawn(fn, args, nprocs)`` (``fn(rank, *args)`` in each of
    ``nprocs`` fresh processes, waited for; a worker's failure raised here), from the main
    thread, whose workers never take SIGINT: it is blocked in the thread that starts them, and
    a process keeps that mask from its start, through its import of torch. Ctrl-C, which the
    terminal sends to every process of the program, is then this process's alone: it ends the
    workers (SIGTERM, waited for) and raises on; one during the start is answered after it.
    (Each worker printed its own ``KeyboardInterrupt`` traceback, mostly from the middle of its
    import of torch, around the program's one line.) So is a SIGTERM this process answers in
    Python (``fhcnn.outcome.run_program``'s :class:`~fhcnn.signals.Terminated`): the workers it had
    started would otherwise be left running, and the program waited for them as it exited."""
    from multiprocessing import resource_tracker

    import torch.multiprocessing as mp

    # multiprocessing's resource tracker, started with the first worker otherwise, unblocks
    # SIGINT in this thread as it starts (bpo-33613): the workers after it took SIGINT
    resource_tracker.ensure_running()
    pressed: list[int] = []  # SIGINT (SIGTERM) during the start (another thread of this process may take it)
    # SIGTERM is noted, not blocked (the workers would keep it blocked: terminate() could not
    # end them), where a Python handler answers it; SIG_DFL (it ends the process) stays
    noted = [signal.SIGINT] + [signal.SIGTERM] * callable(signal.getsignal(signal.SIGTERM))
    answers = {s: signal.signal(s, lambda signum, frame: pressed.append(signum)) for s in noted}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        context = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for s, answer in answers.items():
            signal.signal(s, answer)
    try:
        if pressed:  # answered now, as this process answers it (KeyboardInterrupt, Terminated)
            signal.raise_signal(pressed[0])
        while not context.join():
            pass
    except KeyboardInterrupt:
        for p in context.processes:
            p.terminate()
        for p in context.processes:
            p.join()
        raise


def _exit_without_teardown(code: int) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ---------------------------------------------------------------- a stopped or lost process
#: ``train.peer_timeout`` by default: seconds a process waits for another one.
DEFAULT_PEER_TIMEOUT = 300.0


class PeerLostError(RuntimeError):
    """Another process of the run stopped answering or disappeared; this one stops too (one
    line: which process, the last completed step, the last intact checkpoint)."""


_failed = False  # a PeerLostError was raised in this process


@dataclass
class _Progress:
    step: int = 0  # the last training step this process completed
    checkpoints: Path | None = None  # the run's checkpoints folder (rank 0 writes it)
    timeout: float | None = None


_progress = _Progress()


def note_progress(step: int, checkpoints: Path | None = None, *, new_run: bool = False) -> None:
    """Record the last completed training step (and, for a ``new_run``, the run's checkpoints
    folder) for the message of a :class:`PeerLostError` and for the heartbeat."""
    _progress.step = int(step)
    if _heartbeat is not None:
        _heartbeat.wake.set()  # beat now: the store holds each rank's last completed step
    if new_run:
        _progress.checkpoints = Path(checkpoints) if checkpoints is not None else None
        _report_terminate()


class _Heartbeat:
    """A daemon thread that increments ``fhcnn/beat/<rank>`` in the rendezvous store every
    ``period`` seconds and after every completed step (value ``"<count> <last completed
    step>"``), through a client of its own with a short timeout. A process stopped (SIGSTOP),
    killed or hung stops beating; one that waits in a collective keeps beating."""

    def __init__(self, host: str, port: int, rank: int, world: int, period: float) -> None:
        self.rank, self.world, self.period = rank, world, period
        self.wait = timedelta(seconds=max(2.0, 2 * period))
        self.store = dist.TCPStore(host, port, is_master=False, timeout=self.wait,
                                   wait_for_workers=False)
        self.count = 0
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fhcnn-heartbeat", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        self.count += 1
        self.store.set(f"fhcnn/beat/{self.rank}", f"{self.count} {_progress.step}")

    def _run(self) -> None:
        while True:
            try:
                self._beat()
            except Exception:  # the store is briefly unreachable: try again next period
                pass
            self.wake.wait(self.period)
            self.wake.clear()

    def _read(self) -> dict[int, tuple[int, int]] | None:
        """``rank -> (count, step)`` of every rank that has beaten; ``None``: store unreachable."""
        out = {}
        try:
            for r in range(self.world):
                key = f"fhcnn/beat/{r}"
                if self.store.check([key]):
                    count, step = self.store.get(key).decode().split()
                    out[r] = (int(count), int(step))
        except Exception:
            return None
        return out

    def _observe(self) -> tuple[list[int], dict[int, int]] | None:
        first = self._read()
        if first is None:
            return None
        time.sleep(3 * self.period)
        second = self._read()
        if second is None:
            return None
        still = [r for r in range(self.world) if r != self.rank and second.get(r) == first.get(r)]
        return still, {r: step for r, (_, step) in second.items()}

    def stopped(self) -> tuple[list[int], dict[int, int]] | None:
        """Watch the counters for three periods: the ranks whose counter stood still, and the
        last completed step each rank reported; ``None`` if the store does not answer in time."""
        box: list[tuple[list[int], dict[int, int]] | None] = []
        watch = threading.Thread(target=lambda: box.append(self._observe()), daemon=True)
        watch.start()
        watch.join(3 * self.period + 4 * self.wait.total_seconds())
        return box[0] if box else None


_heartbeat: _Heartbeat | None = None


def _start_heartbeat(timeout: float | None) -> None:
    global _heartbeat
    if timeout is not None:
        _progress.timeout = timeout
    if _heartbeat is not None or not _initialized() or dist.get_world_size() <= 1:
        return
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return  # no store outside the workers (not torchrun, or file:// / tcp://)
    period = min(2.0, max(0.2, (timeout or DEFAULT_PEER_TIMEOUT) / 10))
    try:
        _heartbeat = _Heartbeat(host, int(port), dist.get_rank(), dist.get_world_size(), period)
    except Exception:  # pragma: no cover - the store refused a client: failures stay unnamed
        _heartbeat = None


def _brief(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _is_comm_failure(e: BaseException) -> bool:
    """Whether ``e`` is a failed wait for, or a broken connection to, another process."""
    if isinstance(e, dist.DistError):
        return True
    if not isinstance(e, RuntimeError):
        return False
    text = str(e).lower()
    return "gloo" in text or "nccl" in text or "connection reset" in text or "connection closed" in text


def _connection_lost(e: BaseException) -> bool:
    """Whether the failed wait ``e`` met a closed connection (the other process is gone), not
    the end of ``train.peer_timeout``."""
    text = str(e).lower()
    return "connection" in text or "closed" in text or "reset" in text


def waited_too_long(e: BaseException) -> bool:
    """Whether ``e`` is a wait for another process that got no reply within
    ``train.peer_timeout`` (Gloo raises a plain ``RuntimeError``, not a ``DistError``), the other
    process still there as far as this one knows (stopped, hung, or busy for that long)."""
    return _is_comm_failure(e) and not _connection_lost(e)


def _intact_checkpoint(root: Path | None = None) -> Path | None:
    """The newest checkpoint folder under ``root`` (the run's checkpoints folder by default)
    that passes its manifest."""
    from .checkpoint import CheckpointError, list_checkpoints, verify_checkpoint

    root = _progress.checkpoints if root is None else root
    if root is None:
        return None
    for _, folder in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(folder)
        except CheckpointError:
            continue
        return folder
    return None


def peer_failure(e: BaseException) -> PeerLostError | None:
    """The one-line :class:`PeerLostError` for ``e`` if it is a collective that failed because
    another process stopped answering or disappeared (``None`` otherwise, or without a
    process group). Names that process (the one whose heartbeat stood still), this process's
    last completed step and the last intact checkpoint; takes about three heartbeat periods."""
    global _failed
    if isinstance(e, PeerLostError):
        return e
    if not (_initialized() and dist.get_world_size() > 1 and _is_comm_failure(e)):
        return None
    _failed = True
    rank, world = dist.get_rank(), dist.get_world_size()
    told = _told()
    if told is not None:  # it said why it stopped (tell_others): that is the line
        other, cause, then = told
        return PeerLostError(f"rank {rank}: rank {other} of {world} stopped: {cause}; {_where_it_stops(then)}")
    seen = _heartbeat.stopped() if _heartbeat is not None else None
    if seen is not None and seen[0]:
        lost, steps = seen
        who = ", ".join(f"rank {r}" for r in lost) + f" of {world}"
        last = [steps[r] for r in lost if r in steps]
        who += f" (last completed step {min(last)})" if last else ""
    elif world == 2:
        who = f"rank {1 - rank} of 2"
    else:
        who = f"another of the {world} processes"
    how = ("its connection closed" if _connection_lost(e)
           else f"no reply within train.peer_timeout={_progress.timeout:g} s" if _progress.timeout
           else "a wait for it failed")
    return PeerLostError(f"rank {rank}: {who} stopped answering ({how}); {_where_it_stops()}")


def _where_it_stops(then: str | None = "continue") -> str:
    """The end of a lost process's line: this process's last completed step and the run's last
    intact checkpoint (``then`` ``--resume`` from it; ``None``: not resumable), or that none was
    written yet."""
    ckpt = _intact_checkpoint()
    where = ("no checkpoint was written yet" if ckpt is None else f"the last intact checkpoint is {ckpt}"
             + (f": {then} with --resume" if then is not None else ""))
    return f"this process stops after step {_progress.step}; {where}"


#: Seconds a process waits for the store to take (or give) what stopped a process (tell_others).
_TELL_WAIT_S = 2.0


def _in_store(do: Callable[[Any], Any]) -> Any:
    """``do(store)`` on the process group's store, given up after :data:`_TELL_WAIT_S` (the
    store lives in ``torchrun``'s agent, else in rank 0's process, which may be gone or
    stopped); ``None`` where it failed, timed out, or there is no group of several."""
    if not (_initialized() and dist.get_world_size() > 1):
        return None
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(do(dist.distributed_c10d._get_default_store()))
        except Exception:  # the store is gone (its process ended): nothing told
            pass

    thread = threading.Thread(target=run, name="fhcnn-tell", daemon=True)
    thread.start()
    thread.join(_TELL_WAIT_S)
    return box[0] if box else None


def tell_others(cause: str, then: str | None) -> None:
    """Leave what stops this process (``cause``: ``cannot write in OUT: No space left on device
    (ENOSPC)``) and what to do before ``--resume`` (``then``; ``None``: not resumable) in the
    process group's store, read back before this process ends: the wait for this process that
    then fails in the others (:func:`peer_failure`), or ``torchrun``'s SIGTERM
    (:func:`_on_terminate`), is a line naming this cause instead of a process that stopped
    answering. Nothing without a group of several; best effort (a store that does not answer)."""
    key, value = f"fhcnn/stopped/{dist_info().rank}", json.dumps([cause, then])

    def put(store: Any) -> bytes:
        store.set(key, value)
        return bytes(store.get(key))  # once read back, the store holds it before this process ends

    _in_store(put)


def _told() -> tuple[int, str, str | None] | None:
    """``(rank, cause, then)`` of another process that said why it stopped (:func:`tell_others`)."""
    me, world = dist_info().rank, dist_info().world_size

    def read(store: Any) -> tuple[int, str, str | None] | None:
        for r in range(world):
            if r != me and store.check([f"fhcnn/stopped/{r}"]):
                cause, then = json.loads(store.get(f"fhcnn/stopped/{r}"))
                return r, str(cause), then
        return None

    return _in_store(read)  # type: ignore[no-any-return]


def stopped_line(what: str, run_folder: Path | None, resumable: bool = True, then: str = "continue") -> str:
    """The one line of a command stopped in its run by ``what`` (``"interrupted (SIGINT)"``, a
    full disk) and, once its run folder ``run_folder`` exists and the command has ``--resume``
    (``resumable``), how to go on: the last training step this process completed in that folder
    (where its training had started), the folder's last intact checkpoint, ``then`` ``--resume``
    (``"free space, then continue"``)."""
    if run_folder is None or not resumable:
        return what
    folder = Path(run_folder) / "checkpoints"
    mine = _progress.checkpoints is not None and os.path.realpath(_progress.checkpoints) == os.path.realpath(folder)
    ckpt = _intact_checkpoint(_progress.checkpoints if mine else folder)
    at = f" after step {_progress.step}" if mine else ""
    where = f"the last intact checkpoint is {ckpt}" if ckpt is not None else "no checkpoint was written yet"
    return f"{what}{at}; {where}: {then} with --resume"


def _report_terminate() -> None:
    """Once a run's training starts under ``torchrun`` (a process group of several, the main
    thread, SIGTERM not handled otherwise): answer SIGTERM with :func:`_on_terminate`. (Before,
    SIGTERM ends the process without a word: a refusal of the input is rank 0's line.)"""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not _initialized() or dist.get_world_size() <= 1 \
            or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_terminate)


def _on_terminate(signum: int, frame: Any) -> None:
    """SIGTERM under ``torchrun``: another process failed or was killed (or the launch was
    interrupted), and ``torchrun`` ends this one before any wait for that process could fail.
    One line (as :func:`peer_failure`'s: this process's last completed step and the last intact
    checkpoint) and exit status 1, without the interpreter's teardown; nothing when this process
    is already ending with its own line (a lost process it is naming)."""
    global _failed
    if _failed:
        return
    _failed = True
    rank, world = dist_info().rank, dist_info().world_size
    told = _told()
    if told is not None:  # the process that failed said why (tell_others)
        other, cause, then = told
        sys.stderr.write(f"error: rank {rank}: ended by SIGTERM (torchrun's, as rank {other} of {world} "
                         f"stopped: {cause}); {_where_it_stops(then)}\n")
        _exit_without_teardown(1)
    sys.stderr.write(f"error: rank {rank}: ended by SIGTERM (torchrun's, as another of the {world} processes "
                     f"failed or was killed: its report names it; or the launch was stopped); "
                     f"{_where_it_stops()}\n")
    _exit_without_teardown(1)


def end_silently_on_terminate() -> None:
    """SIGTERM ends this process without a word again (a process that waits for ``torchrun`` to
    end it after rank 0 printed the line that matters: a refused input)."""
    if signal.getsignal(signal.SIGTERM) is _on_terminate:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def leave_it_to_rank_0(grace_s: float) -> None:
    """Before the line of an error every process of a ``torchrun`` launch meets alike (a refused
    input, an input changed during the run): a process other than rank 0 ends without a word on
    SIGTERM and waits ``grace_s``, in which the launcher ends it once rank 0 has said it (a
    process that meets the error alone still says it, after the wait). Rank 0 goes on at once."""
    if not is_main_process():
        end_silently_on_terminate()  # torchrun ends this process in its wait: no second line
        time.sleep(grace_s)


def world_size() -> int:
    """Processes of the run: of the initialized process group, else of the ``torchrun``
    environment (``WORLD_SIZE``), so it is right before the group is joined too."""
    if _initialized():
        return int(dist.get_world_size())
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """Whether this process is rank 0: of the initialized process group, else of the
    ``torchrun`` environment (``RANK``), so it is right before the group is joined too."""
    if _initialized():
        return dist.get_rank() == 0
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


def pass_share() -> PassShare:
    """This process's :class:`~fhcnn.data.lazy.PassShare` of a streamed pass over a volume
    (statistics, label scans): with a joined group of several processes, its block of the
    slabs, the parts gathered over the group (``all_gather_object``); else the whole pass."""
    from ..data.lazy import ONE_PROCESS, PassShare

    if not (_initialized() and dist.get_world_size() > 1):
        return ONE_PROCESS
    return PassShare(dist.get_rank(), dist.get_world_size(), all_gather_objects)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order: ``[obj]`` without a group of several."""
    if not (_initialized() and dist.get_world_size() > 1):
        return [obj]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def barrier() -> None:
    if _initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _leading(batch: Any, sizes: set[int]) -> None:
    if isinstance(batch, torch.Tensor):
        if batch.dim() > 0:
            sizes.add(batch.shape[0])
    elif isinstance(batch, dict):
        for v in batch.values():
            _leading(v, sizes)
    elif isinstance(batch, (list, tuple)):
        for v in batch:
            _leading(v, sizes)


def _slice(batch: Any, start: int, stop: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[start:stop] if batch.dim() > 0 else batch
    if isinstance(batch, dict):
        return {k: _slice(v, start, stop) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_slice(v, start, stop) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_slice(v, start, stop) for v in batch)
    return batch


def shard_batch(batch: Any, rank: int, world_size: int) -> Any:
    """This rank's contiguous slice of a global batch (tensors / tuples / lists / dicts).

    Every tensor with a leading dimension is cut along it; they must all have the same
    leading size ``N``, divisible by ``world_size`` (so every rank's mean loss has the
    same weight and the averaged gradient equals the one-process gradient).
    """
    if world_size <= 1:
        return batch
    sizes: set[int] = set()
    _leading(batch, sizes)
    if len(sizes) != 1:
        raise ValueError(f"cannot split the batch over {world_size} processes: its tensors have "
                         f"different leading (batch) sizes {sorted(sizes)}")
    n = sizes.pop()
    if n % world_size:
        raise ValueError(f"global batch size {n} is not divisible by the {world_size} processes; "
                         f"choose a batch size that is a multiple of the world size")
    per = n // world_size
    return _slice(batch, rank * per, (rank + 1) * per)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over all ranks (identity without a group). Returns a new tensor."""
    out = all_reduce_sum(values)
    if _initialized() and dist.get_world_size() > 1:
        out /= dist.get_world_size()
    return out


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over all ranks (a copy without a group). Returns a new tensor."""
    out = values.detach().clone()
    if _initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """The whole batch of a per-sample tensor ``x`` (``(n, ...)``, this rank's contiguous share,
    as :func:`shard_batch` cut it): every rank's share concatenated in rank order, with
    gradients (the backward sums every rank's gradient of its share); ``x`` without a group.
    For a loss term that is not a mean over samples (an energy distance): computed on the
    gathered batch it is the one-process term on every rank, and DistributedDataParallel's
    average of the gradients is its gradient."""
    if not (_initialized() and dist.get_world_size() > 1):
        return x
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # torch 2.13 points to a private module in its place
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x.contiguous()), 0)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects)."""
    if _initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def params_in_sync(module: torch.nn.Module) -> bool:
    """True if every rank holds bitwise the same parameters (checksum compared by all-reduce).

    Under DistributedDataParallel every rank applies the same averaged gradient, so the
    parameters stay identical; they drift apart when the loss bypasses DDP's ``forward``.
    """
    if not (_initialized() and dist.get_world_size() > 1):
        return True
    params = [p.detach() for p in module.parameters()]
    if not params:
        return True
    with torch.no_grad():
        # a position-weighted sum in float64 so that swapped values do not cancel
        total = torch.zeros((), dtype=torch.float64, device=params[0].device)
        for i, p in enumerate(params):
            flat = p.reshape(-1).double()
            w = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
            total = total + (i + 1) * (flat * w).sum()
        hi, lo = total.reshape(1).clone(), total.reshape(1).clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return bool((hi == lo).item())
