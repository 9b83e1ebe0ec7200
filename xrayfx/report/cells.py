"""Formatting of report cells shared by the tables: numbers, intervals, counts, Table 2's columns."""

from __future__ import annotations

import math

import numpy as np
from typing import Any

Cell = str | list[str]

TABLE2_HEADERS = [
    "backbone", "COVID precision", "COVID recall", "COVID F1", "NORMAL precision", "NORMAL recall",
    "NORMAL F1", "TP", "FP", "FN", "TN", "accuracy",
]
_TABLE2_KEYS = [
    ("covid_precision", "positive", "precision"), ("covid_recall", "positive", "recall"),
    ("covid_f1", "positive", "f1"), ("normal_precision", "negative", "precision"),
    ("normal_recall", "negative", "recall"), ("normal_f1", "negative", "f1"),
]


# ---------------------------------------------------------------------------------------------
# Number formatting


def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def num(v: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals, or "n/a"."""
    return "n/a" if _nan(v) else f"{v:.{digits}f}"


def with_ci(d: dict[str, Any] | None, digits: int = 2) -> str:
    """``value (lo–hi)`` of a proportion or bootstrap dict; "n/a" when undefined."""
    if not d or _nan(d.get("value")):
        return "n/a"
    if _nan(d.get("lo")) or _nan(d.get("hi")):
        return num(d["value"], digits)
    return f"{d['value']:.{digits}f} ({d['lo']:.{digits}f}–{d['hi']:.{digits}f})"


def with_counts(d: dict[str, Any] | None, digits: int = 2) -> str:
    """``value (lo–hi), k/n`` of a proportion."""
    if not d:
        return "n/a"
    text = with_ci(d, digits)
    if "numerator" in d:
        text += f", {d['numerator']}/{d['denominator']}"
    return text


def signed(v: float | int, digits: int = 2) -> str:
    """A difference with an explicit sign (true minus sign)."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return f"{v:+d}".replace("-", "−")
    return f"{v:+.{digits}f}".replace("-", "−")


# ---------------------------------------------------------------------------------------------
# Tables
