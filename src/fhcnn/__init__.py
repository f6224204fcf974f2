"""fhcnn: fully hyperbolic convolutional neural networks (Lensink, Peters, Haber).

Public contract: :class:`HaarDWT`, :class:`LearnableWavelet`, :class:`HyperbolicNetwork`.

The names are imported (with torch) when first used: ``import fhcnn`` itself imports nothing
else, so that the ``fhcnn`` program (which enters through this package) answers Ctrl-C from
its first moment, torch's import included (see :func:`fhcnn.outcome.run_program`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .network import HyperbolicNetwork
    from .wavelets import HaarDWT, LearnableWavelet

__version__ = "0.1.0"
__all__ = ["HaarDWT", "LearnableWavelet", "HyperbolicNetwork", "__version__"]

# public name -> the module that defines it
_HOMES = {"HaarDWT": ".wavelets", "LearnableWavelet": ".wavelets", "HyperbolicNetwork": ".network"}


if not TYPE_CHECKING:  # a type checker sees the imports above, not a module __getattr__: one
    # would make it take every attribute of fhcnn (a misspelt fhcnn.HyperbolicNetwrok) as Any

    def __getattr__(name: str) -> Any:
        if name not in _HOMES:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(_HOMES[name], __name__), name)
        globals()[name] = value  # once: later uses are plain attribute reads
        return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
