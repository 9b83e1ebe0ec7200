"""Hostile and careless input: user text printed literally, empty paths, odd file names, misleading messages."""

from __future__ import annotations

import shutil

import pytest

from conftest import MOBILENET_WEIGHTS, absolute_rows, run_cli_inprocess, write_manifest


@pytest.fixture
def bracket_data(tmp_path, shared_rows):
    """60 real radiographs listed in a manifest whose path holds `[v2]` and `[/]`, labels too."""
    rename = {"covid": "covid[/]", "normal": "normal[v2]"}
    rows = ([r for r in shared_rows if r["source"] == "cohen" and r["label"] == "covid"][:30]
            + [r for r in shared_rows if r["source"] == "mooney"][:30])
    rows = [{**r, "label": rename[r["label"]]} for r in absolute_rows(rows)]
    folder = tmp_path / "export[v2]" / "x["
    folder.mkdir(parents=True)
    return write_manifest(folder / "]manifest.csv", rows)


def _cache_with_model(tmp_path, mobilenet_export):
    cache = tmp_path / "cache[/]v2"
    shutil.copytree(mobilenet_export.path.parent, cache / "models")
    return cache


def test_paths_and_labels_with_brackets_print_literally(bracket_data, tmp_path, mobilenet_export, capsys):
    cache = _cache_with_model(tmp_path, mobilenet_export)
    base = ["--model", "mobilenet", "--weights", str(MOBILENET_WEIGHTS), "--data", str(bracket_data),
            "--cache-dir", str(cache)]
    code, out, err = run_cli_inprocess(["extract", *base], capsys)
    assert code == 0, err
    assert f"cache group: {cache}/embeddings/" in out
    assert "MarkupError" not in err

    code, out, err = run_cli_inprocess(["fit-head", *base, "--head", "logreg", "--balance", "none",
                                        "--labels", "covid[/],normal[v2]", "--positive", "covid[/]",
                                        "--run-id", "brackets"], capsys)
    assert code == 0, err
    assert "positive class: covid[/]" in out
    assert f"run folder: {cache}/runs/brackets" in out
    assert "decision: " in out and ("covid[/]" in out.split("decision: ")[1] or "normal[v2]" in out)


def test_error_messages_print_user_text_literally(tmp_path, capsys):
    missing = tmp_path / "export[v2]" / "a[/]b.csv"
    code, out, err = run_cli_inprocess(["extract", "--model", "mobilenet", "--data", str(missing),
                                        "--cache-dir", str(tmp_path / "c")], capsys)
    assert code == 2
    assert str(missing) in err
    assert "Traceback" not in err


@pytest.mark.parametrize("args", [
    ["extract", "--model", "mobilenet", "--data", ""],
    ["extract", "--model", "mobilenet", "--data="],
    ["extract", "--model", "mobilenet", "--data", "x.csv", "--cache-dir", ""],
    ["predict", "", "--run", "r"],
    ["data", "paper", "--manifest", "", "-o", "p.csv"],
])
def test_empty_paths_are_refused_with_exit_2(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli_inprocess(args, capsys)
    assert code == 2, (out, err)
    assert "empty" in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()


def test_library_refuses_an_empty_data_path():
    from xrayfx.datasets import load_dataset
    from xrayfx.exceptions import DataError

    with pytest.raises(DataError, match="empty path"):
        load_dataset("")
