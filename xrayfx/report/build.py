"""The data of a report: read runs, compute every number with its interval, run the shortcut audit.

:func:`build_report` is the whole job (``xrayfx report`` calls it): for each run
it reads the run folder (:func:`xrayfx.study.runs.load_run`, hashes checked), scores
the test predictions at the paper's argmax decision and at the threshold
fit-head chose on the validation part and recorded in the run
(:mod:`xrayfx.study.decision`; per fold for k-fold runs), computes AUROC, PR-AUC and F1 with
patient-bootstrap intervals and every proportion with a Wilson interval,
calibration, fold spread for k-fold runs, the comparison with the paper's
Table 2, and the shortcut audit (:mod:`xrayfx.report.audit`); then draws the
figures (:mod:`xrayfx.report.figures`) and writes ``report.md``,
``report.html`` and ``report.json`` (:mod:`xrayfx.report.render`).

Nothing here chooses a threshold: every operating point is the run's recorded
one (:class:`xrayfx.study.record.RunRecord`), chosen on its validation rows only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from xrayfx import __version__, metrics
from xrayfx.exceptions import ImageDecodeError, RunError, UsageError
from xrayfx.models.export import export_model
from xrayfx.study.heads.persist import load_head
from xrayfx.data.images import load_image
from xrayfx.metrics import DEFAULT_RESAMPLES
from xrayfx.models.config import ModelConfig
from xrayfx.extraction.pipeline import extract
from xrayfx.extraction.options import ExtractionOptions
from xrayfx.models.quantize import int8_model_of_run
from xrayfx.report import audit, explain_section, external
from xrayfx.report import figures as figs
from xrayfx.report import render
from xrayfx.report.rundata import RunData, head_locations, read_run  # noqa: F401  (read_run: public)
from xrayfx.metrics import fast_auroc, fast_average_precision
from xrayfx.report.stats import f1_negative_of_decisions, f1_of_decisions
from xrayfx.inference.runtimes import make_extractor
from xrayfx.util import read_json, sha256_file
from xrayfx.storage import require_writable_output
from xrayfx.study.decision import RULE, describe

CONFIDENCE = 0.95
CALIBRATION_BINS = 10
SEED = 0


# ---------------------------------------------------------------------------------------------
# Scoring


def _ci(res: dict[str, Any]) -> dict[str, Any]:
    keep = ("value", "lo", "hi", "n_resamples", "n_used", "n_groups", "method", "notes")
    return {k: res[k] for k in keep if k in res}


def _bootstrap(y: np.ndarray, p: np.ndarray, groups: np.ndarray, fn: Callable, n_resamples: int,
               value_if_one_class: float = math.nan) -> dict[str, Any]:
    if y.all() or not y.any():
        return {"value": value_if_one_class, "lo": math.nan, "hi": math.nan, "n_resamples": n_resamples,
                "n_used": 0, "notes": ["one class only: no interval"]}
    return _ci(metrics.patient_bootstrap(y, p, groups, fn, n_resamples=n_resamples, seed=SEED,
                                         confidence=CONFIDENCE))


def decision_metrics(
    y: np.ndarray, decided: np.ndarray, groups: np.ndarray, positive: str, negative: str, n_resamples: int
) -> dict[str, Any]:
    """Counts, P/R/F1 per class, accuracy, sensitivity, specificity, PPV, NPV, all with intervals.

    Proportions carry Wilson intervals; F1 of each class a patient-bootstrap interval.
    """
    y = np.asarray(y, dtype=bool)
    d = np.asarray(decided, dtype=bool)
    tp, fp = int(np.sum(d & y)), int(np.sum(d & ~y))
    fn, tn = int(np.sum(~d & y)), int(np.sum(~d & ~y))
    rep = metrics.class_report(tp, fp, fn, tn, CONFIDENCE, positive, negative)
    dec = d.astype(float)
    for key, fn_ in (("positive", f1_of_decisions), ("negative", f1_negative_of_decisions)):
        boot = _bootstrap(y, dec, groups, fn_, n_resamples)
        rep[key]["f1"].update(lo=boot["lo"], hi=boot["hi"], n_resamples=boot.get("n_resamples"),
                              method="patient bootstrap")
    rep["balanced_accuracy"] = (rep["sensitivity"]["value"] + rep["specificity"]["value"]) / 2
    return rep


def ranking_metrics(y: np.ndarray, p: np.ndarray, groups: np.ndarray, n_resamples: int) -> dict[str, Any]:
    """AUROC and PR-AUC (average precision) from probabilities, with patient-bootstrap intervals."""
    y = np.asarray(y, dtype=bool)
    out: dict[str, Any] = {"prevalence": float(y.mean()) if len(y) else math.nan, "notes": []}
    if y.all() or not y.any():
        out["notes"].append("the test rows hold one class only: AUROC and PR-AUC are undefined")
        out["auroc"] = out["pr_auc"] = None
        return out
    try:
        metrics.roc_auc(y, p)  # refuses hard 0/1 labels
    except UsageError as exc:
        out["notes"].append(str(exc))
        out["auroc"] = out["pr_auc"] = None
        return out
    out["auroc"] = _bootstrap(y, p, groups, fast_auroc, n_resamples)
    out["pr_auc"] = _bootstrap(y, p, groups, fast_average_precision, n_resamples)
    return out


def calibration_summary(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """Reliability table (10 equal-width bins), Brier score and expected calibration error."""
    cal = metrics.calibration(np.asarray(y, dtype=bool), p, n_bins=CALIBRATION_BINS)
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in cal.items()}


def _argmax_positive(proba: np.ndarray, classes: Sequence[str], positive: str) -> np.ndarray:
    return np.argmax(proba, axis=1) == list(classes).index(positive)


def score_run(run: RunData, n_resamples: int = DEFAULT_RESAMPLES) -> dict[str, Any]:
    """Every test-set number of one run: argmax table, Youden table, ranking, calibration, folds."""
    labels = run.column("label")
    part = run.column("split")
    fold = run.fold
    y_all = labels == run.positive
    p_all = run.proba[:, run.classes.index(run.positive)]
    groups = run.groups
    test = part == "test"
    if not test.any():
        raise RunError(
            f"Expected test rows in {run.path / 'predictions.csv'}; got none (split column: "
            f"{sorted(set(part.tolist()))}). Fix: rerun fit-head."
        )
    y, p, g = y_all[test], p_all[test], groups[test]
    argmax_pos = _argmax_positive(run.proba, run.classes, run.positive)
    out: dict[str, Any] = {
        "n_test": int(test.sum()),
        "n_test_positive": int(y.sum()),
        "n_test_negative": int((~y).sum()),
        "n_test_patients": int(len(set(g.tolist()))),
        "n_val": int((part == "val").sum()),
        "argmax": decision_metrics(y, argmax_pos[test], g, run.positive, run.negative, n_resamples),
        "ranking": ranking_metrics(y, p, g, n_resamples),
        "calibration": calibration_summary(y, p),
    }
    # The threshold fit-head chose on validation rows and recorded (per fold for k-fold runs).
    youden_pos = np.zeros(len(labels), dtype=bool)
    thresholds: dict[str, float | None] = {}
    notes: list[str] = []
    usable = np.zeros(len(labels), dtype=bool)
    for f in sorted(set(fold.tolist())):
        in_f = fold == f
        thr = run.record.fold_threshold(f)
        key = "all" if f < 0 else f"fold {f}"
        thresholds[key] = thr
        if thr is None:
            notes.append(f"{key}: validation gave no threshold ({run.record.decision.note})")
            continue
        usable |= in_f & test
        youden_pos[in_f] = p_all[in_f] >= thr

    dec = run.record.decision
    youden: dict[str, Any] = {"thresholds": thresholds, "notes": notes, "chosen_on": "validation rows",
                              "rule": dec.rule, "how": describe(dec.rule, dec.threshold) if not run.is_kfold
                              else f"each fold's own threshold ({RULE}), recorded by fit-head"}
    if usable[test].all():
        youden.update(decision_metrics(y, youden_pos[test], g, run.positive, run.negative, n_resamples))
        youden["available"] = True
    else:
        youden["available"] = False
    out["youden"] = youden
    out["folds"] = fold_spread(run, y_all, p_all, argmax_pos, test, groups) if run.is_kfold else None
    return out


def fold_spread(run: RunData, y_all: np.ndarray, p_all: np.ndarray, argmax_pos: np.ndarray,
                test: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """Per-fold test metrics of a k-fold run, with mean, SD (n-1), min and max across folds."""
    fold = run.fold
    per_fold = []
    for f in sorted(set(fold[test].tolist())):
        idx = test & (fold == f)
        y, p, d = y_all[idx], p_all[idx], argmax_pos[idx]
        tp, fp = int(np.sum(d & y)), int(np.sum(d & ~y))
        fn, tn = int(np.sum(~d & y)), int(np.sum(~d & ~y))
        both = bool(y.any() and (~y).any())
        per_fold.append({
            "fold": int(f),
            "n": int(idx.sum()),
            "accuracy": (tp + tn) / len(y),
            "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
            "specificity": tn / (tn + fp) if tn + fp else math.nan,
            "f1_positive": f1_of_decisions(y, d),
            "auroc": fast_auroc(y, p) if both else math.nan,
            "pr_auc": fast_average_precision(y, p) if both else math.nan,
            "brier": float(np.mean((p - y) ** 2)),
        })
    summary = {}
    for key in ("accuracy", "sensitivity", "specificity", "f1_positive", "auroc", "pr_auc", "brier"):
        vals = np.array([r[key] for r in per_fold], dtype=float)
        vals = vals[np.isfinite(vals)]
        summary[key] = {
            "mean": float(vals.mean()) if len(vals) else math.nan,
            "sd": float(vals.std(ddof=1)) if len(vals) > 1 else math.nan,
            "min": float(vals.min()) if len(vals) else math.nan,
            "max": float(vals.max()) if len(vals) else math.nan,
            "n_folds": int(len(vals)),
        }
    return {"per_fold": per_fold, "summary": summary}


# ---------------------------------------------------------------------------------------------
# Paper comparison


def paper_comparison(backbone: str, argmax: dict[str, Any]) -> dict[str, Any]:
    """Ours beside the paper's Table 2 for the same backbone: value, paper value (or None), difference."""
    paper = metrics.PAPER_TABLE2.get(backbone.lower())
    cells: dict[str, Any] = {}

    def add(key: str, ours: float | int, theirs: Any) -> None:
        reported = theirs is not None
        cells[key] = {
            "ours": ours,
            "paper": theirs if reported else None,
            "difference": (ours - theirs) if reported and ours is not None and not _isnan(ours) else None,
        }

    for side, name in (("positive", "covid"), ("negative", "normal")):
        for m in ("precision", "recall", "f1"):
            theirs = paper[name][m] if paper else None
            add(f"{name}_{m}", argmax[side][m]["value"], theirs)
    for c in ("tp", "fp", "fn", "tn"):
        add(c, argmax["counts"][c], paper[c] if paper else None)
    add("accuracy", argmax["accuracy"]["value"], paper["accuracy"] if paper else None)
    return {
        "backbone": backbone,
        "in_paper": paper is not None,
        "cells": cells,
        "notes": list(paper["notes"]) if paper else [
            f"The paper reports no results for {backbone}: every paper cell is 'not reported'."
        ],
        "paper_test_set": dict(metrics.PAPER_TEST_SET),
    }


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


