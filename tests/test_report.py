"""`xrayfx report`: numbers with intervals, the paper beside ours, figures, and the shortcut audit.

Small synthetic cases first (the fast statistics, the mask, confounding sentences, the
paper comparison, Youden on validation rows only), then real runs trained by fit-head on
150 real radiographs of ../shared with MobileNet's real weights, then the command line.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from conftest import absolute_rows, run_cli, run_cli_inprocess, write_manifest
from xrayfx.exceptions import IntegrityError, UsageError
from xrayfx.report import audit
from xrayfx.report.build import RunData, paper_comparison, score_run
from xrayfx.report.render import jsonable
from xrayfx.metrics import fast_auroc, fast_average_precision

# ---------------------------------------------------------------------------------------------
# Fast statistics equal scikit-learn's


@pytest.mark.parametrize("seed", range(6))
def test_fast_auroc_and_average_precision_equal_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    y = rng.random(n) < rng.uniform(0.1, 0.6)
    y[0], y[1] = True, False
    p = np.round(rng.random(n) * (0.3 + y), 1 if seed % 2 else 4)  # coarse rounding makes many ties
    assert fast_auroc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert fast_average_precision(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)


def test_fast_statistics_hand_computed():
    y = np.array([True, False, True, False])
    p = np.array([0.9, 0.8, 0.4, 0.1])
    # pairs (pos, neg): (0.9>0.8) (0.9>0.1) (0.4<0.8) (0.4>0.1) -> 3/4
    assert fast_auroc(y, p) == 0.75
    # ranked: + - + - ; precision at the positives 1/1 and 2/3 -> (1 + 2/3) / 2
    assert fast_average_precision(y, p) == pytest.approx((1 + 2 / 3) / 2)


# ---------------------------------------------------------------------------------------------
# Mask


def test_mask_centre_sets_the_central_box_to_the_mean_grey_and_leaves_the_rest():
    img = np.zeros((100, 50, 3), dtype=np.uint8)
    img[:, :25] = 200  # left half bright: mean 100
    out = audit.mask_centre(img)
    # box: 70 % of 100 rows = 70 (rows 15..84), 60 % of 50 columns = 30 (columns 10..39)
    assert np.all(out[15:85, 10:40] == 100)
    untouched = np.ones(img.shape[:2], dtype=bool)
    untouched[15:85, 10:40] = False
    assert np.array_equal(out[untouched], img[untouched])
    assert img[50, 20, 0] == 200, "the input must not be changed"


@pytest.mark.parametrize("kwargs", [{"width_fraction": 0}, {"height_fraction": 1.5}])
def test_mask_centre_refuses_bad_fractions(kwargs):
    with pytest.raises(UsageError, match="Expected"):
        audit.mask_centre(np.zeros((10, 10), dtype=np.uint8), **kwargs)


# ---------------------------------------------------------------------------------------------
# Confounding sentences


def _rows(spec):
    return [{"label": lab, "source": src, "age_group": age} for lab, src, age, n in spec for _ in range(n)]


def test_confound_warning_when_all_positives_come_from_one_source():
    rows = _rows([("covid", "cohen", "adult", 30), ("normal", "mooney", "pediatric", 40),
                  ("normal", "nih", "adult", 20)])
    text = " ".join(audit.confound_warnings(rows, "covid"))
    assert "coincide" in text and "cohen" in text
    assert "pediatric occurs only in class normal" in text


def test_confound_warning_for_a_near_shortcut_and_none_for_mixed_sources():
    near = _rows([("covid", "cohen", "adult", 40), ("normal", "cohen", "adult", 2), ("normal", "nih", "adult", 40)])
    text = " ".join(audit.confound_warnings(near, "covid"))
    assert "all 40 covid images come from source cohen, which supplies only 2 of the 42" in text
    assert "source alone gives the right label for 98%" in text
    mixed = _rows([("covid", "a", "adult", 20), ("covid", "b", "adult", 20), ("normal", "a", "adult", 20),
                   ("normal", "b", "adult", 20)])
    assert audit.confound_warnings(mixed, "covid") == []


# ---------------------------------------------------------------------------------------------
# The paper beside ours


def _argmax_like(tp, fp, fn, tn):
    from xrayfx.metrics import class_report

    return class_report(tp, fp, fn, tn, positive_label="covid", negative_label="normal")


def test_paper_comparison_gives_the_paper_value_and_the_difference():
    cmp = paper_comparison("densenet201", _argmax_like(40, 2, 2, 280))
    cell = cmp["cells"]["covid_recall"]
    assert cell["paper"] == 0.90 and cell["ours"] == pytest.approx(40 / 42)
    assert cell["difference"] == pytest.approx(40 / 42 - 0.90)
    assert cmp["cells"]["tp"] == {"ours": 40, "paper": 38, "difference": 2}


def test_paper_comparison_never_guesses_a_value_the_paper_does_not_print():
    cmp = paper_comparison("inceptionresnetv2", _argmax_like(27, 1, 15, 281))
    assert cmp["cells"]["tp"]["paper"] is None and cmp["cells"]["tp"]["difference"] is None
    assert cmp["cells"]["fn"]["paper"] == 15
    other = paper_comparison("mobilenet", _argmax_like(10, 1, 2, 30))
    assert not other["in_paper"]
    assert all(c["paper"] is None and c["difference"] is None for c in other["cells"].values())


def test_table2_cells_show_ours_with_interval_then_the_paper_and_the_difference():
    from xrayfx.report.render import table2, terminal_table2

    entries = []
    for backbone, counts in (("densenet201", (40, 2, 2, 280)), ("inceptionresnetv2", (27, 1, 15, 281)),
                             ("mobilenet", (10, 1, 2, 30))):
        am = _argmax_like(*counts)
        entries.append({"run": {"backbone": backbone, "head": "paper"}, "scores": {"argmax": am},
                        "paper": paper_comparison(backbone, am)})
    headers, rows = table2({"runs": entries})
    assert headers[:2] == ["backbone", "COVID precision"] and headers[-5:] == ["TP", "FP", "FN", "TN", "accuracy"]
    dense, irv2, mobile = rows
    assert dense[2] == ["0.95 (0.84–0.99)", "paper 0.90, Δ +0.05"]  # recall 40/42, Wilson interval
    assert dense[7] == ["40", "paper 38, Δ +2"]
    assert irv2[7] == ["27", "paper: not reported"] and irv2[9] == ["15", "paper 15, Δ +0"]
    assert all(cell[1] == "paper: not reported" for cell in mobile[1:])
    _, term = terminal_table2({"runs": entries})
    assert term[2][0].endswith("paper:\nnot reported") and term[2][1] == "0.91 (0.62–0.98)"


# ---------------------------------------------------------------------------------------------
# Scoring a run held in memory


def _record(threshold=0.5, fold_thresholds=(0.5,), note=None, rule="youden"):
    from xrayfx.study.record import Decision, RunRecord

    return RunRecord(
        format_version=2, run_id="mem", labels=("covid", "normal"), positive="covid", negative="normal", model={},
        backbone="mobilenet", runtime="onnxruntime", precision="fp32", cache_dir=".", data_path="", data_sha256="",
        split_kind="kfold" if len(fold_thresholds) > 1 else "holdout", head_name="logreg", heads=(), balance="none",
        decision=Decision(threshold, rule, "covid", "normal", tuple(fold_thresholds), note), files={}, raw={},
    )


def _run_data(labels, p_pos, split, fold=None, patients=None, record=None) -> RunData:
    n = len(labels)
    fold = fold if fold is not None else [-1] * n
    patients = patients or [f"p{i}" for i in range(n)]
    rows = [
        {"image_id": f"i{i}", "path": "", "patient_id": patients[i], "source": "", "view": "", "age_group": "",
         "label": labels[i], "p_covid": repr(p_pos[i]), "p_normal": repr(1 - p_pos[i]), "split": split[i],
         "fold": str(fold[i])}
        for i in range(n)
    ]
    proba = np.column_stack([p_pos, 1 - np.asarray(p_pos)])
    return RunData(path=Path("."), run_id="mem", config={}, metrics={}, classes=["covid", "normal"],
                   positive="covid", negative="normal", rows=rows, proba=proba, history=[], split_rows=[],
                   record=record or _record())


def test_the_report_applies_the_runs_recorded_threshold_not_one_of_its_own():
    # validation: positives at 0.8/0.9, negatives at 0.1/0.2 -> fit-head records the midpoint 0.5;
    # the old report rule (top of the Youden interval, 0.8) would miss the test positive at 0.6
    from xrayfx.study.decision import choose_threshold

    labels = ["covid", "covid", "normal", "normal", "covid", "covid", "normal", "normal"]
    p = [0.9, 0.8, 0.1, 0.2, 0.95, 0.6, 0.3, 0.05]
    split = ["val"] * 4 + ["test"] * 4
    chosen = choose_threshold(np.array(labels[:4]) == "covid", p[:4])
    assert (chosen.lower, chosen.upper, chosen.value) == (0.2, 0.8, 0.5)
    run = _run_data(labels, p, split, record=_record(chosen.value, (chosen.value,)))
    s = score_run(run, n_resamples=200)
    assert s["youden"]["thresholds"] == {"all": 0.5}
    assert s["youden"]["counts"] == {"tp": 2, "fp": 0, "fn": 0, "tn": 2, "n": 4}
    # an edited record would move the operating point: the report follows the record, nothing else
    s = score_run(_run_data(labels, p, split, record=_record(0.8, (0.8,))), n_resamples=200)
    assert s["youden"]["counts"] == {"tp": 1, "fp": 0, "fn": 1, "tn": 2, "n": 4}
    assert s["argmax"]["counts"] == {"tp": 2, "fp": 0, "fn": 0, "tn": 2, "n": 4}
    assert s["ranking"]["auroc"]["value"] == 1.0 and s["ranking"]["auroc"]["n_resamples"] == 200


def test_hard_label_probabilities_give_no_auroc_and_say_why():
    labels = ["covid", "normal"] * 4
    p = [1.0, 0.0] * 4
    s = score_run(_run_data(labels, p, ["val", "val"] + ["test"] * 6), n_resamples=200)
    assert s["ranking"]["auroc"] is None
    assert "hard labels" in " ".join(s["ranking"]["notes"])


def test_kfold_runs_get_per_fold_metrics_and_their_spread():
    rng = np.random.default_rng(0)
    n = 60
    labels = np.where(np.arange(n) % 3 == 0, "covid", "normal").tolist()
    p = np.clip((np.array(labels) == "covid") * 0.5 + rng.random(n) * 0.5, 0.01, 0.99).tolist()
    fold = (np.arange(n) % 3).tolist()
    split = ["test"] * n
    note = "no validation rows: the decision threshold is 0.5 (argmax)"
    run = _run_data(labels, p, split, fold=fold, record=_record(0.5, (None, None, None), note, "argmax (0.5)"))
    s = score_run(run, n_resamples=200)
    per = s["folds"]["per_fold"]
    assert [f["fold"] for f in per] == [0, 1, 2] and sum(f["n"] for f in per) == n
    accs = [f["accuracy"] for f in per]
    assert s["folds"]["summary"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert s["folds"]["summary"]["accuracy"]["sd"] == pytest.approx(np.std(accs, ddof=1))
    assert not s["youden"]["available"] and "no validation rows" in " ".join(s["youden"]["notes"])


def test_jsonable_writes_nan_as_null():
    out = jsonable({"a": float("nan"), "b": np.float32(0.5), "c": np.arange(2), "d": (np.int64(3),)})
    assert json.dumps(out, allow_nan=False) == '{"a": null, "b": 0.5, "c": [0, 1], "d": [3]}'


# ---------------------------------------------------------------------------------------------
# Real runs (fit-head on real radiographs, MobileNet with the real weights)


@pytest.fixture(scope="module")
def real_manifest(tmp_path_factory, shared_rows):
    covid = [r for r in shared_rows if r["label"] == "covid" and r["source"] == "cohen"][:60]
    nih = [r for r in shared_rows if r["label"] == "normal" and r["source"] == "nih"][:45]
    mooney = [r for r in shared_rows if r["label"] == "normal" and r["source"] == "mooney"][:45]
    return write_manifest(tmp_path_factory.mktemp("report-data") / "m.csv", absolute_rows(covid + nih + mooney))


@pytest.fixture(scope="module")
def runs(real_manifest, mobilenet_config, mobilenet_export, session_cache):
    from xrayfx.study.fit import fit_head

    logreg = fit_head(data=real_manifest, config=mobilenet_config, cache_dir=session_cache, head="logreg",
                      balance="none", run_id="report-test-logreg", progress=False, log=None)
    paper = fit_head(data=real_manifest, config=mobilenet_config, cache_dir=session_cache, head="paper",
                     balance="smote", head_params={"epochs": 4}, run_id="report-test-paper", progress=False,
                     log=None)
    return {"logreg": logreg.path, "paper": paper.path}


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs: list[str] = []
        self.captions: list[str] = []
        self.external: list[str] = []
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.external.append(a.get("href") or a.get("src"))
        if tag == "caption":
            self._in_caption = True
            self.captions.append("")

    def handle_endtag(self, tag):
        if tag == "caption":
            self._in_caption = False

    def handle_data(self, data):
        if self._in_caption:
            self.captions[-1] += data


def _decode_png(src: str) -> np.ndarray:
    from PIL import Image

    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True))) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _strict_json(path: Path):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_report_of_two_real_runs_writes_every_file_figure_and_table(runs, session_cache):
    from xrayfx.report import build_report

    result = build_report([runs["logreg"], runs["paper"]], cache_dir=session_cache, n_resamples=2000, explain=2)
    # default out for several runs: <cache>/reports/<timestamp>/
    assert result.out.parent == session_cache / "reports"
    for p in (result.markdown, result.html, result.json):
        assert p.is_file() and p.stat().st_size > 0

    page = _Page()
    page.feed(result.html.read_text(encoding="utf-8"))
    page.close()
    assert page.external == [], "the HTML must need nothing from outside"
    assert len(page.imgs) == len(result.figures) == len(list((result.out / "figures").glob("*.png")))
    names = {f.name for f in result.figures}
    for rid in ("report-test-logreg", "report-test-paper"):
        for kind in ("roc", "pr", "confusion", "calibration", "mask"):
            assert f"{rid}-{kind}.png" in names
    assert "report-test-paper-history.png" in names and "report-test-logreg-history.png" not in names
    assert "comparison.png" in names
    assert "report-test-logreg-explain-mean.png" in names and "report-test-paper-explain-grid.png" in names
    for src in page.imgs:
        img = _decode_png(src)
        assert img.shape[0] > 50 and len(np.unique(img.reshape(-1, 3), axis=0)) > 1, "flat image"

    caps = " | ".join(page.captions)
    for table in ("Table 2 — argmax decision", "Ranking and calibration", "Operating characteristics",
                  "Second table — the run's recorded threshold", "Images and patients per part",
                  "Images per source and label", "Test metrics by source", "Test metrics by view",
                  "Test metrics by age group", "Source probe", "Masked-lung ablation"):
        assert caps.count(table) >= 1, table
    md = result.markdown.read_text()
    assert md.index("## Summary") < md.index("## Table 2")
    assert "paper: not reported" in md  # the paper has no mobilenet row: nothing guessed
    for name in names:
        assert f"(figures/{name})" in md

    data = _strict_json(result.json)
    assert data["n_resamples"] == 2000 and len(data["runs"]) == 2
    assert "2000" in md and "resamples" in md
    warnings = " ".join(data["warnings"])
    assert "coincide" in warnings  # covid only from cohen, normals only from nih/mooney


def test_report_numbers_match_the_predictions_file(runs, session_cache):
    from xrayfx.metrics import argmax_confusion
    from xrayfx.report import build_report

    result = build_report([runs["logreg"]], ablation=False, n_resamples=500, explain=0)
    assert result.out == runs["logreg"] / "report"  # default out for one run; cache found from the path
    with open(runs["logreg"] / "predictions.csv") as f:
        test = [r for r in csv.DictReader(f) if r["split"] == "test"]
    proba = np.array([[float(r["p_covid"]), float(r["p_normal"])] for r in test])
    labels = [r["label"] for r in test]
    expected = argmax_confusion(labels, proba, ["covid", "normal"], "covid")
    entry = result.data["runs"][0]
    assert entry["scores"]["argmax"]["counts"] == {**expected, "n": len(test)}
    y = np.array(labels) == "covid"
    auroc = entry["scores"]["ranking"]["auroc"]
    assert auroc["value"] == pytest.approx(roc_auc_score(y, proba[:, 0]))
    assert auroc["lo"] <= auroc["value"] <= auroc["hi"] and auroc["n_resamples"] == 500
    rec = entry["scores"]["argmax"]["positive"]["recall"]
    assert rec["lo"] <= rec["value"] <= rec["hi"]
    assert entry["audit"]["ablation"] == {"ran": False, "reason": "skipped (--no-ablation)"}
    probe = {p["class"]: p for p in entry["audit"]["probe"]}
    assert probe["normal"]["auroc"] >= 0.8 and probe["normal"]["flag"]
    assert set(entry["audit"]["breakdowns"]) == {"source", "view", "age_group"}


def test_ablation_scores_the_masked_test_images_with_the_runs_head(runs, session_cache):
    from xrayfx.report.build import read_run, run_ablation

    run = read_run(runs["logreg"], session_cache)
    abl = run_ablation(run, session_cache, log=lambda m: None)
    n_test = sum(1 for r in run.rows if r["split"] == "test")
    assert abl["ran"] and abl["n"] == n_test and abl["n_not_scored"] == 0
    for part in ("masked", "original"):
        assert 0.0 <= abl[part]["auroc"] <= 1.0 and 0.0 <= abl[part]["balanced_accuracy"] <= 1.0
    assert abl["flag"] == (abl["masked"]["auroc"] >= 0.7)
    original, masked = abl["_example"]
    assert original.shape == masked.shape == (224, 224, 3) and not np.array_equal(original, masked)


def test_tampered_run_is_refused(runs, session_cache, tmp_path):
    import shutil

    from xrayfx.report.build import read_run

    copy = tmp_path / "runs" / "tampered"
    shutil.copytree(runs["logreg"], copy, ignore=shutil.ignore_patterns("report"))
    with open(copy / "predictions.csv", "a") as f:
        f.write("x\n")
    with pytest.raises(IntegrityError, match="predictions.csv"):
        read_run(copy, session_cache)


# ---------------------------------------------------------------------------------------------
# Source probe on real normals of two sources


def test_source_probe_tells_nih_from_mooney_normals(shared_rows, tmp_path, mobilenet_config, mobilenet_export,
                                                    session_cache):
    from xrayfx.extraction.pipeline import extract

    nih = [r for r in shared_rows if r["label"] == "normal" and r["source"] == "nih"][:100]
    mooney = [r for r in shared_rows if r["label"] == "normal" and r["source"] == "mooney"][:100]
    manifest = write_manifest(tmp_path / "normals.csv", absolute_rows(nih + mooney))
    res = extract(data=manifest, config=mobilenet_config, cache_dir=session_cache, progress=False)
    groups = [m.get("patient_id") or i for m, i in zip(res.metadata, res.ids)]
    out = audit.source_probe_by_class(res.embeddings, res.labels, res.column("source"), groups)
    assert len(out) == 1 and out[0]["class"] == "normal"
    assert out[0]["sources"] == {"mooney": 100, "nih": 100}
    assert out[0]["auroc"] >= 0.8 and out[0]["flag"]


def test_source_probe_leaves_out_sources_with_too_few_patients():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4))
    labels = ["normal"] * 30
    sources = ["a"] * 12 + ["b"] * 12 + ["c"] * 6
    groups = [f"a{i}" for i in range(12)] + [f"b{i}" for i in range(12)] + ["c0", "c1"] * 3
    out = audit.source_probe_by_class(X, labels, sources, groups)
    assert out[0]["left_out"] == {"c": "2 patients (< 5 folds)"}
    assert out[0]["auroc"] is not None and math.isfinite(out[0]["auroc"])


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_report_prints_table2_and_writes_the_files(runs, tmp_path):
    out = tmp_path / "rep"
    proc = run_cli("report", str(runs["logreg"]), "--out", str(out), "--no-ablation", "--resamples", "300",
                   "--explain", "0")
    assert proc.returncode == 0, proc.stderr
    assert "Table 2" in proc.stdout and "not reported" in proc.stdout and "AUROC" in proc.stdout
    assert "AUDIT:" in proc.stdout
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.html", "report.json", "figures"}


def test_cli_report_help_has_an_example():
    proc = run_cli("report", "--help")
    assert proc.returncode == 0 and "Example:" in proc.stdout and "--no-ablation" in proc.stdout


def test_cli_report_unknown_run_exits_2_naming_it(tmp_path, capsys):
    code, _, err = run_cli_inprocess(["report", "no-such-run", "--cache-dir", str(tmp_path)], capsys)
    assert code == 2
    assert "no-such-run" in err and "Fix:" in err


def test_a_skewed_but_not_pure_source_is_named():
    from xrayfx.report.audit import confound_warnings

    rows = ([{"label": "covid", "source": "site-a"}] * 26 + [{"label": "covid", "source": "site-b"}] * 4
            + [{"label": "normal", "source": "site-a"}] * 18 + [{"label": "normal", "source": "site-b"}] * 52)
    warnings = confound_warnings(rows, "covid")
    assert any("87% of the covid images come from source site-a, against 26% of the other images" in w
               for w in warnings), warnings
    balanced = ([{"label": "covid", "source": "site-a"}] * 15 + [{"label": "covid", "source": "site-b"}] * 15
                + [{"label": "normal", "source": "site-a"}] * 35 + [{"label": "normal", "source": "site-b"}] * 35)
    assert not any("entangled" in w for w in confound_warnings(balanced, "covid"))
