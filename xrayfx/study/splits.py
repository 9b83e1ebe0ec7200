"""Splits that cannot leak: patient-grouped, label-stratified, made once and reused.

A split is a table with one row per image, stored as ``split.csv`` with the
columns ``image_id,patient_id,label,split,fold``. It is made once (by
:func:`make_holdout_split` or :func:`make_kfold_split`), written with
:func:`write_split` and reused with ``--split`` through :func:`read_split`, so
that every run of a study sees the same parts.

Grouping
    Rows are grouped so that all images of one patient, and all rows that carry
    the same image id, always land in the same part: the groups are the
    connected components of "same patient id or same image id". Rows without a
    patient id are grouped by their image id alone. When no row has a patient
    id, the split says so (``grouped_by == "image_id"``) and
    :func:`split_summary` adds a note for the run's summary: images of one
    patient may then sit on both sides.

Holdout splits (the paper's 70/30 plus a validation part)
    A fraction is turned into folds of :class:`~sklearn.model_selection.StratifiedGroupKFold`
    by :func:`fraction_to_folds`: the smallest number of folds ``n`` (2 to 20)
    with some ``k`` folds such that ``k / n`` is within one percentage point of
    the fraction (0.3 -> 3 of 10 folds, 0.15 -> 1 of 7, 0.2 -> 1 of 5, 0.25 ->
    1 of 4). The test part is the first ``k`` of ``n`` shuffled folds of all
    rows; the validation part is taken the same way from the rest (``val_size``
    is a fraction of the training part, not of all images). Every row has
    ``fold == -1``.

k-fold splits (``--folds K``)
    Every row is a test row in exactly one fold: the file stores
    ``split == "test"`` for every row and ``fold`` = the index of the fold in
    which that row is tested. For fold ``f`` the test part is ``fold == f``; the
    training and validation parts are derived from the other rows by
    :func:`kfold_parts`, deterministically from the file plus ``(seed,
    val_size)`` (same file and same pair -> same parts). The run records the
    pair; :meth:`Split.rows` uses the defaults ``seed=0, val_size=0.15``.

Before training, :func:`check_leakage` fails with the offending patient and
image ids unless the user passes ``--allow-leakage``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.sparse import coo_matrix

from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

from xrayfx.exceptions import DataError, LeakageError, UsageError

PARTS = ("train", "val", "test")
COLUMNS = ("image_id", "patient_id", "label", "split", "fold")
GROUPED_BY = ("patient_id", "image_id")
HOLDOUT_FOLD = -1
MAX_FOLDS_FOR_FRACTION = 20
FRACTION_TOLERANCE = 0.01
_SHOW = 10  # how many offending ids an error message lists


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Split:
    """A split table, one row per image; its arrays are read-only.

    ``split`` holds "train", "val" or "test". ``fold`` is -1 for every row of a
    holdout split; for a k-fold split it is the fold in which the row is a test
    row, and ``split`` is "test" for every row (see the module docstring).
    ``grouped_by`` is "patient_id", or "image_id" when no row has a patient id.
    """

    image_id: np.ndarray
    patient_id: np.ndarray
    label: np.ndarray
    split: np.ndarray
    fold: np.ndarray
    grouped_by: str

    def __post_init__(self) -> None:
        n = len(self.image_id)
        for name in ("patient_id", "label", "split", "fold"):
            got = len(getattr(self, name))
            if got != n:
                raise UsageError(
                    f"Split columns must have one entry per image: expected {n} {name} values "
                    f"(as many as image_id), got {got}. Fix: build the split with "
                    "make_holdout_split / make_kfold_split or read_split."
                )
        if self.grouped_by not in GROUPED_BY:
            raise UsageError(
                f"Split.grouped_by must be one of {', '.join(GROUPED_BY)}; got {self.grouped_by!r}."
            )
        for name in ("image_id", "patient_id", "label", "split"):
            object.__setattr__(self, name, _frozen(np.asarray(getattr(self, name)).astype(str)))
        object.__setattr__(self, "fold", _frozen(np.asarray(self.fold).astype(np.int64)))
        bad = sorted(set(np.unique(self.split).tolist()) - set(PARTS))
        if bad:
            raise UsageError(
                f"Split.split values must be one of {', '.join(PARTS)}; got {', '.join(map(repr, bad))}."
            )
        if self.kind == "kfold" and np.any(self.split != "test"):
            raise UsageError(
                "A k-fold split stores split='test' on every row (fold = the fold in which the row "
                "is tested); got other values. Fix: build it with make_kfold_split."
            )
        if n and np.any(self.fold < HOLDOUT_FOLD):
            raise UsageError(f"Split.fold values must be >= -1; got {int(self.fold.min())}.")
        if n and np.any(self.fold == HOLDOUT_FOLD) and np.any(self.fold != HOLDOUT_FOLD):
            raise UsageError(
                "Split.fold must be -1 on every row (holdout split) or >= 0 on every row "
                "(k-fold split); got a mixture."
            )

    def __len__(self) -> int:
        return len(self.image_id)

    @property
    def kind(self) -> str:
        """"holdout" (every fold is -1) or "kfold"."""
        return "kfold" if len(self.fold) and np.all(self.fold >= 0) else "holdout"

    @property
    def n_folds(self) -> int:
        """Number of folds of a k-fold split; 0 for a holdout split."""
        return int(self.fold.max()) + 1 if self.kind == "kfold" else 0

    @property
    def groups(self) -> np.ndarray:
        """Integer group code per row: connected components of same patient id / same image id."""
        return group_codes(self.image_id, self.patient_id)

    def rows(
        self, part: str, fold: int | None = None, *, seed: int = 0, val_size: float = 0.15
    ) -> np.ndarray:
        """Sorted integer indices of the rows in ``part`` ("train", "val" or "test").

        ``fold`` is required for a k-fold split and refused for a holdout split;
        ``seed`` and ``val_size`` only matter for the train/val parts of a k-fold
        split (see :func:`kfold_parts`).
        """
        _check_part(part)
        if self.kind == "holdout":
            if fold is not None:
                raise UsageError(
                    f"This is a holdout split (fold -1 on every row); got fold={fold!r}. "
                    "Fix: leave fold unset, or use a split made with --folds."
                )
            return np.flatnonzero(self.split == part)
        return kfold_parts(self, _check_fold(self, fold), seed=seed, val_size=val_size)[part]


def _check_part(part: str) -> None:
    if part not in PARTS:
        raise UsageError(f"Unknown split part {part!r}; expected one of {', '.join(PARTS)}.")


def _check_fold(split: Split, fold: int | None) -> int:
    if fold is None:
        raise UsageError(
            f"This is a {split.n_folds}-fold split; expected a fold index 0..{split.n_folds - 1}, "
            "got none. Fix: pass fold=."
        )
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < split.n_folds:
        raise UsageError(
            f"Expected a fold index 0..{split.n_folds - 1} for this {split.n_folds}-fold split; "
            f"got {fold!r}."
        )
    return int(fold)


# ---------------------------------------------------------------------------------------------
# Inputs and groups


def _blank(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return str(v).strip() == ""


def _as_str_array(values: Iterable[Any], name: str, allow_blank: bool) -> np.ndarray:
    out = np.array(["" if _blank(v) else str(v).strip() for v in values], dtype=str)
    if out.ndim != 1:
        raise UsageError(f"Expected {name} as a flat sequence, got an array of shape {out.shape}.")
    if not allow_blank:
        blank = np.flatnonzero(out == "")
        if blank.size:
            raise DataError(
                f"Expected a {name} on every row; got {blank.size} blank (rows "
                f"{', '.join(map(str, blank[:_SHOW].tolist()))}). Fix: fill them in the manifest."
            )
    return out


def _inputs(
    image_ids: Sequence[Any], labels: Sequence[Any], patient_ids: Sequence[Any] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    image = _as_str_array(image_ids, "image_id", allow_blank=False)
    label = _as_str_array(labels, "label", allow_blank=False)
    if len(label) != len(image):
        raise UsageError(
            f"Expected one label per image ({len(image)}); got {len(label)} labels."
        )
    if patient_ids is None:
        patient = np.full(len(image), "", dtype=str)
    else:
        patient = _as_str_array(patient_ids, "patient_id", allow_blank=True)
        if len(patient) != len(image):
            raise UsageError(
                f"Expected one patient id per image ({len(image)}); got {len(patient)}. "
                "Fix: pass patient_ids=None to group by image id."
            )
    classes = np.unique(label)
    if classes.size < 2:
        raise DataError(
            f"Expected at least two classes to split; got only {classes.tolist()!r}. "
            "Fix: check the manifest's label column."
        )
    grouped_by = "patient_id" if np.any(patient != "") else "image_id"
    return image, label, patient, grouped_by


def group_codes(image_id: np.ndarray, patient_id: np.ndarray) -> np.ndarray:
    """Group code per row: rows sharing a patient id or an image id are one group.

    Rows with a blank patient id are linked through their image id only.
    Codes are 0..G-1, a pure function of the two columns (not of a seed).
    """
    image_id = np.asarray(image_id).astype(str)
    patient_id = np.asarray(patient_id).astype(str)
    n = len(image_id)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    _, img_code = np.unique(image_id, return_inverse=True)
    has_pid = patient_id != ""
    _, pid_code = np.unique(patient_id[has_pid], return_inverse=True)
    n_img = int(img_code.max()) + 1
    n_pid = int(pid_code.max()) + 1 if pid_code.size else 0
    size = n + n_img + n_pid
    src = np.concatenate([np.arange(n), np.flatnonzero(has_pid)])
    dst = np.concatenate([n + img_code, n + n_img + pid_code])
    graph = coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(size, size))
    _, comp = connected_components(graph, directed=False)
    _, codes = np.unique(comp[:n], return_inverse=True)
    return codes.astype(np.int64)


def fraction_to_folds(fraction: float, what: str = "fraction") -> tuple[int, int]:
    """Turn a fraction into ``(n_folds, k_taken)`` for StratifiedGroupKFold.

    The smallest ``n`` in 2..20 for which some ``k`` gives ``k / n`` within one
    percentage point of ``fraction``; failing that, the closest ``k / n``.
    0.3 -> (10, 3); 0.15 -> (7, 1); 0.2 -> (5, 1); 0.5 -> (2, 1).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or not 0 < fraction < 1:
        raise UsageError(f"Expected {what} strictly between 0 and 1; got {fraction!r}.")
    best = (math.inf, 2, 1)
    for n in range(2, MAX_FOLDS_FOR_FRACTION + 1):
        k = min(max(round(fraction * n), 1), n - 1)
        err = abs(k / n - fraction)
        if err <= FRACTION_TOLERANCE + 1e-12:
            return n, k
        if err < best[0]:
            best = (err, n, k)
    return best[1], best[2]


