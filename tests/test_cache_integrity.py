"""The cache's integrity chain: the model a group was written with, damaged chunks, concurrent exports."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import MOBILENET_WEIGHTS, ROOT, absolute_rows, run_cli_inprocess, seed_cache, write_manifest
from xrayfx.extraction.cache import EmbeddingCache
from xrayfx.exceptions import CacheError, CacheRepairWarning, IntegrityError
from xrayfx.extraction.pipeline import extract


@pytest.fixture
def twelve(tmp_path, shared_rows):
    """12 real radiographs (6 Cohen COVID, 6 NIH normal)."""
    rows = [r for r in shared_rows if r["source"] == "cohen"][:6] + [r for r in shared_rows if r["source"] == "nih"][:6]
    return write_manifest(tmp_path / "twelve.csv", absolute_rows(rows))


@pytest.fixture
def cache_dir(tmp_path, mobilenet_export):
    """A fresh cache holding the session's mobilenet export (copied: no second export)."""
    return seed_cache(tmp_path / "cache", mobilenet_export)


def _extract(data, config, cache_dir, **kw):
    return extract(data=data, config=config, cache_dir=cache_dir, progress=False, chunk_rows=4, **kw)


# ------------------------------------------------------------------------------ the model of a group


def test_a_replaced_onnx_with_its_sidecar_is_refused_for_the_old_group(twelve, mobilenet_config, cache_dir, capsys):
    import onnx

    from xrayfx.util import read_json, sha256_file, atomic_write_json

    first = _extract(twelve, mobilenet_config, cache_dir)
    onnx_file = cache_dir / "models" / f"{mobilenet_config.stem}.onnx"
    model = onnx.load(str(onnx_file))
    model.doc_string = "another export of the same configuration"
    onnx.save(model, str(onnx_file))
    side = onnx_file.with_suffix(".json")
    atomic_write_json(side, {**read_json(side), "onnx_sha256": sha256_file(onnx_file)})  # a consistent pair

    with pytest.raises(IntegrityError, match="remove the group") as info:
        _extract(twelve, mobilenet_config, cache_dir)
    assert str(first.cache_path) in str(info.value) and "re-exported or replaced" in str(info.value)
    code, _, err = run_cli_inprocess(["extract", "--model", "mobilenet", "--weights", str(MOBILENET_WEIGHTS),
                                      "--data", str(twelve), "--cache-dir", str(cache_dir)], capsys)
    assert code == 1 and "remove the group" in err and "Traceback" not in err
    assert len(EmbeddingCache(first.cache_path)) == 12  # nothing was written into the old group


# ------------------------------------------------------------------------------ damaged chunks


def _damage(group):
    """Chunk 0: truncated file (crc32c mismatch); chunk 1: embeddings file deleted; chunk 2: NaNs written."""
    emb = group / "embeddings" / "c"
    data = (emb / "0" / "0").read_bytes()
    (emb / "0" / "0").write_bytes(data[: len(data) // 2])
    (emb / "1" / "0").unlink()
    cache = EmbeddingCache(group)
    block = np.asarray(cache.embeddings[8:12])
    block[1] = np.nan
    cache.embeddings[8:12] = block  # a chunk file with a valid checksum holding NaN in a done row


def test_damaged_chunks_are_found_reported_and_recomputed_by_extract(twelve, mobilenet_config, cache_dir, capsys):
    clean = _extract(twelve, mobilenet_config, cache_dir)
    _damage(clean.cache_path)

    with pytest.raises(CacheError, match="cache verify --repair"):  # never a zarr traceback, never NaN rows
        EmbeddingCache(clean.cache_path).read(clean.ids)
    code, out, err = run_cli_inprocess(["cache", "verify", "--cache-dir", str(cache_dir)], capsys)
    assert code == 1 and out.count("damaged:") == 3 and "--repair" in err
    assert "chunk 0" in out and "cannot be decoded" in out and "embeddings/c/1/0 is missing" in out
    assert "NaN" in out

    with pytest.warns(CacheRepairWarning) as caught:
        again = _extract(twelve, mobilenet_config, cache_dir)
    messages = " ".join(str(w.message) for w in caught)
    assert "chunk 0" in messages and "chunk 1" in messages and "chunk 2" in messages
    assert (again.n_new, again.n_cached) == (12, 0)  # the missing chunk is not counted "from cache"
    assert np.isfinite(again.embeddings).all()
    np.testing.assert_allclose(again.embeddings, clean.embeddings, rtol=1e-5, atol=1e-6)
    code, out, _ = run_cli_inprocess(["cache", "verify", "--cache-dir", str(cache_dir)], capsys)
    assert code == 0 and ": ok" in out


def test_cache_verify_repair_marks_rows_not_done_and_extract_recomputes_them(twelve, mobilenet_config, cache_dir,
                                                                            capsys):
    clean = _extract(twelve, mobilenet_config, cache_dir)
    _damage(clean.cache_path)
    group = clean.cache_path.name
    code, out, _ = run_cli_inprocess(["cache", "verify", "--repair", "--cache-dir", str(cache_dir), group], capsys)
    assert code == 0 and "repaired: 3 chunk(s) (12 row(s)) marked not done" in out
    assert len(EmbeddingCache(clean.cache_path)) == 0
    code, out, _ = run_cli_inprocess(["cache", "verify", "--cache-dir", str(cache_dir), "--model", "mobilenet"], capsys)
    assert code == 0 and ": ok" in out
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheRepairWarning)  # repaired already: nothing left to warn about
        again = _extract(twelve, mobilenet_config, cache_dir)
    assert again.n_new == 12 and np.isfinite(again.embeddings).all()


def test_corrupt_done_flags_and_ids_are_recomputed_not_a_traceback(twelve, mobilenet_config, cache_dir, capsys):
    clean = _extract(twelve, mobilenet_config, cache_dir)
    (clean.cache_path / "done" / "c" / "1").write_bytes(b"\x01\x01")  # shorter than its checksum
    (clean.cache_path / "ids" / "c" / "2" / "0").unlink()
    with pytest.warns(CacheRepairWarning):
        again = _extract(twelve, mobilenet_config, cache_dir)
    assert again.n_new == 8 and again.n_cached == 4
    np.testing.assert_allclose(again.embeddings, clean.embeddings, rtol=1e-5, atol=1e-6)
    code, out, _ = run_cli_inprocess(["cache", "verify", "--cache-dir", str(cache_dir)], capsys)
    assert code == 0


def test_cache_verify_names_unknown_groups(cache_dir, capsys):
    code, _, err = run_cli_inprocess(["cache", "verify", "--cache-dir", str(cache_dir), "no-such-group"], capsys)
    assert code == 2 and "no cache group 'no-such-group'" in err


# ------------------------------------------------------------------------------ concurrent exports


def test_two_extracts_on_an_empty_cache_share_one_export(tmp_path, shared_rows):
    """Both start together on an empty cache: one exports, the other waits for it (no 'died … exit code 0')."""
    data = write_manifest(tmp_path / "two.csv", absolute_rows([r for r in shared_rows if r["source"] == "nih"][:2]))
    cmd = [sys.executable, "-m", "xrayfx", "extract", "--model", "mobilenet", "--weights", "none",
           "--data", str(data), "--cache-dir", str(tmp_path / "cache")]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert "died" not in err
        # the loser of the cache lock may fail fast with the lock message; never an export error
        assert p.returncode == 0 or "is in use by process" in err, err
    assert any(p.returncode == 0 for p in procs)
    assert len(list((tmp_path / "cache" / "models").glob("*.onnx"))) == 1
