"""Fast statistics for the bootstrap: the same numbers as scikit-learn, without its per-call overhead.

A patient bootstrap evaluates AUROC and average precision thousands of times
on a few hundred rows; ``sklearn.metrics`` spends most of that time checking
its inputs. These two functions compute the identical values from ranks and
cumulative counts (tests/test_report.py checks them against scikit-learn).
They assume what :func:`xrayfx.metrics.patient_bootstrap` guarantees: a
boolean ``y`` holding both classes and finite scores.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def fast_auroc(y: np.ndarray, p: np.ndarray) -> float:
    """AUROC as the Mann–Whitney statistic (ties count one half), equal to ``roc_auc_score``."""
    y = np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(p)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fast_average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision, step-wise over distinct thresholds, equal to ``average_precision_score``."""
    y = np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-np.asarray(p, dtype=float), kind="mergesort")
    ps, ys = np.asarray(p, dtype=float)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]  # last row of each distinct threshold
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


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
