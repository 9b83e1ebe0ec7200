"""Data sets: a folder with one subfolder per class, or a CSV manifest.

Every image is identified by the sha256 of its file bytes (its *image id*): two
paths with the same bytes share one cache row, and the duplicate is reported.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from xrayfx.csvsafe import dict_rows, read_manifest_text
from xrayfx.data.files import scan_folder, sha256_regular
from xrayfx.exceptions import DataError, ImageDecodeError
from xrayfx.data.images import is_image_path

#: The columns every manifest xrayfx writes starts with, in this order; only ``path`` is required to read one.
MANIFEST_COLUMNS: tuple[str, ...] = ("path", "label", "patient_id", "source", "view", "age_group")

@dataclass
class ImageRecord:
    """One image of a data set."""

    path: Path
    label: str | None
    meta: dict[str, str] = field(default_factory=dict)
    image_id: str | None = None
    error: str | None = None  # set when the file cannot be read at all (missing, unreadable)

    def get(self, column: str, default: str = "") -> str:
        if column == "label":
            return self.label or default
        return self.meta.get(column, default) or default


@dataclass
class Dataset:
    """The images of a folder or a manifest, hashed."""

    source: Path
    kind: str  # "folder" | "manifest"
    records: list[ImageRecord]
    columns: list[str]

    @property
    def ok(self) -> list[ImageRecord]:
        return [r for r in self.records if r.error is None]

    @property
    def unreadable(self) -> list[ImageRecord]:
        return [r for r in self.records if r.error is not None]

    def duplicates(self) -> dict[str, list[str]]:
        """image id → paths, for ids that appear under more than one path."""
        by_id: dict[str, list[str]] = defaultdict(list)
        for r in self.ok:
            by_id[r.image_id].append(str(r.path))
        return {k: v for k, v in by_id.items() if len(v) > 1}

    def labels(self) -> list[str]:
        return sorted({r.label for r in self.records if r.label})

    def require_labels(self) -> None:
        """Raise DataError naming the columns when a manifest has no ``label`` column at all."""
        if self.kind == "manifest" and "label" not in self.columns:
            raise DataError(
                f"Expected a 'label' column in manifest {self.source}; it has none (its columns: "
                f"{', '.join(self.columns)}). Fix: add a label column (e.g. covid / normal) to the manifest."
            )


def load_dataset(path: str | Path, hash_workers: int = 4) -> Dataset:
    """Read a class-folder tree or a CSV manifest, and hash every readable file."""
    if not str(path).strip():
        raise DataError("expected a data folder or CSV manifest, got an empty path; give the path "
                        "(write . for the current folder)")
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"data path {path} does not exist; give a folder with one subfolder per class "
            "or a CSV manifest with columns path,label (xrayfx phantoms -o DIR makes an example)"
        )
    if path.is_dir():
        dataset = _read_folder(path)
    elif path.suffix.lower() == ".csv":
        dataset = _read_manifest(path)
    else:
        raise DataError(f"data path {path} is neither a folder nor a .csv manifest")
    if not dataset.records and dataset.kind == "manifest":
        raise DataError(f"manifest {path} has a header ({', '.join(dataset.columns)}) but no rows; "
                        "expected one row per image (path,label,...). Fix: fill it, or pass another manifest")
    if not dataset.records:
        raise DataError(f"{path} lists no images; expected class subfolders holding PNG/JPEG/DICOM files")
    _hash_records(dataset.records, hash_workers)
    return dataset


def _read_folder(root: Path) -> Dataset:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"{root} has no class subfolders; expected e.g. {root}/covid/*.png and {root}/normal/*.png, "
            "or pass a CSV manifest"
        )
    records = []
    for d in class_dirs:
        found, refused = scan_folder(d, is_image_path)
        records += [ImageRecord(path=f, label=d.name) for f in found]
        records += [ImageRecord(path=f, label=d.name, error=reason) for f, reason in refused]
    return Dataset(source=root, kind="folder", records=records, columns=["path", "label"])


def read_manifest_csv(
    manifest: str | Path, required: tuple[str, ...] = ("path",), fix: str = "add a 'path' column (and 'label')"
) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of a manifest CSV (UTF-8, with or without a BOM; cells neutralised against
    formula injection are restored): the one manifest reader.

    Raises DataError when a ``required`` column is missing; ``fix`` ends the message.
    """
    columns, rows = dict_rows(read_manifest_text(manifest))  # DataError naming line and byte unless UTF-8
    missing = [c for c in required if c not in columns]
    if missing:
        wanted = " and ".join(repr(c) for c in required)
        raise DataError(f"expected columns {wanted} in manifest {manifest}, got {columns}; fix: {fix}")
    return columns, rows


def _read_manifest(manifest: Path) -> Dataset:
    columns, rows = read_manifest_csv(manifest)
    base = manifest.parent
    records = []
    for line, row in enumerate(rows, start=2):
        raw = (row.get("path") or "").strip()
        if not raw:
            raise DataError(f"manifest {manifest} line {line}: empty path")
        p = Path(raw).expanduser()
        meta = {k: (v or "").strip() for k, v in row.items() if k not in ("path", "label") and k is not None}
        records.append(
            ImageRecord(path=p if p.is_absolute() else base / p, label=(row.get("label") or "").strip() or None,
                        meta=meta)
        )
    return Dataset(source=manifest, kind="manifest", records=records, columns=columns)


def _hash_one(record: ImageRecord) -> None:
    if record.error is not None:
        return
    try:
        record.image_id = sha256_regular(record.path)  # FIFOs, sockets, devices are refused, never read
    except ImageDecodeError as exc:
        record.error = exc.reason
    except FileNotFoundError:
        record.error = "file not found: check the path in the manifest"
    except IsADirectoryError:
        record.error = "is a directory, not an image file"
    except PermissionError:
        record.error = "permission denied: make the file readable"


def _hash_records(records: Iterable[ImageRecord], workers: int) -> None:
    records = list(records)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(_hash_one, records))


def column(records: list[ImageRecord], name: str) -> np.ndarray:
    """A manifest column over records, as an object array ('' where absent)."""
    return np.array([r.get(name) for r in records], dtype=object)
