"""Extraction orchestration: data set → decode (threads) → ONNX extractor → zarr cache.

Decoding runs in worker threads, overlapped with inference on the main thread
(onnxruntime releases the GIL). Finished chunks are written as they fill, so an
interrupted run keeps everything it finished and a rerun computes only the rest.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from xrayfx.data import images
from xrayfx.extraction.cache import DEFAULT_CHUNK_ROWS, EmbeddingCache, group_name
from xrayfx.data.stream import Skip, decoded_stream
from xrayfx.csvsafe import write_csv
from xrayfx.data.manifest import Dataset, ImageRecord, load_dataset
from xrayfx.data.quality import low_bit_depth_warning, take_low_bit_depth
from xrayfx.extraction.distributed import extract_missing_distributed, parse_scheduler
from xrayfx.extraction.options import ExtractionOptions
from xrayfx.exceptions import (
    CacheError,
    CacheRepairWarning,
    ImageQualityWarning,
    SkippedInputsError,
)
from xrayfx.models.export import export_model, load_exported
from xrayfx.extraction.verify import check_reused
from xrayfx.models.config import ExportedModel, ModelConfig, model_config
from xrayfx.progress import ImageProgress
from xrayfx.models.quantize import ensure_int8, int8_variant_at
from xrayfx.inference.runtimes import Embedder, check_runtime, make_extractor
from xrayfx.storage import (ReadOnlyCacheError, check_cache_dir, disk_full_error, is_disk_full, is_writable,
                            require_writable_cache)


@dataclass
class ExtractResult:
    """Embeddings of every usable image of a data set, in data set order."""

    ids: list[str]
    paths: list[str]
    labels: np.ndarray  # object array of label strings ('' where the data has none)
    metadata: list[dict[str, str]]
    embeddings: np.ndarray  # float32 (n, D)
    config: ModelConfig
    exported: ExportedModel
    cache_path: Path
    dataset: Dataset
    skipped: list[Skip] = field(default_factory=list)
    duplicates: dict[str, list[str]] = field(default_factory=dict)
    n_new: int = 0
    n_cached: int = 0
    seconds: float = 0.0
    skipped_file: Path | None = None
    providers: list[str] = field(default_factory=list)
    model_path: Path | None = None  # the exact int8 variant used (precision int8), else None
    warnings: list[str] = field(default_factory=list)  # damaged cache chunks recomputed; 12-bit-looking images

    def column(self, name: str) -> np.ndarray:
        """A metadata column ('label', 'patient_id', 'source', …) as an object array."""
        if name == "label":
            return self.labels
        return np.array([m.get(name, "") for m in self.metadata], dtype=object)

    @property
    def images_per_s(self) -> float:
        return self.n_new / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        """One line: files read, images embedded, byte-identical duplicates (named), speed, skipped."""
        n_files = len(self.dataset.records) if self.dataset is not None else len(self.ids)
        head = f"{n_files:,} files: {len(set(self.ids)):,} embedded ({self.n_new:,} new, {self.n_cached:,} from cache)"
        if self.duplicates:
            extra = sum(len(v) - 1 for v in self.duplicates.values())
            plural = "s" if extra != 1 else ""
            head += f", {extra:,} byte-identical duplicate{plural} ({_name_duplicates(self.duplicates)})"
        parts = [head]
        if self.n_new:
            parts.append(f"{self.images_per_s:.1f} images/s")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped (see {self.skipped_file})")
        return "; ".join(parts)


def _name_duplicates(duplicates: dict[str, list[str]], shown: int = 3) -> str:
    """``a.png = b.png; c.png listed 2 times; …`` for the first few sets of byte-identical files."""
    sets = sorted(sorted(paths) for paths in duplicates.values())
    text = "; ".join(_one_duplicate_set(paths) for paths in sets[:shown])
    return text + (f"; … ({len(sets)} sets in all)" if len(sets) > shown else "")


def _one_duplicate_set(paths: list[str]) -> str:
    names = [Path(p).name for p in dict.fromkeys(paths)]  # distinct paths, file names only
    text = " = ".join(names)
    return text + (f" (listed {len(paths)} times)" if len(names) == 1 else "")


def cache_group_for(config: ModelConfig, runtime: str = "onnxruntime", precision: str = "fp32") -> str:
    """The cache group name of a model configuration, runtime and precision."""
    return group_name(config.stem, runtime, precision)


def open_cache(
    config: ModelConfig, exported: ExportedModel, cache_dir: str | Path, runtime: str = "onnxruntime",
    precision: str = "fp32", chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> EmbeddingCache:
    """Open (or create) the cache group of a configuration; refuse one written by another ONNX file."""
    attrs = {
        "model": config.to_dict(),
        "runtime": runtime,
        "precision": precision,
        "onnx_file": exported.path.name,
        "onnx_sha256": exported.sidecar["onnx_sha256"],
    }
    cache = EmbeddingCache.open_or_create(
        cache_dir, cache_group_for(config, runtime, precision), config.spec.embedding_size, attrs, chunk_rows
    )
    cache.check_source(exported.sidecar["onnx_sha256"])
    return cache


def extract(
    model: str = "mobilenet",
    data: str | Path | Dataset = "",
    *,
    weights: str = "imagenet",
    seed: int = 0,
    preprocess: str = "imagenet",
    resize: str = "stretch",
    cache_dir: str | Path = "cache",
    options: ExtractionOptions | None = None,
    strict: bool = False,
    log: Callable[[str], None] | None = None,
    on_chunk_done: Callable[[int], None] | None = None,
    config: ModelConfig | None = None,
    read_only_ok: bool = False,
    **option_kwargs: Any,
) -> ExtractResult:
    """Embed every image of ``data`` with a frozen backbone, through the cache.

    Exports the backbone first if needed, computes only what the cache lacks, and
    returns ids, labels, metadata and the embeddings array in data set order.
    *How* it embeds (runtime, precision, device, inference batch, decode
    threads, chunk size, Dask scheduler, int8 calibration or variant,
    degenerate images, progress bar) is ``options``, an
    :class:`~xrayfx.extraction.options.ExtractionOptions`; its field names are
    also accepted as keyword arguments (``batch_size=8``), on top of ``options``.
    Unreadable or undecodable files are skipped and listed; ``strict`` turns any
    skip into an error after everything else has been cached. A Dask
    ``scheduler`` (``tcp://HOST:PORT`` or ``local:N``) runs the missing part on
    a cluster. ``precision="int8"`` runs a static int8 variant calibrated on
    ``calibration`` (see :func:`xrayfx.models.quantize.ensure_int8` for the
    default); its cache group is tagged with the calibration set's hash.
    ``model_path`` names the exact registered int8 variant to use instead (what
    a run was trained with). Warnings (damaged cache chunks recomputed, 16-bit
    images that look 12-bit) go to ``log``, else to Python's warnings, and are
    listed in ``result.warnings``.
    ``read_only_ok`` (predict, report): on a read-only cache, read what is cached and compute
    the rest in memory without caching it; otherwise a read-only cache is an error before any work.
    """
    opts = ExtractionOptions.merged(options, **option_kwargs)
    cache_dir = check_cache_dir(cache_dir)
    read_only = not is_writable(cache_dir)
    if read_only and not read_only_ok:
        require_writable_cache(cache_dir)
    check_runtime(opts.runtime, opts.precision, opts.device)  # e.g. fp16 on a CPU fails before any export
    if opts.scheduler:
        parse_scheduler(opts.scheduler)  # a bad --scheduler fails before any work, even when all is cached
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    config = config or model_config(model, weights, seed, preprocess, resize, cache_dir=cache_dir)
    exported = _registered_export(config, cache_dir) if read_only else export_model(config, cache_dir, log=log)
    cache_precision = opts.precision
    if opts.precision == "int8":
        if opts.model_path is not None:
            variant = int8_variant_at(exported, opts.model_path)
        else:
            variant = ensure_int8(exported, calibration=opts.calibration, data=dataset, log=log)
        opts = replace(opts, model_path=variant.path)
        cache_precision = variant.cache_precision
    else:
        opts = replace(opts, model_path=None)
    if read_only:
        cache = MemoryRows(_existing_group(cache_dir, cache_group_for(config, opts.runtime, cache_precision)),
                           config.spec.embedding_size, opts.chunk_rows)
    else:
        cache = open_cache(config, exported, cache_dir, opts.runtime, cache_precision, opts.chunk_rows)

    skipped = [Skip(str(r.path), r.error or "") for r in dataset.unreadable]
    t0 = time.perf_counter()
    n_new = 0
    providers: list[str] = []
    with nullcontext() if read_only else cache.locked():  # readers of a read-only cache need no lock
        first_of: dict[str, ImageRecord] = {}
        for r in dataset.ok:
            first_of.setdefault(r.image_id, r)
        # damaged chunks' rows become missing and are recomputed below (a read-only cache is only read)
        repaired = [] if read_only else check_reused(cache, list(first_of))
        for message in repaired:
            _warn(message, log, CacheRepairWarning)
        take_low_bit_depth()  # forget what earlier decoding in this process noted
        todo = [first_of[i] for i in cache.missing(list(first_of))]
        if todo and read_only and log:
            log(f"cache {cache_dir} is read-only: {len(todo)} image(s) not in it are embedded in memory, not cached")
        if todo and opts.scheduler and not read_only:
            new_skips, n_new = extract_missing_distributed(todo, exported, cache, config, opts,
                                                           on_chunk_done=on_chunk_done)
            skipped += new_skips
        elif todo:
            extractor = make_extractor(exported, opts.runtime, opts.precision, opts.device, model_path=opts.model_path)
            providers = list(extractor.providers)
            new_skips, n_new = _extract_missing(todo, extractor, cache, config, opts, on_chunk_done)
            skipped += new_skips
    seconds = time.perf_counter() - t0
    low_depth = low_bit_depth_warning(take_low_bit_depth())
    if low_depth:
        _warn(low_depth, log, ImageQualityWarning)

    bad_ids = {s.image_id for s in skipped if s.image_id}
    usable = [r for r in dataset.ok if r.image_id not in bad_ids]
    embeddings = cache.read([r.image_id for r in usable])
    result = ExtractResult(
        ids=[r.image_id for r in usable],
        paths=[str(r.path) for r in usable],
        labels=np.array([r.label or "" for r in usable], dtype=object),
        metadata=[dict(r.meta) for r in usable],
        embeddings=embeddings,
        config=config,
        exported=exported,
        cache_path=cache.path,
        dataset=dataset,
        skipped=skipped,
        duplicates=dataset.duplicates(),
        n_new=n_new,
        n_cached=len({r.image_id for r in usable}) - n_new,
        seconds=seconds,
        providers=providers,
        model_path=Path(opts.model_path) if opts.model_path is not None else None,
        warnings=repaired + ([low_depth] if low_depth else []),
    )
    if skipped and not read_only:
        result.skipped_file = write_skipped(skipped, Path(cache_dir) / "logs")
    if log:
        log(result.summary())
    if strict and skipped:
        raise SkippedInputsError(
            f"--strict: {len(skipped)} input(s) were skipped (listed in {result.skipped_file}); "
            f"first: {skipped[0].path}: {skipped[0].reason}. Everything else is cached."
        )
    return result


def _warn(message: str, log: Callable[[str], None] | None, category: type[Warning]) -> None:
    """A warning goes to ``log`` when there is one, else to Python's warnings."""
    if log:
        log(f"warning: {message}")
    else:
        warnings.warn(message, category, stacklevel=3)


def _registered_export(config: ModelConfig, cache_dir: Path) -> ExportedModel:
    """The export of a read-only cache; it cannot be made there."""
    exported = load_exported(config, cache_dir)
    if exported is None:
        raise ReadOnlyCacheError(
            f"cache {cache_dir} is read-only and holds no export of {config.spec.name} ({config.stem}): it cannot "
            "be exported there. Fix: export it into a writable cache first, or pass a writable --cache-dir"
        )
    return exported


def _existing_group(cache_dir: Path, name: str) -> EmbeddingCache | None:
    path = cache_dir / "embeddings" / name
    return EmbeddingCache(path, read_only=True) if (path / "zarr.json").is_file() else None


class MemoryRows:
    """Embeddings computed for a read-only cache: kept in memory, over the rows the cache already has.

    It offers what extraction writes to and reads from (``missing``, ``allocate_chunks``,
    ``write_chunk``, ``read``, ``path``), so the same code embeds into it.
    """

    def __init__(self, cache: EmbeddingCache | None, dim: int, chunk_rows: int):
        self.cache = cache
        self.dim = dim
        self.chunk_rows = cache.chunk_rows if cache is not None else chunk_rows
        self.path = cache.path if cache is not None else Path("(memory)")
        self.rows: dict[str, np.ndarray] = {}

    def missing(self, image_ids: list[str]) -> list[str]:
        """Ids neither in the cache nor computed yet."""
        todo = self.cache.missing(image_ids) if self.cache is not None else list(dict.fromkeys(image_ids))
        return [i for i in todo if i not in self.rows]

    def allocate_chunks(self, n_chunks: int) -> list[int]:
        return list(range(n_chunks))

    def write_chunk(self, chunk: int, image_ids: list[str], embeddings: np.ndarray) -> None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if not np.all(np.isfinite(embeddings)):
            raise CacheError("refusing non-finite embeddings (NaN or inf): the model output is broken")
        self.rows.update(zip(image_ids, embeddings))

    def read(self, image_ids: list[str]) -> np.ndarray:
        """Embeddings in the order asked, from memory where computed here, else from the cache."""
        out = np.zeros((len(image_ids), self.dim), dtype=np.float32)
        cached = [k for k, i in enumerate(image_ids) if i not in self.rows]
        for k, i in enumerate(image_ids):
            if i in self.rows:
                out[k] = self.rows[i]
        if cached and self.cache is not None:
            out[cached] = self.cache.read([image_ids[k] for k in cached])
        return out


def _extract_missing(
    todo: list[ImageRecord],
    extractor: Embedder,
    cache: EmbeddingCache,
    config: ModelConfig,
    opts: ExtractionOptions,
    on_chunk_done: Callable[[int], None] | None,
) -> tuple[list[Skip], int]:
    prep, batch_size = config.preprocessing, opts.batch_size
    chunks = iter(cache.allocate_chunks(math.ceil(len(todo) / cache.chunk_rows)))
    skips: list[Skip] = []
    buf_ids: list[str] = []
    buf_imgs: list[np.ndarray] = []
    written = 0
    chunks_done = 0

    def flush() -> None:
        nonlocal written, chunks_done
        batch = np.stack(buf_imgs)
        emb = np.concatenate([extractor(batch[i:i + batch_size]) for i in range(0, len(batch), batch_size)])
        cache.write_chunk(next(chunks), list(buf_ids), emb)
        written += len(buf_ids)
        chunks_done += 1
        buf_ids.clear()
        buf_imgs.clear()
        if on_chunk_done:
            on_chunk_done(chunks_done)

    with ImageProgress(opts.progress, len(todo), f"extract {config.spec.name}") as bar:
        stream = decoded_stream(todo, lambda p: images.load_image(p, prep, opts.keep_degenerate), opts.workers,
                                lookahead=max(2 * cache.chunk_rows, 8))
        try:
            for record, image, reason in stream:
                if image is None:
                    skips.append(Skip(str(record.path), reason or "", record.image_id or ""))
                else:
                    buf_ids.append(record.image_id)
                    buf_imgs.append(image)
                    if len(buf_ids) == cache.chunk_rows:
                        flush()
                bar.advance(1)
            if buf_ids:
                flush()
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(written, cache.path) from None
            raise
    return skips, written


def write_skipped(skipped: list[Skip], logs_dir: Path) -> Path:
    """Write skipped.csv (path, image_id, reason) into a fresh extract log folder."""
    folder = logs_dir / f"extract-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while folder.exists():
        n += 1
        folder = logs_dir / f"extract-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    return write_csv(folder / "skipped.csv", ["path", "image_id", "reason"],
                     ([s.path, s.image_id, s.reason] for s in skipped))
