"""What a backbone is: the spec of a built-in backbone, and of an ONNX encoder added to a cache.

The lowest module of :mod:`xrayfx.models`: :class:`BackboneSpec` (the built-ins are listed in
:mod:`xrayfx.models.registry`), :class:`OnnxBackboneSpec` for models added with ``xrayfx models
add`` (:mod:`xrayfx.models.custom`), their normalisations, and reading the added models of one
cache folder from ``CACHE/models/added-models.json``. The registry, the model identity, the
exporter and the wrapper all build on it, so none of them imports another to learn what a spec is.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

from xrayfx.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from xrayfx.exceptions import UsageError
from xrayfx.util import read_json

ADDED_DIR = "added"  # CACHE/models/added/NAME-<sha12>.onnx: the verbatim copies
REGISTRY_FILE = "added-models.json"  # CACHE/models/added-models.json
SCHEMA = 1
#: (mean, std) on pixels scaled to [0, 1]; the graph computes (x / 255 - mean) / std.
NORMALISATION_MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "tf": ((0.5,), (0.5,)),  # [-1, 1]
    "torch": (tuple(float(v) for v in IMAGENET_MEAN), tuple(float(v) for v in IMAGENET_STD)),
    "unit": ((0.0,), (1.0,)),  # [0, 1]
    "xrv": ((0.5,), (1.0 / 2048.0,)),  # torchxrayvision: [-1024, 1024]
}
ADDED_NORMALISATIONS = (*NORMALISATION_MEAN_STD, "custom")


@dataclass(frozen=True)
class BackboneSpec:
    """Everything xrayfx needs to know about one frozen feature extractor."""

    name: str
    constructor: str  # "module:attribute", called as constructor(include_top=False, weights=None, input_shape=..., pooling="avg", **kwargs)
    embedding_size: int
    preprocess_mode: str  # one of NORMALISATIONS, the backbone's own ImageNet preprocessing
    dropout: float  # the paper's head dropout for this backbone
    license: str
    params: int  # parameters of the headless backbone
    gflops: float  # GFLOP per 224x224 image (multiply-add = 2), counted on the exported ONNX graph
    input_size: tuple[int, int] = (224, 224)  # what xrayfx feeds (the paper: 224x224 for all)
    native_size: tuple[int, int] = (224, 224)  # the size the ImageNet weights were trained at
    constructor_kwargs: tuple[tuple[str, Any], ...] = ()
    imagenet_file: str | None = None  # file name Keras caches under $KERAS_HOME/models
    imagenet_url: str | None = None
    # For backbones whose ImageNet weights are not a Keras file: "module:function" returning
    # the local weight file path, and "module:function(model, path)" that loads it.
    imagenet_resolver: str | None = None
    weights_loader: str | None = None
    paper: bool = False  # one of the four backbones of Cuijpers et al. (2020)
    description: str = ""

    def build_fn(self) -> Callable[..., Any]:
        """Import and return the Keras constructor."""
        return self._resolve(self.constructor)

    @staticmethod
    def _resolve(ref: str) -> Callable[..., Any]:
        module_name, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module_name), attr)

    def identity(self) -> dict[str, Any]:
        """The fields that determine the embedding: what the model fingerprint hashes.

        Descriptive fields (license, description, parameter and FLOP counts) are left
        out, so correcting them does not invalidate anyone's cache.
        """
        return {
            "name": self.name,
            "constructor": self.constructor,
            "constructor_kwargs": [list(kv) for kv in self.constructor_kwargs],
            "embedding_size": self.embedding_size,
            "input_size": list(self.input_size),
            "weights_loader": self.weights_loader,
        }

    def input_format(self, normalise: str) -> dict[str, Any]:
        """Channels, layout and custom mean/std the graph is fed with (built-ins: 3-channel NHWC, none)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view, recorded in sidecars and run configs."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["native_size"] = list(self.native_size)
        d["constructor_kwargs"] = [list(kv) for kv in self.constructor_kwargs]
        return d


