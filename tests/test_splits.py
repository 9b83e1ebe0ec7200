"""Splits: patient-grouped, stratified, reproducible, leak-checked, written and read back."""

from __future__ import annotations

import numpy as np
import pytest

from xrayfx.exceptions import DataError, LeakageError, UsageError
from xrayfx.study.splits import Split, check_leakage, find_leakage, fraction_to_folds, group_codes, kfold_parts, make_holdout_split, make_kfold_split, split_summary
from xrayfx.study.split_files import align_to_split, read_split, write_split

N_POS, N_NEG = 140, 939  # the paper's data set


def synthetic(seed: int = 0, n_pos: int = N_POS, n_neg: int = N_NEG, per_patient=(1, 8)):
    """image ids, labels, patient ids: 1-8 images per patient, one class per patient."""
    rng = np.random.default_rng(seed)
    ids, labels, pids = [], [], []
    for label, n, prefix in (("covid", n_pos, "c"), ("normal", n_neg, "n")):
        done, p = 0, 0
        while done < n:
            m = min(int(rng.integers(per_patient[0], per_patient[1] + 1)), n - done)
            for j in range(m):
                ids.append(f"{prefix}{p:04d}_{j}.png")
                pids.append(f"{prefix}{p:04d}")
                labels.append(label)
            done += m
            p += 1
    return np.array(ids), np.array(labels), np.array(pids)


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module")
def holdout(data):
    ids, labels, pids = data
    return make_holdout_split(ids, labels, pids, seed=0)


def test_fraction_to_folds_hand_cases():
    assert fraction_to_folds(0.3) == (10, 3)
    assert fraction_to_folds(0.15) == (7, 1)  # 1/7 = 14.3%, within one point
    assert fraction_to_folds(0.2) == (5, 1)
    assert fraction_to_folds(0.25) == (4, 1)
    assert fraction_to_folds(0.5) == (2, 1)
    for bad in (0, 1, -0.1, 1.5, "0.3", True):
        with pytest.raises(UsageError):
            fraction_to_folds(bad)


