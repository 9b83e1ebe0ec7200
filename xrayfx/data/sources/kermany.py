"""Reader of Kermany/Mooney "Chest X-Ray Images (Pneumonia)" (Kaggle paultimothymooney/chest-xray-pneumonia).

Layout: ``chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/<file>.jpeg``. The patient is in the
file name:

=============================  ==========================
file                           patient_id
=============================  ==========================
``IM-0115-0001.jpeg``          ``mooney-IM-0115``
``IM-0629-0001-0002.jpeg``     ``mooney-IM-0629``
``NORMAL2-IM-1427-0001.jpeg``  ``mooney-NORMAL2-IM-1427``
``person1_bacteria_1.jpeg``    ``mooney-person1``
``person1_virus_6.jpeg``       ``mooney-person1``
=============================  ==========================

All images are anterior-posterior radiographs of children aged one to five (Kermany et al. 2018).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from xrayfx.exceptions import DataError
from xrayfx.data.sources.rows import ReaderResult

SOURCE = "mooney"
SPLITS: tuple[str, ...] = ("train", "test", "val")
CLASS_LABELS: dict[str, str] = {"NORMAL": "normal", "PNEUMONIA": "pneumonia"}
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})

_IM = re.compile(r"(?P<pid>(?:NORMAL\d+-)?IM-\d+)(?:-\d+)+")
_PERSON = re.compile(r"(?P<pid>person\d+)_(?P<kind>bacteria|virus)_\d+")
_KIND = {"bacteria": "bacterial", "virus": "viral"}


def _stem(filename: str | Path) -> str:
    name = Path(str(filename)).name
    return name.rsplit(".", 1)[0] if "." in name else name


def kermany_patient_id(filename: str | Path) -> str:
    """Manifest patient id of a Kermany/Mooney image file name (see the module table).

    Raises DataError for a name that follows none of the known patterns.
    """
    stem = _stem(filename)
    m = _IM.fullmatch(stem) or _PERSON.fullmatch(stem)
    if m is None:
        raise DataError(
            f"expected a Kermany/Mooney file name like IM-0115-0001.jpeg, NORMAL2-IM-1427-0001.jpeg "
            f"or person1_bacteria_1.jpeg, got {Path(str(filename)).name!r}; "
            "fix: keep the file names of the published set (renamed files lose their patient)"
        )
    return f"{SOURCE}-{m.group('pid')}"


def kermany_pneumonia_type(filename: str | Path) -> str:
    """``bacterial`` or ``viral`` from a ``personN_bacteria_M`` / ``personN_virus_M`` name, else ``""``."""
    m = _PERSON.fullmatch(_stem(filename))
    return _KIND[m.group("kind")] if m else ""


def find_kermany_base(root: str | Path) -> Path:
    """The folder holding ``train``/``test``/``val``.

    Tried in order: ``root``, ``root/chest_xray``, ``root/chest_xray/chest_xray`` (the Kaggle archive
    holds a second copy there; taking the first found avoids counting images twice).
    """
    root = Path(root)
    for cand in (root, root / "chest_xray", root / "chest_xray" / "chest_xray"):
        if any((cand / s).is_dir() for s in SPLITS):
            return cand
    raise DataError(
        f"expected a Kermany/Mooney folder with train/, test/ or val/ (each with NORMAL/ and "
        f"PNEUMONIA/) in {root} or {root / 'chest_xray'}, got none; "
        "fix: unzip chest-xray-pneumonia.zip and pass the folder it made"
    )


def read_kermany(root: str | Path) -> ReaderResult:
    """Manifest rows of the Kermany/Mooney set.

    Label from the class folder (NORMAL → ``normal``, PNEUMONIA → ``pneumonia``), patient from
    the file name (:func:`kermany_patient_id`), view ``AP``, age group ``pediatric``. Extra
    columns: ``pneumonia_type`` (``bacterial``/``viral``/blank), ``split`` (the original
    train/test/val folder) and ``original_file`` (``<split>/<CLASS>/<name>``). Hidden files
    (macOS ``._*``, ``.DS_Store``) and non-image files are skipped and counted in ``dropped``;
    names with an unknown pattern are listed in ``problems`` and left out.
    """
    base = find_kermany_base(root)
    result = ReaderResult(source=SOURCE)
    dropped: Counter = Counter()
    for split in SPLITS:
        split_dir = base / split
        if not split_dir.is_dir():
            continue
        for cls, label in CLASS_LABELS.items():
            cls_dir = split_dir / cls
            if not cls_dir.is_dir():
                continue
            for image in sorted(cls_dir.iterdir()):
                name = image.name
                if name.startswith(".") or not image.is_file():
                    dropped["hidden file or folder"] += 1
                    continue
                if image.suffix.lower() not in IMAGE_SUFFIXES:
                    dropped["not an image file"] += 1
                    continue
                try:
                    patient = kermany_patient_id(name)
                except DataError:
                    result.problems.append(f"{split}/{cls}/{name}: unknown file-name pattern, left out")
                    continue
                result.rows.append({
                    "path": str(image.resolve()),
                    "label": label,
                    "patient_id": patient,
                    "source": SOURCE,
                    "view": "AP",
                    "age_group": "pediatric",
                    "pneumonia_type": kermany_pneumonia_type(name) if label == "pneumonia" else "",
                    "split": split,
                    "original_file": f"{split}/{cls}/{name}",
                })
    if not result.rows and not result.problems:
        raise DataError(
            f"expected images in {base}/{{train,test,val}}/{{NORMAL,PNEUMONIA}}, got none; "
            "fix: check that the archive was fully unzipped"
        )
    result.dropped = dict(dropped.most_common())
    return result
