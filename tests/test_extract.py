"""End-to-end extraction into the zarr cache: resume, no recompute, kill safety, locking, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import CXR, ROOT, absolute_rows, seed_cache, write_manifest
from xrayfx.extraction.cache import EmbeddingCache
from xrayfx.exceptions import SkippedInputsError
from xrayfx.extraction.pipeline import extract


@pytest.fixture
def forty_mixed(tmp_path, shared_rows):
    """40 real radiographs: 20 Cohen COVID PNGs and 20 Mooney normal JPEGs."""
    rows = [r for r in shared_rows if r["source"] == "cohen"][:20] + [r for r in shared_rows if r["source"] == "mooney"][:20]
    return write_manifest(tmp_path / "forty.csv", absolute_rows(rows))


def test_forty_real_radiographs_then_second_run_runs_no_inference(forty_mixed, mobilenet_config, seeded_cache,
                                                                  monkeypatch):
    cache = seeded_cache
    first = extract(data=forty_mixed, config=mobilenet_config, cache_dir=cache, progress=False, chunk_rows=8)
    assert first.embeddings.shape == (40, 256) and np.isfinite(first.embeddings).all()
    assert first.n_new == 40 and first.embeddings.std(axis=0).mean() > 1e-3
    assert set(first.labels) == {"covid", "normal"}
    assert {m["source"] for m in first.metadata} == {"cohen", "mooney"}

    import xrayfx.extraction.pipeline as pipeline

    class NoInference:
        def __init__(self, *a, **k):
            raise AssertionError("second run must not build an inference session")

    monkeypatch.setattr(pipeline, "make_extractor", NoInference)
    second = extract(data=forty_mixed, config=mobilenet_config, cache_dir=cache, progress=False, chunk_rows=8)
    assert second.n_new == 0 and second.n_cached == 40
    np.testing.assert_array_equal(second.embeddings, first.embeddings)
    assert second.ids == first.ids


def test_adding_images_computes_only_those(shared_rows, mobilenet_config, seeded_cache, tmp_path):
    rows = absolute_rows([r for r in shared_rows if r["source"] == "nih"][:12])
    cache = seeded_cache
    a = extract(data=write_manifest(tmp_path / "a.csv", rows[:8]), config=mobilenet_config, cache_dir=cache,
                progress=False, chunk_rows=4)
    b = extract(data=write_manifest(tmp_path / "b.csv", rows), config=mobilenet_config, cache_dir=cache,
                progress=False, chunk_rows=4)
    assert (a.n_new, b.n_new, b.n_cached) == (8, 4, 8)
    np.testing.assert_array_equal(b.embeddings[:8], a.embeddings)


def test_duplicate_files_share_one_row(tmp_path, shared_rows, mobilenet_config, seeded_cache):
    rows = absolute_rows([r for r in shared_rows if r["source"] == "mooney"][:3])
    rows.append({**rows[0], "label": "normal"})
    res = extract(data=write_manifest(tmp_path / "dup.csv", rows), config=mobilenet_config,
                  cache_dir=seeded_cache, progress=False)
    assert len(res.ids) == 4 and res.n_new == 3
    assert list(res.duplicates.values()) == [[rows[0]["path"], rows[0]["path"]]]
    np.testing.assert_array_equal(res.embeddings[0], res.embeddings[3])


def test_summary_counts_files_and_names_byte_identical_duplicates(tmp_path, shared_rows, mobilenet_config,
                                                                    seeded_cache):
    """cohen-78 and cohen-201 are the same file bytes under two names."""
    twins = [r for r in shared_rows if r["patient_id"] in ("cohen-78", "cohen-201")]
    rows = absolute_rows(twins + [r for r in shared_rows if r["source"] == "nih"][:2])
    res = extract(data=write_manifest(tmp_path / "twins.csv", rows), config=mobilenet_config,
                  cache_dir=seeded_cache, progress=False)
    names = sorted(os.path.basename(r["path"]) for r in rows[:2])
    assert len(twins) == 2 and res.summary().startswith(
        f"4 files: 3 embedded (3 new, 0 from cache), 1 byte-identical duplicate ({names[0]} = {names[1]})")
    again = extract(data=write_manifest(tmp_path / "twins.csv", rows), config=mobilenet_config,
                    cache_dir=seeded_cache, progress=False)
    assert again.summary().startswith("4 files: 3 embedded (0 new, 3 from cache), 1 byte-identical duplicate (")


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from xrayfx.models.config import model_config
    from xrayfx.extraction.pipeline import extract

    def die(chunks_done):
        if chunks_done == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    config = model_config("mobilenet", weights=sys.argv[3])
    extract(data=sys.argv[1], config=config, cache_dir=sys.argv[2], progress=False, chunk_rows=8, batch_size=8,
            on_chunk_done=die)
    """
)


