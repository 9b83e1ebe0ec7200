"""Split groups that follow the pixels: near-duplicates under different patient ids become one group.

A split keeps every image of one patient on one side (:func:`xrayfx.study.splits.group_codes`).
That trusts the patient ids; collections are assembled from other collections, and the
same radiograph can arrive twice under two ids (in ../shared, cohen-97 and cohen-178 hold
four identical radiographs). Before fit-head makes a split it hashes every image
(:mod:`xrayfx.data.neardup`), finds near-duplicate pairs whose rows are not already one
group, and merges those groups: each row of a merged group gets the patient id
``<id1>+<id2>…`` (:data:`MERGED_ID_SEPARATOR`; the sorted distinct ids of the group, or
the rows' image ids when none has a patient id), so the split, its leakage check and
``split.csv`` all see one group. The run keeps the evidence:

* ``image_hashes.csv`` — ``image_id,phash`` for every row, so ``evaluate`` can compare new
  images with the training rows without decoding them again;
* ``near_duplicates.csv`` — one line per linked pair (image and patient ids, distance, merged id).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from xrayfx.data.neardup import (
    hash_cache_path,
    image_hashes_csv,
    near_duplicate_pairs,
    perceptual_hashes,
)
from xrayfx.csvsafe import csv_text
from xrayfx.exceptions import UsageError
from xrayfx.study.splits import group_codes

__all__ = [
    "IMAGE_HASHES_FILE",
    "MERGED_ID_SEPARATOR",
    "NEAR_DUPLICATES_FILE",
    "NearDuplicateLink",
    "NearDuplicates",
    "cross_group_pairs",
    "link_near_duplicates",
    "merge_linked_groups",
    "original_patient_ids",
]

IMAGE_HASHES_FILE = "image_hashes.csv"
#: A chain of near-duplicate links joining more patients than this is not merged (see merge_linked_groups).
MAX_MERGED_PATIENTS = 4
NEAR_DUPLICATES_FILE = "near_duplicates.csv"
#: Joins the patient ids of a merged group (``cohen-178+cohen-97``).
MERGED_ID_SEPARATOR = "+"
_SHOWN = 5  # linked pairs named in the log
Ids = Sequence[str] | np.ndarray


@dataclass(frozen=True)
class NearDuplicateLink:
    """Two rows whose images are near-duplicates but which were in different split groups."""

    row_a: int
    row_b: int
    distance: int


@dataclass(frozen=True)
class NearDuplicates:
    """What fit-head found: hashes per row, cross-group links, and the patient ids to split by."""

    image_ids: np.ndarray
    patient_ids: np.ndarray  # as given
    hashes: np.ndarray
    links: tuple[NearDuplicateLink, ...]
    split_ids: np.ndarray  # patient ids with linked groups merged

    def messages(self, merged: bool = True) -> list[str]:
        """Lines for fit-head's log: how many pairs, which patient ids, what was done."""
        if not self.links:
            return []
        shown = [
            f"{_label(self.patient_ids[k.row_a], self.image_ids[k.row_a])} ~ "
            f"{_label(self.patient_ids[k.row_b], self.image_ids[k.row_b])} (distance {k.distance})"
            for k in self.links[:_SHOWN]
        ]
        more = f" … ({len(self.links)} in all)" if len(self.links) > _SHOWN else ""
        joined = [k for k in self.links if self.split_ids[k.row_a] == self.split_ids[k.row_b]]
        n_groups = len({self.split_ids[k.row_a] for k in joined})
        if not merged:
            action = "left where the --split file puts them"
        elif len(joined) == len(self.links):
            action = f"merged into {n_groups} split group(s)"
        elif joined:
            action = f"{len(joined)} of them merged into {n_groups} split group(s)"
        else:
            action = "none merged"
        lines = [f"near-duplicates: {len(self.links)} image pair(s) under different patient ids, {action}: "
                 f"{'; '.join(shown)}{more}. See {NEAR_DUPLICATES_FILE} in the run."]
        if merged and len(joined) < len(self.links):
            lines.append(
                f"near-duplicates: {len(self.links) - len(joined)} pair(s) were NOT merged: they chain more "
                f"than {MAX_MERGED_PATIENTS} patients together, which copies of one radiograph do not; these images "
                "only look alike (synthetic or heavily standardised data). Check them in "
                f"{NEAR_DUPLICATES_FILE}; give copies one patient_id to keep them together."
            )
        return lines

    def near_duplicates_csv(self) -> str:
        """CSV text of the links (``near_duplicates.csv``)."""
        return csv_text(
            ["image_id_a", "patient_id_a", "image_id_b", "patient_id_b", "distance", "split_group"],
            [[self.image_ids[k.row_a], self.patient_ids[k.row_a], self.image_ids[k.row_b],
              self.patient_ids[k.row_b], k.distance, self.split_ids[k.row_a]] for k in self.links],
        )

    def write(self, writer: Any) -> None:
        """Write ``image_hashes.csv`` and ``near_duplicates.csv`` through a :class:`xrayfx.study.runs.RunWriter`."""
        writer.write_text(IMAGE_HASHES_FILE, image_hashes_csv(list(self.image_ids), self.hashes))
        writer.write_text(NEAR_DUPLICATES_FILE, self.near_duplicates_csv())