# ---------------------------------------------------------------------------------------------
# Audit orchestration


def _embeddings(run: RunData, cache_dir: Path, log: Callable[[str], None]) -> tuple[Any, list[str]]:
    """Re-run extraction on the run's manifest (a cache hit); return (ExtractResult or None, notes)."""

    notes: list[str] = []
    model, manifest = run.record.model, run.record.data_path
    if not Path(manifest).exists():
        return None, [f"the run's data {manifest} no longer exists: source probe not run"]
    recorded = run.record.data_sha256
    if Path(manifest).is_file():
        if sha256_file(manifest) != recorded:
            notes.append(f"{manifest} changed since the run was trained; only images listed in the run's "
                         "split are used")
    runtime, precision = run.record.runtime, run.record.precision
    config = ModelConfig.from_dict(model, source=f"run config {run.path / 'config.json'}")
    log(f"embeddings of {Path(manifest).name} for the audit (from the cache)")
    model_path = int8_model_of_run(export_model(config, cache_dir), run.config) if precision == "int8" else None
    options = ExtractionOptions(runtime=runtime, precision=precision, progress=False, model_path=model_path)
    result = extract(data=manifest, config=config, cache_dir=cache_dir, options=options, read_only_ok=True)
    return result, notes


def _run_images(run: RunData, extracted: Any) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Rows of the extraction that belong to the run (by split.csv, or by prediction rows)."""
    wanted = {r["image_id"] for r in run.split_rows} or set(run.column("image_id").tolist())
    label_of = {r["image_id"]: r.get("label", "") for r in run.split_rows}
    idx, meta, seen = [], [], set()
    for i, (iid, m) in enumerate(zip(extracted.ids, extracted.metadata)):
        if iid in wanted and iid not in seen:
            seen.add(iid)
            idx.append(i)
            meta.append({**m, "image_id": iid, "label": label_of.get(iid) or str(extracted.labels[i])})
    return np.asarray(idx, dtype=np.int64), meta


def run_ablation(run: RunData, cache_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Masked-lung ablation of the run's test images, scored by the run's own head(s)."""

    heads = head_locations(run)
    config = ModelConfig.from_dict(run.model_dict, source=f"run config {run.path / 'config.json'}")
    exported = export_model(config, cache_dir)
    extractor = make_extractor(exported, run.record.runtime, run.record.precision, "cpu",
                               model_path=int8_model_of_run(exported, run.config))
    part, fold = run.column("split"), run.fold
    paths, labels = run.column("path"), run.column("label")
    test = np.flatnonzero(part == "test")
    masked = np.full((len(run.rows), 2), np.nan)
    problems: list[str] = []
    example = None
    log(f"masked-lung ablation: {len(test)} test images")
    for f, (folder, record) in sorted(heads.items()):
        rows = test if f < 0 else test[fold[test] == f]
        if len(rows) == 0:
            continue
        head = load_head(folder, record)
        batch, kept, bad = audit.masked_images(paths[rows].tolist(), config.preprocessing)
        problems += bad
        if not kept:
            continue
        emb = np.concatenate([extractor(batch[i:i + 32]) for i in range(0, len(batch), 32)])
        proba = head.predict_proba(emb)
        order = [list(head.classes_).index(c) for c in run.classes]
        masked[rows[kept]] = proba[:, order]
        if example is None:
            example = _example_pair(paths[rows[kept[0]]], config.preprocessing, batch[0])
    done = np.flatnonzero(np.isfinite(masked[:, 0]))
    if len(done) == 0:
        return {"ran": False, "reason": "no test image could be masked and scored", "problems": problems}
    res = audit.ablation_scores(labels[done], masked[done], run.proba[done], run.classes, run.positive)
    res.update(ran=True, problems=problems, n_not_scored=int(len(test) - len(done)))
    res["_example"] = example
    return res


