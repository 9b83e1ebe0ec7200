"""Jittered augmentation with on-the-fly extraction, seeded, cached and computed in the background.

The jitter
    The kinds of random jitter Keras' ``ImageDataGenerator`` gave the paper:
    rotation up to ±10°, shifts up to ±10 % of width and height, zoom by a
    factor in [0.9, 1.1] drawn per axis, brightness × U(0.9, 1.1); no
    horizontal flip by default (a chest film has a side). As with Keras, the
    jitter is applied to the image *after* it was decoded and resized to the
    backbone's input size (the paper resized to 224×224 first, then fed
    ``ImageDataGenerator``), with bilinear interpolation and ``nearest`` fill
    (edge pixels are repeated into the uncovered border, Keras' default
    ``fill_mode``). For an output pixel ``o`` (row, column) the input is sampled
    at ``c + R(θ)·diag(zy, zx)·(o − c) + (ty, tx)`` where ``c`` is the image
    centre. The jittered uint8 image then goes through the same ONNX extractor
    as the originals (normalisation is inside the exported graph).

Seeds
    Each jitter has a key ``sha256(f"{image_id}:{seed}:{epoch}:{j}")`` (hex),
    and its random numbers come from a generator seeded with that key only, so
    a jitter does not depend on thread timing, on the order of images or on
    which other images are in the training set: same key, same pixels.

The jitter cache
    Jittered embeddings are stored in an :class:`~xrayfx.extraction.cache.EmbeddingCache`
    group of their own, ``<main group>-jitter-<params hash>`` beside the main
    group (same backbone fingerprint, runtime and precision; the hash covers
    the jitter ranges), with the key above as the row id. A rerun with the same
    images, seed, epochs and N finds every row and builds no inference session.

Background extraction
    :class:`JitterSource` computes one epoch's jitters in a background thread
    (decode once and keep the resized original in memory, jitter in worker
    threads, embed on the producer thread; onnxruntime releases the GIL) while
    the head trains on the previous epoch: asking for epoch ``e`` starts epoch
    ``e + 1`` at once.
"""

from __future__ import annotations

import hashlib
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from xrayfx.data import images
from xrayfx.extraction.cache import EmbeddingCache
from xrayfx.extraction.options import ExtractionOptions
from xrayfx.exceptions import UsageError
from xrayfx.models.config import ExportedModel, ModelConfig
from xrayfx.extraction.pipeline import cache_group_for
from xrayfx.progress import ImageProgress
from xrayfx.inference.runtimes import Embedder, make_extractor
from xrayfx.util import sha256_json


@dataclass(frozen=True)
class JitterParams:
    """Ranges of the random jitter (the defaults are the paper's kinds of jitter).

    ``rotation`` in degrees (±), ``shift`` as a fraction of height/width (±),
    ``zoom`` so that each axis is scaled by U(1 − zoom, 1 + zoom), ``brightness``
    so that pixels are multiplied by U(1 − brightness, 1 + brightness), ``flip``
    a horizontal flip with probability 1/2 (off: a chest film has a side).
    """

    rotation: float = 10.0
    shift: float = 0.1
    zoom: float = 0.1
    brightness: float = 0.1
    flip: bool = False

    def __post_init__(self) -> None:
        for name in ("rotation", "shift", "zoom", "brightness"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise UsageError(f"Expected jitter {name} as a finite number >= 0; got {v!r}.")
        if self.zoom >= 1 or self.brightness >= 1:
            raise UsageError(
                f"Expected jitter zoom and brightness below 1 (factors 1 ± x must stay positive); got "
                f"zoom={self.zoom!r}, brightness={self.brightness!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        """The ranges as a JSON-ready dict (recorded in the run and in the cache group)."""
        return asdict(self)

    @property
    def fingerprint(self) -> str:
        """sha256 of the ranges and the jitter's definition version."""
        return sha256_json({"params": self.to_dict(), "jitter_version": JITTER_VERSION})


#: Bumped whenever :func:`jitter_image` would give different pixels for the same key.
JITTER_VERSION = 1


def jitter_key(image_id: str, seed: int, epoch: int, j: int) -> str:
    """The cache row id of a jittered image: ``sha256(f"{image_id}:{seed}:{epoch}:{j}")`` in hex."""
    return hashlib.sha256(f"{image_id}:{int(seed)}:{int(epoch)}:{int(j)}".encode()).hexdigest()


def jitter_rng(key: str) -> np.random.Generator:
    """The random generator of one jitter, seeded by its key alone."""
    return np.random.default_rng(int(key, 16))


def draw_jitter(rng: np.random.Generator, params: JitterParams = JitterParams()) -> dict[str, float]:
    """Draw one jitter: angle (degrees), shifts (fractions), zooms, brightness factor, flip."""
    return {
        "angle": float(rng.uniform(-params.rotation, params.rotation)),
        "ty": float(rng.uniform(-params.shift, params.shift)),
        "tx": float(rng.uniform(-params.shift, params.shift)),
        "zy": float(rng.uniform(1 - params.zoom, 1 + params.zoom)),
        "zx": float(rng.uniform(1 - params.zoom, 1 + params.zoom)),
        "brightness": float(rng.uniform(1 - params.brightness, 1 + params.brightness)),
        "flip": bool(params.flip and rng.random() < 0.5),
    }


def apply_jitter(img: np.ndarray, drawn: dict[str, float]) -> np.ndarray:
    """Apply one drawn jitter to a uint8 (H, W, 3) or (H, W) image; returns uint8 of the same shape."""
    from scipy.ndimage import affine_transform

    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
        raise UsageError(f"Expected a uint8 (H, W) or (H, W, 3) image to jitter; got {img.dtype} {img.shape}.")
    h, w = img.shape[:2]
    theta = math.radians(drawn["angle"])
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    matrix = rot @ np.diag([drawn["zy"], drawn["zx"]])
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    offset = centre - matrix @ centre + np.array([drawn["ty"] * h, drawn["tx"] * w])

    def warp(plane: np.ndarray) -> np.ndarray:
        return affine_transform(plane.astype(np.float32), matrix, offset=offset, order=1, mode="nearest")

    if img.ndim == 2:
        out = warp(img)
    elif img.shape[2] == 1 or (np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])):
        plane = warp(img[..., 0])  # grey radiograph: warp once, repeat
        out = np.repeat(plane[..., None], img.shape[2], axis=2)
    else:
        out = np.stack([warp(img[..., c]) for c in range(img.shape[2])], axis=2)
    out = out * drawn["brightness"]
    if drawn.get("flip"):
        out = out[:, ::-1]
    return np.ascontiguousarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def jitter_image(img: np.ndarray, key: str, params: JitterParams = JitterParams()) -> np.ndarray:
    """The jittered copy of ``img`` for a jitter key (see :func:`jitter_key`): reproducible."""
    return apply_jitter(img, draw_jitter(jitter_rng(key), params))


