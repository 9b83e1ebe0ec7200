"""Shortcut audit: does the model see the disease, or the source, age and markers of an image?

Published COVID-19 radiograph classifiers score 94–98 % on their own test sets
and near AUROC 0.8 on other hospitals' images, because they learn where an
image came from rather than what it shows (DeGrave et al., 2021; Roberts et
al., 2021). Four checks, all reported in every report:

* :func:`breakdown` — metrics per value of ``source``, ``view`` and
  ``age_group`` (where the manifest has them).
* :func:`confound_warnings` — sentences where the label coincides with the
  source or the age group (e.g. every positive from one source).
* :func:`source_probe_by_class` — within each class holding at least two
  sources, a patient-grouped 5-fold logistic regression on the embeddings
  predicts the source (:func:`xrayfx.metrics.source_probe`); an AUROC near 1
  means the features carry the source, so a head can use it as a shortcut.
* :func:`masked_lung_ablation` — the central box (60 % of the width, 70 % of
  the height) of every test image is set to the image's mean grey, the
  embeddings are computed again and the run's own head scores them. The mask
  is applied to the decoded image at its own resolution, *before* resizing to
  the backbone's input, so the box covers the same anatomy whatever the input
  size. An AUROC of 0.7 or more without the lungs means the model leans on what
  lies outside them (Maguolo & Nanni, 2020).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np

from xrayfx import metrics
from xrayfx.exceptions import DataError, ImageDecodeError, UsageError
from xrayfx.data.images import decode_image, draft_size_for, resize_image
from xrayfx.metrics import fast_auroc
from xrayfx.data.sources import confounding_warnings

#: Metadata columns the audit breaks metrics down by, when present.
AUDIT_COLUMNS = ("source", "view", "age_group")
#: Fractions of the width and height of the central box the ablation masks.
MASK_WIDTH_FRACTION = 0.6
MASK_HEIGHT_FRACTION = 0.7
#: A masked-lung AUROC at or above this is flagged.
ABLATION_FLAG_AUROC = 0.7
#: A within-class source-probe AUROC at or above this is flagged.
PROBE_FLAG_AUROC = 0.8
#: Source share above which "source alone predicts the label" is reported.
PURITY_WARN = 0.9
PROBE_SPLITS = 5


# ---------------------------------------------------------------------------------------------
# Breakdown by metadata


def breakdown(
    labels: Sequence[str],
    proba: np.ndarray,
    classes: Sequence[str],
    positive: str,
    values: Sequence[str],
    groups: Sequence[str],
    n_resamples: int = 2000,
    seed: int = 0,
    auc_fn: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> list[dict[str, Any]]:
    """Metrics at the argmax decision for each value of one metadata column.

    Each entry holds the value, image and patient counts per class, accuracy,
    sensitivity (when it holds positives), specificity (when it holds
    negatives), all with Wilson intervals, the mean positive-class probability,
    and the AUROC with a patient-bootstrap interval where both classes occur
    (``None`` otherwise: a group of one class has no AUROC).
    """
    labels = np.asarray(labels).astype(str)
    values = np.asarray(values).astype(str)
    groups = np.asarray(groups).astype(str)
    pos_col = list(classes).index(positive)
    out = []
    for value in sorted(set(values.tolist()), key=lambda v: (-int(np.sum(values == v)), v)):
        idx = np.flatnonzero(values == value)
        y = labels[idx] == str(positive)
        c = metrics.argmax_confusion(labels[idx], proba[idx], classes, positive)
        entry: dict[str, Any] = {
            "value": value or "(blank)",
            "n": int(len(idx)),
            "n_positive": int(y.sum()),
            "n_negative": int((~y).sum()),
            "n_patients": int(len(set(groups[idx].tolist()))),
            "counts": c,
            "accuracy": metrics.proportion(c["tp"] + c["tn"], len(idx), what="accuracy"),
            "sensitivity": metrics.proportion(c["tp"], c["tp"] + c["fn"], what="sensitivity") if y.any() else None,
            "specificity": metrics.proportion(c["tn"], c["tn"] + c["fp"], what="specificity")
            if (~y).any() else None,
            "mean_p_positive": float(np.mean(proba[idx, pos_col])),
            "auroc": None,
        }
        if y.any() and (~y).any():
            p = proba[idx, pos_col]
            if np.isin(p, (0.0, 1.0)).all():
                entry["auroc_note"] = "probabilities are all 0 or 1: AUROC not computed"
            else:
                entry["auroc"] = metrics.patient_bootstrap(
                    y, p, groups[idx], auc_fn or fast_auroc, n_resamples=n_resamples, seed=seed
                )
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------
# Confounding


def confound_warnings(rows: list[dict[str, str]], positive: str) -> list[str]:
    """Sentences naming where the label coincides with the source or the age group.

    ``rows`` are the run's images (dicts with ``label``, ``source``,
    ``age_group``). Combines :func:`xrayfx.data.sources.confounding_warnings`
    (disjoint sources or age groups, values found in one class only) with two
    checks of its own: every image of a class from one source, and how often the
    source (or age group) alone gives the label when each value is mapped to its
    commonest class.
    """
    if len({r.get("label", "") for r in rows}) < 2:
        return []
    out = list(confounding_warnings(rows))
    for column in ("source", "age_group"):
        vals = [r.get(column, "") for r in rows]
        if not any(vals) or len(set(vals)) < 2:
            continue
        name = column.replace("_", " ")
        by_label: dict[str, Counter] = {}
        for r in rows:
            by_label.setdefault(r.get("label", ""), Counter())[r.get(column, "")] += 1
        for lab, counter in sorted(by_label.items()):
            if len(counter) == 1:
                (value, n), = counter.items()
                others = sum(c[value] for other, c in by_label.items() if other != lab)
                n_others = sum(sum(c.values()) for other, c in by_label.items() if other != lab)
                if 0 < others < 0.5 * n_others:  # disjoint classes are named by confounding_warnings
                    out.append(
                        f"all {n} {lab} images come from {name} {value or '(blank)'}, which supplies only "
                        f"{others} of the {n_others} images of the other class(es): {name} {value or '(blank)'} "
                        f"nearly means {lab}"
                    )
        out += _skew_warnings(by_label, name)
        per_value: dict[str, Counter] = {}
        for r in rows:
            per_value.setdefault(r.get(column, ""), Counter())[r.get("label", "")] += 1
        purity = sum(max(c.values()) for c in per_value.values()) / len(rows)
        if PURITY_WARN <= purity < 1.0:  # a purity of 1 is the disjoint case, named above
            out.append(
                f"the {name} alone gives the right label for {purity:.0%} of the images "
                f"(each {name} mapped to its commonest class): a model can score that well without "
                "looking at the lungs"
            )
    return list(dict.fromkeys(out))


SKEW_MAJORITY = 0.75  # a value supplying this share of one class …
SKEW_OTHERS = 0.5  # … but at most this share of the others is named


def _skew_warnings(by_label: dict[str, Counter], name: str) -> list[str]:
    """Name a value (a source, an age group) that supplies most of one class but far less of the others.

    Softer than the purity check: 87 % of positives from one site against 26 % of
    negatives is a confound a head can learn even when no value is pure.
    """
    out = []
    for lab, counter in sorted(by_label.items()):
        total = sum(counter.values())
        value, n = counter.most_common(1)[0]
        if len(counter) < 2:
            continue  # one value for the whole class: named by the checks above
        others = [c for other, c in by_label.items() if other != lab]
        n_others = sum(sum(c.values()) for c in others)
        share_others = sum(c[value] for c in others) / n_others if n_others else 0.0
        if n / total >= SKEW_MAJORITY and 0 < share_others <= SKEW_OTHERS:  # 0: disjoint, named above
            out.append(
                f"{n / total:.0%} of the {lab} images come from {name} {value or '(blank)'}, against "
                f"{share_others:.0%} of the other images: {name} and label are entangled"
            )
    return out


# ---------------------------------------------------------------------------------------------
# Source probe


def source_probe_by_class(
    embeddings: np.ndarray,
    labels: Sequence[str],
    sources: Sequence[str],
    groups: Sequence[str],
    n_splits: int = PROBE_SPLITS,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Run :func:`xrayfx.metrics.source_probe` within each class that holds at least two sources.

    Sources with fewer patients than ``n_splits`` are left out of that class's
    probe (and named in ``left_out``); a class left with fewer than two
    sources gets ``auroc = None`` and a ``note``. ``flag`` is True when the
    probe's one-vs-rest macro AUROC is at least :data:`PROBE_FLAG_AUROC`.
    """
    X = np.asarray(embeddings, dtype=float)
    labels = np.asarray(labels).astype(str)
    sources = np.asarray(sources).astype(str)
    groups = np.asarray(groups).astype(str)
    if not (len(X) == len(labels) == len(sources) == len(groups)):
        raise UsageError(
            f"Expected one label, source and group per embedding row ({len(X)}); got "
            f"{len(labels)} labels, {len(sources)} sources, {len(groups)} groups."
        )
    out = []
    for lab in sorted(set(labels.tolist())):
        in_class = labels == lab
        srcs = sorted(set(sources[in_class].tolist()) - {""})
        if len(srcs) < 2:
            continue
        entry: dict[str, Any] = {
            "class": lab,
            "sources": {s: int(np.sum(in_class & (sources == s))) for s in srcs},
            "left_out": {},
            "auroc": None,
            "flag": False,
            "note": None,
        }
        kept = []
        for s in srcs:
            n_patients = len(set(groups[in_class & (sources == s)].tolist()))
            if n_patients < n_splits:
                entry["left_out"][s] = f"{n_patients} patients (< {n_splits} folds)"
            else:
                kept.append(s)
        if len(kept) < 2:
            entry["note"] = (
                f"fewer than two sources of class {lab} have {n_splits} or more patients; probe not run"
            )
            out.append(entry)
            continue
        idx = np.flatnonzero(in_class & np.isin(sources, kept))
        try:
            res = metrics.source_probe(X[idx], sources[idx], groups[idx], n_splits=n_splits, seed=seed)
        except DataError as exc:
            entry["note"] = f"probe not run: {exc}"
            out.append(entry)
            continue
        entry.update(
            auroc=res["auroc_macro_ovr"],
            per_source_auroc=res["per_source_auroc"],
            n=int(len(idx)),
            n_patients=res["n_groups"],
            n_splits=n_splits,
            flag=bool(res["auroc_macro_ovr"] >= PROBE_FLAG_AUROC),
        )
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------
# Masked-lung ablation


