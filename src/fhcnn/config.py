"""Typed, validated run configurations: dataclasses loaded from YAML or TOML, with overrides.

An application describes its settings as a dataclass that nests other dataclasses, e.g.::

    @dataclass
    class SegmentConfig:
        model: ModelConfig = field(default_factory=ModelConfig)
        data: DataConfig = field(default_factory=DataConfig)
        train: TrainConfig = field(default_factory=TrainConfig)

and loads it with :func:`load_config`::

    cfg = load_config(SegmentConfig, "paper-video", overrides=["train.lr=3e-4"])

Every key is checked against the dataclass: unknown keys and values of the wrong type raise
:class:`fhcnn.errors.InputError` (a ``ValueError``) naming the key path (``train.lr``) and
the file. Supported field types: ``bool``, ``int``, ``float`` (ints accepted), ``str``,
``pathlib.Path``, ``Literal[...]``, ``X | None``, unions, ``list[X]``, ``tuple[X, ...]``,
``tuple[X, Y]``, ``dict[str, X]``, nested dataclasses and ``Any``. A dataclass may validate
its values further in ``__post_init__`` (raise ``ValueError``); the message is prefixed with
the key path.

Named configurations ship as ``src/fhcnn/configs/NAME.yaml`` (or ``.toml``) and are found by
:func:`resolve_config`; anything else is a path to a ``.yaml``/``.yml``/``.toml``/``.json``
file. :func:`save_config` writes the fully resolved config (YAML, atomically) so that
``load_config(cls, saved_path)`` gives back an equal object.

The command-line options that fill a config live in :mod:`fhcnn.cli._options`; the rules of
output folders in :mod:`fhcnn.rundir`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence, TypeVar, Union

import yaml

from .atomic import atomic_write_text
from .errors import InputError

__all__ = [
    "load_config", "save_config", "config_from_dict", "config_to_dict", "dump_config",
    "apply_overrides", "resolve_config", "available_configs", "read_config_file", "CONFIG_DIR",
    "field_types", "check_shipped_config",
]

T = TypeVar("T")

#: Folder of the shipped named configurations.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_SUFFIXES = (".yaml", ".yml", ".toml", ".json")

# --------------------------------------------------------------------------- YAML
class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` / ``3E+4`` as floats (YAML 1.2 behaviour).

    PyYAML follows YAML 1.1, where a float needs a dot, so ``lr: 3e-4`` would be a string.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(tuple, lambda d, v: d.represent_list(list(v)))
_Dumper.add_multi_representer(Path, lambda d, v: d.represent_str(str(v)))


def _parse_scalar(text: str) -> Any:
    """Parse one ``--set`` value with the same rules as a YAML file."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (SafeLoader subclass)
    except yaml.YAMLError:
        return text


# ------------------------------------------------------------------ files and names
def available_configs(cls: type | None = None) -> list[str]:
    """Names of the shipped configurations (``fhcnn/configs/NAME.yaml``).

    Args:
        cls: a config dataclass: only the shipped configs a ``cls`` config loads from (the
            others are another command's: a section or key they set is not ``cls``'s). Each
            file is read to tell (a few milliseconds each); ``None``: every name, no file read.
    """
    if not CONFIG_DIR.is_dir():
        return []
    names = sorted({p.stem for p in CONFIG_DIR.iterdir() if p.suffix in _SUFFIXES})
    if cls is None:
        return names
    return [n for n in names if _loads(cls, resolve_config(n))]


def _loads(cls: type, path: Path) -> bool:
    """Whether a ``cls`` config loads from the config file ``path``."""
    try:
        config_from_dict(cls, read_config_file(path))
    except InputError:
        return False
    return True


