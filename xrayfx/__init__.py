"""xrayfx: transfer-learning classification of chest radiographs.

Frozen ImageNet backbones exported once to ONNX, embeddings cached in zarr,
light heads trained on the cache, and reports that say what the numbers mean.

The Python API mirrors the command line::

    import xrayfx
    result = xrayfx.extract(model="mobilenet", data="manifest.csv", weights="weights.h5")
    result.ids, result.labels, result.metadata, result.embeddings

How images are embedded is one typed object, shared by extraction, the Dask
path and the jitter augmentation; the head has its own::

    fast = xrayfx.ExtractionOptions(batch_size=16, workers=4, precision="int8")
    run = xrayfx.fit_head(data="manifest.csv", extraction=fast,
                          head=xrayfx.HeadOptions(head="paper", batch_size=8))
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "extract": "xrayfx.extraction.pipeline",
    "ExtractionOptions": "xrayfx.extraction.options",
    "HeadOptions": "xrayfx.study.options",
    "export_model": "xrayfx.models.export",
    "model_config": "xrayfx.models.config",
    "load_dataset": "xrayfx.data.manifest",
    "generate_phantoms": "xrayfx.data.phantoms",
    "fit_head": "xrayfx.study.fit",
    "predict": "xrayfx.study.fit",
    "evaluate": "xrayfx.study.evaluate",
    "build_report": "xrayfx.report",
    "run_demo": "xrayfx.cli.demo",
    "get_spec": "xrayfx.models.registry",
    "add_model": "xrayfx.models.custom",
    "remove_model": "xrayfx.models.custom",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    # Lazy, so `import xrayfx` stays fast and TensorFlow loads only when needed.
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'xrayfx' has no attribute {name!r}")