def mask_centre(
    img: np.ndarray, width_fraction: float = MASK_WIDTH_FRACTION, height_fraction: float = MASK_HEIGHT_FRACTION
) -> np.ndarray:
    """A copy of ``img`` (H, W[, C]) with its central box set to the image's mean grey.

    The box spans ``width_fraction`` of the width and ``height_fraction`` of the
    height, centred (rounded to whole pixels). The grey is the mean of all
    pixels and channels of the *unmasked* image, rounded, so that the mask adds
    no brightness cue of its own.
    """
    img = np.asarray(img)
    if img.ndim not in (2, 3) or img.shape[0] < 1 or img.shape[1] < 1:
        raise UsageError(f"Expected an image array (H, W) or (H, W, C); got shape {img.shape}.")
    for name, f in (("width_fraction", width_fraction), ("height_fraction", height_fraction)):
        if not 0.0 < float(f) <= 1.0:
            raise UsageError(f"Expected {name} in (0, 1]; got {f!r}.")
    h, w = img.shape[:2]
    bh, bw = int(round(h * height_fraction)), int(round(w * width_fraction))
    top, left = (h - bh) // 2, (w - bw) // 2
    grey = np.round(float(img.mean()))
    out = img.copy()
    out[top:top + bh, left:left + bw] = np.asarray(grey).astype(img.dtype)
    return out


