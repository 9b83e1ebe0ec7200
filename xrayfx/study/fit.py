"""`fit-head`: extract what is missing, split without leakage, balance, train, record.

:func:`fit_head` runs the whole study step by step:
1. extract the data set through the embedding cache (only what is missing is computed);
2. keep the rows of exactly two labels (the others are left out and counted) and
   one row per image id (byte-identical files share a row; conflicting labels are an error);
3. make (or read) a patient-grouped split and compute every fold's train/val/test
   parts once (:mod:`xrayfx.study.parts`); refuse leakage unless ``allow_leakage``;
4. per fold: balance the training rows only (:func:`xrayfx.study.balance.balance`),
   optionally add jittered copies of training images (:mod:`xrayfx.extraction.augment`),
   train the head, predict validation and test rows;
5. choose the decision threshold on validation predictions, never on test
   (:mod:`xrayfx.study.decision`, the one rule predict, report and evaluate apply);
6. write the run folder (:mod:`xrayfx.study.runs`): ``split.csv``, the head, ``history.csv``,
   ``predictions.csv``, ``metrics.json``, ``summary.txt``, ``config.json``
   (:mod:`xrayfx.study.record`) and ``run.sha256``.

``predict`` lives in :mod:`xrayfx.study.predict` and is re-exported here.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from xrayfx.study.balance import TrainingRows, balance as balance_rows
from xrayfx.data.manifest import Dataset
from xrayfx.csvsafe import csv_text
from xrayfx.exceptions import DataError, UsageError
from xrayfx.study.heads import make_head
from xrayfx.study.heads.persist import HISTORY_FIELDS, save_head, write_history_csv
from xrayfx.models.config import ModelConfig, model_config
from xrayfx.extraction.options import ExtractionOptions
from xrayfx.study.runs import (
    HISTORY_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    SPLIT_FILE,
    SUMMARY_FILE,
    Run,
    RunWriter,
    default_run_id,
    load_run,
    runs_root,
)
from xrayfx.study.splits import HOLDOUT_FOLD, Split, check_leakage, make_holdout_split, make_kfold_split
from xrayfx.study.split_files import align_to_split, read_split
from xrayfx.study.decision import Threshold, choose_threshold, run_decision
from xrayfx.study.groups import link_near_duplicates
from xrayfx.study.options import PAPER_FLAGS, CheckedOptions, HeadOptions, check_options, parse_labels
from xrayfx.study.parts import FoldParts, parts_of, parts_summary, read_parts, write_parts
from xrayfx.study.predict import PredictResult, collect_inputs, predict, proba_in, write_stdout
from xrayfx.study.record import build_config
from xrayfx.study.summary import part_metrics, run_metrics, summary_text
from xrayfx.util import import_keras_quietly, sha256_file
from xrayfx.extraction import pipeline
from xrayfx.extraction.augment import JitterParams, JitterSource
from xrayfx.data.manifest import load_dataset

PREDICTION_META = ("patient_id", "source", "view", "age_group")

Log = Callable[[str], None]

__all__ = [
    "PAPER_FLAGS", "HeadOptions", "PredictResult", "collect_inputs", "fit_head", "parse_labels", "part_metrics",
    "predict", "write_stdout",
]


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class _Rows:
    """The rows a run trains and evaluates on: one per image id, two labels, split order."""

    ids: np.ndarray
    paths: np.ndarray
    labels: np.ndarray
    meta: list[dict[str, str]]
    X: np.ndarray
    left_out: dict[str, int]
    duplicates_dropped: int

    def column(self, name: str) -> np.ndarray:
        return np.array([m.get(name, "") or "" for m in self.meta], dtype=object)

    def groups(self, idx: np.ndarray) -> np.ndarray:
        """Patient id of rows ``idx`` (``image:<id>`` where blank): the bootstrap's resampling unit."""
        pid = self.column("patient_id")[idx]
        return np.array([p if p else f"image:{i}" for p, i in zip(pid, self.ids[idx])], dtype=object)

    def take(self, idx: np.ndarray) -> "_Rows":
        return _Rows(
            self.ids[idx], self.paths[idx], self.labels[idx], [self.meta[i] for i in idx], self.X[idx],
            self.left_out, self.duplicates_dropped,
        )