def _check_groups_per_class(
    label: np.ndarray, groups: np.ndarray, n_splits: int, what: str
) -> None:
    short = []
    for cls in np.unique(label):
        n_groups = np.unique(groups[label == cls]).size
        if n_groups < n_splits:
            short.append(f"class {str(cls)!r} has {n_groups} groups ({int((label == cls).sum())} images)")
    if short:
        raise DataError(
            f"The {what} needs at least {n_splits} patient groups per class (one per fold of "
            f"{n_splits}); got: {'; '.join(short)}. Fix: add images of those classes, or use a "
            "coarser split (larger fraction closer to 1/2, or fewer --folds)."
        )


def _take_folds(
    label: np.ndarray, groups: np.ndarray, n_splits: int, k: int, seed: int
) -> np.ndarray:
    """Boolean mask of the rows in the first k of n shuffled stratified group folds."""
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    mask = np.zeros(len(label), dtype=bool)
    dummy = np.zeros((len(label), 1))
    for i, (_, test_idx) in enumerate(sgkf.split(dummy, label, groups)):
        if i >= k:
            break
        mask[test_idx] = True
    return mask


def _seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"Expected a non-negative integer seed; got {seed!r}.")
    return int(seed)


# ---------------------------------------------------------------------------------------------
# Making splits


