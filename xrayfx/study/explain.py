"""Where a decision comes from: occlusion maps through a run's frozen extractor, tested for faithfulness.

xrayfx runs frozen ONNX extractors without gradients, so its saliency maps need
none: each cell of an N×N grid over the decoded image (at its own resolution,
as the masked-lung ablation masks it) is filled in turn, every occluded copy is
resized and embedded by the run's extractor (all copies of one image in one
batch), and the run's head scores them. The map holds, per cell, the drop in
p(positive) when that cell is occluded (negative where occluding raises it).
Cells are in row-major order over the image cut into N equal rows and N equal
columns.

Fills
    ``mean``: the image's mean grey (all pixels and channels, rounded), as the
    masked-lung ablation uses; ``blur``: the image blurred with a Gaussian of
    half a cell's side, which removes a cell's detail but keeps its brightness.

Faithfulness: the deletion test
    A map is only worth showing if its top cells matter more than any cells.
    For the image's decision (positive when p >= the run's threshold, else
    negative) the cells are ranked by how much occluding them lowers the score
    of the decided class (the map itself for a positive decision, its negative
    for a negative one). The k best-ranked cells are occluded together, for
    k = 1 .. N²/4, and so are k random cells (the first k of a seeded random
    permutation, over several draws). Each curve is the decided class's score
    (p, or 1 − p) against k/K, starting at the unoccluded score (k = 0); its
    area is taken with the trapezoid rule over [0, 1]. A faithful map's curve
    falls faster, so ``auc_difference = auc_random − auc_top`` is positive.
    The map is ``informative`` when that difference is at least
    :data:`MIN_AUC_MARGIN` and at least twice the standard error of the random
    curve's area over the draws.

Nothing computed here is written into the embedding cache: the occluded copies
are embedded, scored and dropped.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from xrayfx.csvsafe import csv_text
from xrayfx.exceptions import DataError, ImageDecodeError, RunError, UsageError
from xrayfx.models.export import export_model
from xrayfx.models.config import ModelConfig
from xrayfx.models.quantize import int8_model_of_run
from xrayfx.study.runs import load_run, resolve_run
from xrayfx.inference.runtimes import make_extractor
from xrayfx.study.predict import load_heads
from xrayfx.data.images import decode_image, draft_size_for
from xrayfx.data.images import resize_image

#: Default grid: 8 × 8 cells.
DEFAULT_GRID = 8
#: Ways to fill an occluded cell.
FILLS = ("mean", "blur")
#: Random draws of the deletion test's baseline.
DEFAULT_DRAWS = 3
#: Smallest area difference (top cells vs random cells) that makes a map informative.
MIN_AUC_MARGIN = 0.002
#: Most copies one extractor call embeds (an 8×8 grid plus the original fits in one call).
MAX_BATCH = 128
#: Largest grid accepted (N² occluded copies per image).
MAX_GRID = 32

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# The run: extractor, head(s), decision


@dataclass
class RunScorer:
    """Everything needed to score images as a run does: its extractor, head(s) and decision.

    ``heads`` maps a fold to its head (``-1`` for a holdout run). Scoring without
    a fold averages every head's probability, as ``predict`` does for k-fold runs.
    """

    run_id: str
    extractor: Any
    heads: dict[int, Any]
    classes: list[str]
    positive: str
    negative: str
    threshold: float
    preprocessing: Any
    backbone: str
    runtime: str
    precision: str

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Embed a uint8 batch (n, h, w, 3) in calls of at most :data:`MAX_BATCH` images."""
        parts = [self.extractor(images[i:i + MAX_BATCH]) for i in range(0, len(images), MAX_BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    def p_positive(self, embeddings: np.ndarray, fold: int | None = None) -> np.ndarray:
        """p(positive) of embeddings: the fold's head, or the mean of all heads when ``fold`` is None."""
        heads = list(self.heads.values()) if fold is None else [self._head_of(fold)]
        ps = []
        for head in heads:
            proba = head.predict_proba(embeddings)
            ps.append(np.asarray(proba)[:, list(head.classes_).index(self.positive)])
        return np.mean(ps, axis=0).astype(float)

    def _head_of(self, fold: int) -> Any:
        if fold not in self.heads:
            raise RunError(
                f"Expected a head for fold {fold} in run {self.run_id}; got heads for folds "
                f"{', '.join(map(str, sorted(self.heads)))}. Fix: rerun fit-head."
            )
        return self.heads[fold]


def load_run_scorer(run: str | Path, cache_dir: str | Path | None = None, device: str = "cpu") -> RunScorer:
    """The run's extractor (backbone, preprocessing, runtime, precision), head(s) and threshold.

    This is the one place where explain reads a run's record (via
    :func:`xrayfx.study.runs.load_run`, every file's hash checked): point it at the
    typed run record once that exists. The extractor comes from the runtime
    factory :func:`xrayfx.inference.runtimes.make_extractor`, so int8, bf16 and fp16 runs
    are explained with the precision they were trained with; an int8 run uses
    the int8 variant whose calibration tag names the run's cache group.
    """
    path = resolve_run(run, cache_dir or "cache")
    loaded = load_run(path, cache_dir or "cache")
    record = loaded.record  # typed and validated: RunError (one line) on a damaged config
    model = ModelConfig.from_dict(record.model)
    root = Path(cache_dir) if cache_dir is not None else _cache_dir_of(path, record.cache_dir)
    exported = export_model(model, root)
    model_path = int8_model_of_run(exported, loaded.config)
    extractor = make_extractor(exported, record.runtime, record.precision, device, model_path=model_path)
    heads = {-1 if e.fold is None else int(e.fold): h for e, h in zip(record.heads, load_heads(loaded))}
    dec = record.decision
    return RunScorer(
        run_id=loaded.run_id, extractor=extractor, heads=heads, classes=list(record.labels), positive=dec.positive,
        negative=dec.negative, threshold=float(dec.threshold), preprocessing=model.preprocessing,
        backbone=model.spec.name, runtime=record.runtime, precision=record.precision,
    )


def _cache_dir_of(run_path: Path, recorded: str) -> Path:
    if run_path.resolve().parent.name == "runs":
        return run_path.resolve().parent.parent
    return Path(recorded) if recorded and Path(recorded).is_dir() else Path("cache")


# ---------------------------------------------------------------------------------------------
# Occlusion


def check_grid(grid: Any) -> int:
    """``grid`` as an int in 2..:data:`MAX_GRID`, else UsageError."""
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or not 2 <= grid <= MAX_GRID:
        raise UsageError(
            f"Expected --grid to be an integer from 2 to {MAX_GRID} (cells per side); got {grid!r}. "
            f"Fix: use the default {DEFAULT_GRID}, or a smaller grid for speed."
        )
    return int(grid)


def check_fill(fill: Any) -> str:
    """``fill`` if it is one of :data:`FILLS`, else UsageError."""
    if fill not in FILLS:
        raise UsageError(f"Expected --fill to be one of {', '.join(FILLS)}; got {fill!r}.")
    return str(fill)


def cell_boxes(height: int, width: int, grid: int) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of each cell, row-major, for an image cut into ``grid`` equal rows and columns."""
    rows = np.round(np.arange(grid + 1) * height / grid).astype(int)
    cols = np.round(np.arange(grid + 1) * width / grid).astype(int)
    return [(rows[r], rows[r + 1], cols[c], cols[c + 1]) for r in range(grid) for c in range(grid)]


def filler_image(img: np.ndarray, fill: str, grid: int) -> np.ndarray:
    """The pixels an occluded cell takes: the image's mean grey, or the image blurred by half a cell."""
    if fill == "mean":
        return np.full_like(img, np.round(float(img.mean())).astype(img.dtype))
    from PIL import Image, ImageFilter

    radius = 0.5 * max(img.shape[0], img.shape[1]) / grid
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)), dtype=img.dtype)


