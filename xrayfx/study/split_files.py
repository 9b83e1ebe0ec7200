"""Split files: write a :class:`~xrayfx.study.splits.Split` to CSV, read one back (with every check), align rows."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xrayfx.csvsafe import read_csv_text, restore, write_csv
from xrayfx.exceptions import DataError, UsageError
from xrayfx.study.splits import _SHOW, COLUMNS, HOLDOUT_FOLD, PARTS, Split, _as_str_array, _listed

# ---------------------------------------------------------------------------------------------
# Files


def write_split(split: Split, path: str | Path) -> Path:
    """Write the split as CSV (image_id,patient_id,label,split,fold), atomically."""
    if not isinstance(split, Split):
        raise UsageError(f"Expected a Split to write; got {type(split).__name__}.")
    rows = ([str(row[0]), str(row[1]), str(row[2]), str(row[3]), int(row[4])]
            for row in zip(split.image_id, split.patient_id, split.label, split.split, split.fold))
    return write_csv(path, COLUMNS, rows)


def _lines(bad: list[int]) -> str:
    return ", ".join(map(str, bad[:5])) + (f" … ({len(bad)} in all)" if len(bad) > 5 else "")


def read_split(path: str | Path) -> Split:
    """Read and validate a split CSV written by :func:`write_split`.

    Every problem is a DataError that names the file, the expected value, what
    was found (with line numbers) and the fix.
    """
    path = Path(path)
    fix = "Fix: rebuild it (run without --split), or correct the file."
    if not path.is_file():
        raise DataError(
            f"Expected a split file at {path}; got nothing there. Fix: check the --split path, "
            "or run without --split to make one."
        )
    text = read_csv_text(path)  # labels from folder names that are not UTF-8 come back as written
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames
    if not header:
        raise DataError(f"Expected a header {','.join(COLUMNS)} in split file {path}; got an empty file. {fix}")
    header = [h.strip() for h in header]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DataError(
            f"Expected columns {','.join(COLUMNS)} in split file {path}; got {','.join(header)} "
            f"(missing {', '.join(missing)}). {fix}"
        )
    cols: dict[str, list[str]] = {c: [] for c in COLUMNS}
    blank: dict[str, list[int]] = {"image_id": [], "label": []}
    bad_split: list[int] = []
    bad_fold: list[int] = []
    for lineno, raw in enumerate(reader, start=2):
        row = {restore((k or "").strip()): restore((v or "").strip())
               for k, v in raw.items() if isinstance(v, str) or v is None}
        for c in COLUMNS:
            cols[c].append(row.get(c, ""))
        for c in blank:
            if row.get(c, "") == "":
                blank[c].append(lineno)
        if row.get("split", "") not in PARTS:
            bad_split.append(lineno)
        try:
            if int(row.get("fold", "")) < HOLDOUT_FOLD:
                bad_fold.append(lineno)
        except ValueError:
            bad_fold.append(lineno)
    n = len(cols["image_id"])
    if n == 0:
        raise DataError(f"Expected at least one row in split file {path}; got only the header. {fix}")
    for c, lines in blank.items():
        if lines:
            raise DataError(f"Expected a {c} on every row of {path}; got blanks on lines {_lines(lines)}. {fix}")
    if bad_split:
        got = sorted({cols["split"][i - 2] for i in bad_split})
        raise DataError(
            f"Expected split to be one of {', '.join(PARTS)} in {path}; got {', '.join(map(repr, got))} "
            f"on lines {_lines(bad_split)}. {fix}"
        )
    if bad_fold:
        raise DataError(
            f"Expected fold to be an integer >= -1 in {path} (-1 for holdout splits); got "
            f"{cols['fold'][bad_fold[0] - 2]!r} and others on lines {_lines(bad_fold)}. {fix}"
        )
    fold = np.array([int(v) for v in cols["fold"]], dtype=np.int64)
    part = np.array(cols["split"], dtype="<U5")
    holdout = fold == HOLDOUT_FOLD
    if holdout.any() and not holdout.all():
        lines = (np.flatnonzero(~holdout) + 2).tolist()
        raise DataError(
            f"Expected fold -1 on every row (holdout split) or >= 0 on every row (k-fold split) "
            f"in {path}; got a mixture (fold >= 0 on lines {_lines(lines)}). {fix}"
        )
    if holdout.all():
        for needed in ("train", "test"):
            if not np.any(part == needed):
                raise DataError(
                    f"Expected {needed!r} rows in holdout split file {path}; got none. {fix}"
                )
    else:
        not_test = (np.flatnonzero(part != "test") + 2).tolist()
        if not_test:
            raise DataError(
                f"Expected split='test' on every row of k-fold split file {path} (fold = the fold "
                f"in which the row is tested); got other values on lines {_lines(not_test)}. {fix}"
            )
        present = set(np.unique(fold).tolist())
        k = int(fold.max()) + 1
        absent = sorted(set(range(k)) - present)
        if k < 2 or absent:
            raise DataError(
                f"Expected folds 0..K-1 with K >= 2 in {path}; got folds {sorted(present)}. {fix}"
            )
    patient = np.array(cols["patient_id"], dtype=str)
    return Split(
        image_id=np.array(cols["image_id"], dtype=str),
        patient_id=patient,
        label=np.array(cols["label"], dtype=str),
        split=part,
        fold=fold,
        grouped_by="patient_id" if np.any(patient != "") else "image_id",
    )


def align_to_split(split: Split, image_ids: Sequence[Any], labels: Sequence[Any] | None = None) -> np.ndarray:
    """Indices ``idx`` such that ``image_ids[idx]`` lists the data in the split's row order.

    Use it to order features or paths before :class:`xrayfx.study.balance.TrainingRows`.
    Raises DataError when the data and the split disagree: an image of the split
    is missing from the data, the data has images the split does not know, an
    image id is not unique in the data, or a label differs.
    """
    data = _as_str_array(image_ids, "image_id", allow_blank=False)
    fix = "Fix: rebuild the split for this data (run without --split)."
    uniq, counts = np.unique(data, return_counts=True)
    dup = uniq[counts > 1].tolist()
    if dup:
        raise DataError(f"Expected unique image ids in the data; got {len(dup)} repeated: {_listed(dup)}. {fix}")
    pos = {v: i for i, v in enumerate(data.tolist())}
    missing = sorted({v for v in split.image_id.tolist() if v not in pos})
    if missing:
        raise DataError(
            f"Expected every image of the split in the data; got {len(missing)} missing: {_listed(missing)}. {fix}"
        )
    known = set(split.image_id.tolist())
    extra = sorted(v for v in data.tolist() if v not in known)
    if extra:
        raise DataError(
            f"Expected no images outside the split; got {len(extra)} the split does not know: "
            f"{_listed(extra)}. {fix}"
        )
    idx = np.array([pos[v] for v in split.image_id.tolist()], dtype=np.int64)
    if labels is not None:
        lab = _as_str_array(labels, "label", allow_blank=False)
        if len(lab) != len(data):
            raise UsageError(f"Expected one label per image ({len(data)}); got {len(lab)}.")
        differ = np.flatnonzero(lab[idx] != split.label)
        if differ.size:
            shown = [f"{split.image_id[i]} ({split.label[i]} in split, {lab[idx][i]} in data)" for i in differ[:_SHOW]]
            raise DataError(
                f"Expected the same labels as the split; got {differ.size} different: {', '.join(shown)}. {fix}"
            )
    return idx
