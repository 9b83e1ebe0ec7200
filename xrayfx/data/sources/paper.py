"""The paper's data set (Cuijpers et al. 2020): 140 COVID-19 + 939 normal radiographs, drawn reproducibly.

Selection rule, the same for every platform and Python version (no random-number generator
is involved):

1. Every patient gets a rank: the sha256 of ``"<seed>:<patient_id>"`` (rows without a
   patient id are their own patient, keyed by path). Sorting by rank is a seeded shuffle.
2. COVID images (label ``covid``) are ordered by (view priority, patient rank, path) with
   priority PA < AP < AP Supine < any other view, and the first ``n_covid`` are taken. So
   every PA image is taken before any AP image, every AP image before any AP Supine one,
   and within a view whole patients are taken one after another (only the last patient
   drawn may be cut short).
3. Normal images (label ``normal``) from the chosen source(s) are ordered by (patient rank,
   path) and the first ``n_normal`` are taken: whole patients, the last perhaps cut short.
   Without ``n_normal`` the paper's 939 are drawn from kermany, and every available normal
   from nih or nih+cohen (which hold fewer than 939 in ../shared).

Normal sources: ``kermany`` (alias ``mooney``; the paper's, children), ``nih`` (adults),
``nih+cohen`` (adults: an age-matched control that still differs in source).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from xrayfx.exceptions import DataError, UsageError
from xrayfx.data.sources.rows import Row

PAPER_N_COVID = 140
PAPER_N_NORMAL = 939
#: Normal-source choice → manifest ``source`` values it draws from.
NORMAL_SOURCES: dict[str, tuple[str, ...]] = {
    "kermany": ("mooney",),
    "mooney": ("mooney",),
    "nih": ("nih",),
    "nih+cohen": ("nih", "cohen"),
}
#: COVID view order: lower first.
VIEW_PRIORITY: dict[str, int] = {"PA": 0, "AP": 1, "AP Supine": 2}


@dataclass
class PaperComposition:
    """The drawn data set: ``rows`` = ``covid`` followed by ``normal``, plus what was available."""

    covid: list[Row]
    normal: list[Row]
    seed: int
    normal_source: str
    available_covid: int
    available_normal: int
    rows: list[Row] = field(init=False)

    def __post_init__(self) -> None:
        self.rows = [*self.covid, *self.normal]


def patient_key(row: Row) -> str:
    """The row's patient id, or its path when it has none (then each image is its own patient)."""
    return row.get("patient_id") or f"path:{row['path']}"


def patient_rank(patient: str, seed: int) -> str:
    """Seeded, platform-independent sort key of a patient: hex sha256 of ``"<seed>:<patient>"``."""
    return hashlib.sha256(f"{seed}:{patient}".encode()).hexdigest()


def view_priority(view: str) -> tuple[int, str]:
    """Sort key of a view: PA, AP, AP Supine, then other views alphabetically."""
    v = view.strip()
    return (VIEW_PRIORITY.get(v, len(VIEW_PRIORITY)), v if v not in VIEW_PRIORITY else "")


def normal_sources(choice: str) -> tuple[str, ...]:
    """Source values of a ``--normal-source`` choice; UsageError for an unknown one."""
    key = choice.strip().lower()
    if key not in NORMAL_SOURCES:
        raise UsageError(
            f"expected --normal-source to be one of {', '.join(NORMAL_SOURCES)}, got {choice!r}; "
            "fix: use kermany for the paper's (pediatric) normals or nih+cohen for adult ones"
        )
    return NORMAL_SOURCES[key]


def _check_count(name: str, requested: int, available: int, what: str, fix: str) -> None:
    if requested < 0:
        raise UsageError(f"expected {name} ≥ 0, got {requested}; fix: pass a non-negative count")
    if requested > available:
        raise DataError(
            f"expected at least {requested} {what} for {name} {requested}, got {available} available; "
            f"fix: lower {name} to at most {available} or {fix}"
        )


def select_covid(rows: list[Row], n: int, seed: int) -> list[Row]:
    """``n`` rows labelled ``covid``, PA first, patient by patient (module docstring, rule 2)."""
    candidates = [r for r in rows if r.get("label") == "covid"]
    _check_count("--n-covid", n, len(candidates), "COVID images", "add COVID images to the input")
    candidates.sort(key=lambda r: (view_priority(r.get("view", "")),
                                   patient_rank(patient_key(r), seed), r["path"]))
    return candidates[:n]


def default_n_normal(normal_source: str) -> int | None:
    """How many normals to draw when none is asked for: the paper's 939 from its own source
    (kermany/mooney), every available one (None) from the adult controls nih and nih+cohen."""
    return PAPER_N_NORMAL if normal_sources(normal_source) == ("mooney",) else None


