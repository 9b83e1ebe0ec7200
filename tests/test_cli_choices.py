"""CLI choices are Literal types: --help lists them, a typo exits 2 with the list, and they match the library."""

from __future__ import annotations

from typing import get_args

import pytest

from conftest import run_cli_inprocess as run
from xrayfx.study.balance import BALANCE_METHODS
from xrayfx.cli import COMMAND_MODULES, options
from xrayfx.inference.extractor import DEVICES
from xrayfx.study.heads import HEADS
from xrayfx.models.registry import PREPROCESS_OPTIONS, RESIZE_OPTIONS
from xrayfx.inference.runtimes import PRECISIONS, RUNTIMES
from xrayfx.data.sources.paper import NORMAL_SOURCES


@pytest.mark.parametrize(
    "choice,library",
    [
        (options.RuntimeName, RUNTIMES),
        (options.PrecisionName, PRECISIONS),
        (options.DeviceName, DEVICES),
        (options.PreprocessName, PREPROCESS_OPTIONS),
        (options.ResizeName, RESIZE_OPTIONS),
        (options.HeadName, tuple(HEADS)),
        (options.BalanceName, BALANCE_METHODS),
        (options.NormalSourceName, tuple(NORMAL_SOURCES)),
    ],
)
def test_cli_choices_match_the_library(choice, library):
    assert get_args(choice) == tuple(library)


def test_every_command_module_registers_its_commands():
    import importlib

    for name in COMMAND_MODULES:
        assert callable(getattr(importlib.import_module(f"xrayfx.cli.{name}"), "register", None)), name


@pytest.mark.parametrize(
    "args,listed",
    [
        (["fit-head", "--help"], "paper|logreg|linear-svm|rbf-svm|knn"),
        (["fit-head", "--help"], "smote|random|class-weight|none"),
        (["extract", "--help"], "onnxruntime|openvino"),
        (["extract", "--help"], "fp32|fp16|int8|bf16"),
        (["extract", "--help"], "cpu|cuda|tensorrt|auto"),
        (["export", "--help"], "imagenet|paper"),
        (["export", "--help"], "stretch|crop"),
    ],
)
def test_help_lists_the_choices(args, listed, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(args, capsys)
    assert code == 0 and listed in out


@pytest.mark.parametrize(
    "args,bad,first",
    [
        (["extract", "--model", "mobilenet", "--data", ".", "--runtime", "onnx"], "'onnx'", "'onnxruntime'"),
        (["extract", "--model", "mobilenet", "--data", ".", "--precision", "fp8"], "'fp8'", "'fp32'"),
        (["extract", "--model", "mobilenet", "--data", ".", "--device", "gpu"], "'gpu'", "'cpu'"),
        (["fit-head", "--model", "mobilenet", "--data", ".", "--balance", "smot"], "'smot'", "'smote'"),
    ],
)
def test_a_typo_exits_2_with_the_choices(args, bad, first, capsys, tmp_path):
    code, _, err = run([*args, "--cache-dir", str(tmp_path / "cache")], capsys)
    err = " ".join(err.split())
    assert code == 2 and f"{bad} is not one of {first}" in err
    assert not (tmp_path / "cache").exists(), "rejected before any work"


@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--workers", "0")])
def test_an_out_of_range_extraction_option_exits_2_before_any_work(flag, value, capsys, tmp_path, monkeypatch):
    """Checked before the data is read or weights resolved (ImageNet weights would otherwise be fetched first)."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-empty"))
    code, _, err = run(["extract", "--model", "mobilenet", "--data", str(tmp_path / "missing.csv"), flag, value,
                        "--cache-dir", str(tmp_path / "cache")], capsys)
    assert code == 2 and f"{flag} must be at least 1, got 0" in " ".join(err.split())
    assert not (tmp_path / "cache").exists() and not (tmp_path / "keras-empty").exists()
