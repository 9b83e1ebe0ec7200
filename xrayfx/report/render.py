"""Render a report's data as Markdown, self-contained HTML and JSON.

The report is first laid out as a list of blocks (headings, paragraphs, lists,
tables, figures) by :func:`layout`; :func:`to_markdown` and :func:`to_html`
render the same blocks, so both files always say the same thing. Markdown
refers to the figures as PNG files in ``figures/``; HTML embeds them as
``data:image/png;base64`` URIs and carries its CSS inline, so it opens
offline. ``report.json`` is the data itself, with NaN written as ``null``.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Sequence

from xrayfx.report import external
from xrayfx.report.cells import TABLE2_HEADERS, _TABLE2_KEYS, Cell, _nan, num, signed, with_ci, with_counts
from xrayfx.report.explain_section import explain_blocks
from xrayfx.report.figures import Figure, run_label
from xrayfx.report.operating import operating_table, youden_table
from xrayfx.util import atomic_write_bytes, atomic_write_text, jsonable

Block = tuple


def table2(data: dict[str, Any]) -> tuple[list[str], list[list[Cell]]]:
    """The paper's Table 2 layout: one row per run, each cell ours (interval) + paper + difference."""
    rows = []
    for e in data["runs"]:
        am = e["scores"]["argmax"]
        cells = e["paper"]["cells"]
        row: list[Cell] = [run_label(e)]
        for key, side, metric in _TABLE2_KEYS:
            row.append([with_ci(am[side][metric]), _paper_line(cells[key])])
        for c in ("tp", "fp", "fn", "tn"):
            row.append([str(am["counts"][c]), _paper_line(cells[c], digits=0)])
        row.append([with_ci(am["accuracy"]), _paper_line(cells["accuracy"])])
        rows.append(row)
    return TABLE2_HEADERS, rows


