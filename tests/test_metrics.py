"""Metrics against hand-computed cases, the paper's Table 2, and a patient bootstrap that moves patients."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from scipy.stats import binomtest

from xrayfx.exceptions import DataError, UsageError
from xrayfx.metrics import (
    PAPER_TABLE2,
    PAPER_TEST_SET,
    argmax_confusion,
    bootstrap_auroc,
    bootstrap_f1,
    bootstrap_pr_auc,
    calibration,
    class_report,
    confusion_at_threshold,
    patient_bootstrap,
    pr_auc,
    roc_auc,
    source_probe,
    wilson_interval,
    youden_interval,
)

Z95 = 1.959963984540054  # standard normal 97.5% quantile


def wilson_by_hand(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


# --- Wilson ---------------------------------------------------------------------------------


def test_wilson_37_of_42_by_hand_and_against_scipy():
    lo, hi = wilson_interval(37, 42)
    assert (lo, hi) == pytest.approx(wilson_by_hand(37, 42), abs=1e-12)
    assert lo == pytest.approx(0.74999, abs=5e-5) and hi == pytest.approx(0.94806, abs=5e-5)
    ref = binomtest(37, 42).proportion_ci(0.95, method="wilson")
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_wilson_edges_and_zero_n():
    # k = n: lo = n / (n + z^2), hi = 1; k = 0: lo = 0, hi = z^2 / (n + z^2)
    assert wilson_interval(42, 42) == pytest.approx((42 / (42 + Z95**2), 1.0), abs=1e-12)
    assert wilson_interval(0, 10) == pytest.approx((0.0, Z95**2 / (10 + Z95**2)), abs=1e-12)
    lo, hi = wilson_interval(0, 0)
    assert math.isnan(lo) and math.isnan(hi)
    # 90%: z = 1.6448536269514722
    assert wilson_interval(5, 20, 0.90) == pytest.approx(wilson_by_hand(5, 20, 1.6448536269514722))
    for bad in ((5, 3), (-1, 3), (1.5, 3)):
        with pytest.raises(UsageError):
            wilson_interval(*bad)


# --- Counts ---------------------------------------------------------------------------------


def test_confusion_at_threshold_counts_ties_as_positive():
    y = np.array([True, True, False, False, True])
    p = np.array([0.9, 0.5, 0.5, 0.2, 0.1])
    assert confusion_at_threshold(y, p, 0.5) == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    assert confusion_at_threshold([1, 1, 0, 0, 1], p, 0.95) == {"tp": 0, "fp": 0, "fn": 3, "tn": 2}
    with pytest.raises(UsageError, match="booleans"):
        confusion_at_threshold(["covid"] * 5, p)


def test_argmax_confusion_hand_case():
    labels = ["covid", "covid", "normal", "normal", "covid"]
    proba = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.5, 0.5], [0.6, 0.4]])
    # predicted: covid, normal, normal, covid (tie -> classes[0]), covid
    out = argmax_confusion(labels, proba, ["covid", "normal"], positive="covid")
    assert out == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    # the same rows with the classes in the other order
    out2 = argmax_confusion(labels, proba[:, ::-1], ["normal", "covid"], positive="covid")
    assert out2 == {"tp": 2, "fp": 0, "fn": 1, "tn": 2}  # tie now goes to normal
    with pytest.raises(UsageError, match="positive class"):
        argmax_confusion(labels, proba, ["covid", "normal"], positive="pneumonia")


def test_class_report_resnet101v2_cell_of_the_paper():
    r = class_report(tp=37, fp=1, fn=5, tn=281, positive_label="COVID-19", negative_label="normal")
    assert r["accuracy"]["value"] == pytest.approx(318 / 324) and round(r["accuracy"]["value"], 3) == 0.981
    assert r["positive"]["precision"]["value"] == pytest.approx(37 / 38)  # 0.974
    assert r["positive"]["recall"]["value"] == pytest.approx(37 / 42)  # 0.881
    assert r["positive"]["f1"]["value"] == pytest.approx(74 / 80)  # 0.925
    assert r["negative"]["precision"]["value"] == pytest.approx(281 / 286)
    assert r["negative"]["recall"]["value"] == pytest.approx(281 / 282)
    assert r["negative"]["f1"]["value"] == pytest.approx(562 / 568)
    assert r["positive"]["support"] == 42 and r["negative"]["support"] == 282
    rec = r["positive"]["recall"]
    assert (rec["numerator"], rec["denominator"]) == (37, 42)
    assert (rec["lo"], rec["hi"]) == pytest.approx(wilson_by_hand(37, 42), abs=1e-12)
    assert (rec["lo"], rec["hi"]) == pytest.approx((0.7500, 0.9481), abs=1e-4)
    assert r["sensitivity"]["value"] == rec["value"]
    assert r["specificity"]["value"] == pytest.approx(281 / 282)
    assert r["ppv"]["value"] == pytest.approx(37 / 38) and r["npv"]["value"] == pytest.approx(281 / 286)
    assert r["notes"] == []
    assert r["positive"]["label"] == "COVID-19"


def test_class_report_perfect_classifier():
    r = class_report(42, 0, 0, 282)
    for key in ("accuracy", "sensitivity", "specificity", "ppv", "npv"):
        assert r[key]["value"] == 1.0
        assert r[key]["hi"] == 1.0
    assert r["sensitivity"]["lo"] == pytest.approx(42 / (42 + Z95**2))  # 0.9162
    assert r["specificity"]["lo"] == pytest.approx(282 / (282 + Z95**2))
    assert r["positive"]["f1"]["value"] == 1.0 and r["negative"]["f1"]["value"] == 1.0


def test_class_report_zero_denominators_give_nan_and_notes():
    # the model never says positive: precision and PPV undefined, F1 = 0
    r = class_report(tp=0, fp=0, fn=3, tn=10)
    assert math.isnan(r["positive"]["precision"]["value"]) and math.isnan(r["ppv"]["lo"])
    assert r["positive"]["precision"]["denominator"] == 0
    assert r["positive"]["f1"]["value"] == 0.0
    assert r["positive"]["recall"]["value"] == 0.0
    assert any("precision undefined" in n for n in r["notes"])
    # no positives at all: recall, sensitivity, F1 undefined
    r = class_report(tp=0, fp=0, fn=0, tn=5)
    assert math.isnan(r["sensitivity"]["value"]) and math.isnan(r["positive"]["f1"]["value"])
    assert any("F1 undefined" in n for n in r["notes"])
    # nothing at all
    r = class_report(0, 0, 0, 0)
    assert math.isnan(r["accuracy"]["value"])
    with pytest.raises(UsageError):
        class_report(-1, 0, 0, 0)


# --- Paper's Table 2 --------------------------------------------------------------------------


def test_paper_table2_data_is_consistent_with_its_counts():
    assert set(PAPER_TABLE2) == {"inceptionv3", "inceptionresnetv2", "resnet101v2", "densenet201"}
    assert PAPER_TEST_SET == {"covid": 42, "normal": 282}
    assert PAPER_TABLE2["inceptionresnetv2"]["tp"] is None
    assert "27" in " ".join(PAPER_TABLE2["inceptionresnetv2"]["notes"])
    for name, row in PAPER_TABLE2.items():
        tp = row["tp"] if row["tp"] is not None else 42 - row["fn"]
        assert tp + row["fn"] == 42 and row["fp"] + row["tn"] == 282, name
        r = class_report(tp, row["fp"], row["fn"], row["tn"])
        for ours, theirs in (("positive", "covid"), ("negative", "normal")):
            for m in ("precision", "recall", "f1"):
                assert round(r[ours][m]["value"], 2) == row[theirs][m], (name, theirs, m)
        assert round(r["accuracy"]["value"], 2) == row["accuracy"], name


# --- Ranking metrics --------------------------------------------------------------------------


def test_auroc_and_average_precision_hand_case():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    # positive-negative pairs ranked right: (.35>.1) (.8>.1) (.8>.4) of 4 -> 0.75
    assert roc_auc(y, p) == pytest.approx(0.75)
    # ranked: .8(+) .4(-) .35(+) .1(-): AP = 0.5 * 1 + 0.5 * 2/3
    assert pr_auc(y, p) == pytest.approx(0.5 + 1 / 3)


def test_auroc_refuses_hard_labels_and_one_class():
    y = np.array([0, 0, 1, 1])
    for fn in (roc_auc, pr_auc, youden_interval):
        with pytest.raises(UsageError, match="hard labels"):
            fn(y, np.array([0, 1, 1, 1]))
    with pytest.raises(UsageError, match="hard labels"):
        bootstrap_auroc(y, np.array([0.0, 1.0, 1.0, 1.0]), groups=np.arange(4))
    with pytest.raises(UsageError, match="both classes"):
        roc_auc(np.array([1, 1, 1]), np.array([0.2, 0.3, 0.4]))


def test_youden_threshold_hand_case():
    y = np.array([0, 0, 0, 1, 1, 0, 1, 1], dtype=bool)
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    # J at p >= t: .8 -> .25, .7 -> .50, .6 -> .25, .5 -> .50, .4 -> 1 - .25 = .75 (max), .3 -> .50
    lower, t = youden_interval(y, p)
    assert (lower, t) == (0.3, 0.4)
    assert confusion_at_threshold(y, p, t) == {"tp": 4, "fp": 1, "fn": 0, "tn": 3}


def test_youden_ties_go_to_the_highest_threshold():
    y = np.array([0, 0, 1, 0, 1, 1], dtype=bool)
    p = np.array([0.1, 0.3, 0.35, 0.4, 0.8, 0.9])
    # J(.8) = 2/3 - 0 and J(.35) = 1 - 1/3: a tie; the higher threshold is returned
    assert youden_interval(y, p) == (0.4, 0.8)


# --- Calibration ------------------------------------------------------------------------------


def test_calibration_hand_case():
    out = calibration([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], n_bins=2)
    assert np.allclose(out["bin_mid"], [0.25, 0.75])
    assert np.array_equal(out["count"], [2, 2])
    assert np.allclose(out["frac_pos"], [0.0, 1.0])
    assert np.allclose(out["mean_pred"], [0.15, 0.8])
    assert out["brier"] == pytest.approx((0.01 + 0.04 + 0.09 + 0.01) / 4)  # 0.0375
    assert out["ece"] == pytest.approx(0.5 * 0.15 + 0.5 * 0.2)  # 0.175


def test_calibration_bin_edges_and_empty_bins():
    out = calibration([1, 0, 1], [0.5, 0.0, 1.0], n_bins=4)
    # 0.0 -> bin 0; 0.5 -> bin 2 (left-closed); 1.0 -> last bin
    assert np.array_equal(out["count"], [1, 0, 1, 1])
    assert math.isnan(out["frac_pos"][1]) and math.isnan(out["mean_pred"][1])
    assert out["brier"] == pytest.approx(0.25 / 3)
    assert out["ece"] == pytest.approx(0.5 / 3)  # only the 0.5 bin is off, by 0.5
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        calibration([1, 0], [1.2, 0.1])


# --- Patient bootstrap ------------------------------------------------------------------------


def test_bootstrap_moves_whole_patients():
    rng = np.random.default_rng(0)
    sizes = [1, 2, 3, 4, 5, 1, 2, 3, 7, 2, 1, 4]
    groups = np.repeat([f"p{i}" for i in range(len(sizes))], sizes)
    rng.shuffle(groups)  # a patient's images are not contiguous
    n = len(groups)
    y = np.array([g in {"p0", "p3", "p5", "p8"} for g in groups])
    p = (np.arange(n) + 0.5) / n  # each row's p identifies the row
    seen = []

    def stat(yr, pr):
        rows = np.rint(pr * n - 0.5).astype(int)
        mult = Counter(rows.tolist())
        per_group = {}
        for g in np.unique(groups):
            m = {mult.get(int(r), 0) for r in np.flatnonzero(groups == g)}
            assert len(m) == 1, f"patient {g} split apart: multiplicities {m}"
            per_group[g] = m.pop()
        assert sum(per_group.values()) == len(sizes)  # as many patients drawn as there are
        assert np.array_equal(yr, y[rows])  # labels travel with their rows
        seen.append(len(rows))
        return float(np.mean(pr))

    out = patient_bootstrap(y, p, groups, stat, n_resamples=200, seed=1)
    assert out["n_groups"] == 12 and out["n_resamples"] == 200
    assert out["n_used"] + out["n_skipped"] == 200
    assert len(seen) == out["n_used"] + 1  # + the value on the full data
    assert len(set(seen)) > 5  # resample sizes vary: whole patients of different sizes


def test_bootstrap_skips_one_class_resamples_and_counts_them():
    # one positive patient of five: a resample misses it with probability (4/5)^5 = 0.328
    groups = np.repeat(["a", "b", "c", "d", "e"], 3)
    y = groups == "a"
    p = np.linspace(0.05, 0.95, 15)
    calls = []

    def stat(yr, pr):
        assert yr.any() and not yr.all()
        calls.append(1)
        return 0.5

    out = patient_bootstrap(y, p, groups, stat, n_resamples=2000, seed=0)
    assert len(calls) == out["n_used"] + 1
    assert out["n_skipped"] == out["n_skipped_one_class"] == 2000 - out["n_used"]
    assert 550 < out["n_skipped"] < 760  # 656 +- 5 sd
    assert "one class only" in out["notes"][0]


def test_bootstrap_wrappers_and_reproducibility():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(60), 3)
    y = np.repeat(rng.random(60) < 0.3, 3)
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.15, len(y)), 0.001, 0.999)
    a = bootstrap_auroc(y, p, groups, n_resamples=300, seed=5)
    b = bootstrap_auroc(y, p, groups, n_resamples=300, seed=5)
    assert a == b
    assert a["value"] == pytest.approx(roc_auc(y, p))
    assert a["lo"] < a["value"] < a["hi"] and 0.5 < a["lo"]
    ap = bootstrap_pr_auc(y, p, groups, n_resamples=300)
    assert ap["value"] == pytest.approx(pr_auc(y, p)) and ap["lo"] <= ap["hi"]
    f1 = bootstrap_f1(y, p, groups, threshold=0.5, n_resamples=300)
    c = confusion_at_threshold(y, p, 0.5)
    assert f1["value"] == pytest.approx(2 * c["tp"] / (2 * c["tp"] + c["fp"] + c["fn"]))


# --- Source probe -----------------------------------------------------------------------------


def _sources(n_patients=100, per_patient=2, n_sources=3, seed=0):
    rng = np.random.default_rng(seed)
    src = np.repeat(np.arange(n_patients * n_sources) % n_sources, per_patient)
    groups = np.repeat(np.arange(n_patients * n_sources), per_patient)
    names = np.array(["cohen", "kaggle", "other"])[src]
    return rng, names, src, groups


@pytest.mark.parametrize("n_sources", [2, 3])
def test_source_probe_finds_encoded_source_and_not_noise(n_sources):
    rng, names, src, groups = _sources(n_sources=n_sources)
    noise = rng.normal(size=(len(src), 8))
    encoded = noise.copy()
    encoded[np.arange(len(src)), src] += 4.0  # the source is written into one feature
    out = source_probe(encoded, names, groups, seed=0)
    assert out["auroc_macro_ovr"] > 0.95
    assert out["n_sources"] == n_sources
    assert out["per_source_counts"] == {k: 200 for k in ["cohen", "kaggle", "other"][:n_sources]}
    rand = source_probe(noise, names, groups, seed=0)
    assert abs(rand["auroc_macro_ovr"] - 0.5) < 0.1  # null SD about 0.03 at 200 per source


def test_source_probe_refuses_one_source_and_small_sources():
    rng, names, src, groups = _sources(n_sources=2)
    X = rng.normal(size=(len(src), 4))
    with pytest.raises(DataError, match="at least two sources"):
        source_probe(X, ["cohen"] * len(src), groups)
    names = names.copy()
    names[groups < 6] = "tiny"  # patients 0..5 -> 'tiny' source has 6 patients
    with pytest.raises(DataError, match="'tiny' has 6 patients"):
        source_probe(X, names, groups, n_splits=7)
