"""Reader of the COVID-19 image data collection (Cohen, Morrison, Dao; ieee8023/covid-chestxray-dataset).

The repository holds ``metadata.csv`` (one row per image: ``patientid``, ``finding``, ``view``,
``modality``, ``folder``, ``filename``, ``sex``, ``age`` …) and the images in ``images/``
(CT volumes in ``volumes/``). A patient has up to eight images, so ``patient_id`` matters.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from xrayfx.exceptions import DataError, UsageError
from xrayfx.data.sources.rows import ReaderResult, age_group, label_slug, read_csv_index

SOURCE = "cohen"
#: Views kept by default: the frontal ones.
COHEN_FRONTAL_VIEWS: tuple[str, ...] = ("PA", "AP", "AP Supine")
_REQUIRED = ("patientid", "finding", "view", "modality", "filename")
#: Metadata columns copied into the manifest (manifest name ← metadata name).
_EXTRA = (("sex", "sex"), ("age", "age"), ("finding", "finding"), ("offset", "offset"),
          ("date", "date"), ("license", "license"), ("doi", "doi"), ("url", "url"))
_UNLABELLED = {"", "todo"}


def cohen_patient_id(patientid: str | int) -> str:
    """Manifest patient id of a ``metadata.csv`` ``patientid``: ``cohen-<patientid>``."""
    text = str(patientid).strip()
    if not text:
        raise DataError(
            "expected a non-empty Cohen patientid, got ''; "
            "fix: the metadata row is incomplete, correct it or remove it"
        )
    return f"{SOURCE}-{text}"


def is_covid_finding(finding: str) -> bool:
    """True when one part of the finding (split at ``/`` and ``,``) is COVID-19.

    Covers ``"COVID-19"``, ``"COVID-19, ARDS"`` and later versions' ``"Pneumonia/Viral/COVID-19"``.
    """
    return any(part.strip().lower() == "covid-19" for part in re.split(r"[/,]", finding))


def cohen_label(finding: str, keep_other: bool = False) -> str | None:
    """``covid``, ``normal`` (for "No Finding"), the finding's slug when ``keep_other``, else None.

    Unlabelled rows (finding blank or ``todo``) give None even with ``keep_other``.
    """
    text = finding.strip()
    if is_covid_finding(text):
        return "covid"
    if text.lower() == "no finding":
        return "normal"
    if keep_other and text.lower() not in _UNLABELLED:
        return label_slug(text)
    return None


def _normalise_views(views: Iterable[str]) -> dict[str, str]:
    out = {v.strip().lower(): v.strip() for v in views if v.strip()}
    if not out:
        raise UsageError(
            f"expected at least one view, got {list(views)!r}; "
            f"fix: pass views such as {', '.join(COHEN_FRONTAL_VIEWS)}"
        )
    return out


def read_cohen(
    root: str | Path,
    *,
    metadata: str | Path | None = None,
    views: Iterable[str] = COHEN_FRONTAL_VIEWS,
    keep_other: bool = False,
) -> ReaderResult:
    """Manifest rows of a Cohen repository checkout.

    Keeps rows of ``metadata.csv`` (or ``metadata``) with modality ``X-ray``, folder ``images``
    and a view in ``views`` (compared without regard to case). Labels: a finding with a
    COVID-19 part → ``covid``; ``No Finding`` → ``normal``; other findings are dropped unless
    ``keep_other`` (then labelled by :func:`xrayfx.data.sources.rows.label_slug` of the finding);
    unlabelled rows (``todo``) are always dropped. A kept row whose image is not at
    ``root/<folder>/<filename>`` goes to ``missing``, not to ``rows``.

    Extra columns: sex, age, finding, offset, date, license, doi, url and ``original_file``
    (``images/<filename>``). ``age_group`` is ``unknown`` where the metadata gives no age.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"expected the folder of a covid-chestxray-dataset checkout, got {root} (not a folder); "
            "fix: git clone https://github.com/ieee8023/covid-chestxray-dataset and pass its folder"
        )
    meta = Path(metadata) if metadata is not None else root / "metadata.csv"
    entries = read_csv_index(
        meta, _REQUIRED, "Cohen metadata",
        "pass the repository folder that holds metadata.csv, or --metadata FILE",
    )
    wanted = _normalise_views(views)
    result = ReaderResult(source=SOURCE)
    dropped: Counter = Counter()
    for entry in entries:
        modality = entry["modality"].strip()
        folder = entry.get("folder", "").strip() or "images"
        view = entry["view"].strip()
        if modality.lower() != "x-ray":
            dropped[f"modality {modality or '(blank)'}"] += 1
            continue
        if folder != "images":
            dropped[f"folder {folder}"] += 1
            continue
        if view.lower() not in wanted:
            dropped[f"view {view or '(blank)'}"] += 1
            continue
        finding = entry["finding"].strip()
        label = cohen_label(finding, keep_other)
        if label is None:
            reason = "not labelled" if finding.lower() in _UNLABELLED else "other finding"
            dropped[f"finding {finding or '(blank)'} ({reason})"] += 1
            continue
        filename = entry["filename"].strip()
        try:
            patient = cohen_patient_id(entry["patientid"])
        except DataError:
            result.problems.append(f"{filename}: blank patientid, left out")
            continue
        image = root / folder / filename
        original = f"{folder}/{filename}"
        if not filename or not image.is_file():
            result.missing.append(original)
            continue
        row = {
            "path": str(image.resolve()),
            "label": label,
            "patient_id": patient,
            "source": SOURCE,
            "view": view,
            "age_group": age_group(entry.get("age")),
        }
        for out_col, meta_col in _EXTRA:
            row[out_col] = entry.get(meta_col, "").strip()
        row["original_file"] = original
        result.rows.append(row)
    result.dropped = dict(dropped.most_common())
    return result
