"""`xrayfx cache verify`: read every chunk of cache groups, report damage, or repair it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from xrayfx.cli import console
from xrayfx.cli.core import cache_app
from xrayfx.cli.options import CacheDir


def cache_verify(
    groups: Annotated[
        Optional[list[str]],
        typer.Argument(metavar="GROUP", help="Cache group names (see `xrayfx cache ls`); default: all."),
    ] = None,
    model: Annotated[
        Optional[list[str]], typer.Option("--model", "-m", help="Only the groups of this backbone (repeatable).")
    ] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Mark damaged chunks' rows not done; the next extract recomputes them.")
    ] = False,
    cache_dir: CacheDir = Path("cache"),
) -> None:
    """Read every chunk of the cache groups and report damage (exit 1), or repair it with --repair.

    Damage: a chunk file that cannot be decoded (checksum mismatch, truncated), a missing chunk file under valid rows, or valid rows holding NaN or inf. Repair never patches data: it marks the damaged chunks' rows not done, so the next `xrayfx extract` recomputes exactly those. (extract itself checks every chunk it reuses and does the same, with a warning.)

    Example: xrayfx cache verify --cache-dir cache --repair
    """
    from xrayfx.extraction.verify import verify_group

    selected = _select_groups(cache_dir, groups or [], model or [])
    damaged = 0
    for cache in selected:
        if repair:
            with cache.locked():
                report = verify_group(cache, fix=True)
        else:
            report = verify_group(cache)
        damaged += len(report["damage"])
        _print_report(report, repair)
    if damaged and not repair:
        from xrayfx.exceptions import CacheError

        raise CacheError(  # exit 1
            f"{damaged} damaged chunk(s) found; run `xrayfx cache verify --repair --cache-dir {cache_dir}` to mark "
            "their rows not done, then extract again to recompute them (extract also repairs the chunks it reuses)"
        )


def register(app: typer.Typer) -> None:
    """Add ``verify`` to the ``cache`` group (registered on ``app`` by :mod:`xrayfx.cli.core`)."""
    cache_app.command("verify")(cache_verify)


def _select_groups(cache_dir: Path, names: list[str], models: list[str]) -> list:
    from xrayfx.extraction.cache import list_groups
    from xrayfx.exceptions import UsageError

    groups = list_groups(cache_dir)
    known = {g.path.name for g in groups}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(
            f"no cache group {unknown[0]!r} under {cache_dir}/embeddings; expected one of: "
            f"{', '.join(sorted(known)) or 'none (nothing extracted yet)'} (see `xrayfx cache ls`)"
        )
    if not groups:
        raise UsageError(
            f"expected cache groups under {cache_dir}/embeddings; got none (nothing extracted there yet): "
            "check --cache-dir"
        )
    selected = [g for g in groups if (not names or g.path.name in names)
                and (not models or g.attrs.get("model", {}).get("backbone") in models)]
    if not selected:
        raise UsageError(
            f"no cache group under {cache_dir}/embeddings matches"
            f"{' --model ' + ', '.join(models) if models else ''}; see `xrayfx cache ls --cache-dir {cache_dir}`"
        )
    return selected


def _print_report(report: dict, repaired: bool) -> None:
    head = f"{report['group']}: {report['chunks']} chunk(s), {report['valid_rows']} valid row(s)"
    if not report["damage"]:
        console.print(f"{head}: ok", highlight=False, soft_wrap=True, markup=False)
        return
    console.print(f"{head}: {len(report['damage'])} damaged chunk(s)", highlight=False, soft_wrap=True, markup=False)
    for line in report["damage"]:
        console.print(f"  damaged: {line}", highlight=False, soft_wrap=True, markup=False)
    if repaired:
        console.print(
            f"  repaired: {len(report['damage'])} chunk(s) ({report['invalidated_rows']} row(s)) marked not done; "
            "the next `xrayfx extract` of these images recomputes them", highlight=False, soft_wrap=True,
            markup=False,
        )
