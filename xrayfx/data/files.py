"""Opening input files safely: only regular files are ever read.

A manifest row or a data folder may name a FIFO, a socket, a device such as
``/dev/zero`` or a dangling symlink. Reading any of the first three blocks or
never ends, so every input is checked with ``stat`` first and opened with
``O_NONBLOCK`` (a FIFO swapped in after the check cannot block the open), then
checked again on the open descriptor. Anything else is refused with a reason
that names what the path is.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from xrayfx.exceptions import ImageDecodeError

_BLOCK = 1 << 20
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def file_kind(mode: int) -> str:
    """What a ``st_mode`` names, in words ('a regular file', 'a socket', …)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((words for test, words in _KINDS if test(mode)), "not a regular file")


def not_regular_reason(kind: str) -> str:
    """The skip reason for an input that is not a regular file."""
    return f"is {kind}, not a regular file: only regular image files are read; remove it from the data"


def dangling_reason(path: str | os.PathLike[str]) -> str:
    """The skip reason for a symlink whose target does not exist."""
    return f"dangling symlink: it points to {os.readlink(path)}, which does not exist; fix or remove the link"


def open_regular(path: str | os.PathLike[str]) -> int:
    """Open a regular file read-only without ever blocking; returns the descriptor.

    Raises :class:`ImageDecodeError` (a skip, with the reason) for a FIFO, socket,
    device, directory or dangling symlink; ``FileNotFoundError`` / ``PermissionError``
    as ``open`` does for a missing or unreadable file.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageDecodeError(path, dangling_reason(path)) from None
        raise
    if not stat.S_ISREG(mode):
        raise ImageDecodeError(path, not_regular_reason(file_kind(mode)))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):  # replaced between stat and open
        os.close(fd)
        raise ImageDecodeError(path, not_regular_reason(file_kind(mode)))
    return fd


def read_regular_bytes(path: str | os.PathLike[str]) -> bytes:
    """All bytes of a regular file (see :func:`open_regular` for what is refused)."""
    with os.fdopen(open_regular(path), "rb") as f:
        return f.read()


def sha256_regular(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a regular file's bytes, read in 1 MiB pieces (see :func:`open_regular`)."""
    h = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def scan_folder(folder: Path, wanted) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files under ``folder`` (recursively, sorted) for which ``wanted(path)`` holds, and the refused entries.

    Regular files and symlinks to them are returned when wanted; symlinked folders
    are not followed (they can loop or leave the data folder), and they, dangling
    symlinks and special files (FIFO, socket, device) come back as (path, reason)
    so that the caller lists them instead of dropping them silently. Hidden entries
    (name starting with ``.``) are passed over, and so are regular files not wanted.
    """
    found: list[Path] = []
    refused: list[tuple[Path, str]] = []
    stack = [folder]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                _classify(entry, wanted, found, refused, stack)
    return sorted(found), sorted(refused)


def _classify(entry: os.DirEntry, wanted, found: list, refused: list, stack: list) -> None:
    path = Path(entry.path)
    if entry.name.startswith("."):
        return  # hidden: macOS AppleDouble files, editor lock links, .git …
    if entry.is_symlink():
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            refused.append((path, dangling_reason(path)))
            return
        if stat.S_ISDIR(mode):
            refused.append((path, "symlinked folder: not followed (it could loop or leave the data folder); "
                                  "move or copy its images into the class folder, or list them in a manifest"))
            return
    else:
        mode = entry.stat(follow_symlinks=False).st_mode
    if stat.S_ISDIR(mode):
        stack.append(path)
    elif stat.S_ISREG(mode):
        if wanted(path):
            found.append(path)
    else:
        refused.append((path, not_regular_reason(file_kind(mode))))
