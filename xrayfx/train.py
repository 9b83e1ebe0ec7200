"""`fit-head` and `predict`: extract what is missing, split without leakage, balance, train, record.

:func:`fit_head` runs the whole study step by step:

1. extract the data set through the embedding cache (only what is missing is computed);
2. keep the rows of exactly two labels (the others are left out and counted) and
   one row per image id (byte-identical files share a row; conflicting labels are an error);
3. make (or read) a patient-grouped split and refuse leakage unless ``allow_leakage``;
4. per fold: balance the training rows only (:func:`xrayfx.balance.balance`),
   optionally add jittered copies of training images (:mod:`xrayfx.augment`),
   train the head, predict validation and test rows;
5. choose the decision threshold (Youden's J) on validation predictions, never on test;
6. write the run folder (:mod:`xrayfx.runs`): ``config.json``, ``split.csv``, the head,
   ``history.csv``, ``predictions.csv``, ``metrics.json``, ``summary.txt``.

Decision rules
    ``metrics.json`` reports the paper's decision (argmax of the two
    probabilities) and the validation-chosen Youden threshold on the positive
    class's probability (the midpoint of the interval of thresholds that
    maximise Youden's J on validation; see :func:`_youden`). :func:`predict` uses the Youden threshold
    (``predicted = positive`` iff ``p_<positive> >= threshold``), falling back
    to 0.5 (the argmax decision) when the validation part cannot give one;
    ``config.json`` records which. A k-fold run predicts with the mean
    probability of its K heads and the mean of their K thresholds.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from xrayfx import metrics as M
from xrayfx.balance import BALANCE_METHODS, TrainingRows, balance as balance_rows
from xrayfx.datasets import Dataset, ImageRecord
from xrayfx.exceptions import DataError, UsageError
from xrayfx.export import ModelConfig, model_config
from xrayfx.runs import (
    HISTORY_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    RUN_FORMAT_VERSION,
    SPLIT_FILE,
    SUMMARY_FILE,
    Run,
    RunWriter,
    check_run_id,
    default_run_id,
    load_run,
    resolve_run,
    runs_root,
)
from xrayfx.splits import (
    HOLDOUT_FOLD,
    Split,
    align_to_split,
    check_leakage,
    fraction_to_folds,
    make_holdout_split,
    make_kfold_split,
    read_split,
    split_summary,
    write_split,
)
from xrayfx.util import library_versions, sha256_bytes, sha256_file

#: Flags of the paper's head (``--epochs`` …) and the PaperHead parameters they set.
PAPER_FLAGS = {
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "learning_rate": "--learning-rate",
    "momentum": "--momentum",
    "dropout": "--dropout",
    "units": "--units",
    "trainer": "--trainer",
}
#: Patient-bootstrap resamples for the AUROC interval in a run's own metrics.
BOOTSTRAP_RESAMPLES = 1000
#: Decision threshold when the validation part cannot give Youden's (equivalent to argmax).
ARGMAX_THRESHOLD = 0.5
PREDICTION_META = ("patient_id", "source", "view", "age_group")

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Options


def parse_labels(labels: str | Sequence[str]) -> tuple[str, str]:
    """``"covid,normal"`` or ``("covid", "normal")`` → exactly two distinct, non-blank labels."""
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    items = [str(v).strip() for v in items]
    if len(items) != 2 or "" in items or items[0] == items[1]:
        raise UsageError(
            f"Expected exactly two distinct labels after --labels (e.g. covid,normal); got "
            f"{','.join(items)!r} ({len(items)} label(s)). Fix: name the two classes to train on, "
            "separated by a comma; rows with other labels are left out and counted."
        )
    return items[0], items[1]


def _positive_int(value: Any, flag: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UsageError(f"Expected {flag} to be an integer >= {minimum}; got {value!r}.")
    return int(value)


@dataclass
class _Options:
    labels: tuple[str, str]
    positive: str
    negative: str
    head: str
    head_params: dict[str, Any]
    balance: str
    k_neighbors: int
    augment: int
    folds: int | None


def _check_options(
    *, labels: Any, positive: str, head: str, head_params: dict[str, Any] | None, balance: str,
    k_neighbors: int, augment: int, split: Any, folds: int | None, test_size: float, val_size: float,
    split_seed: int, train_seed: int, run_id: str | None,
) -> _Options:
    """Every check that needs no data: fail fast, before anything is extracted."""
    from xrayfx.heads import HEADS, make_head

    lab = parse_labels(labels)
    if positive not in lab:
        raise UsageError(
            f"Expected --positive to be one of the --labels {lab[0]!r}, {lab[1]!r}; got {positive!r}. "
            "Fix: name the class that recall, AUROC and TP refer to."
        )
    key = str(head).strip().lower()
    if key not in HEADS:
        raise UsageError(f"Unknown --head {head!r}; choose one of: {', '.join(HEADS)}")
    if balance not in BALANCE_METHODS:
        raise UsageError(f"Unknown --balance {balance!r}; choose one of: {', '.join(BALANCE_METHODS)}")
    params = dict(head_params or {})
    if key != "paper":
        given = [PAPER_FLAGS[p] for p in PAPER_FLAGS if p in params]
        if given:
            raise UsageError(
                f"{', '.join(given)} set(s) the paper's head; got --head {key}. Fix: drop the flag(s), "
                "or use --head paper."
            )
    if balance == "class-weight":
        if "class_weight" not in HEADS[key]._get_param_names():
            raise UsageError(f"--balance class-weight needs a head with class weights; got --head {key}.")
        if key == "knn":
            raise UsageError(
                "--balance class-weight cannot apply to --head knn (k-NN has no class weights); got both. "
                "Fix: use --balance smote or random with knn, or another head."
            )
        params["class_weight"] = "balanced"
    make_head(key, **params)  # refuses unknown parameters now, not after extraction
    k = _positive_int(k_neighbors, "--k-neighbors")
    n_aug = _positive_int(augment, "--augment", minimum=0)
    if folds is not None:
        folds = _positive_int(folds, "--folds", minimum=2)
        if split is not None:
            raise UsageError(
                "Expected either --split FILE or --folds K; got both. A split file already fixes the folds. "
                "Fix: drop one of them."
            )
    fraction_to_folds(val_size, "--val-size")
    if folds is None and split is None:
        fraction_to_folds(test_size, "--test-size")
    for flag, v in (("--split-seed", split_seed), ("--train-seed", train_seed)):
        _positive_int(v, flag, minimum=0)
    if run_id is not None:
        check_run_id(run_id)
    negative = lab[1] if positive == lab[0] else lab[0]
    return _Options(lab, positive, negative, key, params, balance, k, n_aug, folds)


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


def _subset_split(split: Split, keep: np.ndarray) -> Split:
    patient = split.patient_id[keep]
    return Split(
        image_id=split.image_id[keep], patient_id=patient, label=split.label[keep], split=split.split[keep],
        fold=split.fold[keep], grouped_by="patient_id" if np.any(patient != "") else "image_id",
    )


def _data_record(dataset: Dataset) -> dict[str, Any]:
    """Path and sha256 of the data: the manifest's bytes, or a listing of a folder."""
    source = Path(dataset.source).resolve()
    if dataset.kind == "manifest" and source.is_file():
        return {"kind": "manifest", "path": str(source), "sha256": sha256_file(source)}
    def rel(p: Path) -> str:
        p = Path(p).resolve()
        return str(p.relative_to(source)) if p.is_relative_to(source) else str(p)

    listing = "\n".join(f"{rel(r.path)},{r.label or ''},{r.image_id or ''}" for r in dataset.records)
    return {
        "kind": dataset.kind, "path": str(source), "sha256": sha256_bytes(listing.encode()),
        "sha256_of": "lines 'relative path,label,image id' of every file, in listing order",
    }


