"""``fhcnn info``: versions, device and threads."""

from __future__ import annotations

import argparse
import platform

HELP = "print fhcnn, Python and torch versions, the compute device and thread count"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def describe_device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} device(s))"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import __version__

    print(f"fhcnn   {__version__}")
    print(f"python  {platform.python_version()} ({platform.platform()})")
    print(f"torch   {torch.__version__}")
    print(f"device  {describe_device()}")
    print(f"threads {torch.get_num_threads()} (intra-op), {torch.get_num_interop_threads()} (inter-op)")
    return 0
