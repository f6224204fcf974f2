"""Configs: typed dataclasses from YAML/TOML/JSON, --set overrides, validation, output folders."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from fhcnn.atomic import atomic_write_text
from fhcnn.cli._options import add_config_arguments, config_from_args
from fhcnn.config import available_configs, dump_config, load_config, resolve_config, save_config
from fhcnn.errors import InputError
from fhcnn.rundir import RunFolder, prepare_output_dir
from fhcnn.training import TrainConfig


@dataclass
class ModelCfg:
    width: int = 8
    units: list[tuple[int, Literal["down", "up"] | None]] = field(
        default_factory=lambda: [(2, "down"), (2, "up")])
    reversible: bool | Literal["block"] = True
    hidden: int | list[int] | None = None
    h: float = 0.2
    name: str = "net"


@dataclass
class DataCfg:
    path: Path | None = None
    window: tuple[int, int, int] = (8, 32, 32)
    classes: dict[str, int] = field(default_factory=lambda: {"bg": 0, "fg": 1})


@dataclass
class AppCfg:
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    train: TrainConfig = field(default_factory=TrainConfig)


def test_defaults_and_round_trip(tmp_path: Path) -> None:
    cfg = load_config(AppCfg, None, ["train.lr=3e-4", "model.units=[[1, down], [3, up], [2, null]]",
                                     "data.path=/x/y.npy", "model.reversible=block",
                                     "data.window=[4, 16, 16]", "train.grad_clip=0.5"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.model.units == [(1, "down"), (3, "up"), (2, None)]
    assert cfg.data.path == Path("/x/y.npy") and cfg.data.window == (4, 16, 16)
    assert cfg.model.reversible == "block" and cfg.train.grad_clip == 0.5
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert out.read_text().startswith("# resolved AppCfg")
    assert load_config(AppCfg, out) == cfg
    save_config(cfg, tmp_path / "config.json")
    assert load_config(AppCfg, tmp_path / "config.json") == cfg
    assert not list(tmp_path.rglob("*.tmp*")), "temporary files left behind"


def test_yaml_and_toml_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("train:\n  lr: 1e-3\n  steps: 50\nmodel:\n  hidden: [4, 8]\n")
    (tmp_path / "a.toml").write_text('[train]\nlr = 1e-3\nsteps = 50\n[model]\nhidden = [4, 8]\n')
    a, b = load_config(AppCfg, tmp_path / "a.yaml"), load_config(AppCfg, tmp_path / "a.toml")
    assert a == b and a.train.lr == 1e-3 and a.train.steps == 50 and a.model.hidden == [4, 8]
    # overrides apply after the file
    assert load_config(AppCfg, tmp_path / "a.toml", ["train.steps=7"]).train.steps == 7
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(AppCfg, tmp_path / "empty.yaml") == AppCfg()


@pytest.mark.parametrize("text, match", [
    ("train:\n  lrr: 0.1\n", r"unknown config key 'train.lrr' \(did you mean 'train.lr'\?\)"),
    ("trian:\n  lr: 0.1\n", r"unknown config key 'trian' \(did you mean 'train'\?\)"),
    ("train:\n  lr: fast\n", r"config key 'train.lr': expected float, got str 'fast'"),
    ("train:\n  steps: 1.5\n", r"config key 'train.steps': expected int, got float 1.5"),
    ("train:\n  deterministic: 1\n", r"'train.deterministic': expected bool, got int 1"),
    ("train:\n  steps: true\n", r"'train.steps': expected int, got bool True"),
    ("train:\n  optimizer: lbfgs\n", r"'train.optimizer': must be one of 'adam', 'adamw', 'sgd'"),
    ("train: 3\n", r"'train': expected a mapping of TrainConfig fields, got int 3"),
    ("model:\n  units: [[1, sideways]]\n", r"'model.units\[0\]\[1\]': must be one of"),
    ("model:\n  units: [[1, up, 3]]\n", r"'model.units\[0\]': expected 2 items"),
    ("data:\n  window: [1, 2]\n", r"'data.window': expected 3 items"),
    ("data:\n  classes: {bg: zero}\n", r"'data.classes.bg': expected int, got str 'zero'"),
    ("train:\n  lr: -1\n", r"config train: lr must be a positive number, got -1"),
    ("train:\n  warmup_steps: 5\n  steps: 2\n", r"warmup_steps must be in \[0, steps=2\]"),
    ("- 1\n- 2\n", r"top level must be a mapping"),
    ("train: [unclosed\n", r"not valid yaml"),
])
def test_bad_files_are_rejected_with_key_path(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(InputError, match=match) as e:
        load_config(AppCfg, p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("override, match", [
    ("train.lrr=1", r"--set train.lrr=1: unknown config key 'train.lrr' \(did you mean 'train.lr'\?\)"),
    ("nope=1", r"unknown config key 'nope'"),
    ("train.lr", r"expected KEY=VALUE"),
    ("train.lr=abc", r"'train.lr': expected float, got str 'abc'"),
    ("train.lr.x=1", r"'train.lr' is a float, it has no key 'x'"),
    ("train.grad_clip=[1]", r"'train.grad_clip': expected float \| null"),
])
def test_bad_overrides(override: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_config(AppCfg, None, [override])


def test_override_values_parse_like_yaml() -> None:
    cfg = load_config(AppCfg, None, ["train.grad_clip=null", "model.name=123", "train.best_metric=miou",
                                     "model.hidden=16", "train.steps=2e3", "train.seed=-1"])
    assert cfg.train.grad_clip is None and cfg.train.best_metric == "miou"
    assert cfg.model.name == "123"  # a string field keeps the text
    assert cfg.model.hidden == 16 and cfg.train.steps == 2000 and cfg.train.seed == -1


def test_named_configs_resolve(tmp_path: Path) -> None:
    for name in available_configs():
        assert resolve_config(name).is_file()
    with pytest.raises(InputError, match="no such file and no shipped config"):
        resolve_config("definitely-not-a-config")
    f = tmp_path / "mine.yaml"
    f.write_text("{}\n")
    assert resolve_config(f) == f
    with pytest.raises(InputError, match="is not a file"):
        resolve_config(tmp_path)


def test_command_line_helpers(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  steps: 9\n")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--config", str(f), "--set", "train.lr=0.5", "--set", "model.width=4",
                              "--device", "cpu", "--out", str(tmp_path / "o"), "--quiet"])
    cfg = config_from_args(AppCfg, args)
    assert (cfg.train.steps, cfg.train.lr, cfg.model.width, cfg.train.device) == (9, 0.5, 4, "cpu")
    assert args.quiet and not args.resume and not args.overwrite
    assert "lr: 0.5" in dump_config(cfg)


def test_prepare_output_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "video.npy").write_bytes(b"x")
    out = prepare_output_dir(tmp_path / "runs" / "a", inputs=[data / "video.npy"])
    assert out.is_dir() and (out / "run.json").is_file()
    # files fhcnn writes (through fhcnn.atomic) are recorded in run.json
    atomic_write_text(out / "config.yaml", "x: 1\n")
    atomic_write_text(out / "checkpoints" / "step-1" / "model.safetensors", "w")
    RunFolder.deactivate()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="already holds a run .*--resume.*--overwrite"):
        prepare_output_dir(out)
    assert prepare_output_dir(out, resume=True) == out and (out / "checkpoints").exists()
    prepare_output_dir(out, overwrite=True)
    RunFolder.deactivate()
    assert not (out / "checkpoints").exists() and not (out / "config.yaml").exists()
    assert (out / "notes.txt").read_text() == "mine"  # nothing else is deleted
    # a non-empty folder that is not a run
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="not empty and holds no fhcnn run"):
        prepare_output_dir(other)
    with pytest.raises(InputError, match="holds no fhcnn run to resume"):
        prepare_output_dir(other, resume=True)
    # never write inside an input folder, next to an input file, or around an input
    with pytest.raises(InputError, match="inside the input folder"):
        prepare_output_dir(data / "out", inputs=[data])
    with pytest.raises(InputError, match="inside the input folder"):
        prepare_output_dir(data, inputs=[data])
    with pytest.raises(InputError, match="folder of the input file"):
        prepare_output_dir(data, inputs=[data / "video.npy"])
    with pytest.raises(InputError, match="lies inside the output folder"):
        prepare_output_dir(tmp_path, inputs=[data / "video.npy"])
    with pytest.raises(InputError, match="exists and is not a folder"):
        prepare_output_dir(data / "video.npy")
    # a file someone holds a lock on (an HDF5 file open in h5py, say) is a file, not a run at work
    fcntl = pytest.importorskip("fcntl")
    (tmp_path / "other.h5").write_bytes(b"x")
    with open(tmp_path / "other.h5", "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(InputError, match="exists and is not a folder"):
            prepare_output_dir(tmp_path / "other.h5")


def test_only_rank_zero_checks_and_writes(tmp_path: Path, monkeypatch) -> None:
    """Under torchrun (RANK set) ranks other than 0 neither refuse nor write."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"tool": "segment", "files": []}\n')
    monkeypatch.setenv("RANK", "1")
    assert prepare_output_dir(run) == run  # rank 0 did the checking
    save_config(AppCfg(), tmp_path / "other.yaml")
    assert not (tmp_path / "other.yaml").exists()
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(InputError, match="already holds a run"):
        prepare_output_dir(run, tool="segment")
    with pytest.raises(InputError, match="holds a run of fhcnn segment"):
        prepare_output_dir(run, overwrite=True)  # another command's run folder: never


