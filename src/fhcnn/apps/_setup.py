"""What every application's command shares before its output folder is created."""

from __future__ import annotations

from pathlib import Path

__all__ = ["config_file_input"]


def config_file_input(config: str | None) -> str | None:
    """The ``--config`` argument if it is a file (an input: never written to), else ``None``."""
    if config and Path(config).expanduser().is_file():
        return config
    return None
