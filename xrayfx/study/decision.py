"""The one decision rule: the threshold on the positive class's probability, chosen on validation.

fit-head chooses it (:func:`choose_threshold`, per fold), records it in the run
(:func:`run_decision`), and predict, report and evaluate apply the recorded
value (``predicted = positive`` iff ``p_<positive> >= threshold``); nothing
re-derives it. The threshold is the midpoint of the interval of thresholds that
maximise Youden's J on the validation rows (:func:`xrayfx.metrics.youden_interval`):
every threshold in that interval classifies the validation rows identically,
and the midpoint keeps a margin on both sides. When validation cannot give one
(no rows, one class), the threshold is 0.5, the argmax decision of two classes.
A k-fold run ships the mean of its folds' thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from xrayfx import metrics as M
from xrayfx.exceptions import UsageError

#: Decision threshold when the validation part cannot give Youden's (equivalent to argmax).
ARGMAX_THRESHOLD = 0.5
#: How the threshold of one fold is chosen, in words (reports and logs quote it).
RULE = "midpoint of the validation interval of thresholds that maximise Youden's J"
RULE_YOUDEN = "youden"
RULE_ARGMAX = "argmax (0.5)"
RULE_KFOLD = "mean of the folds' youden thresholds"


@dataclass(frozen=True)
class Threshold:
    """A threshold chosen on validation rows; ``value`` None when validation cannot give one."""

    value: float | None
    lower: float | None
    upper: float | None
    note: str | None


def choose_threshold(y_val: Any, p_val: Any) -> Threshold:
    """The decision threshold from validation rows (``y_val`` True = positive; ``p_val`` its probability)."""
    y = np.asarray(y_val, dtype=bool)
    if len(y) == 0:
        return Threshold(None, None, None, "no validation rows: the decision threshold is 0.5 (argmax)")
    try:
        lower, upper = M.youden_interval(y, np.asarray(p_val, dtype=float))
    except UsageError as e:
        return Threshold(None, None, None,
                         f"Youden's threshold undefined on validation ({e}); the decision threshold is 0.5 (argmax)")
    return Threshold((lower + upper) / 2, lower, upper, None)


def decide(p_pos: Any, threshold: float) -> np.ndarray:
    """True where the positive class is predicted: ``p_pos >= threshold``."""
    return np.asarray(p_pos, dtype=float) >= float(threshold)


def describe(rule: str, threshold: float) -> str:
    """How a recorded threshold was chosen, in words, for table captions and logs."""
    if rule == RULE_ARGMAX:
        return f"threshold {threshold:.4g} (argmax: validation could not give Youden's J)"
    if rule == RULE_KFOLD:
        return f"threshold {threshold:.4g} (mean of the folds' thresholds, each the {RULE} of its fold)"
    return f"threshold {threshold:.4g} ({RULE}, chosen by fit-head)"


def run_decision(thresholds: Sequence[Threshold], positive: str, negative: str) -> dict[str, Any]:
    """The ``decision`` record of a run from its folds' thresholds (one for a holdout run)."""
    values = [t.value for t in thresholds]
    if values and all(v is not None for v in values):
        thr = float(np.mean(values))
        rule, note = (RULE_YOUDEN if len(values) == 1 else RULE_KFOLD), None
    else:
        thr, rule = ARGMAX_THRESHOLD, RULE_ARGMAX
        note = "; ".join(t.note for t in thresholds if t.note)
    return {
        "positive": positive, "negative": negative, "threshold": thr, "rule": rule, "chosen_on": "val",
        "how": RULE, "predicted": f"{positive} if p_{positive} >= threshold else {negative}",
        "fold_thresholds": values, "fold_youden_upper": [t.upper for t in thresholds],
        "combine": "mean probability of the heads", "note": note,
    }
