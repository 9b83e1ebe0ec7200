"""Interruption and machine faults: real signals to a real `python -m xrayfx`, injected disk and permission faults."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import MOBILENET_WEIGHTS, ROOT, absolute_rows, write_manifest


def _wait_for_first_done_chunk(cache: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any((cache / "embeddings").glob("*/done/c/*")):
            return
        if proc.poll() is not None:
            pytest.fail(f"extract ended before the first chunk was seen: {proc.communicate()}")
        time.sleep(0.05)
    pytest.fail("no chunk was written within the time limit")


def _extract_args(manifest: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "xrayfx", "extract", "--model", "mobilenet", "--weights", str(MOBILENET_WEIGHTS),
            "--data", str(manifest), "--cache-dir", str(cache), "--batch-size", "1", "--workers", "1"]


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signal_during_extract_exits_with_its_code_one_line_and_rerun_resumes(
        sig, code, word, shared_rows, mobilenet_export, tmp_path):
    from xrayfx.cache import EmbeddingCache

    manifest = write_manifest(tmp_path / "many.csv", absolute_rows(shared_rows[:600]))
    cache = tmp_path / "cache"
    shutil.copytree(mobilenet_export.path.parent, cache / "models")  # the export is reused, not redone
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(_extract_args(manifest, cache), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_first_done_chunk(cache, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, (out, err)
    assert err.strip().splitlines()[-1] == f"{word}; rerun the same command to resume", err
    assert "Traceback" not in err
    leftovers = [p for p in cache.rglob("*") if p.name.endswith((".tmp", ".creating"))]
    assert leftovers == []
    (group,) = [p for p in (cache / "embeddings").iterdir() if p.is_dir()]
    kept = EmbeddingCache(group)
    n_kept = len(kept)
    assert 0 < n_kept < 600
    done_rows = sorted(kept.index().values())
    assert np.isfinite(np.asarray(kept.embeddings.oindex[done_rows, :])).all(), "a done row is not finite"

    rerun = subprocess.run(_extract_args(manifest, cache), cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{n_kept} from cache" in rerun.stdout, rerun.stdout


def test_interrupt_of_a_command_that_does_not_resume_says_interrupted(monkeypatch, capsys):
    from conftest import run_cli_inprocess
    from xrayfx.cli import core

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(core, "Table", boom)
    code, out, err = run_cli_inprocess(["models"], capsys)
    assert code == 130
    assert err.strip().splitlines()[-1] == "interrupted"
