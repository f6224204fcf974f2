"""What every sparse-label benchmark shares: the two pixelwise baselines (scikit-learn) that run
next to fhcnn on the same labels, and the summary statistics over seeds."""

from __future__ import annotations

from typing import Any

import numpy as np


def baselines(seed: int, *, trees: int = 300, max_iter: int = 3000) -> list[tuple[str, Any]]:
    """``[("linear", ...), ("forest", ...)]``: a class-balanced logistic regression and a random
    forest (``trees`` trees, balanced subsamples, one job, seeded)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    return [("linear", LogisticRegression(max_iter=max_iter, class_weight="balanced")),
            ("forest", RandomForestClassifier(trees, class_weight="balanced_subsample", n_jobs=1,
                                              random_state=seed))]


def stats(values: list[float]) -> dict:
    """Mean, std, min, max (4 decimals) and count of ``values``."""
    a = np.asarray(values, float)
    return {"mean": round(float(a.mean()), 4), "std": round(float(a.std()), 4),
            "min": round(float(a.min()), 4), "max": round(float(a.max()), 4), "n": int(a.size)}