def jitter_group_name(main_group: str, params: JitterParams) -> str:
    """The cache group of the jittered embeddings beside ``main_group``."""
    return f"{main_group}-jitter-{params.fingerprint[:8]}"


@dataclass
class JitterStats:
    """What a :class:`JitterSource` did: rows computed and read, time spent, sessions built."""

    n_new: int = 0
    n_cached: int = 0
    compute_seconds: float = 0.0
    wait_seconds: float = 0.0
    sessions_built: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JitterSource:
    """Embeddings of N jitters per training image and epoch, cached and prefetched in the background.

    Use as a context manager: it holds the jitter cache group's lock and its
    background thread while open. :meth:`epoch` returns ``(X, y)`` of one
    epoch (rows ordered image by image, jitter ``j`` within an image) and starts
    the next epoch in the background.
    """

    def __init__(
        self,
        exported: ExportedModel,
        config: ModelConfig,
        cache: EmbeddingCache | str | Path,
        image_ids: Sequence[str],
        paths: Sequence[str | Path],
        labels: Sequence[Any],
        n: int,
        seed: int = 0,
        epochs: int = 1,
        params: JitterParams = JitterParams(),
        main_group: str | None = None,
        options: ExtractionOptions | None = None,
        log: Callable[[str], None] | None = None,
        **option_kwargs: Any,
    ):
        """``options`` says how jitters are embedded, as for the originals (the int8
        ``model_path``, ``keep_degenerate`` of the extraction that chose the training
        images); its field names are also accepted as keyword arguments. The
        progress bar is off unless ``options`` or ``progress=True`` turns it on."""
        opts = ExtractionOptions.merged(options or ExtractionOptions(progress=False), **option_kwargs)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise UsageError(f"Expected --augment N to be a positive integer here; got {n!r}.")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise UsageError(f"Expected epochs to be a positive integer; got {epochs!r}.")
        if not (len(image_ids) == len(paths) == len(labels)):
            raise UsageError(
                f"Expected one path and label per image id; got {len(image_ids)} ids, {len(paths)} paths, "
                f"{len(labels)} labels."
            )
        self.exported = exported
        self.config = config
        self.image_ids = [str(i) for i in image_ids]
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels)
        self.n = int(n)
        self.seed = int(seed)
        self.epochs = int(epochs)
        self.params = params
        self.options = opts
        self.log = log
        self.stats = JitterStats()
        if isinstance(cache, EmbeddingCache):
            self.cache = cache
        else:
            main = main_group or cache_group_for(config, opts.runtime, opts.precision)
            attrs = {
                "model": config.to_dict(), "runtime": opts.runtime, "precision": opts.precision,
                "kind": "jitter", "jitter": params.to_dict(), "jitter_version": JITTER_VERSION,
                "key": "sha256(f'{image_id}:{seed}:{epoch}:{j}')", "main_group": main,
                "onnx_sha256": exported.sidecar.get("onnx_sha256"),
            }
            self.cache = EmbeddingCache.open_or_create(
                cache, jitter_group_name(main, params), config.spec.embedding_size, attrs, opts.chunk_rows
            )
        self.cache.check_source(exported.sidecar.get("onnx_sha256"))
        self._extractor: Embedder | None = None
        self._bases: dict[str, np.ndarray] = {}
        self._futures: dict[int, Future] = {}
        self._stack: ExitStack | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._bar: Any = None

    # ---------------------------------------------------------------- context
    def __enter__(self) -> "JitterSource":
        self._stack = ExitStack()
        self._stack.enter_context(self.cache.locked())
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xrayfx-jitter")
        todo = sum(len(self.cache.missing(self.keys(e))) for e in range(self.epochs))
        self._bar = self._stack.enter_context(
            ImageProgress(self.options.progress, todo, f"jitter + extract {self.config.spec.name}")
        )
        if self.log and todo:
            self.log(f"augment: {todo} jittered image(s) to embed in the background "
                     f"({self.n} per training image and epoch, {self.epochs} epoch(s))")
        return self

    def __exit__(self, *exc: Any) -> None:
        for fut in self._futures.values():
            fut.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._stack is not None:
            self._stack.close()
        self._bases.clear()

    # ---------------------------------------------------------------- public
    def keys(self, epoch: int) -> list[str]:
        """The jitter keys of one epoch, image by image, ``j`` within an image."""
        return [jitter_key(i, self.seed, epoch, j) for i in self.image_ids for j in range(self.n)]

    def epoch_labels(self) -> np.ndarray:
        """Labels of one epoch's rows (each image's label repeated N times)."""
        return np.repeat(self.labels, self.n)

    def prefetch(self, epoch: int) -> None:
        """Start computing ``epoch`` in the background (no-op if started, or past the last epoch)."""
        if self._pool is None:
            raise UsageError("JitterSource is used outside its `with` block; open it with `with JitterSource(...)`.")
        if 0 <= epoch < self.epochs and epoch not in self._futures:
            self._futures[epoch] = self._pool.submit(self._compute, epoch)

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)`` of one epoch's jitters; waits for the background work, then starts the next epoch."""
        if not 0 <= epoch < self.epochs:
            raise UsageError(f"Expected an epoch in 0..{self.epochs - 1}; got {epoch!r}.")
        self.prefetch(epoch)
        t0 = time.perf_counter()
        X = self._futures.pop(epoch).result()
        self.stats.wait_seconds += time.perf_counter() - t0
        self.prefetch(epoch + 1)
        return X, self.epoch_labels()

    # --------------------------------------------------------------- producer
    def _base(self, index: int) -> np.ndarray:
        image_id = self.image_ids[index]
        img = self._bases.get(image_id)
        if img is None:
            img = images.load_image(self.paths[index], self.config.preprocessing, self.options.keep_degenerate)
            self._bases[image_id] = img
        return img

    def _jittered(self, item: tuple[int, str]) -> np.ndarray:
        index, key = item
        return jitter_image(self._base(index), key, self.params)

    def _compute(self, epoch: int) -> np.ndarray:
        """Embed what the cache lacks for ``epoch`` and return the epoch's embeddings (runs in the background)."""
        t0 = time.perf_counter()
        keys = self.keys(epoch)
        missing = set(self.cache.missing(keys))
        todo = [(k // self.n, key) for k, key in enumerate(keys) if key in missing]
        self.stats.n_cached += len(keys) - len(todo)
        if todo:
            if self._extractor is None:
                o = self.options
                self._extractor = make_extractor(self.exported, o.runtime, o.precision, o.device,
                                                 model_path=o.model_path)
                self.stats.sessions_built += 1
            rows = self.cache.chunk_rows
            chunks = iter(self.cache.allocate_chunks(math.ceil(len(todo) / rows)))
            batch_size = self.options.batch_size
            with ThreadPoolExecutor(max_workers=self.options.workers, thread_name_prefix="xrayfx-jitter-img") as pool:
                for start in range(0, len(todo), rows):
                    part = todo[start:start + rows]
                    batch = np.stack(list(pool.map(self._jittered, part)))
                    emb = np.concatenate(
                        [self._extractor(batch[i:i + batch_size]) for i in range(0, len(batch), batch_size)]
                    )
                    self.cache.write_chunk(next(chunks), [key for _, key in part], emb)
                    self.stats.n_new += len(part)
                    if self._bar is not None:
                        self._bar.advance(len(part))
        X = self.cache.read(keys)
        self.stats.compute_seconds += time.perf_counter() - t0
        return X