def _example_pair(path: str, prep: Any, masked: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        return load_image(path, prep), masked
    except (ImageDecodeError, OSError):
        return None


def audit_run(
    run: RunData, scores: dict[str, Any], cache_dir: Path, ablation: bool, n_resamples: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Breakdowns, confounding warnings, source probe and (optionally) the masked-lung ablation."""
    part = run.column("split")
    test = part == "test"
    out: dict[str, Any] = {"breakdowns": {}, "warnings": [], "notes": [], "probe": [], "ablation": None}
    for col in audit.AUDIT_COLUMNS:
        vals = run.column(col)
        if not np.any(vals != ""):
            out["notes"].append(f"the data has no {col.replace('_', ' ')} column: no breakdown by it")
            continue
        out["breakdowns"][col] = audit.breakdown(
            run.column("label")[test], run.proba[test], run.classes, run.positive, vals[test],
            run.groups[test], n_resamples=n_resamples, seed=SEED,
        )
    extracted, notes = _embeddings(run, cache_dir, log)
    out["notes"] += notes
    composition_rows: list[dict[str, str]]
    if extracted is not None:
        idx, meta = _run_images(run, extracted)
        composition_rows = meta
        if len(idx):
            groups = np.array([m.get("patient_id") or f"image:{m['image_id']}" for m in meta], dtype=str)
            out["probe"] = audit.source_probe_by_class(
                extracted.embeddings[idx], [m["label"] for m in meta], [m.get("source", "") for m in meta],
                groups, seed=SEED,
            )
            if not out["probe"]:
                out["notes"].append("no class holds two or more sources: the source probe has nothing to probe")
    else:
        composition_rows = [dict(r) for r in run.rows]
    out["composition"] = composition(run, composition_rows)
    out["warnings"] += [w[0].upper() + w[1:] for w in audit.confound_warnings(composition_rows, run.positive)]
    for probe in out["probe"]:
        if probe["flag"]:
            out["warnings"].append(
                f"Within class {probe['class']}, the embeddings tell the sources apart "
                f"(source-probe AUROC {probe['auroc']:.2f} ≥ {audit.PROBE_FLAG_AUROC}): the features carry the "
                "source, so a head can use it as a shortcut"
            )
    if ablation:
        out["ablation"] = run_ablation(run, cache_dir, log)
        abl = out["ablation"]
        if abl.get("ran") and abl.get("flag"):
            out["warnings"].append(
                f"With the lungs masked the model still reaches AUROC {abl['masked']['auroc']:.2f} "
                f"(≥ {audit.ABLATION_FLAG_AUROC}): it leans on what lies outside the lungs"
            )
    else:
        out["ablation"] = {"ran": False, "reason": "skipped (--no-ablation)"}
    return out


def composition(run: RunData, rows: list[dict[str, str]]) -> dict[str, Any]:
    """Images and patients per part (per test fold for k-fold runs) and label; images per label and source."""
    parts: dict[str, dict[str, int]] = {}
    patients: dict[str, set[str]] = {}
    if run.split_rows:
        kfold = any(int(r.get("fold", "-1") or -1) >= 0 for r in run.split_rows)
        for r in sorted(run.split_rows, key=lambda r: int(r.get("fold", "-1") or -1)):
            part = r.get("part") or r.get("split", "")
            if kfold and part != "test":
                continue
            key = f"fold {r.get('fold')} (test)" if kfold else part
            parts.setdefault(key, {}).setdefault(r.get("label", ""), 0)
            parts[key][r.get("label", "")] += 1
            patients.setdefault(key, set()).add(r.get("patient_id") or r["image_id"])
    by_source: dict[str, dict[str, int]] = {}
    for r in rows:
        lab = r.get("label", "")
        src = r.get("source", "") or "(blank)"
        by_source.setdefault(lab, {}).setdefault(src, 0)
        by_source[lab][src] += 1
    return {
        "parts": parts,
        "patients": {k: len(v) for k, v in patients.items()},
        "n_images": len({r["image_id"] for r in run.split_rows}) or len(rows),
        "by_source": by_source,
        "n_folds": int(run.fold.max()) + 1 if run.is_kfold else 0,
    }


# ---------------------------------------------------------------------------------------------
# The whole report


@dataclass
class ReportResult:
    """Where a report was written, and its data."""

    out: Path
    markdown: Path
    html: Path
    json: Path
    data: dict[str, Any]
    figures: list[Any] = field(default_factory=list)  # xrayfx.report.figures.Figure
    seconds: float = 0.0


def _default_cache_dir(run: str | Path) -> Path:
    """``<cache>`` when ``run`` is a folder ``<cache>/runs/<id>``; else the run's recorded cache; else ``cache``."""
    p = Path(run).expanduser()
    if p.is_dir() and p.resolve().parent.name == "runs":
        return p.resolve().parent.parent
    if (p / "config.json").is_file():
        recorded = read_json(p / "config.json").get("cache_dir")
        if isinstance(recorded, str) and Path(recorded).is_dir():
            return Path(recorded)
    return Path("cache")


def describe_run(run: RunData) -> dict[str, Any]:
    """The facts about a run that the report states: backbone, weights, head, balance, split."""
    model = run.model_dict
    weights = model.get("weights") or {}
    kind = weights.get("kind")
    if kind == "none":
        wtext = f"random initialisation (seed {weights.get('seed')}), NOT pretrained"
    elif kind == "imagenet":
        wtext = "ImageNet weights"
    elif kind == "file":
        wtext = f"weights from {Path(str(weights.get('path'))).name}"
    else:
        wtext = "weights not recorded"
    prep = model.get("preprocessing") or {}
    balance = run.record.balance
    return {
        "run_id": run.run_id,
        "path": str(run.path),
        "backbone": run.backbone,
        "head": run.head_name,
        "weights": wtext,
        "weights_random": kind == "none",
        "preprocessing": prep,
        "balance": balance if isinstance(balance, str) else None,
        "positive": run.positive,
        "negative": run.negative,
        "classes": run.classes,
        "split_kind": "kfold" if run.is_kfold else "holdout",
        "n_folds": int(run.fold.max()) + 1 if run.is_kfold else 0,
        "runtime": run.record.runtime,
        "precision": run.record.precision,
        "fingerprint": model.get("fingerprint"),
    }


def build_report(
    runs: Sequence[str | Path],
    out: str | Path | None = None,
    ablation: bool = True,
    cache_dir: str | Path | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    log: Callable[[str], None] | None = None,
    explain: int = 16,
) -> ReportResult:
    """Build the report of one or several runs and write ``report.md``, ``report.html``, ``report.json``.

    ``runs`` are run folders or run ids under ``<cache_dir>/runs``. ``out``
    defaults to ``RUN/report/`` for one run and ``<cache_dir>/reports/<timestamp>/``
    for several. ``cache_dir`` defaults to the cache the (first) run folder sits
    in (``<cache>/runs/<id>``), else ``cache``. ``ablation=False`` skips the
    masked-lung ablation. ``n_resamples`` is the number of patient-bootstrap
    resamples behind every AUROC, PR-AUC and F1 interval. ``explain`` test images
    per class get occlusion maps (:mod:`xrayfx.report.explain_section`; 0: none).
    """
    t0 = time.perf_counter()
    log = log or (lambda msg: None)
    runs = list(runs)
    if not runs:
        raise UsageError("Expected at least one run (folder or id); got none. Fix: xrayfx report RUN.")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 100:
        raise UsageError(f"Expected --resamples (n_resamples) as an integer of at least 100; got {n_resamples!r}. "
                         "Fix: --resamples 2000 (the default), or at least 100.")
    explain_section.check_explain(explain)
    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir(runs[0])
    loaded = [read_run(r, cache) for r in runs]
    ids = [r.run_id for r in loaded]
    if len(set(ids)) != len(ids):
        raise UsageError(f"Expected each run once; got {', '.join(ids)}. Fix: drop the repeated run.")
    if out is None:
        out = loaded[0].path / "report" if len(loaded) == 1 else (
            cache / "reports" / time.strftime("%Y%m%d-%H%M%S"))
    out = Path(out)
    require_writable_output(out)

    entries = []
    figures: list[figs.Figure] = []
    for run in loaded:
        log(f"scoring {run.run_id} ({len(run.rows)} prediction rows, {n_resamples} bootstrap resamples)")
        scores = score_run(run, n_resamples)
        audit_res = audit_run(run, scores, cache, ablation, n_resamples, log)
        example = audit_res["ablation"].pop("_example", None) if audit_res["ablation"] else None
        entry = {
            "run": describe_run(run),
            "scores": scores,
            "paper": paper_comparison(run.backbone, scores["argmax"]),
            "audit": audit_res,
            "history": run.history,
            "external": external.collect(run, scores),
        }
        entry["figures"] = []
        for fig in figs.run_figures(run, entry, example):
            figures.append(fig)
            entry["figures"].append(fig.name)
        entry["explain"], explain_figs = explain_section.explain_run(run, cache, explain, log)
        figures += explain_figs
        entries.append(entry)
    data: dict[str, Any] = {
        "title": "xrayfx report",
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "xrayfx_version": _version(),
        "n_resamples": n_resamples,
        "confidence": CONFIDENCE,
        "runs": entries,
        "comparison_figure": None,
    }
    if len(entries) > 1:
        fig = figs.comparison_figure(entries)
        figures.append(fig)
        data["comparison_figure"] = fig.name
    data["summary"] = render.summary_lines(data)
    data["warnings"] = [w for e in entries for w in e["audit"]["warnings"]]
    paths = render.write_report(data, figures, out)
    return ReportResult(out=out, markdown=paths["md"], html=paths["html"], json=paths["json"], data=data,
                        figures=figures, seconds=time.perf_counter() - t0)


def _version() -> str:
    return __version__


__all__ = [
    "DEFAULT_RESAMPLES",
    "ReportResult",
    "RunData",
    "build_report",
    "decision_metrics",
    "head_locations",
    "paper_comparison",
    "ranking_metrics",
    "read_run",
    "score_run",
]