def terminal_table2(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Table 2 for a terminal: short headers; a backbone the paper lacks says so once, in its first cell."""
    headers = ["backbone", "COVID P", "COVID R", "COVID F1", "NORMAL P", "NORMAL R", "NORMAL F1", "TP", "FP",
               "FN", "TN", "accuracy"]
    _, rows = table2(data)
    out = []
    for e, row in zip(data["runs"], rows):
        if e["paper"]["in_paper"]:
            out.append([row[0], *["\n".join(c) for c in row[1:]]])
        else:
            out.append([f"{row[0]}\npaper:\nnot reported", *[c[0] for c in row[1:]]])
    return headers, out


def _paper_line(cell: dict[str, Any], digits: int = 2) -> str:
    if cell["paper"] is None:
        return "paper: not reported"
    paper = f"{cell['paper']:.{digits}f}" if digits else str(cell["paper"])
    diff = cell["difference"]
    return f"paper {paper}, Δ {'n/a' if _nan(diff) else signed(diff, digits)}"


def ranking_table(data: dict[str, Any]) -> tuple[list[str], list[list[Cell]]]:
    """AUROC, PR-AUC (with the prevalence it should beat), Brier score and ECE."""
    headers = ["backbone", "AUROC", "PR-AUC", "prevalence", "Brier score", "ECE", "test images / patients"]
    rows = []
    for e in data["runs"]:
        s = e["scores"]
        rk = s["ranking"]
        rows.append([
            run_label(e), with_ci(rk.get("auroc"), 3), with_ci(rk.get("pr_auc"), 3), num(rk["prevalence"]),
            num(s["calibration"]["brier"], 3), num(s["calibration"]["ece"], 3),
            f"{s['n_test']} / {s['n_test_patients']}",
        ])
    return headers, rows


def fold_table(entry: dict[str, Any]) -> tuple[list[str], list[list[Cell]]]:
    """Per-fold test metrics of a k-fold run, then mean ± SD and range."""
    folds = entry["scores"]["folds"]
    keys = [("accuracy", "accuracy"), ("sensitivity", "sensitivity"), ("specificity", "specificity"),
            ("f1_positive", "F1 (positive)"), ("auroc", "AUROC"), ("pr_auc", "PR-AUC"), ("brier", "Brier")]
    headers = ["fold", "test images", *[name for _, name in keys]]
    rows: list[list[Cell]] = [
        [str(r["fold"]), str(r["n"]), *[num(r[k], 3) for k, _ in keys]] for r in folds["per_fold"]
    ]
    sm = folds["summary"]
    rows.append(["mean ± SD", "", *[f"{num(sm[k]['mean'], 3)} ± {num(sm[k]['sd'], 3)}" for k, _ in keys]])
    rows.append(["range", "", *[f"{num(sm[k]['min'], 3)}–{num(sm[k]['max'], 3)}" for k, _ in keys]])
    return headers, rows


def composition_table(entry: dict[str, Any]) -> tuple[list[str], list[list[Cell]]]:
    """Images and patients per part and label (per test fold for k-fold runs)."""
    comp = entry["audit"]["composition"]
    classes = entry["run"]["classes"]
    headers = ["part", *classes, "patients"]
    rows: list[list[Cell]] = []
    order = [p for p in ("train", "val", "test") if p in comp["parts"]]
    order += [p for p in comp["parts"] if p not in order]
    for part in order:
        rows.append([part, *[str(comp["parts"][part].get(c, 0)) for c in classes],
                     str(comp["patients"].get(part, ""))])
    return headers, rows


def source_table(entry: dict[str, Any]) -> tuple[list[str], list[list[Cell]]]:
    comp = entry["audit"]["composition"]["by_source"]
    sources = sorted({s for d in comp.values() for s in d})
    classes = entry["run"]["classes"]
    headers = ["source", *classes]
    rows = [[s, *[str(comp.get(c, {}).get(s, 0)) for c in classes]] for s in sources]
    return headers, rows


def breakdown_table(items: list[dict[str, Any]], column: str, entry: dict[str, Any]) -> tuple[list[str], list]:
    pos, neg = entry["run"]["positive"], entry["run"]["negative"]
    headers = [column.replace("_", " "), f"{pos} / {neg}", "patients", "accuracy", "sensitivity", "specificity",
               f"mean p({pos})", "AUROC"]
    rows = []
    for it in items:
        rows.append([
            it["value"], f"{it['n_positive']} / {it['n_negative']}", str(it["n_patients"]),
            with_counts(it["accuracy"]), with_counts(it["sensitivity"]) if it["sensitivity"] else "—",
            with_counts(it["specificity"]) if it["specificity"] else "—", num(it["mean_p_positive"], 3),
            with_ci(it["auroc"], 3) if it["auroc"] else "— (one class)",
        ])
    return headers, rows


def probe_table(entry: dict[str, Any]) -> tuple[list[str], list]:
    headers = ["class", "sources (images)", "left out", "probe AUROC (5-fold, patient-grouped)", "flag"]
    rows = []
    for pr in entry["audit"]["probe"]:
        rows.append([
            pr["class"], ", ".join(f"{s} {n}" for s, n in pr["sources"].items()),
            ", ".join(f"{s}: {why}" for s, why in pr["left_out"].items()) or "—",
            num(pr["auroc"], 3) if pr["auroc"] is not None else (pr.get("note") or "not run"),
            "features carry the source" if pr["flag"] else "—",
        ])
    return headers, rows


def ablation_table(entry: dict[str, Any]) -> tuple[list[str], list]:
    abl = entry["audit"]["ablation"]
    headers = ["images", "AUROC", "balanced accuracy (chance 0.5)", "sensitivity", "specificity"]
    rows = []
    for name in ("original", "masked"):
        d = abl[name]
        rows.append([
            "as trained" if name == "original" else "lungs masked", num(d["auroc"], 3),
            num(d["balanced_accuracy"], 3), num(d["sensitivity"], 3), num(d["specificity"], 3),
        ])
    return headers, rows


# ---------------------------------------------------------------------------------------------
# Plain-words summary


_HEAD_WORDS = {
    "paper": "the paper's head (a small neural network)",
    "logreg": "a logistic-regression classifier",
    "linear-svm": "a linear support-vector machine",
    "rbf-svm": "an RBF support-vector machine",
    "knn": "a k-nearest-neighbour classifier",
}


def summary_lines(data: dict[str, Any]) -> list[str]:
    """The report's opening, for a clinician: what was trained on what, headline numbers, warnings."""
    out = []
    n = len(data["runs"])
    out.append(
        f"This report covers {n} trained model{'s' if n > 1 else ''}. Every number comes with its 95 % "
        "interval: the range the true value plausibly lies in, given how few test images there are."
    )
    for e in data["runs"]:
        r, s = e["run"], e["scores"]
        comp = e["audit"]["composition"]
        sources = ", ".join(
            f"{lab}: " + ", ".join(f"{src} ({k})" for src, k in sorted(srcs.items(), key=lambda t: -t[1]))
            for lab, srcs in sorted(comp["by_source"].items())
        )
        head_words = _HEAD_WORDS.get(r["head"], f"a {r['head']} classifier")
        split = (f"{r['n_folds']}-fold cross-validation (every image tested once)" if r["split_kind"] == "kfold"
                 else "a train/validation/test split by patient")
        if r.get("balance") and r["balance"] != "none":
            split += f", classes balanced with {r['balance']}"
        confound = external.confound_sentence(e)
        out.append(
            f"**{run_label(e)}** (run {r['run_id']}): " + (f"{confound} It is " if confound else "")
            + f"{head_words} on features of a frozen "
            f"{r['backbone']} network ({r['weights']}), trained to tell {r['positive']} from {r['negative']} "
            f"with {comp['n_images']} images in all ({sources}) and {split}."
            + (" The network's weights are random: these features carry no ImageNet knowledge."
               if r["weights_random"] else "")
        )
        am, rk = s["argmax"], s["ranking"]
        sens, spec = am["sensitivity"], am["specificity"]
        auc_text = (f"AUROC {with_ci(rk['auroc'])} (1.0 = perfect ranking, 0.5 = chance)" if rk.get("auroc")
                    else "AUROC not available")
        out.append(
            f"On {s['n_test']} test images ({s['n_test_positive']} {r['positive']}, {s['n_test_negative']} "
            f"{r['negative']}; {s['n_test_patients']} patients): {auc_text}. With the paper's rule (the more "
            f"probable class wins) it found {sens['numerator']} of {sens['denominator']} {r['positive']} cases "
            f"(sensitivity {with_ci(sens)}) and cleared {spec['numerator']} of {spec['denominator']} "
            f"{r['negative']} images (specificity {with_ci(spec)}); accuracy {with_ci(am['accuracy'])}."
            + _paper_sentence(e)
        )
        if s["n_test_positive"] < 100 and not _nan(sens["lo"]):
            out.append(
                f"With only {s['n_test_positive']} {r['positive']} test images, a sensitivity of "
                f"{num(sens['value'])} is compatible with anything from {num(sens['lo'])} to {num(sens['hi'])}."
            )
        yd = s["youden"]
        if yd.get("available"):
            out.append(
                f"At the run's recorded {yd.get('how', 'threshold, chosen on the validation images')}, the one "
                f"predict and evaluate apply, sensitivity is {with_ci(yd['sensitivity'])} and specificity "
                f"{with_ci(yd['specificity'])}."
            )
        abl = e["audit"].get("ablation") or {}
        if abl.get("ran"):
            out.append(
                f"With the lungs hidden (central box masked), the model's AUROC is {num(abl['masked']['auroc'])} "
                f"(unmasked {num(abl['original']['auroc'])}); balanced accuracy "
                f"{num(abl['masked']['balanced_accuracy'])} where 0.5 is chance. "
                + ("It still separates the classes well without the lungs: it relies on something else."
                   if abl.get("flag") else "That is below the 0.7 flag: no sign that it relies on what lies "
                   "outside the lungs." if ((rk.get("auroc") or {}).get("lo") or 0) > 0.7 else "The unmasked "
                   "model's AUROC interval does not lie above 0.7, so the ablation cannot tell what it relies on.")
            )
        warns = e["audit"]["warnings"]
        if warns:
            out.append(f"The shortcut audit raised {len(warns)} warning{'s' if len(warns) > 1 else ''} (below): "
                       "the headline numbers may reflect where the images came from rather than the disease.")
        else:
            out.append("The shortcut audit raised no warning.")
    return out


def _paper_sentence(e: dict[str, Any]) -> str:
    acc = e["paper"]["cells"]["accuracy"]["paper"]
    if acc is None:
        return f" The paper reports no result for {e['run']['backbone']}."
    rec = e["paper"]["cells"]["covid_recall"]["paper"]
    return (f" The paper reports accuracy {acc:.2f} and COVID-19 recall {rec:.2f} for {e['run']['backbone']}, "
            "on 42 COVID-19 and 282 normal test images, without intervals.")


# ---------------------------------------------------------------------------------------------
# Layout


def layout(data: dict[str, Any], figures: Sequence[Figure]) -> list[Block]:
    """The report as blocks, in order."""
    fig_by_name = {f.name: f for f in figures}
    n_res = data["n_resamples"]
    b: list[Block] = [("h", 1, data["title"])]
    b.append(("note", f"Created {data['created']} by xrayfx {data['xrayfx_version']}. Runs: "
                      + ", ".join(f"{e['run']['run_id']} ({e['run']['path']})" for e in data["runs"])))
    b.append(("h", 2, "Summary"))
    for line in data["summary"]:
        b.append(("p", line))
    if data["warnings"]:
        b.append(("h", 3, "Warnings"))
        b.append(("ul", data["warnings"]))

    b.append(("h", 2, "Table 2, as in the paper"))
    b.append(("p", "Test images, at the paper's decision: the class with the larger predicted probability. "
                   "Each cell: our value (95 % interval), then the paper's value for the same backbone and the "
                   "difference (ours − paper). Precision and recall: Wilson intervals; F1: patient bootstrap "
                   f"({n_res} resamples); accuracy: Wilson."))
    b.append(("table", "Table 2 — argmax decision, ours beside the paper", *table2(data)))
    notes = []
    for e in data["runs"]:
        notes += [f"{e['run']['backbone']}: {t}" for t in e["paper"]["notes"]]
        s = e["scores"]
        sizes_differ = (s["n_test_positive"], s["n_test_negative"]) != (42, 282)
        notes.append(f"{run_label(e)}: our test set holds {s['n_test_positive']} {e['run']['positive']} and "
                     f"{s['n_test_negative']} {e['run']['negative']} images; the paper's held 42 COVID-19 and 282 "
                     "normal" + (", so differences in the counts TP/FP/FN/TN mostly reflect the test set's size."
                                 if sizes_differ else ", the same sizes."))
    b.append(("ul", list(dict.fromkeys(notes))))

    b.append(("h", 2, "What the paper leaves out"))
    b.append(("h", 3, "Ranking and calibration"))
    b.append(("p", "AUROC and PR-AUC (average precision) come from the predicted probabilities, never from hard "
                   f"labels; their intervals come from {n_res} bootstrap resamples of patients (all images of a "
                   "drawn patient together), not of images. PR-AUC should be read against the prevalence, what "
                   "guessing achieves. Brier score: mean squared error of the probabilities (0 is perfect). "
                   "ECE: expected calibration error over 10 bins."))
    b.append(("table", "Ranking and calibration on the test images", *ranking_table(data)))
    b.append(("h", 3, "Sensitivity, specificity, PPV and NPV"))
    b.append(("p", "At the paper's argmax decision and at the run's recorded threshold, which fit-head chose on the "
                   "validation images (midpoint of the interval maximising Youden's J), never on the test images, "
                   "and which predict and evaluate apply. Proportions: Wilson intervals "
                   f"with their counts; F1: patient bootstrap ({n_res} resamples)."))
    b.append(("table", "Operating characteristics", *operating_table(data)))
    b.append(("h", 3, "Table 2 at the threshold chosen on the validation images"))
    b.append(("table", "Second table — the run's recorded threshold (midpoint of the validation interval maximising "
                       "Youden's J)", *youden_table(data)))
    ynotes = [f"{run_label(e)}: {t}" for e in data["runs"] for t in e["scores"]["youden"]["notes"]]
    if ynotes:
        b.append(("ul", ynotes))
    for e in data["runs"]:
        if e["scores"]["folds"]:
            b.append(("h", 3, f"Spread across folds — {run_label(e)}"))
            b.append(("p", "Each fold's model scored on that fold's test images, at the argmax decision. The "
                           "pooled tables above count every image once, scored by the fold that held it out."))
            b.append(("table", f"Per-fold test metrics — {run_label(e)}", *fold_table(e)))
    b += external.blocks(data)

    b.append(("h", 2, "Data"))
    for e in data["runs"]:
        b.append(("h", 3, f"{run_label(e)} — run {e['run']['run_id']}"))
        h, rows = composition_table(e)
        if rows:
            b.append(("table", "Images and patients per part and label", h, rows))
        b.append(("table", "Images per source and label (all images of the run)", *source_table(e)))

    b.append(("h", 2, "Shortcut audit"))
    b.append(("p", "Models of COVID-19 radiographs often learn the hospital, the age of the patient or the "
                   "markers on the film instead of the disease (DeGrave et al. 2021; Roberts et al. 2021). "
                   "The audit looks for that in four ways: metrics by source, view and age group; whether the "
                   "label coincides with the source or age; whether the features reveal the source within one "
                   "class (source probe); and how well the model does with the lungs hidden (masked-lung "
                   "ablation; Maguolo & Nanni 2020)."))
    for e in data["runs"]:
        a = e["audit"]
        b.append(("h", 3, f"{run_label(e)} — run {e['run']['run_id']}"))
        b.append(("ul", a["warnings"] or ["No warning."]))
        for col, items in a["breakdowns"].items():
            b.append(("table", f"Test metrics by {col.replace('_', ' ')} (argmax decision)",
                      *breakdown_table(items, col, e)))
        if a["probe"]:
            b.append(("p", "Source probe: within each class holding two or more sources, a logistic regression "
                           "on the embeddings predicts the source, out-of-fold over 5 folds grouped by patient; "
                           "one-vs-rest macro AUROC. Near 0.5: the features say little about the source; near 1: "
                           "they carry it, so a classifier can use it."))
            b.append(("table", "Source probe", *probe_table(e)))
        abl = a.get("ablation") or {}
        if abl.get("ran"):
            b.append(("p", f"Masked-lung ablation on {abl['n']} test images: in each image the central box "
                           "(60 % of the width, 70 % of the height) is set to the image's mean grey on the decoded "
                           "image, before resizing; the embeddings are computed again and the run's own head "
                           f"scores them. {abl['decisions_changed']} decisions changed. A masked AUROC of 0.7 or "
                           "more is flagged."))
            b.append(("table", "Masked-lung ablation", *ablation_table(e)))
            if abl.get("problems"):
                b.append(("ul", [f"not scored: {p}" for p in abl["problems"][:10]]))
        else:
            b.append(("p", f"Masked-lung ablation: {abl.get('reason', 'not run')}."))
        if a["notes"]:
            b.append(("ul", a["notes"]))

    b += explain_blocks(data, fig_by_name)

    b.append(("h", 2, "Figures"))
    for e in data["runs"]:
        for name in e["figures"]:
            b.append(("figure", fig_by_name[name]))
    if data.get("comparison_figure"):
        b.append(("figure", fig_by_name[data["comparison_figure"]]))

    b.append(("h", 2, "Methods"))
    b.append(("ul", [
        "Decision of Table 2: argmax of the predicted probabilities, as in the paper.",
        "Second decision: the threshold fit-head recorded in the run, the midpoint of the interval of thresholds "
        "maximising Youden's J on the validation rows (per fold for k-fold runs), applied unchanged to the test rows.",
        "Wilson score intervals for every proportion (precision, recall, sensitivity, specificity, PPV, NPV, "
        "accuracy).",
        f"Percentile bootstrap intervals for AUROC, PR-AUC and F1: {n_res} resamples of patients, with all of a "
        "drawn patient's images; resamples holding one class only are skipped and counted in report.json.",
        "Calibration: 10 equal-width bins of the positive-class probability; Brier score and ECE.",
        "Source probe: standardised logistic regression, StratifiedGroupKFold (5 folds, grouped by patient), "
        "sources with fewer than 5 patients left out.",
        "Masked-lung ablation: central 60 % × 70 % box set to the image's mean grey before resizing; flagged at "
        "a masked AUROC ≥ 0.7.",
    ]))
    return b


# ---------------------------------------------------------------------------------------------
# Markdown


def _md_text(text: str) -> str:
    """Text as Markdown shows it literally: HTML (``<script>``, ``&``) is escaped, never rendered."""
    return html.escape(str(text), quote=False)


def _md_escape(text: str) -> str:
    return _md_text(text).replace("|", "\\|")


def _md_cell(cell: Cell) -> str:
    if isinstance(cell, list):
        return "<br>".join(_md_escape(c) for c in cell)
    return _md_escape(cell)


def to_markdown(blocks: list[Block], figure_dir: str = "figures") -> str:
    """Markdown of the blocks; figures as links to ``figure_dir/<name>``."""
    out: list[str] = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h":
            out.append(f"{'#' * blk[1]} {_md_text(blk[2])}\n")
        elif kind == "p":
            out.append(f"{_md_text(blk[1])}\n")
        elif kind == "note":
            out.append(f"*{_md_text(blk[1])}*\n")
        elif kind == "ul":
            out.append("\n".join(f"- {_md_text(item)}" for item in blk[1]) + "\n")
        elif kind == "table":
            _, caption, headers, rows = blk
            lines = [f"**{_md_text(caption)}**", "", "| " + " | ".join(_md_escape(h) for h in headers) + " |",
                     "|" + "|".join("---" for _ in headers) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines) + "\n")
        elif kind == "figure":
            fig: Figure = blk[1]
            out.append(f"![{_md_text(fig.title)}]({figure_dir}/{fig.name})\n\n*{_md_text(fig.caption)}*\n")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# HTML

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1200px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #2c7fb8; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .15em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 13px; }
caption { text-align: left; font-weight: bold; padding: .3em 0; }
th, td { border: 1px solid #ccc; padding: 4px 7px; vertical-align: top; }
th { background: #eef4f9; }
td .paper { color: #777; font-size: 11px; }
.note { color: #666; font-size: 13px; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 13px; max-width: 900px; }
.warnings li { color: #8a1c1c; }
"""


def _html_cell(cell: Cell, tag: str = "td") -> str:
    if isinstance(cell, list):
        first, *rest = cell
        inner = html.escape(first) + "".join(f'<br><span class="paper">{html.escape(c)}</span>' for c in rest)
    else:
        inner = html.escape(cell)
    return f"<{tag}>{inner}</{tag}>"


def _inline(text: str) -> str:
    """Escape text and turn ``**bold**`` into <strong>."""
    parts = html.escape(text).split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def to_html(blocks: list[Block], title: str) -> str:
    """A self-contained HTML page: inline CSS, figures as base64 PNG data URIs."""
    body: list[str] = []
    prev_warn = False
    for blk in blocks:
        kind = blk[0]
        if kind == "h":
            body.append(f"<h{blk[1]}>{html.escape(blk[2])}</h{blk[1]}>")
            prev_warn = blk[2] == "Warnings"
        elif kind == "p":
            body.append(f"<p>{_inline(blk[1])}</p>")
        elif kind == "note":
            body.append(f'<p class="note">{_inline(blk[1])}</p>')
        elif kind == "ul":
            cls = ' class="warnings"' if prev_warn else ""
            body.append(f"<ul{cls}>" + "".join(f"<li>{_inline(i)}</li>" for i in blk[1]) + "</ul>")
            prev_warn = False
        elif kind == "table":
            _, caption, headers, rows = blk
            t = [f"<table><caption>{html.escape(caption)}</caption><thead><tr>"]
            t += [_html_cell(h, "th") for h in headers]
            t.append("</tr></thead><tbody>")
            for row in rows:
                t.append("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>")
            t.append("</tbody></table>")
            body.append("".join(t))
        elif kind == "figure":
            fig: Figure = blk[1]
            data = base64.b64encode(fig.png).decode("ascii")
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(fig.title)}">'
                f"<figcaption><strong>{html.escape(fig.title)}.</strong> {html.escape(fig.caption)}</figcaption>"
                "</figure>"
            )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )


# ---------------------------------------------------------------------------------------------
# JSON


def write_report(data: dict[str, Any], figures: Sequence[Figure], out: Path) -> dict[str, Path]:
    """Write figures/*.png, report.md, report.html and report.json into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for fig in figures:
        atomic_write_bytes(out / "figures" / fig.name, fig.png)
    blocks = layout(data, figures)
    paths = {"md": out / "report.md", "html": out / "report.html", "json": out / "report.json"}
    atomic_write_text(paths["md"], to_markdown(blocks))
    atomic_write_text(paths["html"], to_html(blocks, data["title"]))
    payload = jsonable({**data, "figures": [
        {"name": f.name, "title": f.title, "caption": f.caption, "run_id": f.run_id} for f in figures]})
    atomic_write_text(paths["json"], json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return paths