def _select_rows(result: Any, labels: tuple[str, str]) -> _Rows:
    """Rows with one of the two labels, one per image id (first path kept)."""
    left_out: dict[str, int] = {}
    first: dict[str, int] = {}
    keep: list[int] = []
    conflicts: list[str] = []
    dropped = 0
    for i, (image_id, label) in enumerate(zip(result.ids, result.labels)):
        label = str(label or "")
        if label not in labels:
            left_out[label or "(blank)"] = left_out.get(label or "(blank)", 0) + 1
            continue
        if image_id in first:
            j = first[image_id]
            if str(result.labels[j]) != label:
                conflicts.append(f"{result.paths[j]} ({result.labels[j]}) = {result.paths[i]} ({label})")
            dropped += 1
            continue
        first[image_id] = i
        keep.append(i)
    if conflicts:
        raise DataError(
            f"Expected one label per image; got {len(conflicts)} byte-identical file pair(s) with different "
            f"labels: {'; '.join(conflicts[:5])}. Fix: correct the labels in the manifest."
        )
    if not keep:
        raise DataError(
            f"Expected images labelled {labels[0]!r} or {labels[1]!r}; got none (labels found: "
            f"{', '.join(sorted(left_out)) or 'none'}). Fix: check --labels against the data's label column."
        )
    idx = np.array(keep, dtype=np.int64)
    return _Rows(
        ids=np.array(result.ids, dtype=object)[idx],
        paths=np.array(result.paths, dtype=object)[idx],
        labels=np.array([str(v) for v in result.labels], dtype=object)[idx],
        meta=[result.metadata[i] for i in keep],
        X=np.asarray(result.embeddings)[idx],
        left_out=dict(sorted(left_out.items())),
        duplicates_dropped=dropped,
    )


# ---------------------------------------------------------------------------------------------
# Training one fold


