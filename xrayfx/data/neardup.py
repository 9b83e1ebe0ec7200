"""Near-duplicate radiographs: a perceptual hash per image and the pairs whose hashes are close.

The same radiograph often reaches a collection twice: resized, re-encoded as
JPEG, with its contrast changed a little, under another patient id. Ids cannot
catch that; the pixels can. Each image gets a 64-bit centred DCT perceptual
hash: decode to grey (:mod:`xrayfx.data.images`), shrink to 32 x 32 with an area
filter, standardise (zero mean, unit variance), take the 2-D DCT, keep the 8 x 8
lowest frequencies and set a bit where a coefficient lies above the median chest
radiograph's (:data:`CHEST_CENTRE`). A plain pHash compares each coefficient
with the image's own median; on chest radiographs, which all share one coarse
shape, that flags about 100 times as many distinct pairs. Resizing, JPEG
re-encoding and light contrast, gamma or brightness changes move few of the 64
bits; crops of a few percent and small rotations move many (not caught reliably).

Two images are near-duplicates when the Hamming distance between their hashes
is at most ``max_distance`` (:data:`DEFAULT_MAX_DISTANCE` unless given). The
default was chosen from ``benchmarks/neardup.py`` on ``../shared/data/cxr``
(see README, "Near-duplicate images").

Hashes are cheap to recompute on reruns: :func:`perceptual_hashes` can keep them
in a JSON file keyed by the sha256 of the image bytes (:data:`HASH_CACHE_NAME`
under a cache folder), written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from scipy.fft import dctn

from xrayfx.exceptions import CacheError, DataError, UsageError
from xrayfx.data.images import decode_image_bytes
from xrayfx.util import atomic_write_json, sha256_bytes

__all__ = [
    "CHEST_CENTRE",
    "DEFAULT_MAX_DISTANCE",
    "HASH_BITS",
    "HASH_CACHE_NAME",
    "HASH_METHOD",
    "format_hash",
    "hamming_distance",
    "hash_cache_path",
    "image_hashes_csv",
    "near_duplicate_pairs",
    "parse_hash",
    "perceptual_hash_image",
    "perceptual_hashes",
    "read_image_hashes",
]

#: Bits per hash.
HASH_BITS = 64
#: Name and version of the hash; a cache written by another method is not read.
HASH_METHOD = "centred-dct-phash-64-v1"
#: Largest Hamming distance (of 64 bits) at which two images count as near-duplicates.
DEFAULT_MAX_DISTANCE = 6
#: File name of the hash cache inside a cache folder.
HASH_CACHE_NAME = "image_hashes.json"

#: Median over the 2,319 radiographs of ../shared/data/cxr (cohen, nih, mooney) of the 8 x 8
#: lowest DCT coefficients of the standardised 32 x 32 grey thumbnail (``benchmarks/neardup.py
#: --centre`` recomputes it). Every chest radiograph shares this coarse shape; comparing each
#: coefficient with it, rather than with the image's own median, makes the bits describe how
#: one radiograph differs from the others, which cuts false positives about 100-fold.
CHEST_CENTRE = np.array([
    [0.0, -0.343, -19.162, 1.267, -3.459, -0.937, -9.659, 0.069],
    [-4.317, -0.018, 4.865, -0.141, 2.668, 0.499, -0.107, 0.097],
    [4.492, 0.817, -2.032, -1.754, -3.059, 0.633, 2.936, -0.030],
    [-3.535, -0.604, -1.625, 1.027, 3.786, -0.422, 1.906, -0.297],
    [0.544, 0.001, -0.855, -0.111, 1.242, 0.064, -0.431, 0.136],
    [-1.887, 0.317, -0.431, -0.420, 1.090, 0.004, -0.347, 0.202],
    [-1.721, -0.322, 0.066, 0.377, 1.030, -0.076, -0.651, -0.108],
    [-0.047, 0.223, -0.329, -0.238, 0.018, 0.096, -0.172, -0.052],
])

_SMALL = 32  # side of the grey thumbnail the DCT is taken of
_LOW = 8  # side of the low-frequency block that gives the 64 bits
_DRAFT = (2 * _SMALL, 2 * _SMALL)  # JPEG may decode at a reduced scale, never below this
_BLOCK_ROWS = 1024  # rows of hashes_a compared at once (memory: rows x len(b) bytes)


def perceptual_hash_image(rgb: np.ndarray) -> int:
    """64-bit centred DCT perceptual hash of a decoded uint8 image (H, W) or (H, W, 3)."""
    arr = np.asarray(rgb)
    if arr.ndim == 3:
        arr = arr.astype(np.float32).mean(axis=2)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise UsageError(
            f"Expected a decoded image of shape (H, W) or (H, W, 3); got shape {np.shape(rgb)}. "
            "Fix: decode it with xrayfx.data.images.decode_image first."
        )
    grey = Image.fromarray(np.asarray(arr, dtype=np.float32), mode="F")
    small = np.asarray(grey.resize((_SMALL, _SMALL), Image.Resampling.BOX), dtype=np.float64)
    small = (small - small.mean()) / (small.std() + 1e-9)
    low = dctn(small, type=2, norm="ortho")[:_LOW, :_LOW] - CHEST_CENTRE
    bits = low.ravel() > 0
    bits[0] = False  # the DC term of a standardised thumbnail is 0: no information
    return int(np.packbits(bits).view(">u8")[0])


def hash_cache_path(cache_dir: str | Path) -> Path:
    """Where the hash cache of a cache folder lives: ``<cache_dir>/image_hashes.json``."""
    return Path(cache_dir) / HASH_CACHE_NAME


def perceptual_hashes(
    paths: Sequence[str | os.PathLike[str]],
    *,
    sha256s: Sequence[str] | None = None,
    cache_file: str | Path | None = None,
) -> np.ndarray:
    """One uint64 perceptual hash per image path (see the module docstring).

    With ``cache_file``, hashes are looked up by the sha256 of the file bytes and
    new ones are added to it (JSON, written atomically). ``sha256s`` (one per
    path, e.g. the image ids of an extraction) lets cached images skip reading
    their bytes. A file that cannot be decoded raises
    :class:`~xrayfx.exceptions.ImageDecodeError`.
    """
    paths = list(paths)
    if sha256s is not None and len(sha256s) != len(paths):
        raise UsageError(
            f"Expected one sha256 per path ({len(paths)}); got {len(sha256s)}. "
            "Fix: pass the image ids in the same order as the paths, or leave sha256s out."
        )
    cache = _read_cache(Path(cache_file)) if cache_file is not None else {}
    n_known = len(cache)
    out = np.zeros(len(paths), dtype=np.uint64)
    for i, path in enumerate(paths):
        known = sha256s[i] if sha256s is not None else None
        if known is not None and known in cache:
            out[i] = cache[known]
            continue
        data = Path(path).read_bytes()
        digest = sha256_bytes(data)
        if digest not in cache:
            rgb = decode_image_bytes(data, name=str(path), draft_size=_DRAFT)
            cache[digest] = np.uint64(perceptual_hash_image(rgb))
        out[i] = cache[digest]
    if cache_file is not None and len(cache) > n_known:
        _write_cache(Path(cache_file), cache)
    return out


def hamming_distance(a: int | np.integer, b: int | np.integer) -> int:
    """Number of bits in which two 64-bit hashes differ."""
    return int(np.bitwise_count(np.uint64(a) ^ np.uint64(b)))


def near_duplicate_pairs(
    hashes_a: Sequence[int] | np.ndarray,
    hashes_b: Sequence[int] | np.ndarray | None = None,
    max_distance: int | None = None,
) -> list[tuple[int, int, int]]:
    """Pairs ``(i, j, distance)`` whose hashes differ in at most ``max_distance`` bits.

    With ``hashes_b`` None the pairs are within ``hashes_a`` with ``i < j``;
    otherwise ``i`` indexes ``hashes_a`` and ``j`` indexes ``hashes_b``. Sorted
    by ``(i, j)``. ``max_distance`` defaults to :data:`DEFAULT_MAX_DISTANCE`.
    """
    limit = DEFAULT_MAX_DISTANCE if max_distance is None else _check_distance(max_distance)
    a = _as_hashes(hashes_a, "hashes_a")
    within = hashes_b is None
    b = a if within else _as_hashes(hashes_b, "hashes_b")
    pairs: list[tuple[int, int, int]] = []
    for start in range(0, a.size, _BLOCK_ROWS):
        block = a[start:start + _BLOCK_ROWS]
        dist = np.bitwise_count(block[:, None] ^ b[None, :])
        close = dist <= limit
        if within:
            close &= np.arange(b.size)[None, :] > (start + np.arange(block.size))[:, None]
        ii, jj = np.nonzero(close)
        pairs.extend((int(start + i), int(j), int(dist[i, j])) for i, j in zip(ii, jj))
    return pairs


def format_hash(value: int | np.integer) -> str:
    """A hash as 16 lower-case hex digits (the form written to files)."""
    return f"{int(value):016x}"


def parse_hash(text: str) -> np.uint64:
    """The hash written by :func:`format_hash`; raises UsageError on anything else."""
    s = str(text).strip()
    if len(s) != 16:
        raise UsageError(f"Expected a perceptual hash as 16 hex digits; got {text!r}.")
    try:
        return np.uint64(int(s, 16))
    except ValueError as e:
        raise UsageError(f"Expected a perceptual hash as 16 hex digits; got {text!r}.") from e


def image_hashes_csv(image_ids: Sequence[str], hashes: Sequence[int] | np.ndarray) -> str:
    """CSV text ``image_id,phash`` (one row per distinct image id, sorted), as a run stores it."""
    if len(image_ids) != len(hashes):
        raise UsageError(f"Expected one hash per image id ({len(image_ids)}); got {len(hashes)}.")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image_id", "phash"])
    for image_id, value in sorted({str(i): int(h) for i, h in zip(image_ids, hashes)}.items()):
        w.writerow([image_id, format_hash(value)])
    return buf.getvalue()


def read_image_hashes(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Image ids and uint64 hashes from a file written with :func:`image_hashes_csv`."""
    path = Path(path)
    fix = "Fix: rerun fit-head to write it again."
    if not path.is_file():
        raise DataError(f"Expected an image hash file at {path}; got nothing there. {fix}")
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
    if reader.fieldnames is None or not {"image_id", "phash"} <= set(reader.fieldnames):
        raise DataError(f"Expected columns image_id,phash in {path}; got {reader.fieldnames}. {fix}")
    ids: list[str] = []
    values: list[np.uint64] = []
    for lineno, row in enumerate(reader, start=2):
        try:
            values.append(parse_hash(row["phash"] or ""))
        except UsageError as e:
            raise DataError(f"Line {lineno} of {path}: {e} {fix}") from e
        ids.append(row["image_id"] or "")
    return ids, np.array(values, dtype=np.uint64)