def test_holdout_parts_are_patient_disjoint_and_cover_every_row(data, holdout):
    ids, labels, pids = data
    parts = {p: holdout.rows(p) for p in ("train", "val", "test")}
    assert sum(len(v) for v in parts.values()) == len(ids)
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(len(ids)))
    patients = {p: set(pids[idx]) for p, idx in parts.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert holdout.grouped_by == "patient_id"
    assert holdout.kind == "holdout" and np.all(holdout.fold == -1)
    assert check_leakage(holdout) == {"patient_ids": [], "image_ids": []}
    check_leakage(holdout, "val", "test")


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_holdout_is_stratified_and_sized_like_the_paper(data, seed):
    ids, labels, pids = data
    split = make_holdout_split(ids, labels, pids, seed=seed)
    overall = N_POS / (N_POS + N_NEG)  # 0.1297
    test = split.rows("test")
    assert abs(np.mean(labels[test] == "covid") - overall) < 0.02
    assert abs(len(test) / len(ids) - 0.30) < 0.03
    train, val = split.rows("train"), split.rows("val")
    # val is 1 of 7 folds of the non-test rows: ~14.3% of them
    assert abs(len(val) / (len(val) + len(train)) - 1 / 7) < 0.03
    assert np.any(labels[val] == "covid") and np.any(labels[val] == "normal")


def test_same_seed_same_split_other_seed_different(data):
    ids, labels, pids = data
    a = make_holdout_split(ids, labels, pids, seed=7)
    b = make_holdout_split(ids, labels, pids, seed=7)
    c = make_holdout_split(ids, labels, pids, seed=8)
    assert np.array_equal(a.split, b.split)
    assert not np.array_equal(a.split, c.split)


def test_without_patient_ids_groups_by_image_and_says_so(data):
    ids, labels, _ = data
    for pids in (None, [""] * len(ids), [None] * len(ids)):
        split = make_holdout_split(ids, labels, pids, seed=0)
        assert split.grouped_by == "image_id"
        notes = " ".join(split_summary(split)["notes"])
        assert "grouped by image id" in notes


def test_rows_sharing_an_image_id_stay_together():
    # image "x" appears under two different patients: both patients must stay in one part
    codes = group_codes(np.array(["x", "y", "x", "z", "w"]), np.array(["p1", "p1", "p2", "p3", ""]))
    assert codes[0] == codes[1] == codes[2]
    assert len({codes[0], codes[3], codes[4]}) == 3


def test_leakage_check_names_the_leaking_patient(holdout):
    train_row = holdout.rows("train")[0]
    test_row = holdout.rows("test")[0]
    pid = holdout.patient_id.copy()
    pid[test_row] = holdout.patient_id[train_row]  # hand-made leak
    leaky = Split(holdout.image_id, pid, holdout.label, holdout.split, holdout.fold, "patient_id")
    with pytest.raises(LeakageError) as e:
        check_leakage(leaky)
    msg = str(e.value)
    assert holdout.patient_id[train_row] in msg
    assert "1 patient id" in msg and "--allow-leakage" in msg and "without --split" in msg
    found = check_leakage(leaky, allow_leakage=True)
    assert found == {"patient_ids": [holdout.patient_id[train_row]], "image_ids": []}


def test_leakage_check_catches_a_duplicate_image_id_across_parts(holdout):
    val_row = holdout.rows("val")[0]
    train_row = holdout.rows("train")[0]
    image = holdout.image_id.copy()
    image[val_row] = holdout.image_id[train_row]
    pid = holdout.patient_id.copy()
    pid[val_row] = "somebody-else"
    leaky = Split(image, pid, holdout.label, holdout.split, holdout.fold, "patient_id")
    with pytest.raises(LeakageError, match="1 image id on both sides") as e:
        check_leakage(leaky)
    assert holdout.image_id[train_row] in str(e.value)
    assert find_leakage(leaky)["patient_ids"] == []


def test_leakage_message_lists_ten_and_counts(holdout):
    # every test row moved to patient ids used in train: many leaking patients
    train_pids = np.unique(holdout.patient_id[holdout.rows("train")])
    pid = holdout.patient_id.copy()
    test = holdout.rows("test")
    pid[test] = train_pids[np.arange(len(test)) % 25]
    leaky = Split(holdout.image_id, pid, holdout.label, holdout.split, holdout.fold, "patient_id")
    with pytest.raises(LeakageError, match=r"25 patient ids on both sides: .*\(15 more\)"):
        check_leakage(leaky)


def test_round_trip_write_read(tmp_path, holdout):
    path = write_split(holdout, tmp_path / "split.csv")
    assert path.read_text().splitlines()[0] == "image_id,patient_id,label,split,fold"
    back = read_split(path)
    for col in ("image_id", "patient_id", "label", "split", "fold"):
        assert np.array_equal(getattr(back, col), getattr(holdout, col)), col
    assert back.grouped_by == holdout.grouped_by
    assert np.array_equal(back.rows("test"), holdout.rows("test"))


def test_round_trip_without_patient_ids(tmp_path, data):
    ids, labels, _ = data
    split = make_holdout_split(ids, labels, None, seed=0)
    back = read_split(write_split(split, tmp_path / "s.csv"))
    assert back.grouped_by == "image_id"
    assert np.array_equal(back.split, split.split)


def _write(tmp_path, text: str):
    p = tmp_path / "split.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, expected",
    [
        ("image_id,label,split,fold\na,x,train,-1\n", "missing patient_id"),
        ("image_id,patient_id,label,split,fold\na,p,x,training,-1\nb,q,y,test,-1\n", "'training' on lines 2"),
        ("image_id,patient_id,label,split,fold\na,p,x,train,one\nb,q,y,test,-1\n", "'one'"),
        ("image_id,patient_id,label,split,fold\n,p,x,train,-1\nb,q,y,test,-1\n", "image_id on every row"),
        ("image_id,patient_id,label,split,fold\na,p,x,train,-1\nb,q,y,train,-1\n", "'test' rows"),
        ("image_id,patient_id,label,split,fold\na,p,x,test,0\nb,q,y,test,-1\n", "mixture"),
        ("image_id,patient_id,label,split,fold\na,p,x,train,0\nb,q,y,test,1\n", "split='test' on every row"),
        ("image_id,patient_id,label,split,fold\na,p,x,test,0\nb,q,y,test,2\n", "folds 0..K-1"),
        ("image_id,patient_id,label,split,fold\n", "only the header"),
        ("", "empty file"),
    ],
)
def test_read_split_refuses_malformed_files(tmp_path, text, expected):
    with pytest.raises(DataError, match="Fix:") as e:
        read_split(_write(tmp_path, text))
    assert expected in str(e.value)


def test_read_split_missing_file(tmp_path):
    with pytest.raises(DataError, match="without --split"):
        read_split(tmp_path / "nope.csv")


