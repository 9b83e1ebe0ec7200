"""Figures of occlusion maps: one overlay per image, mean maps, and a grid of overlays.

Drawn like the rest of the report's figures (matplotlib's Agg canvas, no
pyplot). The map is drawn over the decoded radiograph with a diverging colour
map centred on zero: red where occluding the cell lowers p(positive) (the cell
speaks for the positive class), blue where it raises it. The central box the
masked-lung ablation masks is drawn dashed, so the reader sees at once whether
the decision comes from inside or outside the lungs.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure as MplFigure
from matplotlib.patches import Rectangle

from xrayfx.report.audit import MASK_HEIGHT_FRACTION, MASK_WIDTH_FRACTION
from xrayfx.report.figures import Figure, _png

CMAP = "RdBu_r"
ALPHA = 0.45
NOT_INFORMATIVE_COLOUR = "#b03a2e"


def _limit(values: np.ndarray) -> float:
    m = float(np.nanmax(np.abs(values))) if np.size(values) else 0.0
    return m if m > 0 else 1e-6


def draw_overlay(ax: Any, image: np.ndarray, cell_map: np.ndarray, limit: float | None = None) -> Any:
    """Draw ``image`` with ``cell_map`` over it (cells stretched over the whole image) and the lung box."""
    h, w = image.shape[:2]
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255, interpolation="bilinear")
    lim = _limit(cell_map) if limit is None else limit
    mappable = ax.imshow(cell_map, cmap=CMAP, vmin=-lim, vmax=lim, alpha=ALPHA, extent=(0, w, h, 0),
                         interpolation="nearest")
    bw, bh = w * MASK_WIDTH_FRACTION, h * MASK_HEIGHT_FRACTION
    ax.add_patch(Rectangle(((w - bw) / 2, (h - bh) / 2), bw, bh, fill=False, edgecolor="#f1c40f", linewidth=1.2,
                           linestyle="--"))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.axis("off")
    return mappable


def _title(name: str, p: float, positive: str, informative: bool, label: str | None = None) -> str:
    head = f"{name}\n" if name else ""
    truth = f"true {label}, " if label else ""
    return f"{head}{truth}p({positive}) = {p:.4f}" + ("" if informative else "\nNOT INFORMATIVE")


def overlay_png(image: np.ndarray, cell_map: np.ndarray, p: float, positive: str, informative: bool,
                name: str = "", auc: tuple[float, float] | None = None) -> bytes:
    """One image's overlay as PNG bytes: radiograph, map, colour bar, p before, lung box, faithfulness."""
    fig = MplFigure(figsize=(4.6, 4.4), layout="constrained")
    ax = fig.subplots()
    mappable = draw_overlay(ax, image, cell_map)
    ax.set_title(_title(name, p, positive, informative), fontsize=8,
                 color="black" if informative else NOT_INFORMATIVE_COLOUR)
    bar = fig.colorbar(mappable, ax=ax, shrink=0.8)
    bar.set_label(f"drop in p({positive}) when the cell is occluded", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    if auc is not None:
        verdict = "informative" if informative else "not informative: top cells move p no more than random cells"
        fig.text(0.01, 0.005, f"deletion test: area top {auc[0]:.3f} vs random {auc[1]:.3f} ({verdict}); "
                 "dashed: masked-lung box", fontsize=6, color="black" if informative else NOT_INFORMATIVE_COLOUR)
    return _png(fig)


def mean_maps_figure(panels: Sequence[tuple[str, np.ndarray]], positive: str, label: str, run_id: str) -> Figure:
    """Mean maps (per true class, per predicted class) side by side on one colour scale."""
    fig = MplFigure(figsize=(2.3 * max(1, len(panels)) + 0.8, 2.6), layout="constrained")
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    lim = _limit(np.stack([m for _, m in panels])) if panels else 1.0
    mappable = None
    for ax, (title, m) in zip(axes, panels):
        n = m.shape[0]
        mappable = ax.imshow(m, cmap=CMAP, vmin=-lim, vmax=lim, extent=(0, 1, 1, 0), interpolation="nearest")
        bw, bh = MASK_WIDTH_FRACTION, MASK_HEIGHT_FRACTION
        ax.add_patch(Rectangle(((1 - bw) / 2, (1 - bh) / 2), bw, bh, fill=False, edgecolor="black",
                               linewidth=1.0, linestyle="--"))
        ax.set_title(title, fontsize=8)
        ax.set_xticks(np.arange(n + 1) / n, labels=[])
        ax.set_yticks(np.arange(n + 1) / n, labels=[])
        ax.grid(color="#999999", linewidth=0.3)
    if mappable is not None:
        bar = fig.colorbar(mappable, ax=list(axes), shrink=0.8)
        bar.set_label(f"mean drop in p({positive})", fontsize=7)
    return Figure(
        name=f"{run_id}-explain-mean.png", title=f"Mean occlusion maps — {label}",
        caption=f"Mean drop in p({positive}) when each cell of the image is occluded, averaged over the sampled "
        "test images of each true class and of each predicted class. Red: the cell speaks for the positive "
        "class; blue: against it. Dashed: the central box the masked-lung ablation masks.",
        png=_png(fig), run_id=run_id,
    )


def overlay_grid_figure(tiles: Sequence[dict[str, Any]], positive: str, label: str, run_id: str,
                        ncols: int = 4) -> Figure:
    """Overlays of several images (each tile: image, map, p, informative, title), each on its own colour scale."""
    nrows = max(1, -(-len(tiles) // ncols))
    fig = MplFigure(figsize=(2.6 * ncols, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, tile in zip(axes, tiles):
        lim = _limit(tile["map"])
        draw_overlay(ax, tile["image"], tile["map"], lim)
        title = _title(tile.get("title", ""), tile["p"], positive, tile["informative"], tile.get("label"))
        ax.set_title(f"{title}\nscale ±{lim:.2g}", fontsize=7,
                     color="black" if tile["informative"] else NOT_INFORMATIVE_COLOUR)
    for ax in axes[len(tiles):]:
        ax.axis("off")
    return Figure(
        name=f"{run_id}-explain-grid.png", title=f"Most and least confident test images — {label}",
        caption=f"Occlusion maps over the radiographs: per predicted class, the most confident decisions (top) "
        f"and the least confident (bottom) among the sampled test images. Red cells lower p({positive}) when "
        "occluded, blue cells raise it; each tile has its own colour scale (±, in its title); dashed: the "
        "masked-lung box; titles in red mark maps that fail the deletion test (not informative).",
        png=_png(fig), run_id=run_id,
    )
