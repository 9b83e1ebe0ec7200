"""Heads: classifiers trained on cached embeddings, all with one scikit-learn interface.

``make_head(name, **params)`` builds one by its command-line name (``--head``).
Save and load them with :func:`xrayfx.study.heads.persist.save_head` and
:func:`xrayfx.study.heads.persist.load_head` (no pickle; hashes checked on load).
"""

from __future__ import annotations

from typing import Any

from xrayfx.exceptions import UsageError
from xrayfx.study.heads.base import Head
from xrayfx.study.heads.classical import KNNHead, LinearSVMHead, LogisticRegressionHead, RBFSVMHead
from xrayfx.study.heads.paper import PaperHead

HEADS: dict[str, type[Head]] = {
    "paper": PaperHead,
    "logreg": LogisticRegressionHead,
    "linear-svm": LinearSVMHead,
    "rbf-svm": RBFSVMHead,
    "knn": KNNHead,
}


def head_names() -> list[str]:
    """The ``--head`` names, in registry order (the paper's head first)."""
    return list(HEADS)


def make_head(name: str, **params: Any) -> Head:
    """Build the head registered as ``name`` with the given parameters.

    Unknown names and parameters the head does not take raise :class:`UsageError`.
    """
    key = str(name).strip().lower()
    if key not in HEADS:
        raise UsageError(f"Unknown head {name!r}; choose one of: {', '.join(HEADS)}")
    cls = HEADS[key]
    valid = cls._get_param_names()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise UsageError(
            f"Head {key!r} ({cls.__name__}) takes no parameter(s) {', '.join(unknown)}; "
            f"its parameters are: {', '.join(valid)}"
        )
    return cls(**params)


__all__ = [
    "HEADS",
    "Head",
    "KNNHead",
    "LinearSVMHead",
    "LogisticRegressionHead",
    "PaperHead",
    "RBFSVMHead",
    "head_names",
    "make_head",
]