# ---------------------------------------------------------------------------------------------
# Metrics


def _groups(rows: _Rows, idx: np.ndarray) -> np.ndarray:
    pid = rows.column("patient_id")[idx]
    return np.array([p if p else f"image:{i}" for p, i in zip(pid, rows.ids[idx])], dtype=object)


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
        ci = M.bootstrap_auroc(y, p, groups, n_resamples=BOOTSTRAP_RESAMPLES, seed=seed)
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


def _youden(
    labels: np.ndarray, p_pos: np.ndarray, positive: str
) -> tuple[float | None, float | None, str | None]:
    """(decision threshold, Youden threshold of :mod:`xrayfx.metrics`, note) from validation rows.

    :func:`xrayfx.metrics.youden_threshold` returns the upper end of the
    interval of thresholds that maximise Youden's J on validation (one of the
    validation probabilities). Every threshold in that interval classifies the
    validation rows identically; the decision threshold is its midpoint (the
    mean of that upper end and the next lower validation probability), which
    keeps a margin on both sides when validation is separable.
    """
    y = np.asarray(labels).astype(str) == positive
    if len(y) == 0:
        return None, None, "no validation rows: the decision threshold is 0.5 (argmax)"
    p = np.asarray(p_pos, dtype=float)
    try:
        upper = M.youden_threshold(y, p)
    except UsageError as e:
        return None, None, f"Youden's threshold undefined on validation ({e}); the decision threshold is 0.5 (argmax)"
    below = p[p < upper]
    return (float((upper + below.max()) / 2) if below.size else float(upper)), float(upper), None


