"""`xrayfx fit-head` and `xrayfx predict`, tested by exit code, message and output."""

from __future__ import annotations

import csv
import io
import shutil

import pytest

from conftest import MOBILENET_WEIGHTS, absolute_rows, run_cli, run_cli_inprocess, write_manifest


@pytest.fixture(scope="module")
def small(shared_rows, tmp_path_factory):
    """60 real radiographs (30 Cohen COVID-19, 30 Mooney normals) as a manifest."""
    rows = ([r for r in shared_rows if r["source"] == "cohen" and r["label"] == "covid"][:30]
            + [r for r in shared_rows if r["source"] == "mooney"][:30])
    return write_manifest(tmp_path_factory.mktemp("cli-train") / "small.csv", absolute_rows(rows))


@pytest.fixture(scope="module")
def cli_run(small, mobilenet_export, session_cache):
    """A logreg run made through the command line."""
    proc = run_cli("fit-head", "--model", "mobilenet", "--weights", str(MOBILENET_WEIGHTS), "--data", str(small),
                   "--cache-dir", str(session_cache), "--head", "logreg", "--run-id", "cli-logreg")
    assert proc.returncode == 0, proc.stderr
    assert "run folder" in proc.stdout and "AUROC" in proc.stdout
    return session_cache / "runs" / "cli-logreg"


@pytest.fixture
def three_images(tmp_path, shared_rows):
    """A folder of three real radiographs (copies in tmp_path, deleted after the test)."""
    folder = tmp_path / "three"
    folder.mkdir()
    picks = absolute_rows([r for r in shared_rows if r["source"] == "cohen"][:2]
                          + [r for r in shared_rows if r["source"] == "mooney"][:1])
    for r in picks:
        shutil.copy(r["path"], folder)
    return folder


@pytest.mark.parametrize("cmd", ["fit-head", "predict"])
def test_help_has_an_example(cmd):
    proc = run_cli(cmd, "--help")
    assert proc.returncode == 0 and "Example:" in proc.stdout


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--labels", "covid"], "Expected exactly two distinct labels after --labels"),
        (["--labels", "covid,normal,viral"], "Expected exactly two distinct labels after --labels"),
        (["--head", "forest"], "'forest' is not one of 'paper', 'logreg', 'linear-svm', 'rbf-svm', 'knn'"),
        (["--head", "logreg", "--epochs", "5"], "--epochs"),
        (["--positive", "viral"], "--positive"),
    ],
)
def test_bad_options_exit_2_with_the_reason(extra, message, small, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # as run_cli: one wide line, not a wrapped panel
    code, _, err = run_cli_inprocess(["fit-head", "--model", "mobilenet", "--weights", "none", "--data", str(small),
                                      "--cache-dir", str(tmp_path / "cache"), *extra], capsys)
    assert code == 2, err
    assert message in " ".join(err.split())
    assert not (tmp_path / "cache" / "models").exists(), "rejected before any export"


def test_fit_head_writes_the_run(cli_run):
    for name in ("config.json", "split.csv", "head.skops", "history.csv", "predictions.csv", "metrics.json"):
        assert (cli_run / name).is_file()


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_predict_a_folder_to_stdout_by_id_and_by_path(cli_run, session_cache, three_images, tmp_path, capsys):
    by_id = run_cli("predict", "--run", "cli-logreg", "--cache-dir", str(session_cache), str(three_images))
    assert by_id.returncode == 0, by_id.stderr
    assert by_id.stdout.splitlines()[0] == "path,image_id,p_covid,p_normal,predicted,threshold"
    rows = _csv(by_id.stdout)
    assert len(rows) == 3 and {r["path"] for r in rows} == {str(p) for p in three_images.iterdir()}
    for r in rows:
        assert abs(float(r["p_covid"]) + float(r["p_normal"]) - 1) < 1e-9
        assert r["predicted"] == ("covid" if float(r["p_covid"]) >= float(r["threshold"]) else "normal")
    assert "threshold" in by_id.stderr and "validation" in by_id.stderr
    out = tmp_path / "p.csv"
    # by path, in this process: the child process above already showed the real entry point's stdout
    code, _, err = run_cli_inprocess(["predict", "--run", str(cli_run), str(three_images), "-o", str(out)], capsys)
    assert code == 0, err
    assert out.read_text() == by_id.stdout


def test_predict_on_an_altered_head_exits_1_naming_the_file(cli_run, tmp_path, three_images, capsys):
    copy = tmp_path / "cache" / "runs" / "altered"
    shutil.copytree(cli_run, copy)
    data = bytearray((copy / "head.skops").read_bytes())
    data[-10] ^= 0xFF
    (copy / "head.skops").write_bytes(bytes(data))
    code, out, err = run_cli_inprocess(["predict", "--run", str(copy), "--cache-dir", str(cli_run.parent.parent),
                                        str(three_images)], capsys)
    assert code == 1
    assert "head.skops" in err and "sha256" in err
    assert out == ""


def test_predict_an_unknown_run_exits_2(session_cache, three_images, capsys):
    code, _, err = run_cli_inprocess(["predict", "--run", "no-such-run", "--cache-dir", str(session_cache),
                                      str(three_images)], capsys)
    assert code == 2 and "no-such-run" in err
