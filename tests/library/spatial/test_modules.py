"""Each module of ``fhcnn.spatial`` on its own, split over 2 processes (Gloo, CPU): ``split``
(scatter), ``halo`` (the padded slab, its adjoint, the all-reduce), ``norm`` (group and batch
norm, input statistics), ``layers`` (the symmetric layer, the learnable wavelet), ``convert``
(state dict, gradient reduction); each equal to the same operation on the whole tensor. The
whole network split is tested in ``test_network_split.py``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="Gloo is not available")
def test_every_spatial_module_equals_the_whole_tensor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests._spatial_modules_worker import worker

    if sys.platform.startswith("linux"):
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(worker, args=(os.path.join(tmp_path, "store"), str(tmp_path)), nprocs=2)
    results = [json.loads((tmp_path / f"result-{r}.json").read_text()) for r in (0, 1)]
    if any("skip" in r for r in results):
        pytest.skip(f"Gloo processes cannot start here: {results}")
    for r in results:
        assert "error" not in r, r.get("error")
        assert len(r) == 11, sorted(r)
        bad = {k: v for k, v in r.items() if v > 1e-12}
        assert not bad, bad
