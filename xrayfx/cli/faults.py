"""How the command line ends on interruption and on faults of the machine (signals, full disk, read-only files).

Ctrl-C (SIGINT) exits 130 and SIGTERM exits 143, each with one line on standard
error. SIGTERM is turned into an exception, so ``finally`` blocks run (locks are
released, temporary files removed) exactly as on Ctrl-C; every file xrayfx writes
is written atomically, so nothing half-written is ever read as valid.
"""

from __future__ import annotations

import errno
import signal
import sys
from types import FrameType

#: Exit codes of the shell convention: 128 + signal number.
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

#: Commands whose rerun picks up where an interrupted run stopped (finished cache chunks are kept).
RESUMABLE = frozenset({"extract", "fit-head", "predict", "demo"})


class Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread so that cleanup code runs (a BaseException, like Ctrl-C)."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def install_sigterm_handler() -> None:
    """Make SIGTERM raise :class:`Terminated`, and SIGINT KeyboardInterrupt, in the main thread.

    SIGINT gets Python's own handler even when the parent started us with SIGINT ignored
    (a background job of a non-interactive shell), so Ctrl-C and ``kill -INT`` always end cleanly.
    """
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def command_name(argv: list[str]) -> str:
    """The subcommand of an argument list (the first word that is not an option), or ''."""
    return next((a for a in argv if not a.startswith("-")), "")


def interrupted_line(argv: list[str], what: str = "interrupted") -> str:
    """The one line printed on Ctrl-C or SIGTERM; it says to rerun where that resumes the work."""
    if command_name(argv) in RESUMABLE:
        return f"{what}; rerun the same command to resume"
    return what


def tolerate_undecodable_names() -> None:
    """Print file names that are not UTF-8 with backslash escapes instead of failing (stdout and stderr)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def refuse_empty_values(argv: list[str]) -> None:
    """Raise UsageError (exit 2) for an empty argument: ``--data ''`` would otherwise mean the current folder."""
    from xrayfx.exceptions import UsageError

    for i, arg in enumerate(argv):
        if arg.startswith("--") and arg.endswith("=") and len(arg) > 3:
            option = arg[:-1]
        elif arg.strip() == "":
            option = argv[i - 1] if i > 0 and argv[i - 1].startswith("-") else ""
        else:
            continue
        where = f"after {option}" if option else f"as argument {i + 1}"
        raise UsageError(
            f"expected a value {where}, got an empty string; an empty path would silently mean the current "
            "folder. Fix: give the path (write . for the current folder)"
        )


def os_error_line(exc: OSError) -> str:
    """One line for an OSError that reached the command line: what failed, and the fix."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"disk full{where}: free space and rerun; finished work is kept"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"cannot write{where}: {exc.strerror}; the folder is read-only or not yours. Fix: make it "
                "writable, or point --cache-dir / --out / -o at a writable folder")
    return f"{exc.strerror or exc}{where}"
