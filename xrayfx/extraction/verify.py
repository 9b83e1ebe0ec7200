"""Checking the embedding cache for damage, and repairing it by invalidating damaged chunks.

A chunk is damaged when one of its arrays' chunk files cannot be decoded (crc32c
mismatch, truncated file), when a chunk file holding valid rows is missing (zarr
would read its fill value: NaN embeddings, zero ids), or when a valid row holds a
non-finite embedding. Repair marks every row of such a chunk not done, under the
group's lock, so the next extract recomputes them; nothing is ever patched in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from xrayfx.extraction.cache import CHUNK_READ_ERRORS, EmbeddingCache

#: Chunks read per zarr call when checking (256 chunks of 32 rows of 2048 floats: 64 MiB).
BLOCK_CHUNKS = 256


@dataclass
class ChunkDamage:
    """One damaged chunk of a cache group, and why."""

    chunk: int
    rows: int  # rows that were valid (done) in it; 0 when even its done flags are unreadable
    reason: str

    def describe(self, cache: EmbeddingCache) -> str:
        """One line naming the group, the chunk, its rows and the damage."""
        r0 = self.chunk * cache.chunk_rows
        return f"{cache.path.name}: chunk {self.chunk} (rows {r0}-{r0 + cache.chunk_rows - 1}): {self.reason}"


def check_chunk(cache: EmbeddingCache, chunk: int) -> ChunkDamage | None:
    """Read every array of one chunk; the damage found, or None when it is sound (or holds no valid row)."""
    r0, r1 = chunk * cache.chunk_rows, (chunk + 1) * cache.chunk_rows
    try:
        done = np.asarray(cache.done[r0:r1], dtype=bool)
    except CHUNK_READ_ERRORS as exc:
        return ChunkDamage(chunk, 0, f"its done flags ({_key(cache, 'done', chunk)}) cannot be decoded ({_text(exc)})")
    n_done = int(done.sum())
    if n_done == 0:
        return None
    values: dict[str, np.ndarray] = {}
    for name in ("embeddings", "ids"):
        key = _key(cache, name, chunk)
        if not (cache.path / name / key).is_file():
            return ChunkDamage(chunk, n_done, f"its {name} chunk file {name}/{key} is missing")
        try:
            values[name] = np.asarray(cache.group[name][r0:r1])
        except CHUNK_READ_ERRORS as exc:
            return ChunkDamage(chunk, n_done, f"its {name} chunk file {name}/{key} cannot be decoded ({_text(exc)})")
    bad = ~np.isfinite(values["embeddings"][done]).all(axis=1)
    if bad.any():
        return ChunkDamage(chunk, n_done, f"{int(bad.sum())} valid row(s) hold NaN or inf embeddings")
    if (values["ids"][done] == 0).all(axis=1).any():
        return ChunkDamage(chunk, n_done, "valid rows without an image id (zeroed ids)")
    return None


def find_damage(cache: EmbeddingCache, chunks: Iterable[int] | None = None) -> list[ChunkDamage]:
    """Check the given chunks (default: every chunk of the group); the damaged ones, in chunk order.

    Reads blocks of :data:`BLOCK_CHUNKS` chunks at once (one zarr call per array
    instead of one per chunk); only a block that fails to decode, or whose valid
    rows hold NaN, inf or zeroed ids, is examined chunk by chunk.
    """
    n_chunks = cache.done.shape[0] // cache.chunk_rows
    todo = sorted(set(range(n_chunks) if chunks is None else chunks))
    suspects: list[int] = []
    for start in range(0, n_chunks, BLOCK_CHUNKS):
        wanted = [c for c in todo if start <= c < start + BLOCK_CHUNKS]
        if wanted:
            suspects += _suspects_in_block(cache, start, min(start + BLOCK_CHUNKS, n_chunks), wanted)
    return [d for c in suspects if (d := check_chunk(cache, c)) is not None]


def _suspects_in_block(cache: EmbeddingCache, first: int, stop: int, wanted: list[int]) -> list[int]:
    r0, r1 = first * cache.chunk_rows, stop * cache.chunk_rows
    try:
        done = np.asarray(cache.done[r0:r1], dtype=bool)
        emb = np.asarray(cache.embeddings[r0:r1])
        ids = np.asarray(cache.ids[r0:r1])
    except CHUNK_READ_ERRORS:
        return wanted  # some chunk of the block cannot be decoded: look at each
    bad_row = done & (~np.isfinite(emb).all(axis=1) | (ids == 0).all(axis=1))
    bad_chunks = set((np.flatnonzero(bad_row) // cache.chunk_rows + first).tolist())
    return [c for c in wanted if c in bad_chunks]


def repair(cache: EmbeddingCache, damage: Sequence[ChunkDamage]) -> int:
    """Mark every row of each damaged chunk not done (the caller holds the lock); the rows invalidated."""
    for d in damage:
        cache.mark_not_done(d.chunk)
    cache.index(refresh=True)
    return sum(d.rows for d in damage)


def check_reused(cache: EmbeddingCache, image_ids: Sequence[str]) -> list[str]:
    """Before an extract reuses rows: check the chunks holding them, invalidate damaged ones.

    Returns one warning per damaged chunk; their rows are then missing, so the
    extract recomputes them. Chunks whose done flags are unreadable are reset too,
    so that they can be written again. The caller holds the group's lock.
    """
    index = cache.index(refresh=True)
    chunks = {index[i] // cache.chunk_rows for i in image_ids if i in index}
    chunks |= set(cache.unreadable_done_chunks) | set(_chunks_missing_files(cache))
    damage = find_damage(cache, chunks)
    if not damage:
        return []
    repair(cache, damage)
    return [
        f"cache group {d.describe(cache)}; its rows are marked not done and recomputed now" for d in damage
    ]


def verify_group(cache: EmbeddingCache, fix: bool = False) -> dict[str, Any]:
    """Read every chunk of a group; with ``fix``, invalidate the damaged ones (the caller holds the lock)."""
    damage = find_damage(cache)
    invalidated = repair(cache, damage) if fix and damage else 0
    return {
        "group": cache.path.name,
        "chunks": cache.done.shape[0] // cache.chunk_rows,
        "valid_rows": len(cache.index(refresh=True)),
        "damage": [d.describe(cache) for d in damage],
        "invalidated_rows": invalidated,
    }


def _key(cache: EmbeddingCache, name: str, chunk: int) -> str:
    array = cache.group[name]
    coords = (chunk,) + (0,) * (len(array.shape) - 1)
    return array.metadata.encode_chunk_key(coords)


def _chunks_missing_files(cache: EmbeddingCache) -> list[int]:
    """Chunks with valid rows whose embeddings or ids chunk file is gone (a cheap check: no decoding)."""
    done = cache.done_mask()
    out = []
    for c in np.unique(np.flatnonzero(done) // cache.chunk_rows):
        if any(not (cache.path / n / _key(cache, n, int(c))).is_file() for n in ("embeddings", "ids")):
            out.append(int(c))
    return out


def _text(exc: BaseException) -> str:
    return str(exc).strip().rstrip(".") or type(exc).__name__
