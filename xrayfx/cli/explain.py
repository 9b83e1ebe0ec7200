"""`xrayfx explain`: occlusion maps of images through a run's frozen extractor, with the deletion test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

import typer

from xrayfx.cli.options import Device


def _log(message: str) -> None:
    from xrayfx.cli import err_console

    err_console.print(message, highlight=False, soft_wrap=True, markup=False)


def collect_image_paths(inputs: Sequence[str | Path], max_images: int | None) -> list[Path]:
    """Images, folders (searched recursively) and CSV manifests → image paths, in order, at most ``max_images``."""
    from xrayfx.data.manifest import load_dataset
    from xrayfx.exceptions import DataError, UsageError
    from xrayfx.data.images import is_image_path

    if not inputs:
        raise UsageError("Expected at least one IMAGE, FOLDER or MANIFEST to explain; got none.")
    if max_images is not None and (isinstance(max_images, bool) or max_images < 1):
        raise UsageError(f"Expected --max-images to be an integer >= 1; got {max_images!r}.")
    paths: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if not p.exists():
            raise DataError(f"Expected an image, folder or manifest at {p}; got nothing there. Fix: check the path.")
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_image_path(f))
            if not found:
                raise DataError(f"Expected image files (PNG, JPEG, DICOM) under {p}; got none.")
            paths += found
        elif p.suffix.lower() == ".csv":
            paths += [r.path for r in load_dataset(p).records if r.error is None]
        elif is_image_path(p):
            paths.append(p)
        else:
            raise DataError(
                f"Expected an image (PNG, JPEG, DICOM), a folder or a .csv manifest; got {p}. "
                "Fix: pass image files, a folder of them, or a manifest with a path column."
            )
    return paths[:max_images] if max_images is not None else paths


def write_outputs(result: Any, scorer: Any, out: Path) -> dict[str, Path]:
    """Per-image overlay PNGs, ``maps.npz``, ``maps.csv`` and ``faithfulness.json`` in ``out``."""
    import numpy as np

    from xrayfx.report.audit import MASK_HEIGHT_FRACTION, MASK_WIDTH_FRACTION
    from xrayfx.report.explain_figures import overlay_png
    from xrayfx.study.explain import decoded, positive_mass_inside
    from xrayfx.util import atomic_write_bytes, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    for i, e in enumerate(result.items):
        png = overlay_png(decoded(e.path, scorer.preprocessing), e.map, e.p, result.positive, e.informative,
                          name=Path(e.path).name, auc=(e.auc_top, e.auc_random))
        atomic_write_bytes(out / f"{i:03d}-{Path(e.path).stem}.png", png)
    paths = {"npz": out / "maps.npz", "csv": out / "maps.csv", "json": out / "faithfulness.json"}
    atomic_write_bytes(paths["npz"], result.npz_bytes())
    atomic_write_text(paths["csv"], result.csv_text())
    faith = result.faithfulness()
    inside = positive_mass_inside(result.maps, MASK_WIDTH_FRACTION, MASK_HEIGHT_FRACTION)
    for item, share in zip(faith["images"], inside):
        item["positive_mass_inside_lung_box"] = None if np.isnan(share) else float(share)
    faith["lung_box"] = {"width_fraction": MASK_WIDTH_FRACTION, "height_fraction": MASK_HEIGHT_FRACTION,
                         "area": MASK_WIDTH_FRACTION * MASK_HEIGHT_FRACTION}
    atomic_write_text(paths["json"], json.dumps(faith, indent=2, allow_nan=False) + "\n")
    return paths


def explain_cmd(
    inputs: Annotated[list[str], typer.Argument(help="Images, folders or CSV manifests.", show_default=False)],
    run: Annotated[str, typer.Option("--run", help="Run folder, or run id under <cache-dir>/runs.",
                                     show_default=False)],
    grid: Annotated[int, typer.Option("--grid", help="Cells per side of the occlusion grid.")] = 8,
    fill: Annotated[str, typer.Option("--fill", help="mean (the image's mean grey) or blur.")] = "mean",
    max_images: Annotated[Optional[int], typer.Option("--max-images", help="Explain at most this many images.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default: RUN/explain).",
                                                file_okay=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the deletion test's random cells.")] = 0,
    cache_dir: Annotated[Optional[Path], typer.Option(
        "--cache-dir", help="Cache folder holding the run (default: the one the run folder sits in, else ./cache).",
        file_okay=False)] = None,
    device: Device = "cpu",
) -> None:
    """Occlusion maps: where in each image the run's decision comes from, tested for faithfulness.

    Each cell of a GRID×GRID grid over the decoded image is filled in turn, the copies are embedded by the run's
    extractor (one batch per image) and scored by its head; the map is the drop in p(positive) per cell. The
    deletion test occludes the top k cells (k = 1..GRID²/4) against k random cells; maps whose top cells move p
    no more than random cells are marked not informative. Writes one overlay PNG per image, maps.npz, maps.csv
    and faithfulness.json. Nothing is written into the embedding cache.

    Example: xrayfx explain --run cache/runs/RUN-ID test.csv --max-images 32 --out explain
    """
    from xrayfx.cli import console
    from xrayfx.study.explain import check_fill, check_grid, explain_images, load_run_scorer

    grid, fill = check_grid(grid), check_fill(fill)
    paths = collect_image_paths(inputs, max_images)
    scorer = load_run_scorer(run, cache_dir, device=device)
    result = explain_images(scorer, paths, grid=grid, fill=fill, seed=seed, log=_log)
    for path, reason in result.skipped:
        _log(f"skipped {path}: {reason}")
    target = out if out is not None else Path(scorer_run_folder(run, cache_dir)) / "explain"
    files = write_outputs(result, scorer, target)
    s = result.summary()
    if s["n_images"]:
        console.print(
            f"{s['n_images']} maps ({grid}×{grid}, fill {fill}) in {s['seconds']:.1f} s "
            f"({s['images_per_s']:.2f} images/s); deletion test: area top {s['auc_top']:.3f} vs random "
            f"{s['auc_random']:.3f}, {s['n_informative']}/{s['n_images']} maps informative",
            highlight=False, markup=False)
    console.print(f"maps: {files['npz']}\n      {files['csv']}\n      {files['json']}", highlight=False, markup=False)
    if not result.items:
        from xrayfx.exceptions import DataError

        raise DataError(f"Expected at least one decodable image; got {len(result.skipped)} undecodable.")


def scorer_run_folder(run: str, cache_dir: Path | None) -> Path:
    """The run's folder (for the default output folder)."""
    from xrayfx.study.runs import resolve_run

    return resolve_run(run, cache_dir or "cache")


def register(app: typer.Typer) -> None:
    """Add the `explain` command to the xrayfx app."""
    app.command("explain", epilog="Example: xrayfx explain --run cache/runs/RUN-ID test.csv --grid 8")(explain_cmd)

