"""Classical heads: scikit-learn classifiers on standardised embeddings.

Each head is a :class:`~sklearn.pipeline.Pipeline` of a
:class:`~sklearn.preprocessing.StandardScaler` and one classifier, stored as
``model_`` and trained on the label codes ``0..k-1`` (so the column order of
``predict_proba`` is the order of ``classes_``). Standardising matters: pooled
embeddings of different backbones differ in scale by orders of magnitude, and
all four classifiers below are sensitive to it.

The SVMs give probabilities through sigmoid (Platt) calibration by
:class:`~sklearn.calibration.CalibratedClassifierCV`, fitted on ``cv`` stratified
folds without shuffling, so results are deterministic. ``SVC(probability=True)``
is deliberately not used: scikit-learn 1.9 deprecates it in favour of exactly
this calibration.

``class_weight="balanced"`` (what ``--balance class-weight`` sets) weights each
class by ``n_rows / (n_classes * n_rows_of_class)``; a dict ``{label: weight}``
is also accepted. k-nearest neighbours has no class weights, and
:class:`KNNHead` refuses ``class_weight`` with a :class:`UsageError` rather than
ignoring it silently, so a run never claims a balancing it did not do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.validation import check_is_fitted

from xrayfx.exceptions import UsageError
from xrayfx.study.heads.base import Head


class SklearnHead(Head):
    """Shared fit/predict_proba of the classical heads; subclasses build the classifier."""

    def _classifier(self, class_weight: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _sklearn_class_weight(self, codes: np.ndarray) -> Any:
        """``class_weight`` as the sklearn classifier takes it, keyed by label codes."""
        if getattr(self, "class_weight", None) == "balanced":
            return "balanced"
        return self._class_weight_by_code(codes)

    def fit(self, X: Any, y: Any) -> "SklearnHead":
        """Standardise X and fit the classifier on the labels y; return self."""
        X, codes = self._validate_fit_data(X, y)
        self._check_fit_sizes(codes)
        model = Pipeline(
            [("scale", StandardScaler()), ("clf", self._classifier(self._sklearn_class_weight(codes)))]
        )
        model.fit(X, codes)
        self.model_ = model
        clf = model.named_steps["clf"]
        if hasattr(clf, "n_iter_"):
            self.n_iter_ = clf.n_iter_  # iterations of the solver, as scikit-learn's own estimators report
        self.history_: list[dict[str, Any]] = []
        return self

    def _check_fit_sizes(self, codes: np.ndarray) -> None:
        """Hook for size checks that would otherwise fail deep inside sklearn."""

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n_rows, n_classes), columns in ``classes_`` order."""
        X = self._validate_X(X, reset=False)
        check_is_fitted(self, "model_")
        return np.asarray(self.model_.predict_proba(X), dtype=np.float64)


class _CalibratedHead(SklearnHead):
    """An SVM calibrated on ``cv`` folds: each class needs at least ``cv`` rows."""

    cv: int

    def _check_fit_sizes(self, codes: np.ndarray) -> None:
        if not isinstance(self.cv, (int, np.integer)) or isinstance(self.cv, bool) or self.cv < 2:
            raise UsageError(f"cv must be an integer >= 2; got {self.cv!r}. The default is 5.")
        counts = np.bincount(codes, minlength=len(self.classes_))
        if counts.min() < self.cv:
            small = self.classes_[int(np.argmin(counts))]
            raise UsageError(
                f"{self.__class__.__name__} calibrates probabilities on cv={self.cv} folds, so each "
                f"class needs at least {self.cv} training rows; class {small!r} has "
                f"{int(counts.min())}. Use more training data or a smaller cv."
            )


class LogisticRegressionHead(SklearnHead):
    """L2-regularised logistic regression on standardised embeddings.

    Parameters
    ----------
    C : inverse regularisation strength.
    max_iter : iterations of the lbfgs solver (2000: embeddings are wide).
    class_weight : None, "balanced" or {label: weight}.
    random_state : passed to the classifier (lbfgs itself is deterministic).
    """

    def __init__(
        self,
        C: float = 1.0,
        max_iter: int = 2000,
        class_weight: str | dict | None = None,
        random_state: int | None = 0,
    ):
        self.C = C
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.random_state = random_state

    def _classifier(self, class_weight: Any) -> Any:
        return LogisticRegression(
            C=self.C, max_iter=self.max_iter, class_weight=class_weight, random_state=self.random_state
        )


