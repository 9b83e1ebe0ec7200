"""The paper head's fast NumPy trainer against the Keras reference (issue 14).

What is equal and what is only statistically equal:

* With no randomness left (dropout 0 and one batch per epoch, so the shuffle
  cannot matter) both trainers compute the same function of the same initial
  weights: histories and predictions agree to float32 rounding (1e-5).
* With dropout and batches of 8, the two draw shuffles and dropout masks from
  different random streams (NumPy's vs Keras'), so they follow different but
  equally likely paths: the test asks for the same validation AUROC within 0.02,
  per-epoch validation losses within 0.1 (an eighth of the first epoch's loss on
  these blobs), training losses within 0.1 on average over the epochs and 0.3 in
  any one epoch (dropout noise), and each trainer exactly reproducible for its seed.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from xrayfx.exceptions import UsageError
from xrayfx.study.heads import PaperHead, make_head
from xrayfx.study.heads.persist import load_head, save_head

KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def blobs(n: int, d: int = 24, shift: float = 0.8, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.where(rng.random(n) < 0.35, "covid", "normal")
    X = rng.normal(size=(n, d)) + shift * (y == "covid")[:, None]
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def data():
    X, y = blobs(220)
    return X[:160], y[:160], X[160:], y[160:]


def _fit(trainer: str, data, **params) -> PaperHead:
    X, y, Xv, yv = data
    return make_head("paper", trainer=trainer, **params).fit(X, y, validation_data=(Xv, yv))


def test_without_randomness_both_trainers_compute_the_same_thing(data):
    params = dict(dropout=0.0, batch_size=1000, epochs=6, learning_rate=0.05, class_weight="balanced", seed=3)
    ref, fast = _fit("reference", data, **params), _fit("fast", data, **params)
    for a, b in zip(ref.history_, fast.history_):
        for k in KEYS:
            assert b[k] == pytest.approx(a[k], abs=1e-5), (a, b)
    Xv = data[2]
    np.testing.assert_allclose(fast.predict_proba(Xv), ref.predict_proba(Xv), atol=1e-5)
    # The moving statistics BatchNorm uses at inference were updated the same way.
    for name in ("moving_mean", "moving_variance"):
        a = np.asarray(getattr(ref.model_.get_layer("batchnorm"), name))
        b = np.asarray(getattr(fast.model_.get_layer("batchnorm"), name))
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_with_dropout_and_batches_of_8_both_trainers_agree_statistically(data):
    params = dict(epochs=12, learning_rate=1e-2, seed=0)
    ref, fast = _fit("reference", data, **params), _fit("fast", data, **params)
    Xv, yv = data[2], data[3]
    auroc = [roc_auc_score(yv == "covid", h.predict_proba(Xv)[:, 0]) for h in (ref, fast)]
    assert abs(auroc[0] - auroc[1]) <= 0.02, auroc
    assert min(auroc) > 0.8, auroc
    ref_loss, fast_loss = (np.array([[r["loss"], r["val_loss"]] for r in h.history_]) for h in (ref, fast))
    # Validation loss (dropout off) follows the same curve; the training loss carries each epoch's own
    # dropout noise (measured up to 0.19 apart in single epochs), so its curve is compared on average.
    assert np.max(np.abs(ref_loss[:, 1] - fast_loss[:, 1])) <= 0.1, (ref_loss, fast_loss)
    assert abs(ref_loss[:, 0].mean() - fast_loss[:, 0].mean()) <= 0.1, (ref_loss, fast_loss)
    assert np.max(np.abs(ref_loss[:, 0] - fast_loss[:, 0])) <= 0.3, (ref_loss, fast_loss)
    assert fast.history_[-1]["loss"] < fast.history_[0]["loss"]


def test_the_fast_trainer_is_reproducible_and_the_seed_matters(data):
    a, b = _fit("fast", data, epochs=3, seed=1), _fit("fast", data, epochs=3, seed=1)
    assert a.history_ == b.history_
    np.testing.assert_array_equal(a.predict_proba(data[2]), b.predict_proba(data[2]))
    c = _fit("fast", data, epochs=3, seed=2)
    assert c.history_ != a.history_


def test_fast_head_saves_and_loads_as_the_same_keras_file(data, tmp_path):
    head = _fit("fast", data, epochs=2)
    record = save_head(head, tmp_path)
    back = load_head(tmp_path, record)
    np.testing.assert_allclose(back.predict_proba(data[2]), head.predict_proba(data[2]), atol=1e-6)
    assert back.history_ == head.history_


def test_fast_trainer_takes_fresh_rows_each_epoch(data):
    X, y, Xv, yv = data
    seen = []
    rng = np.random.default_rng(0)

    def epoch_data(e):
        seen.append(e)
        return X + rng.normal(scale=0.05, size=X.shape).astype(np.float32), y

    head = make_head("paper", trainer="fast", epochs=3, learning_rate=1e-2)
    head.fit(X, y, validation_data=(Xv, yv), epoch_data=epoch_data)
    assert seen == [0, 1, 2] and len(head.history_) == 3
    assert all(r["val_loss"] is not None for r in head.history_)
    with pytest.raises(ValueError, match="features"):
        make_head("paper", epochs=1).fit(X, y, epoch_data=lambda e: (X[:, :5], y))


def test_an_unknown_trainer_is_a_usage_error(data):
    with pytest.raises(UsageError, match="fast, reference"):
        make_head("paper", trainer="xla").fit(data[0], data[1])


def test_fit_head_trainer_flag_belongs_to_the_paper_head(cxr_subset, capsys, tmp_path):
    from conftest import run_cli_inprocess

    manifest = cxr_subset(4)
    code, out, err = run_cli_inprocess(
        ["fit-head", "--model", "mobilenet", "--data", str(manifest), "--cache-dir", str(tmp_path / "c"),
         "--head", "logreg", "--trainer", "fast"], capsys)
    assert code == 2 and "--trainer" in out + err and "--head paper" in out + err
    code, out, err = run_cli_inprocess(
        ["fit-head", "--model", "mobilenet", "--data", str(manifest), "--cache-dir", str(tmp_path / "c"),
         "--trainer", "xla"], capsys)
    assert code == 2 and "xla" in out + err and "fast" in out + err and "reference" in out + err
