"""The zarr 3 embedding cache: content-addressed, chunk-aligned, resumable.

One group per (model fingerprint, runtime, precision) under ``<cache>/embeddings/``.
Arrays, all chunked by ``chunk_rows`` rows so that their chunks line up one to one:

- ``embeddings`` float32 (rows, D)
- ``ids`` uint8 (rows, 32): the sha256 of each image's bytes
- ``done`` bool (rows,): a row is valid only when its done flag is set

zarr 3.1 reads a never-written chunk as its fill value and cannot be told to
refuse that, so the done mask is what makes a row valid: a chunk's done flags
are written only after its embeddings and ids are fully written. Every write
covers whole chunks that hold no valid row yet, each chunk has one writer, and
zarr's local store replaces chunk files atomically, so a process killed at any
point leaves no unfinished row that reads as valid. A crc32c checksum on every
chunk catches later corruption, and ids are re-checked on every read.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from xrayfx.exceptions import CacheError, CacheLockedError, IntegrityError
from xrayfx.util import library_versions

DEFAULT_CHUNK_ROWS = 32
ID_BYTES = 32
#: What zarr's codecs raise for a damaged chunk file (crc32c mismatch, truncated bytes) or a failed read.
CHUNK_READ_ERRORS = (ValueError, OSError, EOFError)


def group_name(stem: str, runtime: str = "onnxruntime", precision: str = "fp32") -> str:
    """The folder name of a cache group."""
    return f"{stem}-{runtime}-{precision}"


@dataclass
class LockInfo:
    pid: int
    host: str
    command: str


class EmbeddingCache:
    """Embeddings of one model configuration, keyed by image content hash."""

    def __init__(self, path: str | Path, read_only: bool = False):
        import zarr

        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise CacheError(f"{self.path} is not an xrayfx cache group (no zarr.json)")
        self.group = zarr.open_group(store=str(self.path), mode="r" if read_only else "r+")
        self.embeddings = self.group["embeddings"]
        self.ids = self.group["ids"]
        self.done = self.group["done"]
        self.chunk_rows = int(self.embeddings.chunks[0])
        self.dim = int(self.embeddings.shape[1])
        self._index: dict[str, int] | None = None
        self.unreadable_done_chunks: list[int] = []  # chunks whose done flags could not be decoded

    # ------------------------------------------------------------------ creation
    @classmethod
    def open_or_create(
        cls,
        cache_dir: str | Path,
        name: str,
        dim: int,
        attrs: dict[str, Any],
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> "EmbeddingCache":
        """Open the group ``<cache_dir>/embeddings/<name>``, creating it if needed."""
        path = Path(cache_dir) / "embeddings" / name
        if (path / "zarr.json").is_file():
            cache = cls(path)
            if cache.dim != dim:
                raise CacheError(f"{path} holds {cache.dim}-d embeddings, expected {dim}; delete it to rebuild")
            return cache
        return cls._create(path, dim, attrs, chunk_rows)

    @classmethod
    def _create(cls, path: Path, dim: int, attrs: dict[str, Any], chunk_rows: int) -> "EmbeddingCache":
        import zarr
        from zarr.codecs import Crc32cCodec

        tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
        shutil.rmtree(tmp, ignore_errors=True)
        group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
        common = dict(compressors=[Crc32cCodec()], config={"write_empty_chunks": True})
        group.create_array("embeddings", shape=(0, dim), chunks=(chunk_rows, dim), dtype="float32",
                           fill_value=np.nan, **common)
        group.create_array("ids", shape=(0, ID_BYTES), chunks=(chunk_rows, ID_BYTES), dtype="uint8",
                           fill_value=0, **common)
        group.create_array("done", shape=(0,), chunks=(chunk_rows,), dtype="bool", fill_value=False, **common)
        group.attrs.update({**attrs, "xrayfx_cache_version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "versions": library_versions()})
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, path)  # atomic: a half-created group is never visible
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process created it first
            if not (path / "zarr.json").is_file():
                raise
        return cls(path)

    def check_source(self, onnx_sha256: str | None, what: str = "ONNX model") -> None:
        """Refuse a group written by another model than the one in use (``onnx_sha256`` attribute).

        Called on every open for reading or writing: an ONNX file replaced together
        with its sidecar would otherwise mix two models' embeddings in one group.
        """
        recorded = self.group.attrs.get("onnx_sha256")
        if recorded is not None and onnx_sha256 is not None and recorded != onnx_sha256:
            raise IntegrityError(
                f"cache group {self.path} was written by the {what} with sha256 {str(recorded)[:16]}…, but the "
                f"{what} in use has sha256 {onnx_sha256[:16]}…: the model was re-exported or replaced since. "
                f"Its embeddings belong to the old model: remove the group (rm -r {self.path}) and extract again, "
                "or restore the model it was written with"
            )

    # ------------------------------------------------------------------ locking
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the group's exclusive lock; a second holder fails fast naming the first."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _read_lock(fd)
                raise CacheLockedError(
                    f"cache group {self.path.name} is in use by process {info.pid} on {info.host} "
                    f"({info.command}); wait for it to finish, or stop it (kill {info.pid}) and rerun — "
                    "finished chunks are kept"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n{socket.gethostname()}\n{' '.join(sys.argv)[:500]}\n".encode(errors="backslashreplace"))
            yield
        finally:
            os.close(fd)  # closing releases the flock; the kernel also releases it if we are killed

    # ------------------------------------------------------------------ reading
    def index(self, refresh: bool = False) -> dict[str, int]:
        """Map image id (hex sha256) → row, over valid (done) rows."""
        if self._index is None or refresh:
            done = self._done_mask()
            rows = np.flatnonzero(done)
            if len(rows):
                ids, bad = self._read_by_chunk(self.ids, 0)
                if bad:  # rows of an undecodable ids chunk have no trustworthy id: not indexed
                    rows = rows[~np.isin(rows // self.chunk_rows, bad)]
            else:
                ids = np.zeros((0, ID_BYTES), np.uint8)
            self._index = {bytes(ids[r]).hex(): int(r) for r in rows}
        return self._index

    def done_mask(self) -> np.ndarray:
        """The done flags of every row (a copy); see :meth:`_done_mask`."""
        return self._done_mask()

    def _done_mask(self) -> np.ndarray:
        """The done flags; a chunk whose flags cannot be decoded reads as not done (and is remembered)."""
        mask, self.unreadable_done_chunks = self._read_by_chunk(self.done, False)
        return mask.astype(bool, copy=False)

    def _read_by_chunk(self, array: Any, fill: Any) -> tuple[np.ndarray, list[int]]:
        """A whole array; if a chunk cannot be decoded, read chunk by chunk and fill the bad ones."""
        if not array.shape[0]:
            return np.zeros(array.shape, dtype=array.dtype), []
        try:
            return np.asarray(array[:]), []
        except CHUNK_READ_ERRORS:
            pass
        out = np.full(array.shape, fill, dtype=array.dtype)
        bad = []
        for c in range(array.shape[0] // self.chunk_rows):
            r0, r1 = c * self.chunk_rows, (c + 1) * self.chunk_rows
            try:
                out[r0:r1] = array[r0:r1]
            except CHUNK_READ_ERRORS:
                bad.append(c)
        return out, bad

    def damaged(self, chunk: int, reason: str) -> CacheError:
        """The error for a damaged chunk met while reading: what, where, and the command that repairs it."""
        r0, r1 = chunk * self.chunk_rows, (chunk + 1) * self.chunk_rows
        return CacheError(
            f"cache group {self.path.name}: chunk {chunk} (rows {r0}-{r1 - 1}) is damaged: {reason}. Its rows "
            f"are not used. Run `xrayfx cache verify --repair --cache-dir {self.path.parent.parent} "
            f"{self.path.name}`, then extract again to recompute them"
        )

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.index()

    def __len__(self) -> int:
        return len(self.index())

    def missing(self, image_ids: Sequence[str]) -> list[str]:
        """The ids (unique, in first-seen order) that have no valid row yet."""
        idx = self.index()
        seen: set[str] = set()
        out = []
        for i in image_ids:
            if i not in idx and i not in seen:
                seen.add(i)
                out.append(i)
        return out

    def read(self, image_ids: Sequence[str]) -> np.ndarray:
        """Embeddings of valid rows, in the order asked; ids are re-checked against the stored hashes."""
        idx = self.index()
        absent = [i for i in image_ids if i not in idx]
        if absent:
            raise CacheError(f"{len(absent)} image(s) are not in cache group {self.path.name}, e.g. {absent[0][:16]}")
        rows = np.array([idx[i] for i in image_ids], dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        uniq, inverse = np.unique(rows, return_inverse=True)
        try:
            emb = np.asarray(self.embeddings.oindex[uniq, :], dtype=np.float32)
            stored = np.asarray(self.ids.oindex[uniq, :], dtype=np.uint8)
        except CHUNK_READ_ERRORS as exc:
            chunk = self._first_unreadable_chunk(uniq)
            raise self.damaged(chunk, f"it cannot be decoded ({exc})") from None
        finite = np.isfinite(emb).all(axis=1)
        if not finite.all():
            bad_row = int(uniq[np.flatnonzero(~finite)[0]])
            raise self.damaged(
                bad_row // self.chunk_rows, f"{int((~finite).sum())} valid row(s) hold NaN or inf (a missing or "
                "overwritten embeddings chunk)"
            )
        row_to_id = {idx[i]: i for i in image_ids}
        expected = _ids_to_bytes([row_to_id[int(r)] for r in uniq])
        if not np.array_equal(stored, expected):
            raise IntegrityError(
                f"cache group {self.path} returned rows whose stored ids differ from the index; "
                "the group is corrupted: delete it and re-extract"
            )
        return emb[inverse]

    def _first_unreadable_chunk(self, rows: np.ndarray) -> int:
        for c in sorted({int(r) // self.chunk_rows for r in rows}):
            r0, r1 = self._chunk_span(c)
            try:
                self.embeddings[r0:r1]
                self.ids[r0:r1]
            except CHUNK_READ_ERRORS:
                return c
        return -1

    # ------------------------------------------------------------------ writing
    def allocate_chunks(self, n_chunks: int) -> list[int]:
        """Chunk indices free for writing: fully-invalid existing chunks first, then new ones."""
        done = self._done_mask()
        existing = len(done) // self.chunk_rows
        free = [c for c in range(existing) if not done[c * self.chunk_rows:(c + 1) * self.chunk_rows].any()]
        free = free[:n_chunks]
        extra = n_chunks - len(free)
        if extra > 0:
            new_rows = (existing + extra) * self.chunk_rows
            self.embeddings.resize((new_rows, self.dim))
            self.ids.resize((new_rows, ID_BYTES))
            self.done.resize((new_rows,))
            free += list(range(existing, existing + extra))
        return free

    def write_chunk(self, chunk: int, image_ids: Sequence[str], embeddings: np.ndarray) -> None:
        """Write one whole chunk (up to chunk_rows rows), then mark its rows done."""
        self.write_chunk_data(chunk, image_ids, embeddings)
        self.mark_done(chunk, image_ids)

    def write_chunk_data(self, chunk: int, image_ids: Sequence[str], embeddings: np.ndarray) -> str:
        """Write the embeddings, then the ids, of one whole chunk, without marking any row done.

        The rows stay invalid until :meth:`mark_done`. This is the part a Dask worker
        runs; the client, which holds the lock, marks the chunk done afterwards.
        Returns the sha256 of the chunk as written (see :meth:`chunk_digest`).
        """
        n = len(image_ids)
        if n == 0 or n > self.chunk_rows or embeddings.shape != (n, self.dim):
            raise CacheError(f"write_chunk needs 1..{self.chunk_rows} rows of dim {self.dim}; got {embeddings.shape}")
        if not np.all(np.isfinite(embeddings)):
            raise CacheError("refusing to cache non-finite embeddings (NaN or inf): the model output is broken")
        self._check_chunk_free(chunk)
        r0, r1 = self._chunk_span(chunk)
        block = np.full((self.chunk_rows, self.dim), np.nan, dtype=np.float32)
        block[:n] = embeddings
        ids = np.zeros((self.chunk_rows, ID_BYTES), dtype=np.uint8)
        ids[:n] = _ids_to_bytes(image_ids)
        self.embeddings[r0:r1] = block
        self._write_ids(r0, r1, ids)
        return _digest(block, ids)

    def mark_done(self, chunk: int, image_ids: Sequence[str], digest: str | None = None) -> None:
        """Mark the first ``len(image_ids)`` rows of a written chunk valid, and index them.

        With ``digest`` (what :meth:`write_chunk_data` returned to the writer), the
        chunk is read back first and must match it byte for byte, so a chunk changed
        by anyone else since is never marked done.
        """
        n = len(image_ids)
        if n == 0 or n > self.chunk_rows:
            raise CacheError(f"mark_done needs 1..{self.chunk_rows} ids; got {n}")
        self._check_chunk_free(chunk)
        r0, r1 = self._chunk_span(chunk)
        if digest is not None and self.chunk_digest(chunk) != digest:
            raise IntegrityError(
                f"chunk {chunk} of {self.path} does not hold what its writer reported (sha256 differs); "
                "another process wrote it meanwhile. It stays invalid: rerun to recompute it, and make sure "
                "no other extract writes to this cache group"
            )
        mask = np.zeros(self.chunk_rows, dtype=bool)
        mask[:n] = True
        self.done[r0:r1] = mask  # last: only now do these rows become valid
        if self._index is not None:
            for k, i in enumerate(image_ids):
                self._index[i] = r0 + k

    def mark_not_done(self, chunk: int) -> None:
        """Invalidate every row of one chunk (a damaged one): the next extract recomputes them.

        Writes the whole done chunk, so it works even when the old flags cannot be decoded.
        The caller holds the lock.
        """
        r0, r1 = self._chunk_span(chunk)
        self.done[r0:r1] = np.zeros(self.chunk_rows, dtype=bool)
        self._index = None

    def chunk_digest(self, chunk: int) -> str:
        """sha256 over one chunk's stored embeddings and ids bytes."""
        r0, r1 = self._chunk_span(chunk)
        emb = np.asarray(self.embeddings[r0:r1], dtype=np.float32)
        ids = np.asarray(self.ids[r0:r1], dtype=np.uint8)
        return _digest(emb, ids)

    def _chunk_span(self, chunk: int) -> tuple[int, int]:
        r0, r1 = chunk * self.chunk_rows, (chunk + 1) * self.chunk_rows
        if chunk < 0 or r1 > self.done.shape[0]:
            raise CacheError(
                f"chunk {chunk} is outside cache group {self.path.name} ({self.done.shape[0] // self.chunk_rows} "
                "chunks); allocate it first with allocate_chunks"
            )
        return r0, r1

    def _check_chunk_free(self, chunk: int) -> None:
        r0, r1 = self._chunk_span(chunk)
        try:
            flags = np.asarray(self.done[r0:r1], dtype=bool)  # reads this chunk only
        except CHUNK_READ_ERRORS as exc:
            raise self.damaged(chunk, f"its done flags cannot be decoded ({exc})") from None
        if flags.any():
            raise CacheError(f"chunk {chunk} of {self.path.name} already holds valid rows; it is never rewritten")

    def _write_ids(self, r0: int, r1: int, ids: np.ndarray) -> None:
        # A method of its own so that the kill test can stop a worker between the two writes.
        self.ids[r0:r1] = ids

    # ------------------------------------------------------------------ info
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


def _ids_to_bytes(image_ids: Sequence[str]) -> np.ndarray:
    return np.frombuffer(b"".join(bytes.fromhex(i) for i in image_ids), dtype=np.uint8).reshape(-1, ID_BYTES)


def _digest(embeddings: np.ndarray, ids: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(embeddings, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(ids, dtype=np.uint8).tobytes())
    return h.hexdigest()


def _read_lock(fd: int) -> LockInfo:
    os.lseek(fd, 0, os.SEEK_SET)
    parts = os.read(fd, 4096).decode(errors="replace").split("\n")
    pid = int(parts[0]) if parts and parts[0].strip().isdigit() else -1
    return LockInfo(pid=pid, host=parts[1] if len(parts) > 1 else "?", command=parts[2] if len(parts) > 2 else "?")


def list_groups(cache_dir: str | Path) -> list[EmbeddingCache]:
    """Every cache group under ``<cache_dir>/embeddings``."""
    root = Path(cache_dir) / "embeddings"
    if not root.is_dir():
        return []
    return [EmbeddingCache(p) for p in sorted(root.iterdir()) if (p / "zarr.json").is_file()]
