"""The launches of a test's processes (Gloo on the CPU).

:func:`torchrun`: one ``torchrun`` launch, retried. A launch sometimes dies at once with
"terminate called without an active exception" in a Gloo worker thread (seen under load and
once in a CI-style run; not reproduced in reruns): up to 3 launches, on fresh outputs (``clean``
removes what a failed launch wrote), every failed one reported. :func:`torchrun_command`: the
command line of a launch, for a test that runs it itself.

:func:`started_ranks`: the processes of one run started directly, without a launcher (the
environment ``torchrun`` would give them set by the test): a process stopped or killed outside
any launcher.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from fhcnn.training.distributed import launch_env

SRC = Path(__file__).resolve().parents[1] / "src"


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node nproc *args``."""
    # --standalone: torchrun picks a free port itself (other runs may use the machine at once)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]


def torchrun(nproc: int, args: Sequence[str], *, clean: Callable[[], None], env: dict[str, str] | None = None,
             timeout: float = 300, done: Callable[[subprocess.CompletedProcess], bool] | None = None
             ) -> subprocess.CompletedProcess:
    """:func:`torchrun_command` until ``done(proc)`` (default: exit code 0), at most 3 times;
    raises AssertionError with every failed launch's output tail."""
    cmd = torchrun_command(nproc, args)
    ok = done or (lambda proc: proc.returncode == 0)
    failures = []
    for _ in range(3):
        proc = subprocess.run(cmd, env=env or launch_env(), capture_output=True, text=True, timeout=timeout)
        if ok(proc):
            return proc
        failures.append(proc.stdout[-2000:] + proc.stderr[-2000:])
        clean()
        time.sleep(1.0)
    raise AssertionError("\n--- retry ---\n".join(failures))


def free_port() -> int:
    """A TCP port on 127.0.0.1 free a moment ago (for ``MASTER_PORT``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def started_ranks(argv: Sequence[str], nproc: int = 2, *, logs: Path | None = None
                  ) -> Iterator[list[subprocess.Popen]]:
    """Processes of ranks 0 to ``nproc - 1`` of one run on this machine, each
    ``python *argv`` (``src`` on ``PYTHONPATH``), started directly: the environment
    ``torchrun`` would give them (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
    ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` on a free port) set here. Their
    output: rank r's in ``logs-r.out`` and ``logs-r.err`` (``logs`` a path prefix), else pipes
    (text). Every process still running as the block ends is killed, and every one waited for."""
    port, procs = free_port(), []
    try:
        for r in range(nproc):
            env = launch_env(pythonpath=[SRC], RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nproc),
                             LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            if logs is None:
                procs.append(subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True))
                continue
            with open(f"{logs}-{r}.out", "w") as out, open(f"{logs}-{r}.err", "w") as err:
                procs.append(subprocess.Popen([sys.executable, *argv], env=env, stdout=out, stderr=err))
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.communicate()
