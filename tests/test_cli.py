"""The core command line, tested by exit code and message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, run_cli, seed_cache


def test_help_lists_commands_with_an_example():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for cmd in ("models", "export", "extract", "phantoms", "demo", "cache"):
        assert cmd in proc.stdout


@pytest.mark.parametrize("cmd", ["models", "export", "extract", "phantoms", "demo", "cache ls"])
def test_every_core_command_has_help_with_an_example(cmd):
    proc = run_cli(*cmd.split(), "--help")
    assert proc.returncode == 0 and "Example:" in proc.stdout


def test_unknown_backbone_exits_2_and_lists_valid_ones():
    proc = run_cli("export", "--model", "inceptonv3")
    assert proc.returncode == 2
    assert "Unknown backbone 'inceptonv3'; choose one of: densenet201, efficientnet-lite0" in proc.stderr
    assert "xrayfx models lists them" in proc.stderr


def test_missing_data_folder_exits_2_naming_it(tmp_path):
    missing = tmp_path / "nowhere"
    proc = run_cli("extract", "--model", "mobilenet", "--weights", "none", "--data", str(missing))
    assert proc.returncode == 2
    assert str(missing) in proc.stderr and "does not exist" in proc.stderr


def test_bad_option_value_exits_2():
    proc = run_cli("extract", "--model", "mobilenet", "--data", ".", "--batch-size", "many")
    assert proc.returncode == 2


def test_models_table_lists_every_backbone():
    proc = run_cli("models")
    assert proc.returncode == 0
    for name in ("inceptionv3", "inceptionresnetv2", "densenet201", "resnet101v2", "mobilenet", "efficientnet-lite0"):
        assert name in proc.stdout


def test_phantoms_and_extract_and_cache_ls(tmp_path, mobilenet_export):
    from conftest import MOBILENET_WEIGHTS

    out = tmp_path / "ph"
    assert run_cli("phantoms", "-o", str(out), "--n", "12", "--seed", "1").returncode == 0
    cache = seed_cache(tmp_path / "cache", mobilenet_export)  # the export is tested elsewhere; reuse the session's
    proc = run_cli("extract", "--model", "mobilenet", "--weights", str(MOBILENET_WEIGHTS), "--data",
                   str(out / "manifest.csv"), "--cache-dir", str(cache))
    assert proc.returncode == 0, proc.stderr
    assert "12 files: 12 embedded (12 new, 0 from cache)" in proc.stdout
    ls = run_cli("cache", "ls", "--cache-dir", str(cache))
    assert ls.returncode == 0 and "mobilenet" in ls.stdout and "12" in ls.stdout


def test_random_weights_are_loudly_warned(tmp_path):
    proc = run_cli("export", "--model", "mobilenet", "--weights", "none", "--cache-dir", str(tmp_path))
    assert proc.returncode == 0
    assert "NOT pretrained" in proc.stderr and "never for conclusions" in proc.stderr


def test_demo_runs_offline_end_to_end(tmp_path):
    """`xrayfx demo` (what `make demo` runs): phantoms → extract → fit-head → report, no network."""
    import os

    env = dict(os.environ, KERAS_HOME=str(tmp_path / "keras-empty"), HTTP_PROXY="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="")
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "xrayfx", "demo", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SYNTHETIC phantom radiographs (not medical data)" in proc.stderr
    assert f"demo results in {out}" in proc.stdout
    (report,) = out.glob("cache/runs/*/report/report.md")
    text = report.read_text()
    assert "efficientnet-lite0" in text and "(ImageNet weights)" in text
    assert "phantom-site-a" in text and ("entangled" in text or "tell the sources apart" in text)
    assert (report.parent / "report.html").is_file() and (report.parent / "report.json").is_file()