def make_holdout_split(
    image_ids: Sequence[Any],
    labels: Sequence[Any],
    patient_ids: Sequence[Any] | None = None,
    test_size: float = 0.3,
    val_size: float = 0.15,
    seed: int = 0,
) -> Split:
    """Patient-grouped, label-stratified train/val/test split (default 70/30, then 15% of train as val).

    ``test_size`` is a fraction of all images and ``val_size`` a fraction of the
    rest; each becomes ``k`` of ``n`` StratifiedGroupKFold folds by
    :func:`fraction_to_folds` (0.3 -> 3 of 10, 0.15 -> 1 of 7), shuffled with
    ``seed``. Without patient ids (None or all blank) rows are grouped by image
    id and ``grouped_by`` is "image_id".
    """
    seed = _seed(seed)
    image, label, patient, grouped_by = _inputs(image_ids, labels, patient_ids)
    groups = group_codes(image, patient)
    n_test, k_test = fraction_to_folds(test_size, "test_size")
    n_val, k_val = fraction_to_folds(val_size, "val_size")
    _check_groups_per_class(label, groups, n_test, f"test part ({k_test} of {n_test} folds)")
    is_test = _take_folds(label, groups, n_test, k_test, seed)
    rest = np.flatnonzero(~is_test)
    _check_groups_per_class(
        label[rest], groups[rest], n_val, f"validation part ({k_val} of {n_val} folds of train)"
    )
    is_val_rest = _take_folds(label[rest], groups[rest], n_val, k_val, seed)
    part = np.full(len(image), "train", dtype="<U5")
    part[is_test] = "test"
    part[rest[is_val_rest]] = "val"
    return Split(
        image_id=image,
        patient_id=patient,
        label=label,
        split=part,
        fold=np.full(len(image), HOLDOUT_FOLD, dtype=np.int64),
        grouped_by=grouped_by,
    )


