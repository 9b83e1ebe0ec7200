"""Scale-out extraction on a Dask cluster: ``--scheduler tcp://HOST:PORT`` or ``--scheduler local:N``.

The client (the process that runs ``xrayfx extract``) holds the cache lock for
the whole run and does the bookkeeping; Dask workers do the work:

1. The client checks that every worker sees the cache group (and the exported
   ONNX file and the images) at the same absolute path and can write into it,
   and fails with :class:`~xrayfx.exceptions.ClusterError` naming the workers
   that cannot.
2. A worker plugin builds one onnxruntime session per worker process, once
   (:class:`ExtractorPlugin`, registered with ``Client.register_plugin``).
3. The client pre-allocates whole zarr chunks and submits batches of one or
   more whole chunks, never more than a small window at a time, so its memory
   stays flat whatever the data set size.
4. A worker decodes and embeds its batch, writes the embeddings and then the
   ids of each of its chunks straight into the zarr group (no other process
   writes those chunks) and returns only small metadata: chunk index, ids,
   skips and a sha256 of what it wrote. Embeddings never travel to the client.
5. The client reads each chunk back, checks the digest, and only then writes
   that chunk's done flags (the done array's chunks line up with the
   embedding chunks). A worker or client killed at any point therefore leaves
   no unfinished row that reads as valid; a rerun recomputes only the rest.

Needs the ``dist`` extra (``pip install 'xrayfx[dist]'``, i.e. ``dask[distributed]``).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from xrayfx import __version__
from xrayfx.data import images
from xrayfx.extraction.cache import EmbeddingCache
from xrayfx.extraction.options import ExtractionOptions
from xrayfx.data.stream import Skip
from xrayfx.exceptions import ClusterError, ImageDecodeError, IntegrityError, RuntimeSetupError, UsageError, XrayfxError
from xrayfx.progress import ImageProgress
from xrayfx.data.manifest import ImageRecord
from xrayfx.data.preprocessing import Preprocessing
from xrayfx.models.config import ExportedModel, ModelConfig
from xrayfx.inference.runtimes import make_extractor

if TYPE_CHECKING:
    from distributed import Client  # dask stays lazy: imported by the functions that use it

__all__ = [
    "BatchResult",
    "ChunkWritten",
    "ExtractorPlugin",
    "SchedulerSpec",
    "check_workers",
    "dask_client",
    "embed_batch",
    "extract_missing_distributed",
    "parse_scheduler",
]

log = logging.getLogger(__name__)

#: Seconds to wait for a scheduler to answer, and for a cluster to have a worker.
CONNECT_TIMEOUT_S = 30.0
#: Seconds an aborted run waits for batches already running on a remote cluster to stop
#: before it releases the cache lock (a running Dask task cannot be interrupted).
STOP_TIMEOUT_S = 300.0
_INSTALL_HINT = "install the `dist` extra: pip install 'xrayfx[dist]' (dask[distributed])"


# ---------------------------------------------------------------------------- scheduler


@dataclass(frozen=True)
class SchedulerSpec:
    """A parsed ``--scheduler`` value: an existing cluster's address, or N local worker processes."""

    kind: str  # "tcp" or "local"
    address: str = ""
    n_workers: int = 0

    def __str__(self) -> str:
        return self.address if self.kind == "tcp" else f"local:{self.n_workers}"


def parse_scheduler(value: str) -> SchedulerSpec:
    """Parse ``tcp://HOST:PORT`` (also ``tls://``) or ``local:N`` (N ≥ 1 worker processes)."""
    text = (value or "").strip()
    if text.startswith("local:"):
        n = text.removeprefix("local:")
        if n.isdigit() and int(n) >= 1:
            return SchedulerSpec("local", n_workers=int(n))
        raise UsageError(
            f"--scheduler {value!r}: expected local:N with N a whole number of worker processes ≥ 1 (e.g. local:2), "
            f"got N = {n!r}"
        )
    for scheme in ("tcp://", "tls://"):
        if text.startswith(scheme):
            host, _, port = text.removeprefix(scheme).rpartition(":")
            if host and port.isdigit():
                return SchedulerSpec("tcp", address=text)
            raise UsageError(
                f"--scheduler {value!r}: expected {scheme}HOST:PORT with a numeric port (e.g. {scheme}10.0.0.5:8786)"
            )
    raise UsageError(
        f"--scheduler {value!r} is not understood: expected tcp://HOST:PORT (a running Dask scheduler) "
        "or local:N (start N local worker processes), e.g. --scheduler local:2"
    )


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise RuntimeSetupError(
            f"--scheduler needs dask.distributed, which is not installed; {_INSTALL_HINT}"
        ) from None
    return distributed


