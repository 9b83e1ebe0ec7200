"""Which evaluation images overlap the data a run was trained and validated on, and why.

:func:`find_overlap` returns, per evaluation row, ``""`` or the reason it
overlaps the run's training + validation rows. Each reason comes from one
check, a function ``(evaluation side, training side) -> {row: reason}``:

* :func:`same_bytes` — the same file bytes (image id = sha256 of the bytes);
* :func:`same_patient` — the same (non-blank) patient id;
* :func:`near_duplicate` — the same radiograph resized, re-encoded or with its
  contrast changed: perceptual hashes (:mod:`xrayfx.data.neardup`) within
  :data:`~xrayfx.data.neardup.DEFAULT_MAX_DISTANCE` bits.

A further check plugs in by adding one function to :data:`CHECKS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from xrayfx.data.neardup import near_duplicate_pairs
from xrayfx.study.groups import original_patient_ids


@dataclass(frozen=True)
class Side:
    """Rows of one side: image ids (sha256), patient ids ('' when unknown; merged split ids such as
    ``a+b`` stand for each of their patients), paths ('' when unknown) and perceptual hashes (None
    when not computed)."""

    image_id: np.ndarray
    patient_id: np.ndarray
    path: np.ndarray
    hashes: np.ndarray | None = None

    @classmethod
    def of(cls, image_id: list[str], patient_id: list[str], path: list[str] | None = None,
           hashes: np.ndarray | None = None) -> "Side":
        """Build a side from lists (``path`` defaults to blanks)."""
        n = len(image_id)
        return cls(np.asarray(image_id, dtype=object), np.asarray(patient_id, dtype=object),
                   np.asarray(path if path is not None else [""] * n, dtype=object),
                   None if hashes is None else np.asarray(hashes, dtype=np.uint64))


Check = Callable[[Side, Side], dict[int, str]]


def same_bytes(ev: Side, train: Side) -> dict[int, str]:
    """Rows whose file bytes equal a training/validation image's."""
    seen = set(train.image_id.tolist())
    return {i: "same bytes as a training/validation image" for i, v in enumerate(ev.image_id) if v in seen}


def same_patient(ev: Side, train: Side) -> dict[int, str]:
    """Rows whose patient id is a training/validation patient's."""
    seen = {one for p in train.patient_id.tolist() if p for one in original_patient_ids(p)}
    return {i: f"patient {p} is in the training/validation data" for i, p in enumerate(ev.patient_id)
            if p and p in seen}


def near_duplicate(ev: Side, train: Side) -> dict[int, str]:
    """Rows whose perceptual hash is within the near-duplicate distance of a training/validation image's."""
    if ev.hashes is None or train.hashes is None or not len(ev.hashes) or not len(train.hashes):
        return {}
    out: dict[int, str] = {}
    for i, j, d in sorted(near_duplicate_pairs(ev.hashes, train.hashes), key=lambda t: t[2]):
        if ev.image_id[i] == train.image_id[j]:
            continue  # same bytes: said by same_bytes
        who = train.path[j] or f"image {str(train.image_id[j])[:12]}"
        out.setdefault(int(i), f"near-duplicate of training/validation {who} (distance {d} bits)")
    return out


CHECKS: tuple[Check, ...] = (same_bytes, same_patient, near_duplicate)


def find_overlap(ev: Side, train: Side, checks: tuple[Check, ...] = CHECKS) -> list[str]:
    """Per evaluation row, ``""`` or the reasons (joined by "; ") it overlaps the training side."""
    reasons: list[list[str]] = [[] for _ in range(len(ev.image_id))]
    for check in checks:
        for i, why in check(ev, train).items():
            reasons[i].append(why)
    return ["; ".join(r) for r in reasons]
