"""`xrayfx models`, `models add`, `models remove`: the built-in backbones and the ONNX ones added to a cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from xrayfx.cli import console, err_console
from xrayfx.cli.options import CacheDir

models_app = typer.Typer(invoke_without_command=True)  # help: the docstring of models_root
OptionalCacheDir = Annotated[
    Optional[Path], typer.Option("--cache-dir", help="Cache folder the model is added to (default: cache).")
]


def _log(message: str) -> None:
    err_console.print(message, highlight=False, soft_wrap=True)


@models_app.callback(invoke_without_command=True)
def models_root(ctx: typer.Context, cache_dir: CacheDir = Path("cache")) -> None:
    """List the built-in backbones, then the ONNX backbones added to --cache-dir (`models add` / `models remove`).

    Example: xrayfx models --cache-dir cache
    """
    ctx.obj = {"cache_dir": cache_dir}
    if ctx.invoked_subcommand is None:
        from xrayfx.cli.core import models_cmd

        models_cmd(cache_dir)
        print_added(cache_dir)


def _cache_dir(ctx: typer.Context, cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return cache_dir
    return (ctx.obj or {}).get("cache_dir") or Path("cache")


def print_added(cache_dir: Path) -> None:
    """The table of models added to a cache folder (or a line saying there are none)."""
    from xrayfx.models.custom import list_added

    specs = list_added(cache_dir)
    if not specs:
        console.print(f"no ONNX backbones added to {cache_dir} (`xrayfx models add NAME --onnx FILE "
                      "--normalisation MODE` adds one)", highlight=False)
        return
    table = Table(title=f"ONNX backbones added to {cache_dir}")
    for col in ("name", "dim", "input", "prep", "pool", "params", "sha256", "license", "source"):
        table.add_column(col, no_wrap=col == "name")
    for s in specs:
        h, w = s.input_size
        table.add_row(
            s.name, str(s.embedding_size), f"{s.channels}x{h}x{w} {s.layout.upper()}", s.preprocess_mode, s.pool,
            f"{s.params / 1e6:.1f} M", s.onnx_sha256[:12], s.license, s.source,
        )
    console.print(table)


def _floats(value: str | None, what: str) -> list[float] | None:
    if value is None:
        return None
    from xrayfx.exceptions import UsageError

    try:
        return [float(v) for v in value.replace(",", " ").split()]
    except ValueError as exc:
        raise UsageError(f"{what} expects numbers separated by commas (e.g. 0.485,0.456,0.406); got {value!r}") from exc


@models_app.command("add")
def add_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name for --model (lower case; built-in names are refused).")],
    onnx: Annotated[Path, typer.Option("--onnx", help="The ONNX file (float image input, one file).")],
    normalisation: Annotated[str, typer.Option(
        "--normalisation", help="tf ([-1,1]) | torch (ImageNet mean/std) | unit ([0,1]) | xrv ([-1024,1024]) | "
        "custom (--mean/--std).")],
    layout: Annotated[
        Optional[str], typer.Option("--layout", help="nchw | nhwc (default: read from the graph).")
    ] = None,
    input_size: Annotated[Optional[int], typer.Option(
        "--input-size", help="Image side N (NxN); needed when the graph's height/width are dynamic.")] = None,
    channels: Annotated[Optional[int], typer.Option(
        "--channels", help="1 (grey) | 3 (RGB); default: read from the graph.")] = None,
    output: Annotated[Optional[str], typer.Option("--output", help="The output to use when there are several.")] = None,
    pool: Annotated[
        str, typer.Option("--pool", help="none | avg (average a feature map over height and width).")
    ] = "none",
    mean: Annotated[Optional[str], typer.Option(
        "--mean", help="--normalisation custom: per-channel mean on [0,1] pixels, e.g. 0.485,0.456,0.406.")] = None,
    std: Annotated[Optional[str], typer.Option("--std", help="--normalisation custom: per-channel std.")] = None,
    license: Annotated[str, typer.Option("--license", help="The weights' license, recorded and listed.")] = "unknown",
    source: Annotated[str, typer.Option("--source", help="Where the model comes from, recorded and listed.")] = "",
    cache_dir: OptionalCacheDir = None,
) -> None:
    """Register an ONNX image encoder as a backbone of one cache folder (copied, hashed, test-run).

    Example: xrayfx models add xrv-densenet121-all --onnx xrv.onnx --normalisation xrv --pool avg
    """
    from xrayfx.models.custom import add_model

    folder = _cache_dir(ctx, cache_dir)
    spec = add_model(
        name, onnx, normalisation, folder, layout=layout, input_size=input_size, channels=channels, output=output,
        pool=pool, mean=_floats(mean, "--mean"), std=_floats(std, "--std"), license=license, source=source, log=_log,
    )
    h, w = spec.input_size
    console.print(
        f"added {spec.name} to {folder}: input {spec.input_name!r} {spec.channels}x{h}x{w} {spec.layout.upper()}, "
        f"{spec.preprocess_mode} normalisation; output {spec.output_name!r}"
        f"{' averaged over height and width' if spec.pool == 'avg' else ''} → {spec.embedding_size} features; "
        f"sha256 {spec.onnx_sha256[:12]}…. Use it with --model {spec.name} --cache-dir {folder}",
        highlight=False, soft_wrap=True,
    )


@models_app.command("remove")
def remove_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="An added model's name.")],
    cache_dir: OptionalCacheDir = None,
) -> None:
    """Unregister an added ONNX backbone and delete its files (cached embeddings stay).

    Example: xrayfx models remove xrv-densenet121-all --cache-dir cache
    """
    from xrayfx.models.custom import remove_model

    folder = _cache_dir(ctx, cache_dir)
    gone = remove_model(name, folder)
    console.print(f"removed {name.strip().lower()} from {folder} ({len(gone)} file(s) deleted)", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `models` group to the xrayfx app."""
    app.add_typer(models_app, name="models")
