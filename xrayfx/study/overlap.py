"""Which evaluation images overlap the data a run was trained and validated on, and why.

:func:`find_overlap` returns, per evaluation row, ``""`` or the reason it
overlaps the run's training + validation rows. Each reason comes from one
check, a function ``(evaluation side, training side) -> {row: reason}``:

* :func:`same_bytes` — the same file bytes (image id = sha256 of the bytes);
* :func:`same_patient` — the same (non-blank) patient id;
* :func:`near_duplicate` — the same radiograph resized, re-encoded or with its
  contrast changed, through :mod:`xrayfx.data.neardup` (perceptual hashes) when
  that module is installed; without it the check finds nothing and says so.

A further check plugs in by adding one function to :data:`CHECKS`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Side:
    """Rows of one side: image ids (sha256), patient ids ('' when unknown) and paths ('' when unknown)."""

    image_id: np.ndarray
    patient_id: np.ndarray
    path: np.ndarray

    @classmethod
    def of(cls, image_id: list[str], patient_id: list[str], path: list[str] | None = None) -> "Side":
        """Build a side from lists (``path`` defaults to blanks)."""
        n = len(image_id)
        return cls(np.asarray(image_id, dtype=object), np.asarray(patient_id, dtype=object),
                   np.asarray(path if path is not None else [""] * n, dtype=object))


Check = Callable[[Side, Side], dict[int, str]]


def neardup_available() -> bool:
    """True when :mod:`xrayfx.data.neardup` (the near-duplicate finder) is installed."""
    try:
        return importlib.util.find_spec("xrayfx.data.neardup") is not None
    except ModuleNotFoundError:  # no xrayfx.data package at all
        return False


def same_bytes(ev: Side, train: Side) -> dict[int, str]:
    """Rows whose file bytes equal a training/validation image's."""
    seen = set(train.image_id.tolist())
    return {i: "same bytes as a training/validation image" for i, v in enumerate(ev.image_id) if v in seen}


def same_patient(ev: Side, train: Side) -> dict[int, str]:
    """Rows whose patient id is a training/validation patient's."""
    seen = {p for p in train.patient_id.tolist() if p}
    return {i: f"patient {p} is in the training/validation data" for i, p in enumerate(ev.patient_id)
            if p and p in seen}


def near_duplicate(ev: Side, train: Side) -> dict[int, str]:
    """Rows that look like a training/validation image (xrayfx.data.neardup), if that module is present."""
    if not neardup_available() or not len(ev.path) or not len(train.path):
        return {}
    from xrayfx.data.neardup import near_duplicate_pairs, perceptual_hashes

    known = np.array([bool(p) for p in train.path])
    if not known.any():
        return {}
    train_paths = train.path[known]
    pairs = near_duplicate_pairs(perceptual_hashes(list(ev.path)), perceptual_hashes(list(train_paths)))
    out: dict[int, str] = {}
    for i, j, d in sorted(pairs, key=lambda t: t[2]):
        out.setdefault(int(i), f"near-duplicate of training/validation image {train_paths[int(j)]} (distance {d})")
    return out


CHECKS: tuple[Check, ...] = (same_bytes, same_patient, near_duplicate)


def find_overlap(ev: Side, train: Side, checks: tuple[Check, ...] = CHECKS) -> list[str]:
    """Per evaluation row, ``""`` or the reasons (joined by "; ") it overlaps the training side."""
    reasons: list[list[str]] = [[] for _ in range(len(ev.image_id))]
    for check in checks:
        for i, why in check(ev, train).items():
            reasons[i].append(why)
    return ["; ".join(r) for r in reasons]