class LinearSVMHead(_CalibratedHead):
    """Linear SVM (``LinearSVC``) with sigmoid-calibrated probabilities.

    Parameters
    ----------
    C : penalty of the hinge loss.
    class_weight : None, "balanced" or {label: weight}.
    random_state : seed of the liblinear coordinate descent.
    cv : stratified folds (no shuffling) of the sigmoid calibration.
    """

    def __init__(
        self,
        C: float = 1.0,
        class_weight: str | dict | None = None,
        random_state: int | None = 0,
        cv: int = 5,
    ):
        self.C = C
        self.class_weight = class_weight
        self.random_state = random_state
        self.cv = cv

    def _classifier(self, class_weight: Any) -> Any:
        svm = LinearSVC(C=self.C, class_weight=class_weight, random_state=self.random_state, dual="auto")
        return CalibratedClassifierCV(svm, method="sigmoid", cv=self.cv)


class RBFSVMHead(_CalibratedHead):
    """RBF-kernel SVM (``SVC``) with sigmoid-calibrated probabilities.

    Calibrated by :class:`~sklearn.calibration.CalibratedClassifierCV` rather than
    ``SVC(probability=True)``, which scikit-learn 1.9 deprecates; the two are the
    same method (Platt scaling on internal folds).

    Parameters
    ----------
    C : penalty.
    gamma : kernel width, "scale", "auto" or a float.
    class_weight : None, "balanced" or {label: weight}.
    random_state : passed to ``SVC`` (unused by its deterministic solver; kept for the interface).
    cv : stratified folds (no shuffling) of the sigmoid calibration.
    """

    def __init__(
        self,
        C: float = 1.0,
        gamma: str | float = "scale",
        class_weight: str | dict | None = None,
        random_state: int | None = 0,
        cv: int = 5,
    ):
        self.C = C
        self.gamma = gamma
        self.class_weight = class_weight
        self.random_state = random_state
        self.cv = cv

    def _classifier(self, class_weight: Any) -> Any:
        svm = SVC(
            C=self.C, kernel="rbf", gamma=self.gamma, class_weight=class_weight,
            random_state=self.random_state,
        )
        return CalibratedClassifierCV(svm, method="sigmoid", cv=self.cv)


class KNNHead(SklearnHead):
    """k-nearest neighbours on standardised embeddings (exact brute-force search).

    Brute force is exact and fast at this size (about a thousand training rows)
    and keeps tree objects out of the saved file.

    Parameters
    ----------
    n_neighbors : k.
    weights : "distance" (closer neighbours count more) or "uniform".
    class_weight : must stay None. k-NN cannot weight classes; asking for it
        (``--balance class-weight``) raises :class:`UsageError` instead of being
        ignored. Balance the training rows with a sampler (``--balance smote``)
        instead.
    """

    def __init__(self, n_neighbors: int = 5, weights: str = "distance", class_weight: None = None):
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.class_weight = class_weight

    def _check_fit_sizes(self, codes: np.ndarray) -> None:
        if self.class_weight is not None:
            raise UsageError(
                f"KNNHead cannot weight classes: expected class_weight=None, got "
                f"{self.class_weight!r}. Balance the training rows with a sampler "
                "(--balance smote or oversample) or choose a head that takes class weights."
            )
        if not isinstance(self.n_neighbors, (int, np.integer)) or self.n_neighbors < 1:
            raise UsageError(f"n_neighbors must be a positive integer; got {self.n_neighbors!r}.")
        if self.n_neighbors > len(codes):
            raise UsageError(
                f"KNNHead has n_neighbors={self.n_neighbors} but only {len(codes)} training rows; "
                "use a smaller n_neighbors."
            )

    def _classifier(self, class_weight: Any) -> Any:
        return KNeighborsClassifier(n_neighbors=self.n_neighbors, weights=self.weights, algorithm="brute")
