"""Hostile and careless input: user text printed literally, empty paths, odd file names, misleading messages."""

from __future__ import annotations


import pytest

from conftest import MOBILENET_WEIGHTS, absolute_rows, run_cli_inprocess, seed_cache, write_manifest


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
    return seed_cache(tmp_path / "cache[/]v2", mobilenet_export)


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
    ["extract", "--model", "mobilenet", "--data", "  "],
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
    from xrayfx.data.manifest import load_dataset
    from xrayfx.exceptions import DataError

    with pytest.raises(DataError, match="empty path"):
        load_dataset("")


def test_run_under_another_cache_says_where_it_looked(tmp_path, capsys, monkeypatch):
    other = tmp_path / "other-cache" / "runs"
    (other / "good-run").mkdir(parents=True)
    (other / "good-run" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli_inprocess(["predict", "x.png", "--run", str(other / "typo-run")], capsys)
    assert code == 2
    assert "no runs under cache/runs" not in err.replace("\n", " ")
    assert str(other / "typo-run" / "config.json") in err
    assert "good-run" in err and f"--cache-dir {other.parent}" in err


def test_resamples_message_names_the_option():
    from xrayfx.exceptions import UsageError
    from xrayfx.report import build_report

    with pytest.raises(UsageError, match="--resamples") as info:
        build_report(["r"], n_resamples=5)
    assert not str(info.value).startswith("Expected n_resamples")


def test_header_only_manifest_says_it_has_no_rows(tmp_path):
    from xrayfx.data.manifest import load_dataset
    from xrayfx.exceptions import DataError

    (tmp_path / "m.csv").write_text("path,label\n")
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path / "m.csv")
    assert "no rows" in str(info.value) and "subfolders" not in str(info.value)


def test_missing_label_column_is_named_not_reported_as_blank_labels(tmp_path, shared_rows, capsys):
    rows = [{"path": r["path"], "patient_id": r["patient_id"]} for r in absolute_rows(shared_rows[:4])]
    manifest = write_manifest(tmp_path / "nolabel.csv", rows)
    code, _, err = run_cli_inprocess(["fit-head", "--model", "mobilenet", "--weights", str(MOBILENET_WEIGHTS),
                                      "--data", str(manifest),
                                      "--cache-dir", str(tmp_path / "c"), "--head", "logreg"], capsys)
    assert code == 2
    assert "'label' column" in err and "path, patient_id" in err and "blank" not in err


def test_edited_run_config_is_not_blamed_on_the_registry(mobilenet_config):
    from xrayfx.exceptions import IntegrityError
    from xrayfx.models.config import ModelConfig

    recorded = mobilenet_config.to_dict()
    recorded["preprocessing"] = {**recorded["preprocessing"], "resize": "crop"}
    with pytest.raises(IntegrityError) as info:
        ModelConfig.from_dict(recorded, source="run config r/config.json")
    msg = str(info.value)
    assert "r/config.json" in msg and "edited" in msg and "registry spec" not in msg

    recorded = mobilenet_config.to_dict()
    recorded["backbone"] = "densenet201"
    with pytest.raises(IntegrityError, match="edited"):
        ModelConfig.from_dict(recorded)

    import dataclasses

    old_registry = dataclasses.replace(mobilenet_config, spec=dataclasses.replace(mobilenet_config.spec,
                                                                                  embedding_size=1))
    with pytest.raises(IntegrityError, match="registry spec of mobilenet changed"):
        ModelConfig.from_dict(old_registry.to_dict())


def test_non_utf8_output_path_is_printed_escaped_not_a_crash(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    out = os.path.join(os.fsencode(tmp_path), b"ph\xff")
    proc = subprocess.run([sys.executable, "-m", "xrayfx", "phantoms", "-o", os.fsdecode(out), "--n", "4"], cwd=ROOT,
                          capture_output=True, timeout=300,
                          env={**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"})
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"ph\\udcff" in proc.stdout
    assert os.path.isfile(os.path.join(out, b"manifest.csv"))