def test_errors_blame_the_file_or_the_override(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("train:\n  lr: 0.1\n")
    bad.write_text("train:\n  lr: -0.1\n")
    with pytest.raises(InputError, match=r"^--set train.lr=-1: config train: lr must be a positive"):
        load_config(AppCfg, good, ["train.lr=-1"])
    with pytest.raises(InputError, match=r"bad.yaml: config train: lr must be a positive"):
        load_config(AppCfg, bad, ["train.steps=3"])
    assert load_config(AppCfg, bad, ["train.lr=0.5"]).train.lr == 0.5  # --set repairs the file


def test_a_config_file_of_a_command_is_read_over_its_default_config(tmp_path: Path, monkeypatch) -> None:
    """``fhcnn volume --config mine.yaml`` with a file that sets only ``train.steps`` ran the
    dataclasses' defaults for every other key (a width-192 video network with 16 x 64 x 64
    windows instead of the volume network); a command's config file is read over its default
    config, section by section, so it lists only what differs. A complete file (a run's
    ``config.yaml``) reads back equal, and ``fhcnn vae train`` and ``fhcnn demo`` do the same."""
    from fhcnn.apps.volume import VolumeConfig
    from fhcnn.cli import build_parser, main
    from fhcnn.engine import SegmentConfig

    f = tmp_path / "mine.yaml"
    f.write_text("train:\n  steps: 7\ndata:\n  window_depth: 48\n")
    parser, _ = build_parser()
    args = parser.parse_args(["volume", "img.npy", "--labels", "lab.npy", "--out", str(tmp_path / "o"),
                              "--config", str(f), "--set", "model.hidden=8,16,8"])
    expected = load_config(VolumeConfig, "volume", ["train.steps=7", "data.window_depth=48", "model.hidden=8,16,8"])
    assert config_from_args(VolumeConfig, args) == expected
    assert load_config(VolumeConfig, f) != expected  # the library's load_config alone: dataclass defaults

    # a complete file: the same config whatever it is read over
    for cls, name, shipped in ((SegmentConfig, "video", "paper-video"), (VolumeConfig, "volume", "volume-tiny")):
        run = load_config(cls, shipped, ["train.steps=300"])
        full = save_config(run, tmp_path / f"{name}.yaml")
        assert load_config(cls, full, start=name) == load_config(cls, full) == run

    # vae train and demo hand their default config to load_config
    seen = []

    def spy(cls, path_or_name=None, overrides=(), start=None):
        seen.append(start)
        raise InputError("stop here")

    # a module that binds load_config at import is imported first: imported under the spy it
    # would keep it for every later test in this process (seen under pytest-xdist's order)
    import fhcnn.apps.vae.pipeline  # noqa: F401

    monkeypatch.setattr("fhcnn.config.load_config", spy)
    assert main(["vae", "train", "--out", str(tmp_path / "v"), "--config", str(f)]) == 2
    assert main(["demo", "--out", str(tmp_path / "d"), "--config", str(f)]) == 2
    assert seen == ["vae-digits", "video-demo"]


def test_a_copy_of_a_shipped_config_runs_as_the_shipped_config(tmp_path: Path) -> None:
    """Users copy a shipped config to edit it; the copy is a file, read over its command's
    default config, so every shipped config states each value in which it differs from that
    default (``volume-tiny`` without ``conv_head: 0`` would have gained the volume config's conv
    head when copied). Every shipped config belongs to one command here (a new one must too)."""
    import shutil

    from fhcnn.apps.change import ChangeConfig
    from fhcnn.apps.vae import VAEConfig
    from fhcnn.apps.volume import VolumeConfig
    from fhcnn.engine import SegmentConfig

    command = {"video": (SegmentConfig, "video"), "video-tiny": (SegmentConfig, "video"),
               "paper-video": (SegmentConfig, "video"), "video-demo": (SegmentConfig, "video"),
               "change": (ChangeConfig, "change"), "change-tiny": (ChangeConfig, "change"),
               "paper-hyperspectral": (ChangeConfig, "change"),
               "volume": (VolumeConfig, "volume"), "volume-tiny": (VolumeConfig, "volume"),
               **{n: (VAEConfig, "vae-digits") for n in ("vae-digits", "vae-tiny", "vae-mnist", "vae-celeba")}}
    assert set(available_configs()) == set(command)
    for name, (cls, start) in command.items():
        copy = Path(shutil.copy(resolve_config(name), tmp_path / f"{name}.yaml"))
        assert load_config(cls, copy, start=start) == load_config(cls, name), name
