"""The identity of a model: backbone spec, weights source and preprocessing, and its exported ONNX file.

Everything that fixes an embedding, without the exporter (TensorFlow): inference,
quantisation, augmentation and training import these types from here. An export's sidecar
is found and read (:func:`load_exported`) and committed (:func:`commit_export`) here too,
so the Keras exporter and the wrapper of added ONNX backbones share one implementation.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xrayfx.data.preprocessing import Preprocessing
from xrayfx.exceptions import CacheError, IntegrityError, UsageError, WeightsError
from xrayfx.models.registry import get_spec, resolve_preprocessing
from xrayfx.models.spec import ADDED_DIR, BackboneSpec, is_added_record, is_added_spec, spec_from_dict
from xrayfx.util import atomic_write_json, import_keras_quietly, library_versions, read_json, sha256_file, sha256_json

WEIGHT_SUFFIXES = (".h5", ".weights.h5", ".keras", ".pth")
OPSET = 17  # the ONNX opset of Keras exports (and of a wrapped graph whose source declares none)


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights come from, resolved to a file hash or a seed."""

    kind: str  # "imagenet" | "file" | "none"
    path: str | None = None
    sha256: str | None = None
    seed: int | None = None

    @property
    def is_random(self) -> bool:
        return self.kind == "none"

    def identity(self) -> dict[str, Any]:
        """What the fingerprint depends on: the file's content, or the seed."""
        if self.is_random:
            return {"kind": "none", "seed": self.seed}
        return {"kind": "file", "sha256": self.sha256}

    def describe(self) -> str:
        if self.is_random:
            return f"random initialisation (seed {self.seed}) — NOT pretrained"
        label = "ImageNet" if self.kind == "imagenet" else "file"
        return f"{label} weights {self.path} (sha256 {(self.sha256 or '?')[:12]}…)"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "sha256": self.sha256, "seed": self.seed}


@dataclass(frozen=True)
class ModelConfig:
    """A backbone, its weights and its preprocessing: everything that fixes the embedding."""

    spec: BackboneSpec
    weights: WeightsSource
    preprocessing: Preprocessing

    @property
    def fingerprint(self) -> str:
        """sha256 of (registry spec, weights sha256 or seed, preprocessing, input size)."""
        return sha256_json(
            {
                "spec": self.spec.identity(),
                "weights": self.weights.identity(),
                "preprocessing": self.preprocessing.to_dict(),
                "input_size": list(self.preprocessing.input_size),
            }
        )

    @property
    def stem(self) -> str:
        return f"{self.spec.name}-{self.fingerprint[:12]}"

    def onnx_path(self, cache_dir: str | Path) -> Path:
        return Path(cache_dir) / "models" / f"{self.stem}.onnx"

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.spec.name,
            "fingerprint": self.fingerprint,
            "weights": self.weights.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "spec": self.spec.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "the record") -> "ModelConfig":
        """Rebuild a config recorded by :meth:`to_dict` (the fingerprint is re-derived and checked).

        ``source`` names where ``d`` was read (e.g. a run's config.json) for the error message.
        """
        spec = _recorded_spec(d)
        w = d["weights"]
        config = cls(
            spec=spec,
            weights=WeightsSource(kind=w["kind"], path=w.get("path"), sha256=w.get("sha256"), seed=w.get("seed")),
            preprocessing=Preprocessing.from_dict(d["preprocessing"]),
        )
        if config.fingerprint != d["fingerprint"]:
            raise IntegrityError(_fingerprint_mismatch(d, config, source))
        return config



def _fingerprint_mismatch(d: dict[str, Any], config: "ModelConfig", source: str) -> str:
    """Why a recorded model configuration does not match its fingerprint: an edit, or a changed registry.

    If the record's own spec, weights and preprocessing hash to its fingerprint, the record is intact and
    the registry changed; otherwise the record was edited.
    """
    spec = config.spec
    head = (f"{source} records fingerprint {str(d['fingerprint'])[:12]} for {spec.name}, but its settings give "
            f"{config.fingerprint[:12]}")
    spec_value = d.get("spec")
    recorded_spec: dict[str, Any] = spec_value if isinstance(spec_value, dict) else {}
    as_recorded = sha256_json({
        "spec": {k: recorded_spec.get(k) for k in spec.identity()},
        "weights": config.weights.identity(),
        "preprocessing": config.preprocessing.to_dict(),
        "input_size": list(config.preprocessing.input_size),
    })
    if as_recorded == d["fingerprint"] and recorded_spec.get("name") == spec.name:
        return (f"{head}: the registry spec of {spec.name} changed since it was recorded. "
                "Fix: re-extract and retrain with this version of xrayfx")
    return (f"{head}: its model settings (weights or preprocessing) were edited after it was written, so it no "
            "longer matches what was trained. Fix: restore the original file, or rerun the command that wrote it")