def make_kfold_split(
    image_ids: Sequence[Any],
    labels: Sequence[Any],
    patient_ids: Sequence[Any] | None = None,
    folds: int = 5,
    val_size: float = 0.15,
    seed: int = 0,
) -> Split:
    """Patient-grouped, label-stratified k-fold split: each row is a test row in exactly one fold.

    The file stores the test fold per row (``split == "test"`` everywhere). The
    validation part of fold ``f`` is derived by :func:`kfold_parts`; this
    function checks that it can be built for every fold with ``val_size``, so a
    split that cannot serve a fold fails now, not mid-study.
    """
    seed = _seed(seed)
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise UsageError(f"Expected --folds to be an integer >= 2; got {folds!r}.")
    folds = int(folds)
    image, label, patient, grouped_by = _inputs(image_ids, labels, patient_ids)
    groups = group_codes(image, patient)
    _check_groups_per_class(label, groups, folds, f"{folds}-fold split")
    sgkf = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold = np.full(len(image), HOLDOUT_FOLD, dtype=np.int64)
    for f, (_, test_idx) in enumerate(sgkf.split(np.zeros((len(image), 1)), label, groups)):
        fold[test_idx] = f
    split = Split(
        image_id=image,
        patient_id=patient,
        label=label,
        split=np.full(len(image), "test", dtype="<U5"),
        fold=fold,
        grouped_by=grouped_by,
    )
    for f in range(folds):
        kfold_parts(split, f, seed=seed, val_size=val_size)
    return split


def kfold_parts(
    split: Split, fold: int, seed: int = 0, val_size: float = 0.15
) -> dict[str, np.ndarray]:
    """Train, val and test row indices of one fold of a k-fold split.

    Test: rows with ``fold == fold``. Val: ``k`` of ``n`` StratifiedGroupKFold
    folds (:func:`fraction_to_folds` of ``val_size``) of the remaining rows,
    grouped like the split and shuffled with a seed derived from ``(seed,
    fold)``. Train: the rest. Deterministic in (file, seed, val_size).
    """
    if not isinstance(split, Split):
        raise UsageError(f"Expected a Split; got {type(split).__name__}.")
    if split.kind != "kfold":
        raise UsageError(
            "kfold_parts needs a k-fold split (made with --folds); got a holdout split. "
            "Fix: use split.rows(part) for holdout splits."
        )
    fold = _check_fold(split, fold)
    seed = _seed(seed)
    n_val, k_val = fraction_to_folds(val_size, "val_size")
    test = np.flatnonzero(split.fold == fold)
    rest = np.flatnonzero(split.fold != fold)
    groups = split.groups
    _check_groups_per_class(
        split.label[rest], groups[rest], n_val,
        f"validation part of fold {fold} ({k_val} of {n_val} folds of its training rows)",
    )
    inner_seed = int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])
    is_val = _take_folds(split.label[rest], groups[rest], n_val, k_val, inner_seed)
    return {"train": rest[~is_val], "val": rest[is_val], "test": test}


# ---------------------------------------------------------------------------------------------
# Leakage