def _mean_std(values: list[float | None]) -> dict[str, Any]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
            "n": len(vals)}


# ---------------------------------------------------------------------------------------------
# Training one fold


@dataclass
class _FoldResult:
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
    threshold: float | None
    threshold_note: str | None
    youden_upper: float | None = None
    augment: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _proba_in(head: Any, X: np.ndarray, labels: tuple[str, str]) -> np.ndarray:
    """predict_proba with columns in ``labels`` order."""
    if len(X) == 0:
        return np.zeros((0, 2))
    proba = head.predict_proba(X)
    order = [list(head.classes_).index(c) for c in labels]
    return proba[:, order]


def _train_fold(
    *, fold: int | None, split: Split, rows: _Rows, opts: _Options, extracted: Any, cache_dir: Path,
    split_seed: int, val_size: float, train_seed: int, jitter: dict[str, Any], log: Log,
) -> _FoldResult:
    from xrayfx.heads import make_head

    t0 = time.perf_counter()
    train = TrainingRows(split, rows.X, fold=fold, y=rows.labels.astype(str))
    parts = {p: split.rows(p, fold, seed=split_seed, val_size=val_size) for p in ("val", "test")}
    val_idx, test_idx = parts["val"], parts["test"]
    where = "" if fold is None else f"fold {fold}: "
    params = dict(opts.head_params)
    if opts.head == "paper":
        params.setdefault("dropout", float(extracted.config.spec.dropout))
        params.setdefault("seed", int(train_seed))
        from xrayfx.util import import_keras_quietly

        import_keras_quietly()
    head = make_head(opts.head, **params)
    val_data = (rows.X[val_idx], rows.labels[val_idx].astype(str)) if len(val_idx) else None
    aug_info: dict[str, Any] = {}

    if opts.augment:
        from xrayfx.augment import JitterSource

        epochs = int(head.epochs) if opts.head == "paper" else 1
        tr = train.rows
        source = JitterSource(
            extracted.exported, extracted.config, cache_dir, rows.ids[tr].tolist(), rows.paths[tr].tolist(),
            rows.labels[tr].astype(str), n=opts.augment, seed=train_seed, epochs=epochs, params=jitter["params"],
            main_group=extracted.cache_path.name, runtime=jitter["runtime"], precision=jitter["precision"],
            device=jitter["device"], batch_size=jitter["batch_size"], workers=jitter["workers"],
            progress=jitter["progress"], log=log,
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

    val_proba = _proba_in(head, rows.X[val_idx], opts.labels)
    test_proba = _proba_in(head, rows.X[test_idx], opts.labels)
    pos = opts.labels.index(opts.positive)
    threshold, upper, note = _youden(rows.labels[val_idx], val_proba[:, pos], opts.positive)
    return _FoldResult(
        fold=fold, head=head, record={}, folder="" if fold is None else f"fold-{fold}",
        history=list(getattr(head, "history_", []) or []), balance=bal_summary, val_idx=val_idx,
        test_idx=test_idx, val_proba=val_proba, test_proba=test_proba, threshold=threshold,
        threshold_note=note, youden_upper=upper, augment=aug_info, seconds=time.perf_counter() - t0,
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
    head: str = "paper",
    head_params: dict[str, Any] | None = None,
    balance: str = "smote",
    k_neighbors: int = 5,
    augment: int = 0,
    train_seed: int = 0,
    run_id: str | None = None,
    allow_leakage: bool = False,
    device: str = "cpu",
    runtime: str = "onnxruntime",
    precision: str = "fp32",
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = True,
    log: Log | None = print,
    config: ModelConfig | None = None,
    jitter_params: Any = None,
) -> Run:
    """Extract what is not cached, split without leakage, balance, train a head; write and return the run.

    ``seed`` seeds a random initialisation (``--weights none``); ``split_seed``
    the split (and the validation part of each k-fold fold); ``train_seed`` the
    sampler, the head and the jitter. ``head_params`` are passed to the head
    (``epochs``, ``batch_size``, ``learning_rate``, ``momentum``, ``dropout``,
    ``units`` for the paper's head; the paper head's ``dropout`` defaults to the
    backbone spec's). See the module docstring for the decision rules.
    """
    from xrayfx.augment import JitterParams
    from xrayfx.datasets import load_dataset
    from xrayfx.heads.persist import save_head, write_history_csv
    from xrayfx.pipeline import extract

    log = log or (lambda _m: None)
    opts = _check_options(
        labels=labels, positive=positive, head=head, head_params=head_params, balance=balance,
        k_neighbors=k_neighbors, augment=augment, split=split, folds=folds, test_size=test_size,
        val_size=val_size, split_seed=split_seed, train_seed=train_seed, run_id=run_id,
    )
    jparams = jitter_params or JitterParams()
    cache_dir = Path(cache_dir)
    config = config or model_config(model, weights, seed, preprocess, resize)
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
    extracted = extract(
        data=dataset, config=config, cache_dir=cache_dir, device=device, runtime=runtime, precision=precision,
        batch_size=batch_size, workers=workers, progress=progress, log=log,
    )
    rows = _select_rows(extracted, opts.labels)
    if rows.left_out:
        log(f"left out {sum(rows.left_out.values())} row(s) with other labels: "
            + ", ".join(f"{k} {v}" for k, v in rows.left_out.items()))
    if rows.duplicates_dropped:
        log(f"{rows.duplicates_dropped} byte-identical file(s) share a row with an earlier path (kept once)")

    # ----- split
    pids = rows.column("patient_id")
    split_source: dict[str, Any] = {"file": None}
    if split_file is not None:
        sp = read_split(split_file)
        split_source = {"file": str(split_file.resolve()), "sha256": sha256_file(split_file)}
        keep = np.isin(sp.label, list(opts.labels))
        if not keep.all():
            split_source["rows_left_out"] = int((~keep).sum())
            sp = _subset_split(sp, np.flatnonzero(keep))
        order = align_to_split(sp, rows.ids.astype(str), rows.labels.astype(str))
        rows = rows.take(order)
        kind = sp.kind
    elif opts.folds is not None:
        sp = make_kfold_split(rows.ids.astype(str), rows.labels.astype(str), pids, opts.folds, val_size, split_seed)
        kind = "kfold"
    else:
        sp = make_holdout_split(rows.ids.astype(str), rows.labels.astype(str), pids, test_size, val_size, split_seed)
        kind = "holdout"
    fold_list: list[int | None] = list(range(sp.n_folds)) if kind == "kfold" else [None]
    leakage: dict[str, Any] = {}
    for f in fold_list:
        key = "holdout" if f is None else f"fold-{f}"
        leakage[key] = {
            "train_vs_val_test": check_leakage(sp, "train", ("val", "test"), f, allow_leakage=allow_leakage,
                                               seed=split_seed, val_size=val_size),
            "val_vs_test": check_leakage(sp, "val", "test", f, allow_leakage=allow_leakage, seed=split_seed,
                                         val_size=val_size),
        }
    summary = split_summary(sp, seed=split_seed, val_size=val_size)
    for note in summary["notes"]:
        log(f"split: {note}")

    writer = RunWriter(final)
    ok = False
    try:
        write_split(sp, writer.path(SPLIT_FILE))
        writer.add(SPLIT_FILE)
        jitter = {"params": jparams, "runtime": runtime, "precision": precision, "device": device,
                  "batch_size": batch_size, "workers": workers, "progress": progress}
        results: list[_FoldResult] = []
        for f in fold_list:
            res = _train_fold(
                fold=f, split=sp, rows=rows, opts=opts, extracted=extracted, cache_dir=cache_dir,
                split_seed=split_seed, val_size=val_size, train_seed=train_seed, jitter=jitter, log=log,
            )
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

        writer.write_text(PREDICTIONS_FILE, _predictions_csv(rows, sp, results, opts))
        metrics = _run_metrics(rows, results, opts, kind, train_seed)
        writer.write_json(METRICS_FILE, metrics)
        decision = _decision(results, opts)
        run_config = _run_config(
            run_id=run_id, extracted=extracted, dataset=dataset, rows=rows, opts=opts, sp=sp, kind=kind,
            split_source=split_source, test_size=test_size, val_size=val_size, split_seed=split_seed,
            train_seed=train_seed, weights_seed=seed, allow_leakage=allow_leakage, leakage=leakage,
            summary=summary, results=results, decision=decision, jparams=jparams, runtime=runtime,
            precision=precision, cache_dir=cache_dir, seconds=time.perf_counter() - t_start,
            split_sha256=writer.files[SPLIT_FILE],
        )
        writer.write_text(SUMMARY_FILE, _summary_text(run_config, metrics))
        path = writer.finish(run_config)
        ok = True
    finally:
        if not ok:
            writer.abort()
    log(f"run written to {path}")
    return load_run(path, cache_dir)


def _write_kfold_history(writer: RunWriter, results: list[_FoldResult]) -> None:
    from xrayfx.heads.persist import HISTORY_FIELDS

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["fold", *HISTORY_FIELDS])
    for res in results:
        for row in res.history:
            w.writerow([res.fold, *("" if row.get(k) is None else row.get(k) for k in HISTORY_FIELDS)])
    writer.write_text(HISTORY_FILE, buf.getvalue())