def _check_distance(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= HASH_BITS:
        raise UsageError(f"Expected max_distance to be an integer from 0 to {HASH_BITS}; got {value!r}.")
    return int(value)


def _as_hashes(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise UsageError(f"Expected {name} to be a 1-D sequence of hashes; got shape {arr.shape}.")
    if arr.size and arr.dtype != np.uint64:
        if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != object:
            raise UsageError(
                f"Expected {name} to hold integer hashes (uint64); got dtype {arr.dtype}. "
                "Fix: use perceptual_hashes() or parse_hash()."
            )
        arr = np.array([np.uint64(int(v)) for v in arr.tolist()], dtype=np.uint64)
    return arr.astype(np.uint64, copy=False)


def _read_cache(path: Path) -> dict[str, np.uint64]:
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CacheError(
            f"Expected a JSON hash cache at {path}; got unreadable content ({e}). Fix: delete the file; "
            "the hashes are recomputed on the next run."
        ) from e
    if not isinstance(obj, dict) or obj.get("method") != HASH_METHOD or not isinstance(obj.get("hashes"), dict):
        return {}  # another method or version: recompute rather than mix hashes
    try:
        return {str(k): parse_hash(v) for k, v in obj["hashes"].items()}
    except UsageError as e:
        raise CacheError(f"Hash cache {path} holds a malformed entry: {e} Fix: delete the file.") from e


def _write_cache(path: Path, cache: dict[str, np.uint64]) -> None:
    atomic_write_json(
        path, {"method": HASH_METHOD, "hashes": {k: format_hash(v) for k, v in sorted(cache.items())}}
    )
