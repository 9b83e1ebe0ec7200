"""The one CSV writer and reader of xrayfx: safe to open in a spreadsheet, exact on the way back.

Writing: a text cell that a spreadsheet would run as a formula (it starts with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return; OWASP's CSV-injection rule) gets a
leading ``'``. Numbers stay numbers (``-0.5``, ``+1e-3``). A cell that already starts
with quotes before such a character gets one more, so that reading is exact.

Reading undoes it: one leading ``'`` is removed where the rest of the cell starts
(after any further quotes) with one of those characters. ``neutralise`` and
``restore`` are inverse for every string.

File names that are not valid UTF-8 (``os.fsdecode`` gives lone surrogates) are
written back as their original bytes (``surrogateescape``) and read back the same way.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable, Sequence

from xrayfx.exceptions import DataError
from xrayfx.util import atomic_write_text

#: First characters that make a spreadsheet evaluate a cell.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
ENCODING_ERRORS = "surrogateescape"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def neutralise(cell: Any) -> Any:
    """A cell as written: text that would run as a formula gets a leading ``'``; anything else unchanged."""
    if not isinstance(cell, str):
        return cell
    if cell.lstrip("'").startswith(FORMULA_STARTS) and not _is_number(cell):
        return "'" + cell
    return cell


def restore(cell: str) -> str:
    """The cell as it was before :func:`neutralise`."""
    if cell.startswith("'") and cell.lstrip("'").startswith(FORMULA_STARTS):
        return cell[1:]
    return cell


def _field(cell: Any) -> str:
    """One field as the csv module writes it, but quoted also when it holds a bare carriage return."""
    text = "" if cell is None else str(neutralise(cell))
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text (``\\n`` line ends) of a header and rows, every text cell neutralised."""
    lines = [",".join(_field(h) for h in header)]
    lines += [",".join(_field(c) for c in row) for row in rows]
    return "\n".join(lines) + "\n"


def dict_csv_text(fieldnames: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    """CSV text of dict rows in the order of ``fieldnames`` (missing keys are blank; extra keys are an error)."""
    fields = list(fieldnames)
    materialised = []
    for row in rows:
        extra = [k for k in row if k not in fields]
        if extra:
            raise ValueError(f"dict row has keys not in fieldnames: {extra}")
        materialised.append([row.get(k, "") for k in fields])
    return csv_text(fields, materialised)


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Write a CSV file atomically (see :func:`csv_text`)."""
    path = Path(path)
    atomic_write_text(path, csv_text(header, rows))
    return path


def read_csv_text(path: str | Path, encoding: str = "utf-8") -> str:
    """The text of a CSV file xrayfx wrote; undecodable bytes of file names come back as they were written."""
    with open(path, newline="", encoding=encoding, errors=ENCODING_ERRORS) as f:
        return f.read()


def read_manifest_text(path: str | Path, what: str = "manifest") -> str:
    """The text of a CSV a person made (a manifest); DataError naming the line and byte unless it is UTF-8.

    A UTF-8 byte-order mark is dropped.
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{what} {path} is not UTF-8: line {line}, byte {exc.start - line_start + 1} of that line (offset "
            f"{exc.start}) is 0x{data[exc.start]:02x}; it was probably saved as Latin-1 or Windows-1252. "
            f"Fix: re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 {path} > fixed.csv); if those bytes are "
            "part of a file name, rename the file"
        ) from None


def dict_rows(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows as dicts) of CSV text, every cell restored; ``None`` cells and keys become ''/dropped."""
    reader = csv.reader(io.StringIO(text))
    header = [restore(h) for h in next(reader, [])]
    rows = []
    for raw in reader:
        if not raw:
            continue
        values = [restore(v) for v in raw]
        rows.append({k: (values[i] if i < len(values) else "") for i, k in enumerate(header)})
    return header, rows


def read_csv_dicts(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV file xrayfx wrote, as dicts, every cell restored."""
    return dict_rows(read_csv_text(path))[1]
