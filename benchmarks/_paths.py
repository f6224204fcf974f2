"""Where the benchmark scripts write their results and find the shared data sets."""

from __future__ import annotations

import os
from pathlib import Path

#: the result JSON and figures the docs cite (``benchmarks/results/``)
RESULTS = Path(__file__).resolve().parent / "results"

#: the data sets that are not in the repository (DAVIS 2016, Taizhou, Samson / Jasper Ridge,
#: MNIST): ``$FHCNN_DATA``, else ``shared/data`` two folders above this one
DATA = Path(os.environ.get("FHCNN_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
