"""Each fold's train/val/test parts, computed once and written as one row per image per fold.

A run's ``split.csv`` holds ``image_id,patient_id,label,fold,part``: one row per
image for a holdout run (``fold`` -1), one row per image per fold for a k-fold
run (``part`` ∈ train|val|test). :class:`FoldParts` is that table in memory: one
holdout-shaped :class:`~xrayfx.study.splits.Split` per fold, all in the same row order,
so that training (:class:`xrayfx.study.balance.TrainingRows`), the threshold choice and
the leakage check read the very same parts and never re-derive them from a seed.

:func:`read_parts` reads this format and the older ``image_id,patient_id,label,split,fold``
files (holdout, or k-fold with the test fold per row, whose train/val parts are then
computed once here with the run's ``--split-seed`` and ``--val-size``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xrayfx.csvsafe import csv_text, dict_rows, read_csv_text
from xrayfx.exceptions import DataError
from xrayfx.study.splits import HOLDOUT_FOLD, PARTS, Split, kfold_parts, split_summary
from xrayfx.study.split_files import read_split
from xrayfx.util import atomic_write_text

COLUMNS = ("image_id", "patient_id", "label", "fold", "part")


@dataclass(frozen=True)
class FoldParts:
    """The parts of every fold: ``folds[i] = (fold or None for holdout, Split with split = part)``."""

    kind: str
    folds: tuple[tuple[int | None, Split], ...]

    @property
    def base(self) -> Split:
        """The first fold's table (every fold has the same images in the same order)."""
        return self.folds[0][1]

    @property
    def grouped_by(self) -> str:
        """"patient_id", or "image_id" when no row has a patient id."""
        return self.base.grouped_by

    @property
    def n_folds(self) -> int:
        """Number of folds (0 for a holdout split)."""
        return len(self.folds) if self.kind == "kfold" else 0

    def take(self, idx: np.ndarray) -> "FoldParts":
        """The same parts restricted to (and reordered as) rows ``idx`` of every fold."""
        return FoldParts(self.kind, tuple((f, _take(s, idx)) for f, s in self.folds))


def _take(s: Split, idx: np.ndarray) -> Split:
    pid = s.patient_id[idx]
    return Split(image_id=s.image_id[idx], patient_id=pid, label=s.label[idx], split=s.split[idx],
                 fold=s.fold[idx], grouped_by="patient_id" if np.any(pid != "") else "image_id")


def _fold_view(split: Split, part: np.ndarray) -> Split:
    return Split(image_id=split.image_id, patient_id=split.patient_id, label=split.label, split=part,
                 fold=np.full(len(split), HOLDOUT_FOLD), grouped_by=split.grouped_by)


def parts_of(split: Split, *, seed: int, val_size: float) -> FoldParts:
    """Compute every fold's parts once: a holdout split as it is; a k-fold split with ``seed``/``val_size``."""
    if split.kind == "holdout":
        return FoldParts("holdout", ((None, split),))
    views = []
    for f in range(split.n_folds):
        rows = kfold_parts(split, f, seed=seed, val_size=val_size)
        part = np.full(len(split), "train", dtype="<U5")
        part[rows["val"]] = "val"
        part[rows["test"]] = "test"
        views.append((f, _fold_view(split, part)))
    return FoldParts("kfold", tuple(views))


def write_parts(parts: FoldParts, path: str | Path) -> Path:
    """Write ``image_id,patient_id,label,fold,part`` (one row per image per fold), atomically."""
    rows = []
    for f, s in parts.folds:
        fold = HOLDOUT_FOLD if f is None else f
        rows += [[str(r[0]), str(r[1]), str(r[2]), fold, str(r[3])]
                 for r in zip(s.image_id, s.patient_id, s.label, s.split)]
    atomic_write_text(Path(path), csv_text(COLUMNS, rows))  # text cells neutralised against formula injection
    return Path(path)


def read_parts(path: str | Path, *, seed: int, val_size: float) -> FoldParts:
    """Read a split file of either format (see the module docstring); DataError names what is wrong."""
    path = Path(path)
    if not path.is_file():
        read_split(path)  # the DataError that names the path
    fields, raw = dict_rows(read_csv_text(path))  # cells restored
    header = [h.strip() for h in fields]
    if "part" not in header:
        return parts_of(read_split(path), seed=seed, val_size=val_size)
    rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in raw]
    fix = "Fix: use the split.csv of a run, or run without --split."
    missing = [c for c in COLUMNS if c not in header]
    if missing or not rows:
        raise DataError(f"Expected columns {','.join(COLUMNS)} and rows in split file {path}; got "
                        f"{','.join(header)} with {len(rows)} rows. {fix}")
    by_fold: dict[int, list[dict[str, str]]] = {}
    for lineno, r in enumerate(rows, start=2):
        try:
            fold = int(r["fold"])
        except ValueError:
            raise DataError(f"Expected an integer fold on line {lineno} of {path}; got {r['fold']!r}. {fix}") from None
        if r["part"] not in PARTS or not r["image_id"] or not r["label"]:
            raise DataError(f"Expected part in {', '.join(PARTS)}, an image_id and a label on line {lineno} of "
                            f"{path}; got {r}. {fix}")
        by_fold.setdefault(fold, []).append(r)
    folds = sorted(by_fold)
    kind = "holdout" if folds == [HOLDOUT_FOLD] else "kfold"
    if kind == "kfold" and (folds != list(range(len(folds))) or len(folds) < 2):
        raise DataError(f"Expected fold -1 (holdout) or folds 0..K-1 with K >= 2 in {path}; got {folds}. {fix}")
    order = [r["image_id"] for r in by_fold[folds[0]]]
    views = []
    for f in folds:
        part_of = {r["image_id"]: r for r in by_fold[f]}
        if sorted(part_of) != sorted(order) or len(part_of) != len(by_fold[f]):
            raise DataError(f"Expected every fold of {path} to list the same images once; fold {f} differs. {fix}")
        table = [part_of[i] for i in order]
        pid = np.array([r["patient_id"] for r in table], dtype=str)
        views.append((None if f == HOLDOUT_FOLD else f, Split(
            image_id=np.array(order, dtype=str), patient_id=pid, label=np.array([r["label"] for r in table]),
            split=np.array([r["part"] for r in table], dtype="<U5"), fold=np.full(len(order), HOLDOUT_FOLD),
            grouped_by="patient_id" if np.any(pid != "") else "image_id")))
    for f, s in views:
        for needed in ("train", "test"):
            if not np.any(s.split == needed):
                raise DataError(f"Expected {needed!r} rows in {'fold ' + str(f) if f is not None else 'the split'} "
                                f"of {path}; got none. {fix}")
    return FoldParts(kind, tuple(views))


def parts_summary(parts: FoldParts) -> dict[str, Any]:
    """Counts per part (per fold for k-fold) and the notes of :func:`xrayfx.study.splits.split_summary`."""
    first = split_summary(parts.base)
    out = {k: first[k] for k in ("grouped_by", "n_images", "n_groups", "notes")}
    out["kind"], out["n_folds"] = parts.kind, parts.n_folds
    if parts.kind == "holdout":
        out["parts"] = first["parts"]
    else:
        out["folds"] = {int(f): split_summary(s)["parts"] for f, s in parts.folds}
    return out