@contextmanager
def dask_client(spec: SchedulerSpec | str, timeout: float = CONNECT_TIMEOUT_S) -> Iterator["Client"]:
    """A connected ``distributed.Client``; for ``local:N`` also the ``LocalCluster`` behind it.

    ``local:N`` starts N worker processes with one thread each (Dask also sets
    OMP/MKL/OpenBLAS threads to 1 in them) and stops them on exit. ``tcp://``
    connects to a running scheduler, waits for at least one worker, and leaves
    the cluster running on exit.
    """
    spec = parse_scheduler(spec) if isinstance(spec, str) else spec
    distributed = _import_distributed()
    if spec.kind == "local":
        cluster = distributed.LocalCluster(
            n_workers=spec.n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = distributed.Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
        return
    try:
        client = distributed.Client(spec.address, timeout=timeout)
    except OSError as exc:  # refused connections and connect timeouts are both OSError
        raise ClusterError(
            f"could not reach the Dask scheduler at {spec.address} within {timeout:.0f} s ({exc}); "
            "check the address and that `dask scheduler` is running there, or use --scheduler local:N"
        ) from None
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise ClusterError(
                f"the Dask scheduler at {spec.address} has no workers after {timeout:.0f} s; "
                f"start some (`dask worker {spec.address}`) and rerun"
            ) from None
        yield client
    finally:
        client.close()


def _cluster_threads(client: "Client") -> dict[str, int]:
    """Worker address → thread count, as the scheduler reports them."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return {addr: int(info.get("nthreads", 1)) for addr, info in workers.items()}


# ---------------------------------------------------------------------------- reachability


def _probe_worker(
    group_path: str, token_name: str, token: str, onnx_path: str, image_paths: Sequence[str]
) -> dict[str, Any]:
    """Run on every worker: can it see and write the cache group, the ONNX file and the images?"""
    problems: list[str] = []
    zarr_json = os.path.join(group_path, "zarr.json")
    if not os.path.isfile(zarr_json):
        problems.append(f"cannot see the cache group {zarr_json}")
    else:
        try:
            with open(os.path.join(group_path, token_name), encoding="ascii") as f:
                seen = f.read()
        except OSError:
            seen = ""
        if seen != token:
            problems.append(f"sees a different folder at {group_path} (not the client's: a local disk, not shared)")
        probe = os.path.join(group_path, f".xrayfx-probe-{uuid.uuid4().hex}")
        try:
            fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            problems.append(f"cannot write into {group_path} ({exc.strerror})")
    if not os.path.isfile(onnx_path):
        problems.append(f"cannot see the exported model {onnx_path}")
    for p in image_paths:
        if not os.access(p, os.R_OK):
            problems.append(f"cannot read the image {p}")
            break
    return {"problems": problems, "host": socket.gethostname(), "pid": os.getpid(),
            "versions": _runtime_versions()}


def _runtime_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"xrayfx": __version__}
    for dist in ("onnxruntime", "onnxruntime-gpu", "zarr"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def check_workers(
    client: "Client", group_path: str | Path, onnx_path: str | Path, image_paths: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """Fail unless every worker sees the cache group (and can write into it), the model and the images.

    The client drops a random token file into the group; a worker passes only if
    it reads the same token at the same absolute path, so a worker that has its
    own local folder of that name is caught too. Workers must also run the same
    xrayfx, onnxruntime and zarr versions as the client, or the embeddings would
    not be the ones the cache group promises. Returns each worker's probe report.
    """
    group_path = os.path.abspath(group_path)
    token_name = f".xrayfx-token-{uuid.uuid4().hex}"
    token = uuid.uuid4().hex
    token_path = Path(group_path) / token_name
    token_path.write_text(token, encoding="ascii")
    try:
        results = client.run(
            _probe_worker, group_path, token_name, token, os.path.abspath(onnx_path), list(image_paths),
            on_error="return",
        )
    finally:
        token_path.unlink(missing_ok=True)
    ours = _runtime_versions()
    names = {addr: str(info.get("name", "")) for addr, info in client.scheduler_info(n_workers=-1)["workers"].items()}
    bad: dict[str, str] = {}
    for addr, res in sorted(results.items()):
        if isinstance(res, BaseException):
            bad[addr] = (f"the check itself failed there ({type(res).__name__}: {res}); "
                         f"is xrayfx {ours['xrayfx']} installed on that worker?")
        elif res["problems"]:
            bad[addr] = f"on {res['host']}: " + "; ".join(res["problems"])
        elif res["versions"] != ours:
            bad[addr] = f"on {res['host']}: runs {res['versions']}, the client runs {ours}"
    if bad:
        lines = "\n".join(f"  {addr} (worker {names.get(addr, '?')}): {why}" for addr, why in bad.items())
        raise ClusterError(
            f"{len(bad)} of {len(results)} Dask worker(s) cannot take part in extracting into {group_path}:\n{lines}\n"
            "Every worker must see the cache folder (and the data) at the same absolute path on a shared file "
            "system, with write access, and run the same xrayfx/onnxruntime/zarr versions. Fix: mount the shared "
            "folder on every worker node and pass --cache-dir on it, or run without --scheduler."
        )
    return {addr: res for addr, res in results.items()}


# ---------------------------------------------------------------------------- worker side


class _ExtractorPluginBody:
    """Builds the worker process's one inference session, once, when the worker joins.

    Registered by the client with ``Client.register_plugin`` under a run-unique
    name; workers that join (or are restarted) later get it too. The ONNX file is
    re-hashed on the worker and must match the client's export.
    """

    def __init__(self, exported: ExportedModel, options: ExtractionOptions, intra_op_threads: int,
                 prep: Preprocessing):
        self.exported = exported
        self.options = options  # model_path absolute, so every worker finds the same variant
        self.intra_op_threads = intra_op_threads
        self.prep = prep
        self.extractor: Any = None

    def setup(self, worker: Any) -> None:
        """Create the session (verifying the ONNX file's sha256)."""
        o = self.options
        extractor = make_extractor(self.exported, o.runtime, o.precision, o.device, self.intra_op_threads,
                                   model_path=o.model_path)
        expected = self.exported.sidecar["onnx_sha256"]
        # The session verified its file against its own sidecar; the fp32 export must also be the client's.
        same_file = Path(getattr(extractor, "path", "")) == self.exported.path
        got = getattr(extractor, "sidecar", {}).get("onnx_sha256", expected) if same_file else expected
        if got != expected:
            raise IntegrityError(
                f"worker {worker.address} sees an export at {self.exported.path} with sha256 {got[:16]}…, "
                f"the client's is {expected[:16]}…; the workers must share the client's cache folder"
            )
        self.extractor = extractor

    def teardown(self, worker: Any) -> None:
        """Drop the session."""
        self.extractor = None


@lru_cache(maxsize=1)
def _extractor_plugin_class() -> type:
    """``ExtractorPlugin``: the body above on Dask's ``WorkerPlugin``, made on first use so dask stays lazy."""
    from distributed import WorkerPlugin

    return type("ExtractorPlugin", (_ExtractorPluginBody, WorkerPlugin), {"__module__": __name__})


def __getattr__(name: str) -> Any:
    # ``ExtractorPlugin`` needs dask's base class; importing this module must not import dask.
    if name == "ExtractorPlugin":
        return _extractor_plugin_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class ChunkWritten:
    """One chunk a worker wrote (rows still invalid): its ids, in row order, and the sha256 written."""

    chunk: int
    ids: list[str]
    digest: str


@dataclass
class BatchResult:
    """What a worker sends back for one batch: metadata only, never embeddings."""

    chunks: list[ChunkWritten] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    n_images: int = 0
    worker: str = ""
    seconds: float = 0.0


def embed_batch(
    plugin_name: str, group_path: str, jobs: list[tuple[int, list[tuple[str, str]]]], batch_size: int
) -> BatchResult:
    """Worker task: decode, embed and write whole chunks; return metadata only.

    ``jobs`` pairs each chunk index (allocated by the client, owned by this task
    alone) with its ``(path, image_id)`` records. Undecodable files become skips
    and the chunk's rows are packed without them; a chunk with no decodable
    image is left untouched. Rows stay invalid until the client marks them done.
    """
    from distributed import get_worker

    t0 = time.perf_counter()
    worker = get_worker()
    plugin: Any = worker.plugins.get(plugin_name)
    if plugin is None or getattr(plugin, "extractor", None) is None:
        raise ClusterError(
            f"worker {worker.address} has no xrayfx extractor ({plugin_name}); its plugin setup failed or was "
            "removed — see that worker's log"
        )
    cache = EmbeddingCache(group_path)
    out = BatchResult(worker=worker.address)
    for chunk, records in jobs:
        ids: list[str] = []
        pixels: list[np.ndarray] = []
        for path, image_id in records:
            out.n_images += 1
            try:
                pixels.append(images.load_image(path, plugin.prep, plugin.options.keep_degenerate))
                ids.append(image_id)
            except ImageDecodeError as exc:
                out.skips.append(Skip(path, exc.reason, image_id))
        if not ids:
            continue
        stack = np.stack(pixels)
        emb = np.concatenate([plugin.extractor(stack[i:i + batch_size]) for i in range(0, len(stack), batch_size)])
        out.chunks.append(ChunkWritten(chunk, ids, cache.write_chunk_data(chunk, ids, emb)))
    out.seconds = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------- client side


def _batches(
    todo: Sequence[ImageRecord], chunks: Sequence[int], chunk_rows: int, chunks_per_batch: int
) -> Iterator[list[tuple[int, list[tuple[str, str]]]]]:
    """Lazily cut the records into batches of whole chunks (absolute paths, so any worker can read them)."""
    jobs: list[tuple[int, list[tuple[str, str]]]] = []
    for k, chunk in enumerate(chunks):
        part = todo[k * chunk_rows:(k + 1) * chunk_rows]
        jobs.append((chunk, [(os.path.abspath(r.path), r.image_id or "") for r in part]))
        if len(jobs) == chunks_per_batch:
            yield jobs
            jobs = []
    if jobs:
        yield jobs


def extract_missing_distributed(
    todo: list[ImageRecord],
    exported: ExportedModel,
    cache: EmbeddingCache,
    config: ModelConfig,
    options: ExtractionOptions,
    *,
    on_chunk_done: Callable[[int], None] | None = None,
    intra_op_threads: int = 1,
    chunks_per_batch: int | None = None,
    max_in_flight: int | None = None,
    connect_timeout: float = CONNECT_TIMEOUT_S,
) -> tuple[list[Skip], int]:
    """Embed ``todo`` on a Dask cluster into ``cache``; the caller holds the cache lock.

    ``options`` are the run's :class:`~xrayfx.extraction.options.ExtractionOptions`;
    its ``scheduler`` must be set. ``options.model_path`` names a precision
    variant (int8) exactly as for the in-process path.
    Returns ``(skips, n_new)`` like the in-process path. ``intra_op_threads`` is
    the onnxruntime thread count of each worker's session (1: one core per Dask
    worker thread, as Dask budgets it; 0: onnxruntime's default). A batch is
    ``chunks_per_batch`` whole chunks (default: enough chunks for one
    ``batch_size``); at most ``max_in_flight`` batches (default: twice the
    cluster's threads) are submitted at once. ``on_chunk_done(n)`` is called
    after each chunk is marked done, with the number done so far.
    """
    if not options.scheduler:
        raise UsageError("extract_missing_distributed needs options.scheduler (tcp://HOST:PORT or local:N); got none")
    spec = parse_scheduler(options.scheduler)
    batch_size = options.batch_size
    if intra_op_threads < 0:
        raise UsageError(f"intra_op_threads must be 0 (onnxruntime's default) or more, got {intra_op_threads}")
    per_batch = chunks_per_batch if chunks_per_batch is not None else max(1, math.ceil(batch_size / cache.chunk_rows))
    if per_batch < 1:
        raise UsageError(f"chunks_per_batch must be at least 1, got {chunks_per_batch}")
    if max_in_flight is not None and max_in_flight < 1:
        raise UsageError(f"max_in_flight must be at least 1, got {max_in_flight}")
    if not todo:
        return [], 0
    distributed = _import_distributed()
    group_path = os.path.abspath(cache.path)
    exported = replace(exported, path=Path(os.path.abspath(exported.path)))
    model_file = os.path.abspath(options.model_path) if options.model_path is not None else None
    options = replace(options, model_path=model_file)
    readable = [os.path.abspath(r.path) for r in (todo[0], todo[-1]) if os.access(r.path, os.R_OK)]

    with dask_client(spec, timeout=connect_timeout) as client:
        threads = _cluster_threads(client)
        check_workers(client, group_path, model_file or exported.path, readable)
        plugin_name = f"xrayfx-extractor-{uuid.uuid4().hex[:12]}"
        plugin = _extractor_plugin_class()(exported, options, intra_op_threads, config.preprocessing)
        try:
            try:
                client.register_plugin(plugin, name=plugin_name)
            except XrayfxError as exc:
                raise ClusterError(f"setting up the extractor on the Dask workers failed: {exc}") from exc
            n_chunks = math.ceil(len(todo) / cache.chunk_rows)
            chunks = cache.allocate_chunks(n_chunks)
            window = max_in_flight or max(2, 2 * sum(threads.values()))
            label = f"extract {config.spec.name} on {spec} ({len(threads)} workers, {sum(threads.values())} threads)"
            with ImageProgress(options.progress, len(todo), label, batches=math.ceil(n_chunks / per_batch)) as bar:
                return _run_batches(
                    client, distributed, spec, plugin_name, group_path, cache,
                    _batches(todo, chunks, cache.chunk_rows, per_batch), batch_size, window, bar, on_chunk_done,
                )
        finally:
            if spec.kind == "tcp":  # a local cluster goes away with its plugins
                _unregister_plugin(client, plugin_name)


def _unregister_plugin(client: "Client", name: str) -> None:
    """Remove this run's worker plugin from a shared cluster; a failure here only warrants a warning."""
    try:
        client.unregister_worker_plugin(name)
    except (ValueError, KeyError, OSError) as exc:
        log.warning("could not remove the worker plugin %s from the cluster: %s", name, exc)


def _run_batches(
    client: "Client",
    distributed: Any,
    spec: SchedulerSpec,
    plugin_name: str,
    group_path: str,
    cache: EmbeddingCache,
    batches: Iterator[list[tuple[int, list[tuple[str, str]]]]],
    batch_size: int,
    window: int,
    bar: ImageProgress,
    on_chunk_done: Callable[[int], None] | None,
) -> tuple[list[Skip], int]:
    """Submit batches through a bounded window, mark chunks done as they come back."""
    pending: dict[str, tuple[Any, list[int]]] = {}  # future key → (future, its chunks)
    ac = distributed.as_completed()
    skips: list[Skip] = []
    n_new = 0
    chunks_done = 0
    first_error: BaseException | None = None

    def submit_next() -> None:
        jobs = next(batches, None)
        if jobs is None:
            return
        key = f"xrayfx-batch-{jobs[0][0]}-{uuid.uuid4().hex[:8]}"
        fut = client.submit(embed_batch, plugin_name, group_path, jobs, batch_size, key=key, pure=False)
        pending[key] = (fut, [c for c, _ in jobs])
        ac.add(fut)

    try:
        for _ in range(window):
            submit_next()
        for fut in ac:
            _, batch_chunks = pending.pop(fut.key)
            try:
                result: BatchResult = fut.result()
                for w in result.chunks:
                    cache.mark_done(w.chunk, w.ids, digest=w.digest)
                    n_new += len(w.ids)
                    chunks_done += 1
                    if on_chunk_done:
                        on_chunk_done(chunks_done)
                skips += result.skips
                bar.advance(result.n_images, batches=1)
            except distributed.KilledWorker:
                first_error = first_error or ClusterError(
                    f"a Dask worker died (killed, or out of memory) while embedding chunks {batch_chunks} and Dask "
                    "gave up on the batch; every chunk finished before is kept and none of the lost one reads as "
                    "valid. Rerun the same command to resume; if it recurs, give the workers more memory or lower "
                    "--batch-size"
                )
            except Exception as exc:  # any other task or bookkeeping failure: stop submitting, drain, re-raise
                first_error = first_error or exc
            fut.release()
            if first_error is None:
                submit_next()
    finally:
        if pending:  # interrupted: don't leave writers behind once the lock is released
            client.cancel([f for f, _ in pending.values()])
            if spec.kind == "tcp":
                _wait_until_stopped(client, set(pending))
    if first_error is not None:
        raise first_error
    return skips, n_new


def _running_keys(keys: set[str], dask_worker: Any = None) -> list[str]:
    return [ts.key for ts in dask_worker.state.all_running_tasks if ts.key in keys]


def _wait_until_stopped(client: "Client", keys: set[str], timeout: float = STOP_TIMEOUT_S) -> None:
    """Wait until no worker still runs one of ``keys`` (cancelled tasks finish their current call)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = client.run(_running_keys, keys, on_error="ignore")
        if not any(running.values()):
            return
        time.sleep(0.5)
    log.warning("batches %s were still running on the cluster after %.0f s; a rerun may race with them",
                sorted(keys), timeout)
