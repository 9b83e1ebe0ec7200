"""The one interface every xrayfx head follows: the scikit-learn classifier contract.

A head is trained on cached, pooled backbone embeddings (one row per image) and
gives class probabilities. Parameters are set in ``__init__`` and nothing else
happens there; everything learned in ``fit`` ends in ``_``: ``classes_``,
``n_features_in_``, ``history_`` (per-epoch metrics; empty for heads that do
not train in epochs) and the fitted model ``model_``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import assert_all_finite, check_array, check_is_fitted, column_or_1d

from xrayfx.study.balance import balanced_class_weights
from xrayfx.exceptions import TrainingLabelsError, UsageError


class Head(ClassifierMixin, BaseEstimator):
    """Base class of the heads: label encoding, input checks, ``predict``.

    ``ClassifierMixin`` comes first, as scikit-learn requires of mixins: with
    ``BaseEstimator`` first, ``sklearn.base.is_classifier`` returns False and
    tools that branch on it (stratified cross-validation, ``score``) misbehave.

    Subclasses implement ``fit`` (calling :meth:`_validate_fit_data` first) and
    ``predict_proba`` (calling :meth:`_validate_X` with ``reset=False`` first).
    Labels may be any sortable values, for example the strings ``"covid"`` and
    ``"normal"``; ``classes_`` holds them sorted and gives the column order of
    ``predict_proba``. Inside, models are trained on the codes ``0..k-1``.
    """

    #: dtype of the arrays handed to the underlying model
    _dtype: Any = np.float64

    # ----------------------------------------------------------------- checks
    def _check_n_features(self, X: np.ndarray, reset: bool) -> None:
        """Set ``n_features_in_`` (``reset=True``) or check X against it.

        The message is scikit-learn's own, with this head's class name, e.g.
        ``X has 1536 features, but LogisticRegressionHead is expecting 2048
        features as input.``
        """
        n_features = int(X.shape[1])
        if reset:
            self.n_features_in_ = n_features
            return
        if not hasattr(self, "n_features_in_"):
            return
        if n_features != self.n_features_in_:
            raise ValueError(
                f"X has {n_features} features, but {self.__class__.__name__} "
                f"is expecting {self.n_features_in_} features as input."
            )

    def _validate_X(self, X: Any, reset: bool) -> np.ndarray:
        """A finite 2-D float array, its width set or checked against ``n_features_in_``."""
        if not reset:
            check_is_fitted(self, "classes_")
        X = check_array(X, dtype=self._dtype, ensure_2d=True, ensure_all_finite=True)
        self._check_n_features(X, reset=reset)
        return X

    def _encode_labels(self, y: Any) -> np.ndarray:
        """Set ``classes_`` (sorted unique labels) and return y as codes ``0..k-1``."""
        y = column_or_1d(np.asarray(y), warn=True)
        classes, codes = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise TrainingLabelsError(
                f"{self.__class__.__name__} needs at least 2 classes in the training labels; "
                f"got only one class, {classes.tolist()!r}, in {len(y)} rows. Check the split: the training "
                "set must hold both COVID-19 and normal images."
            )
        self.classes_ = classes
        return codes.astype(np.int64)

    def _validate_fit_data(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Check X and y together; set ``n_features_in_`` and ``classes_``; return (X, codes)."""
        if y is None:
            raise ValueError(
                f"{self.__class__.__name__} requires y to be passed, but the target y is None; "
                "pass one class label per row of X."
            )
        X = self._validate_X(X, reset=True)
        y_arr = np.asarray(y)
        if y_arr.ndim != 1 and not (y_arr.ndim == 2 and y_arr.shape[1] == 1):
            raise ValueError(
                f"y must be one label per row (1-D); got an array of shape {y_arr.shape}. "
                "Pass class labels, not one-hot rows: heads one-hot encode internally."
            )
        if len(y_arr) != X.shape[0]:
            raise ValueError(
                f"X and y must have the same number of rows; got {X.shape[0]} rows in X and "
                f"{len(y_arr)} labels in y. Pass the labels of exactly the rows in X."
            )
        if y_arr.dtype.kind in "fc":
            assert_all_finite(y_arr, input_name="y")
        check_classification_targets(y_arr)  # "Unknown label type: continuous" for regression targets
        return X, self._encode_labels(y_arr)

    def _codes_of(self, y: Any, what: str = "y") -> np.ndarray:
        """Map labels to the codes of ``classes_`` fixed in fit; unknown labels are an error."""
        y = column_or_1d(np.asarray(y), warn=True)
        index = {label: i for i, label in enumerate(self.classes_.tolist())}
        try:
            return np.array([index[label] for label in y.tolist()], dtype=np.int64)
        except KeyError as e:
            raise UsageError(
                f"{what} holds the label {e.args[0]!r}, which was not among the training classes "
                f"{self.classes_.tolist()!r}. Use the same label names in every split."
            ) from None

    def _class_weight_by_code(self, codes: np.ndarray) -> dict[int, float] | None:
        """Translate the ``class_weight`` parameter (None, "balanced" or {label: weight}) to codes."""
        class_weight = getattr(self, "class_weight", None)
        if class_weight is None:
            return None
        k = len(self.classes_)
        if isinstance(class_weight, str):
            if class_weight != "balanced":
                raise UsageError(
                    f"class_weight must be None, 'balanced' or a dict {{label: weight}}; "
                    f"got {class_weight!r}. Use 'balanced' (what --balance class-weight sets)."
                )
            present, weights = balanced_class_weights(codes)
            if len(present) < k:
                missing = sorted(set(self.classes_.tolist()) - {self.classes_[int(i)] for i in present})
                raise UsageError(f"class_weight='balanced' needs rows of every class; got none of {missing}.")
            return {int(c): float(w) for c, w in zip(present, weights)}
        if isinstance(class_weight, dict):
            index = {label: i for i, label in enumerate(self.classes_.tolist())}
            unknown = [label for label in class_weight if label not in index]
            if unknown:
                raise UsageError(
                    f"class_weight names labels {unknown!r} that are not training classes "
                    f"{self.classes_.tolist()!r}; key the dict by the training labels."
                )
            return {index[label]: float(w) for label, w in class_weight.items()}
        raise UsageError(
            f"class_weight must be None, 'balanced' or a dict {{label: weight}}; got "
            f"{type(class_weight).__name__}. Use 'balanced' (what --balance class-weight sets)."
        )

    # -------------------------------------------------------------- interface
    def fit(self, X: Any, y: Any) -> "Head":  # pragma: no cover - abstract
        """Train on X (n_rows, n_features) and labels y; return self."""
        raise NotImplementedError

    def predict_proba(self, X: Any) -> np.ndarray:  # pragma: no cover - abstract
        """Class probabilities, shape (n_rows, n_classes), columns in ``classes_`` order."""
        raise NotImplementedError

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row, as a label from ``classes_``."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]
