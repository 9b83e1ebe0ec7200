"""Issue 11: one run record, one decision rule, k-fold parts computed once, `xrayfx evaluate`, honest
report wording, and `predict` that keeps a manifest's columns.

Adult-only data (Cohen COVID-19 adults against NIH adult normals), split by patient: a run trains on
some patients, `evaluate` scores other patients of the same sources (with three training images planted
to check the overlap finder) and Mooney children (one class).
"""

from __future__ import annotations

import copy
import csv
import inspect
import json
import os
import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from conftest import MOBILENET_WEIGHTS, absolute_rows, run_cli_inprocess, write_manifest
from xrayfx.exceptions import IntegrityError, RunError
from xrayfx.metrics import DEFAULT_RESAMPLES
from xrayfx.study.runs import CONFIG_FILE, SEAL_FILE, load_run
from xrayfx.study.options import HeadOptions
from xrayfx.util import sha256_file


def _by_patients(rows, n_images, skip_patients=frozenset()):
    out, patients = [], []
    for r in rows:
        if r["patient_id"] in skip_patients:
            continue
        if r["patient_id"] not in patients:
            if len(out) >= n_images:
                break
            patients.append(r["patient_id"])
        out.append(r)
    return out


def _unique_bytes(rows):
    seen, out = set(), []
    for r in rows:
        h = sha256_file(r["path"])
        if h not in seen:
            seen.add(h)
            out.append(r)
    return out


@pytest.fixture(scope="module")
def data(shared_rows, tmp_path_factory):
    """train.csv (~50 Cohen + ~50 NIH), heldout.csv (other patients + 3 planted training images), kids.csv."""
    folder = tmp_path_factory.mktemp("evaluate-data")
    cohen = _unique_bytes(absolute_rows([r for r in shared_rows if r["source"] == "cohen" and r["label"] == "covid"]))
    nih = _unique_bytes(absolute_rows([r for r in shared_rows if r["source"] == "nih"][:300]))
    train = _by_patients(cohen, 50) + _by_patients(nih, 50)
    used = {r["patient_id"] for r in train}
    held = _by_patients(cohen, 20, used) + _by_patients(nih, 20, used)
    kids = absolute_rows([r for r in shared_rows if r["source"] == "mooney"][:12])
    return {
        "train": write_manifest(folder / "train.csv", train),
        "held": held, "train_rows": train,
        "kids": write_manifest(folder / "kids.csv", kids),
        "folder": folder,
    }


def _fit(data, mobilenet_config, cache, run_id, **kw):
    from xrayfx.study.fit import fit_head

    return fit_head(data=data["train"], config=mobilenet_config, cache_dir=cache, run_id=run_id, progress=False,
                    log=None, **kw)


@pytest.fixture(scope="module")
def run(data, mobilenet_config, mobilenet_export, session_cache):
    """A holdout logreg run; the head is given as one HeadOptions object."""
    return _fit(data, mobilenet_config, session_cache, "eval-logreg", head=HeadOptions(head="logreg"))


def _copy(run, tmp_path, name="copy"):
    dest = tmp_path / "runs" / name
    shutil.copytree(run.path, dest, ignore=shutil.ignore_patterns("evaluations", "report"))
    return dest


def _edit_config(folder, change, reseal=True):
    config = json.loads((folder / CONFIG_FILE).read_text())
    change(config)
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    if reseal:
        (folder / SEAL_FILE).write_text(f"{sha256_file(folder / CONFIG_FILE)}  {CONFIG_FILE}\n")


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# 1. One run record


def test_an_edited_threshold_fails_the_integrity_check_naming_config_json(run, tmp_path):
    folder = _copy(run, tmp_path)
    _edit_config(folder, lambda c: c["decision"].update(threshold=0.01), reseal=False)
    with pytest.raises(IntegrityError, match=r"config\.json.*Fix: restore"):
        load_run(folder)


def test_a_run_of_an_older_format_names_its_version_and_the_fix(run, tmp_path):
    folder = _copy(run, tmp_path)
    _edit_config(folder, lambda c: c.update(xrayfx_run_version=1))
    with pytest.raises(RunError, match=r"format version 1; this xrayfx reads version 2\. Fix: re-run fit-head"):
        load_run(folder)


@pytest.mark.parametrize("change,key", [
    (lambda c: c["decision"].update(threshold="high"), "decision.threshold"),
    (lambda c: c.pop("labels"), "'labels'"),
])
def test_a_damaged_record_is_one_error_line_without_traceback(change, key, run, data, tmp_path, capsys):
    folder = _copy(run, tmp_path)
    _edit_config(folder, change)
    code, _out, err = run_cli_inprocess(["predict", "--run", str(folder), str(data["kids"])], capsys)
    assert code == 1 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and key in lines[0], err


