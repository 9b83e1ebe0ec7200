"""The `xrayfx` command line: a thin layer over the library.

Each command group lives in its own module, listed in :data:`COMMAND_MODULES`, and
adds its commands in ``register(app)``. A new command goes into one of them, or into
a new module added to that list. Command modules import the library inside the
command functions, so ``xrayfx --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module

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


#: The modules under xrayfx/cli/ that define commands, in the order of ``xrayfx --help``; each has ``register(app)``.
COMMAND_MODULES = ("core", "models", "cache_verify", "data", "train", "evaluate", "explain", "report", "bench")
_registered = False


def _register_commands() -> None:
    global _registered
    if _registered:
        return
    for name in COMMAND_MODULES:
        import_module(f"xrayfx.cli.{name}").register(app)
    _registered = True


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
    except typer.TyperException as exc:
        # Bad options and arguments (exit code 2). Typer 0.29 vendors click as typer._click, so the
        # installed `click` package's ClickException would not catch them; TyperException is their
        # public base class.
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"error: {exc.format_message()}", highlight=False, markup=False)
        sys.exit(exc.exit_code)