def check_shipped_config(cls: type, name_or_path: str | os.PathLike[str], command: str,
                         commands: Mapping[str, Callable[[], type]]) -> None:
    """Refuse a shipped config that a ``cls`` config does not load from (another command's),
    naming the commands of ``commands`` (``{command name: a function returning its config
    class}``) it is a config of, and ``command``'s own; a file, or a shipped config of ``cls``,
    passes.

    Raises:
        InputError: e.g. ``--config vae-tiny: vae-tiny is a config of fhcnn vae train, not of
            fhcnn volume (its shipped configs: ...)``; or the name is neither a file nor a
            shipped config (:func:`resolve_config`'s line).
    """
    path = resolve_config(name_or_path)
    if path.resolve().parent != CONFIG_DIR or _loads(cls, path):  # one file read, not every shipped one
        return
    owners = [prog for prog, of in commands.items() if path.stem in available_configs(of())]
    of_whom = ", ".join(owners[:-1]) + " and " + owners[-1] if len(owners) > 1 else "".join(owners)
    own = ", ".join(available_configs(cls))
    raise InputError(f"--config {name_or_path}: {path.stem} is "
                     + (f"a config of {of_whom}, not" if owners else "not a config")
                     + f" of {command}" + (f" (its shipped configs: {own})" if own else ""))