def masked_images(paths: Sequence[str], prep: Any) -> tuple[np.ndarray, list[int], list[str]]:
    """Decode, mask (:func:`mask_centre`) and resize every image; return (batch, kept rows, problems).

    Decoding uses the pipeline's JPEG draft size, so the unmasked pixels are the
    ones the run was trained on; the mask is applied before the resize.
    """
    size = draft_size_for(prep)
    batch, kept, problems = [], [], []
    for i, path in enumerate(paths):
        try:
            img = decode_image(path, draft_size=size)
        except (ImageDecodeError, OSError) as exc:
            problems.append(f"{path}: {exc}")
            continue
        batch.append(resize_image(mask_centre(img), size, prep.resize))
        kept.append(i)
    arr = np.stack(batch) if batch else np.zeros((0, *size, 3), dtype=np.uint8)
    return arr, kept, problems


def ablation_scores(
    labels: Sequence[str],
    proba_masked: np.ndarray,
    proba_original: np.ndarray,
    classes: Sequence[str],
    positive: str,
) -> dict[str, Any]:
    """AUROC and balanced accuracy (argmax) of masked images, beside the unmasked ones.

    ``flag`` is True when the masked AUROC is at least :data:`ABLATION_FLAG_AUROC`.
    """
    labels = np.asarray(labels).astype(str)
    y = labels == str(positive)
    col = list(classes).index(positive)
    out: dict[str, Any] = {"n": int(len(y)), "n_positive": int(y.sum()), "n_negative": int((~y).sum())}
    for name, proba in (("masked", proba_masked), ("original", proba_original)):
        c = metrics.argmax_confusion(labels, proba, classes, positive)
        sens = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else math.nan
        spec = c["tn"] / (c["tn"] + c["fp"]) if c["tn"] + c["fp"] else math.nan
        p = proba[:, col]
        auroc = math.nan
        if y.any() and (~y).any() and not np.isin(p, (0.0, 1.0)).all():
            auroc = metrics.roc_auc(y, p)
        out[name] = {"auroc": auroc, "balanced_accuracy": (sens + spec) / 2, "counts": c,
                     "sensitivity": sens, "specificity": spec}
    changed = np.argmax(proba_masked, axis=1) != np.argmax(proba_original, axis=1)
    out["decisions_changed"] = int(changed.sum())
    masked_auc = out["masked"]["auroc"]
    out["flag"] = bool(math.isfinite(masked_auc) and masked_auc >= ABLATION_FLAG_AUROC)
    out["mask"] = {"width_fraction": MASK_WIDTH_FRACTION, "height_fraction": MASK_HEIGHT_FRACTION,
                   "fill": "the image's mean grey", "applied": "before resizing, on the decoded image"}
    return out