def _predictions_csv(rows: _Rows, sp: Split, results: list[_FoldResult], opts: _Options) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image_id", "path", *PREDICTION_META, "label", *(f"p_{c}" for c in opts.labels), "split", "fold"])
    for res in results:
        fold = HOLDOUT_FOLD if res.fold is None else res.fold
        for part, idx, proba in (("val", res.val_idx, res.val_proba), ("test", res.test_idx, res.test_proba)):
            for i, p in zip(idx, proba):
                meta = rows.meta[i]
                w.writerow([rows.ids[i], rows.paths[i], *(meta.get(c, "") or "" for c in PREDICTION_META),
                            rows.labels[i], *(repr(float(v)) for v in p), part, fold])
    return buf.getvalue()


def _run_metrics(rows: _Rows, results: list[_FoldResult], opts: _Options, kind: str, seed: int) -> dict[str, Any]:
    def parts(res: _FoldResult) -> dict[str, Any]:
        out = {"threshold": {
            "youden": res.threshold, "youden_upper": res.youden_upper, "chosen_on": "val",
            "rule": "midpoint of the validation interval of thresholds that maximise Youden's J",
            "note": res.threshold_note,
        }}
        for part, idx, proba in (("val", res.val_idx, res.val_proba), ("test", res.test_idx, res.test_proba)):
            out[part] = part_metrics(rows.labels[idx], proba, opts.labels, opts.positive, _groups(rows, idx),
                                     res.threshold, seed=seed)
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
                          _groups(rows, pooled_idx), None, seed=seed)
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