def resolve_config(name_or_path: str | os.PathLike[str]) -> Path:
    """Turn ``paper-video`` into the shipped file's path; a path to an existing file is kept.

    Raises:
        InputError: neither an existing file nor a shipped name (the message lists the names).
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.exists():
        raise InputError(f"config {str(p)!r} is not a file")
    name = str(name_or_path)
    if "/" not in name and os.sep not in name:
        for suffix in _SUFFIXES:
            cand = CONFIG_DIR / (name if name.endswith(suffix) else name + suffix)
            if cand.is_file():
                return cand
    names = available_configs()
    hint = difflib.get_close_matches(name, names, n=1)
    raise InputError(
        f"config {name!r}: no such file and no shipped config of that name"
        + (f" (did you mean {hint[0]!r}?)" if hint else "")
        + (f"; shipped: {', '.join(names)}" if names else ""))


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML/TOML/JSON config file into a dict (top level must be a mapping)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read config file ({e.__class__.__name__}: {e})") from e
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                try:
                    import tomli as tomllib  # type: ignore[no-redef]
                except ModuleNotFoundError:
                    raise InputError(f"{path}: reading TOML needs Python >= 3.11 or the 'tomli' "
                                     f"package (pip install tomli); YAML works everywhere") from None
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.load(text, Loader=_Loader)  # noqa: S506
    except InputError:
        raise
    except Exception as e:  # yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError
        msg = " ".join(str(e).split())
        raise InputError(f"{path}: not valid {suffix.lstrip('.') or 'YAML'} ({msg})") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


# ------------------------------------------------------------------ type checking
def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return str(tp)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _accepts_str(tp: Any) -> bool:
    if tp is str or tp is Path or tp is Any:
        return True
    if typing.get_origin(tp) in (Union, types.UnionType):
        return any(_accepts_str(a) for a in typing.get_args(tp))
    return False


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp`` and convert it (list -> tuple, int -> float, ...)."""
    bad = f"config key {key!r}: expected {_type_name(tp)}, got {type(value).__name__} {_show(value)}"
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise InputError(f"config key {key!r}: expected a mapping of {tp.__name__} fields, "
                             f"got {type(value).__name__} {_show(value)}")
        return _build(tp, value, key + ".")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        for a in args:
            if value == a and type(value) is type(a):
                return a
        raise InputError(f"config key {key!r}: must be one of {', '.join(repr(a) for a in args)}, "
                         f"got {_show(value)}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        # try exact-kind matches first so that e.g. `int | str` keeps 3 an int
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key)
            except InputError as e:
                errors.append(e)
        candidates = [a for a in args if a is not type(None)]
        if len(candidates) == 1 and (dataclasses.is_dataclass(candidates[0])
                                     or typing.get_origin(candidates[0]) is not None):
            raise errors[0]  # e.g. a wrong key deep inside an Optional[Dataclass]
        raise InputError(bad)
    if tp is type(None):
        if value is None:
            return None
        raise InputError(bad)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise InputError(bad + " (write true or false)")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        raise InputError(bad)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise InputError(bad)
    if tp is str:
        if isinstance(value, str):
            return value
        raise InputError(bad)
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise InputError(bad)
    if origin in (list, Sequence, typing.Sequence) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise InputError(bad)
        item = args[0] if args else Any
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(bad)
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else Any
            return tuple(_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise InputError(f"config key {key!r}: expected {len(args)} items "
                             f"({_type_name(tp)}), got {len(value)}: {_show(value)}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise InputError(bad)
        kt, vt = args if args else (Any, Any)
        return {_convert(k, kt, f"{key} key"): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise InputError(bad)
    raise TypeError(f"config key {key!r}: unsupported field type {tp!r}")


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:
        pass
    # A dataclass defined inside a function with string annotations naming local classes:
    # resolve field by field, falling back to the type of the default value.
    module = sys.modules.get(cls.__module__)
    globalns = dict(vars(module)) if module is not None else {}
    hints: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        tp: Any = f.type
        if isinstance(tp, str):
            try:
                tp = eval(tp, globalns, {"Literal": Literal, "Any": Any})  # noqa: S307
            except Exception:
                tp = None
        if tp is None or isinstance(tp, str):
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                tp = type(f.default_factory())  # type: ignore[misc]
            elif f.default is not dataclasses.MISSING and f.default is not None:
                tp = type(f.default)
            else:
                tp = Any
        hints[f.name] = tp
    return hints


def _build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for k in data:
        if k not in fields:
            hint = difflib.get_close_matches(str(k), list(fields), n=1)
            raise InputError(
                f"unknown config key {prefix + str(k)!r}"
                + (f" (did you mean {prefix + hint[0]!r}?)" if hint else "")
                + f"; allowed in {prefix.rstrip('.') or 'the top level'}: {', '.join(fields)}")
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except InputError as e:
        raise InputError(f"config {prefix.rstrip('.') or cls.__name__}: {e}") from e
    except (ValueError, TypeError) as e:
        raise InputError(f"config {prefix.rstrip('.') or cls.__name__}: {e}") from e


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build and validate a ``cls`` instance from nested plain data (as read from a file)."""
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"cls must be a dataclass type, got {cls!r}")
    if not isinstance(data, dict):
        raise InputError(f"config must be a mapping, got {type(data).__name__}")
    return _build(cls, data)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested data (dicts, lists, scalars, ``Path`` as str) of a config dataclass."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")
    return plain(cfg)


def _field_type(cls: type, path: list[str], full: str) -> Any:
    """The declared type at ``path`` (dataclass fields, then dict values)."""
    tp: Any = cls
    walked: list[str] = []
    for part in path:
        # unwrap Optional[Dataclass]
        if typing.get_origin(tp) in (Union, types.UnionType):
            dcs = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
            tp = dcs[0] if len(dcs) == 1 else tp
        if dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp) if f.init]
            if part not in names:
                prefix = ".".join(walked + [""]) if walked else ""
                hint = difflib.get_close_matches(part, names, n=1)
                raise InputError(
                    f"--set {full}: unknown config key {prefix + part!r}"
                    + (f" (did you mean {prefix + hint[0]!r}?)" if hint else "")
                    + f"; allowed: {', '.join(names)}")
            tp = _hints(tp)[part]  # type: ignore[arg-type]
        elif typing.get_origin(tp) is dict or tp is dict:
            args = typing.get_args(tp)
            tp = args[1] if args else Any
        elif tp is Any:
            pass
        else:
            raise InputError(f"--set {full}: {'.'.join(walked)!r} is a {_type_name(tp)}, "
                             f"it has no key {part!r}")
        walked.append(part)
    return tp


def apply_overrides(cls: type, data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``KEY.PATH=VALUE`` strings to nested ``data`` (a copy is returned).

    Values are parsed like YAML (``3e-4`` -> float, ``true`` -> bool, ``[1, 2]`` -> list,
    ``null`` -> None); a value for a string field is kept verbatim.
    """
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise InputError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
        key, text = item.split("=", 1)
        key = key.strip()
        path = key.split(".")
        if not key or any(not p for p in path):
            raise InputError(f"--set {item!r}: empty key")
        tp = _field_type(cls, path, item)
        value = _parse_scalar(text)
        if _accepts_str(tp) and not isinstance(value, str):
            try:
                _convert(value, tp, key)
            except InputError:
                value = text
        node = out
        for p in path[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            elif dataclasses.is_dataclass(nxt) and not isinstance(nxt, type):
                nxt = node[p] = config_to_dict(nxt)
            if not isinstance(nxt, dict):
                raise InputError(f"--set {item!r}: {p!r} is not a mapping in the config")
            node = nxt
        node[path[-1]] = value
    return out


def load_config(cls: type[T], path_or_name: str | os.PathLike[str] | None = None,
                overrides: Sequence[str] = (), start: str | None = None, *,
                given: Sequence[str] | None = None) -> T:
    """Load, override and validate a configuration.

    Args:
        cls: the config dataclass (every field needs a default).
        path_or_name: a ``.yaml``/``.yml``/``.toml``/``.json`` file, a shipped name
            (``"paper-video"``, see :func:`available_configs`) or ``None`` for the defaults.
        overrides: ``"key.path=value"`` strings (``--set``), applied after the file.
        start: a shipped config that a config *file* is read over (the commands pass their
            default config): the file then lists only what differs from it, and a key it
            leaves out has ``start``'s value, not the dataclass default. A complete file (the
            ``config.yaml`` a run writes) reads the same either way. Not used for a shipped name.
        given: the overrides as the command line gave them, one each (``"--scale 0.5"`` for
            ``data.scale=0.5``), for the line refusing a bad value (default ``--set`` each).

    Returns:
        A validated ``cls`` instance.

    Raises:
        InputError: unreadable file, unknown key, wrong type or value (the message names the
            file and the key path, e.g. ``config key 'train.lr': expected float, got str 'x'``).

    Example:
        >>> from fhcnn.training import TrainConfig
        >>> from dataclasses import dataclass, field
        >>> @dataclass
        ... class App:
        ...     train: TrainConfig = field(default_factory=TrainConfig)
        >>> load_config(App, None, ["train.lr=3e-4"]).train.lr
        0.0003
    """
    data: dict[str, Any] = {}
    source = None
    if path_or_name is not None:
        source = resolve_config(path_or_name)
        data = read_config_file(source)
        if start is not None and source.parent != CONFIG_DIR:
            data = _read_over(cls, read_config_file(resolve_config(start)), data)
    merged = apply_overrides(cls, data, overrides)
    try:
        return config_from_dict(cls, merged)
    except InputError as e:
        blame_file = source is not None and not overrides
        if source is not None and overrides:
            try:  # is the file alone already wrong?
                config_from_dict(cls, data)
            except InputError:
                blame_file = True
        if blame_file:
            raise InputError(f"{source}: {e}") from e
        if overrides:
            raise InputError(f"{' '.join(given or [f'--set {o}' for o in overrides])}: {e}") from e
        raise


def _read_over(cls: type, base: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a config file's) read over ``base``: a section of ``cls`` (a nested dataclass)
    given in both is merged key by key, any other value of ``data`` replaces ``base``'s whole
    (a list or a mapping value included)."""
    hints = _hints(cls)
    out = dict(base)
    for k, v in data.items():
        tp = hints.get(k)
        if isinstance(v, dict) and isinstance(out.get(k), dict) and isinstance(tp, type) \
                and dataclasses.is_dataclass(tp):
            out[k] = _read_over(tp, out[k], v)
        else:
            out[k] = v
    return out


def dump_config(cfg: Any) -> str:
    """The config as YAML text (the format :func:`save_config` writes)."""
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=None,
                     allow_unicode=True)


def save_config(cfg: Any, path: str | os.PathLike[str]) -> Path:
    """Write the fully resolved config atomically (YAML; JSON if the name ends in ``.json``).

    ``load_config(type(cfg), path) == cfg`` afterwards. Under multi-process training only
    rank 0 writes (the others just return the path).
    """
    path = Path(path)
    from .training.distributed import is_main_process

    if not is_main_process():
        return path
    if path.suffix.lower() == ".json":
        text = json.dumps(config_to_dict(cfg), indent=2) + "\n"
    else:
        from . import __version__
        text = f"# resolved {type(cfg).__name__} written by fhcnn {__version__}\n" + dump_config(cfg)
    atomic_write_text(path, text)
    return path


def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of every field of the config dataclass ``cls``."""
    return _hints(cls)
