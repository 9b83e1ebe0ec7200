"""The report's section "Where the decision comes from": occlusion maps of sampled test images.

For each run, a seeded sample of ``K`` test images per true class
(:data:`DEFAULT_EXPLAIN`; 0 turns the section off) is explained with
:func:`xrayfx.study.explain.explain_images` through the run's own extractor and
head (k-fold runs: the head of the fold that held the image out). The section
gives the mean map per true and per predicted class, a grid of the most and
least confident images with their overlays, the share of the positive
decision's mass inside the masked-lung box against outside, the deletion-test
summary, and one sentence that says whether the maps make a shortcut visible,
or that they cannot.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from xrayfx.exceptions import ImageDecodeError, UsageError
from xrayfx.report.audit import MASK_HEIGHT_FRACTION, MASK_WIDTH_FRACTION
from xrayfx.report.explain_figures import mean_maps_figure, overlay_grid_figure
from xrayfx.report.figures import run_label
from xrayfx.study.explain import explain_images, load_run_scorer, positive_mass_inside
from xrayfx.study.explain import box_overlap
from xrayfx.study.explain import decoded

#: Test images per true class the report explains by default.
DEFAULT_EXPLAIN = 16
#: Most and least confident images shown in the grid (each).
GRID_EACH = 4
#: Seed of the sample.
SEED = 0
#: Area of the masked-lung box: the share of an evenly spread map's mass inside it.
BOX_AREA = MASK_WIDTH_FRACTION * MASK_HEIGHT_FRACTION

Log = Callable[[str], None]


def check_explain(k: Any) -> int:
    """``k`` as an int >= 0 (images per class; 0 turns the section off), else UsageError."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise UsageError(
            f"Expected --explain to be an integer >= 0 (test images per class to explain; 0 turns the section "
            f"off); got {k!r}."
        )
    return int(k)


