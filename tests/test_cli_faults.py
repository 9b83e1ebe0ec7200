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

from conftest import MOBILENET_WEIGHTS, ROOT, absolute_rows, seed_cache, write_manifest


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
    from xrayfx.extraction.cache import EmbeddingCache

    manifest = write_manifest(tmp_path / "many.csv", absolute_rows(shared_rows[:300]))
    cache = seed_cache(tmp_path / "cache", mobilenet_export)  # the export is reused, not redone
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
    assert 0 < n_kept < 300
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


# ------------------------------------------------------------------------------------------------
# Ordinary faults: one error line, the fix, a non-zero exit, no traceback


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _base(manifest, cache) -> list[str]:
    return ["extract", "--model", "mobilenet", "--weights", str(MOBILENET_WEIGHTS), "--data", str(manifest),
            "--cache-dir", str(cache)]


def test_latin1_manifest_names_the_line_and_byte(tmp_path, capsys):
    from conftest import run_cli_inprocess

    manifest = tmp_path / "latin1.csv"
    manifest.write_bytes("path,label\nimages/ok.png,covid\nimages/caf\u00e9.png,normal\n".encode("latin-1"))
    code, _, err = run_cli_inprocess(_base(manifest, tmp_path / "c"), capsys)
    assert code == 2
    line = _one_error_line(err)
    assert str(manifest) in line and "line 3" in line and "0xe9" in line and "UTF-8" in line


