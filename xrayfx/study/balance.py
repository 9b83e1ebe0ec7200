"""Class balance in feature space, on training rows only.

``--balance smote|random|class-weight|none`` (SMOTE is the default, as in the
paper). Validation and test rows cannot reach a sampler: :func:`balance` only
accepts a :class:`TrainingRows`, and the only public way to make one is from a
:class:`~xrayfx.study.splits.Split`, reading ``split.rows("train")`` and nothing else.
Extra training rows (jittered copies of training images) are added with
:meth:`TrainingRows.with_extra`, which refuses rows identical to a held-out row.

SMOTE needs ``k_neighbors + 1`` training samples of every class it
oversamples; with fewer, :func:`balance` raises a BalanceError naming the
class, its count and k. It never shrinks k silently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from xrayfx.exceptions import BalanceError, DataError, LeakageError, UsageError
from xrayfx.study.splits import Split

BALANCE_METHODS = ("smote", "random", "class-weight", "none")
DEFAULT_BALANCE = "smote"


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


def _row_digests(X: np.ndarray) -> list[bytes]:
    """Digest of each row's float64 values: equal values (any float dtype) give equal digests."""
    X64 = np.ascontiguousarray(X, dtype=np.float64)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in X64]


def _features(X: Any, what: str) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise UsageError(f"Expected {what} as a 2-D array (rows x features); got shape {X.shape}.")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise UsageError(f"Expected real numeric {what}; got dtype {X.dtype}.")
    return X


def balanced_class_weights(y: Any) -> tuple[np.ndarray, np.ndarray]:
    """The classes of ``y`` (sorted) and their "balanced" weights ``n / (k * count)``: the one place they are computed."""
    classes = np.unique(y)
    return classes, compute_class_weight("balanced", classes=classes, y=y)


class TrainingRows:
    """Features and labels of a split's training part (plus extra training rows), read-only.

    Made with ``TrainingRows(split, X)`` or :meth:`from_split`, where ``X`` has
    one row per row of the split, in the split's order (see
    :func:`xrayfx.study.splits.align_to_split`). Only ``split.rows("train", fold)`` is
    kept; for the other rows only a digest is kept, so that :meth:`with_extra`
    can refuse them.
    """

    __slots__ = ("_X", "_y", "_rows", "_n_extra", "_fold", "_heldout")

    def __init__(self, split: Split, X: Any, *, fold: int | None = None, y: Any = None):
        if not isinstance(split, Split):
            raise UsageError(
                f"TrainingRows are made from a Split; got {type(split).__name__}. Fix: build the "
                "split with xrayfx.study.splits and pass it with the features of all its rows."
            )
        X = _features(X, "features")
        if len(X) != len(split):
            raise DataError(
                f"Expected one feature row per row of the split ({len(split)}); got {len(X)}. "
                "Fix: order the features with xrayfx.study.splits.align_to_split."
            )
        labels = split.label if y is None else np.asarray(y)
        if labels.ndim != 1 or len(labels) != len(split):
            raise DataError(
                f"Expected one label per row of the split ({len(split)}); got shape {labels.shape}."
            )
        rows = split.rows("train", fold)
        if rows.size == 0:
            raise DataError("Expected training rows in the split; got none. Fix: rebuild the split.")
        is_train = np.zeros(len(split), dtype=bool)
        is_train[rows] = True
        train_digests = set(_row_digests(X[rows]))
        self._X = _readonly(X[rows])
        self._y = _readonly(labels[rows])
        self._rows = _readonly(rows)
        self._n_extra = 0
        self._fold = fold
        # held-out rows that are not also (identical to) a training row
        self._heldout = frozenset(set(_row_digests(X[~is_train])) - train_digests)

    @classmethod
    def from_split(
        cls, split: Split, X: Any, *, fold: int | None = None, y: Any = None
    ) -> TrainingRows:
        """The training part of ``split`` (of ``fold`` for k-fold splits) with its features."""
        return cls(split, X, fold=fold, y=y)

    @property
    def X(self) -> np.ndarray:
        """Features, training rows first, then extra rows (read-only)."""
        return self._X

    @property
    def y(self) -> np.ndarray:
        """Labels aligned with :attr:`X` (read-only)."""
        return self._y

    @property
    def rows(self) -> np.ndarray:
        """Indices into the split of the training rows (extra rows have none)."""
        return self._rows

    @property
    def n_extra(self) -> int:
        """How many extra rows were added with :meth:`with_extra`."""
        return self._n_extra

    @property
    def fold(self) -> int | None:
        """The k-fold fold these rows belong to, or None for a holdout split."""
        return self._fold

    def __len__(self) -> int:
        return len(self._X)

    def counts(self) -> dict[str, int]:
        """Rows per class."""
        return _counts(self._y)

    def with_extra(self, X_extra: Any, y_extra: Any) -> TrainingRows:
        """A new TrainingRows with extra rows (e.g. jittered copies of training images) appended.

        Raises LeakageError if an extra row is identical to a validation or test
        row of the split.
        """
        X_extra = _features(X_extra, "extra features")
        y_extra = np.asarray(y_extra)
        if X_extra.shape[1:] != self._X.shape[1:]:
            raise UsageError(
                f"Expected extra rows with {self._X.shape[1]} features like the training rows; "
                f"got {X_extra.shape[1]}."
            )
        if y_extra.ndim != 1 or len(y_extra) != len(X_extra):
            raise UsageError(
                f"Expected one label per extra row ({len(X_extra)}); got shape {y_extra.shape}."
            )
        if self._y.dtype.kind == "U":
            y_extra = y_extra.astype(str)
        unknown = sorted(set(np.unique(y_extra).tolist()) - set(np.unique(self._y).tolist()))
        if unknown:
            raise UsageError(
                f"Expected extra rows labelled with classes of the training rows "
                f"({', '.join(map(str, self.counts()))}); got {', '.join(map(repr, unknown))}. "
                "Fix: label each jittered copy like the image it was made from."
            )
        hits = [i for i, d in enumerate(_row_digests(X_extra)) if d in self._heldout]
        if hits:
            raise LeakageError(
                f"Expected extra rows made from training images only; got {len(hits)} identical to "
                f"validation/test rows (extra rows {', '.join(map(str, hits[:10]))}). Fix: jitter "
                "only images of the training part."
            )
        new = object.__new__(TrainingRows)
        new._X = _readonly(np.concatenate([self._X, X_extra]))
        new._y = _readonly(np.concatenate([self._y, y_extra]))
        new._rows = self._rows
        new._n_extra = self._n_extra + len(X_extra)
        new._fold = self._fold
        new._heldout = self._heldout
        return new

    def __repr__(self) -> str:
        return (
            f"TrainingRows(n={len(self)}, n_extra={self._n_extra}, fold={self._fold}, "
            f"counts={self.counts()})"
        )


