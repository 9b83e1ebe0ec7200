"""The report's view of external evaluations and of what a run's internal test can measure.

:func:`collect` gathers, for one run, every ``RUN/evaluations/NAME/metrics.json``
written by ``xrayfx evaluate`` and the test part's confounds (class coinciding
with source or age group); :func:`blocks` lays out the side-by-side tables:
the internal test and every evaluation with AUROC (interval), sensitivity and
specificity at the shipped threshold, the change from internal, results per
source, and the within-source AUROC wherever one source holds both classes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from xrayfx.util import read_json

EVALUATIONS_DIR = "evaluations"


def test_confounds(run: Any) -> list[dict[str, Any]]:
    """Columns (source, age group) whose values never appear in both classes among the test rows."""
    test = run.column("split") == "test"
    labels = run.column("label")[test]
    out = []
    for column in ("source", "age_group"):
        values = run.column(column)[test]
        if len(set(labels.tolist())) < 2 or not np.all(values != ""):
            continue
        per_class = {lab: set(values[labels == lab].tolist()) for lab in sorted(set(labels.tolist()))}
        sets = list(per_class.values())
        if all(a.isdisjoint(b) for i, a in enumerate(sets) for b in sets[i + 1:]):
            out.append({"column": column.replace("_", " "),
                        "by_class": {lab: sorted(v) for lab, v in per_class.items()}})
    return out


def read_evaluations(run_path: Path) -> list[dict[str, Any]]:
    """Every ``evaluations/NAME/metrics.json`` of a run, with its name, sorted by name."""
    root = Path(run_path) / EVALUATIONS_DIR
    out = []
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (folder / "metrics.json").is_file():
                out.append({"name": folder.name, **read_json(folder / "metrics.json")})
    return out


def collect(run: Any, scores: dict[str, Any]) -> dict[str, Any]:
    """The internal test's headline numbers beside each evaluation's, and the test part's confounds."""
    rk = scores["ranking"].get("auroc") or {}
    yd = scores["youden"]
    internal = {
        "name": "internal test", "n": scores["n_test"], "n_patients": scores["n_test_patients"],
        "auroc": rk.get("value"), "auroc_ci": [rk.get("lo"), rk.get("hi")] if rk else None,
        "sensitivity": yd["sensitivity"]["value"] if yd.get("available") else None,
        "specificity": yd["specificity"]["value"] if yd.get("available") else None,
    }
    return {"internal": internal, "evaluations": read_evaluations(run.path), "confounds": test_confounds(run),
            "threshold": run.record.decision.threshold}


def confound_sentence(entry: dict[str, Any]) -> str | None:
    """The run's first sentence when class coincides with source or age group in its test part."""
    found = entry.get("external", {}).get("confounds") or []
    if not found:
        return None
    what = " and ".join(c["column"] for c in found)
    detail = "; ".join(f"{c['column']}: " + ", ".join(f"{lab} = {'/'.join(v)}" for lab, v in c["by_class"].items())
                       for c in found)
    return (f"Its test AUROC measures the {what}, not the disease: in its test part class coincides with "
            f"{what} ({detail}). To measure the disease, run `xrayfx evaluate --run {entry['run']['path']} "
            "--data DATA` on data where one source supplies both classes.")


def _num(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _ci(v: Any, ci: Any) -> str:
    if v is None:
        return "undefined (one class)"
    ok = ci and all(c is not None and not math.isnan(c) for c in ci)
    return f"{_num(v)} ({_num(ci[0])}–{_num(ci[1])})" if ok else _num(v)


def _delta(v: Any, ref: Any) -> str:
    return "n/a" if v is None or ref is None else f"{v - ref:+.3f}".replace("-", "−")


def comparison_rows(ext: dict[str, Any]) -> list[list[str]]:
    """Internal test and each evaluation: n, AUROC (CI), sensitivity, specificity and the changes."""
    ref = ext["internal"]
    rows = [[ref["name"], f"{ref['n']} / {ref['n_patients']}", _ci(ref["auroc"], ref["auroc_ci"]), "",
             _num(ref["sensitivity"]), "", _num(ref["specificity"]), ""]]
    for ev in ext["evaluations"]:
        rows.append([
            ev["name"], f"{ev['n']} / {ev['n_patients']}", _ci(ev.get("auroc"), ev.get("auroc_ci")),
            _delta(ev.get("auroc"), ref["auroc"]), _ci(ev.get("sensitivity"), ev.get("sensitivity_ci")),
            _delta(ev.get("sensitivity"), ref["sensitivity"]), _ci(ev.get("specificity"), ev.get("specificity_ci")),
            _delta(ev.get("specificity"), ref["specificity"]),
        ])
    return rows


def source_rows(ext: dict[str, Any]) -> list[list[str]]:
    """Per evaluation and source: counts, sensitivity, specificity, and AUROC where the source holds both classes."""
    rows = []
    for ev in ext["evaluations"]:
        for src, s in sorted(ev.get("by_source", {}).items()):
            rows.append([ev["name"], src, str(s["n"]), f"{s['n_positive']} / {s['n_negative']}",
                         _num(s.get("sensitivity")), _num(s.get("specificity")),
                         _num(s.get("auroc")) if s.get("auroc") is not None else "one class: no AUROC"])
    return rows


def blocks(data: dict[str, Any]) -> list[tuple]:
    """Report blocks comparing each run's internal test with its evaluations (none when there are none)."""
    out: list[tuple] = []
    runs = [e for e in data["runs"] if e.get("external", {}).get("evaluations")]
    if not runs:
        return out
    out.append(("h", 2, "Evaluations on other data (`xrayfx evaluate`)"))
    out.append(("p", "Each evaluation scores other images with the run's own backbone, head and recorded threshold "
                     "(chosen by fit-head on its validation part); rows that share bytes or a patient with the "
                     "run's training or validation data are left out. Sensitivity and specificity are at that "
                     "threshold; Δ is the change from the internal test. Within one source that supplies both "
                     "classes, the AUROC is the one comparison a source shortcut cannot win."))
    for e in runs:
        ext = e["external"]
        label = f"{e['run']['backbone']} + {e['run']['head']} (run {e['run']['run_id']})"
        out.append(("table", f"Internal test and evaluations — {label}, threshold {ext['threshold']:.4g}",
                    ["data", "images / patients", "AUROC (95 % CI)", "Δ AUROC", "sensitivity", "Δ sens.",
                     "specificity", "Δ spec."], comparison_rows(ext)))
        rows = source_rows(ext)
        if rows:
            out.append(("table", f"Evaluations by source — {label}",
                        ["data", "source", "images", f"{e['run']['positive']} / {e['run']['negative']}",
                         "sensitivity", "specificity", "within-source AUROC"], rows))
    return out
