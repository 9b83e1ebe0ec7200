"""Extraction on a Dask cluster: equality with the in-process run, worker SIGKILL, unreachable cache.

Every cluster here is a real ``distributed.LocalCluster`` of worker processes (or a
``dask worker`` process in its own mount namespace); onnxruntime runs at fp32.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CXR, ROOT, absolute_rows, seed_cache, write_manifest
from xrayfx.extraction.cache import EmbeddingCache
from xrayfx.exceptions import ClusterError, UsageError
from xrayfx.extraction.pipeline import extract

distributed = pytest.importorskip("distributed", reason="needs the `dist` extra: pip install 'xrayfx[dist]'")


# ---------------------------------------------------------------------------- fixtures


def _forty_rows(shared_rows):
    """20 Cohen COVID PNGs and 20 Mooney normal JPEGs, paths made absolute."""
    cohen = [r for r in shared_rows if r["source"] == "cohen"][:20]
    return absolute_rows(cohen + [r for r in shared_rows if r["source"] == "mooney"][:20])


@pytest.fixture
def forty(tmp_path, shared_rows):
    """40 real radiographs: 20 Cohen COVID PNGs and 20 Mooney normal JPEGs."""
    return write_manifest(tmp_path / "forty.csv", _forty_rows(shared_rows))


@pytest.fixture
def cache_dir(tmp_path, mobilenet_export):
    """Factory: a fresh cache folder that already holds the session's mobilenet export (no re-export)."""

    def make(name: str) -> Path:
        return seed_cache(tmp_path / name, mobilenet_export)

    return make


@pytest.fixture
def reference(forty, mobilenet_config, cache_dir):
    """The in-process run over the forty radiographs: the result every cluster run must equal."""
    return extract(data=forty, config=mobilenet_config, cache_dir=cache_dir("in-process"), progress=False,
                   chunk_rows=8, batch_size=8)


@pytest.fixture
def local_cluster():
    """Factory: a LocalCluster of single-threaded worker processes, closed after the test."""
    made = []

    def make(n_workers: int = 2, **config):
        import dask

        with dask.config.set(config):
            cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                               dashboard_address=None, silence_logs=50)
        client = distributed.Client(cluster)
        made.append((client, cluster))
        return client, cluster

    yield make
    for client, cluster in made:
        client.close()
        cluster.close()


def _valid_rows_match(group: Path, reference) -> int:
    """Every row the cache serves as valid has the reference's id and embedding; returns how many."""
    cache = EmbeddingCache(group)
    done = np.asarray(cache.done[:], dtype=bool)
    rows = np.flatnonzero(done)
    if rows.size == 0:
        return 0
    ids = np.asarray(cache.ids.oindex[rows, :])
    emb = np.asarray(cache.embeddings.oindex[rows, :])
    ref = dict(zip(reference.ids, reference.embeddings))
    for k in range(rows.size):
        image_id = bytes(ids[k]).hex()
        assert image_id in ref, f"row {rows[k]} is valid but holds an id no image has"
        np.testing.assert_array_equal(emb[k], ref[image_id])
    return int(rows.size)


# ---------------------------------------------------------------------------- options


@pytest.mark.parametrize("value, expected", [
    ("local:2", ("local", "", 2)),
    ("local:16", ("local", "", 16)),
    ("tcp://10.0.0.5:8786", ("tcp", "tcp://10.0.0.5:8786", 0)),
    ("tls://scheduler.example.org:8786", ("tcp", "tls://scheduler.example.org:8786", 0)),
])
def test_scheduler_values_parse(value, expected):
    from xrayfx.extraction.distributed import parse_scheduler

    spec = parse_scheduler(value)
    assert (spec.kind, spec.address, spec.n_workers) == expected


@pytest.mark.parametrize("value", ["local:0", "local:x", "local:", "tcp://host", "tcp://:8786", "10.0.0.5:8786",
                                   "http://10.0.0.5:8786", ""])
def test_bad_scheduler_values_say_what_is_expected(value):
    from xrayfx.extraction.distributed import parse_scheduler

    with pytest.raises(UsageError, match="expected"):
        parse_scheduler(value)


