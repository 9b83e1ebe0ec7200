"""`evaluate`: score a labelled data set (another hospital, a held-out part) with a finished run.

:func:`evaluate` embeds what the run's cache lacks (the run's backbone,
preprocessing, runtime and precision), applies the run's head(s) and its
recorded threshold (:mod:`xrayfx.study.decision`), finds which images overlap
the run's training and validation data (:mod:`xrayfx.study.overlap`), and
writes ``RUN/evaluations/NAME/``:
* ``predictions.csv`` — ``path,image_id,label,patient_id,source,p_<positive>,predicted,threshold,overlap``
  and then the data's other columns (paths as given);
* ``metrics.json`` — ``n, n_patients, positive, threshold, auroc (null for one class), auroc_ci,
  pr_auc, sensitivity, specificity, ppv, npv`` (each with ``<name>_ci``), ``confusion``,
  ``by_source`` and ``overlap``. Overlapping rows are left out of the metrics unless
  ``keep_overlap``; rows whose label is not one of the run's two are left out and counted.

Intervals: AUROC and PR-AUC by patient bootstrap (:data:`xrayfx.metrics.DEFAULT_RESAMPLES`),
proportions by Wilson.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from xrayfx import metrics as M
from xrayfx.extraction.options import ExtractionOptions
from xrayfx.csvsafe import csv_text, read_csv_dicts
from xrayfx.exceptions import DataError, UsageError
from xrayfx.study.runs import SPLIT_FILE, Run, check_run_id, load_run, resolve_run
from xrayfx.data.neardup import hash_cache_path, perceptual_hashes, read_image_hashes
from xrayfx.study.groups import IMAGE_HASHES_FILE
from xrayfx.study.overlap import Side, find_overlap
from xrayfx.study.predict import cache_dir_of, score
from xrayfx.util import atomic_write_json, atomic_write_text, jsonable
from xrayfx.data.manifest import load_dataset
from xrayfx.study.predict import _manifest_paths

EVALUATIONS_DIR = "evaluations"
PREDICTIONS = "predictions.csv"
METRICS = "metrics.json"
LEAD_COLUMNS = ("path", "image_id", "label", "patient_id", "source")

Log = Callable[[str], None]


@dataclass
class EvaluationResult:
    """Where an evaluation was written and its metrics."""

    path: Path
    predictions: Path
    metrics: dict[str, Any]


def _labelled(data: str | Path) -> tuple[Any, list[str]]:
    p = Path(data).expanduser()
    dataset = load_dataset(p)
    given = _manifest_paths(p) if dataset.kind == "manifest" else [str(r.path) for r in dataset.records]
    return dataset, given


def _training_side(run: Run) -> Side:
    """The run's training + validation rows (every fold's) from its split.csv, with their perceptual
    hashes from the run's image_hashes.csv (written by fit-head, so nothing is decoded again)."""
    ids: dict[str, str] = {}
    for r in read_csv_dicts(run.file(SPLIT_FILE)):
        if (r.get("part") or r.get("split")) in ("train", "val"):
            ids[r["image_id"]] = r.get("patient_id", "")
    hash_ids, hashes = read_image_hashes(run.file(IMAGE_HASHES_FILE))
    hash_of = dict(zip(hash_ids, hashes.tolist()))
    keep = [i for i in ids if i in hash_of]
    return Side.of(keep, [ids[i] for i in keep], None, np.array([hash_of[i] for i in keep], dtype=np.uint64))


def _evaluation_hashes(paths: list[str], image_ids: list[str], cache_dir: Path) -> np.ndarray:
    """Perceptual hashes of the evaluation images, cached in the cache folder when it is writable."""
    cache_file = hash_cache_path(cache_dir) if os.access(cache_dir, os.W_OK) else None
    return perceptual_hashes(paths, sha256s=image_ids, cache_file=cache_file)


def _interval(prop: dict[str, Any]) -> list[float] | None:
    lo, hi = prop.get("lo"), prop.get("hi")
    return None if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) else [lo, hi]


