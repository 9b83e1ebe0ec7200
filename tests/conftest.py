"""Shared fixtures. Real data is read in place from ../shared, never copied."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CXR = SHARED / "data" / "cxr"
CXR_MANIFEST = CXR / "manifest.csv"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
GOLDEN_LITE0 = SHARED / "golden" / "efficientnet_lite0"
COHEN_METADATA = SHARED / "data" / "sources" / "cohen-metadata.csv"


def read_shared_manifest() -> list[dict[str, str]]:
    """Rows of ../shared/data/cxr/manifest.csv."""
    with open(CXR_MANIFEST, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def shared_rows() -> list[dict[str, str]]:
    if not CXR_MANIFEST.exists():
        pytest.skip(f"{CXR_MANIFEST} not found: ../shared is laid beside the repo in CI")
    return read_shared_manifest()


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    """Write rows (with absolute paths) as a manifest CSV."""
    fields = list(rows[0].keys())
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def absolute_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Copy rows of the shared manifest with their path made absolute."""
    return [{**r, "path": str(CXR / r["path"])} for r in rows]


@pytest.fixture
def cxr_subset(tmp_path, shared_rows):
    """Factory: a manifest of n real radiographs (first n of each requested source/label mix)."""

    def make(n: int = 40, where=None, name: str = "subset.csv") -> Path:
        rows = [r for r in shared_rows if where is None or where(r)][:n]
        return write_manifest(tmp_path / name, absolute_rows(rows))

    return make


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """One cache folder for the whole test session (exports are shared through it)."""
    return tmp_path_factory.mktemp("xrayfx-cache")


@pytest.fixture(scope="session")
def mobilenet_config():
    """MobileNet alpha 0.25 with the real ImageNet weights from ../shared (signal, not 1e-15 noise)."""
    if not MOBILENET_WEIGHTS.exists():
        pytest.skip(f"{MOBILENET_WEIGHTS} not found")
    from xrayfx.models.config import model_config

    return model_config("mobilenet", weights=str(MOBILENET_WEIGHTS))


@pytest.fixture(scope="session")
def mobilenet_export(mobilenet_config, session_cache):
    """The mobilenet export, made once per session."""
    from xrayfx.models.export import export_model

    return export_model(mobilenet_config, session_cache)


def seed_cache(folder: Path, *exports) -> Path:
    """Make ``folder`` a cache that already holds these exports; returns ``folder``.

    Copies each export's ONNX file and JSON sidecar into ``folder/models/`` (copies, not links: some
    tests damage them), so extracting with the same config there reuses the export instead of running
    TensorFlow → ONNX again. Only the given files are copied, never the rest of the session's models folder.
    """
    from xrayfx.models.config import load_exported

    models = Path(folder) / "models"
    models.mkdir(parents=True, exist_ok=True)
    for exported in exports:
        for f in (exported.path, exported.sidecar_path):
            shutil.copyfile(f, models / f.name)
        assert load_exported(exported.config, folder) is not None, f"the copy of {exported.path.name} is not reused"
    return Path(folder)


@pytest.fixture
def seeded_cache(tmp_path, mobilenet_export) -> Path:
    """``tmp_path / "cache"``, already holding the session's mobilenet export (no second export)."""
    return seed_cache(tmp_path / "cache", mobilenet_export)


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m xrayfx ARGS` in a child process from the repository root."""
    return subprocess.run([sys.executable, "-m", "xrayfx", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def run_cli_inprocess(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in this process; returns (exit code, stdout, stderr)."""
    from xrayfx.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    cap = capsys.readouterr()
    return code, cap.out, cap.err