@dataclass
class _FoldResult:
    """One fold's trained head, its validation/test rows and probabilities, and its threshold."""

    fold: int | None
    head: Any
    record: dict[str, Any]
    folder: str
    history: list[dict[str, Any]]
    balance: dict[str, Any]
    val_idx: np.ndarray
    test_idx: np.ndarray
    val_proba: np.ndarray
    test_proba: np.ndarray
    chosen: Threshold
    augment: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _train_fold(
    *, fold: int | None, split: Split, rows: _Rows, opts: CheckedOptions, extracted: Any, cache_dir: Path,
    jitter: dict[str, Any], log: Log,
) -> _FoldResult:
    """Train one fold's head on ``split``'s train part (the fold's parts, computed once) and choose its threshold."""

    t0 = time.perf_counter()
    train_seed = opts.train_seed
    train = TrainingRows(split, rows.X, y=rows.labels.astype(str))
    val_idx, test_idx = split.rows("val"), split.rows("test")
    where = "" if fold is None else f"fold {fold}: "
    params = dict(opts.head_params)
    if opts.head == "paper":
        params.setdefault("dropout", float(extracted.config.spec.dropout))
        params.setdefault("seed", int(train_seed))

        import_keras_quietly()
    head = make_head(opts.head, **params)
    val_data = (rows.X[val_idx], rows.labels[val_idx].astype(str)) if len(val_idx) else None
    aug_info: dict[str, Any] = {}

    if opts.augment:
        epochs = int(head.epochs) if opts.head == "paper" else 1
        tr = train.rows
        source = JitterSource(
            extracted.exported, extracted.config, cache_dir, rows.ids[tr].tolist(), rows.paths[tr].tolist(),
            rows.labels[tr].astype(str), n=opts.augment, seed=train_seed, epochs=epochs, params=jitter["params"],
            main_group=extracted.cache_path.name, options=jitter["options"], log=log,
        )
        with source:
            source.prefetch(0)
            if opts.head == "paper":
                summaries: list[dict[str, Any]] = []

                def epoch_data(e: int) -> tuple[np.ndarray, np.ndarray]:
                    Xj, yj = source.epoch(e)
                    seed_e = int(np.random.SeedSequence([train_seed, e]).generate_state(1)[0])
                    bal = balance_rows(train.with_extra(Xj, yj), opts.balance, opts.k_neighbors, seed_e)
                    summaries.append(bal.summary())
                    return bal.X, bal.y

                base = balance_rows(train, opts.balance, opts.k_neighbors, train_seed)  # fails fast (SMOTE sizes)
                log(f"{where}training paper head: {head.epochs} epochs, each on the {len(train)} training rows + "
                    f"{len(train) * opts.augment} fresh jitters, balanced with {opts.balance}")
                head.fit(base.X, base.y, validation_data=val_data, epoch_data=epoch_data)
                bal_summary = {**summaries[0], "per_epoch": "fresh jitters and a fresh sampler run each epoch",
                               "epoch_seeds": "SeedSequence([train_seed, epoch])",
                               "n_after_each_epoch": [s["n_after"] for s in summaries]}
            else:
                Xj, yj = source.epoch(0)
                bal = balance_rows(train.with_extra(Xj, yj), opts.balance, opts.k_neighbors, train_seed)
                bal_summary = bal.summary()
                log(f"{where}training {opts.head} head on {bal.n_after} rows ({len(train)} training images + "
                    f"{len(Xj)} jitters, {opts.balance})")
                head.fit(bal.X, bal.y)
        aug_info = source.stats.to_dict()
    else:
        bal = balance_rows(train, opts.balance, opts.k_neighbors, train_seed)
        bal_summary = bal.summary()
        if opts.head == "paper":
            log(f"{where}training paper head: {head.epochs} epochs on {bal.n_after} rows ({opts.balance})")
            head.fit(bal.X, bal.y, validation_data=val_data)
        else:
            log(f"{where}training {opts.head} head on {bal.n_after} rows ({opts.balance})")
            head.fit(bal.X, bal.y)

    val_proba = proba_in(head, rows.X[val_idx], opts.labels)
    test_proba = proba_in(head, rows.X[test_idx], opts.labels)
    pos = opts.labels.index(opts.positive)
    chosen = choose_threshold(rows.labels[val_idx].astype(str) == opts.positive, val_proba[:, pos])
    return _FoldResult(
        fold=fold, head=head, record={}, folder="" if fold is None else f"fold-{fold}",
        history=list(getattr(head, "history_", []) or []), balance=bal_summary, val_idx=val_idx,
        test_idx=test_idx, val_proba=val_proba, test_proba=test_proba, chosen=chosen,
        augment=aug_info, seconds=time.perf_counter() - t0,
    )


# ---------------------------------------------------------------------------------------------
# The run


