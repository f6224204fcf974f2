"""Smoke tests of the benchmarks at tiny sizes: JSON keys, exact memory accounting, and
that fully reversible memory does not grow with depth or coarsenings (never absolute times)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fhcnn.bench import BENCHMARKS, drift, load, memory, peers, table1, timing
from fhcnn.bench._common import build_net, measure_peak, state_numel, units_for
from fhcnn.cli import main


@pytest.fixture(autouse=True)
def _one_thread():
    """Benchmarks run single-threaded (as `fhcnn bench` does by default): on a shared
    2-core machine two threads per process make these tiny runs many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = {"dim": 2, "channels": 4, "size": 16, "stages": 2, "depth": 5, "hidden_cap": 4}


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_units_for_spreads_depth():
    assert units_for(11, 2) == [(3, "down"), (2, "down"), (2, "up"), (2, "up"), (2, None)]
    assert sum(n for n, _ in units_for(44, 5)) == 44


def test_memory_sweeps_exact_and_constant(tmp_path):
    sweeps = {"depth": [dict(TINY, depth=d) for d in (5, 10, 20)],
              "stages": [dict(TINY, stages=s, depth=10) for s in (0, 1, 2)]}
    r = memory.run(tmp_path, measure_peaks=False, sweeps_override=sweeps)
    saved = _load(tmp_path / "memory.json")
    assert (tmp_path / "memory.png").stat().st_size > 0
    assert set(saved) >= {"benchmark", "environment", "sweeps", "methods"}
    for name, rec in r["sweeps"].items():
        assert set(rec) >= {"x", "saved", "analytic", "paper_model", "peak", "state_bytes"}
        assert rec["analytic_matches_saved"], name
        rev, block, plain = rec["saved"]["reversible"], rec["saved"]["block"], rec["saved"]["plain"]
        assert len(set(rev)) == 1, f"reversible memory changes along {name}: {rev}"
        assert rev[0] == 3 * 4 * state_numel(rec["specs"][0])  # exactly the last pair + input
        assert all(p > b >= r_ for p, b, r_ in zip(plain, block, rev) if p)
    plain = r["sweeps"]["depth"]["saved"]["plain"]
    assert plain[0] < plain[1] < plain[2]  # plain grows with depth
    block = r["sweeps"]["stages"]["saved"]["block"]
    assert block[0] < block[1] < block[2]  # block grows with coarsenings


def test_measured_peak_worker():
    r = measure_peak(dict(TINY, size=32), "reversible")
    assert {"hwm", "rss", "method"} <= set(r)
    assert r["hwm"] > 0


def test_time_benchmark_keys(tmp_path):
    specs = [dict(TINY, depth=d, stages=0) for d in (2, 4)]
    r = timing.run(tmp_path, configs_override=(specs, 1))
    assert (tmp_path / "time.png").exists()
    row = _load(tmp_path / "time.json")["rows"][0]
    assert set(row) >= {"depth", "seconds", "median", "ratio"}
    assert set(row["ratio"]) == {"plain", "block", "reversible"} and row["ratio"]["plain"] == 1.0
    assert r["theory"] == pytest.approx(4 / 3)
    env = _load(tmp_path / "time.json")["environment"]  # times come with the machine they were measured on
    assert env["reference_s"] > 0 and env["cpu_model"] and env["torch_threads"] == 1
    assert env["load_1min"] is None or env["load_1min"] >= 0


