"""A run as the report reads it: its typed record, split, predictions and per-epoch history."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xrayfx.csvsafe import read_csv_dicts
from xrayfx.exceptions import DataError, RunError
from xrayfx.study.runs import PREDICTIONS_FILE, SPLIT_FILE, load_run



@dataclass
class RunData:
    """What the report needs of one run folder."""

    path: Path
    run_id: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    classes: list[str]  # order of the probability columns (p_<label>)
    positive: str
    negative: str
    rows: list[dict[str, str]]  # predictions.csv
    proba: np.ndarray  # (n, 2), columns in ``classes`` order
    history: list[dict[str, Any]]  # per-epoch rows, with a "fold" key (-1 for holdout runs)
    split_rows: list[dict[str, str]]  # split.csv ([] if absent)
    record: Any = None  # xrayfx.study.record.RunRecord

    def column(self, name: str) -> np.ndarray:
        """A predictions.csv column as a str array ('' where absent)."""
        return np.array([r.get(name, "") or "" for r in self.rows], dtype=object).astype(str)

    @property
    def fold(self) -> np.ndarray:
        return np.array([int(r.get("fold", "-1") or -1) for r in self.rows], dtype=np.int64)

    @property
    def is_kfold(self) -> bool:
        return bool(len(self.rows)) and bool(np.all(self.fold >= 0))

    @property
    def groups(self) -> np.ndarray:
        """Patient id per prediction row; the image id where the patient id is blank."""
        pid, iid = self.column("patient_id"), self.column("image_id")
        return np.where(pid != "", pid, np.char.add("image:", iid))

    @property
    def model_dict(self) -> dict[str, Any]:
        """The recorded :meth:`ModelConfig.to_dict` of the run."""
        return self.record.model

    @property
    def backbone(self) -> str:
        return self.record.backbone

    @property
    def head_name(self) -> str:
        return self.record.head_name


def _read_csv(path: Path) -> list[dict[str, str]]:
    return read_csv_dicts(path)


def _history_rows(path: Path, fold: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for row in _read_csv(path):
        rec: dict[str, Any] = {"fold": fold}
        for key, value in row.items():
            if key == "fold" and value == "":
                continue
            try:
                rec[key] = float(value) if value != "" else None
            except ValueError:
                rec[key] = value
        if rec.get("epoch") is not None:
            out.append(rec)
    return out


def read_run(run: str | Path, cache_dir: str | Path = "cache") -> RunData:
    """Read a run folder (path or id under ``<cache_dir>/runs``); every recorded hash is checked.

    Raises :class:`RunError` when ``predictions.csv`` is missing or lacks a
    probability column per label, and :class:`DataError` when the run is not a
    two-class run.
    """
    loaded = load_run(run, cache_dir)
    path, config = loaded.path, loaded.config
    pred_path = path / PREDICTIONS_FILE
    if not pred_path.is_file():
        raise RunError(
            f"Expected {PREDICTIONS_FILE} in run {path}; got no such file. Fix: rerun fit-head "
            "(it writes one row per validation and test image)."
        )
    rows = _read_csv(pred_path)
    if not rows:
        raise RunError(f"Expected prediction rows in {pred_path}; got only a header. Fix: rerun fit-head.")
    record = loaded.record
    classes = list(record.labels)
    missing = [f"p_{c}" for c in classes if f"p_{c}" not in rows[0]]
    if missing:
        raise RunError(
            f"Expected a probability column per label ({', '.join('p_' + c for c in classes)}) in {pred_path}; "
            f"got columns {', '.join(rows[0])}. Fix: rerun fit-head."
        )
    positive = record.positive
    negative = next(c for c in classes if c != positive)
    try:
        proba = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows], dtype=float)
    except ValueError as exc:
        raise RunError(f"Expected numbers in the p_ columns of {pred_path}; got {exc}. Fix: rerun fit-head.") from None
    if not np.all(np.isfinite(proba)):
        raise RunError(f"Expected finite probabilities in {pred_path}; got NaN/inf. Fix: rerun fit-head.")
    unknown = sorted({r.get("label", "") for r in rows} - set(classes))
    if unknown:
        raise DataError(f"Expected labels among {classes} in {pred_path}; got {unknown}.")

    # history.csv: one run's epochs, or (k-fold) every fold's epochs with a leading "fold" column
    history = _history_rows(path / "history.csv", -1)
    for rec in history:
        rec["fold"] = -1 if rec.get("fold") is None else int(rec["fold"])
    split_rows = _read_csv(path / SPLIT_FILE) if (path / SPLIT_FILE).is_file() else []
    return RunData(
        path=path, run_id=loaded.run_id, config=config, metrics=loaded.metrics, classes=classes,
        positive=str(positive), negative=negative, rows=rows, proba=proba, history=history,
        split_rows=split_rows, record=record,
    )


def head_locations(run: RunData) -> dict[int, tuple[Path, dict[str, Any]]]:
    """fold → (folder, head record): ``{-1: …}`` for a holdout run, one entry per fold for k-fold runs."""
    return {(-1 if h.fold is None else h.fold): (run.path / h.folder if h.folder else run.path, h.record)
            for h in run.record.heads}
