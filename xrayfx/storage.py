"""Where xrayfx writes: a cache folder that is a file, a read-only cache, a full disk.

Readers of a cache (predict, report) work on a read-only cache, such as a shared
model store; writers (extract, fit-head) say that it is read-only before any work.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from xrayfx.exceptions import CacheError, UsageError


class ReadOnlyCacheError(CacheError):
    """The cache folder cannot be written, and the command needs to write there."""


class DiskFullError(CacheError):
    """The disk filled up while writing; what was finished is kept."""


def check_cache_dir(cache_dir: str | Path) -> Path:
    """The cache folder as a Path; UsageError (exit 2) when the path is a file or otherwise not a folder."""
    path = Path(cache_dir)
    if str(cache_dir).strip() == "":
        raise UsageError("expected --cache-dir to name a folder, got an empty path. Fix: --cache-dir cache")
    if path.exists() and not path.is_dir():
        raise UsageError(
            f"expected --cache-dir {path} to be a folder, but it is a file. Fix: give a folder (it is created if "
            "missing), e.g. --cache-dir cache, or move the file away"
        )
    return path


def nearest_existing(path: str | Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent folder."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def is_writable(path: str | Path) -> bool:
    """Whether xrayfx can create files in ``path`` (or, when it does not exist yet, where it would be created).

    Uses ``os.access``, which also reports a read-only mount (EROFS) and an immutable folder for root.
    """
    return os.access(nearest_existing(path), os.W_OK)


def require_writable_cache(cache_dir: str | Path, command: str = "extract") -> None:
    """ReadOnlyCacheError before any work when ``command`` would have to write to a read-only cache."""
    if not is_writable(cache_dir):
        raise ReadOnlyCacheError(
            f"cache {cache_dir} is read-only ({nearest_existing(cache_dir)} cannot be written): {command} stores "
            "embeddings there. Fix: make it writable, or give --cache-dir a writable folder (copy its models/ "
            "folder there to reuse the exports). predict and report work on a read-only cache as it is"
        )


def require_writable_output(folder: str | Path, option: str = "--out") -> None:
    """UsageError when an output folder cannot be written (e.g. a report inside a read-only cache)."""
    if not is_writable(folder):
        raise UsageError(
            f"cannot write to {folder}: {nearest_existing(folder)} is read-only. Fix: pass {option} with a "
            "writable folder"
        )


def is_disk_full(exc: BaseException) -> bool:
    """Whether an exception is the file system saying there is no space left (ENOSPC or EDQUOT)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(rows_kept: int, where: str | Path) -> DiskFullError:
    """The error for a full disk during extraction, with the rows already kept."""
    return DiskFullError(
        f"disk full after {rows_kept} new row(s) of embeddings in {where}; they are kept. Fix: free space and "
        "rerun the same command: it computes only the rest"
    )
