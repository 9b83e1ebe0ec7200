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

from xrayfx.cli.faults import (EXIT_SIGINT, EXIT_SIGTERM, Terminated, install_sigterm_handler,  # noqa: E402
                               interrupted_line, os_error_line, refuse_empty_values, tolerate_undecodable_names)
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
# markup=False: paths, labels, ids and sources are user text and print literally ("export[v2]/x.csv",
# "[/]"); the few styled words are built as rich Text (see ``styled``), never as markup strings.
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200, markup=False)
console = Console(width=None if sys.stdout.isatty() else 200, markup=False)


def styled(prefix: str, style: str, rest: str = ""):
    """``prefix`` in ``style`` followed by ``rest``, as a rich Text: nothing in either is read as markup."""
    from rich.text import Text

    return Text.assemble((prefix, style), rest)


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
    """Entry point of the console script: runs the app and maps errors and signals to exit codes.

    0 success; 1 a failed run; 2 bad arguments or input; 130 Ctrl-C; 143 SIGTERM.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    install_sigterm_handler()
    tolerate_undecodable_names()
    try:
        _register_commands()
        refuse_empty_values(args)
        code = app(args=args, standalone_mode=False)
    except KeyboardInterrupt:
        code = EXIT_SIGINT
    except Terminated:
        _error_line(interrupted_line(args, "terminated"))
        sys.exit(EXIT_SIGTERM)
    except XrayfxError as exc:
        _error_line(f"error: {exc}", bold="error:")
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("Aborted.")
        sys.exit(EXIT_SIGINT)
    except typer.TyperException as exc:
        # Bad options and arguments (exit code 2). Typer 0.29 vendors click as typer._click, so the
        # installed `click` package's ClickException would not catch them; TyperException is their
        # public base class.
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            _error_line(f"error: {exc.format_message()}", bold="error:")
        sys.exit(exc.exit_code)
    except OSError as exc:
        _error_line(f"error: {os_error_line(exc)}", bold="error:")
        sys.exit(1)
    if code == EXIT_SIGINT:  # typer turns Ctrl-C into a returned 130 when standalone_mode is off
        _error_line(interrupted_line(args))
        sys.exit(EXIT_SIGINT)
    if isinstance(code, int) and code:
        sys.exit(code)


def _error_line(text: str, bold: str = "") -> None:
    """Print one line on standard error literally (user text is never read as markup)."""
    line = styled(bold, "bold red", text[len(bold):]) if bold and text.startswith(bold) else styled(text, "")
    err_console.print(line, highlight=False, soft_wrap=True)
