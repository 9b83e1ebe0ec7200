"""The `xrayfx` command line: a thin layer over the library.

Each command group lives in its own module and registers itself on ``app``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from xrayfx.exceptions import XrayfxError  # noqa: E402

app = typer.Typer(
    name="xrayfx",
    help="Transfer-learning classification of chest radiographs: frozen ONNX extractors, "
    "a zarr embedding cache, light heads and honest reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped or logged output gets a wide console, so tables and paths are not folded at 80 columns.
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
console = Console(width=None if sys.stdout.isatty() else 200)


def _register_commands() -> None:
    from xrayfx.cli import core  # noqa: F401  (registers models, export, extract, cache, phantoms, demo)

    for optional in ("data", "train", "report", "bench", "explain"):
        try:
            module = __import__(f"xrayfx.cli.{optional}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"xrayfx.cli.{optional}":
                raise
            continue
        module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: runs the app and maps xrayfx errors to exit codes."""
    _register_commands()
    try:
        app(args=argv, standalone_mode=False)
    except XrayfxError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("Aborted.")
        sys.exit(130)
    except typer.BadParameter.__mro__[2] as exc:  # click's ClickException (vendored by typer 0.29)
        exc.show()
        sys.exit(exc.exit_code)