def fit_head(
    model: str = "mobilenet",
    data: str | Path | Dataset = "",
    *,
    weights: str = "imagenet",
    seed: int = 0,
    preprocess: str = "imagenet",
    resize: str = "stretch",
    cache_dir: str | Path = "cache",
    split: str | Path | None = None,
    test_size: float = 0.3,
    val_size: float = 0.15,
    split_seed: int = 0,
    folds: int | None = None,
    labels: str | Sequence[str] = ("covid", "normal"),
    positive: str = "covid",
    head: str | HeadOptions = "paper",
    run_id: str | None = None,
    allow_leakage: bool = False,
    extraction: ExtractionOptions | None = None,
    log: Log | None = print,
    config: ModelConfig | None = None,
    jitter_params: Any = None,
    bit_depth: int | None = None,
    **kwargs: Any,
) -> Run:
    """Extract what is not cached, split without leakage, balance, train a head; write and return the run.

    ``seed`` seeds a random initialisation (``--weights none``); ``split_seed``
    the split (and the validation part of each k-fold fold); ``train_seed`` the
    sampler, the head and the jitter. ``head`` is a head name or a
    :class:`~xrayfx.study.options.HeadOptions` (kind, the paper head's epochs,
    training batch size, learning rate, momentum, dropout, units; balance,
    k_neighbors, augment, train_seed); the older keyword arguments
    (``head_params``, ``balance``, ``k_neighbors``, ``augment``, ``train_seed``)
    are folded into it. The paper head's ``dropout`` defaults to the backbone
    spec's. See the module docstring for the decision rule. ``extraction`` is
    how the images and their jitters are embedded (an
    :class:`~xrayfx.extraction.options.ExtractionOptions`: runtime, precision,
    device, inference batch, decode threads, degenerate images, progress bar);
    its field names other than ``batch_size`` are also accepted as keyword
    arguments. ``bit_depth`` sets the significant bits of 16-bit PNGs (part of
    the preprocessing, recorded in the run).
    """
    log = log or (lambda _m: None)
    extraction, head_kwargs = _split_extraction_kwargs(extraction, kwargs)
    opts = check_options(
        labels=labels, positive=positive, head=HeadOptions.from_kwargs(head, **head_kwargs), split=split,
        folds=folds, test_size=test_size, val_size=val_size, split_seed=split_seed, run_id=run_id,
    )
    jparams = jitter_params or JitterParams()
    cache_dir = Path(cache_dir)
    config = config or model_config(model, weights, seed, preprocess, resize, bit_depth=bit_depth,
                                    cache_dir=cache_dir)
    run_id = run_id or default_run_id(config.spec.name, opts.head, cache_dir)
    final = runs_root(cache_dir) / run_id
    if final.exists():
        raise UsageError(
            f"Run {final} exists already; expected a new --run-id. Fix: pass another --run-id, or leave it "
            "out for a timestamped one."
        )
    split_file = Path(split) if split is not None else None
    if split_file is not None and not split_file.is_file():
        read_split(split_file)  # raises the DataError that names the path

    t_start = time.perf_counter()
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    dataset.require_labels()
    extracted = pipeline.extract(data=dataset, config=config, cache_dir=cache_dir, options=extraction, log=log)
    rows = _select_rows(extracted, opts.labels)
    if rows.left_out:
        log(f"left out {sum(rows.left_out.values())} row(s) with other labels: "
            + ", ".join(f"{k} {v}" for k, v in rows.left_out.items()))
    if rows.duplicates_dropped:
        log(f"{rows.duplicates_dropped} byte-identical file(s) share a row with an earlier path (kept once)")

    # ----- split
    pids = rows.column("patient_id")
    # ----- near-duplicates under different patient ids: one split group, reported (xrayfx.study.groups)
    near_dups = link_near_duplicates(rows.paths, rows.ids, pids, cache_dir=cache_dir, log=log,
                                     merge=split_file is None)
    pids = near_dups.split_ids
    split_source: dict[str, Any] = {"file": None}
    if split_file is not None:
        parts = read_parts(split_file, seed=split_seed, val_size=val_size)
        split_source = {"file": str(split_file.resolve()), "sha256": sha256_file(split_file)}
        keep = np.isin(parts.base.label, list(opts.labels))
        if not keep.all():
            split_source["rows_left_out"] = int((~keep).sum())
            parts = parts.take(np.flatnonzero(keep))
        rows = rows.take(align_to_split(parts.base, rows.ids.astype(str), rows.labels.astype(str)))
    elif opts.folds is not None:
        sp = make_kfold_split(rows.ids.astype(str), rows.labels.astype(str), pids, opts.folds, val_size, split_seed)
        parts = parts_of(sp, seed=split_seed, val_size=val_size)
    else:
        sp = make_holdout_split(rows.ids.astype(str), rows.labels.astype(str), pids, test_size, val_size, split_seed)
        parts = parts_of(sp, seed=split_seed, val_size=val_size)
    kind = parts.kind
    leakage = _check_parts_leakage(parts, allow_leakage)
    summary = parts_summary(parts)
    for note in summary["notes"]:
        log(f"split: {note}")

    writer = RunWriter(final)
    ok = False
    try:
        write_parts(parts, writer.path(SPLIT_FILE))
        writer.add(SPLIT_FILE)
        near_dups.write(writer)  # image_hashes.csv, near_duplicates.csv
        jitter = {"params": jparams, "options": replace(extraction, model_path=extracted.model_path)}
        results: list[_FoldResult] = []
        for f, fold_split in parts.folds:
            res = _train_fold(fold=f, split=fold_split, rows=rows, opts=opts, extracted=extracted,
                              cache_dir=cache_dir, jitter=jitter, log=log)
            head_dir = writer.folder(res.folder)
            res.record = save_head(res.head, head_dir)
            for name_key in ("file", "meta_file"):
                if res.record.get(name_key):
                    writer.add(f"{res.folder}/{res.record[name_key]}" if res.folder else res.record[name_key])
            hist_name = f"{res.folder}/{HISTORY_FILE}" if res.folder else HISTORY_FILE
            write_history_csv(res.history, writer.path(hist_name))
            writer.add(hist_name)
            results.append(res)
        if kind == "kfold":
            _write_kfold_history(writer, results)

        writer.write_text(PREDICTIONS_FILE, _predictions_csv(rows, results, opts))
        metrics = run_metrics(rows, results, opts, kind, opts.train_seed)
        writer.write_json(METRICS_FILE, metrics)
        decision = run_decision([r.chosen for r in results], opts.positive, opts.negative)
        run_config = build_config(
            run_id=run_id, extracted=extracted, dataset=dataset, rows=rows, opts=opts, parts=parts, kind=kind,
            split_source=split_source, test_size=test_size, val_size=val_size, split_seed=split_seed,
            train_seed=opts.train_seed, weights_seed=seed, allow_leakage=allow_leakage, leakage=leakage,
            summary=summary, results=results, decision=decision, jparams=jparams, runtime=extraction.runtime,
            precision=extraction.precision, cache_dir=cache_dir, seconds=time.perf_counter() - t_start,
            split_sha256=writer.files[SPLIT_FILE],
        )
        writer.write_text(SUMMARY_FILE, summary_text(run_config, metrics))
        path = writer.finish(run_config)
        ok = True
    finally:
        if not ok:
            writer.abort()
    log(f"run written to {path}")
    return load_run(path, cache_dir)


