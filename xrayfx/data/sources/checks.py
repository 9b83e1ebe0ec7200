"""Checks on manifest rows: identical files under several names, patients with several labels."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass

from xrayfx.data.sources.rows import Row
from xrayfx.util import sha256_file


@dataclass(frozen=True)
class DuplicateGroup:
    """Rows whose files have the same bytes (sha256), or the same path listed more than once."""

    sha256: str
    paths: tuple[str, ...]
    sources: tuple[str, ...]
    patient_ids: tuple[str, ...]
    labels: tuple[str, ...]

    @property
    def cross_source(self) -> bool:
        """True when the copies come from more than one source."""
        return len(set(self.sources)) > 1

    @property
    def repeated_path(self) -> bool:
        """True when one path is listed more than once (rather than two names with the same bytes)."""
        return len(set(self.paths)) < len(self.paths)


@dataclass(frozen=True)
class LabelConflict:
    """A patient whose images carry more than one label; ``labels`` holds (label, image count)."""

    patient_id: str
    labels: tuple[tuple[str, int], ...]


def find_duplicate_files(rows: list[Row]) -> list[DuplicateGroup]:
    """Groups of rows whose files are byte-identical, largest group first.

    Only files of equal size are hashed, so the check costs little when there are no
    duplicates. Rows whose file does not exist are skipped (readers list those as missing).
    Paths are taken as they are (absolute, or relative to the current folder).
    """
    by_size: dict[int, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        try:
            by_size[os.path.getsize(row["path"])].append(i)
        except OSError:
            continue
    digests: dict[str, str] = {}
    by_hash: dict[str, list[int]] = defaultdict(list)
    for members in by_size.values():
        if len(members) < 2:
            continue
        for i in members:
            path = os.path.abspath(rows[i]["path"])
            if path not in digests:
                digests[path] = sha256_file(path)
            by_hash[digests[path]].append(i)
    groups = [
        DuplicateGroup(
            sha256=digest,
            paths=tuple(rows[i]["path"] for i in members),
            sources=tuple(rows[i].get("source", "") for i in members),
            patient_ids=tuple(rows[i].get("patient_id", "") for i in members),
            labels=tuple(rows[i].get("label", "") for i in members),
        )
        for digest, members in by_hash.items()
        if len(members) > 1
    ]
    return sorted(groups, key=lambda g: (-len(g.paths), g.paths))


def find_label_conflicts(rows: list[Row]) -> list[LabelConflict]:
    """Patients (by ``patient_id``) whose images carry different labels, sorted by patient id.

    Rows without a patient id are ignored.
    """
    labels: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        pid = row.get("patient_id", "")
        if pid:
            labels[pid][row.get("label", "")] += 1
    return [
        LabelConflict(patient_id=pid, labels=tuple(sorted(counts.items())))
        for pid, counts in sorted(labels.items())
        if len(counts) > 1
    ]
