"""The report's operating-point tables: each says how its threshold was chosen.

The paper's argmax decision (p ≥ 0.5 of two classes) and the run's recorded
threshold (:mod:`xrayfx.study.decision`: chosen by fit-head on the validation
part, applied unchanged by predict, report and evaluate).
"""

from __future__ import annotations

from typing import Any

from xrayfx.report.cells import TABLE2_HEADERS, _TABLE2_KEYS, Cell, num, with_ci, with_counts
from xrayfx.report.figures import run_label



def youden_table(data: dict[str, Any]) -> tuple[list[str], list[list[Cell]]]:
    """Table 2's layout at the run's recorded threshold (chosen by fit-head on the validation rows)."""
    headers = ["backbone", "recorded threshold (chosen on validation)", *TABLE2_HEADERS[1:]]
    rows = []
    for e in data["runs"]:
        yd = e["scores"]["youden"]
        thr = ", ".join(f"{k}: {num(v, 3)}" if k != "all" else num(v, 3) for k, v in yd["thresholds"].items())
        if not yd.get("available"):
            rows.append([run_label(e), thr or "n/a", *(["not available"] * (len(headers) - 2))])
            continue
        row: list[Cell] = [run_label(e), f"p({e['run']['positive']}) ≥ {thr}"]
        for _key, side, metric in _TABLE2_KEYS:
            row.append(with_ci(yd[side][metric]))
        row += [str(yd["counts"][c]) for c in ("tp", "fp", "fn", "tn")]
        row.append(with_ci(yd["accuracy"]))
        rows.append(row)
    return headers, rows


def operating_table(data: dict[str, Any]) -> tuple[list[str], list[list[Cell]]]:
    """Sensitivity, specificity, PPV, NPV, F1 and accuracy at both decisions, with intervals and counts."""
    headers = ["backbone", "decision", "sensitivity", "specificity", "PPV", "NPV", "F1 (positive)",
               "balanced accuracy"]
    rows = []
    for e in data["runs"]:
        for name, d in (("argmax (paper): p ≥ 0.5", e["scores"]["argmax"]),
                        ("recorded threshold (validation)", e["scores"]["youden"])):
            if name.startswith("recorded") and not d.get("available"):
                rows.append([run_label(e), name, *(["not available"] * 6)])
                continue
            rows.append([
                run_label(e), name, with_counts(d["sensitivity"]), with_counts(d["specificity"]),
                with_counts(d["ppv"]), with_counts(d["npv"]), with_ci(d["positive"]["f1"]),
                num(d["balanced_accuracy"]),
            ])
    return headers, rows
