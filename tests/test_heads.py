"""Heads: the sklearn contract, the paper's Keras head, and pickle-free, hash-checked persistence."""

from __future__ import annotations

import csv
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone, is_classifier
from sklearn.metrics import roc_auc_score
from sklearn.utils import estimator_checks

from xrayfx.exceptions import IntegrityError, UnsafeModelError, UsageError
from xrayfx.study.heads import HEADS, KNNHead, LogisticRegressionHead, PaperHead, make_head
from xrayfx.study.heads.persist import (
    ALLOWED_TYPES,
    _keras_safe_load,
    load_head,
    save_head,
    skops_types,
    write_history_csv,
)
from xrayfx.util import sha256_file

N_FEATURES = 32
#: Small, quick settings that let the paper head learn the synthetic blobs.
FAST_PAPER = dict(epochs=10, learning_rate=1e-2)


def blobs(n: int = 200, d: int = N_FEATURES, shift: float = 0.8, seed: int = 0):
    """Two Gaussian blobs with string labels ("covid" about a third of rows)."""
    rng = np.random.default_rng(seed)
    y = np.where(rng.random(n) < 0.35, "covid", "normal")
    X = rng.normal(size=(n, d)) + shift * (y == "covid")[:, None]
    return X.astype(np.float32), y


def params_for(name: str) -> dict:
    return dict(FAST_PAPER) if name == "paper" else {}


@pytest.fixture(scope="module")
def data():
    X, y = blobs()
    return X[:150], y[:150], X[150:], y[150:]


@pytest.fixture(scope="module")
def fitted(data):
    """One fitted head per registered name (the paper head with validation data)."""
    X, y, Xt, yt = data
    out = {}
    for name in HEADS:
        head = make_head(name, **params_for(name))
        if name == "paper":
            head.fit(X, y, validation_data=(Xt, yt))
        else:
            head.fit(X, y)
        out[name] = head
    return out


# --------------------------------------------------------------- registry
def test_make_head_unknown_name_lists_the_valid_ones():
    with pytest.raises(UsageError) as err:
        make_head("random-forest")
    for name in HEADS:
        assert name in str(err.value)


def test_make_head_unknown_parameter_is_a_usage_error():
    with pytest.raises(UsageError, match="n_estimators"):
        make_head("logreg", n_estimators=10)


def test_paper_head_has_the_papers_defaults_and_architecture():
    head = make_head("paper")
    assert (head.dropout, head.units, head.activity_l1, head.activity_l2) == (0.5, 128, 1e-3, 1e-3)
    assert (head.learning_rate, head.momentum, head.batch_size, head.epochs) == (1e-4, 0.5, 8, 100)
    head.classes_ = np.array(["covid", "normal"])
    model = head._build(N_FEATURES, 2)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["InputLayer", "Dropout", "Dense", "BatchNormalization", "Dense"]
    dropout, hidden, _, out = model.layers[1:]
    assert dropout.rate == 0.5
    assert hidden.units == 128 and hidden.activation.__name__ == "relu"
    assert out.units == 2 and out.activation.__name__ == "softmax"
    for dense in (hidden, out):
        reg = dense.activity_regularizer.get_config()
        assert reg["l1"] == pytest.approx(1e-3) and reg["l2"] == pytest.approx(1e-3)
    opt = model.optimizer
    assert type(opt).__name__ == "SGD"
    assert float(opt.learning_rate) == pytest.approx(1e-4) and opt.momentum == pytest.approx(0.5)