def find_leakage(
    split: Split,
    part_a: str = "train",
    part_b: str | Sequence[str] = ("val", "test"),
    fold: int | None = None,
    *,
    seed: int = 0,
    val_size: float = 0.15,
) -> dict[str, list[str]]:
    """Patient ids and image ids found in both ``part_a`` and any of ``part_b`` (sorted)."""
    parts_b = (part_b,) if isinstance(part_b, str) else tuple(part_b)
    for p in (part_a, *parts_b):
        _check_part(p)
    if part_a in parts_b:
        raise UsageError(f"Expected two different sides; got {part_a!r} on both.")
    a = split.rows(part_a, fold, seed=seed, val_size=val_size)
    b = np.concatenate([split.rows(p, fold, seed=seed, val_size=val_size) for p in parts_b])
    pa, pb = split.patient_id[a], split.patient_id[b]
    patients = np.intersect1d(pa[pa != ""], pb[pb != ""])
    images = np.intersect1d(split.image_id[a], split.image_id[b])
    return {"patient_ids": patients.tolist(), "image_ids": images.tolist()}


def _listed(ids: list[str]) -> str:
    shown = ", ".join(ids[:_SHOW])
    return shown + (f", … ({len(ids) - _SHOW} more)" if len(ids) > _SHOW else "")


def check_leakage(
    split: Split,
    part_a: str = "train",
    part_b: str | Sequence[str] = ("val", "test"),
    fold: int | None = None,
    *,
    allow_leakage: bool = False,
    seed: int = 0,
    val_size: float = 0.15,
) -> dict[str, list[str]]:
    """Raise LeakageError if a patient or an image id is on both sides; return what was found.

    With ``allow_leakage=True`` (``--allow-leakage``) nothing is raised and the
    findings are returned for the run's record.
    """
    found = find_leakage(split, part_a, part_b, fold, seed=seed, val_size=val_size)
    if (found["patient_ids"] or found["image_ids"]) and not allow_leakage:
        parts_b = (part_b,) if isinstance(part_b, str) else tuple(part_b)
        where = f"{part_a!r} and {'/'.join(map(repr, parts_b))}" + (
            f" (fold {fold})" if fold is not None else ""
        )
        got = []
        if found["patient_ids"]:
            n = len(found["patient_ids"])
            got.append(f"{n} patient id{'s' if n != 1 else ''} on both sides: {_listed(found['patient_ids'])}")
        if found["image_ids"]:
            n = len(found["image_ids"])
            got.append(f"{n} image id{'s' if n != 1 else ''} on both sides: {_listed(found['image_ids'])}")
        raise LeakageError(
            f"Expected no patient and no image on both sides of the split ({where}); got "
            f"{' and '.join(got)}. A model tested on patients or images it was trained on "
            "scores too high. Fix: rebuild the split without --split, or pass --allow-leakage "
            "to proceed knowingly."
        )
    return found


# ---------------------------------------------------------------------------------------------
# Summary


def split_summary(
    split: Split, fold: int | None = None, *, seed: int = 0, val_size: float = 0.15
) -> dict[str, Any]:
    """Counts per part (images, groups, labels) and notes for the run's summary."""
    groups = split.groups
    notes: list[str] = []
    if split.grouped_by == "image_id":
        notes.append(
            "No patient ids: rows were grouped by image id, so images of one patient may sit "
            "on both sides of the split."
        )
    else:
        n_blank = int((split.patient_id == "").sum())
        if n_blank:
            notes.append(
                f"{n_blank} rows have no patient id and were grouped by their image id only."
            )
    out: dict[str, Any] = {
        "kind": split.kind,
        "grouped_by": split.grouped_by,
        "n_images": len(split),
        "n_groups": int(np.unique(groups).size),
        "n_folds": split.n_folds,
        "notes": notes,
    }
    if split.kind == "kfold" and fold is None:
        out["folds"] = {
            int(f): _part_counts(split, np.flatnonzero(split.fold == f), groups)
            for f in range(split.n_folds)
        }
        return out
    out["fold"] = fold
    out["parts"] = {
        p: _part_counts(split, split.rows(p, fold, seed=seed, val_size=val_size), groups)
        for p in PARTS
    }
    return out


def _part_counts(split: Split, idx: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    labels, counts = np.unique(split.label[idx], return_counts=True)
    return {
        "n_images": int(idx.size),
        "n_groups": int(np.unique(groups[idx]).size),
        "label_counts": {str(k): int(v) for k, v in zip(labels, counts)},
    }
