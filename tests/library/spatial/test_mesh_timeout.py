"""The groups of the ``data x space`` mesh wait ``train.peer_timeout``, not PyTorch's default.

With several data replicas (4 processes = 2 replicas x a split in 2) the mesh's space and data
groups are new process groups; without a timeout of their own they waited PyTorch's default of
30 minutes, so a stopped process (SIGSTOP) left the others waiting in a collective for half an
hour whatever ``train.peer_timeout`` said (``fhcnn volume ... --set parallel.space=2`` under
``torchrun --nproc-per-node 4``).
"""

from __future__ import annotations

import datetime
import json
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with Gloo is not available here")

TIMEOUT = 3.0  # seconds, the groups' timeout
ABSENT = 40.0  # seconds rank 3 stays away from the collective


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    from fhcnn.spatial import init_spatial

    torch.set_num_threads(1)
    result: dict = {}
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=TIMEOUT))
        split = init_spatial(3, (0,), (2,), data=2, timeout=TIMEOUT)
        # the mesh's layout: replica d owns ranks 2d, 2d + 1; position s's data group is s, 2 + s
        result["ranks"] = [dist.get_process_group_ranks(split.group),
                           dist.get_process_group_ranks(split.data_group)]
        if rank == 3:  # a process that stopped answering
            time.sleep(ABSENT)
            return
        t0 = time.monotonic()
        try:
            for group in (split.group, split.data_group):  # rank 2 waits for rank 3 in its space group
                dist.all_reduce(torch.ones(1), group=group)
            result.update(failed=False, seconds=time.monotonic() - t0)
        except Exception as e:  # noqa: BLE001 -- the wait for rank 3 failed, as it must
            result.update(failed=True, seconds=time.monotonic() - t0, what=str(e)[:200])
    except Exception:  # noqa: BLE001 -- reported by the test
        result = {"error": traceback.format_exc()}
    Path(out, f"result-{rank}.json").write_text(json.dumps(result))


@needs_gloo
def test_mesh_groups_of_several_replicas_wait_the_given_timeout(tmp_path, monkeypatch) -> None:
    import torch.multiprocessing as mp

    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ctx = mp.spawn(_worker, args=(4, str(tmp_path / "store"), str(tmp_path)), nprocs=4, join=False)
    t0 = time.monotonic()
    while not (tmp_path / "result-2.json").exists() and time.monotonic() - t0 < ABSENT + 20:
        time.sleep(0.1)
    for p in ctx.processes:  # rank 3 (and any process still waiting) need not be waited for
        if p.is_alive():
            p.kill()
        p.join()
    assert (tmp_path / "result-2.json").exists(), "rank 2 was still waiting for rank 3"
    got = json.loads((tmp_path / "result-2.json").read_text())
    assert "error" not in got, got["error"]
    assert got["failed"] and got["seconds"] < TIMEOUT + 10, got
    assert got["ranks"] == [[2, 3], [0, 2]], got


def test_a_split_run_gives_the_mesh_its_peer_timeout(monkeypatch) -> None:
    import fhcnn.spatial
    from fhcnn.engine import SegmentConfig
    from fhcnn.engine.parallel import SpaceRun

    seen: dict = {}

    class Stop(Exception):
        pass

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(fhcnn.spatial, "init_spatial", fake)
    cfg = SegmentConfig()
    cfg.parallel.space = 2
    cfg.train.peer_timeout = 17.0
    cfg.train.device = "cpu"
    with pytest.raises(Stop):
        SpaceRun.start(cfg, None, (16, 16, 16))  # type: ignore[arg-type]
    assert seen["timeout"] == 17.0
