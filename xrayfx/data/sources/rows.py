"""Manifest rows: the result type of the readers, reading and writing manifest CSVs.

A row is a ``dict[str, str]``. Readers give absolute ``path`` values; :func:`write_manifest`
writes them relative to the manifest file when the image and the manifest share a folder
above the file-system root, so that a data folder and its manifest can move together.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from xrayfx.data.manifest import MANIFEST_COLUMNS, read_manifest_csv
from xrayfx.csvsafe import dict_csv_text, read_manifest_text
from xrayfx.exceptions import DataError, UsageError
from xrayfx.util import atomic_write_text

Row = dict[str, str]

#: Age at or above which a patient is an adult.
ADULT_AGE = 18


@dataclass
class ReaderResult:
    """What a source reader found.

    Attributes:
        source: the ``source`` value of the rows (``cohen``, ``mooney``, ``nih``).
        rows: manifest rows, ``path`` absolute.
        missing: files the source's own index names (and that would enter the manifest)
            but that are not on disk, as paths relative to the source folder.
        dropped: index entries left out on purpose, counted by reason
            (for example ``"modality CT"`` or ``"finding Pneumonia"``).
        problems: ``"name: reason"`` lines for entries that could not be interpreted
            and were left out (an unknown file-name pattern, an inconsistent id).
    """

    source: str
    rows: list[Row] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def counts(self, *columns: str) -> Counter:
        """Rows counted by the values of one or more columns (a tuple key for several)."""
        if len(columns) == 1:
            return Counter(r.get(columns[0], "") for r in self.rows)
        return Counter(tuple(r.get(c, "") for c in columns) for r in self.rows)


def label_slug(text: str) -> str:
    """A label name from a finding: lower case, runs of other characters become ``-``.

    ``"Mycoplasma Bacterial Pneumonia"`` → ``"mycoplasma-bacterial-pneumonia"``.
    """
    return re.sub(r"[^a-z0-9]+", "-", text.strip().lower()).strip("-")


def parse_age(value: str | int | float | None) -> float | None:
    """Age in years from ``"58"``, ``"58.0"``, NIH's older ``"058Y"``/``"006M"``/``"010D"``; else None."""
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([YMDW]?)", text, flags=re.IGNORECASE)
    if m is None:
        return None
    number = float(m.group(1))
    unit = m.group(2).upper()
    return {"": number, "Y": number, "M": number / 12, "W": number / 52, "D": number / 365}[unit]


def age_group(value: str | int | float | None) -> str:
    """``pediatric`` under 18 years, ``adult`` from 18, ``unknown`` when no age is given."""
    age = parse_age(value)
    if age is None:
        return "unknown"
    return "pediatric" if age < ADULT_AGE else "adult"


def manifest_columns(rows: list[Row]) -> list[str]:
    """:data:`MANIFEST_COLUMNS` followed by every other column in order of first appearance."""
    cols = list(MANIFEST_COLUMNS)
    seen = set(cols)
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                cols.append(key)
    return cols


def relative_if_possible(path: str | Path, base_dir: str | Path) -> str:
    """``path`` relative to ``base_dir`` when both lie under a common folder other than the root.

    Otherwise (different drives, or only ``/`` in common) the absolute path, which stays right
    wherever the manifest is moved.
    """
    p = Path(os.path.abspath(path))
    base = Path(os.path.abspath(base_dir))
    try:
        common = Path(os.path.commonpath([p, base]))
    except ValueError:  # different drives on Windows
        return str(p)
    if common == Path(common.anchor):
        return str(p)
    return os.path.relpath(p, base)


def write_manifest(rows: list[Row], path: str | Path) -> Path:
    """Write rows as a manifest CSV, atomically; returns the path written.

    Columns: :data:`MANIFEST_COLUMNS` then the others in order of first appearance. Each
    ``path`` (absolute, or relative to the current folder) is written relative to the
    manifest's folder when possible (:func:`relative_if_possible`).
    """
    if not rows:
        raise DataError(
            f"expected at least one row to write to {path}, got none; "
            "fix: check the source folder and the filters (views, findings) that were applied"
        )
    for i, row in enumerate(rows):
        if not row.get("path") or not row.get("label"):
            raise UsageError(
                f"expected every row to have a 'path' and a 'label', got row {i} = {row!r}; "
                "fix: fill both before writing"
            )
    out = Path(path)
    base = out.resolve().parent
    cols = manifest_columns(rows)
    text = dict_csv_text(cols, ({**{c: row.get(c, "") for c in cols}, "path": relative_if_possible(row["path"], base)}
                                for row in rows))
    atomic_write_text(out, text)
    return out


def load_manifest_rows(path: str | Path) -> list[Row]:
    """Rows of a manifest CSV with each ``path`` made absolute (relative paths are relative to the file).

    Raises DataError when the file is missing, empty, or lacks a ``path`` or ``label`` column.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"expected a manifest CSV at {p}, got no such file; "
            "fix: pass the path of an existing manifest (for example ../shared/data/cxr/manifest.csv)"
        )
    _columns, rows = read_manifest_csv(
        p, ("path", "label"), "write the manifest with `xrayfx data cohen|kermany|nih` or add the columns"
    )
    if not rows:
        raise DataError(f"expected rows in {p}, got only a header; fix: point to a filled manifest")
    base = p.resolve().parent
    for r in rows:
        r["path"] = os.path.normpath(base / r["path"]) if not os.path.isabs(r["path"]) else r["path"]
    return rows


def read_csv_index(path: Path, required: tuple[str, ...], what: str, fix: str) -> list[Row]:
    """Rows of a source's own index CSV; DataError if it is missing or lacks a required column."""
    if not path.is_file():
        raise DataError(f"expected {what} at {path}, got no such file; fix: {fix}")
    reader = csv.DictReader(io.StringIO(read_manifest_text(path, what), newline=""))
    fields = [c for c in (reader.fieldnames or []) if c is not None]
    absent = [c for c in required if c not in fields]
    if absent:
        raise DataError(
            f"expected columns {list(required)} in {what} {path}, got {fields} (missing {absent}); "
            f"fix: {fix}"
        )
    return [{k: (v or "") for k, v in r.items() if k} for r in reader]