def _decision(results: list[_FoldResult], opts: _Options) -> dict[str, Any]:
    thresholds = [r.threshold for r in results if r.threshold is not None]
    if thresholds and len(thresholds) == len(results):
        thr = float(np.mean(thresholds))
        rule = "youden" if len(results) == 1 else "mean of the folds' youden thresholds"
        note = None
    else:
        thr = ARGMAX_THRESHOLD
        rule = "argmax (0.5)"
        note = "; ".join(r.threshold_note for r in results if r.threshold_note)
    return {
        "positive": opts.positive, "negative": opts.negative, "threshold": thr, "rule": rule,
        "predicted": f"{opts.positive} if p_{opts.positive} >= threshold else {opts.negative}",
        "fold_thresholds": [r.threshold for r in results],
        "fold_youden_upper": [r.youden_upper for r in results], "combine": "mean probability of the heads",
        "note": note,
    }


def _run_config(
    *, run_id: str, extracted: Any, dataset: Dataset, rows: _Rows, opts: _Options, sp: Split, kind: str,
    split_source: dict[str, Any], test_size: float, val_size: float, split_seed: int, train_seed: int,
    weights_seed: int, allow_leakage: bool, leakage: dict[str, Any], summary: dict[str, Any],
    results: list[_FoldResult], decision: dict[str, Any], jparams: Any, runtime: str, precision: str,
    cache_dir: Path, seconds: float, split_sha256: str,
) -> dict[str, Any]:
    config: ModelConfig = extracted.config
    exported = extracted.exported
    from xrayfx.augment import JITTER_VERSION, jitter_group_name

    return {
        "xrayfx_run_version": RUN_FORMAT_VERSION,
        "run_id": run_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 3),
        "model": config.to_dict(),
        "backbone": config.spec.name,
        "fingerprint": config.fingerprint,
        "runtime": runtime,
        "precision": precision,
        "preprocessing": config.preprocessing.to_dict(),
        "weights": config.weights.to_dict(),
        "onnx": {"file": exported.path.name, "sha256": exported.sidecar.get("onnx_sha256")},
        "cache_group": extracted.cache_path.name,
        "cache_dir": str(Path(cache_dir).resolve()),
        "data": {
            **_data_record(dataset), "n_rows": len(rows.ids), "left_out_by_label": rows.left_out,
            "duplicates_dropped": rows.duplicates_dropped, "skipped": len(extracted.skipped),
        },
        "labels": list(opts.labels),
        "positive": opts.positive,
        "split": {
            "file": SPLIT_FILE, "sha256": split_sha256, "kind": kind, "from": split_source,
            "test_size": None if split_source["file"] or kind == "kfold" else test_size,
            "val_size": val_size, "seed": split_seed, "folds": sp.n_folds or None, "grouped_by": sp.grouped_by,
            "allow_leakage": allow_leakage, "leakage": leakage, "summary": summary,
        },
        "head": {
            "name": opts.head,
            "params": results[0].record.get("params"),
            "heads": [{"fold": r.fold, "folder": r.folder, "record": r.record, "seconds": round(r.seconds, 3)}
                      for r in results],
        },
        "balance": {"method": opts.balance, "k_neighbors": opts.k_neighbors if opts.balance == "smote" else None,
                    "per_fold": [r.balance for r in results]},
        "augment": {
            "n": opts.augment,
            "params": jparams.to_dict() if opts.augment else None,
            "jitter_version": JITTER_VERSION if opts.augment else None,
            "cache_group": jitter_group_name(extracted.cache_path.name, jparams) if opts.augment else None,
            "applied": "after resizing to the input size; paper head: fresh jitters each epoch; others: once",
            "stats": [r.augment for r in results] if opts.augment else None,
        },
        "seeds": {"weights": weights_seed, "split": split_seed, "train": train_seed},
        "decision": decision,
        "versions": library_versions(),
    }


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _summary_text(config: dict[str, Any], metrics: dict[str, Any]) -> str:
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
    lines.append(f"decision: {config['decision']['predicted']} (threshold {config['decision']['threshold']:.4g}, "
                 f"{config['decision']['rule']})")
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


