"""Inference runtimes and precisions: which session embeds a batch.

Runtime and precision are part of the cache key (one cache group per
fingerprint, runtime and precision). Every parity and equality test pins
``onnxruntime`` at ``fp32``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from xrayfx.exceptions import UsageError
from xrayfx.export import ExportedModel

RUNTIMES = ("onnxruntime",)
PRECISIONS = ("fp32",)
DEFAULT_RUNTIME = "onnxruntime"
DEFAULT_PRECISION = "fp32"


class Embedder(Protocol):
    """Anything that maps uint8 NHWC batches to float32 (N, D) embeddings."""

    providers: list[str]

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def check_runtime(runtime: str, precision: str) -> None:
    """Refuse unknown runtime/precision names with the valid choices."""
    if runtime not in RUNTIMES:
        raise UsageError(f"Unknown --runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise UsageError(f"Unknown --precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")


def make_extractor(
    exported: ExportedModel, runtime: str = DEFAULT_RUNTIME, precision: str = DEFAULT_PRECISION, device: str = "cpu"
) -> Embedder:
    """Build the session that embeds images for this runtime and precision."""
    check_runtime(runtime, precision)
    from xrayfx.extractor import Extractor

    return Extractor(exported.path, device=device)
