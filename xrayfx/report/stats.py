"""Fast statistics for the bootstrap: the same numbers as scikit-learn, without its per-call overhead.

A patient bootstrap evaluates AUROC and average precision thousands of times
on a few hundred rows; ``sklearn.metrics`` spends most of that time checking
its inputs. These two functions compute the identical values from ranks and
cumulative counts (tests/test_report.py checks them against scikit-learn);
they live in :mod:`xrayfx.metrics`, whose bootstrap uses them too.
They assume what :func:`xrayfx.metrics.patient_bootstrap` guarantees: a
boolean ``y`` holding both classes and finite scores.
"""

from __future__ import annotations

import math

import numpy as np

from xrayfx.metrics import fast_auroc, fast_average_precision  # noqa: F401  (one implementation, in metrics)


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