def test_reference_workload_is_one_thread_and_restores_threads():
    """The reference runs on one thread whatever the caller set, and gives the caller its
    thread count back (a benchmark measures its own work at its own thread count)."""
    from fhcnn.bench import reference

    seen = []
    real = torch.nn.functional.conv3d

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    torch.set_num_threads(2)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.nn.functional, "conv3d", spy)
            t = reference.reference_seconds(repeats=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert t > 0 and seen == [1, 1, 1]  # one warm-up and two timed runs, each on one thread
    env = reference.environment(reference=False)
    assert "reference_s" not in env and env["cpu_count"] >= 1


def test_every_benchmark_that_writes_results_records_the_environment():
    """A time in benchmarks/results/ is only readable beside the machine it was measured on:
    every benchmark module of ``fhcnn bench`` and every script in ``benchmarks/`` that writes a
    result calls ``environment()`` (CPU model, threads, load, the reference workload)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    files = [p for p in (root / "src" / "fhcnn" / "bench").glob("*.py")
             if not p.name.startswith("_") and p.name != "reference.py"]
    files += [p for p in (root / "benchmarks").glob("*.py") if not p.name.startswith("_")]
    writers = [p for p in files if re.search(r"write_json\(|json\.dumps\(", p.read_text())]
    assert len(writers) >= 15, [p.name for p in writers]  # the check sees the benchmarks
    missing = [p.name for p in writers if "environment(" not in p.read_text()]
    assert not missing, f"benchmarks that write results without environment(): {missing}"


def test_drift_benchmark(tmp_path):
    st = dict(drift.settings(True), hs=[0.1, 1.0], max_depth=8, grad_depths=[1, 4],
              init_scales=[1.0])
    r = drift.run(tmp_path, settings_override=st)
    saved = _load(tmp_path / "drift.json")
    assert set(saved) >= {"inverse", "gradient", "first_depth_above_threshold", "init_scale_sweep"}
    e64 = r["inverse"]["float64"]["0.1"]["error"]
    assert max(e64) < 1e-12
    g = r["gradient"]["0.1"]
    assert set(g) >= {"reversible_fp32", "plain_fp32", "reversible_fp64"}
    assert max(g["reversible_fp64"]) < 1e-10
    assert drift.usable_depth([1, 2, 4], [1e-7, 1e-3, None]) == 2
    assert drift.usable_depth([1, 2], [1e-7, 1e-6]) is None
    assert drift.depth_grid(16) == [1, 2, 3, 4, 6, 8, 11, 16]


def test_table1_exact_counts(tmp_path):
    r = table1.run(tmp_path, measure_peaks=False, sizes_override=([[1, 1, 1], [2, 1, 1], [1, 1, 2]], []))
    assert (tmp_path / "table1.png").exists()
    assert r["formula_equals_saved_tensor_bytes"]
    assert all(v["predicts_all_sizes"] for v in r["scaling_law"].values())
    hs = r["rows"]["hyperspectral"]
    state = 6 * 304 * 240 * 152 * 4
    assert hs["state_bytes"] == state
    assert hs["reversible"]["exact_saved_bytes"] == 3 * state  # last pair + input
    assert hs["block"]["exact_saved_bytes"] == 7 * state
    assert hs["plain"]["exact_saved_bytes"] == hs["plain"]["law_bytes"]
    # the paper's numbers are 19 (plain) and 3 (reversible) float32 states
    assert hs["paper_in_states"]["plain"] == pytest.approx(19, abs=0.01)
    assert hs["paper_in_states"]["reversible"] == pytest.approx(3, abs=0.01)


def test_peers_same_network(tmp_path, monkeypatch):
    cfg = {"spec": dict(TINY, size=16, depth=6, stages=1), "ks": [2, 3], "repeats": 1}
    r = peers.run(tmp_path, measure_peaks=False, config_override=cfg)
    saved = _load(tmp_path / "peers.json")
    assert set(saved) >= {"rows", "methods", "best_checkpoint", "peer_import_errors", "spec"}
    for m in r["methods"]:
        assert {"median_s", "time_vs_reversible", "time_vs_plain"} <= set(r["rows"][m])
        if m != "iunets":  # everything else computes exactly our function
            assert r["rows"][m]["grad_rel_diff_vs_reversible"] < 1e-4, m
    assert r["best_checkpoint"] in ("checkpoint:2", "checkpoint:3")


def test_peers_skip_when_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "peer_status",
                        lambda: {"memcnn": "ModuleNotFoundError: x", "iunets": "ModuleNotFoundError: y"})
    cfg = {"spec": dict(TINY, depth=3, stages=1), "ks": [1], "repeats": 1}
    r = peers.run(tmp_path, measure_peaks=False, config_override=cfg)
    assert "memcnn" not in r["methods"] and "iunets" not in r["methods"]
    assert set(r["peer_import_errors"]) == {"memcnn", "iunets"}


def test_memcnn_gradients_match_ours():
    pytest.importorskip("memcnn")
    spec = dict(TINY, depth=4, stages=1, dtype="float64")
    net = build_net(spec)
    model = peers.build_memcnn(spec)
    x = torch.randn(1, 4, 16, 16, dtype=torch.float64)
    net.reversible = True
    net(x).square().sum().backward()  # memcnn does not support torch.autograd.grad
    a = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    model(x).square().sum().backward()
    b = [p.grad for p in model.parameters()]
    assert len(a) == len(b) > 0
    assert all(torch.allclose(u, v, rtol=1e-9, atol=1e-12) for u, v in zip(a, b))


def test_cli_bench(tmp_path, capsys):
    from fhcnn.bench import IN_ALL

    assert set(IN_ALL) == {"memory", "table1", "peers", "time", "drift", "spatial", "backward"}
    assert set(BENCHMARKS) == set(IN_ALL) | {"volume_memory", "copy_memory"}
    with pytest.raises(ValueError):
        load("nope")
    assert main(["bench", "memory", "--out", str(tmp_path), "--device", "tpu"]) == 2
    assert "error:" in capsys.readouterr().err
    from fhcnn.resources import logical_cpus

    out = tmp_path / "many"  # more threads than CPUs: every parallel region waits (17x slower)
    assert main(["bench", "drift", "--quick", "--out", str(out), "--threads", str(logical_cpus() + 1)]) == 2
    assert "more than the" in capsys.readouterr().err and not out.exists()


def test_backward_peak_benchmark(tmp_path):
    from fhcnn.bench import backward

    # big enough that one step's activations (~30 states) stand far above the noise between
    # two idle processes (up to ~1 MB), the baseline where the peak counter cannot be reset
    spec = dict(TINY, size=256, depth=6, stages=1)
    r = backward.run(tmp_path, configs_override={"tiny": spec})
    assert (tmp_path / "backward_peak.png").stat().st_size > 0
    saved = _load(tmp_path / "backward_peak.json")
    d = saved["rows"]["tiny"]["decomposition"]
    assert set(d["parts_states"]) == set(backward.PARTS)
    # the parts add up to the measured peak, exactly
    assert sum(d["parts_bytes"].values()) == d["peak_bytes"]
    # process RSS above idle: a plain step holds every state, a reversible one about two
    rss, state = r["rows"]["tiny"]["rss"], d["state_bytes"]
    assert rss["plain"]["peak_bytes"] > 6 * state
    assert rss["reversible"]["peak_bytes"] < rss["plain"]["peak_bytes"] - 2 * state


def test_volume_memory_worker_measures_each_phase(tmp_path):
    """One run of the volume-memory benchmark in this process (a 48^3 volume on disk, out of
    core): every phase reports its peak, the prediction reaches the on-disk output and is
    scored against the truth."""
    import zarr

    from fhcnn.bench import volume_memory as vm

    inputs = vm._write_inputs(tmp_path, (48, 48, 48))
    job = {**inputs, "config": "video-tiny", "mode": "out-of-core", "out": str(tmp_path), "threads": 1,
           "overrides": ["train.steps=2", "data.window_depth=16", "data.window_height=16", "data.window_width=16",
                         "data.predict_shifts=1", "data.predict_flip=false"]}
    rec = vm.worker(job)
    assert all(rec[p]["peak_rss"] > 0 for p in ("read", "prepare", "train", "predict"))
    pred = zarr.open_array(str(tmp_path / "prediction.zarr"), mode="r")[...]
    assert pred.shape == (48, 48, 48) and set(np.unique(pred)) <= {0, 1, 2}
    assert 0 <= rec["miou"] <= 1 and rec["voxels"] == 48**3


def test_copy_memory_benchmark_copies_exactly_and_reports_the_staged_copy(tmp_path):
    """The copy benchmark's quick cases: each file is copied exactly (the chunks of 64 kept),
    the flat NIfTI whose slab one chunk thick exceeds the read budget goes through the staging
    file, the cube does not, and every case reports a peak above its start."""
    from fhcnn.bench import copy_memory as cm

    r = cm.run(tmp_path, quick=True)
    assert (tmp_path / "copy_memory.png").stat().st_size > 0
    rows = {(row["format"], tuple(row["stored_shape"])): row for row in _load(tmp_path / "copy_memory.json")["rows"]}
    assert len(rows) == len(cm.QUICK_CASES) == len(r["rows"])
    flat, cube = rows[("nii.gz", (1024, 1024, 8))], rows[("nii.gz", (64, 64, 64))]
    assert flat["staged"] and not cube["staged"]
    assert flat["chunks"] == [64, 64, 8] and cube["chunks"] == [64, 64, 64]
    for row in rows.values():
        assert row["peak_rss"] >= row["rss_before"] > 0 and row["compressed"]
    path = tmp_path / "one.nii.gz"
    cm._write(path, "nii.gz", (70, 65, 9))
    rec = cm.worker({"file": str(path), "out": str(tmp_path)})
    import nibabel as nib
    import zarr

    from fhcnn.data.volumes import open_volume

    want = np.asarray(open_volume(str(path)).channels[0][...])
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "copy.zarr"), mode="r")[...], want)
    assert want.shape == tuple(rec["shape"]) and nib.load(str(path)).shape == (70, 65, 9)


@pytest.mark.parametrize("quiet", [True, False])
def test_a_quiet_bench_still_names_the_files_it_wrote(tmp_path, capsys, monkeypatch, quiet):
    """--quiet hides the progress, not the results: it hid the "wrote PATH" lines too, so a
    quiet run said nothing of what it wrote. (A benchmark of one tick in place of table1's
    minute of work: what is checked is the command's reporting.)"""
    import types

    import fhcnn.bench

    def run(out_dir, quick=False, device="cpu", tick=None):
        for ext in (".json", ".png"):
            (out_dir / f"table1{ext}").write_text("{}")
        tick("done")
        return {}

    fake = types.SimpleNamespace(NAME="table1", work=lambda quick: 1, run=run)
    monkeypatch.setattr(fhcnn.bench, "load", lambda name: fake)
    out = tmp_path / "res"
    assert main(["bench", "table1", "--quick", "--out", str(out)] + (["--quiet"] if quiet else [])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"table1: wrote {out / 'table1.json'} and {out / 'table1.png'}" in lines
    assert any(line.startswith("done in") for line in lines) is not quiet


@pytest.mark.parametrize("device", ["cuda:x", "cudax", "cuda:3"])
def test_bench_refuses_a_cuda_device_it_cannot_use_before_out_exists(tmp_path, capsys, monkeypatch, device):
    """With CUDA present, --device was checked only for starting with 'cuda': 'cuda:x', 'cudax'
    and an index past the visible GPUs made the results folder and then failed in the first
    benchmark with a traceback. They are one line, exit 2, and no --out."""
    import fhcnn.bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    ran = []
    monkeypatch.setattr(fhcnn.bench, "load", lambda name: ran.append(name))
    out = tmp_path / "res"
    assert main(["bench", "drift", "--quick", "--quiet", "--out", str(out), "--device", device]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: device ")
    assert ("not understood" in err[0]) if device != "cuda:3" else ("only 1 CUDA device(s)" in err[0])
    assert not out.exists() and ran == []


def test_ctrl_c_while_spatial_workers_run_is_one_line(tmp_path):
    # the terminal sends Ctrl-C to every process of the program: each worker of `fhcnn bench
    # spatial` (torch.multiprocessing.spawn, most often still importing torch) printed its own
    # KeyboardInterrupt traceback around the program's line. They never take SIGINT now: the
    # program alone does, and ends them
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from fhcnn.training.distributed import launch_env

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "fhcnn", "bench", "spatial", "--quick", "--out", str(out),
                             "--quiet"], env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a terminal's command has
    try:
        t0, workers = time.monotonic(), []
        while len(workers) < 2:  # the workers of the 2-process measurement, started
            assert proc.poll() is None and time.monotonic() - t0 < 120, "no spatial workers within 120 s"
            time.sleep(0.05)
            workers = [c for c in psutil.Process(proc.pid).children()
                       if any("spawn_main" in a for a in c.cmdline())]
        for w in workers:  # SIGINT blocked in them from their start
            blocked = next(line for line in open(f"/proc/{w.pid}/status") if line.startswith("SigBlk:"))
            assert int(blocked.split()[1], 16) >> (signal.SIGINT - 1) & 1, blocked
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert (proc.returncode, err) == (130, "interrupted (SIGINT)\n")
    assert not any(w.is_running() for w in workers)  # ended by the program
    assert [p.name for p in out.iterdir()] == ["run.json"]  # no result


def _sleeping_worker(rank: int, seconds: float) -> None:
    import time

    time.sleep(seconds)


def test_sigterm_as_workers_start_ends_them(monkeypatch):
    """SIGTERM answered in Python (the program's Terminated) that lands while spawn_workers
    starts its workers raised out of the start: the workers already started were left running
    (and the program waited for them as it exited). It is answered after the start, as Ctrl-C
    is: the workers are ended and waited for, Terminated raised on."""
    import multiprocessing
    import os
    import signal

    import torch.multiprocessing as mp

    from fhcnn.signals import Terminated, interrupt_once
    from fhcnn.training.distributed import spawn_workers

    start = mp.start_processes

    def start_then_sigterm(*args, **kwargs):  # SIGTERM at the end of the start
        context = start(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return context

    monkeypatch.setattr(mp, "start_processes", start_then_sigterm)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, interrupt_once)
    try:
        with pytest.raises(Terminated):
            spawn_workers(_sleeping_worker, (60.0,), 2)
        assert multiprocessing.active_children() == []  # ended and waited for
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
        for p in multiprocessing.active_children():
            p.kill()
            p.join()