def test_cli_refuses_a_bad_scheduler_before_any_work(forty, tmp_path):
    from conftest import MOBILENET_WEIGHTS

    proc = subprocess.run(
        [sys.executable, "-m", "xrayfx", "extract", "--model", "mobilenet", "--weights", str(MOBILENET_WEIGHTS),
         "--data", str(forty), "--cache-dir", str(tmp_path / "never"), "--scheduler", "local:two"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "local:N" in proc.stderr and not (tmp_path / "never").exists()


def test_probe_names_a_missing_group_and_a_different_folder(tmp_path):
    from xrayfx.extraction.distributed import _probe_worker

    missing = _probe_worker(str(tmp_path / "nowhere"), ".tok", "abc", str(tmp_path / "m.onnx"), [])
    assert any("cannot see the cache group" in p for p in missing["problems"])
    assert any("cannot see the exported model" in p for p in missing["problems"])
    group = tmp_path / "group"
    group.mkdir()
    (group / "zarr.json").write_text("{}")
    (group / ".tok").write_text("someone else's token")
    other = _probe_worker(str(group), ".tok", "abc", str(group / "zarr.json"), [str(tmp_path / "gone.png")])
    assert any("different folder" in p for p in other["problems"])
    assert any("cannot read the image" in p for p in other["problems"])
    assert sorted(os.listdir(group)) == [".tok", "zarr.json"], "the write probe cleans up after itself"


def test_chunk_written_by_a_worker_stays_invalid_until_the_client_checks_and_marks_it(tmp_path):
    from xrayfx.exceptions import IntegrityError

    cache = EmbeddingCache.open_or_create(tmp_path, "g", dim=4, attrs={}, chunk_rows=4)
    (c0, c1) = cache.allocate_chunks(2)
    ids = [f"{k:064x}" for k in range(3)]
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    digest = EmbeddingCache(cache.path).write_chunk_data(c0, ids, emb)  # "the worker", its own handle
    assert len(cache.index(refresh=True)) == 0, "written but not marked: nothing is valid"
    cache.mark_done(c0, ids, digest=digest)
    np.testing.assert_array_equal(cache.read(ids), emb)

    other = EmbeddingCache(cache.path)
    digest1 = other.write_chunk_data(c1, ids, emb)
    other.write_chunk_data(c1, ids, emb + 1)  # someone else rewrites the chunk before the client checks it
    with pytest.raises(IntegrityError, match="does not hold what its writer reported"):
        cache.mark_done(c1, ids, digest=digest1)
    assert not np.asarray(cache.done[4:8]).any()


# ---------------------------------------------------------------------------- equality


def test_local2_on_real_radiographs_equals_the_in_process_run(tmp_path, shared_rows, mobilenet_config, cache_dir):
    rows = _forty_rows(shared_rows)
    good = (CXR / "images").rglob("*.png").__next__().read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    rows.insert(13, {**rows[0], "path": str(tmp_path / "truncated.png")})  # a bad file in the middle of a chunk
    manifest = write_manifest(tmp_path / "m.csv", rows)

    ref = extract(data=manifest, config=mobilenet_config, cache_dir=cache_dir("in-process"), progress=False,
                  chunk_rows=8, batch_size=8)
    seen = []
    dist = extract(data=manifest, config=mobilenet_config, cache_dir=cache_dir("dask"), progress=False,
                   chunk_rows=8, batch_size=8, scheduler="local:2", on_chunk_done=seen.append)
    assert dist.ids == ref.ids and len(dist.ids) == 40
    assert float(np.max(np.abs(dist.embeddings - ref.embeddings))) <= 1e-6
    assert dist.n_new == 40 and seen == list(range(1, 7))  # 41 inputs → 6 chunks; the bad one leaves a gap
    assert [(Path(s.path).name, s.reason) for s in dist.skipped] == [(Path(s.path).name, s.reason) for s in ref.skipped]
    assert dist.skipped and "truncated.png" in dist.skipped[0].path
    assert list(dist.labels) == list(ref.labels)
    group = dist.cache_path
    assert not [p for p in os.listdir(group) if p.startswith(".xrayfx-")], "probe and token files are removed"
    assert int(np.asarray(EmbeddingCache(group).done[:]).sum()) == 40

    again = extract(data=manifest, config=mobilenet_config, cache_dir=dist.cache_path.parents[1], progress=False,
                    chunk_rows=8, batch_size=8, scheduler="local:2")
    assert again.n_new == 0 and again.n_cached == 40
    np.testing.assert_array_equal(again.embeddings, dist.embeddings)


# ---------------------------------------------------------------------------- SIGKILL


def _kill_plugin(marker: Path, target_chunk: int):
    """A worker plugin that SIGKILLs its worker once, cluster-wide, in the middle of writing ``target_chunk``.

    It wraps ``EmbeddingCache._write_ids`` in the worker process only: the chunk's
    embeddings are already written, its ids not yet. Defined in a function so that
    cloudpickle ships the class by value (worker processes cannot import this test module).
    """
    from distributed import WorkerPlugin

    class KillWhileWriting(WorkerPlugin):
        def setup(self, worker):
            import signal

            from xrayfx.extraction.cache import EmbeddingCache

            real = EmbeddingCache._write_ids

            def write_ids(cache, r0, r1, ids):
                if r0 == target_chunk * cache.chunk_rows:
                    try:
                        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                    except FileExistsError:
                        fd = None  # killed once already: behave
                    if fd is not None:
                        os.write(fd, str(os.getpid()).encode())
                        os.close(fd)
                        os.kill(os.getpid(), signal.SIGKILL)
                real(cache, r0, r1, ids)

            EmbeddingCache._write_ids = write_ids

    return KillWhileWriting()


@pytest.mark.parametrize("dask_retries", [True, False], ids=["dask-reschedules", "client-gives-up"])
def test_sigkill_of_a_worker_while_it_writes_then_rerun_equals_a_clean_run(
        dask_retries, forty, mobilenet_config, reference, cache_dir, local_cluster, tmp_path):
    config = {} if dask_retries else {"distributed.scheduler.allowed-failures": 0}
    client, cluster = local_cluster(2, **config)
    marker = tmp_path / "killed.pid"
    client.register_plugin(_kill_plugin(marker, target_chunk=2), name="test-kill-while-writing")
    folder = cache_dir("killed")
    group = folder / "embeddings" / reference.cache_path.name
    checks: list[tuple[bool, int]] = []

    def every_valid_row_is_right(n_done: int) -> None:
        checks.append((marker.exists(), _valid_rows_match(group, reference)))

    run = dict(data=forty, config=mobilenet_config, cache_dir=folder, progress=False, chunk_rows=8, batch_size=8,
               scheduler=cluster.scheduler_address)
    if dask_retries:
        first = extract(**run, on_chunk_done=every_valid_row_is_right)
        assert first.n_new == 40
    else:
        with pytest.raises(ClusterError, match="worker died.*Rerun the same command to resume"):
            extract(**run, on_chunk_done=every_valid_row_is_right)

    # The worker really died by SIGKILL, mid-write of chunk 2.
    assert marker.exists(), "the kill hook never fired"
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    # After every chunk the client marked done, and once more now that the kill is over, only right rows
    # were valid. When Dask reschedules, the lost chunk is marked after the kill, so a check ran mid-run too.
    assert checks, "on_chunk_done ran"
    if dask_retries:
        assert any(after_kill for after_kill, _ in checks)
    n_valid = _valid_rows_match(group, reference)
    if not dask_retries:
        done = np.asarray(EmbeddingCache(group).done[:], dtype=bool)
        assert not done[16:24].any(), "the chunk being written when its worker died is not valid"
        assert n_valid < 40

    resumed = extract(**run)
    assert resumed.n_new == 40 - n_valid and resumed.n_cached == n_valid
    assert resumed.ids == reference.ids
    np.testing.assert_array_equal(resumed.embeddings, reference.embeddings)
    assert _valid_rows_match(group, reference) == 40


def test_workers_refuse_an_export_whose_hash_changed(forty, mobilenet_config, cache_dir, local_cluster):
    client, cluster = local_cluster(1)
    folder = cache_dir("tampered")
    onnx = mobilenet_config.onnx_path(folder)  # not a glob: other tests leave int8/fp16 variants beside it
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the weights, sidecar untouched
    onnx.write_bytes(bytes(data))
    with pytest.raises(ClusterError, match="setting up the extractor on the Dask workers failed.*sha256"):
        extract(data=forty, config=mobilenet_config, cache_dir=folder, progress=False,
                scheduler=cluster.scheduler_address)
    left = client.run(lambda dask_worker: sorted(n for n in dask_worker.plugins if n.startswith("xrayfx-")))
    assert not any(left.values()), f"the run's plugin is removed from a shared cluster: {left}"


# ---------------------------------------------------------------------------- reachability


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode == 0:
        return True
    return subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -m` (a private mount namespace) for a worker")
def test_a_worker_that_cannot_see_the_cache_is_named_and_nothing_is_written(
        forty, mobilenet_config, cache_dir, local_cluster):
    client, cluster = local_cluster(1)
    folder = cache_dir("shared-only-here")
    # A second worker whose view of the cache folder is an empty tmpfs: another machine without the share.
    flags = "-m" if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0 else "-Urm"
    script = (f"mount -t tmpfs tmpfs '{folder}' && exec '{sys.executable}' -m distributed.cli.dask_worker "
              f"'{cluster.scheduler_address}' --nthreads 1 --no-dashboard --no-nanny --name no-share")
    worker = subprocess.Popen(["unshare", flags, "sh", "-c", script], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        client.wait_for_workers(2, timeout=60)
        with pytest.raises(ClusterError) as err:
            extract(data=forty, config=mobilenet_config, cache_dir=folder, progress=False, chunk_rows=8,
                    scheduler=cluster.scheduler_address)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    msg = str(err.value)
    assert "1 of 2 Dask worker(s)" in msg and "worker no-share" in msg
    assert "cannot see the cache group" in msg and "shared file system" in msg
    (group,) = [p for p in (folder / "embeddings").iterdir() if p.is_dir()]  # not the .lock file beside it
    cache = EmbeddingCache(group)
    assert cache.done.shape == (0,), "nothing was allocated or written"
    assert not [p for p in os.listdir(group) if p.startswith(".xrayfx-")]
    with cache.locked():  # the client released its lock
        pass
