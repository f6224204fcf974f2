"""One ``torchrun`` launch of a test's processes (Gloo on the CPU), retried.

A launch sometimes dies at once with "terminate called without an active exception" in a Gloo
worker thread (seen under load and once in a CI-style run; not reproduced in reruns): up to 3
launches, on fresh outputs (``clean`` removes what a failed launch wrote), every failed one
reported.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Callable, Sequence

from fhcnn.training.distributed import launch_env


def torchrun(nproc: int, args: Sequence[str], *, clean: Callable[[], None], env: dict[str, str] | None = None,
             timeout: float = 300, done: Callable[[subprocess.CompletedProcess], bool] | None = None
             ) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc-per-node nproc *args`` until
    ``done(proc)`` (default: exit code 0), at most 3 times; raises AssertionError with every
    failed launch's output tail."""
    # --standalone: torchrun picks a free port itself (other runs may use the machine at once)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
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