def test_too_few_groups_per_class_names_class_and_counts():
    ids = [f"i{i}" for i in range(40)]
    labels = ["covid"] * 5 + ["normal"] * 35
    pids = ["a", "a", "b", "c", "c"] + [f"n{i}" for i in range(35)]  # covid: 3 patients, 5 images
    with pytest.raises(DataError, match=r"class 'covid' has 3 groups \(5 images\)"):
        make_holdout_split(ids, labels, pids)  # 10 folds needed
    with pytest.raises(DataError, match="class 'covid' has 3 groups"):
        make_kfold_split(ids, labels, pids, folds=5)


def test_single_class_and_bad_arguments_are_refused(data):
    ids, labels, pids = data
    with pytest.raises(DataError, match="at least two classes"):
        make_holdout_split(ids, ["normal"] * len(ids), pids)
    with pytest.raises(UsageError, match="one label per image"):
        make_holdout_split(ids, labels[:-1], pids)
    with pytest.raises(UsageError):
        make_kfold_split(ids, labels, pids, folds=1)
    with pytest.raises(UsageError):
        make_holdout_split(ids, labels, pids, seed=-1)


@pytest.fixture(scope="module")
def kfold(data):
    ids, labels, pids = data
    return make_kfold_split(ids, labels, pids, folds=5, seed=0)


def test_kfold_every_row_is_test_exactly_once_and_folds_are_patient_disjoint(data, kfold):
    ids, labels, pids = data
    assert kfold.kind == "kfold" and kfold.n_folds == 5
    tests = [kfold.rows("test", f) for f in range(5)]
    assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(len(ids)))
    for f in range(5):
        for g in range(f + 1, 5):
            assert not set(pids[tests[f]]) & set(pids[tests[g]])
        assert abs(np.mean(labels[tests[f]] == "covid") - N_POS / (N_POS + N_NEG)) < 0.03


def test_kfold_parts_are_disjoint_deterministic_and_leak_free(data, kfold):
    ids, labels, pids = data
    for f in range(5):
        parts = kfold_parts(kfold, f)
        together = np.concatenate([parts["train"], parts["val"], parts["test"]])
        assert np.array_equal(np.sort(together), np.arange(len(ids)))
        assert not set(pids[parts["train"]]) & set(pids[parts["val"]])
        assert 0.11 < len(parts["val"]) / (len(parts["val"]) + len(parts["train"])) < 0.18
        check_leakage(kfold, fold=f)
        again = kfold_parts(kfold, f)
        assert np.array_equal(again["val"], parts["val"])
        assert np.array_equal(kfold.rows("val", f), parts["val"])
    assert not np.array_equal(kfold_parts(kfold, 0, seed=1)["val"], kfold_parts(kfold, 0)["val"])


def test_kfold_fold_argument_is_checked(kfold, holdout):
    with pytest.raises(UsageError, match="fold"):
        kfold.rows("train")
    with pytest.raises(UsageError, match="0..4"):
        kfold.rows("train", 5)
    with pytest.raises(UsageError, match="holdout"):
        holdout.rows("train", 0)
    with pytest.raises(UsageError, match="Unknown split part"):
        holdout.rows("validation")


def test_kfold_leak_between_folds_is_caught(kfold):
    pid = kfold.patient_id.copy()
    r0 = np.flatnonzero(kfold.fold == 0)[0]
    r1 = np.flatnonzero(kfold.fold == 1)[0]
    pid[r1] = kfold.patient_id[r0]
    leaky = Split(kfold.image_id, pid, kfold.label, kfold.split, kfold.fold, "patient_id")
    with pytest.raises(LeakageError, match=kfold.patient_id[r0]):
        check_leakage(leaky, fold=0)


def test_kfold_round_trip(tmp_path, kfold):
    back = read_split(write_split(kfold, tmp_path / "k.csv"))
    assert back.kind == "kfold" and back.n_folds == 5
    assert np.array_equal(back.fold, kfold.fold)
    assert np.array_equal(kfold_parts(back, 3)["val"], kfold_parts(kfold, 3)["val"])


def test_split_arrays_are_read_only(holdout):
    with pytest.raises(ValueError):
        holdout.split[0] = "test"


def test_align_to_split(holdout):
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(holdout))
    data_ids = holdout.image_id[perm]
    idx = align_to_split(holdout, data_ids, holdout.label[perm])
    assert np.array_equal(data_ids[idx], holdout.image_id)
    with pytest.raises(DataError, match="1 missing"):
        align_to_split(holdout, data_ids[1:])
    with pytest.raises(DataError, match="does not know"):
        align_to_split(holdout, np.append(data_ids, "new.png"))
    wrong = holdout.label[perm].copy()
    wrong[0] = "covid" if wrong[0] == "normal" else "normal"
    with pytest.raises(DataError, match="1 different"):
        align_to_split(holdout, data_ids, wrong)