def select_normal(rows: list[Row], n: int | None, seed: int, sources: tuple[str, ...]) -> list[Row]:
    """``n`` rows labelled ``normal`` from ``sources``, patient by patient (module docstring, rule 3).

    ``n=None`` takes every one of them (DataError when there are none).
    """
    candidates = [r for r in rows if r.get("label") == "normal" and r.get("source") in sources]
    if n is None:
        if not candidates:
            raise DataError(
                f"expected normal images from {'+'.join(sources)}, got none in the input; "
                "fix: choose another --normal-source or add its data"
            )
        n = len(candidates)
    _check_count("--n-normal", n, len(candidates), f"normal images from {'+'.join(sources)}",
                 "choose another --normal-source or add its data")
    candidates.sort(key=lambda r: (patient_rank(patient_key(r), seed), r["path"]))
    return candidates[:n]


def compose_paper(
    rows: list[Row],
    *,
    n_covid: int = PAPER_N_COVID,
    n_normal: int | None = PAPER_N_NORMAL,
    normal_source: str = "kermany",
    seed: int = 0,
) -> PaperComposition:
    """Draw the paper's composition from manifest rows (see the module docstring for the rule).

    ``n_normal=None`` takes every available normal of the source (:func:`default_n_normal`).
    Raises UsageError for an unknown ``normal_source`` and DataError when fewer images are
    available than requested (the message gives both numbers).
    """
    sources = normal_sources(normal_source)
    covid = select_covid(rows, n_covid, seed)
    normal = select_normal(rows, n_normal, seed, sources)
    return PaperComposition(
        covid=covid,
        normal=normal,
        seed=seed,
        normal_source=normal_source.strip().lower(),
        available_covid=sum(r.get("label") == "covid" for r in rows),
        available_normal=sum(r.get("label") == "normal" and r.get("source") in sources for r in rows),
    )


def composition_counts(rows: list[Row]) -> dict[str, Counter]:
    """Counts for a summary: ``label``, ``label_source``, ``label_view``, ``label_age_group``
    (tuple keys), and ``patients`` (distinct patients per label)."""
    patients: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        patients[r.get("label", "")].add(patient_key(r))
    return {
        "label": Counter(r.get("label", "") for r in rows),
        "label_source": Counter((r.get("label", ""), r.get("source", "")) for r in rows),
        "label_view": Counter((r.get("label", ""), r.get("view", "")) for r in rows),
        "label_age_group": Counter((r.get("label", ""), r.get("age_group", "")) for r in rows),
        "patients": Counter({label: len(p) for label, p in patients.items()}),
    }


def confounding_warnings(rows: list[Row]) -> list[str]:
    """Sentences naming where class coincides with source or age group in ``rows``.

    When the classes' sources (or age groups) do not overlap at all, a classifier can separate
    them by source (or age) alone; when one source occurs in a single class only, that source
    is a partial shortcut. Empty when there is one class or no such pattern.
    """
    labels = sorted({r.get("label", "") for r in rows})
    if len(labels) < 2:
        return []
    out: list[str] = []
    coincide: list[str] = []
    for column in ("source", "age_group"):
        values: dict[str, Counter] = {lab: Counter() for lab in labels}
        for r in rows:
            values[r.get("label", "")][r.get(column, "")] += 1
        sets = [set(v) for v in values.values()]
        disjoint = all(a.isdisjoint(b) for i, a in enumerate(sets) for b in sets[i + 1:])
        if disjoint:
            coincide.append(column.replace("_", " "))
            continue
        for lab in labels:
            for value, n in sorted(values[lab].items()):
                if all(value not in values[other] for other in labels if other != lab):
                    out.append(
                        f"{column.replace('_', ' ')} {value or '(blank)'} occurs only in class {lab} "
                        f"({n} of {sum(values[lab].values())} {lab} images): a partial shortcut"
                    )
    if coincide:
        detail = "; ".join(
            f"{lab} = " + " ".join(
                "/".join(sorted({r.get(c, '') for r in rows if r.get('label', '') == lab}))
                for c in ("source", "age_group")
            )
            for lab in labels
        )
        names = ["class", *coincide]
        phrase = ", ".join(names[:-1]) + " and " + names[-1]
        out.insert(0, (
            f"{phrase} coincide ({detail}): a classifier can score well "
            f"by recognising the {' or '.join(coincide)} instead of the disease; report results per "
            "source and run the shortcut audit, or use an adult control (--normal-source nih+cohen)"
        ))
    return out