def sample_test_rows(split: np.ndarray, labels: np.ndarray, classes: Sequence[str], k: int,
                     seed: int = SEED) -> np.ndarray:
    """Row indices of a seeded sample of at most ``k`` test rows per class, sorted."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        rows = np.flatnonzero((split == "test") & (labels == c))
        if len(rows):
            chosen.append(rng.choice(rows, size=min(k, len(rows)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def explain_run(run: Any, cache_dir: Path, k: int, log: Log | None = None) -> tuple[dict[str, Any], list[Any]]:
    """Explain a sample of the run's test images; return (the section's data, its figures)."""

    log = log or (lambda _m: None)
    k = check_explain(k)
    if k == 0:
        return {"ran": False, "reason": "turned off (--explain 0)"}, []
    labels, split = run.column("label"), run.column("split")
    rows = sample_test_rows(split, labels, run.classes, k)
    if len(rows) == 0:
        return {"ran": False, "reason": "the run has no test images"}, []
    log(f"occlusion maps: {len(rows)} test images ({k} per class at most)")
    scorer = load_run_scorer(run.path, cache_dir)
    folds = [int(f) for f in run.fold[rows]] if run.is_kfold else None
    paths = run.column("path")[rows].tolist()
    res = explain_images(scorer, paths, folds=folds, seed=SEED, log=log)
    done = [i for i, p in enumerate(paths) if p not in {s for s, _ in res.skipped}]
    truth = labels[rows][done]
    maps = res.maps
    p = np.array([e.p for e in res.items])
    pred_pos = np.array([e.predicted_positive for e in res.items], dtype=bool)
    inside = positive_mass_inside(maps, MASK_WIDTH_FRACTION, MASK_HEIGHT_FRACTION)
    data = {
        "ran": True, "k": k, "n": len(res.items), "grid": res.grid, "fill": res.fill, "seed": SEED,
        "threshold": res.threshold, "summary": res.summary(),
        "skipped": [{"path": s, "reason": r} for s, r in res.skipped],
        "by_class": _by_class(res, truth, pred_pos, inside, run),
        "positive_mass": _mass_inside(maps[pred_pos] if len(maps) else maps),
        "negative_mass": _mass_inside(-maps[~pred_pos] if len(maps) else maps),
        "box": {"width_fraction": MASK_WIDTH_FRACTION, "height_fraction": MASK_HEIGHT_FRACTION, "area": BOX_AREA},
        "images": [{"path": e.path, "label": str(t), "p": e.p, "predicted_positive": e.predicted_positive,
                    "auc_top": e.auc_top, "auc_random": e.auc_random, "informative": e.informative,
                    "positive_mass_inside_lung_box": None if math.isnan(s) else float(s)}
                   for e, t, s in zip(res.items, truth, inside)],
    }
    panels = _mean_panels(maps, truth, pred_pos, run)
    data["mean_maps"] = {title: m.tolist() for title, m in panels}
    data["sentence"] = shortcut_sentence(data, panels, run.positive, run.negative)
    label = run_label({"run": {"backbone": run.backbone, "head": run.head_name}})
    figures = []
    if panels:
        figures.append(mean_maps_figure(panels, run.positive, label, run.run_id))
    tiles = _grid_tiles(res, truth, p, scorer)
    if tiles:
        figures.append(overlay_grid_figure(tiles, run.positive, label, run.run_id))
    data["figures"] = [f.name for f in figures]
    return data, figures


def _by_class(res: Any, truth: np.ndarray, pred_pos: np.ndarray, inside: np.ndarray, run: Any) -> list[dict]:
    out = []
    for name, mask in [(f"true {c}", truth == c) for c in run.classes] + [("all", np.ones(len(truth), bool))]:
        items = [e for e, m in zip(res.items, mask) if m]
        if not items:
            continue
        share = inside[mask & pred_pos & ~np.isnan(inside)]
        out.append({
            "group": name, "n": len(items), "n_informative": sum(e.informative for e in items),
            "auc_top": float(np.mean([e.auc_top for e in items])),
            "auc_random": float(np.mean([e.auc_random for e in items])),
            "auc_difference": float(np.mean([e.auc_difference for e in items])),
            "n_predicted_positive": int((mask & pred_pos).sum()),
            "positive_mass_inside_lung_box": float(share.mean()) if len(share) else None,
        })
    return out


def _mass_inside(maps: np.ndarray) -> dict[str, Any]:
    """Pooled over maps: share of their positive part inside and outside the lung box.

    Called with the maps of the images predicted positive (the cells that hold
    p(positive) up), and with the negated maps of those predicted negative (the
    cells that hold it down).
    """

    if len(maps) == 0:
        return {"n_maps": 0, "inside": None, "outside": None}
    pos = np.clip(maps, 0, None)
    total = float(pos.sum())
    if total <= 0:
        return {"n_maps": int(len(maps)), "inside": None, "outside": None}
    inside = float((pos * box_overlap(maps.shape[1], MASK_WIDTH_FRACTION, MASK_HEIGHT_FRACTION)).sum() / total)
    return {"n_maps": int(len(maps)), "inside": inside, "outside": 1 - inside}


def _mean_panels(maps: np.ndarray, truth: np.ndarray, pred_pos: np.ndarray, run: Any) -> list[tuple[str, np.ndarray]]:
    panels = []
    for c in run.classes:
        if np.any(truth == c):
            panels.append((f"true {c} (n={int(np.sum(truth == c))})", maps[truth == c].mean(axis=0)))
    for name, mask in ((run.positive, pred_pos), (run.negative, ~pred_pos)):
        if np.any(mask):
            panels.append((f"predicted {name} (n={int(mask.sum())})", maps[mask].mean(axis=0)))
    return panels


def _grid_tiles(res: Any, truth: np.ndarray, p: np.ndarray, scorer: Any) -> list[dict[str, Any]]:
    """Per predicted class, the most and the least confident images (distance of p from the threshold)."""

    if not res.items:
        return []
    margin = np.abs(p - res.threshold)
    pred_pos = p >= res.threshold
    each = max(1, GRID_EACH // 2)
    picks: list[tuple[int, str]] = []
    for why, sign in (("most confident", -1.0), ("least confident", 1.0)):
        for cls in (True, False):
            rows = np.flatnonzero(pred_pos == cls)
            picks += [(int(i), why) for i in rows[np.argsort(sign * margin[rows], kind="stable")][:each]]
    tiles, seen = [], set()
    for i, why in picks:
        if i in seen:
            continue
        seen.add(i)
        e = res.items[i]
        try:
            image = decoded(e.path, scorer.preprocessing)
        except (ImageDecodeError, OSError):
            continue
        tiles.append({"image": image, "map": e.map, "p": e.p, "informative": e.informative, "title": why,
                      "label": str(truth[i])})
    return tiles


# ---------------------------------------------------------------------------------------------
# Words


def describe_cell(row: int, col: int, grid: int) -> str:
    """Where a cell lies in the image, in words (image orientation: the viewer's left and right)."""
    third = lambda i: min(2, int(3 * (i + 0.5) / grid))  # noqa: E731
    vertical = ("top", "middle", "bottom")[third(row)]
    horizontal = ("left", "centre", "right")[third(col)]
    place = "centre" if (vertical, horizontal) == ("middle", "centre") else f"{vertical} {horizontal}"
    return f"{place} of the image"


def _top_places(mean_map: np.ndarray, n: int = 3) -> str:
    grid = mean_map.shape[0]
    overlap = box_overlap(grid, MASK_WIDTH_FRACTION, MASK_HEIGHT_FRACTION)
    flat = np.argsort(-mean_map.ravel(), kind="stable")[:n]
    words = []
    for c in flat:
        r, col = divmod(int(c), grid)
        where = "inside" if overlap[r, col] >= 0.5 else "outside"
        words.append(f"{describe_cell(r, col, grid)} ({where} the lung box)")
    return "; ".join(dict.fromkeys(words))


def _side(mass: dict[str, Any], decision: str) -> str | None:
    if mass["inside"] is None:
        return None
    return (f"{100 * mass['inside']:.0f} % of the {decision} decision's mass lies inside the masked-lung box and "
            f"{100 * mass['outside']:.0f} % outside ({mass['n_maps']} images)")


def shortcut_sentence(data: dict[str, Any], panels: Sequence[tuple[str, np.ndarray]], positive: str,
                      negative: str = "negative") -> str:
    """One sentence (or three): do the maps make a shortcut visible, or can they not?

    A decision's mass is "outside" when less of it lies inside the masked-lung
    box than an evenly spread map would put there (the box's area).
    """
    s = data["summary"]
    n, n_inf = s["n_images"], s["n_informative"]
    if not n:
        return "No test image could be explained, so the maps cannot show where the decision comes from."
    where = []
    for name, sign in ((positive, 1.0), (negative, -1.0)):
        panel = next((m for t, m in panels if t.startswith(f"predicted {name} ")), None)
        if panel is not None and np.max(sign * panel) > 0:
            verb = "hold p({}) up" if sign > 0 else "hold p({}) down"
            where.append(f"The cells that {verb.format(positive)} most, on average over the images predicted "
                         f"{name}: {_top_places(sign * panel)}.")
    faith = (f"{n_inf} of {n} maps pass the deletion test (their top cells lower the decided class's score more "
             f"than random cells; mean area {s['auc_top']:.3f} vs {s['auc_random']:.3f})")
    tail = (" " + " ".join(where)) if where else ""
    if n_inf < n / 2:
        return (f"The maps cannot show the shortcut: only {faith}, so most maps are no evidence either way; a "
                "decision spread over the whole image (body size, contrast, film) survives the occlusion of any "
                "single cell." + tail)
    sides = [(_side(data["positive_mass"], positive), data["positive_mass"]),
             (_side(data["negative_mass"], negative), data["negative_mass"])]
    sides = [(text, m) for text, m in sides if text]
    if not sides:
        return f"{faith[0].upper() + faith[1:]}, but no map moves p anywhere: nothing to locate." + tail
    facts = "; ".join(text for text, _ in sides)
    box = f"the box covers {100 * BOX_AREA:.0f} % of the image"
    outside = [m for _, m in sides if m["inside"] < BOX_AREA]
    if outside:
        return (f"The shortcut is visible: {faith}; {facts} ({box}): less inside the lungs than an even spread "
                "would put there, so the decision leans on what lies outside them." + tail)
    return (f"{faith[0].upper() + faith[1:]}; {facts} ({box}), so the maps do not point outside the lungs; they "
            "cannot rule out a shortcut spread over the whole image (body size, contrast), which the masked-lung "
            "ablation measures." + tail)


# ---------------------------------------------------------------------------------------------
# Layout


def _num(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def deletion_table(section: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The deletion-test summary per true class and overall, with the positive mass inside the lung box."""
    headers = ["images", "n", "informative maps", "area top cells", "area random cells", "difference",
               "predicted positive", "positive mass inside lung box (mean)"]
    rows = [[g["group"], str(g["n"]), f"{g['n_informative']}/{g['n']}", _num(g["auc_top"]),
             _num(g["auc_random"]), _num(g["auc_difference"]), str(g["n_predicted_positive"]),
             _num(g["positive_mass_inside_lung_box"], 2)] for g in section["by_class"]]
    return headers, rows


def explain_blocks(data: dict[str, Any], fig_by_name: dict[str, Any]) -> list[tuple]:
    """The section's blocks (headings, paragraphs, tables, figures) for every run of the report."""

    sections = [(e, e.get("explain")) for e in data["runs"]]
    if not any(s and s.get("ran") for _, s in sections):
        return []
    b: list[tuple] = [("h", 2, "Where the decision comes from")]
    b.append(("p", "Occlusion maps through the run's own frozen extractor and head, no gradients needed: each "
                   "cell of a grid over the decoded image (at its own resolution) is filled with the image's mean "
                   "grey in turn, the copies are embedded and scored, and the map is the drop in p(positive) per "
                   "cell. Faithfulness is measured, not assumed: the deletion test occludes the k most important "
                   "cells (k = 1..N²/4) and, for comparison, k random cells (seeded draws); a map whose top cells "
                   "lower the decided class's score no more than random cells is marked not informative. The "
                   "dashed box is the masked-lung ablation's box."))
    for e, s in sections:
        b.append(("h", 3, f"{run_label(e)} — run {e['run']['run_id']}"))
        if not s or not s.get("ran"):
            b.append(("p", f"Occlusion maps: {(s or {}).get('reason', 'not run')}."))
            continue
        b.append(("p", f"{s['n']} test images ({s['k']} per class at most, seed {s['seed']}), {s['grid']}×"
                       f"{s['grid']} grid, fill {s['fill']}. {s['sentence']}"))
        mass = s["positive_mass"]
        if mass["inside"] is not None:
            b.append(("p", f"Positive decision's mass (cells whose occlusion lowers p({e['run']['positive']}), "
                           f"pooled over the {mass['n_maps']} images predicted {e['run']['positive']}): "
                           f"{100 * mass['inside']:.0f} % inside the masked-lung box, {100 * mass['outside']:.0f} % "
                           f"outside (the box covers {100 * BOX_AREA:.0f} % of the image)."))
        neg = s.get("negative_mass") or {}
        if neg.get("inside") is not None:
            b.append(("p", f"Negative decision's mass (cells whose occlusion raises p({e['run']['positive']}), "
                           f"pooled over the {neg['n_maps']} images predicted {e['run']['negative']}): "
                           f"{100 * neg['inside']:.0f} % inside the box, {100 * neg['outside']:.0f} % outside."))
        b.append(("table", "Deletion test on the sampled test images", *deletion_table(s)))
        if s["skipped"]:
            b.append(("ul", [f"not explained: {x['path']}: {x['reason']}" for x in s["skipped"][:10]]))
        for name in s.get("figures", []):
            if name in fig_by_name:
                b.append(("figure", fig_by_name[name]))
    return b
