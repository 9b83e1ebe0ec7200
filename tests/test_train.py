"""fit_head and predict end to end on real radiographs, plus leakage, balance and run integrity.

The data here (Cohen COVID-19 images against NIH adults and Mooney children)
lets a model separate the classes by *source and age*: every COVID-19 image
comes from one publication-figure collection, the normals from two other
archives, half of them children. A high AUROC on it shows that the pipeline
works (extraction, split, balance, head, metrics); it says nothing about
medicine. The shuffled-label control shows that the pipeline does not invent
signal.
"""

from __future__ import annotations

import csv
import hashlib
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import absolute_rows, write_manifest
from xrayfx.exceptions import BalanceError, IntegrityError, LeakageError, UsageError
from xrayfx.study.runs import load_run, resolve_run
from xrayfx.study.parts import read_parts
from xrayfx.study.fit import fit_head, predict
from xrayfx.util import sha256_file

PRED_COLUMNS = ["image_id", "path", "patient_id", "source", "view", "age_group", "label", "p_covid", "p_normal",
                "split", "fold"]


def _unique_by_bytes(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Drop rows whose file bytes repeat an earlier row (the shared manifest has a few)."""
    seen: set[str] = set()
    out = []
    for r in rows:
        h = hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest()
        if h not in seen:
            seen.add(h)
            out.append(r)
    return out


def _pick(shared_rows, n_covid: int, n_nih: int, n_mooney: int) -> list[dict[str, str]]:
    rows = (
        [r for r in shared_rows if r["source"] == "cohen" and r["label"] == "covid"][:n_covid]
        + [r for r in shared_rows if r["source"] == "nih"][:n_nih]
        + [r for r in shared_rows if r["source"] == "mooney"][:n_mooney]
    )
    return _unique_by_bytes(absolute_rows(rows))


@pytest.fixture(scope="module")
def real_rows(shared_rows) -> list[dict[str, str]]:
    """About 500 real radiographs: 200 Cohen COVID-19, 100 NIH adult normals, 200 Mooney child normals."""
    return _pick(shared_rows, 200, 100, 200)


@pytest.fixture(scope="module")
def real_manifest(real_rows, tmp_path_factory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("train") / "real.csv", real_rows)


def _fit(manifest, mobilenet_config, cache, run_id, **kw):
    return fit_head(data=manifest, config=mobilenet_config, cache_dir=cache, run_id=run_id, progress=False,
                    log=None, **kw)


@pytest.fixture(scope="module")
def logreg_run(real_manifest, mobilenet_config, mobilenet_export, session_cache):
    return _fit(real_manifest, mobilenet_config, session_cache, "train-logreg", head="logreg")


@pytest.fixture(scope="module")
def paper_run(real_manifest, mobilenet_config, mobilenet_export, session_cache):
    """The paper's head with all its defaults (100 epochs, SGD 1e-4, batch 8, SMOTE)."""
    return _fit(real_manifest, mobilenet_config, session_cache, "train-paper", head="paper")


def _split_of(run):
    """The run's split.csv as a holdout-shaped Split (its first fold for k-fold runs)."""
    return read_parts(run.path / "split.csv", seed=0, val_size=0.15).base


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# Signal and its control


@pytest.mark.parametrize("which", ["paper_run", "logreg_run"])
def test_heads_separate_this_confounded_data_above_0_9(which, request):
    """Pipeline check, not medicine: source and age separate these classes (see the module docstring)."""
    run = request.getfixturevalue(which)
    test = run.metrics["test"]
    assert test["label_counts"]["covid"] >= 40 and test["label_counts"]["normal"] >= 60
    assert test["auroc"] > 0.9, test["auroc"]
    assert test["auroc_ci"]["lo"] <= test["auroc"] <= test["auroc_ci"]["hi"]


@pytest.mark.parametrize("head", ["paper", "logreg"])
def test_labels_shuffled_before_the_split_end_below_0_7(head, real_rows, tmp_path, mobilenet_config,
                                                        mobilenet_export, session_cache):
    labels = [r["label"] for r in real_rows]
    random.Random(0).shuffle(labels)
    rows = [{**r, "label": lab} for r, lab in zip(real_rows, labels)]
    manifest = write_manifest(tmp_path / "shuffled.csv", rows)
    run = _fit(manifest, mobilenet_config, session_cache, f"train-shuffled-{head}", head=head)
    assert run.metrics["test"]["auroc"] < 0.7, run.metrics["test"]["auroc"]


# ---------------------------------------------------------------------------------------------
# The run folder


def test_run_folder_holds_every_file_with_its_sha256(logreg_run, real_manifest, session_cache):
    run = logreg_run
    assert run.path == session_cache / "runs" / "train-logreg"
    files = run.config["files"]
    assert set(files) == {"split.csv", "head.skops", "history.csv", "predictions.csv", "metrics.json",
                          "summary.txt", "image_hashes.csv", "near_duplicates.csv"}
    for name, digest in files.items():
        assert sha256_file(run.path / name) == digest
    c = run.config
    assert c["backbone"] == "mobilenet" and len(c["fingerprint"]) == 64
    assert c["runtime"] == "onnxruntime" and c["precision"] == "fp32"
    assert c["preprocessing"]["normalise"] == "tf" and c["weights"]["kind"] == "file"
    assert c["data"]["path"] == str(real_manifest.resolve())
    assert c["data"]["sha256"] == sha256_file(real_manifest)
    assert c["head"]["name"] == "logreg" and c["balance"]["method"] == "smote" and c["augment"]["n"] == 0
    assert c["seeds"] == {"weights": 0, "split": 0, "train": 0}
    assert "numpy" in c["versions"] and "scikit-learn" in c["versions"]
    assert c["split"]["grouped_by"] == "patient_id" and c["split"]["kind"] == "holdout"
    assert c["split"]["sha256"] == files["split.csv"] and c["split"]["from"]["file"] is None
    assert not list((session_cache / "runs").glob(".*partial")), "no partial run folder is left behind"


def test_predictions_have_one_row_per_validation_and_test_image(logreg_run):
    preds = _read_csv(logreg_run.path / "predictions.csv")
    with open(logreg_run.path / "predictions.csv") as f:
        assert f.readline().strip().split(",") == PRED_COLUMNS
    split = _split_of(logreg_run)
    for part in ("val", "test"):
        want = sorted(split.image_id[split.split == part].tolist())
        got = sorted(r["image_id"] for r in preds if r["split"] == part)
        assert got == want
    assert {r["fold"] for r in preds} == {"-1"}
    for r in preds:
        assert abs(float(r["p_covid"]) + float(r["p_normal"]) - 1) < 1e-9
    test = [r for r in preds if r["split"] == "test"]
    conf = logreg_run.metrics["test"]["argmax"]["confusion"]
    tp = sum(1 for r in test if r["label"] == "covid" and float(r["p_covid"]) > float(r["p_normal"]))
    assert conf["tp"] == tp and sum(conf.values()) == len(test)


def test_threshold_is_chosen_on_validation_rows_only(logreg_run):
    from xrayfx.metrics import youden_interval

    val = [r for r in _read_csv(logreg_run.path / "predictions.csv") if r["split"] == "val"]
    y = np.array([r["label"] == "covid" for r in val])
    p = np.array([float(r["p_covid"]) for r in val])
    upper = youden_interval(y, p)[1]
    midpoint = (upper + p[p < upper].max()) / 2  # same validation decisions, a margin on both sides
    assert ((p >= midpoint) == (p >= upper)).all()
    assert logreg_run.config["decision"]["threshold"] == midpoint
    assert logreg_run.config["decision"]["rule"] == "youden"
    assert logreg_run.metrics["threshold"]["youden_upper"] == upper
    assert logreg_run.metrics["test"]["youden"]["threshold"] == midpoint
    test = [r for r in _read_csv(logreg_run.path / "predictions.csv") if r["split"] == "test"]
    tp = sum(1 for r in test if r["label"] == "covid" and float(r["p_covid"]) >= midpoint)
    assert logreg_run.metrics["test"]["youden"]["confusion"]["tp"] == tp


def test_paper_history_has_one_row_per_epoch_with_validation(paper_run):
    hist = _read_csv(paper_run.path / "history.csv")
    assert len(hist) == 100 and hist[0]["epoch"] == "1" and hist[-1]["epoch"] == "100"
    assert all(r["val_loss"] and r["val_accuracy"] for r in hist)
    assert paper_run.config["head"]["params"]["dropout"] == 0.5  # mobilenet's spec dropout
    assert {"head.keras", "head.json"} <= set(paper_run.config["files"])


@pytest.mark.parametrize("which", ["paper_run", "logreg_run"])
def test_saved_head_reloads_and_predicts_identically(which, request, tmp_path):
    run = request.getfixturevalue(which)
    test = [r for r in _read_csv(run.path / "predictions.csv") if r["split"] == "test"][:25]
    manifest = write_manifest(tmp_path / "again.csv", [{"path": r["path"]} for r in test])
    result = predict(run.run_id, [manifest], cache_dir=run.path.parent.parent, progress=False, log=None)
    by_path = {row[0]: row for row in result.rows}
    assert result.columns == ["path", "image_id", "p_covid", "p_normal", "predicted", "threshold"]
    for r in test:
        row = by_path[r["path"]]
        assert row[1] == r["image_id"]
        assert float(row[2]) == float(r["p_covid"]) and float(row[3]) == float(r["p_normal"])
        thr = run.config["decision"]["threshold"]
        assert row[4] == ("covid" if float(r["p_covid"]) >= thr else "normal")


@pytest.mark.parametrize("which,head_file", [("paper_run", "head.keras"), ("logreg_run", "head.skops")])
def test_predict_refuses_a_head_file_changed_by_one_byte(which, head_file, request, tmp_path):
    run = request.getfixturevalue(which)
    copy = tmp_path / "cache" / "runs" / "altered"
    shutil.copytree(run.path, copy)
    data = bytearray((copy / head_file).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / head_file).write_bytes(bytes(data))
    one = [r for r in _read_csv(run.path / "predictions.csv")][:1]
    with pytest.raises(IntegrityError, match=rf"{head_file}.*sha256"):
        predict(copy, [one[0]["path"]], cache_dir=run.path.parent.parent, progress=False, log=None)


def test_run_is_found_by_path_or_by_id(logreg_run, session_cache):
    assert resolve_run(logreg_run.path) == logreg_run.path
    assert resolve_run("train-logreg", session_cache) == session_cache / "runs" / "train-logreg"
    assert load_run("train-logreg", session_cache).metrics == logreg_run.metrics
    with pytest.raises(UsageError, match="neither"):
        resolve_run("no-such-run", session_cache)


def test_an_existing_run_id_is_refused_before_any_work(real_manifest, mobilenet_config, session_cache, logreg_run):
    with pytest.raises(UsageError, match="exists already"):
        _fit(real_manifest, mobilenet_config, session_cache, "train-logreg", head="logreg")


# ---------------------------------------------------------------------------------------------
# Leakage and balance


def _leaky_split(run, tmp_path) -> tuple[Path, str]:
    """The run's split.csv with one image of a multi-image training patient moved to test."""
    rows = _read_csv(run.path / "split.csv")
    by_patient: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r["part"] == "train" and r["patient_id"]:
            by_patient.setdefault(r["patient_id"], []).append(i)
    patient = sorted(p for p, idx in by_patient.items() if len(idx) >= 2)[0]
    rows[by_patient[patient][0]]["part"] = "test"
    path = tmp_path / "leaky.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path, patient


def test_a_split_with_one_patient_on_both_sides_fails_naming_it(logreg_run, real_manifest, mobilenet_config,
                                                                session_cache, tmp_path):
    leaky, patient = _leaky_split(logreg_run, tmp_path)
    with pytest.raises(LeakageError, match=re.escape(patient)) as err:
        _fit(real_manifest, mobilenet_config, session_cache, "train-leaky", head="logreg", split=leaky)
    assert "--allow-leakage" in str(err.value)
    assert not (session_cache / "runs" / "train-leaky").exists()
    run = _fit(real_manifest, mobilenet_config, session_cache, "train-leaky-allowed", head="logreg", split=leaky,
               allow_leakage=True)
    assert run.config["split"]["leakage"]["holdout"]["train_vs_val_test"]["patient_ids"] == [patient]
    assert run.config["split"]["from"]["sha256"] == sha256_file(leaky)


def test_smote_changes_only_the_training_set_size(logreg_run, real_manifest, mobilenet_config, session_cache):
    split_file = logreg_run.path / "split.csv"
    none = _fit(real_manifest, mobilenet_config, session_cache, "train-none", head="logreg", balance="none",
                split=split_file)
    smote = logreg_run  # same split (made with the same seed), balance smote
    split = read_parts(split_file, seed=0, val_size=0.15).base
    n_train = int((split.split == "train").sum())
    b_none, b_smote = none.config["balance"]["per_fold"][0], smote.config["balance"]["per_fold"][0]
    assert b_none["n_before"] == b_none["n_after"] == n_train
    assert b_smote["n_before"] == n_train and b_smote["n_after"] > n_train
    counts = b_smote["counts_after"]
    assert counts["covid"] == counts["normal"] == max(b_smote["counts_before"].values())
    rows_none = [(r["image_id"], r["split"]) for r in _read_csv(none.path / "predictions.csv")]
    rows_smote = [(r["image_id"], r["split"]) for r in _read_csv(smote.path / "predictions.csv")]
    assert rows_none == rows_smote
    assert len(rows_none) == int((split.split != "train").sum())
    for part in ("val", "test"):
        assert none.metrics[part]["n"] == smote.metrics[part]["n"] == int((split.split == part).sum())


def test_smote_with_too_small_a_minority_names_class_count_and_k(shared_rows, tmp_path, mobilenet_config,
                                                                 mobilenet_export, session_cache):
    from xrayfx.data.manifest import load_dataset
    from xrayfx.study.splits import make_holdout_split

    covid, seen = [], set()
    for r in shared_rows:  # one image per patient, so the split has 8 covid groups
        if r["source"] == "cohen" and r["label"] == "covid" and r["patient_id"] not in seen:
            seen.add(r["patient_id"])
            covid.append(r)
        if len(covid) == 8:
            break
    rows = _unique_by_bytes(absolute_rows(covid + [r for r in shared_rows if r["source"] == "mooney"][:40]))
    manifest = write_manifest(tmp_path / "few.csv", rows)
    ds = load_dataset(manifest)
    split = make_holdout_split([r.image_id for r in ds.records], [r.label for r in ds.records],
                               [r.meta["patient_id"] for r in ds.records], test_size=0.5, val_size=0.5, seed=0)
    n_train_covid = int(((split.split == "train") & (split.label == "covid")).sum())
    assert n_train_covid < 6
    with pytest.raises(BalanceError) as err:
        _fit(manifest, mobilenet_config, session_cache, "train-few", head="logreg", test_size=0.5, val_size=0.5)
    msg = str(err.value)
    assert "class 'covid'" in msg and f"got {n_train_covid} of class" in msg and "k_neighbors=5" in msg
    assert not (session_cache / "runs" / "train-few").exists()


# ---------------------------------------------------------------------------------------------
# Labels, grouping, k-fold


def test_other_labels_are_left_out_and_counted_and_missing_patient_ids_are_reported(
    real_rows, tmp_path, mobilenet_config, mobilenet_export, session_cache
):
    rows = [{k: v for k, v in r.items() if k != "patient_id"} for r in real_rows[:60] + real_rows[-60:]]
    for r in rows[:7]:
        r["label"] = "pneumonia"
    manifest = write_manifest(tmp_path / "three-labels.csv", rows)
    run = _fit(manifest, mobilenet_config, session_cache, "train-labels", head="logreg", labels="normal,covid",
               positive="covid")
    assert run.config["data"]["left_out_by_label"] == {"pneumonia": 7}
    assert run.config["data"]["n_rows"] == len(rows) - 7
    assert run.config["split"]["grouped_by"] == "image_id"
    note = "No patient ids: rows were grouped by image id"
    assert any(note in n for n in run.config["split"]["summary"]["notes"])
    assert note in (run.path / "summary.txt").read_text()
    with open(run.path / "predictions.csv") as f:
        assert "p_normal,p_covid" in f.readline()  # --labels order


def test_kfold_trains_one_head_per_fold_and_tests_every_image_once(real_rows, tmp_path, mobilenet_config,
                                                                   mobilenet_export, session_cache):
    manifest = write_manifest(tmp_path / "kfold.csv", real_rows[:80] + real_rows[-80:])
    run = _fit(manifest, mobilenet_config, session_cache, "train-kfold", head="logreg", folds=3)
    assert {f"fold-{f}/head.skops" for f in range(3)} <= set(run.config["files"])
    preds = _read_csv(run.path / "predictions.csv")
    test = [r for r in preds if r["split"] == "test"]
    assert sorted(r["image_id"] for r in test) == sorted(_split_of(run).image_id.tolist())
    assert {r["fold"] for r in test} == {"0", "1", "2"}
    m = run.metrics
    assert len(m["folds"]) == 3 and m["across_folds"]["test_auroc"]["n"] == 3
    assert m["pooled_test"]["n"] == len(test)
    assert len(run.config["decision"]["fold_thresholds"]) == 3
    result = predict(run.path, [test[0]["path"]], progress=False, log=None)
    assert len(result.rows) == 1 and result.threshold == pytest.approx(
        np.mean(run.config["decision"]["fold_thresholds"]))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(labels="covid"), "exactly two distinct labels"),
        (dict(labels="covid,normal,other"), "exactly two distinct labels"),
        (dict(positive="pneumonia"), "--positive"),
        (dict(head="forest"), "Unknown --head 'forest'"),
        (dict(balance="magic"), "Unknown --balance"),
        (dict(head="logreg", head_params={"epochs": 3}), "--epochs"),
        (dict(head="knn", balance="class-weight"), "knn"),
        (dict(split="x.csv", folds=3), "either --split FILE or --folds"),
        (dict(run_id="../escape"), "--run-id"),
    ],
)
def test_bad_options_fail_before_any_extraction(kw, match, tmp_path, monkeypatch):
    import xrayfx.extraction.pipeline

    def no_extract(*a, **k):
        raise AssertionError("options must be checked before extraction")

    monkeypatch.setattr(xrayfx.extraction.pipeline, "extract", no_extract)
    with pytest.raises(UsageError, match=re.escape(match)):
        fit_head("mobilenet", tmp_path, weights="none", cache_dir=tmp_path / "cache", progress=False, log=None, **kw)