# ---------------------------------------------------------------------------------------------
# Prediction


@dataclass
class PredictResult:
    """What :func:`predict` wrote: the rows and what was skipped."""

    columns: list[str]
    rows: list[list[str]]
    skipped: list[Any]
    threshold: float
    rule: str
    run: Run

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        w.writerows(self.rows)
        return buf.getvalue()


def collect_inputs(inputs: Sequence[str | Path]) -> Dataset:
    """Images to predict: image files, folders (searched recursively) and CSV manifests, hashed."""
    from concurrent.futures import ThreadPoolExecutor

    from xrayfx.datasets import load_dataset
    from xrayfx.images import is_image_path

    if not inputs:
        raise UsageError("Expected at least one IMAGE, FOLDER or MANIFEST to predict; got none.")
    records: list[ImageRecord] = []
    columns = ["path"]
    for item in inputs:
        p = Path(item).expanduser()
        if not p.exists():
            raise DataError(f"Expected an image, folder or manifest at {p}; got nothing there. Fix: check the path.")
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_image_path(f))
            if not found:
                raise DataError(f"Expected image files (PNG, JPEG, DICOM) under {p}; got none.")
            records += [ImageRecord(path=f, label=None) for f in found]
        elif p.suffix.lower() == ".csv":
            ds = load_dataset(p)
            records += ds.records
            columns += [c for c in ds.columns if c not in columns]
        else:
            records.append(ImageRecord(path=p, label=None))

    def hash_one(r: ImageRecord) -> None:
        if r.image_id is not None or r.error is not None:
            return
        try:
            r.image_id = sha256_file(r.path)
        except PermissionError:
            r.error = "permission denied: make the file readable"

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(hash_one, records))
    return Dataset(source=Path(inputs[0]), kind="inputs", records=records, columns=columns)