# ------------------------------------------------------- sklearn contract
@pytest.mark.parametrize("name", list(HEADS))
def test_head_learns_separable_blobs(name, fitted, data):
    _, _, Xt, yt = data
    head = fitted[name]
    assert is_classifier(head)
    assert head.classes_.tolist() == ["covid", "normal"]
    proba = head.predict_proba(Xt)
    assert proba.shape == (len(yt), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    auroc = roc_auc_score(yt == "covid", proba[:, 0])
    assert auroc > 0.95, f"{name}: AUROC {auroc:.3f}"
    pred = head.predict(Xt)
    assert set(pred) <= {"covid", "normal"}
    assert np.array_equal(pred, head.classes_[proba.argmax(axis=1)])
    assert head.n_features_in_ == N_FEATURES


@pytest.mark.parametrize("name", list(HEADS))
def test_n_features_mismatch_uses_sklearns_wording(name, fitted):
    head = fitted[name]
    expected = f"X has 16 features, but {type(head).__name__} is expecting {N_FEATURES} features as input."
    with pytest.raises(ValueError, match=re.escape(expected)):
        head.predict_proba(np.zeros((3, 16), dtype=np.float32))


def test_n_features_message_matches_the_issue_example():
    head = LogisticRegressionHead().fit(*blobs(n=40, d=2048, shift=1.0))
    expected = "X has 1536 features, but LogisticRegressionHead is expecting 2048 features as input."
    with pytest.raises(ValueError, match=re.escape(expected)):
        head.predict(np.zeros((2, 1536)))


@pytest.mark.parametrize("name", list(HEADS))
def test_clone_and_params_follow_the_estimator_contract(name, fitted):
    cls = HEADS[name]
    head = cls(**params_for(name))
    # parameters only, nothing learned, before fit
    assert set(vars(head)) == set(cls._get_param_names())
    assert head.get_params() == clone(head).get_params()
    assert clone(head).set_params(**head.get_params()).get_params() == head.get_params()
    # a clone of a fitted head is unfitted, with the same parameters
    cloned = clone(fitted[name])
    assert cloned.get_params() == fitted[name].get_params()
    assert not [k for k in vars(cloned) if k.endswith("_")]
    # learned state ends in "_"
    learned = set(vars(fitted[name])) - set(cls._get_param_names())
    assert learned and all(k.endswith("_") for k in learned), learned
    assert {"classes_", "n_features_in_", "history_", "model_"} <= learned
    # scikit-learn's own checks that need no fitting
    estimator_checks.check_no_attributes_set_in_init(cls.__name__, cls())
    estimator_checks.check_parameters_default_constructible(cls.__name__, cls())
    estimator_checks.check_get_params_invariance(cls.__name__, cls())
    estimator_checks.check_set_params(cls.__name__, cls())


def test_classical_heads_have_empty_history(fitted):
    for name in HEADS:
        if name != "paper":
            assert fitted[name].history_ == []


def test_one_class_in_training_is_a_usage_error():
    X, _ = blobs(n=20)
    with pytest.raises(UsageError, match="at least 2 classes"):
        LogisticRegressionHead().fit(X, ["normal"] * 20)


@pytest.mark.parametrize("name", ["logreg", "linear-svm", "rbf-svm"])
def test_balanced_class_weight_is_accepted(name, data):
    X, y, Xt, yt = data
    head = make_head(name, class_weight="balanced").fit(X, y)
    assert roc_auc_score(yt == "covid", head.predict_proba(Xt)[:, 0]) > 0.95


def test_knn_refuses_class_weight_rather_than_ignoring_it(data):
    X, y, _, _ = data
    with pytest.raises(UsageError, match="KNNHead cannot weight classes"):
        KNNHead(class_weight="balanced").fit(X, y)


def test_class_weight_dict_must_name_training_labels(data):
    X, y, _, _ = data
    with pytest.raises(UsageError, match="not training classes"):
        LogisticRegressionHead(class_weight={"pneumonia": 2.0}).fit(X, y)


# ---------------------------------------------------------- paper head
def test_paper_history_has_one_row_per_epoch_with_four_metrics(fitted, tmp_path):
    head = fitted["paper"]
    assert [row["epoch"] for row in head.history_] == list(range(1, FAST_PAPER["epochs"] + 1))
    for row in head.history_:
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert isinstance(row[key], float) and np.isfinite(row[key]), (key, row)
    assert head.history_[-1]["loss"] < head.history_[0]["loss"]
    path = tmp_path / "history.csv"
    write_history_csv(head.history_, path)
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert len(rows) == FAST_PAPER["epochs"]
    assert float(rows[-1]["val_accuracy"]) == pytest.approx(head.history_[-1]["val_accuracy"])


def test_paper_without_validation_leaves_val_metrics_empty(tmp_path):
    X, y = blobs(n=40)
    head = PaperHead(epochs=2).fit(X, y)
    assert all(row["val_loss"] is None and row["val_accuracy"] is None for row in head.history_)
    write_history_csv(head.history_, tmp_path / "h.csv")
    assert (tmp_path / "h.csv").read_text().splitlines()[1].endswith(",,")


def test_paper_same_seed_same_predictions():
    X, y = blobs(n=60)
    a = PaperHead(epochs=3, seed=7).fit(X, y).predict_proba(X)
    b = PaperHead(epochs=3, seed=7).fit(X, y).predict_proba(X)
    c = PaperHead(epochs=3, seed=8).fit(X, y).predict_proba(X)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_paper_epoch_data_gives_fresh_rows_each_epoch():
    X, y = blobs(n=60)
    calls = []

    def epoch_data(epoch: int):
        calls.append(epoch)
        rng = np.random.default_rng(epoch)
        return X + rng.normal(scale=0.01, size=X.shape).astype(np.float32), y

    head = PaperHead(epochs=3).fit(X, y, validation_data=(X, y), epoch_data=epoch_data)
    assert calls == [0, 1, 2]
    assert [row["epoch"] for row in head.history_] == [1, 2, 3]
    assert all(row["val_loss"] is not None for row in head.history_)


def test_paper_epoch_data_must_match_the_training_shape():
    X, y = blobs(n=40)
    with pytest.raises(ValueError, match="is expecting 32 features"):
        PaperHead(epochs=1).fit(X, y, epoch_data=lambda e: (X[:, :8], y))
    with pytest.raises(UsageError, match="must return a pair"):
        PaperHead(epochs=1).fit(X, y, epoch_data=lambda e: X)


def test_paper_unknown_validation_label_is_a_usage_error():
    X, y = blobs(n=40)
    with pytest.raises(UsageError, match="'pneumonia'"):
        PaperHead(epochs=1).fit(X, y, validation_data=(X[:2], ["pneumonia", "covid"]))


def test_paper_balanced_class_weight_trains():
    X, y = blobs(n=60)
    head = PaperHead(epochs=2, class_weight="balanced").fit(X, y)
    assert len(head.history_) == 2


@pytest.mark.parametrize("bad", [dict(dropout=1.0), dict(epochs=0), dict(batch_size=2.5)])
def test_paper_bad_parameters_are_usage_errors(bad):
    X, y = blobs(n=20)
    with pytest.raises(UsageError):
        PaperHead(**bad).fit(X, y)


# --------------------------------------------------------- persistence
@pytest.mark.parametrize("name", list(HEADS))
def test_saved_head_reloads_and_predicts_identically(name, fitted, data, tmp_path):
    _, _, Xt, _ = data
    head = fitted[name]
    record = save_head(head, tmp_path)
    json.dumps(record)  # goes into the run's JSON metadata as is
    assert record["class"] == type(head).__name__
    assert record["kind"] == ("paper" if name == "paper" else "sklearn")
    assert record["sha256"] == sha256_file(tmp_path / record["file"])
    assert record["classes"] == ["covid", "normal"]
    assert record["params"] == json.loads(json.dumps(head.get_params()))
    loaded = load_head(tmp_path, record)
    assert type(loaded) is type(head)
    assert loaded.get_params() == head.get_params()
    assert np.array_equal(loaded.predict_proba(Xt), head.predict_proba(Xt))
    assert np.array_equal(loaded.predict(Xt), head.predict(Xt))
    assert loaded.n_features_in_ == head.n_features_in_
    assert loaded.history_ == head.history_
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob(".head.*"))