@pytest.mark.parametrize("damage", ["truncate", "not-an-object", "drop-key"])
def test_damaged_model_sidecar_is_one_error_line(damage, tmp_path, mobilenet_export, shared_rows, capsys):
    import json

    from conftest import run_cli_inprocess

    cache = seed_cache(tmp_path / "cache", mobilenet_export)
    side = cache / "models" / mobilenet_export.path.with_suffix(".json").name
    text = side.read_text()
    if damage == "truncate":
        side.write_text(text[: len(text) // 2])
    elif damage == "not-an-object":
        side.write_text("[1, 2]")
    else:
        doc = json.loads(text)
        del doc["onnx_sha256"]
        side.write_text(json.dumps(doc))
    manifest = write_manifest(tmp_path / "m.csv", absolute_rows(shared_rows[:2]))
    code, _, err = run_cli_inprocess(_base(manifest, cache), capsys)
    assert code == 1
    line = _one_error_line(err)
    assert str(side) in line and "delete" in line


@pytest.mark.parametrize("command", ["extract", "fit-head", "predict", "report", "cache"])
def test_cache_dir_that_is_a_file_exits_2(command, tmp_path, capsys):
    from conftest import run_cli_inprocess

    afile = tmp_path / "cache"
    afile.write_text("not a folder")
    args = {"extract": _base(tmp_path / "m.csv", afile),
            "fit-head": ["fit-head", "--model", "mobilenet", "--data", "m.csv", "--cache-dir", str(afile)],
            "predict": ["predict", "x.png", "--run", "r", "--cache-dir", str(afile)],
            "report": ["report", "r", "--cache-dir", str(afile)],
            "cache": ["cache", "ls", "--cache-dir", str(afile)]}[command]
    code, _, err = run_cli_inprocess(args, capsys)
    assert code == 2, err
    assert "Traceback" not in err and "is a file" in err


def test_disk_full_during_extract_keeps_finished_rows_and_rerun_completes(tmp_path, shared_rows, mobilenet_export,
                                                                          monkeypatch, capsys):
    import errno

    import zarr.storage._local as local

    from conftest import run_cli_inprocess

    cache = seed_cache(tmp_path / "cache", mobilenet_export)
    manifest = write_manifest(tmp_path / "m.csv", absolute_rows(shared_rows[:100]))
    real_put = local._put
    chunk_writes = {"n": 0}

    def put(path, value, exclusive=False):
        if "/embeddings/" in str(path) and "/c/" in str(path) and "/done/" not in str(path):
            chunk_writes["n"] += 1
            if chunk_writes["n"] > 2:  # the embeddings and ids of the first chunk fit; then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_put(path, value, exclusive=exclusive)

    monkeypatch.setattr(local, "_put", put)
    code, _, err = run_cli_inprocess(_base(manifest, cache), capsys)
    assert code == 1
    line = _one_error_line(err)
    assert "disk full after 32 new row(s)" in line and "kept" in line and "free space and rerun" in line
    monkeypatch.setattr(local, "_put", real_put)
    code, out, err = run_cli_inprocess(_base(manifest, cache), capsys)
    assert code == 0, err
    assert "32 from cache" in out


# ------------------------------------------------------------------------------------------------
# A run on a folder with a file name that is not UTF-8; then the same cache made read-only

ODD_NAME = b"\xffodd-name.png"


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory, shared_rows, mobilenet_export):
    """A logreg run on a class-folder tree (30 Cohen COVID-19, 30 Mooney normals), one file named with byte 0xff."""
    from conftest import CXR

    root = tmp_path_factory.mktemp("odd")
    data = root / "data"
    covid = [r for r in shared_rows if r["source"] == "cohen" and r["label"] == "covid"][:30]
    normal = [r for r in shared_rows if r["source"] == "mooney"][:30]
    for label, rows in (("covid", covid), ("normal", normal)):
        (data / label).mkdir(parents=True)
        for r in rows:
            shutil.copy(CXR / r["path"], data / label)
    first = sorted((data / "covid").iterdir())[0]
    os.rename(first, os.path.join(os.fsencode(data / "covid"), ODD_NAME))
    cache = seed_cache(root / "cache", mobilenet_export)
    proc = subprocess.run([sys.executable, "-m", "xrayfx", "fit-head", "--model", "mobilenet", "--weights",
                           str(MOBILENET_WEIGHTS), "--data", str(data), "--cache-dir", str(cache), "--head", "logreg",
                           "--run-id", "odd"], cwd=ROOT, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return {"root": root, "data": data, "cache": cache, "run": cache / "runs" / "odd"}


def test_non_utf8_file_name_survives_fit_head_predict_and_report(odd_run, capsys):
    from conftest import run_cli_inprocess
    from xrayfx.csvsafe import read_csv_dicts

    preds = read_csv_dicts(odd_run["run"] / "predictions.csv") + read_csv_dicts(odd_run["run"] / "split.csv")
    assert preds  # predictions.csv and split.csv read back
    out = odd_run["root"] / "pred.csv"
    code, _, err = run_cli_inprocess(["predict", str(odd_run["data"]), "--run", str(odd_run["run"]), "-o", str(out)],
                                     capsys)
    assert code == 0, err
    assert ODD_NAME in out.read_bytes()
    paths = [os.fsencode(r["path"]) for r in read_csv_dicts(out)]
    assert os.path.join(os.fsencode(odd_run["data"] / "covid"), ODD_NAME) in paths
    assert all(os.path.isfile(p) for p in paths)

    stdout = subprocess.run([sys.executable, "-m", "xrayfx", "predict", str(odd_run["data"]), "--run",
                             str(odd_run["run"])], cwd=ROOT, capture_output=True, timeout=600,
                            env={**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"})
    assert stdout.returncode == 0, stdout.stderr.decode(errors="replace")
    assert ODD_NAME in stdout.stdout

    code, _, err = run_cli_inprocess(["report", str(odd_run["run"]), "--no-ablation", "--resamples", "100", "--out",
                                      str(odd_run["root"] / "report")], capsys)
    assert code == 0, err
    assert (odd_run["root"] / "report" / "report.md").is_file()


@pytest.fixture
def read_only_cache(odd_run, monkeypatch):
    """Make odd_run's cache behave as on a read-only mount (tests run as root, so chmod would not stop writes)."""
    import errno

    import zarr.storage._local as local

    cache = str(odd_run["cache"])

    def inside(path) -> bool:
        return os.path.abspath(os.fsdecode(path)).startswith(cache)

    def erofs(path):
        return OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))

    real_access, real_open, real_mkdir, real_put = os.access, os.open, os.mkdir, local._put
    monkeypatch.setattr(os, "access", lambda p, mode, **k: (not (mode & os.W_OK and inside(p)))
                        and real_access(p, mode, **k))

    def guarded_open(path, flags, *a, **k):
        if inside(path) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise erofs(path)
        return real_open(path, flags, *a, **k)

    def guarded_mkdir(path, *a, **k):
        if inside(path):
            raise erofs(path)
        return real_mkdir(path, *a, **k)

    def guarded_put(path, *a, **k):
        if inside(path):
            raise erofs(path)
        return real_put(path, *a, **k)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)
    monkeypatch.setattr(local, "_put", guarded_put)
    return odd_run


def test_predict_and_report_work_on_a_read_only_cache(read_only_cache, capsys):
    from PIL import Image

    from conftest import run_cli_inprocess
    from xrayfx.csvsafe import read_csv_dicts

    run, root = read_only_cache["run"], read_only_cache["root"]
    new = root / "new-image.png"  # not in the cache: embedded in memory
    Image.open(next((read_only_cache["data"] / "normal").iterdir())).convert("L").rotate(90).save(new)
    before = sorted(p.name for p in read_only_cache["cache"].rglob("*"))
    out = root / "ro-pred.csv"
    code, _, err = run_cli_inprocess(["predict", str(read_only_cache["data"]), str(new), "--run", str(run), "-o",
                                      str(out)], capsys)
    assert code == 0, err
    assert "read-only" in err and "in memory" in err
    assert len(read_csv_dicts(out)) == 61

    code, _, err = run_cli_inprocess(["report", str(run), "--resamples", "100", "--out", str(root / "ro-report")],
                                     capsys)
    assert code == 0, err
    assert (root / "ro-report" / "report.html").is_file()
    assert sorted(p.name for p in read_only_cache["cache"].rglob("*")) == before, "nothing was written"

    code, _, err = run_cli_inprocess(["report", str(run), "--no-ablation", "--resamples", "100"], capsys)
    assert code == 2 and "--out" in _one_error_line(err)


def test_extract_and_fit_head_say_the_cache_is_read_only(read_only_cache, capsys):
    from conftest import run_cli_inprocess

    for cmd in ("extract", "fit-head"):
        code, _, err = run_cli_inprocess([cmd, "--model", "mobilenet", "--weights", str(MOBILENET_WEIGHTS), "--data",
                                          str(read_only_cache["data"]), "--cache-dir", str(read_only_cache["cache"])],
                                         capsys)
        assert code == 1
        line = _one_error_line(err)
        assert "read-only" in line and "--cache-dir" in line
