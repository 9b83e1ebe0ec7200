"""Reader of NIH ChestX-ray14 (Wang et al. 2017): ``Data_Entry_2017.csv`` plus image folders.

The index has one row per image: ``Image Index`` (``00001281_000.png``), ``Finding Labels``
(``No Finding`` or ``|``-joined findings), ``Follow-up #``, ``Patient ID`` (``1281``),
``Patient Age``, ``Patient Gender``, ``View Position``. The images come in twelve archives
(``images_001`` … ``images_012``); they are looked up in any subfolder.

The patient id is ``nih-`` plus the eight-digit, zero-padded Patient ID, which is also the
prefix of the file name (``00001281_000.png`` → ``nih-00001281``). Cohen's patient ids are
plain numbers too; the prefixes keep the two apart.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

from xrayfx.exceptions import DataError
from xrayfx.data.sources.rows import ReaderResult, age_group, label_slug, parse_age, read_csv_index

SOURCE = "nih"
#: Index file names tried in the source folder, newest layout last.
INDEX_NAMES: tuple[str, ...] = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
_REQUIRED = ("Image Index", "Finding Labels", "Patient ID")
_IMAGE_INDEX = re.compile(r"(?P<pid>\d{8})_\d{3}\.png", flags=re.IGNORECASE)


def nih_patient_id(value: str | int) -> str:
    """Manifest patient id from a Patient ID (``1281``, ``"00001281"``) or an Image Index (``00001281_000.png``).

    Returns ``nih-00001281``. Raises DataError for anything else.
    """
    text = str(value).strip()
    m = _IMAGE_INDEX.fullmatch(Path(text).name)
    if m is not None:
        return f"{SOURCE}-{m.group('pid')}"
    if text.isdigit() and len(text) <= 8:
        return f"{SOURCE}-{int(text):08d}"
    raise DataError(
        f"expected an NIH Patient ID (1 to 8 digits) or Image Index like 00001281_000.png, got {text!r}; "
        "fix: pass the value from Data_Entry_2017.csv unchanged"
    )


def nih_label(findings: str, keep_other: bool = False) -> str | None:
    """``normal`` for ``No Finding``; other findings give None, or when ``keep_other`` their slugs joined by ``+``.

    ``"Effusion|Infiltration"`` → ``"effusion+infiltration"``.
    """
    text = findings.strip()
    if text.lower() == "no finding":
        return "normal"
    if not keep_other or not text:
        return None
    return "+".join(label_slug(part) for part in text.split("|") if part.strip())


def find_nih_index(root: Path) -> Path:
    """The first of :data:`INDEX_NAMES` present in ``root``; DataError if none."""
    for name in INDEX_NAMES:
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"expected {' or '.join(INDEX_NAMES)} in {root}, got neither; "
        "fix: download Data_Entry_2017.csv from the NIH Box folder into that folder, or pass --index FILE"
    )


def _find_images(root: Path) -> tuple[dict[str, Path], list[str]]:
    """Map of PNG file name → path under ``root`` (sorted walk), and names found more than once."""
    found: dict[str, Path] = {}
    repeated: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(".png"):
                continue
            if name in found:
                repeated.append(name)
                continue
            found[name] = Path(dirpath) / name
    return found, repeated


def _read_split_lists(root: Path) -> dict[str, str]:
    """Image Index → ``train_val``/``test`` from the official ``train_val_list.txt``/``test_list.txt``."""
    split: dict[str, str] = {}
    for fname, name in (("train_val_list.txt", "train_val"), ("test_list.txt", "test")):
        path = root / fname
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    split[line.strip()] = name
    return split


def read_nih(root: str | Path, *, keep_other: bool = False, index: str | Path | None = None) -> ReaderResult:
    """Manifest rows of an NIH ChestX-ray14 folder.

    ``No Finding`` → ``normal``; other findings are dropped unless ``keep_other``
    (:func:`nih_label`). Images are found in any subfolder of ``root``; an index row whose
    image is absent goes to ``missing``. ``age_group`` from Patient Age (under 18 →
    ``pediatric``). Extra columns: sex, age, finding, follow_up, ``split`` (from the official
    list files when present) and ``original_file`` (the Image Index).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"expected the NIH ChestX-ray14 folder, got {root} (not a folder); "
            "fix: pass the folder holding Data_Entry_2017.csv and the images_* folders"
        )
    index_path = Path(index) if index is not None else find_nih_index(root)
    entries = read_csv_index(
        index_path, _REQUIRED, "NIH index",
        "use Data_Entry_2017.csv as published (columns Image Index, Finding Labels, Patient ID, …)",
    )
    images, repeated = _find_images(root)
    splits = _read_split_lists(root)
    result = ReaderResult(source=SOURCE)
    result.problems.extend(f"{name}: found in several folders, the first in sorted order is used"
                           for name in sorted(set(repeated)))
    dropped: Counter = Counter()
    for entry in entries:
        name = entry["Image Index"].strip()
        findings = entry["Finding Labels"].strip()
        label = nih_label(findings, keep_other)
        if label is None:
            dropped["finding other than No Finding" if findings else "finding (blank)"] += 1
            continue
        try:
            patient = nih_patient_id(entry["Patient ID"])
        except DataError:
            result.problems.append(f"{name}: Patient ID {entry['Patient ID']!r} is not a number, left out")
            continue
        m = _IMAGE_INDEX.fullmatch(name)
        if m is None or f"{SOURCE}-{m.group('pid')}" != patient:
            result.problems.append(
                f"{name}: Image Index does not start with the zero-padded Patient ID "
                f"{entry['Patient ID']!r}, left out"
            )
            continue
        image = images.get(name)
        if image is None:
            result.missing.append(name)
            continue
        age = entry.get("Patient Age", "").strip()
        years = parse_age(age)
        result.rows.append({
            "path": str(image.resolve()),
            "label": label,
            "patient_id": patient,
            "source": SOURCE,
            "view": entry.get("View Position", "").strip(),
            "age_group": age_group(age),
            "sex": (entry.get("Patient Gender") or entry.get("Patient Sex") or "").strip(),
            "age": "" if years is None else f"{years:g}",
            "finding": findings,
            "follow_up": entry.get("Follow-up #", "").strip(),
            "split": splits.get(name, ""),
            "original_file": name,
        })
    result.dropped = dict(dropped.most_common())
    return result