def _counts(y: np.ndarray) -> dict[str, int]:
    labels, counts = np.unique(y, return_counts=True)
    return {str(k): int(v) for k, v in zip(labels, counts)}


@dataclass(frozen=True, eq=False)
class BalancedTrainingSet:
    """What a head trains on: X, y and optional per-sample weights, plus what balancing did."""

    X: np.ndarray
    y: np.ndarray
    sample_weight: np.ndarray | None
    method: str
    n_before: int
    n_after: int
    counts_before: dict[str, int]
    counts_after: dict[str, int]
    class_weight: dict[str, float] | None = None
    k_neighbors: int | None = None
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The run-record view: everything but the arrays."""
        return {
            "method": self.method,
            "n_before": self.n_before,
            "n_after": self.n_after,
            "counts_before": dict(self.counts_before),
            "counts_after": dict(self.counts_after),
            "class_weight": None if self.class_weight is None else dict(self.class_weight),
            "k_neighbors": self.k_neighbors,
            "seed": self.seed,
            "notes": list(self.notes),
        }


def _check_smote(counts: dict[str, int], k: int) -> None:
    majority = max(counts.values())
    short = {c: n for c, n in counts.items() if n < majority and n < k + 1}
    if short:
        cls, n = min(short.items(), key=lambda kv: kv[1])
        others = "".join(f"; class {c!r} has {m}" for c, m in short.items() if c != cls)
        raise BalanceError(
            f"SMOTE with k_neighbors={k} needs at least {k + 1} training samples of each class it "
            f"oversamples; got {n} of class {cls!r}{others}. Fix: choose a smaller k explicitly "
            f"(at most {n - 1}), use --balance random or class-weight, or add training images."
        )


def balance(
    train: TrainingRows, method: str = DEFAULT_BALANCE, k_neighbors: int = 5, seed: int = 0
) -> BalancedTrainingSet:
    """Balance the classes of training rows with SMOTE, random oversampling, class weights or nothing.

    Only a :class:`TrainingRows` is accepted, so validation and test rows cannot
    pass through a sampler. ``class-weight`` returns the rows unchanged with
    "balanced" per-sample weights ``n / (n_classes * n_class)`` for the head.
    """
    if not isinstance(train, TrainingRows):
        raise UsageError(
            f"balance() takes TrainingRows, the training part of a split; got "
            f"{type(train).__name__}. Fix: TrainingRows.from_split(split, X) — validation and "
            "test rows never pass through a sampler."
        )
    if method not in BALANCE_METHODS:
        raise UsageError(f"Unknown --balance {method!r}; choose one of: {', '.join(BALANCE_METHODS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"Expected a non-negative integer seed; got {seed!r}.")
    X, y = train.X, train.y
    before = train.counts()
    if len(before) < 2 and method != "none":
        raise BalanceError(
            f"Expected at least two classes in the training rows to balance; got only "
            f"{before}. Fix: rebuild the split, or use --balance none."
        )
    common: dict[str, Any] = dict(method=method, n_before=len(y), counts_before=before, seed=int(seed))
    if method == "none":
        return BalancedTrainingSet(
            X=np.array(X), y=np.array(y), sample_weight=None, n_after=len(y), counts_after=before, **common
        )
    if method == "class-weight":
        classes, weights = balanced_class_weights(y)
        cw = {str(c): float(w) for c, w in zip(classes, weights)}
        sw = weights[np.searchsorted(classes, y)]
        return BalancedTrainingSet(
            X=np.array(X), y=np.array(y), sample_weight=sw, n_after=len(y), counts_after=before,
            class_weight=cw, **common,
        )
    if method == "random":
        from imblearn.over_sampling import RandomOverSampler

        sampler = RandomOverSampler(random_state=int(seed))
        k = None
    else:
        if isinstance(k_neighbors, bool) or not isinstance(k_neighbors, (int, np.integer)) or k_neighbors < 1:
            raise UsageError(f"Expected SMOTE k_neighbors to be an integer >= 1; got {k_neighbors!r}.")
        k = int(k_neighbors)
        _check_smote(before, k)
        from imblearn.over_sampling import SMOTE

        sampler = SMOTE(k_neighbors=k, random_state=int(seed))
    Xb, yb = sampler.fit_resample(np.array(X), np.array(y))
    return BalancedTrainingSet(
        X=np.asarray(Xb), y=np.asarray(yb), sample_weight=None, n_after=len(yb),
        counts_after=_counts(np.asarray(yb)), k_neighbors=k, **common,
    )