def test_report_reads_the_record_and_guesses_no_keys():
    import xrayfx.report.build as build

    source = inspect.getsource(build)
    for guessed in ("positive_label", "labels_positive", "model_config", "manifest_path", "--positive-label"):
        assert guessed not in source, guessed


# ---------------------------------------------------------------------------------------------
# 2. One decision rule


@pytest.fixture(scope="module")
def report(run, evaluated, tmp_path_factory):
    """The run's report (with its evaluations), built once for the tests that read it: the occlusion maps of
    its default explain section take most of a build's time."""
    from xrayfx.report import build_report

    return build_report([run.path], out=tmp_path_factory.mktemp("eval-report") / "report", ablation=False,
                        n_resamples=200)


def test_report_confusion_at_the_validation_threshold_equals_predict_on_the_test_images(run, report, tmp_path):
    from xrayfx.study.fit import predict

    test = [r for r in _read(run.path / "predictions.csv") if r["split"] == "test"]
    manifest = write_manifest(tmp_path / "test.csv", [{"path": r["path"], "label": r["label"]} for r in test])
    pred = predict(run.path, [manifest], progress=False, log=None)
    col = pred.columns.index("predicted")
    label_col = pred.columns.index("label")
    got = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for row in pred.rows:
        pos, truth = row[col] == "covid", row[label_col] == "covid"
        got[("t" if pos == truth else "f") + ("p" if pos else "n")] += 1
    counts = report.data["runs"][0]["scores"]["youden"]["counts"]
    assert {k: counts[k] for k in got} == got
    assert report.data["runs"][0]["scores"]["youden"]["thresholds"] == {"all": run.record.decision.threshold}
    assert run.metrics["test"]["youden"]["confusion"] == got


def test_one_default_number_of_resamples_everywhere(run):
    from xrayfx.report import build_report
    from xrayfx.study.evaluate import evaluate

    assert run.metrics["test"]["auroc_ci"]["n_resamples"] == DEFAULT_RESAMPLES
    for fn in (build_report, evaluate):
        assert inspect.signature(fn).parameters["n_resamples"].default == DEFAULT_RESAMPLES


# ---------------------------------------------------------------------------------------------
# 3. k-fold parts computed once


def test_kfold_parts_with_a_non_default_seed_and_val_size_are_written_and_used(
        run, data, mobilenet_config, session_cache):
    kfold = _fit(data, mobilenet_config, session_cache, "eval-kfold", head="logreg", balance="none", folds=3,
                 split_seed=3, val_size=0.25)
    rows = _read(kfold.path / "split.csv")
    assert list(rows[0]) == ["image_id", "patient_id", "label", "fold", "part"]
    preds = _read(kfold.path / "predictions.csv")
    n_images = len({r["image_id"] for r in rows})
    for f in range(3):
        fold = [r for r in rows if r["fold"] == str(f)]
        assert len(fold) == n_images
        part = {p: {r["image_id"] for r in fold if r["part"] == p} for p in ("train", "val", "test")}
        pats = {p: {r["patient_id"] for r in fold if r["part"] == p} for p in ("train", "val", "test")}
        assert not part["train"] & (part["val"] | part["test"]) and not pats["train"] & (pats["val"] | pats["test"])
        assert not part["val"] & part["test"]
        for p in ("val", "test"):
            assert {r["image_id"] for r in preds if r["fold"] == str(f) and r["split"] == p} == part[p]
        assert kfold.config["balance"]["per_fold"][f]["n_before"] == len(part["train"])
    again = _fit(data, mobilenet_config, session_cache, "eval-kfold-again", head="logreg", balance="none",
                 split=kfold.path / "split.csv")
    assert _read(again.path / "predictions.csv") == preds


def test_split_accepts_an_older_holdout_file(run, data, mobilenet_config, session_cache, tmp_path):
    rows = _read(run.path / "split.csv")
    old = tmp_path / "old.csv"
    with open(old, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "patient_id", "label", "split", "fold"])
        w.writerows([r["image_id"], r["patient_id"], r["label"], r["part"], -1] for r in rows)
    again = _fit(data, mobilenet_config, session_cache, "eval-old-split", head="logreg", split=old)
    assert _read(again.path / "predictions.csv") == _read(run.path / "predictions.csv")