@dataclass(frozen=True)
class OnnxBackboneSpec(BackboneSpec):
    """A backbone added from an ONNX file: what the graph expects and gives, and where its copy is."""

    kind: str = "onnx"
    onnx_file: str = ""  # file name under CACHE/models/added/
    onnx_sha256: str = ""
    input_name: str = ""
    output_name: str = ""
    input_shape: tuple[Any, ...] = ()  # as declared in the graph; None where dynamic
    layout: str = "nhwc"
    channels: int = 3
    pool: str = "none"
    mean: tuple[float, ...] | None = None  # --normalisation custom only
    std: tuple[float, ...] | None = None
    opset: int = 0
    source: str = ""
    added: str = ""

    def identity(self) -> dict[str, Any]:
        """What fixes the embedding: the file's sha256 and how it is fed and read out."""
        return {
            "kind": self.kind,
            "name": self.name,
            "onnx_sha256": self.onnx_sha256,
            "input_name": self.input_name,
            "output_name": self.output_name,
            "layout": self.layout,
            "channels": self.channels,
            "pool": self.pool,
            "embedding_size": self.embedding_size,
            "input_size": list(self.input_size),
        }

    def input_format(self, normalise: str) -> dict[str, Any]:
        """Channels and layout of the graph's input; mean/std when the normalisation is custom."""
        custom = normalise == "custom"
        return {
            "channels": self.channels,
            "layout": self.layout,
            "mean": self.mean if custom else None,
            "std": self.std if custom else None,
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (also the registry entry and the record runs keep)."""
        d = super().to_dict()
        d["input_shape"] = list(self.input_shape)
        for key in ("mean", "std"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d


def is_added_spec(spec: Any) -> bool:
    """Whether a spec is an added ONNX backbone."""
    return isinstance(spec, OnnxBackboneSpec)


def is_added_record(d: Any) -> bool:
    """Whether a recorded spec dict describes an added ONNX backbone."""
    return isinstance(d, dict) and d.get("kind") == "onnx"


def spec_from_dict(d: dict[str, Any]) -> OnnxBackboneSpec:
    """Rebuild an added spec from its registry entry or a run's record."""
    known = {f.name for f in fields(OnnxBackboneSpec)}
    kw = {k: v for k, v in d.items() if k in known}
    for key in ("input_size", "native_size", "input_shape"):
        kw[key] = tuple(kw.get(key) or ())
    kw["constructor_kwargs"] = tuple(tuple(kv) for kv in kw.get("constructor_kwargs") or ())
    for key in ("mean", "std"):
        kw[key] = tuple(kw[key]) if kw.get(key) is not None else None
    return OnnxBackboneSpec(**kw)


def mean_std(prep: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on [0, 1] pixels that a preprocessing of an added model applies."""
    if prep.normalise == "custom":
        return tuple(prep.mean), tuple(prep.std)
    if prep.normalise not in NORMALISATION_MEAN_STD:
        raise UsageError(f"normalisation {prep.normalise!r} is not one of {', '.join(ADDED_NORMALISATIONS)}")
    return NORMALISATION_MEAN_STD[prep.normalise]


# --------------------------------------------------------------------------------------------
# The added-models registry file of one cache folder (written by xrayfx.models.custom).


def models_dir(cache_dir: str | Path) -> Path:
    """CACHE/models: exports, and the added models' registry file."""
    return Path(cache_dir) / "models"


def registry_path(cache_dir: str | Path) -> Path:
    """CACHE/models/added-models.json."""
    return models_dir(cache_dir) / REGISTRY_FILE


def copy_path(spec: OnnxBackboneSpec, cache_dir: str | Path) -> Path:
    """Where the verbatim copy of an added model's ONNX file lives."""
    return models_dir(cache_dir) / ADDED_DIR / spec.onnx_file


def read_registry(cache_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The added-models entries of a cache folder by name ({} when none were added); refuses a foreign file."""
    path = registry_path(cache_dir)
    if not path.is_file():
        return {}
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("models"), dict):
        raise UsageError(
            f"{path} is not an xrayfx added-models registry (schema {SCHEMA}); expected "
            '{"schema": 1, "models": {...}}. Fix: restore it, or delete it and add the models again.'
        )
    return doc["models"]


def added_names(cache_dir: str | Path) -> list[str]:
    """Names of the models added to a cache folder, sorted."""
    return sorted(read_registry(cache_dir))


def load_added_spec(name: str, cache_dir: str | Path) -> OnnxBackboneSpec | None:
    """The spec of a model added to ``cache_dir``, or None."""
    entry = read_registry(cache_dir).get(name.strip().lower())
    return spec_from_dict(entry) if entry is not None else None


def list_added(cache_dir: str | Path) -> list[OnnxBackboneSpec]:
    """Specs of every model added to a cache folder, by name."""
    return [spec_from_dict(entry) for _, entry in sorted(read_registry(cache_dir).items())]