def test_sigkill_between_chunks_then_rerun_equals_clean_run(forty_mixed, mobilenet_config, mobilenet_export,
                                                            tmp_path):
    from conftest import MOBILENET_WEIGHTS

    killed = seed_cache(tmp_path / "killed", mobilenet_export)
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(forty_mixed), str(killed), str(MOBILENET_WEIGHTS)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    (group,) = [p for p in (killed / "embeddings").iterdir() if p.is_dir()]
    done = np.asarray(EmbeddingCache(group).done[:])
    assert 0 < done.sum() < 40, "killed after the first and before the last done chunk"
    assert done.sum() == 16

    resumed = extract(data=forty_mixed, config=mobilenet_config, cache_dir=killed, progress=False, chunk_rows=8,
                      batch_size=8)
    assert resumed.n_new == 24 and resumed.n_cached == 16
    clean_cache = seed_cache(tmp_path / "clean", mobilenet_export)
    clean = extract(data=forty_mixed, config=mobilenet_config, cache_dir=clean_cache, progress=False, chunk_rows=8,
                    batch_size=8)
    assert resumed.ids == clean.ids
    np.testing.assert_array_equal(resumed.embeddings, clean.embeddings)


def test_second_concurrent_extract_fails_fast_naming_the_holder(forty_mixed, mobilenet_config, mobilenet_export,
                                                                tmp_path):
    from conftest import MOBILENET_WEIGHTS
    from xrayfx.extraction.pipeline import open_cache

    cache_dir = seed_cache(tmp_path / "cache", mobilenet_export)  # the same model, so the group matches it
    cache = open_cache(mobilenet_config, mobilenet_export, cache_dir)
    with cache.locked():
        proc = subprocess.run(
            [sys.executable, "-m", "xrayfx", "extract", "--model", "mobilenet", "--weights", str(MOBILENET_WEIGHTS),
             "--data", str(forty_mixed), "--cache-dir", str(cache_dir)],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
    assert proc.returncode == 1
    assert f"in use by process {os.getpid()}" in proc.stderr


def _bad_files(folder):
    folder.mkdir(parents=True)
    (folder / "empty.png").write_bytes(b"")
    good = (CXR / "images").rglob("*.png").__next__().read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "notes.jpg").write_text("this is not an image\n")
    (folder / "lfs.png").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 12345\n"
    )
    from PIL import Image

    Image.new("1", (9000, 9000)).save(folder / "bomb.png")  # 81 megapixels, a few KB on disk


def test_bad_inputs_are_skipped_listed_and_the_rest_goes_on(tmp_path, shared_rows, mobilenet_config,
                                                            seeded_cache):
    data = tmp_path / "data"
    _bad_files(data / "normal")
    good_rows = [r for r in shared_rows if r["source"] == "nih"][:3]
    for r in good_rows:
        (data / "normal" / os.path.basename(r["path"])).write_bytes((CXR / r["path"]).read_bytes())
    res = extract(data=data, config=mobilenet_config, cache_dir=seeded_cache, progress=False)
    assert res.embeddings.shape == (3, 256)
    reasons = {os.path.basename(s.path): s.reason for s in res.skipped}
    assert set(reasons) == {"empty.png", "truncated.png", "notes.jpg", "lfs.png", "bomb.png"}
    assert "LFS" in reasons["lfs.png"]
    text = res.skipped_file.read_text()
    assert res.skipped_file.name == "skipped.csv" and "bomb.png" in text and "logs/extract-" in str(res.skipped_file)
    with pytest.raises(SkippedInputsError, match="--strict"):
        extract(data=data, config=mobilenet_config, cache_dir=seeded_cache, progress=False, strict=True)


def test_missing_manifest_file_is_skipped_not_fatal(tmp_path, shared_rows, mobilenet_config, seeded_cache):
    rows = absolute_rows([r for r in shared_rows if r["source"] == "nih"][:2])
    rows.append({**rows[0], "path": str(tmp_path / "gone.png")})
    res = extract(data=write_manifest(tmp_path / "m.csv", rows), config=mobilenet_config,
                  cache_dir=seeded_cache, progress=False)
    assert len(res.ids) == 2 and res.skipped[0].reason.startswith("file not found")


def test_unexpected_errors_stop_the_run_and_keep_finished_chunks(forty_mixed, mobilenet_config, seeded_cache,
                                                                 monkeypatch):
    import xrayfx.data.images as images

    real = images.load_image
    calls = {"n": 0}

    def flaky(path, prep, *rest):
        calls["n"] += 1
        if calls["n"] > 20:
            raise RuntimeError("a bug, not a bad file")
        return real(path, prep, *rest)

    monkeypatch.setattr(images, "load_image", flaky)
    with pytest.raises(RuntimeError, match="a bug"):
        extract(data=forty_mixed, config=mobilenet_config, cache_dir=seeded_cache, progress=False,
                chunk_rows=8, workers=1)
    monkeypatch.setattr(images, "load_image", real)
    again = extract(data=forty_mixed, config=mobilenet_config, cache_dir=seeded_cache, progress=False,
                    chunk_rows=8)
    assert again.n_cached >= 16 and again.n_new + again.n_cached == 40