# ---------------------------------------------------------------------------------------------
# 4. evaluate


@pytest.fixture(scope="module")
def evaluated(run, data):
    """heldout.csv: other patients of the same sources plus three images of the run's training part."""
    from xrayfx.study.evaluate import evaluate

    train_ids = [r["image_id"] for r in _read(run.path / "split.csv") if r["part"] == "train"]
    by_id = {sha256_file(r["path"]): r for r in data["train_rows"]}
    planted = [by_id[i] for i in (train_ids[0], train_ids[len(train_ids) // 2], train_ids[-1])]
    data["planted"] = {r["path"] for r in planted}
    # A near-duplicate under a new patient id: a training image resized and re-encoded as JPEG.
    from PIL import Image

    source = by_id[train_ids[1]]
    copy = data["folder"] / "resized-copy.jpg"
    with Image.open(source["path"]) as im:
        im.convert("L").resize((im.width * 7 // 10, im.height * 7 // 10)).save(copy, quality=80)
    data["near"] = str(copy)
    near_row = {**source, "path": str(copy), "patient_id": "new-patient-near"}
    data["heldout"] = write_manifest(data["folder"] / "heldout.csv", data["held"] + planted + [near_row])

    held = evaluate(run.path, data["heldout"], progress=False, log=None)
    kids = evaluate(run.path, data["kids"], progress=False, log=None)
    return held, kids


def test_evaluate_writes_predictions_and_metrics_that_recompute(evaluated, run, data):
    from xrayfx.study.fit import predict

    held, _ = evaluated
    assert held.path == run.path / "evaluations" / "heldout"
    rows = _read(held.predictions)
    assert list(rows[0])[:9] == ["path", "image_id", "label", "patient_id", "source", "p_covid", "predicted",
                                 "threshold", "overlap"]
    assert {"view", "age_group"} <= set(rows[0])
    flagged = {r["path"] for r in rows if r["overlap"]}
    assert flagged == data["planted"] | {data["near"]}
    assert all("same bytes" in r["overlap"] for r in rows if r["path"] in data["planted"])
    assert "near-duplicate" in next(r["overlap"] for r in rows if r["path"] == data["near"])
    kept = [r for r in rows if not r["overlap"]]
    m = json.loads((held.path / "metrics.json").read_text())
    y = np.array([r["label"] == "covid" for r in kept])
    p = np.array([float(r["p_covid"]) for r in kept])
    d = np.array([r["predicted"] == "covid" for r in kept])
    assert m["n"] == len(kept) and m["overlap"]["n"] == 4 and m["threshold"] == run.record.decision.threshold
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert m["auroc_ci"][0] <= m["auroc"] <= m["auroc_ci"][1]
    assert m["sensitivity"] == pytest.approx(d[y].mean()) and m["specificity"] == pytest.approx((~d[~y]).mean())
    assert m["confusion"] == {"tp": int((d & y).sum()), "fp": int((d & ~y).sum()), "fn": int((~d & y).sum()),
                              "tn": int((~d & ~y).sum())}
    for key in ("pr_auc", "sensitivity", "specificity", "ppv", "npv"):
        assert f"{key}_ci" in m
    assert set(m["by_source"]) == {"cohen", "nih"} and m["by_source"]["nih"]["auroc"] is None
    assert m["n_patients"] == len({r["patient_id"] for r in kept})
    pred = predict(run.path, [data["heldout"]], progress=False, log=None)
    by_path = {r[0]: float(r[2]) for r in pred.rows}
    assert all(float(r["p_covid"]) == by_path[r["path"]] for r in rows)


def test_a_one_class_set_reports_specificity_and_says_auroc_is_undefined(evaluated):
    _, kids = evaluated
    m = kids.metrics
    assert m["auroc"] is None and m["auroc_ci"] is None and m["sensitivity"] is None
    assert m["specificity"] is not None and m["specificity_ci"][0] <= m["specificity"] <= m["specificity_ci"][1]
    assert "undefined" in " ".join(m["notes"])


def test_evaluate_refuses_an_existing_name_without_force_and_keeps_overlap_on_request(evaluated, run, data,
                                                                                     capsys):
    args = ["evaluate", "--run", str(run.path), "--data", str(data["heldout"])]
    code, _out, err = run_cli_inprocess(args, capsys)
    assert code == 2 and "exists already" in err and "--force" in err
    code, _out, err = run_cli_inprocess([*args, "--name", "heldout-all", "--keep-overlap"], capsys)
    assert code == 0, err
    m = json.loads((run.path / "evaluations" / "heldout-all" / "metrics.json").read_text())
    assert m["n"] == evaluated[0].metrics["n"] + 4
    code, _out, err = run_cli_inprocess([*args, "--name", "heldout-all", "--force"], capsys)
    assert code == 0, err


def test_report_shows_the_internal_test_beside_every_evaluation(report):
    from xrayfx.report import render

    md = report.markdown.read_text()
    assert "Evaluations on other data" in md and "| internal test |" in md
    assert "| heldout |" in md and "| kids |" in md and "within-source AUROC" in md

    # 6. the first sentence about the run names the confound; wording follows the numbers
    data = copy.deepcopy(report.data)  # edited below; the fixture is shared
    first = [s for s in data["summary"] if s.startswith("**")][0].split(". ")[0]
    assert "measures the source" in first or "measures the source and age group" in first
    assert "xrayfx evaluate" in [s for s in data["summary"] if s.startswith("**")][0]
    entry = data["runs"][0]
    entry["audit"]["ablation"] = {"ran": True, "flag": False, "masked": {"auroc": 0.55, "balanced_accuracy": 0.5},
                                  "original": {"auroc": 0.9}}
    entry["scores"]["ranking"]["auroc"] = {**entry["scores"]["ranking"]["auroc"], "lo": 0.6}
    text = " ".join(render.summary_lines(data))
    assert "cannot tell" in text and "no sign that it relies" not in text
    entry["scores"]["ranking"]["auroc"]["lo"] = 0.8
    assert "no sign that it relies on what lies outside the lungs" in " ".join(render.summary_lines(data))
    entry["audit"]["ablation"] = {"ran": False, "reason": "not run"}
    notes = lambda: " ".join(" ".join(b[1]) for b in render.layout(data, report.figures) if b[0] == "ul")  # noqa: E731
    assert "mostly reflect the test set's size" in notes()
    entry["scores"].update(n_test_positive=42, n_test_negative=282)
    assert "mostly reflect the test set's size" not in notes()


def test_no_confound_sentence_when_one_source_holds_both_classes():
    from xrayfx.report.build import RunData
    from xrayfx.report.external import test_confounds

    rows = [{"label": lab, "source": "nih", "age_group": "adult", "split": "test"} for lab in ("covid", "normal")]
    rows += [{"label": "normal", "source": "mooney", "age_group": "child", "split": "test"}]
    run = RunData(path=None, run_id="x", config={}, metrics={}, classes=["covid", "normal"], positive="covid",
                  negative="normal", rows=rows, proba=np.zeros((3, 2)), history=[], split_rows=[])
    assert test_confounds(run) == []
    run.rows = [r for r in rows if r["source"] != "nih"] + [{"label": "covid", "source": "cohen",
                                                              "age_group": "adult", "split": "test"}]
    assert [c["column"] for c in test_confounds(run)] == ["source", "age group"]


# ---------------------------------------------------------------------------------------------
# 7. predict keeps the manifest's columns, paths as given, and refuses to overwrite


def test_predict_keeps_columns_and_given_paths_and_refuses_to_overwrite(run, data, tmp_path, capsys):
    rows = _read(data["kids"])[:3]
    rel = [{**r, "path": os.path.relpath(r["path"], tmp_path)} for r in rows]
    manifest = write_manifest(tmp_path / "rel.csv", rel)
    out = tmp_path / "out.csv"
    out.write_text("keep me\n")
    args = ["predict", "--run", str(run.path), str(manifest), "-o", str(out)]
    code, _o, err = run_cli_inprocess(args, capsys)
    assert code == 2 and "exists" in err and "--force" in err and out.read_text() == "keep me\n"
    code, _o, err = run_cli_inprocess([*args, "--force"], capsys)
    assert code == 0, err
    got = _read(out)
    assert [r["path"] for r in got] == [r["path"] for r in rel]
    for col in ("label", "patient_id", "source", "age_group"):
        assert [r[col] for r in got] == [r[col] for r in rows]


def test_fit_head_cli_calls_the_paper_batch_head_batch_size(data, tmp_path, capsys):
    args = ["fit-head", "--model", "mobilenet", "--weights", str(MOBILENET_WEIGHTS), "--data", str(data["train"]),
            "--cache-dir", str(tmp_path / "cache"), "--head", "logreg"]
    for flag in ("--head-batch-size", "--batch-size"):
        code, _o, err = run_cli_inprocess([*args, flag, "4"], capsys)
        assert code == 2 and "--head-batch-size" in err, err
