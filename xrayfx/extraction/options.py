"""How images are embedded: one typed object shared by extract, the Dask path and the jitter source.

:class:`ExtractionOptions` holds everything about *how* embeddings are
computed (runtime, precision, device, the inference batch, decode threads,
chunk size, degenerate images, a Dask scheduler, the int8 calibration set or
variant, the progress bar). *What* is embedded (the backbone and its
preprocessing) is the :class:`~xrayfx.models.config.ModelConfig`; *where* is
the cache folder. Values are checked when the object is made, so a bad option
fails before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from xrayfx.exceptions import UsageError
from xrayfx.extraction.cache import DEFAULT_CHUNK_ROWS
from xrayfx.inference.runtimes import check_runtime


@dataclass(frozen=True)
class ExtractionOptions:
    """How embeddings are computed (not what: that is the model configuration).

    ``batch_size`` is the inference batch (``extract --batch-size``), not the
    paper head's training batch (``fit-head --head-batch-size``). ``workers``
    is the number of decode threads. ``scheduler`` (``tcp://HOST:PORT`` or
    ``local:N``) runs the missing part on a Dask cluster. ``calibration`` is
    the int8 calibration set (folder or manifest); ``model_path`` names the
    exact registered int8 variant to use instead. ``keep_degenerate`` embeds
    constant, tiny or strip images instead of skipping them.
    """

    runtime: str = "onnxruntime"
    precision: str = "fp32"
    device: str = "cpu"
    batch_size: int = 32
    workers: int = 2
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    keep_degenerate: bool = False
    progress: bool = True
    scheduler: str | None = None
    calibration: str | Path | None = None
    model_path: str | Path | None = None

    def __post_init__(self) -> None:
        _at_least(self.batch_size, "--batch-size", 1)
        _at_least(self.workers, "--workers", 1)
        _at_least(self.chunk_rows, "chunk_rows", 1)
        check_runtime(self.runtime, self.precision)  # names the valid choices; the device is checked when used

    @classmethod
    def names(cls) -> frozenset[str]:
        """The option names, for folding older keyword arguments into one object."""
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def merged(cls, options: "ExtractionOptions | None" = None, **kwargs: Any) -> "ExtractionOptions":
        """``options`` (default: the defaults) with ``kwargs`` (older keyword arguments) on top.

        ``kwargs`` must be option names; anything else is a UsageError naming the valid ones.
        """
        unknown = sorted(set(kwargs) - cls.names())
        if unknown:
            raise UsageError(
                f"Unknown extraction option(s) {', '.join(unknown)}; expected some of {', '.join(sorted(cls.names()))}."
            )
        base = options if options is not None else cls()
        return replace(base, **kwargs) if kwargs else base


def _at_least(value: Any, flag: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UsageError(f"{flag} must be a whole number, got {value!r}")
    if value < minimum:
        raise UsageError(f"{flag} must be at least {minimum}, got {value!r}")