def _label(patient_id: str, image_id: str) -> str:
    return patient_id if patient_id else f"image {image_id[:12]}"


def cross_group_pairs(
    image_ids: Ids, patient_ids: Ids, hashes: np.ndarray, max_distance: int | None = None
) -> list[NearDuplicateLink]:
    """Near-duplicate pairs of rows that :func:`xrayfx.study.splits.group_codes` puts in different groups."""
    image = np.asarray(image_ids).astype(str)
    patient = np.asarray(patient_ids).astype(str)
    if not len(image) == len(patient) == len(hashes):
        raise UsageError(
            f"Expected one image id, patient id and hash per row; got {len(image)}, {len(patient)} and "
            f"{len(hashes)}."
        )
    groups = group_codes(image, patient)
    return [
        NearDuplicateLink(i, j, d)
        for i, j, d in near_duplicate_pairs(hashes, max_distance=max_distance)
        if groups[i] != groups[j]
    ]


def merge_linked_groups(
    image_ids: Ids, patient_ids: Ids, links: Sequence[tuple[int, int]], max_patients: int | None = None
) -> np.ndarray:
    """Patient ids to split by: the groups joined by ``links`` (row pairs) share one merged id.

    Rows outside any link, and groups no link touches, keep their patient id. A
    merged group's id is its sorted distinct patient ids joined by
    :data:`MERGED_ID_SEPARATOR`; rows without one contribute their image id.
    A chain of links joining more than ``max_patients`` (default
    :data:`MAX_MERGED_PATIENTS`) patients is not merged: copies of one radiograph
    link a few patient ids, while a long chain means images that merely look
    alike (synthetic or heavily standardised ones), and merging it would swallow
    the split.
    """
    limit = MAX_MERGED_PATIENTS if max_patients is None else int(max_patients)
    image = np.asarray(image_ids).astype(str)
    patient = np.asarray(patient_ids).astype(str)
    n = len(image)
    if len(patient) != n:
        raise UsageError(f"Expected one patient id per image id ({n}); got {len(patient)}.")
    out = patient.astype(object)
    pairs = np.asarray([(int(a), int(b)) for a, b in links], dtype=np.int64).reshape(-1, 2)
    if pairs.size == 0:
        return out.astype(str)
    if pairs.min() < 0 or pairs.max() >= n:
        raise UsageError(f"Expected link rows between 0 and {n - 1}; got {pairs.min()}..{pairs.max()}.")
    base = group_codes(image, patient)
    n_groups = int(base.max()) + 1
    graph = coo_matrix(
        (np.ones(len(pairs), dtype=np.int8), (base[pairs[:, 0]], base[pairs[:, 1]])), shape=(n_groups, n_groups)
    )
    _, merged = connected_components(graph, directed=False)
    comp = merged[base]
    linked = np.unique(merged[base[pairs.ravel()]])
    for c in linked:
        rows = np.flatnonzero(comp == c)
        names = sorted({patient[r] if patient[r] else image[r] for r in rows})
        if 1 < len(names) <= limit:
            out[rows] = MERGED_ID_SEPARATOR.join(names)
    return out.astype(str)


def original_patient_ids(split_id: str) -> list[str]:
    """The patient (or image) ids a split id stands for: ``"a+b"`` -> ``["a", "b"]``."""
    return [p for p in str(split_id).split(MERGED_ID_SEPARATOR) if p]


def link_near_duplicates(
    paths: Sequence[str | Path] | np.ndarray,
    image_ids: Ids,
    patient_ids: Ids,
    *,
    cache_dir: str | Path,
    max_distance: int | None = None,
    log: Callable[[str], None] | None = None,
    merge: bool = True,
) -> NearDuplicates:
    """Hash every row (cached by image sha256 under ``cache_dir``), link near-duplicates across groups.

    ``image_ids`` must be the sha256 of each file's bytes (xrayfx's image ids).
    With ``merge`` the returned ``split_ids`` merge the linked groups; without it
    they are the patient ids unchanged (a ``--split`` file already fixes the parts).
    Each finding is passed to ``log``.
    """
    image = np.asarray(image_ids).astype(str)
    patient = np.asarray(patient_ids).astype(str)
    hashes = perceptual_hashes(list(paths), sha256s=list(image), cache_file=hash_cache_path(cache_dir))
    links = tuple(cross_group_pairs(image, patient, hashes, max_distance))
    split_ids = merge_linked_groups(image, patient, [(k.row_a, k.row_b) for k in links]) if merge else patient
    found = NearDuplicates(image, patient, hashes, links, split_ids)
    for line in found.messages(merged=merge):
        if log is not None:
            log(line)
    return found
