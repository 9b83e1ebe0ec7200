"""CSV files xrayfx writes are safe in a spreadsheet (OWASP CSV injection) and read back exactly."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from xrayfx.csvsafe import csv_text, dict_rows, neutralise, read_csv_dicts, restore

HOSTILE = ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd", "'=x", "''-y", "'", "a=b",
           "plain", "", "=", "-", "caf\u00e9", "\udcffname"]


@pytest.mark.parametrize("cell", HOSTILE)
def test_neutralise_then_restore_is_exact(cell):
    assert restore(neutralise(cell)) == cell


@pytest.mark.parametrize("cell", ["=1+2", "+x", "-x", "@x", "\tx", "\rx"])
def test_formula_cells_get_a_leading_quote(cell):
    assert neutralise(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["-0.5", "+1e-3", "-3", "0.25", "-inf"])
def test_numbers_stay_numbers(cell):
    assert neutralise(cell) == cell
    assert neutralise(-0.5) == -0.5


def test_csv_text_round_trip_through_the_reader():
    rows = [[c, str(i), -0.5] for i, c in enumerate(HOSTILE)]
    text = csv_text(["path", "n", "p"], rows)
    for raw in list(csv.reader(io.StringIO(text)))[1:]:
        assert not raw[0].startswith(("=", "+", "-", "@", "\t", "\r")), raw
        assert raw[2] == "-0.5"
    header, back = dict_rows(text)
    assert header == ["path", "n", "p"]
    assert [r["path"] for r in back] == HOSTILE


def test_skipped_csv_is_neutralised(tmp_path):
    from xrayfx.data.stream import Skip
    from xrayfx.extraction.pipeline import write_skipped

    path = write_skipped([Skip("=cmd|' /C calc'!A0", "-bad", "x")], tmp_path)
    raw = list(csv.reader(io.StringIO(path.read_text())))
    assert raw[1] == ["'=cmd|' /C calc'!A0", "x", "'-bad"]
    assert read_csv_dicts(path)[0] == {"path": "=cmd|' /C calc'!A0", "image_id": "x", "reason": "-bad"}


def test_split_csv_round_trip_with_formula_cells(tmp_path):
    from xrayfx.study.splits import Split
    from xrayfx.study.split_files import read_split, write_split

    split = Split(image_id=np.array(["a" * 64, "b" * 64]), patient_id=np.array(["=evil()", "@p"]),
                  label=np.array(["+covid", "-normal"]), split=np.array(["train", "test"]),
                  fold=np.array([-1, -1]), grouped_by="patient_id")
    path = write_split(split, tmp_path / "split.csv")
    assert "'=evil()" in path.read_text() and "'+covid" in path.read_text()
    back = read_split(path)
    assert list(back.patient_id) == ["=evil()", "@p"] and list(back.label) == ["+covid", "-normal"]


def test_data_manifest_round_trip_with_formula_cells(tmp_path):
    from xrayfx.data.manifest import load_dataset
    from xrayfx.data.sources import load_manifest_rows, write_manifest

    (tmp_path / "=img.png").write_bytes(b"not an image")
    rows = [{"path": str(tmp_path / "=img.png"), "label": "-covid", "patient_id": "=1+1", "source": "@s"}]
    out = write_manifest(rows, tmp_path / "m.csv")
    text = out.read_text()
    assert "'=img.png" in text and "'-covid" in text and "'=1+1" in text and "'@s" in text
    back = load_manifest_rows(out)[0]
    assert back["label"] == "-covid" and back["patient_id"] == "=1+1" and back["path"] == str(tmp_path / "=img.png")
    record = load_dataset(out).records[0]
    assert record.path == tmp_path / "=img.png" and record.label == "-covid" and record.meta["patient_id"] == "=1+1"


def test_prediction_csv_is_neutralised():
    from xrayfx.study.fit import PredictResult

    result = PredictResult(["path", "image_id", "p_covid", "predicted", "threshold"],
                           [["=x.png", "id", "-0.0", "-covid", "0.5"]], [], 0.5, "youden", None)
    assert result.csv_text().splitlines()[1] == "'=x.png,id,-0.0,'-covid,0.5"


def test_report_markdown_escapes_html():
    from xrayfx.report.render import to_markdown

    evil = "<script>alert(1)</script>"
    md = to_markdown([("h", 2, f"run {evil}"), ("p", f"source {evil}"), ("ul", [f"label {evil}"]),
                      ("note", evil), ("table", f"cap {evil}", ["h"], [[evil], [[evil, evil]]])])
    assert "<script>" not in md and "&lt;script&gt;" in md