def occluded(img: np.ndarray, filler: np.ndarray, boxes: Sequence[tuple[int, int, int, int]],
             cells: Sequence[int]) -> np.ndarray:
    """A copy of ``img`` with the given cells replaced by the filler's pixels."""
    out = img.copy()
    for c in cells:
        t, b, l, r = boxes[c]
        out[t:b, l:r] = filler[t:b, l:r]
    return out


def decoded(path: str | Path, prep: Any) -> np.ndarray:
    """The decoded image the pipeline resizes (same JPEG draft size), as (H, W) grey or (H, W, 3) RGB."""

    img = decode_image(path, draft_size=draft_size_for(prep))
    if np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]):
        return np.ascontiguousarray(img[..., 0])  # resized as one plane: same pixels, a third of the work
    return img


def network_input(img: np.ndarray, prep: Any) -> np.ndarray:
    """Resize a decoded (occluded) image to the backbone's input: uint8 (h, w, 3)."""
    return network_batch([img], prep)[0]


def network_batch(images: Sequence[np.ndarray], prep: Any) -> np.ndarray:
    """Resize decoded (occluded) images to the backbone's input, into one uint8 batch (n, h, w, 3)."""

    size = tuple(prep.input_size)
    out = np.empty((len(images), *size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        small = resize_image(img, size, prep.resize)
        out[i] = small[..., None] if small.ndim == 2 else small
    return out


# ---------------------------------------------------------------------------------------------
# One image


@dataclass
class ImageExplanation:
    """The occlusion map of one image and its deletion test."""

    path: str
    p: float
    map: np.ndarray  # (grid, grid): drop in p(positive) when the cell is occluded
    predicted_positive: bool
    order: np.ndarray  # (grid²,) cells, most important for the decision first
    deletion_top: np.ndarray  # (K+1,) decided class's score, top k cells occluded
    deletion_random: np.ndarray  # (draws, K+1) the same for k random cells
    auc_top: float
    auc_random: float
    auc_random_se: float
    auc_difference: float
    informative: bool
    fold: int | None = None


def curve_area(curve: np.ndarray) -> float:
    """Trapezoid area under a curve sampled at k = 0..K, over x = k/K in [0, 1]."""
    y = np.asarray(curve, dtype=float)
    return float(np.sum((y[1:] + y[:-1]) / 2) / (len(y) - 1))


def explain_image(
    scorer: RunScorer, path: str | Path, grid: int = DEFAULT_GRID, fill: str = "mean", draws: int = DEFAULT_DRAWS,
    seed: int = 0, fold: int | None = None,
) -> ImageExplanation:
    """Occlusion map and deletion test of one image (two extractor batches: the map, then the test)."""
    prep = scorer.preprocessing
    img = decoded(path, prep)
    boxes = cell_boxes(img.shape[0], img.shape[1], grid)
    filler = filler_image(img, fill, grid)
    copies = [img] + [occluded(img, filler, boxes, [c]) for c in range(grid * grid)]
    p_all = scorer.p_positive(scorer.embed(network_batch(copies, prep)), fold)
    p0 = float(p_all[0])
    drop = p0 - p_all[1:]
    positive = p0 >= scorer.threshold
    sign = 1.0 if positive else -1.0
    order = np.argsort(-sign * drop, kind="stable")
    k_max = max(1, grid * grid // 4)
    rng = np.random.default_rng(seed)
    orders = [order] + [rng.permutation(grid * grid) for _ in range(draws)]
    # k = 1 is a single cell, already scored for the map; k = 2..K take one batch
    cell_sets = [o[:k] for o in orders for k in range(2, k_max + 1)]
    test = network_batch([occluded(img, filler, boxes, cells) for cells in cell_sets], prep)
    p_more = scorer.p_positive(scorer.embed(test), fold) if len(test) else np.zeros(0)
    p_curves = np.concatenate(
        [np.full((len(orders), 1), p0), p_all[1:][[o[0] for o in orders]][:, None],
         p_more.reshape(len(orders), k_max - 1)], axis=1)
    curves = p_curves if positive else 1.0 - p_curves
    top, rand = curves[0], curves[1:]
    auc_top = curve_area(top)
    auc_rand_each = np.array([curve_area(r) for r in rand])
    se = float(auc_rand_each.std(ddof=1) / math.sqrt(draws)) if draws > 1 else 0.0
    diff = float(auc_rand_each.mean() - auc_top)
    return ImageExplanation(
        path=str(path), p=p0, map=drop.reshape(grid, grid), predicted_positive=bool(positive), order=order,
        deletion_top=top, deletion_random=rand, auc_top=auc_top, auc_random=float(auc_rand_each.mean()),
        auc_random_se=se, auc_difference=diff, informative=bool(diff >= max(MIN_AUC_MARGIN, 2 * se)), fold=fold,
    )


# ---------------------------------------------------------------------------------------------
# Many images


@dataclass
class ExplainResult:
    """Maps and deletion tests of many images, with what was skipped and how long it took."""

    items: list[ImageExplanation]
    grid: int
    fill: str
    draws: int
    seed: int
    threshold: float
    positive: str
    negative: str
    run_id: str
    backbone: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def maps(self) -> np.ndarray:
        """(images, grid, grid) drops in p(positive)."""
        if not self.items:
            return np.zeros((0, self.grid, self.grid))
        return np.stack([e.map for e in self.items])

    @property
    def images_per_s(self) -> float:
        return len(self.items) / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        """Deletion-test averages over the images: areas, their difference, how many maps are informative."""
        n = len(self.items)
        mean = (lambda name: float(np.mean([getattr(e, name) for e in self.items])) if n else None)
        return {
            "n_images": n, "n_informative": sum(e.informative for e in self.items), "auc_top": mean("auc_top"),
            "auc_random": mean("auc_random"), "auc_difference": mean("auc_difference"),
            "k_max": max(1, self.grid * self.grid // 4), "draws": self.draws, "grid": self.grid,
            "fill": self.fill, "seconds": round(self.seconds, 3), "images_per_s": self.images_per_s if n else None,
            "min_auc_margin": MIN_AUC_MARGIN,
        }

    def npz_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of ``maps.npz`` (no object arrays: it loads with ``allow_pickle=False``)."""
        k = max(1, self.grid * self.grid // 4)
        items = self.items
        return {
            "maps": self.maps.astype(np.float32),
            "paths": np.array([e.path for e in items], dtype=np.str_),
            "p": np.array([e.p for e in items], dtype=np.float64),
            "fill": np.array(self.fill),
            "grid": np.array(self.grid),
            "threshold": np.array(self.threshold),
            "positive": np.array(self.positive),
            "predicted_positive": np.array([e.predicted_positive for e in items], dtype=bool),
            "order": np.array([e.order for e in items], dtype=np.int64).reshape(len(items), self.grid ** 2),
            "deletion_top": np.array([e.deletion_top for e in items]).reshape(len(items), k + 1),
            "deletion_random": np.array([e.deletion_random for e in items]).reshape(len(items), self.draws, k + 1),
            "auc_top": np.array([e.auc_top for e in items]),
            "auc_random": np.array([e.auc_random for e in items]),
            "auc_difference": np.array([e.auc_difference for e in items]),
            "informative": np.array([e.informative for e in items], dtype=bool),
            "draws": np.array(self.draws),
            "seed": np.array(self.seed),
        }

    def npz_bytes(self) -> bytes:
        """``maps.npz``, compressed, as bytes (write them with :func:`xrayfx.util.atomic_write_bytes`)."""
        buf = io.BytesIO()
        np.savez_compressed(buf, **self.npz_arrays())
        return buf.getvalue()

    def csv_text(self) -> str:
        """One row per image: path, p, decision, deletion-test fields, then the map's cells ``cell_<row>_<col>``."""
        cells = [f"cell_{r}_{c}" for r in range(self.grid) for c in range(self.grid)]
        return csv_text(
            ["path", f"p_{self.positive}", "predicted", "fill", "auc_top", "auc_random", "auc_difference",
             "informative", *cells],
            [[e.path, repr(e.p), self.positive if e.predicted_positive else self.negative, self.fill,
              repr(e.auc_top), repr(e.auc_random), repr(e.auc_difference), str(e.informative).lower(),
              *(repr(float(v)) for v in e.map.ravel())] for e in self.items],
        )

    def faithfulness(self) -> dict[str, Any]:
        """The deletion test per image and on average, JSON-ready."""
        return {
            "run_id": self.run_id, "backbone": self.backbone, "positive": self.positive,
            "threshold": self.threshold, "summary": self.summary(),
            "method": ("deletion test: the k most important cells (k = 1..grid²/4) vs k random cells "
                       f"({self.draws} seeded draws) occluded together; area under the decided class's score "
                       "over k/K; informative when auc_random - auc_top >= max(min_auc_margin, 2 standard "
                       "errors of auc_random over the draws)"),
            "images": [
                {"path": e.path, "p": e.p, "predicted_positive": e.predicted_positive, "auc_top": e.auc_top,
                 "auc_random": e.auc_random, "auc_random_se": e.auc_random_se, "auc_difference": e.auc_difference,
                 "informative": e.informative, "fold": e.fold}
                for e in self.items
            ],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


def explain_images(
    scorer: RunScorer, paths: Sequence[str | Path], grid: int = DEFAULT_GRID, fill: str = "mean",
    draws: int = DEFAULT_DRAWS, seed: int = 0, folds: Sequence[int | None] | None = None, log: Log | None = None,
) -> ExplainResult:
    """Occlusion maps and deletion tests of ``paths``; undecodable files are skipped and listed.

    ``folds[i]`` picks the head that scores image ``i`` (k-fold runs: the fold
    that held it out); None averages every head. The random cells of image
    ``i`` come from the seed ``(seed, i)``.
    """
    grid, fill = check_grid(grid), check_fill(fill)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 2:
        raise UsageError(f"Expected draws to be an integer >= 2 (random baselines per image); got {draws!r}.")
    folds = list(folds) if folds is not None else [None] * len(paths)
    if len(folds) != len(paths):
        raise UsageError(f"Expected one fold per path; got {len(folds)} folds for {len(paths)} paths.")
    log = log or (lambda _m: None)
    t0 = time.perf_counter()
    items, skipped = [], []
    for i, (path, fold) in enumerate(zip(paths, folds)):
        try:
            items.append(explain_image(scorer, path, grid, fill, draws, seed=_image_seed(seed, i), fold=fold))
        except (ImageDecodeError, OSError) as exc:
            skipped.append((str(path), str(exc)))
        if (i + 1) % 8 == 0 or i + 1 == len(paths):
            log(f"explained {i + 1}/{len(paths)} images ({time.perf_counter() - t0:.1f} s)")
    return ExplainResult(
        items=items, grid=grid, fill=fill, draws=draws, seed=seed, threshold=scorer.threshold,
        positive=scorer.positive, negative=scorer.negative, run_id=scorer.run_id, backbone=scorer.backbone,
        skipped=skipped, seconds=time.perf_counter() - t0,
    )


def _image_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------
# Where the mass lies


def box_overlap(grid: int, width_fraction: float, height_fraction: float) -> np.ndarray:
    """(grid, grid): the fraction of each cell inside the centred box of the given width and height fractions."""
    edges = np.arange(grid + 1) / grid

    def overlap(fraction: float) -> np.ndarray:
        lo, hi = (1 - fraction) / 2, (1 + fraction) / 2
        return np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None) * grid

    return np.outer(overlap(height_fraction), overlap(width_fraction))


def positive_mass_inside(maps: np.ndarray, width_fraction: float, height_fraction: float) -> np.ndarray:
    """Per map, the share of its positive part (cells whose occlusion lowers p) inside the centred box.

    NaN where a map has no positive part. A map spread evenly would give the box's
    own area (``width_fraction × height_fraction``).
    """
    maps = np.asarray(maps, dtype=float)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise DataError(f"Expected maps of shape (images, N, N); got {maps.shape}.")
    inside = box_overlap(maps.shape[1], width_fraction, height_fraction)
    pos = np.clip(maps, 0, None)
    total = pos.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (pos * inside).sum(axis=(1, 2)) / np.where(total > 0, total, 1), np.nan)


__all__ = [
    "DEFAULT_DRAWS", "DEFAULT_GRID", "FILLS", "ExplainResult", "ImageExplanation", "RunScorer", "box_overlap",
    "cell_boxes", "check_fill", "check_grid", "curve_area", "explain_image", "explain_images", "load_run_scorer",
    "positive_mass_inside",
]