@pytest.mark.parametrize("name", list(HEADS))
def test_saved_files_hold_no_pickle(name, fitted, tmp_path):
    record = save_head(fitted[name], tmp_path)
    with zipfile.ZipFile(tmp_path / record["file"]) as archive:
        for member in archive.namelist():
            head = archive.read(member)[:2]
            assert not member.endswith((".pkl", ".pickle")), member
            assert head[:1] != b"\x80", f"{member} starts like a pickle"


@pytest.mark.parametrize("name", list(HEADS))
def test_one_byte_change_is_refused(name, fitted, tmp_path):
    record = save_head(fitted[name], tmp_path)
    path = tmp_path / record["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        load_head(tmp_path, record)


def test_changed_paper_metadata_is_refused(fitted, tmp_path):
    record = save_head(fitted["paper"], tmp_path)
    meta = tmp_path / record["meta_file"]
    meta.write_text(meta.read_text().replace('"covid"', '"COVID"', 1))
    with pytest.raises(IntegrityError, match="head metadata"):
        load_head(tmp_path, record)


def _lambda_model_file(path: Path) -> None:
    import keras

    inputs = keras.Input((N_FEATURES,))
    h = keras.layers.Lambda(lambda x: x * 2.0, output_shape=(N_FEATURES,))(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(h)
    keras.Model(inputs, outputs).save(path)


def test_keras_file_with_a_lambda_layer_is_refused(fitted, tmp_path):
    record = save_head(fitted["paper"], tmp_path)
    path = tmp_path / record["file"]
    _lambda_model_file(path)
    record["sha256"] = sha256_file(path)  # the hash check passes: the content is the problem
    with pytest.raises(UnsafeModelError, match="Lambda"):
        load_head(tmp_path, record)


def test_keras_safe_mode_itself_refuses_the_lambda_layer(tmp_path):
    # Behind the allow-list of config classes, Keras' safe_mode is the second gate.
    path = tmp_path / "lambda.keras"
    _lambda_model_file(path)
    with pytest.raises(UnsafeModelError, match="safe mode"):
        _keras_safe_load(path)


def test_safe_mode_holds_even_after_unsafe_deserialization_was_enabled_globally(tmp_path):
    # Keras lets this global switch override an explicit safe_mode=True; xrayfx pins it.
    import keras
    from keras.src.backend.common import global_state

    path = tmp_path / "lambda.keras"
    _lambda_model_file(path)
    before = global_state.get_global_attribute("safe_mode_saving")
    try:
        keras.config.enable_unsafe_deserialization()
        with pytest.raises(UnsafeModelError, match="safe mode"):
            _keras_safe_load(path)
    finally:
        global_state.set_global_attribute("safe_mode_saving", before)


def test_skops_file_with_a_type_outside_the_allow_list_is_refused(fitted, data, tmp_path):
    import skops.io
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.naive_bayes import GaussianNB

    X, y, _, _ = data
    record = save_head(fitted["logreg"], tmp_path)
    path = tmp_path / record["file"]
    codes = (y == "normal").astype(int)
    skops.io.dump(Pipeline([("scale", StandardScaler()), ("clf", GaussianNB())]).fit(X, codes), path)
    record["sha256"] = sha256_file(path)
    # skops' own defaults would trust this file; xrayfx's list is stricter
    assert skops.io.get_untrusted_types(file=path) == []
    with pytest.raises(UnsafeModelError, match="GaussianNB"):
        load_head(tmp_path, record)


def test_skops_file_of_another_head_type_is_refused(fitted, tmp_path):
    knn_dir, logreg_dir = tmp_path / "knn", tmp_path / "logreg"
    knn_record = save_head(fitted["knn"], knn_dir)
    record = save_head(fitted["logreg"], logreg_dir)
    (logreg_dir / "head.skops").write_bytes((knn_dir / "head.skops").read_bytes())
    record["sha256"] = knn_record["sha256"]
    with pytest.raises(IntegrityError, match="KNeighborsClassifier"):
        load_head(logreg_dir, record)


@pytest.mark.parametrize(
    "name, params",
    [
        ("logreg", dict(class_weight="balanced")),
        ("logreg", dict(class_weight={"covid": 3.0, "normal": 1.0})),
        ("linear-svm", dict(class_weight="balanced")),
        ("rbf-svm", dict(class_weight={"covid": 3.0, "normal": 1.0})),
        ("knn", dict(weights="uniform", n_neighbors=3)),
    ],
)
def test_allow_list_covers_every_classical_configuration(name, params, data, tmp_path):
    X, y, Xt, _ = data
    head = make_head(name, **params).fit(X, y)
    record = save_head(head, tmp_path)
    assert set(skops_types(tmp_path / record["file"])) <= set(ALLOWED_TYPES)
    assert np.array_equal(load_head(tmp_path, record).predict_proba(Xt), head.predict_proba(Xt))


def test_record_with_a_path_in_file_is_refused(fitted, tmp_path):
    record = save_head(fitted["knn"], tmp_path)
    record["file"] = "../head.skops"
    with pytest.raises(IntegrityError, match="plain file name"):
        load_head(tmp_path, record)


def test_saving_an_unfitted_head_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="unfitted"):
        save_head(LogisticRegressionHead(), tmp_path)