def _recorded_spec(d: dict[str, Any]) -> BackboneSpec:
    """The spec of a recorded config: a built-in by name, an added ONNX backbone from its recorded spec."""
    return spec_from_dict(d["spec"]) if is_added_record(d.get("spec")) else get_spec(d["backbone"])


@dataclass(frozen=True)
class ExportedModel:
    """An exported ONNX file and its sidecar record."""

    config: ModelConfig
    path: Path
    sidecar: dict[str, Any]

    @property
    def sidecar_path(self) -> Path:
        return sidecar_path(self.path)


def sidecar_path(onnx_path: str | Path) -> Path:
    """The JSON sidecar beside an ONNX file."""
    return Path(onnx_path).with_suffix(".json")


def load_exported(config: ModelConfig, cache_dir: str | Path) -> ExportedModel | None:
    """The registered export of this config, or None if there is none yet."""
    path = config.onnx_path(cache_dir)
    side = sidecar_path(path)
    if not (path.is_file() and side.is_file()):
        return None
    sidecar = _read_sidecar(side, path)
    if sidecar.get("fingerprint") != config.fingerprint:
        return None
    return ExportedModel(config=config, path=path, sidecar=sidecar)


#: Sidecar keys that extraction relies on, with their JSON types.
_SIDECAR_KEYS = {"fingerprint": str, "onnx_sha256": str}


