"""fit-head's options, checked before anything is extracted: labels, the head and how it trains, the split.

:class:`HeadOptions` is the one typed object for the head: its kind, the paper
head's training parameters (epochs, the head's training batch size, learning
rate, momentum, dropout, units), the class balancing, jitter augmentation and
the training seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Sequence

import numpy as np

from xrayfx.exceptions import UsageError
from xrayfx.study.balance import BALANCE_METHODS
from xrayfx.study.heads import HEADS, make_head
from xrayfx.study.runs import check_run_id
from xrayfx.study.splits import fraction_to_folds

#: Parameters of the paper's head and the flags that set them.
PAPER_FLAGS = {
    "epochs": "--epochs",
    "batch_size": "--head-batch-size",
    "learning_rate": "--learning-rate",
    "momentum": "--momentum",
    "dropout": "--dropout",
    "units": "--units",
    "trainer": "--trainer",
}


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


def positive_int(value: Any, flag: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, else UsageError naming ``flag``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UsageError(f"Expected {flag} to be an integer >= {minimum}; got {value!r}.")
    return int(value)


@dataclass(frozen=True)
class HeadOptions:
    """How the head is made and trained. ``params`` holds other head parameters (Python API)."""

    head: str = "paper"
    epochs: int | None = None
    batch_size: int | None = None  # the paper head's training batch (--head-batch-size), not extraction's
    learning_rate: float | None = None
    momentum: float | None = None
    dropout: float | None = None
    units: int | None = None
    trainer: str | None = None  # the paper head's trainer: "fast" (default) or "reference"
    balance: str = "smote"
    k_neighbors: int = 5
    augment: int = 0
    train_seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, head: "str | HeadOptions", head_params: dict[str, Any] | None = None,
                    **kwargs: Any) -> "HeadOptions":
        """Fold fit_head's older keyword arguments (``head_params``, ``balance``…) into one object."""
        names = {f.name for f in fields(cls)} - {"head", "params"}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise UsageError(f"fit_head got unknown keyword argument(s) {', '.join(unknown)}; expected some of "
                             f"{', '.join(sorted(names))}.")
        base = head if isinstance(head, HeadOptions) else cls(head=str(head))
        params = dict(head_params or {})
        paper = {k: params.pop(k) for k in list(params) if k in PAPER_FLAGS}
        return replace(base, **paper, **kwargs, params={**base.params, **params})

    def head_params(self) -> dict[str, Any]:
        """The parameters passed to the head: the paper flags that are set, plus ``params``."""
        set_paper = {k: getattr(self, k) for k in PAPER_FLAGS if getattr(self, k) is not None}
        return {**set_paper, **self.params}


@dataclass
class CheckedOptions:
    """The options of one fit-head call, checked."""

    labels: tuple[str, str]
    positive: str
    negative: str
    head: str
    head_params: dict[str, Any]
    balance: str
    k_neighbors: int
    augment: int
    folds: int | None
    train_seed: int


def check_options(
    *, labels: Any, positive: str, head: HeadOptions, split: Any, folds: int | None, test_size: float,
    val_size: float, split_seed: int, run_id: str | None,
) -> CheckedOptions:
    """Every check that needs no data: fail fast, before anything is extracted."""

    lab = parse_labels(labels)
    if positive not in lab:
        raise UsageError(
            f"Expected --positive to be one of the --labels {lab[0]!r}, {lab[1]!r}; got {positive!r}. "
            "Fix: name the class that recall, AUROC and TP refer to."
        )
    key = str(head.head).strip().lower()
    if key not in HEADS:
        raise UsageError(f"Unknown --head {head.head!r}; choose one of: {', '.join(HEADS)}")
    if head.balance not in BALANCE_METHODS:
        raise UsageError(f"Unknown --balance {head.balance!r}; choose one of: {', '.join(BALANCE_METHODS)}")
    params = head.head_params()
    if key != "paper":
        given = [PAPER_FLAGS[p] for p in PAPER_FLAGS if p in params]
        if given:
            raise UsageError(
                f"{', '.join(given)} set(s) the paper's head; got --head {key}. Fix: drop the flag(s), "
                "or use --head paper."
            )
    if head.balance == "class-weight":
        if "class_weight" not in HEADS[key]._get_param_names():
            raise UsageError(f"--balance class-weight needs a head with class weights; got --head {key}.")
        if key == "knn":
            raise UsageError(
                "--balance class-weight cannot apply to --head knn (k-NN has no class weights); got both. "
                "Fix: use --balance smote or random with knn, or another head."
            )
        params["class_weight"] = "balanced"
    make_head(key, **params)  # refuses unknown parameters now, not after extraction
    k = positive_int(head.k_neighbors, "--k-neighbors")
    n_aug = positive_int(head.augment, "--augment", minimum=0)
    if folds is not None:
        folds = positive_int(folds, "--folds", minimum=2)
        if split is not None:
            raise UsageError(
                "Expected either --split FILE or --folds K; got both. A split file already fixes the folds. "
                "Fix: drop one of them."
            )
    fraction_to_folds(val_size, "--val-size")
    if folds is None and split is None:
        fraction_to_folds(test_size, "--test-size")
    for flag, v in (("--split-seed", split_seed), ("--train-seed", head.train_seed)):
        positive_int(v, flag, minimum=0)
    if run_id is not None:
        check_run_id(run_id)
    negative = lab[1] if positive == lab[0] else lab[0]
    return CheckedOptions(lab, positive, negative, key, params, head.balance, k, n_aug, folds, int(head.train_seed))
