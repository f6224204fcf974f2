"""The command line entry points: --help, info, python -m fhcnn, error reporting."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fhcnn
from fhcnn.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "info" in out and "demo" in out


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert fhcnn.__version__ in out and torch.__version__ in out
    assert "device" in out and "threads" in out


def test_python_dash_m(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fhcnn", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and fhcnn.__version__ in r.stdout
    # the exit status of the command reaches the shell (through training.exit_program)
    r = subprocess.run([sys.executable, "-m", "fhcnn", "segment", "missing.npy", "--labels", "missing.npy",
                        "--out", "never-created"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and not (tmp_path / "never-created").exists()


# sitecustomize.py of the test below: SIGINT to this process (Ctrl-C) as module INTERRUPT_AT is
# imported, and again at every import after it (more Ctrl-C while the first is answered)
_INTERRUPT_AT_IMPORT = r"""
import os, signal, sys

class _Interrupt:
    started = False

    def find_spec(self, name, path=None, target=None):
        if self.started or name == os.environ["INTERRUPT_AT"]:
            self.started = True
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, _Interrupt())
"""


@pytest.mark.parametrize("entry, at", [("python -m fhcnn", "torch.nn"), ("python -m fhcnn", "fhcnn.cli.bench"),
                                       ("console script", "torch")],
                         ids=["-m, in torch's import", "-m, as the commands are imported", "console script"])
def test_ctrl_c_while_the_program_starts_is_one_line(tmp_path, entry, at):
    # Ctrl-C in the first seconds (torch and the commands being imported: `import fhcnn` imported
    # torch before the command line was read) printed Python's KeyboardInterrupt traceback; and
    # after an interrupted import of torch, the line of an interrupted command imported it again,
    # which failed with a traceback of its own (a partially initialized module) or crashed
    site, work, tmp = tmp_path / "site", tmp_path / "work", tmp_path / "tmp"
    for folder in (site, work, tmp):
        folder.mkdir()
    (site / "sitecustomize.py").write_text(_INTERRUPT_AT_IMPORT)
    if entry == "console script":  # as pip's wrapper of [project.scripts] runs it
        pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
        module, func = re.findall(r'^fhcnn = "([\w.]+):(\w+)"$', pyproject, re.M)[0]
        cmd = [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]
    else:
        cmd = [sys.executable, "-m", "fhcnn"]
    env = dict(os.environ, INTERRUPT_AT=at, TMPDIR=str(tmp),
               PYTHONPATH=os.pathsep.join([str(site), str(Path(fhcnn.__file__).parents[1])]))
    r = subprocess.run([*cmd, "volume", "c0.npy", "--labels", "lab.npy", "--out", "out", "--config", "volume-tiny"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (130, "", "interrupted (SIGINT)\n")
    assert list(work.iterdir()) == [] and list(tmp.iterdir()) == []


def test_a_program_started_with_sigint_ignored_keeps_ignoring_it(tmp_path):
    # a background job of a script (or nohup) starts with SIGINT ignored, so that a Ctrl-C meant
    # for the command in the foreground leaves it running: Python keeps that, and so does fhcnn
    (tmp_path / "sitecustomize.py").write_text(_INTERRUPT_AT_IMPORT)
    env = dict(os.environ, INTERRUPT_AT="torch",
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(fhcnn.__file__).parents[1])]))
    ignored = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
               "os.execv(sys.executable, [sys.executable, '-m', 'fhcnn', 'info'])")
    r = subprocess.run([sys.executable, "-c", ignored], env=env, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (0, "") and fhcnn.__version__ in r.stdout


def test_ctrl_c_as_the_program_exits_changes_nothing(tmp_path):
    # Ctrl-C in the interpreter's teardown after a finished command (up to a second after a
    # run) printed "Exception ignored in atexit callback" with a KeyboardInterrupt traceback
    # (or, later in the teardown, ended the process as killed by SIGINT, without a line)
    (tmp_path / "sitecustomize.py").write_text(  # the first atexit callback registered: the last run
        "import atexit, os, signal\natexit.register(os.kill, os.getpid(), signal.SIGINT)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(fhcnn.__file__).parents[1])]))
    r = subprocess.run([sys.executable, "-m", "fhcnn", "info"], env=env, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (0, "") and fhcnn.__version__ in r.stdout


_ABANDONED_READ = r"""
import sys
from argparse import Namespace

from fhcnn.outcome import exit_status


async def read():
    return 0


def run(args):
    pending = read()  # what Ctrl-C leaves of a read through zarr's event loop
    raise KeyboardInterrupt