def _read_sidecar(side: Path, onnx: Path) -> dict[str, Any]:
    """The sidecar JSON of an export; CacheError with the fix when it is truncated, edited or not an object."""
    fix = (f"it was truncated or edited after export. Fix: delete {side} and {onnx} and rerun (the model is "
           "exported again), or restore the file")
    try:
        sidecar = read_json(side)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CacheError(f"model sidecar {side} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(sidecar, dict):
        raise CacheError(f"model sidecar {side} holds a {type(sidecar).__name__}, not an object; {fix}")
    bad = [k for k, t in _SIDECAR_KEYS.items() if not isinstance(sidecar.get(k), t)]
    if bad:
        raise CacheError(f"model sidecar {side} lacks a valid {', '.join(bad)}; {fix}")
    return sidecar


def keras_home() -> Path:
    """Keras' cache root, as Keras itself resolves it."""
    if os.environ.get("KERAS_HOME"):
        return Path(os.environ["KERAS_HOME"])
    home = Path(os.path.expanduser("~")) / ".keras"
    return home if os.access(home.parent, os.W_OK) else Path("/tmp/.keras")


def resolve_weights(spec: BackboneSpec, weights: str = "imagenet", seed: int = 0) -> WeightsSource:
    """Resolve ``--weights imagenet|none|PATH`` to a file and its sha256, or to a seed."""
    if is_added_spec(spec):
        return _added_weights(spec, weights)
    if weights == "none":
        return WeightsSource(kind="none", seed=int(seed))
    if weights == "imagenet":
        path = _imagenet_file(spec)
        return WeightsSource(kind="imagenet", path=str(path), sha256=sha256_file(path))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UsageError(
            f"--weights {weights!r} is neither 'imagenet', 'none' nor an existing file; "
            f"give a Keras weight file ({', '.join(WEIGHT_SUFFIXES)}) for {spec.name}"
        )
    if not path.name.endswith(WEIGHT_SUFFIXES):
        raise UsageError(
            f"--weights {path} has an unexpected suffix; expected one of {', '.join(WEIGHT_SUFFIXES)}"
        )
    return WeightsSource(kind="file", path=str(path.resolve()), sha256=sha256_file(path))


def _added_weights(spec: BackboneSpec, weights: str) -> WeightsSource:
    """The weights of an added model are its ONNX file: ``--weights`` must stay at its default."""
    if weights != "imagenet":
        raise UsageError(
            f"{spec.name} is an added ONNX backbone whose weights are inside its file; got --weights {weights!r}. "
            "Fix: leave --weights out (or add another ONNX file under a new name)."
        )
    return WeightsSource(kind="file", path=f"{ADDED_DIR}/{getattr(spec, 'onnx_file')}",
                         sha256=getattr(spec, "onnx_sha256"))


def _imagenet_file(spec: BackboneSpec) -> Path:
    if spec.imagenet_resolver:
        return Path(spec._resolve(spec.imagenet_resolver)())
    if not spec.imagenet_file or not spec.imagenet_url:
        raise WeightsError(f"{spec.name} has no ImageNet weights; use --weights none or --weights PATH")
    cached = keras_home() / "models" / spec.imagenet_file
    if cached.is_file():
        return cached
    try:
        keras = import_keras_quietly()
        return Path(
            keras.utils.get_file(spec.imagenet_file, spec.imagenet_url + spec.imagenet_file, cache_subdir="models")
        )
    except Exception as exc:  # network errors come in many types (URLError, OSError, HTTPError…)
        raise WeightsError(
            f"could not download ImageNet weights for {spec.name} ({spec.imagenet_url}{spec.imagenet_file}): "
            f"{exc}. Offline, put that file in {cached.parent}/, or use --weights PATH (a Keras .h5 file) "
            "or --weights none (random initialisation)."
        ) from exc


def model_config(
    model: str,
    weights: str = "imagenet",
    seed: int = 0,
    preprocess: str = "imagenet",
    resize: str = "stretch",
    bit_depth: int | None = None,
    cache_dir: str | Path | None = None,
) -> ModelConfig:
    """Resolve the model options of the CLI into a :class:`ModelConfig` (``bit_depth``: see resolve_preprocessing).

    Every command resolves ``--model`` here: pass ``cache_dir`` so that models added
    to that cache (``xrayfx models add``) resolve too (see :func:`get_spec`).
    """
    spec = get_spec(model, cache_dir)
    return ModelConfig(
        spec=spec,
        weights=resolve_weights(spec, weights, seed),
        preprocessing=resolve_preprocessing(spec, preprocess, resize, bit_depth),
    )


def commit_export(tmp: Path, out: Path, sidecar: dict[str, Any], started: float) -> dict[str, Any]:
    """Finish an export: add its time (since ``started``, a ``perf_counter`` value), peak memory, library
    versions and date to ``sidecar``, move the ONNX file ``tmp`` into place at ``out``, then write the
    sidecar beside it (atomically, so a sidecar never names a file that is not there)."""
    sidecar = {
        **sidecar,
        "export_seconds": round(time.perf_counter() - started, 2),
        "export_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    os.replace(tmp, out)
    atomic_write_json(sidecar_path(out), sidecar)
    return sidecar


def has_external_data(onnx_file: str | Path) -> bool:
    """Whether an ONNX file refers to weights stored outside itself."""
    import onnx

    model = onnx.load(str(onnx_file), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def count_gflops(onnx_file: Path) -> float | None:
    """GFLOP per image of the Conv/MatMul/Gemm nodes (a multiply-add counts as 2)."""
    import onnx
    from onnx import shape_inference

    try:
        model = shape_inference.infer_shapes(onnx.load(str(onnx_file)))
    except (onnx.onnx_cpp2py_export.shape_inference.InferenceError, ValueError):
        return None
    shapes: dict[str, list[int]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    flops = 0
    for node in model.graph.node:
        if node.op_type == "Conv" and node.output[0] in shapes and node.input[1] in inits:
            out = shapes[node.output[0]]
            wshape = inits[node.input[1]]  # (M, C/group, kh, kw)
            flops += 2 * int(np.prod(out[1:])) * int(np.prod(wshape[1:]))
        elif node.op_type in ("MatMul", "Gemm") and node.input[1] in inits:
            k, n = inits[node.input[1]][-2:]
            rows = int(np.prod(shapes.get(node.output[0], [1])[:-1])) or 1
            flops += 2 * rows * k * n
    return round(flops / 1e9, 3) if flops else None
