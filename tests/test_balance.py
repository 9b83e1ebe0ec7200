"""Balancing touches training rows only; SMOTE's minimum is our own error."""

from __future__ import annotations

import numpy as np
import pytest

from xrayfx.study.balance import BALANCE_METHODS, TrainingRows, balance
from xrayfx.exceptions import BalanceError, DataError, LeakageError, UsageError
from xrayfx.study.splits import Split, kfold_parts, make_holdout_split, make_kfold_split


def _data(n_pos=60, n_neg=300, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.array(["covid"] * n_pos + ["normal"] * n_neg)
    pids = np.array([f"c{i // 3}" for i in range(n_pos)] + [f"n{i // 2}" for i in range(n_neg)])
    ids = np.array([f"img{i}" for i in range(n_pos + n_neg)])
    X = rng.normal(size=(n_pos + n_neg, 6)) + (labels == "covid")[:, None] * 2.0
    return ids, labels, pids, X


@pytest.fixture(scope="module")
def setup():
    ids, labels, pids, X = _data()
    split = make_holdout_split(ids, labels, pids, seed=0)
    return split, X


def _hand_split(n_train_pos: int, n_train_neg: int = 12) -> tuple[Split, np.ndarray]:
    """A hand-made holdout split: train has n_train_pos covid rows; 2 covid + 4 normal in test."""
    labels = ["covid"] * n_train_pos + ["normal"] * n_train_neg + ["covid"] * 2 + ["normal"] * 4
    part = ["train"] * (n_train_pos + n_train_neg) + ["test"] * 6
    n = len(labels)
    split = Split(
        image_id=np.array([f"i{i}" for i in range(n)]),
        patient_id=np.array([f"p{i}" for i in range(n)]),
        label=np.array(labels),
        split=np.array(part),
        fold=np.full(n, -1),
        grouped_by="patient_id",
    )
    X = np.random.default_rng(1).normal(size=(n, 3))
    return split, X


def test_smote_grows_only_the_training_set_to_balanced_counts(setup):
    split, X = setup
    X_before = X.copy()
    val_rows, test_rows = split.rows("val"), split.rows("test")
    X_val, X_test = X[val_rows].copy(), X[test_rows].copy()
    train = TrainingRows.from_split(split, X)
    counts = train.counts()
    assert len(train) == len(split.rows("train")) == sum(counts.values())

    out = balance(train, "smote", k_neighbors=5, seed=0)

    # held-out data: same values, same sizes, taken from the split as before
    assert np.array_equal(X, X_before)
    assert np.array_equal(X[split.rows("val")], X_val) and len(split.rows("val")) == len(val_rows)
    assert np.array_equal(X[split.rows("test")], X_test) and len(split.rows("test")) == len(test_rows)
    # training set: grown to the majority count in each class
    majority = max(counts.values())
    assert out.counts_before == counts
    assert out.counts_after == {"covid": majority, "normal": majority}
    assert out.n_before == len(train) and out.n_after == 2 * majority == len(out.X) == len(out.y)
    assert out.method == "smote" and out.k_neighbors == 5 and out.sample_weight is None
    # the original training rows come first and are unchanged; synthetic rows are new
    assert np.array_equal(out.X[: len(train)], train.X)
    heldout = {tuple(r) for r in X[np.concatenate([val_rows, test_rows])]}
    assert not any(tuple(r) in heldout for r in out.X)


def test_smote_is_reproducible_with_seed(setup):
    split, X = setup
    train = TrainingRows(split, X)
    a, b = balance(train, seed=3), balance(train, seed=3)
    c = balance(train, seed=4)
    assert np.array_equal(a.X, b.X)
    assert not np.array_equal(a.X, c.X)


def test_random_oversampling_copies_training_rows(setup):
    split, X = setup
    train = TrainingRows(split, X)
    out = balance(train, "random", seed=0)
    majority = max(train.counts().values())
    assert out.counts_after == {"covid": majority, "normal": majority}
    train_set = {tuple(r) for r in train.X}
    assert all(tuple(r) in train_set for r in out.X)


def test_none_returns_the_training_rows_unchanged(setup):
    split, X = setup
    train = TrainingRows(split, X)
    out = balance(train, "none")
    assert np.array_equal(out.X, X[split.rows("train")])
    assert np.array_equal(out.y, split.label[split.rows("train")])
    assert out.counts_after == out.counts_before and out.sample_weight is None


def test_class_weight_gives_balanced_weights_by_hand():
    split, X = _hand_split(n_train_pos=4, n_train_neg=12)  # 16 training rows
    out = balance(TrainingRows(split, X), "class-weight")
    # n / (n_classes * n_class): covid 16 / (2 * 4) = 2.0, normal 16 / (2 * 12) = 0.6667
    assert out.class_weight == pytest.approx({"covid": 2.0, "normal": 16 / 24})
    expected = np.array([2.0] * 4 + [16 / 24] * 12)
    assert np.allclose(out.sample_weight, expected)
    assert out.n_after == out.n_before == 16
    assert out.summary()["class_weight"] == pytest.approx({"covid": 2.0, "normal": 16 / 24})


def test_smote_too_small_minority_names_class_count_and_k():
    split, X = _hand_split(n_train_pos=3)
    with pytest.raises(BalanceError) as e:
        balance(TrainingRows(split, X), "smote", k_neighbors=5)
    msg = str(e.value)
    assert "k_neighbors=5" in msg and "at least 6" in msg and "got 3 of class 'covid'" in msg
    assert "Fix:" in msg


def test_smote_boundary_k_plus_one_samples_is_enough():
    split, X = _hand_split(n_train_pos=6)
    out = balance(TrainingRows(split, X), "smote", k_neighbors=5)
    assert out.counts_after == {"covid": 12, "normal": 12}
    split5, X5 = _hand_split(n_train_pos=5)
    with pytest.raises(BalanceError, match="got 5 of class 'covid'"):
        balance(TrainingRows(split5, X5), "smote", k_neighbors=5)
    # an explicit smaller k is the user's choice, and works
    assert balance(TrainingRows(split5, X5), "smote", k_neighbors=4).n_after == 24


@pytest.mark.parametrize("thing", ["array", "tuple", "split"])
def test_balance_refuses_anything_but_training_rows(setup, thing):
    split, X = setup
    arg = {"array": X, "tuple": (X, split.label), "split": split}[thing]
    with pytest.raises(UsageError, match="TrainingRows"):
        balance(arg, "smote")


def test_training_rows_come_only_from_a_split(setup):
    split, X = setup
    with pytest.raises(UsageError, match="made from a Split"):
        TrainingRows(X, split.label)
    with pytest.raises(DataError, match="one feature row per row of the split"):
        TrainingRows(split, X[split.rows("test")])
    train = TrainingRows(split, X)
    assert np.array_equal(train.rows, split.rows("train"))
    with pytest.raises(ValueError):
        train.X[0, 0] = 99.0  # read-only
    with pytest.raises(AttributeError):
        train.foo = 1  # no back door to attach other rows


def test_with_extra_adds_jittered_training_rows_and_refuses_heldout_rows(setup):
    split, X = setup
    train = TrainingRows(split, X)
    tr = split.rows("train")
    jitter = X[tr[:10]] + 0.01
    more = train.with_extra(jitter, split.label[tr[:10]])
    assert len(more) == len(train) + 10 and more.n_extra == 10 and len(train) == len(tr)
    assert np.array_equal(more.X[-10:], jitter)
    out = balance(more, "smote")
    assert out.n_before == len(train) + 10
    test_row = split.rows("test")[0]
    with pytest.raises(LeakageError, match="validation/test"):
        train.with_extra(X[[test_row]], split.label[[test_row]])
    X32 = X.astype(np.float32)  # the same values in another dtype are still the same row
    with pytest.raises(LeakageError):
        TrainingRows(split, X32).with_extra(X32[[test_row]].astype(np.float64), split.label[[test_row]])
    with pytest.raises(LeakageError):
        train.with_extra(X[[split.rows("val")[0]]], split.label[[split.rows("val")[0]]])
    with pytest.raises(UsageError, match="classes of the training rows"):
        train.with_extra(jitter[:1], ["pneumonia"])
    with pytest.raises(UsageError, match="features"):
        train.with_extra(jitter[:, :3], split.label[tr[:10]])


def test_kfold_training_rows_are_the_folds_training_part():
    ids, labels, pids, X = _data()
    split = make_kfold_split(ids, labels, pids, folds=3, seed=0)
    for f in range(3):
        train = TrainingRows.from_split(split, X, fold=f)
        assert np.array_equal(train.rows, kfold_parts(split, f)["train"])
        assert train.fold == f
    with pytest.raises(UsageError, match="fold"):
        TrainingRows(split, X)


def test_unknown_method_and_bad_k(setup):
    split, X = setup
    train = TrainingRows(split, X)
    with pytest.raises(UsageError, match="smote, random, class-weight, none"):
        balance(train, "adasyn")
    with pytest.raises(UsageError, match="k_neighbors"):
        balance(train, "smote", k_neighbors=0)
    assert BALANCE_METHODS == ("smote", "random", "class-weight", "none")


def test_single_class_training_rows_cannot_be_balanced():
    split, X = _hand_split(n_train_pos=0)
    with pytest.raises(BalanceError, match="two classes"):
        balance(TrainingRows(split, X), "smote")
