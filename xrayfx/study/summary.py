"""A run's own metrics (``metrics.json``) and its ``summary.txt``.

:func:`part_metrics` scores one part (validation or test): AUROC with a
patient-bootstrap interval (:data:`xrayfx.metrics.DEFAULT_RESAMPLES` resamples),
PR-AUC, and the confusion counts at the paper's argmax decision and at the
run's recorded threshold (:mod:`xrayfx.study.decision`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from xrayfx import metrics as M
from xrayfx.exceptions import UsageError
from xrayfx.study.decision import RULE
from xrayfx.study.decision import describe


def part_metrics(
    labels: np.ndarray, proba: np.ndarray, classes: Sequence[str], positive: str, groups: np.ndarray,
    threshold: float | None, seed: int = 0,
) -> dict[str, Any]:
    """Metrics of one part (validation or test): AUROC (+ patient-bootstrap CI), accuracy, confusion.

    ``proba[:, j]`` is the probability of ``classes[j]``. Confusion counts are
    given at argmax (the paper's decision) and, when ``threshold`` is set, at
    ``p_positive >= threshold``.
    """
    classes = list(classes)
    negative = classes[1] if classes[0] == positive else classes[0]
    labels = np.asarray(labels).astype(str)
    y = labels == positive
    p = np.asarray(proba, dtype=float)[:, classes.index(positive)]
    counts = {c: int(np.sum(labels == c)) for c in classes}
    out: dict[str, Any] = {"n": int(len(labels)), "label_counts": counts, "notes": []}
    if len(labels) == 0:
        out["notes"].append("no rows in this part")
        return out
    try:
        out["auroc"] = M.roc_auc(y, p)
        ci = M.bootstrap_auroc(y, p, groups, n_resamples=M.DEFAULT_RESAMPLES, seed=seed)
        out["auroc_ci"] = {k: ci[k] for k in ("lo", "hi", "confidence", "n_resamples", "n_used", "n_groups", "method")}
        out["pr_auc"] = M.pr_auc(y, p)
    except UsageError as e:
        out["auroc"] = None
        out["notes"].append(f"AUROC undefined: {e}")
    conf = M.argmax_confusion(labels, proba, classes, positive)
    rep = M.class_report(**conf, positive_label=positive, negative_label=negative)
    out["argmax"] = {
        "confusion": conf, "accuracy": rep["accuracy"]["value"], "accuracy_ci": _ci(rep["accuracy"]),
        "sensitivity": rep["sensitivity"]["value"], "specificity": rep["specificity"]["value"],
        "report": rep,
    }
    if threshold is not None:
        conf_t = M.confusion_at_threshold(y, p, threshold)
        rep_t = M.class_report(**conf_t, positive_label=positive, negative_label=negative)
        out["youden"] = {
            "threshold": threshold, "confusion": conf_t, "accuracy": rep_t["accuracy"]["value"],
            "accuracy_ci": _ci(rep_t["accuracy"]), "sensitivity": rep_t["sensitivity"]["value"],
            "specificity": rep_t["specificity"]["value"], "report": rep_t,
        }
    return out


def _ci(prop: dict[str, Any]) -> list[float]:
    return [prop["lo"], prop["hi"]]


def _mean_std(values: list[float | None]) -> dict[str, Any]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
            "n": len(vals)}


def run_metrics(rows: Any, results: list[Any], opts: Any, kind: str, seed: int) -> dict[str, Any]:
    """metrics.json: validation and test metrics per fold (pooled and across folds for k-fold runs)."""
    def parts(res: Any) -> dict[str, Any]:
        out = {"threshold": {
            "youden": res.chosen.value, "youden_upper": res.chosen.upper, "chosen_on": "val",
            "rule": RULE,
            "note": res.chosen.note,
        }}
        for part, idx, proba in (("val", res.val_idx, res.val_proba), ("test", res.test_idx, res.test_proba)):
            out[part] = part_metrics(rows.labels[idx], proba, opts.labels, opts.positive, rows.groups(idx),
                                     res.chosen.value, seed=seed)
        return out

    base = {
        "positive": opts.positive, "labels": list(opts.labels), "kind": kind,
        "decisions": {
            "argmax": "the class with the larger probability (the paper's decision)",
            "youden": "p_positive >= the threshold maximising Youden's J on the validation part (the midpoint "
                      "of the interval of such thresholds)",
        },
    }
    if kind != "kfold":
        return {**base, **parts(results[0])}
    per_fold = [{"fold": r.fold, **parts(r)} for r in results]
    pooled_idx = np.concatenate([r.test_idx for r in results])
    pooled_proba = np.concatenate([r.test_proba for r in results])
    pooled = part_metrics(rows.labels[pooled_idx], pooled_proba, opts.labels, opts.positive,
                          rows.groups(pooled_idx), None, seed=seed)
    yc = {k: sum(f["test"].get("youden", {}).get("confusion", {}).get(k, 0) for f in per_fold)
          for k in ("tp", "fp", "fn", "tn")}
    if all("youden" in f["test"] for f in per_fold):
        rep = M.class_report(**yc, positive_label=opts.positive, negative_label=opts.negative)
        pooled["youden"] = {
            "threshold": "each fold's own", "confusion": yc, "accuracy": rep["accuracy"]["value"],
            "accuracy_ci": _ci(rep["accuracy"]), "sensitivity": rep["sensitivity"]["value"],
            "specificity": rep["specificity"]["value"], "report": rep,
        }
    summary = {
        "test_auroc": _mean_std([f["test"].get("auroc") for f in per_fold]),
        "test_accuracy_argmax": _mean_std([f["test"].get("argmax", {}).get("accuracy") for f in per_fold]),
        "test_accuracy_youden": _mean_std([f["test"].get("youden", {}).get("accuracy") for f in per_fold]),
    }
    return {**base, "folds": per_fold, "across_folds": summary,
            "pooled_test": {**pooled, "note": "all folds' test rows, each predicted by the head that did not "
                                              "train on it"}}


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def summary_text(config: dict[str, Any], metrics: dict[str, Any]) -> str:
    """summary.txt: the run's facts and its test metrics, for people."""
    lines = [
        f"run {config['run_id']}",
        f"backbone {config['backbone']} ({config['fingerprint'][:12]}), {config['runtime']} {config['precision']}, "
        f"preprocess {config['preprocessing']['option']}/{config['preprocessing']['resize']}",
        f"data {config['data']['path']} ({config['data']['n_rows']} rows; "
        f"left out {config['data']['left_out_by_label']})",
        f"split {config['split']['kind']}, grouped by {config['split']['grouped_by']}, seed {config['split']['seed']}",
    ]
    lines += [f"  note: {n}" for n in config["split"]["summary"]["notes"]]
    lines.append(f"head {config['head']['name']}, balance {config['balance']['method']}, "
                 f"augment {config['augment']['n']}")

    lines.append(f"decision: {config['decision']['predicted']} "
                 f"({describe(config['decision']['rule'], config['decision']['threshold'])})")
    test = metrics.get("test") or metrics.get("pooled_test") or {}
    ci = test.get("auroc_ci", {})
    lines.append(f"test: n {test.get('n')}, {test.get('label_counts')}")
    lines.append(f"  AUROC {_fmt(test.get('auroc'))} (95% CI {_fmt(ci.get('lo'))}-{_fmt(ci.get('hi'))}, "
                 "patients resampled)")
    if "argmax" in test:
        lines.append(f"  argmax: accuracy {_fmt(test['argmax']['accuracy'])}, {test['argmax']['confusion']}")
    if "youden" in test:
        lines.append(f"  youden: accuracy {_fmt(test['youden']['accuracy'])}, {test['youden']['confusion']}")
    if "across_folds" in metrics:
        a = metrics["across_folds"]["test_auroc"]
        lines.append(f"  across folds: AUROC {_fmt(a['mean'])} ± {_fmt(a['std'])} (n {a['n']})")
    return "\n".join(lines) + "\n"
