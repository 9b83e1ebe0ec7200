"""The report's figures, drawn with matplotlib's Agg canvas straight to PNG bytes.

No pyplot: every figure is a :class:`matplotlib.figure.Figure` on its own Agg
canvas, so drawing needs no display, no global state and no backend switch.

Per run: training and validation loss and accuracy per epoch (the paper's
Figures 4–7; paper head only), ROC and precision-recall curves with the
operating points marked, the confusion matrices, the reliability curve, and an
example of the masked-lung ablation. Across runs: one chart comparing the
backbones' AUROC and accuracy with their intervals.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import MaxNLocator

DPI = 110
POSITIVE_COLOUR = "#c0392b"
NEGATIVE_COLOUR = "#2c7fb8"
NEUTRAL = "#555555"


@dataclass
class Figure:
    """One PNG of the report."""

    name: str  # file name, e.g. "<run-id>-roc.png"
    title: str
    caption: str
    png: bytes
    run_id: str | None = None


def _png(fig: MplFigure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def _new(width: float, height: float, ncols: int = 1) -> tuple[MplFigure, Any]:
    fig = MplFigure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _fmt_ci(ci: dict[str, Any] | None) -> str:
    if not ci or ci.get("value") is None or _nan(ci.get("value")):
        return "n/a"
    lo, hi = ci.get("lo"), ci.get("hi")
    if lo is None or _nan(lo):
        return f"{ci['value']:.3f}"
    return f"{ci['value']:.3f} ({lo:.3f}–{hi:.3f})"


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


# ---------------------------------------------------------------------------------------------
# Per run


def history_figure(history: list[dict[str, Any]], label: str, run_id: str) -> Figure | None:
    """Loss and accuracy per epoch, training and validation (one line per fold for k-fold runs)."""
    rows = [r for r in history if r.get("epoch") is not None]
    if not rows:
        return None
    fig, (ax_loss, ax_acc) = _new(9.0, 3.4, 2)
    folds = sorted({int(r.get("fold", -1)) for r in rows})
    for f in folds:
        part = sorted((r for r in rows if int(r.get("fold", -1)) == f), key=lambda r: r["epoch"])
        ep = [r["epoch"] for r in part]
        suffix = "" if len(folds) == 1 else f" ({len(folds)} folds)"
        alpha = 1.0 if len(folds) == 1 else 0.6
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            tr = [np.nan if r.get(key) is None else r[key] for r in part]
            va = [np.nan if r.get(f"val_{key}") is None else r[f"val_{key}"] for r in part]
            ax.plot(ep, tr, color=NEGATIVE_COLOUR, alpha=alpha, label=f"training{suffix}" if f == folds[0] else None)
            if np.isfinite(np.asarray(va, dtype=float)).any():
                ax.plot(ep, va, color=POSITIVE_COLOUR, alpha=alpha, linestyle="--",
                        label=f"validation{suffix}" if f == folds[0] else None)
    for ax, what in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_loss.set_title(f"{label}: loss per epoch", fontsize=10)
    ax_acc.set_title(f"{label}: accuracy per epoch", fontsize=10)
    return Figure(
        name=f"{run_id}-history.png",
        title=f"Training history — {label}",
        caption="Training (solid) and validation (dashed) loss and accuracy per epoch, as in the paper's "
        "Figures 4–7 (one pair of lines per fold for k-fold runs). A validation curve that drifts away from the "
        "training curve signals over-fitting.",
        png=_png(fig), run_id=run_id,
    )


def _finish_curve(ax: Any, points: Sequence[tuple[str, float, float]], xlabel: str, ylabel: str, title: str,
                  legend_loc: str) -> None:
    """Mark the operating points (name, x, y) on a unit-square curve plot and label it."""
    for (name, x, yy), marker in zip(points, ("o", "s", "^")):
        if not (_nan(x) or _nan(yy)):
            ax.plot([x], [yy], marker=marker, markersize=8, linestyle="", color=POSITIVE_COLOUR
                    if marker == "o" else "#27ae60", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc=legend_loc)


def roc_figure(y: np.ndarray, p: np.ndarray, points: Sequence[tuple[str, float, float]], auroc: dict | None,
               label: str, run_id: str) -> Figure:
    """ROC curve of the test rows with the operating points (name, FPR, TPR) marked."""
    from sklearn.metrics import roc_curve

    fig, (ax,) = _new(4.6, 4.4)
    if y.any() and (~y).any():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, color=NEGATIVE_COLOUR, label=f"ROC, AUROC {_fmt_ci(auroc)}")
    ax.plot([0, 1], [0, 1], color="#aaaaaa", linestyle=":", label="chance")
    _finish_curve(ax, points, "1 − specificity (false-positive rate)", "sensitivity (true-positive rate)",
                  f"ROC — {label}", "lower right")
    return Figure(
        name=f"{run_id}-roc.png", title=f"ROC curve — {label}",
        caption="ROC curve of the test images from the predicted probabilities. Markers: the paper's decision "
        "(the larger probability wins) and the threshold chosen on the validation images (Youden's J).",
        png=_png(fig), run_id=run_id,
    )


def pr_figure(y: np.ndarray, p: np.ndarray, points: Sequence[tuple[str, float, float]], pr_auc: dict | None,
              label: str, run_id: str, positive: str) -> Figure:
    """Precision-recall curve with the operating points (name, recall, precision) and the prevalence line."""
    from sklearn.metrics import precision_recall_curve

    fig, (ax,) = _new(4.6, 4.4)
    if y.any() and (~y).any():
        prec, rec, _ = precision_recall_curve(y, p)
        ax.step(rec, prec, where="post", color=NEGATIVE_COLOUR, label=f"PR, AP {_fmt_ci(pr_auc)}")
        ax.axhline(float(y.mean()), color="#aaaaaa", linestyle=":", label=f"prevalence {y.mean():.2f}")
    _finish_curve(ax, points, f"recall (sensitivity for {positive})", f"precision (PPV for {positive})",
                  f"Precision-recall — {label}", "lower left")
    return Figure(
        name=f"{run_id}-pr.png", title=f"Precision-recall curve — {label}",
        caption=f"Precision-recall curve for {positive} on the test images, with the same operating points. "
        "The dotted line is the precision of a classifier that guesses (the prevalence).",
        png=_png(fig), run_id=run_id,
    )


def confusion_figure(matrices: Sequence[tuple[str, dict[str, int]]], positive: str, negative: str,
                     label: str, run_id: str) -> Figure:
    """Confusion matrices (rows: truth, columns: decision), shaded by the share of each true class."""
    fig, axes = _new(3.6 * len(matrices) + 0.4, 3.4, len(matrices))
    for ax, (name, c) in zip(axes, matrices):
        m = np.array([[c["tp"], c["fn"]], [c["fp"], c["tn"]]], dtype=float)
        share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(2):
            for j in range(2):
                ax.text(j, i, f"{int(m[i, j])}\n({share[i, j]:.0%})", ha="center", va="center",
                        color="white" if share[i, j] > 0.6 else "black", fontsize=10)
        ax.set_xticks([0, 1], [f"called {positive}", f"called {negative}"], fontsize=8)
        ax.set_yticks([0, 1], [f"truly {positive}", f"truly {negative}"], fontsize=8)
        ax.set_title(name, fontsize=9)
    fig.suptitle(f"Confusion matrices — {label}", fontsize=10)
    return Figure(
        name=f"{run_id}-confusion.png", title=f"Confusion matrices — {label}",
        caption="Test images by true class (rows) and decision (columns); the shade is the share of each true "
        "class. Left: the paper's argmax decision; right (when available): the validation-chosen threshold.",
        png=_png(fig), run_id=run_id,
    )


def calibration_figure(cal: dict[str, Any], label: str, run_id: str, positive: str) -> Figure:
    """Reliability curve (observed share of positives against mean predicted probability) and bin counts."""
    fig = MplFigure(figsize=(4.6, 5.0), layout="constrained")
    ax, ax_n = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    mean_pred = np.asarray(cal["mean_pred"], dtype=float)
    frac = np.asarray(cal["frac_pos"], dtype=float)
    count = np.asarray(cal["count"], dtype=float)
    ok = count > 0
    ax.plot([0, 1], [0, 1], color="#aaaaaa", linestyle=":", label="perfect calibration")
    ax.plot(mean_pred[ok], frac[ok], marker="o", color=NEGATIVE_COLOUR, label="test images")
    ax.set_ylabel(f"observed share of {positive}")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"Calibration — {label}\nBrier {cal['brier']:.3f}, ECE {cal['ece']:.3f}", fontsize=10)
    width = 1.0 / len(count)
    ax_n.bar(np.asarray(cal["bin_mid"]), count, width=width * 0.9, color=NEUTRAL)
    ax_n.set_xlabel(f"predicted probability of {positive}")
    ax_n.set_ylabel("images")
    return Figure(
        name=f"{run_id}-calibration.png", title=f"Calibration — {label}",
        caption="Reliability curve on 10 equal-width probability bins: points on the diagonal mean that a "
        "predicted 30 % is right about 30 % of the time. Below: how many test images fall in each bin.",
        png=_png(fig), run_id=run_id,
    )


def mask_example_figure(original: np.ndarray, masked: np.ndarray, label: str, run_id: str) -> Figure:
    """One test image as the network sees it, and the same image with the lung box masked."""
    fig, (a, b) = _new(6.0, 3.2, 2)
    for ax, img, title in ((a, original, "as trained"), (b, masked, "lungs masked")):
        ax.imshow(img)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return Figure(
        name=f"{run_id}-mask.png", title=f"Masked-lung ablation — {label}",
        caption="The ablation's mask: the central box of 60 % of the width and 70 % of the height is set to "
        "the image's mean grey, on the decoded image before it is resized.",
        png=_png(fig), run_id=run_id,
    )


def run_label(entry: dict[str, Any]) -> str:
    """How a run is named in figures and tables: backbone / head."""
    r = entry["run"]
    return f"{r['backbone']} / {r['head']}"


def run_figures(run: Any, entry: dict[str, Any], example: tuple[np.ndarray, np.ndarray] | None) -> list[Figure]:
    """Every figure of one run, in report order."""
    label = run_label(entry)
    rid = run.run_id
    scores = entry["scores"]
    test = run.column("split") == "test"
    y = run.column("label")[test] == run.positive
    p = run.proba[test, run.classes.index(run.positive)]
    out: list[Figure] = []
    hist = history_figure(run.history, label, rid)
    if hist is not None:
        out.append(hist)
    am, yd = scores["argmax"], scores["youden"]
    roc_points = [("argmax (paper)", 1 - am["specificity"]["value"], am["sensitivity"]["value"])]
    pr_points = [("argmax (paper)", am["sensitivity"]["value"], am["ppv"]["value"])]
    if yd.get("available"):
        roc_points.append(("Youden (validation)", 1 - yd["specificity"]["value"], yd["sensitivity"]["value"]))
        pr_points.append(("Youden (validation)", yd["sensitivity"]["value"], yd["ppv"]["value"]))
    rank = scores["ranking"]
    out.append(roc_figure(y, p, roc_points, rank.get("auroc"), label, rid))
    out.append(pr_figure(y, p, pr_points, rank.get("pr_auc"), label, rid, run.positive))
    mats = [("argmax (paper's decision)", am["counts"])]
    if yd.get("available"):
        mats.append(("threshold from validation (Youden)", yd["counts"]))
    out.append(confusion_figure(mats, run.positive, run.negative, label, rid))
    out.append(calibration_figure(scores["calibration"], label, rid, run.positive))
    if example is not None:
        out.append(mask_example_figure(example[0], example[1], label, rid))
    return out


# ---------------------------------------------------------------------------------------------
# Across runs


def comparison_figure(entries: list[dict[str, Any]]) -> Figure:
    """AUROC and accuracy of every run with their 95 % intervals; the paper's accuracy where reported."""
    labels = [run_label(e) for e in entries]
    if len(set(labels)) != len(labels):
        labels = [f"{lab} ({e['run']['run_id']})" for lab, e in zip(labels, entries)]
    fig, (ax_auc, ax_acc) = _new(10.0, 0.6 * len(entries) + 2.2, 2)
    ypos = np.arange(len(entries))[::-1]
    for i, e in enumerate(entries):
        auc = e["scores"]["ranking"].get("auroc") or {}
        if auc.get("value") is not None and not _nan(auc.get("value")):
            ax_auc.errorbar(auc["value"], ypos[i], xerr=[[auc["value"] - auc["lo"]], [auc["hi"] - auc["value"]]],
                            fmt="o", color=NEGATIVE_COLOUR, capsize=4, label="AUROC (test)" if i == 0 else None)
        abl = e["audit"].get("ablation") or {}
        if abl.get("ran") and not _nan(abl["masked"]["auroc"]):
            ax_auc.plot(abl["masked"]["auroc"], ypos[i], marker="x", color=POSITIVE_COLOUR, linestyle="",
                        label="AUROC, lungs masked" if i == 0 else None)
        acc = e["scores"]["argmax"]["accuracy"]
        ax_acc.errorbar(acc["value"], ypos[i], xerr=[[acc["value"] - acc["lo"]], [acc["hi"] - acc["value"]]],
                        fmt="o", color=NEGATIVE_COLOUR, capsize=4, label="accuracy (test, argmax)" if i == 0 else None)
        paper = e["paper"]["cells"]["accuracy"]["paper"]
        if paper is not None:
            ax_acc.plot(paper, ypos[i], marker="*", markersize=11, color="#f39c12", linestyle="",
                        label="paper's accuracy")
    for ax, what in ((ax_auc, "AUROC"), (ax_acc, "accuracy")):
        ax.set_yticks(ypos, labels, fontsize=8)
        ax.set_xlim(0.0, 1.02)
        ax.axvline(0.5, color="#aaaaaa", linestyle=":")
        ax.set_xlabel(f"{what} with 95 % interval")
        ax.grid(alpha=0.3, axis="x")
        ax.set_ylim(-0.6, len(entries) - 0.4)
        handles, names = ax.get_legend_handles_labels()
        uniq = dict(zip(names, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22),
                  ncol=3, frameon=False)
    ax_auc.set_title("AUROC by backbone", fontsize=10)
    ax_acc.set_title("Accuracy by backbone", fontsize=10)
    return Figure(
        name="comparison.png", title="Backbones compared",
        caption="AUROC (patient-bootstrap interval) and accuracy (Wilson interval) of every run on its test "
        "images; crosses: AUROC with the lungs masked; stars: the paper's accuracy for that backbone. "
        "Overlapping intervals mean the data cannot tell the backbones apart.",
        png=_png(fig),
    )