sys.exit(exit_status(run, Namespace()))
"""


def test_ctrl_c_in_a_read_through_an_event_loop_is_one_line(tmp_path):
    # a process of a torchrun launch stopped by Ctrl-C inside a zarr read printed Python's
    # "coroutine ... was never awaited" warnings when the read's coroutines were collected
    script = tmp_path / "abandoned.py"
    script.write_text(_ABANDONED_READ)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(fhcnn.__file__).parents[1])})
    assert (r.returncode, r.stderr) == (130, "interrupted (SIGINT)\n")


def test_importing_fhcnn_leaves_torch_dynamo_unimported():
    """torch._dynamo (1.3 s of the 2.9 s ``import fhcnn`` took) is imported by the first
    reversible forward or optimizer, not by the import: a command that refuses its input, or a
    worker process that never runs a network, starts without it."""
    code = ("import sys, fhcnn.cli, fhcnn.spatial, fhcnn.apps.volume.pipeline\n"
            "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo')))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout[-500:] + r.stderr[-2000:]


def test_exit_program_after_a_process_group(tmp_path):
    """After a joined (one-process Gloo) group, exit_program destroys it and exits with the
    status, output flushed, without the interpreter's teardown."""
    code = ("import torch.distributed as dist, sys\n"
            "from fhcnn.training.distributed import exit_program\n"
            f"dist.init_process_group('gloo', init_method='file://{tmp_path / 'init'}', rank=0, world_size=1)\n"
            "import atexit; atexit.register(lambda: print('teardown'))\n"
            "print('done', flush=False)\n"
            "exit_program(3)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and r.stdout.strip() == "done", r.stderr


def test_end_spawned_worker_skips_the_teardown(tmp_path):
    """A spawned worker whose group is destroyed ends with status 0, output flushed, and no
    interpreter teardown (where Gloo's threads can abort it): the atexit handler never runs."""
    code = ("import atexit, torch.distributed as dist\n"
            "from fhcnn.training.distributed import end_spawned_worker\n"
            f"dist.init_process_group('gloo', init_method='file://{tmp_path / 'init'}', rank=0, world_size=1)\n"
            "dist.destroy_process_group()\n"
            "atexit.register(lambda: print('teardown'))\n"
            "print('done', flush=False)\n"
            "end_spawned_worker()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "done", (r.stdout, r.stderr)


def test_user_errors_exit_2_without_traceback(monkeypatch, capsys):
    import fhcnn.cli.info as info

    def boom(args):
        raise ValueError("input.npy: contains NaN")
    monkeypatch.setattr(info, "run", boom)
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: input.npy: contains NaN"


def test_a_process_of_a_launch_says_its_own_errors(monkeypatch, capsys):
    """Under torchrun a process other than rank 0 waits before it prints a refusal of the input
    (every process meets it alike, and rank 0 says it), but prints it: the launcher ends the
    processes once one exits, so a rank-0-only line was lost whenever another exited first. An
    error of one process's own work (a file it could not write) is printed at once."""
    import fhcnn.cli.info as info
    import fhcnn.outcome as outcome
    import fhcnn.training.distributed as distributed
    from fhcnn.errors import InputError
    from fhcnn.rundir import InputsChangedError

    waits: list[float] = []
    monkeypatch.setattr(distributed.time, "sleep", waits.append)
    changed = InputsChangedError("labels lab.npy changed during training")  # every process finds it
    for rank, error, waited, code in (("1", InputError("input.npy: contains NaN"), [outcome.REFUSAL_GRACE_S], 2),
                                      ("1", PermissionError("out/slab.zarr: permission denied"), [], 2),
                                      ("0", InputError("input.npy: contains NaN"), [], 2),
                                      ("1", changed, [outcome.REFUSAL_GRACE_S], 1), ("0", changed, [], 1)):
        def boom(args, error=error):
            raise error
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setattr(info, "run", boom)
        waits.clear()
        assert main(["info"]) == code
        assert waits == waited and capsys.readouterr().err.strip() == f"error: {error}"


def test_an_error_line_is_one_write(monkeypatch):
    """The processes of a torchrun launch share stderr: each error line goes out in one write
    (print's separate newline let the ranks' lines run together on one line)."""
    import fhcnn.cli.info as info

    class Recorder:
        def __init__(self) -> None:
            self.writes: list[str] = []

        def write(self, text: str) -> int:
            self.writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    def boom(args):
        raise ValueError("input.npy: contains NaN")
    monkeypatch.setattr(info, "run", boom)
    err = Recorder()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["info"]) == 2
    assert err.writes == ["error: input.npy: contains NaN\n"]


def test_training_failure_exits_1_with_one_line(monkeypatch, capsys):
    import fhcnn.cli.info as info
    from fhcnn.training import NonFiniteLossError

    def boom(args):
        raise NonFiniteLossError(step=2, value=float("nan"))
    monkeypatch.setattr(info, "run", boom)
    assert main(["info"]) == 1
    assert "step 2" in capsys.readouterr().err


def test_change_help_names_every_label_map_format(tmp_path, capsys):
    """`fhcnn change --help` names each format a change map (--labels) is read from: a .mat map
    (its largest 2D array) is read like the others, and a user choosing a format reads the help."""
    import numpy as np
    import scipy.io

    from fhcnn.data.hyperspectral.labels import read_change_map

    truth = np.array([[0, 1, 255], [1, 0, 0]], np.uint8)
    scipy.io.savemat(tmp_path / "map.mat", {"gt": truth})
    np.testing.assert_array_equal(read_change_map(tmp_path / "map.mat", (2, 3)), truth)
    assert main(["change", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    labels = text[text.index("--labels MAP 2D"):][:120]
    assert all(s in labels for s in (".npy", ".png", ".bmp", ".tif", ".mat")), labels


def _shipped_in_help(capsys, argv: list[str]) -> list[str]:
    """The shipped configs ``fhcnn ARGV --help`` lists for ``--config``."""
    import re

    assert main(argv + ["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    listed = re.search(r"name of a shipped one \(([^)]*)\)", text)
    assert listed, text
    return [n for n in re.sub(r"-\s+", "-", listed.group(1)).split(", ")]


def test_help_lists_only_the_shipped_configs_a_command_loads(monkeypatch, capsys):
    """Each command's ``--config`` help lists exactly the shipped configs its config loads from:
    `fhcnn volume --help` listed the vae-* and change-* configs too, which it then refuses."""
    from fhcnn.apps.change import ChangeConfig
    from fhcnn.apps.segment import SegmentConfig
    from fhcnn.apps.vae import VAEConfig
    from fhcnn.apps.volume import VolumeConfig
    from fhcnn.config import available_configs, load_config
    from fhcnn.errors import InputError

    def loads(cls: type, name: str) -> bool:
        try:
            load_config(cls, name)
        except InputError:
            return False
        return True

    monkeypatch.setenv("COLUMNS", "400")
    for argv, cls in ((["volume"], VolumeConfig), (["segment"], SegmentConfig), (["change"], ChangeConfig),
                      (["vae", "train"], VAEConfig)):
        listed = _shipped_in_help(capsys, argv)
        assert listed == [n for n in available_configs() if loads(cls, n)], argv
    assert _shipped_in_help(capsys, ["vae", "train"]) == ["vae-celeba", "vae-digits", "vae-mnist", "vae-tiny"]
    volume = _shipped_in_help(capsys, ["volume"])
    assert {"volume", "volume-tiny"} <= set(volume) and not any(n.startswith(("vae", "change")) for n in volume)


def test_another_commands_shipped_config_is_refused_naming_its_command(tmp_path, capsys):
    """``--config`` naming another command's shipped config is one line naming the command(s) it
    is a config of and this command's own, exit 2, before OUT exists (it was the loader's
    'unknown config key' line, blaming the shipped file)."""
    import numpy as np

    np.save(tmp_path / "img.npy", np.zeros((8, 8, 8), np.float32))
    np.save(tmp_path / "lab.npy", np.zeros((8, 8, 8), np.uint8))
    out = tmp_path / "out"
    volume = ", ".join(["paper-video", "video", "video-demo", "video-tiny", "volume", "volume-tiny"])
    assert main(["volume", str(tmp_path / "img.npy"), "--labels", str(tmp_path / "lab.npy"),
                 "--config", "vae-tiny", "--out", str(out)]) == 2
    assert capsys.readouterr().err == ("error: --config vae-tiny: vae-tiny is a config of fhcnn vae train, "
                                       f"not of fhcnn volume (its shipped configs: {volume})\n")
    assert main(["vae", "train", "--config", "video-tiny", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        "error: --config video-tiny: video-tiny is a config of fhcnn segment, fhcnn change and fhcnn volume, "
        "not of fhcnn vae train (its shipped configs: vae-celeba, vae-digits, vae-mnist, vae-tiny)\n")
    assert not out.exists()