def _cache_dir_of(run_path: Path) -> Path:
    return run_path.parent.parent if run_path.parent.name == "runs" else Path("cache")


def predict(
    run: str | Path,
    inputs: Sequence[str | Path],
    *,
    cache_dir: str | Path | None = None,
    output: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = True,
    log: Log | None = print,
) -> PredictResult:
    """Predict images with a run's backbone, preprocessing, head(s) and decision threshold.

    ``run`` is a run folder or a run id under ``<cache_dir>/runs``. Every file
    of the run is checked against its recorded sha256 first (IntegrityError
    otherwise). Embeddings go through the cache of the run's ``cache_dir``
    (the folder above ``runs/``), so predicting the same images again is free.
    Writes CSV ``path,image_id,p_<label>…,predicted,threshold`` to ``output``
    when given.
    """
    from xrayfx.heads.persist import load_head
    from xrayfx.pipeline import extract
    from xrayfx.util import atomic_write_text

    log = log or (lambda _m: None)
    run_path = resolve_run(run, cache_dir or "cache")
    loaded = load_run(run_path, cache_dir or "cache")
    cfg = loaded.config
    data_cache = Path(cache_dir) if cache_dir is not None else _cache_dir_of(run_path)
    model = ModelConfig.from_dict(cfg["model"])
    labels = list(cfg["labels"])
    if any(h["record"].get("kind") == "paper" for h in cfg["head"]["heads"]):
        from xrayfx.util import import_keras_quietly

        import_keras_quietly()
    heads = []
    for h in cfg["head"]["heads"]:
        folder = run_path / h["folder"] if h["folder"] else run_path
        heads.append(load_head(folder, h["record"]))
    dataset = collect_inputs(inputs)
    extracted = extract(
        data=dataset, config=model, cache_dir=data_cache, device=device, runtime=cfg.get("runtime", "onnxruntime"),
        precision=cfg.get("precision", "fp32"), batch_size=batch_size, workers=workers, progress=progress, log=log,
    )
    decision = cfg["decision"]
    thr = float(decision["threshold"])
    positive, negative = decision["positive"], decision["negative"]
    if len(extracted.ids):
        proba = np.mean([_proba_in(h, extracted.embeddings, tuple(labels)) for h in heads], axis=0)
    else:
        proba = np.zeros((0, len(labels)))
    p_pos = proba[:, labels.index(positive)] if len(proba) else np.zeros(0)
    columns = ["path", "image_id", *(f"p_{c}" for c in labels), "predicted", "threshold"]
    out_rows = [
        [path, image_id, *(repr(float(v)) for v in p), positive if pp >= thr else negative, repr(thr)]
        for path, image_id, p, pp in zip(extracted.paths, extracted.ids, proba, p_pos)
    ]
    for s in extracted.skipped:
        log(f"skipped {s.path}: {s.reason}")
    log(f"predicted = {decision['predicted']} with threshold {thr:.4g} ({decision['rule']}, chosen on validation "
        f"by fit-head)" if decision["rule"] != "argmax (0.5)" else
        f"predicted = {decision['predicted']} with threshold 0.5 (argmax; {decision.get('note')})")
    result = PredictResult(columns, out_rows, list(extracted.skipped), thr, decision["rule"], loaded)
    if output is not None:
        atomic_write_text(output, result.csv_text())
    return result


def write_stdout(text: str) -> None:
    """Write CSV text to standard output unchanged (no wrapping or markup)."""
    sys.stdout.write(text)
    sys.stdout.flush()