def _value(v: Any) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def evaluation_metrics(
    y: np.ndarray, p_pos: np.ndarray, decided: np.ndarray, groups: np.ndarray, sources: np.ndarray,
    positive: str, negative: str, threshold: float, n_resamples: int = M.DEFAULT_RESAMPLES,
) -> dict[str, Any]:
    """metrics.json's numbers for rows ``y`` (True = positive) with probabilities and decisions."""
    y, d = np.asarray(y, dtype=bool), np.asarray(decided, dtype=bool)
    tp, fp = int(np.sum(d & y)), int(np.sum(d & ~y))
    fn, tn = int(np.sum(~d & y)), int(np.sum(~d & ~y))
    rep = M.class_report(tp, fp, fn, tn, 0.95, positive, negative)
    out: dict[str, Any] = {
        "n": int(len(y)), "n_patients": int(len(set(groups.tolist()))), "n_positive": int(y.sum()),
        "n_negative": int((~y).sum()), "positive": positive, "negative": negative, "threshold": float(threshold),
        "auroc": None, "auroc_ci": None, "pr_auc": None, "pr_auc_ci": None, "notes": [],
    }
    if y.any() and (~y).any():
        auc = M.bootstrap_auroc(y, p_pos, groups, n_resamples=n_resamples, seed=0)
        ap = M.bootstrap_pr_auc(y, p_pos, groups, n_resamples=n_resamples, seed=0)
        out.update(auroc=M.roc_auc(y, p_pos), auroc_ci=_interval(auc), pr_auc=M.pr_auc(y, p_pos),
                   pr_auc_ci=_interval(ap))
    else:
        only = positive if y.any() else negative
        out["notes"].append(f"AUROC and PR-AUC are undefined: every scored row is {only}; "
                            f"{'sensitivity' if y.any() else 'specificity'} is the number to read")
    for key in ("sensitivity", "specificity", "ppv", "npv"):
        out[key] = _value(rep[key]["value"])
        out[f"{key}_ci"] = _interval(rep[key]) if out[key] is not None else None
    out["confusion"] = {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    out["by_source"] = _by_source(y, p_pos, d, sources)
    return out


def _by_source(y: np.ndarray, p: np.ndarray, d: np.ndarray, sources: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for src in sorted(set(sources.tolist())):
        m = sources == src
        ys, ds = y[m], d[m]
        both = bool(ys.any() and (~ys).any())
        out[src or "(blank)"] = {
            "n": int(m.sum()), "n_positive": int(ys.sum()), "n_negative": int((~ys).sum()),
            "auroc": M.roc_auc(ys, p[m]) if both else None,
            "sensitivity": float(np.mean(ds[ys])) if ys.any() else None,
            "specificity": float(np.mean(~ds[~ys])) if (~ys).any() else None,
        }
    return out


def _output_folder(run: Run, data: str | Path, name: str | None, force: bool) -> Path:
    name = name if name is not None else Path(data).expanduser().stem
    try:
        check_run_id(name)
    except UsageError:
        raise UsageError(f"Expected --name to be a plain folder name (letters, digits, '.', '_', '+', '-'); got "
                         f"{name!r}. Fix: pass --name NAME.") from None
    out = run.path / EVALUATIONS_DIR / name
    if out.exists() and not force:
        raise UsageError(f"Evaluation {out} exists already; expected a new --name. Fix: pass another --name, or "
                         "--force to replace it.")
    return out


def evaluate(
    run: str | Path,
    data: str | Path,
    *,
    name: str | None = None,
    force: bool = False,
    keep_overlap: bool = False,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = True,
    n_resamples: int = M.DEFAULT_RESAMPLES,
    log: Log | None = print,
) -> EvaluationResult:
    """Score a labelled folder or manifest with a run and write ``RUN/evaluations/NAME/`` (see the module doc).

    ``name`` defaults to the data's stem; an existing evaluation is refused
    (UsageError, exit 2) unless ``force``. Overlapping rows are scored and
    listed but left out of the metrics unless ``keep_overlap``.
    """
    log = log or (lambda _m: None)
    run_path = resolve_run(run, cache_dir or "cache")
    loaded = load_run(run_path, cache_dir or "cache")
    record = loaded.record
    out = _output_folder(loaded, data, name, force)
    data_cache = Path(cache_dir) if cache_dir is not None else cache_dir_of(run_path)
    dataset, given = _labelled(data)
    options = ExtractionOptions(device=device, batch_size=batch_size, workers=workers, progress=progress)
    scored = score(loaded, dataset, given, data_cache, options, log=log)
    recs = scored.records
    labels = np.array([r.label or "" for r in recs], dtype=object)
    in_run = np.isin(labels, list(record.labels))
    if not in_run.any():
        raise DataError(f"Expected rows labelled {record.labels[0]!r} or {record.labels[1]!r} in {data}; got "
                        f"labels {sorted(set(labels.tolist()))}. Fix: evaluate data labelled like the run.")
    train = _training_side(loaded)
    ev_ids, ev_paths = [r.image_id for r in recs], [str(r.path) for r in recs]
    ev = Side.of(ev_ids, [r.get("patient_id") for r in recs], ev_paths,
                 _evaluation_hashes(ev_paths, ev_ids, data_cache))
    overlap = find_overlap(ev, train)
    use = in_run & (np.array([o == "" for o in overlap]) | keep_overlap)
    pid = np.array([r.get("patient_id") for r in recs], dtype=object)
    groups = np.array([p or f"image:{r.image_id}" for p, r in zip(pid, recs)], dtype=object)
    sources = np.array([r.get("source") for r in recs], dtype=object)
    y = labels == record.positive
    decided = np.array([p == record.positive for p in scored.predicted], dtype=bool)
    dec = record.decision
    metrics = evaluation_metrics(y[use], scored.p_pos[use], decided[use], groups[use], sources[use],
                                 record.positive, record.negative, dec.threshold, n_resamples)
    left_out = {str(k): int(v) for k, v in zip(*np.unique(labels[~in_run].astype(str), return_counts=True))}
    metrics.update(
        run_id=record.run_id, data=str(Path(data).expanduser().resolve()), rule=dec.rule,
        overlap={"n": sum(1 for o in overlap if o), "excluded": not keep_overlap,
                 "rows": [{"path": g, "image_id": r.image_id, "reason": o}
                          for r, g, o in zip(recs, scored.given, overlap) if o]},
        left_out_by_label=left_out, skipped=[{"path": str(s.path), "reason": s.reason}
                                             for s in scored.extracted.skipped],
    )
    _write(out, _predictions_csv(scored, overlap, record.positive, dec.threshold), metrics)
    log(f"evaluation written to {out}: n {metrics['n']}, AUROC "
        f"{'undefined (one class)' if metrics['auroc'] is None else format(metrics['auroc'], '.3f')}, "
        f"sensitivity {metrics['sensitivity']}, specificity {metrics['specificity']}; "
        f"{metrics['overlap']['n']} overlapping row(s) {'kept' if keep_overlap else 'left out'}")
    return EvaluationResult(out, out / PREDICTIONS, metrics)


def _predictions_csv(scored: Any, overlap: list[str], positive: str, threshold: float) -> str:
    extra = [c for c in scored.columns if c not in LEAD_COLUMNS]
    return csv_text(
        [*LEAD_COLUMNS, f"p_{positive}", "predicted", "threshold", "overlap", *extra],
        [[g, r.image_id, r.label or "", r.get("patient_id"), r.get("source"), repr(float(p)), pred,
          repr(float(threshold)), o, *(r.get(c) for c in extra)]
         for r, g, p, pred, o in zip(scored.records, scored.given, scored.p_pos, scored.predicted, overlap)],
    )


def _write(out: Path, predictions: str, metrics: dict[str, Any]) -> None:
    """Write both files in a hidden sibling folder, then move it into place (replacing an old one)."""
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    atomic_write_text(tmp / PREDICTIONS, predictions)
    atomic_write_json(tmp / METRICS, jsonable(metrics))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
