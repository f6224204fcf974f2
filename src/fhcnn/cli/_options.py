"""The run options every training command shares, and the config they build.

``--config NAME|FILE``, ``--set KEY=VALUE`` (repeatable), ``--out DIR``, ``--resume``,
``--overwrite``, ``--quiet``, ``--device``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, NoReturn, Sequence, TypeVar, cast

from ..config import available_configs, field_types, load_config
from ..config import check_shipped_config as shipped_config_of

__all__ = ["add_config_arguments", "config_from_args", "check_shipped_config", "OneLineErrors"]

T = TypeVar("T")

#: The config class (a function importing it) of each command that takes ``--config``, by the
#: command's name (``fhcnn vae train``), as :func:`add_config_arguments` met them: the line
#: refusing another command's shipped config names the command it is a config of.
_CONFIG_CLASSES: dict[str, Callable[[], type]] = {}


class OneLineErrors(argparse.ArgumentParser):
    """argparse with the project's error form: one line ``error: ...``, exit code 2 (its
    sub-parsers are of the same class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


class _ConfigOption(argparse.Action):
    """``--config``: stored like a plain option; its help names the shipped configs the command's
    config class loads from, found when the help is shown (building the parser of every command
    imports no config class and reads no config file)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.listed = False  # no list while argparse checks the help text as the option is added
        self.config_class: Callable[[], type] | None = None

    @property  # type: ignore[override]
    def help(self) -> str | None:
        if self._help is None or not self.listed:
            return None if self._help is None else self._help.replace("{names}", "")
        names = ", ".join(available_configs(self.config_class() if self.config_class else None))
        return self._help.replace("{names}", f" ({names})" if names else "")

    @help.setter
    def help(self, text: str | None) -> None:
        self._help = text

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)


def add_config_arguments(parser: argparse.ArgumentParser, default_config: str | None = None,
                         out_required: bool = False, config_class: Callable[[], type] | None = None) -> None:
    """Add the common run options to an argparse parser.

    ``--config NAME|FILE``, ``--set KEY=VALUE`` (repeatable, stored in ``args.overrides``),
    ``--out DIR``, ``--resume``, ``--overwrite``, ``--quiet``, ``--device DEVICE``.

    Args:
        config_class: a function returning the command's config dataclass (it imports it when
            called): ``--help`` lists only the shipped configs of that class, and
            :func:`check_shipped_config` names the command another one is of. ``None``: every
            shipped config is listed.
    """
    parser.set_defaults(start_config=default_config, config_command=parser.prog)  # a file is read over start_config
    option = parser.add_argument(
        "--config", action=_ConfigOption, default=default_config, metavar="NAME|FILE",
        help="a YAML/TOML config file (read over the default config: it lists what differs) or the "
             "name of a shipped one{names}" + (f"; default {default_config}" if default_config else ""))
    option = cast(_ConfigOption, option)
    option.config_class, option.listed = config_class, True
    if config_class is not None:
        _CONFIG_CLASSES[parser.prog] = config_class
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")
    parser.add_argument("--out", required=out_required, metavar="DIR",
                        help="output folder (refused if it holds another run, unless --resume "
                             "or --overwrite, or other files)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its latest valid checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an --out folder that holds one (only the files "
                             "fhcnn wrote there, listed in its run.json, are removed)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    parser.add_argument("--device", default=None,
                        help="auto | cpu | cuda | cuda:N | mps (overrides train.device)")


def command_line_overrides(cls: type, args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(override, as given)`` pairs: each ``--set KEY=VALUE``, ``--scale S`` as ``data.scale=S``
    and ``--device D`` as ``train.device=D`` (where the command has them) for a config of type
    ``cls``, with the option the user typed (for an error line that names it)."""
    pairs = [(o, f"--set {o}") for o in getattr(args, "overrides", None) or []]
    if getattr(args, "scale", None) is not None:
        pairs.append((f"data.scale={args.scale}", f"--scale {args.scale:g}"))
    device = getattr(args, "device", None)
    if device is not None:
        hints = field_types(cls)
        if "train" in hints and dataclasses.is_dataclass(hints["train"]) and \
                "device" in {f.name for f in dataclasses.fields(hints["train"])}:
            pairs.append((f"train.device={device}", f"--device {device}"))
        elif "device" in hints:
            pairs.append((f"device={device}", f"--device {device}"))
    return pairs


def check_shipped_config(cls: type, args: argparse.Namespace) -> None:
    """Refuse a ``--config NAME`` that is another command's shipped config, naming the commands
    it is a config of (:func:`fhcnn.config.check_shipped_config`, with the commands this
    parser met)."""
    given = getattr(args, "config", None)
    if given is not None:
        shipped_config_of(cls, given, getattr(args, "config_command", None) or "this command", _CONFIG_CLASSES)


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build the config from ``--config`` and ``--set`` (see :func:`command_line_overrides`); a
    config file is read over the command's default config; a bad value is refused naming the
    options as typed (``--scale 9``, not ``--set data.scale=9.0``), another command's shipped
    config naming its command (:func:`check_shipped_config`)."""
    check_shipped_config(cls, args)
    pairs = command_line_overrides(cls, args)
    return load_config(cls, getattr(args, "config", None), [o for o, _ in pairs],
                       start=getattr(args, "start_config", None), given=[g for _, g in pairs])


def config_file_input(config: str | None) -> str | None:
    """The ``--config`` argument if it is a file (an input: never written to), else ``None``."""
    from pathlib import Path

    if config and Path(config).expanduser().is_file():
        return config
    return None