def _split_extraction_kwargs(
    extraction: ExtractionOptions | None, kwargs: dict[str, Any]
) -> tuple[ExtractionOptions, dict[str, Any]]:
    """fit_head's keyword arguments: extraction options folded into one object, the rest for the head."""
    if "batch_size" in kwargs:
        raise UsageError(
            "fit_head(batch_size=…) is ambiguous; expected extraction=ExtractionOptions(batch_size=…) for the "
            "inference batch, or head=HeadOptions(batch_size=…) for the paper head's training batch "
            "(fit-head --head-batch-size)."
        )
    names = ExtractionOptions.names()
    picked = {k: v for k, v in kwargs.items() if k in names}
    return ExtractionOptions.merged(extraction, **picked), {k: v for k, v in kwargs.items() if k not in names}


def _check_parts_leakage(parts: FoldParts, allow_leakage: bool) -> dict[str, Any]:
    """Per fold, no patient or image on both sides of train | val+test and of val | test (unless allowed)."""
    leakage: dict[str, Any] = {}
    for f, s in parts.folds:
        leakage["holdout" if f is None else f"fold-{f}"] = {
            "train_vs_val_test": check_leakage(s, "train", ("val", "test"), allow_leakage=allow_leakage),
            "val_vs_test": check_leakage(s, "val", "test", allow_leakage=allow_leakage),
        }
    return leakage


def _write_kfold_history(writer: RunWriter, results: list[_FoldResult]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["fold", *HISTORY_FIELDS])
    for res in results:
        for row in res.history:
            w.writerow([res.fold, *("" if row.get(k) is None else row.get(k) for k in HISTORY_FIELDS)])
    writer.write_text(HISTORY_FILE, buf.getvalue())


def _predictions_csv(rows: _Rows, results: list[_FoldResult], opts: CheckedOptions) -> str:
    out: list[list[Any]] = []
    for res in results:
        fold = HOLDOUT_FOLD if res.fold is None else res.fold
        for part, idx, proba in (("val", res.val_idx, res.val_proba), ("test", res.test_idx, res.test_proba)):
            for i, p in zip(idx, proba):
                meta = rows.meta[i]
                out.append([rows.ids[i], rows.paths[i], *(meta.get(c, "") or "" for c in PREDICTION_META),
                            rows.labels[i], *(repr(float(v)) for v in p), part, fold])
    return csv_text(["image_id", "path", *PREDICTION_META, "label", *(f"p_{c}" for c in opts.labels), "split",
                     "fold"], out)  # text cells neutralised against formula injection
