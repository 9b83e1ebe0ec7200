"""Metrics for honest reports: counts with Wilson intervals, AUCs, patient bootstrap, calibration.

Conventions
    ``y`` is a boolean array (True = positive class, e.g. COVID-19) or 0/1
    integers. ``p`` is the predicted probability of the positive class.
    A row is predicted positive when ``p >= threshold``. Proportions are
    dicts ``{value, lo, hi, numerator, denominator, note}`` with a Wilson
    interval; a zero denominator gives ``nan`` and a note, never an exception.
    AUROC and average precision need probabilities: hard 0/1 predictions are
    refused. Confidence intervals of AUROC, AP and F1 come from a bootstrap
    that resamples patients, not images.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Callable, Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score

from xrayfx.exceptions import DataError, UsageError

#: Patient-bootstrap resamples behind every interval of fit-head, report and evaluate.
DEFAULT_RESAMPLES = 2000

# Table 2 of Cuijpers, Liu & Borel Rinkes (2020); test set 42 COVID-19 / 282 normal.
PAPER_TEST_SET = {"covid": 42, "normal": 282}
PAPER_TABLE2: dict[str, dict[str, Any]] = {
    "inceptionv3": {
        "covid": {"precision": 0.93, "recall": 0.60, "f1": 0.72},
        "normal": {"precision": 0.94, "recall": 0.99, "f1": 0.97},
        "tp": 25, "fp": 2, "fn": 17, "tn": 280, "accuracy": 0.94,
        "notes": [],
    },
    "inceptionresnetv2": {
        "covid": {"precision": 0.96, "recall": 0.64, "f1": 0.77},
        "normal": {"precision": 0.95, "recall": 1.00, "f1": 0.97},
        "tp": None, "fp": 1, "fn": 15, "tn": 281, "accuracy": 0.95,
        "notes": [
            "TP is not printed in the paper; 42 COVID-19 test images minus FN 15 implies TP = 27."
        ],
    },
    "resnet101v2": {
        "covid": {"precision": 0.97, "recall": 0.88, "f1": 0.93},
        "normal": {"precision": 0.98, "recall": 1.00, "f1": 0.99},
        "tp": 37, "fp": 1, "fn": 5, "tn": 281, "accuracy": 0.98,
        "notes": [],
    },
    "densenet201": {
        "covid": {"precision": 0.93, "recall": 0.90, "f1": 0.92},
        "normal": {"precision": 0.99, "recall": 0.99, "f1": 0.99},
        "tp": 38, "fp": 3, "fn": 4, "tn": 279, "accuracy": 0.98,
        "notes": [],
    },
}


# ---------------------------------------------------------------------------------------------
# Input checks


def _binary_y(y: Any, name: str = "y") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise UsageError(f"Expected {name} as a 1-D array; got shape {y.shape}.")
    if y.dtype == bool:
        return y
    if np.issubdtype(y.dtype, np.number) and np.isin(y, (0, 1)).all():
        return y.astype(bool)
    raise UsageError(
        f"Expected {name} as booleans (True = positive class) or 0/1; got dtype {y.dtype} "
        f"with values such as {np.unique(y)[:5].tolist()}. Fix: pass labels == positive_label."
    )


def _scores(p: Any, n: int, name: str = "p") -> np.ndarray:
    p = np.asarray(p, dtype=float)
    if p.ndim != 1 or len(p) != n:
        raise UsageError(f"Expected {name} with one value per row ({n}); got shape {p.shape}.")
    if not np.all(np.isfinite(p)):
        raise UsageError(f"Expected finite {name}; got {int((~np.isfinite(p)).sum())} NaN/inf values.")
    return p


def _probabilities(p: Any, n: int, what: str) -> np.ndarray:
    p = _scores(p, n)
    if n and np.isin(p, (0.0, 1.0)).all():
        raise UsageError(
            f"{what} needs predicted probabilities; got only the values 0 and 1, which look like "
            "hard labels. Fix: pass the positive-class probability (predict_proba[:, positive])."
        )
    return p


def _both_classes(y: np.ndarray, what: str) -> None:
    if y.all() or not y.any():
        raise UsageError(
            f"{what} needs both classes in y; got only {'positives' if y.all() else 'negatives'} "
            f"({len(y)} rows). Fix: evaluate on a set that holds both classes."
        )


def _confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise UsageError(f"Expected confidence strictly between 0 and 1; got {confidence!r}.")
    return float(confidence)


# ---------------------------------------------------------------------------------------------
# Counts and proportions


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (nan, nan) when n == 0."""
    confidence = _confidence(confidence)
    for name, v in (("successes", successes), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise UsageError(f"Expected {name} as a non-negative integer; got {v!r}.")
    if successes > n:
        raise UsageError(f"Expected successes <= n; got {successes} of {n}.")
    if n == 0:
        return (math.nan, math.nan)
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact bounds at the edges
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def proportion(numerator: int, denominator: int, confidence: float = 0.95, what: str = "") -> dict[str, Any]:
    """``{value, lo, hi, numerator, denominator, note}``; nan and a note when the denominator is 0."""
    lo, hi = wilson_interval(int(numerator), int(denominator), confidence)
    note = None
    if denominator == 0:
        note = f"{what or 'proportion'} undefined: denominator is 0"
    return {
        "value": numerator / denominator if denominator else math.nan,
        "lo": lo,
        "hi": hi,
        "numerator": int(numerator),
        "denominator": int(denominator),
        "note": note,
    }


def confusion_at_threshold(y_true: Any, p_pos: Any, threshold: float = 0.5) -> dict[str, int]:
    """tp, fp, fn, tn when a row is called positive iff ``p_pos >= threshold``."""
    y = _binary_y(y_true, "y_true")
    p = _scores(p_pos, len(y), "p_pos")
    pred = p >= threshold
    return {
        "tp": int(np.sum(pred & y)),
        "fp": int(np.sum(pred & ~y)),
        "fn": int(np.sum(~pred & y)),
        "tn": int(np.sum(~pred & ~y)),
    }


def argmax_confusion(
    y_true_labels: Sequence[Any], proba: Any, classes: Sequence[Any], positive: Any
) -> dict[str, int]:
    """tp, fp, fn, tn of the paper's decision: the class with the larger probability.

    ``proba[:, j]`` is the probability of ``classes[j]``. A tie goes to
    ``classes[0]`` (numpy's argmax takes the first maximum).
    """
    classes = list(classes)
    proba = np.asarray(proba, dtype=float)
    labels = np.asarray(y_true_labels)
    if len(classes) != 2 or len(set(classes)) != 2:
        raise UsageError(f"Expected two distinct classes; got {classes!r}.")
    if proba.ndim != 2 or proba.shape != (len(labels), 2):
        raise UsageError(f"Expected proba of shape ({len(labels)}, 2); got {proba.shape}.")
    if positive not in classes:
        raise UsageError(f"Expected the positive class to be one of {classes!r}; got {positive!r}.")
    unknown = sorted({str(v) for v in labels.tolist()} - {str(c) for c in classes})
    if unknown:
        raise UsageError(f"Expected true labels among {classes!r}; got {unknown!r}.")
    pos = classes.index(positive)
    pred_pos = np.argmax(proba, axis=1) == pos
    y = np.array([str(v) == str(positive) for v in labels.tolist()], dtype=bool)
    return {
        "tp": int(np.sum(pred_pos & y)),
        "fp": int(np.sum(pred_pos & ~y)),
        "fn": int(np.sum(~pred_pos & y)),
        "tn": int(np.sum(~pred_pos & ~y)),
    }


def _f1(tp: int, fp: int, fn: int, what: str) -> dict[str, Any]:
    denom = 2 * tp + fp + fn
    return {
        "value": 2 * tp / denom if denom else math.nan,
        "note": None if denom else f"{what} F1 undefined: no positives and no predicted positives",
    }


def class_report(
    tp: int,
    fp: int,
    fn: int,
    tn: int,
    confidence: float = 0.95,
    positive_label: str = "positive",
    negative_label: str = "negative",
) -> dict[str, Any]:
    """Per class precision/recall/F1/support, accuracy, sensitivity, specificity, PPV, NPV.

    Every proportion carries a Wilson interval and its numerator/denominator;
    a zero denominator gives nan and a note in ``notes``.
    """
    for name, v in (("tp", tp), ("fp", fp), ("fn", fn), ("tn", tn)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise UsageError(f"Expected {name} as a non-negative integer count; got {v!r}.")
    tp, fp, fn, tn = int(tp), int(fp), int(fn), int(tn)

    def prop(num: int, den: int, what: str) -> dict[str, Any]:
        return proportion(num, den, confidence, what)

    out: dict[str, Any] = {
        "positive": {
            "label": positive_label,
            "precision": prop(tp, tp + fp, f"{positive_label} precision"),
            "recall": prop(tp, tp + fn, f"{positive_label} recall"),
            "f1": _f1(tp, fp, fn, positive_label),
            "support": tp + fn,
        },
        "negative": {
            "label": negative_label,
            "precision": prop(tn, tn + fn, f"{negative_label} precision"),
            "recall": prop(tn, tn + fp, f"{negative_label} recall"),
            "f1": _f1(tn, fn, fp, negative_label),
            "support": tn + fp,
        },
        "accuracy": prop(tp + tn, tp + fp + fn + tn, "accuracy"),
        "sensitivity": prop(tp, tp + fn, "sensitivity"),
        "specificity": prop(tn, tn + fp, "specificity"),
        "ppv": prop(tp, tp + fp, "PPV"),
        "npv": prop(tn, tn + fn, "NPV"),
        "counts": {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "n": tp + fp + fn + tn},
        "confidence": confidence,
    }
    notes = []
    for key in ("positive", "negative"):
        for m in ("precision", "recall", "f1"):
            if out[key][m]["note"]:
                notes.append(out[key][m]["note"])
    for m in ("accuracy", "sensitivity", "specificity", "ppv", "npv"):
        if out[m]["note"]:
            notes.append(out[m]["note"])
    out["notes"] = list(dict.fromkeys(notes))
    return out


# ---------------------------------------------------------------------------------------------
# Ranking metrics and thresholds


def roc_auc(y: Any, p: Any) -> float:
    """Area under the ROC curve from positive-class probabilities."""
    y = _binary_y(y)
    p = _probabilities(p, len(y), "AUROC")
    _both_classes(y, "AUROC")
    return float(roc_auc_score(y, p))


def pr_auc(y: Any, p: Any) -> float:
    """Average precision (area under the precision-recall curve, step-wise)."""
    y = _binary_y(y)
    p = _probabilities(p, len(y), "PR-AUC (average precision)")
    _both_classes(y, "PR-AUC (average precision)")
    return float(average_precision_score(y, p))


def youden_interval(y: Any, p: Any) -> tuple[float, float]:
    """``(lower, upper)``: the interval of thresholds that maximise Youden's J (sensitivity + specificity - 1).

    Every threshold ``t`` with ``lower < t <= upper`` classifies the rows
    identically (positive iff ``p >= t``). ``upper`` is one of the values of
    ``p`` (ties between separate maxima go to the highest); ``lower`` is the
    next lower value of ``p`` (``lower == upper`` when there is none). The one
    decision rule built on it is :func:`xrayfx.study.decision.choose_threshold`.
    """
    y = _binary_y(y)
    p = _probabilities(p, len(y), "Youden's threshold")
    _both_classes(y, "Youden's threshold")
    thr = np.unique(p)[::-1]  # candidate thresholds, highest first
    pos, neg = np.sort(p[y]), np.sort(p[~y])
    tp = len(pos) - np.searchsorted(pos, thr, side="left")  # positives with p >= t
    fp = len(neg) - np.searchsorted(neg, thr, side="left")
    # J = tp/P - fp/N, compared exactly in integers as tp*N - fp*P; argmax takes the first tie
    score = tp.astype(np.int64) * len(neg) - fp.astype(np.int64) * len(pos)
    best = int(np.argmax(score))
    upper = float(thr[best])
    lower = float(thr[best + 1]) if best + 1 < len(thr) else upper
    return lower, upper


# ---------------------------------------------------------------------------------------------
# Patient bootstrap


def _group_rows(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _, codes = np.unique(groups, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order, starts, counts


def patient_bootstrap(
    y: Any,
    p: Any,
    groups: Any,
    stat_fn: Callable[[np.ndarray, np.ndarray], float],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Percentile bootstrap interval of ``stat_fn(y, p)``, resampling patients (groups).

    Each resample draws as many groups as there are, with replacement, and
    takes all images of every drawn group (a group drawn twice contributes its
    images twice). Resamples holding one class only are skipped and counted;
    so are resamples where ``stat_fn`` returns a non-finite value.
    """
    y = _binary_y(y)
    p = _scores(p, len(y))
    confidence = _confidence(confidence)
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) != len(y):
        raise UsageError(f"Expected one group (patient id) per row ({len(y)}); got shape {groups.shape}.")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise UsageError(f"Expected n_resamples as a positive integer; got {n_resamples!r}.")
    _both_classes(y, "The bootstrap")
    value = float(stat_fn(y, p))
    order, starts, counts = _group_rows(groups)
    n_groups = len(counts)
    rng = np.random.default_rng(seed)
    stats = []
    n_one_class = n_nonfinite = 0
    for _ in range(int(n_resamples)):
        drawn = rng.integers(0, n_groups, size=n_groups)
        lens = counts[drawn]
        total = int(lens.sum())
        offsets = np.repeat(starts[drawn] - np.cumsum(lens) + lens, lens) + np.arange(total)
        rows = order[offsets]
        yr = y[rows]
        if yr.all() or not yr.any():
            n_one_class += 1
            continue
        s = float(stat_fn(yr, p[rows]))
        if not math.isfinite(s):
            n_nonfinite += 1
            continue
        stats.append(s)
    alpha = 1 - confidence
    notes = []
    if n_one_class:
        notes.append(f"{n_one_class} of {n_resamples} resamples held one class only and were skipped")
    if n_nonfinite:
        notes.append(f"{n_nonfinite} resamples gave a non-finite statistic and were skipped")
    if stats:
        lo, hi = np.quantile(np.asarray(stats), [alpha / 2, 1 - alpha / 2])
        lo, hi = float(lo), float(hi)
    else:
        lo = hi = math.nan
        notes.append("no usable resample: interval undefined")
    return {
        "value": value,
        "lo": lo,
        "hi": hi,
        "n_resamples": int(n_resamples),
        "n_used": len(stats),
        "n_skipped": n_one_class + n_nonfinite,
        "n_skipped_one_class": n_one_class,
        "n_groups": n_groups,
        "confidence": confidence,
        "method": "percentile, patients resampled",
        "notes": notes,
    }


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


def _auc_unchecked(y: np.ndarray, p: np.ndarray) -> float:
    return fast_auroc(y, p)


def _ap_unchecked(y: np.ndarray, p: np.ndarray) -> float:
    return fast_average_precision(y, p)


def bootstrap_auroc(y: Any, p: Any, groups: Any, **kwargs: Any) -> dict[str, Any]:
    """AUROC with a patient-bootstrap interval (kwargs go to :func:`patient_bootstrap`)."""
    yb = _binary_y(y)
    _probabilities(p, len(yb), "AUROC")
    return patient_bootstrap(yb, p, groups, _auc_unchecked, **kwargs)


def bootstrap_pr_auc(y: Any, p: Any, groups: Any, **kwargs: Any) -> dict[str, Any]:
    """Average precision with a patient-bootstrap interval."""
    yb = _binary_y(y)
    _probabilities(p, len(yb), "PR-AUC (average precision)")
    return patient_bootstrap(yb, p, groups, _ap_unchecked, **kwargs)


def bootstrap_f1(
    y: Any, p: Any, groups: Any, threshold: float = 0.5, **kwargs: Any
) -> dict[str, Any]:
    """Positive-class F1 at ``p >= threshold`` with a patient-bootstrap interval."""

    def f1(yr: np.ndarray, pr: np.ndarray) -> float:
        pred = pr >= threshold
        tp = int(np.sum(pred & yr))
        denom = 2 * tp + int(np.sum(pred & ~yr)) + int(np.sum(~pred & yr))
        return 2 * tp / denom if denom else math.nan

    return patient_bootstrap(y, p, groups, f1, **kwargs)


# ---------------------------------------------------------------------------------------------
# Calibration


def calibration(y: Any, p: Any, n_bins: int = 10) -> dict[str, Any]:
    """Reliability table on equal-width bins of [0, 1], Brier score and expected calibration error.

    Bin ``i`` holds ``i/n <= p < (i+1)/n`` (the last bin includes 1). Empty
    bins have count 0 and nan fractions. ECE = sum over bins of
    ``count / N * |frac_pos - mean_pred|``.
    """
    y = _binary_y(y)
    p = _scores(p, len(y))
    if len(y) == 0:
        raise UsageError("Expected at least one prediction for calibration; got none.")
    if np.any((p < 0) | (p > 1)):
        raise UsageError("Expected probabilities in [0, 1] for calibration; got values outside.")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise UsageError(f"Expected n_bins as a positive integer; got {n_bins!r}.")
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_pos = np.bincount(idx, weights=y.astype(float), minlength=n_bins)
    sum_pred = np.bincount(idx, weights=p, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac_pos = np.where(count > 0, sum_pos / count, np.nan)
        mean_pred = np.where(count > 0, sum_pred / count, np.nan)
    nonempty = count > 0
    ece = float(np.sum(count[nonempty] / len(y) * np.abs(frac_pos[nonempty] - mean_pred[nonempty])))
    return {
        "bin_mid": (np.arange(n_bins) + 0.5) / n_bins,
        "frac_pos": frac_pos,
        "mean_pred": mean_pred,
        "count": count,
        "brier": float(np.mean((p - y.astype(float)) ** 2)),
        "ece": ece,
    }


# ---------------------------------------------------------------------------------------------
# Source probe


def source_probe(
    X: Any, source_labels: Any, groups: Any, n_splits: int = 5, seed: int = 0
) -> dict[str, Any]:
    """How well the features predict the image's source: a shortcut audit.

    Standardised logistic regression, out-of-fold over ``n_splits``
    patient-grouped stratified folds (StratifiedGroupKFold); one-vs-rest macro
    AUROC of the out-of-fold probabilities (plain AUROC for two sources). Near
    0.5: the features say little about the source; near 1: a classifier can
    tell sources apart, so a label that follows the source can be learned as a
    shortcut.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, dtype=float)
    src = np.asarray(source_labels).astype(str)
    groups = np.asarray(groups)
    if X.ndim != 2 or len(X) != len(src) or len(groups) != len(src):
        raise UsageError(
            f"Expected X (rows x features), source_labels and groups of equal length; got "
            f"X {X.shape}, {len(src)} source labels, {len(groups)} groups."
        )
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise UsageError(f"Expected n_splits as an integer >= 2; got {n_splits!r}.")
    classes, counts = np.unique(src, return_counts=True)
    if classes.size < 2:
        raise DataError(
            f"Expected at least two sources to probe; got only {classes.tolist()!r}. "
            "Fix: run the probe on data from several sources."
        )
    short = [
        f"source {str(c)!r} has {np.unique(groups[src == c]).size} patients"
        for c in classes
        if np.unique(groups[src == c]).size < n_splits
    ]
    if short:
        raise DataError(
            f"The source probe needs at least {n_splits} patients per source (one per fold); "
            f"got: {'; '.join(short)}. Fix: lower n_splits or leave out small sources."
        )
    proba = np.zeros((len(src), classes.size))
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for train_idx, test_idx in cv.split(X, src, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        model.fit(X[train_idx], src[train_idx])
        cols = np.searchsorted(classes, model.classes_)
        proba[np.ix_(test_idx, cols)] = model.predict_proba(X[test_idx])
    per_source = {
        str(c): float(roc_auc_score(src == c, proba[:, j])) for j, c in enumerate(classes)
    }
    if classes.size == 2:
        auroc = per_source[str(classes[1])]
    else:
        auroc = float(roc_auc_score(src, proba, multi_class="ovr", average="macro", labels=classes))
    return {
        "auroc_macro_ovr": auroc,
        "per_source_auroc": per_source,
        "n_sources": int(classes.size),
        "per_source_counts": {str(c): int(n) for c, n in zip(classes, counts)},
        "n_splits": n_splits,
        "n_groups": int(np.unique(groups).size),
    }
