"""F1 of boolean decisions, cheap enough for thousands of bootstrap resamples.

The rank-based AUROC and average precision the bootstrap also needs live in
:mod:`xrayfx.metrics` (``fast_auroc``, ``fast_average_precision``).
"""

from __future__ import annotations

import math

import numpy as np


def f1_of_decisions(y: np.ndarray, d: np.ndarray) -> float:
    """F1 of the positive class for boolean truths ``y`` and decisions ``d`` (nan when undefined)."""
    y = np.asarray(y, dtype=bool)
    d = np.asarray(d).astype(bool)
    tp = int(np.sum(d & y))
    denom = 2 * tp + int(np.sum(d & ~y)) + int(np.sum(~d & y))
    return 2 * tp / denom if denom else math.nan


def f1_negative_of_decisions(y: np.ndarray, d: np.ndarray) -> float:
    """F1 of the negative class (truths and decisions flipped)."""
    return f1_of_decisions(~np.asarray(y, dtype=bool), ~np.asarray(d).astype(bool))
