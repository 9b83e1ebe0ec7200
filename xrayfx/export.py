"""Keras → ONNX export, once per model fingerprint, with a parity check.

The exported graph takes ``image``: uint8 NHWC at the backbone's input size and
returns ``embedding``: the pooled float32 features. The cast and the
normalisation live inside the graph, so every runtime is fed uint8 and shares
one code path.

Exports take several GiB of memory that TensorFlow does not give back, so each
runs in a child process (``python -m xrayfx.export``), one at a time.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xrayfx import exceptions
from xrayfx.exceptions import ExportError, ParityError, UsageError, WeightsError
from xrayfx.registry import BackboneSpec, Preprocessing, get_spec, resolve_preprocessing
from xrayfx.util import (
    atomic_write_json,
    import_keras_quietly,
    library_versions,
    read_json,
    sha256_file,
    sha256_json,
)

OPSET = 17
PARITY_RTOL = 1e-4  # max |onnx - keras| must stay below PARITY_RTOL * max |keras|
PARITY_BATCHES = (1, 8)
WEIGHT_SUFFIXES = (".h5", ".weights.h5", ".keras", ".pth")


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
        return f"{label} weights {self.path} (sha256 {self.sha256[:12]}…)"

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
        spec = get_spec(d["backbone"])
        w = d["weights"]
        p = d["preprocessing"]
        config = cls(
            spec=spec,
            weights=WeightsSource(kind=w["kind"], path=w.get("path"), sha256=w.get("sha256"), seed=w.get("seed")),
            preprocessing=Preprocessing(
                normalise=p["normalise"], resize=p["resize"], input_size=tuple(p["input_size"]), option=p["option"]
            ),
        )
        if config.fingerprint != d["fingerprint"]:
            raise exceptions.IntegrityError(_fingerprint_mismatch(d, config, source))
        return config


def _fingerprint_mismatch(d: dict[str, Any], config: "ModelConfig", source: str) -> str:
    """Why a recorded model configuration does not match its fingerprint: an edit, or a changed registry.

    If the record's own spec, weights and preprocessing hash to its fingerprint, the record is intact and
    the registry changed; otherwise the record was edited.
    """
    spec = config.spec
    head = (f"{source} records fingerprint {str(d['fingerprint'])[:12]} for {spec.name}, but its settings give "
            f"{config.fingerprint[:12]}")
    recorded_spec = d.get("spec") if isinstance(d.get("spec"), dict) else {}
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


def keras_home() -> Path:
    """Keras' cache root, as Keras itself resolves it."""
    if os.environ.get("KERAS_HOME"):
        return Path(os.environ["KERAS_HOME"])
    home = Path(os.path.expanduser("~")) / ".keras"
    return home if os.access(home.parent, os.W_OK) else Path("/tmp/.keras")


def resolve_weights(spec: BackboneSpec, weights: str = "imagenet", seed: int = 0) -> WeightsSource:
    """Resolve ``--weights imagenet|none|PATH`` to a file and its sha256, or to a seed."""
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
) -> ModelConfig:
    """Resolve the five model options of the CLI into a :class:`ModelConfig`."""
    spec = get_spec(model)
    return ModelConfig(
        spec=spec,
        weights=resolve_weights(spec, weights, seed),
        preprocessing=resolve_preprocessing(spec, preprocess, resize),
    )


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
        raise exceptions.CacheError(f"model sidecar {side} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(sidecar, dict):
        raise exceptions.CacheError(f"model sidecar {side} holds a {type(sidecar).__name__}, not an object; {fix}")
    bad = [k for k, t in _SIDECAR_KEYS.items() if not isinstance(sidecar.get(k), t)]
    if bad:
        raise exceptions.CacheError(f"model sidecar {side} lacks a valid {', '.join(bad)}; {fix}")
    return sidecar


def export_model(
    config: ModelConfig,
    cache_dir: str | Path = "cache",
    force: bool = False,
    parity_images: np.ndarray | None = None,
    log=None,
) -> ExportedModel:
    """Export a backbone to ONNX once (in a child process), check parity, register it.

    Returns the existing export when the fingerprint is already registered.
    """
    if not force:
        existing = load_exported(config, cache_dir)
        if existing is not None:
            return existing
    path = config.onnx_path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    request = path.with_suffix(".request.json")
    result = path.with_suffix(".result.json")
    parity_file = None
    if parity_images is not None:
        parity_file = path.with_suffix(".parity.npy")
        np.save(parity_file, np.ascontiguousarray(parity_images, dtype=np.uint8), allow_pickle=False)
    atomic_write_json(
        request,
        {"config": config.to_dict(), "out": str(path), "parity_images": str(parity_file) if parity_file else None},
    )
    result.unlink(missing_ok=True)
    if log:
        log(f"exporting {config.spec.name} to ONNX in a child process ({config.weights.describe()})…")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "xrayfx.export", str(request)], env=env, capture_output=True, text=True
    )
    try:
        if not result.is_file():
            raise ExportError(
                f"export of {config.spec.name} died (exit code {proc.returncode}) before reporting; "
                f"its last output:\n{proc.stderr[-3000:]}"
            )
        outcome = read_json(result)
        if outcome.get("error"):
            err_cls = getattr(exceptions, outcome["error"]["type"], ExportError)
            raise err_cls(outcome["error"]["message"])
    finally:
        for f in (request, result, parity_file):
            if f is not None:
                Path(f).unlink(missing_ok=True)
    exported = load_exported(config, cache_dir)
    if exported is None:
        raise ExportError(f"export of {config.spec.name} reported success but {path} is not registered")
    return exported


# --------------------------------------------------------------------------------------------
# Child-process side: everything below imports TensorFlow.


def build_keras_backbone(config: ModelConfig):
    """Build the headless Keras backbone with pooled output and load its weights."""
    keras = import_keras_quietly()

    spec = config.spec
    keras.utils.set_random_seed(config.weights.seed if config.weights.is_random else 0)
    h, w = config.preprocessing.input_size
    model = spec.build_fn()(
        include_top=False, weights=None, input_shape=(h, w, 3), pooling="avg", **dict(spec.constructor_kwargs)
    )
    if not config.weights.is_random:
        path = config.weights.path
        try:
            if spec.weights_loader:
                spec._resolve(spec.weights_loader)(model, path)
            else:
                model.load_weights(path)
        except WeightsError:
            raise
        except (ValueError, OSError, KeyError) as exc:
            raise WeightsError(
                f"could not load weights {path} into {spec.name}: {exc}. Expected the headless (no top) "
                f"Keras weight file of {spec.name}; check --weights."
            ) from exc
    return model


def keras_embed(model, images: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """The Keras reference embedding of uint8 NHWC images."""
    x = preprocessing.apply(images.astype(np.float32))
    return np.asarray(model(x, training=False), dtype=np.float32)


def _convert(model, config: ModelConfig, out: Path) -> None:
    import tensorflow as tf
    import tf2onnx

    h, w = config.preprocessing.input_size
    signature = [tf.TensorSpec([None, h, w, 3], tf.uint8, name="image")]
    prep = config.preprocessing

    @tf.function(input_signature=signature)
    def embed(image):
        x = prep.apply(tf.cast(image, tf.float32))
        return {"embedding": model(x, training=False)}

    tf2onnx.convert.from_function(embed, input_signature=signature, opset=OPSET, output_path=str(out))


def check_parity(model, onnx_file: Path, config: ModelConfig, images: np.ndarray | None) -> dict[str, Any]:
    """Compare ONNX (onnxruntime CPU, fp32) with Keras at batch 1 and 8; raise ParityError on mismatch."""
    import onnxruntime as ort

    h, w = config.preprocessing.input_size
    if images is None:
        images = np.random.default_rng(0).integers(0, 256, size=(max(PARITY_BATCHES), h, w, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    report: dict[str, Any] = {"tolerance_relative": PARITY_RTOL}
    for batch in PARITY_BATCHES:
        x = np.ascontiguousarray(images[:batch])
        ref = keras_embed(model, x, config.preprocessing)
        got = session.run(["embedding"], {"image": x})[0]
        scale = float(np.abs(ref).max())
        diff = float(np.abs(got - ref).max())
        report[f"batch{batch}"] = {"max_abs_diff": diff, "max_abs_keras": scale}
        if got.shape != ref.shape or not diff <= PARITY_RTOL * scale:
            raise ParityError(
                f"ONNX export of {config.spec.name} disagrees with Keras at batch {batch}: "
                f"max |onnx - keras| = {diff:.3g} > {PARITY_RTOL:g} x max|keras| ({scale:.3g}); "
                "the model was not registered. Report this with the versions in `xrayfx --version`."
            )
    return report


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


def has_external_data(onnx_file: str | Path) -> bool:
    """Whether an ONNX file refers to weights stored outside itself."""
    import onnx

    model = onnx.load(str(onnx_file), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def run_export(request: dict[str, Any]) -> dict[str, Any]:
    """Build, convert, check and register one model (runs in the child process)."""
    config = ModelConfig.from_dict(request["config"])
    out = Path(request["out"])
    images = np.load(request["parity_images"], allow_pickle=False) if request.get("parity_images") else None
    t0 = time.perf_counter()
    model = build_keras_backbone(config)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        _convert(model, config, tmp)
        if has_external_data(tmp):
            raise ExportError(f"{config.spec.name}: the export stores weights as external data; xrayfx needs one file")
        parity = check_parity(model, tmp, config, images)
        seconds = time.perf_counter() - t0
        sidecar = {
            "fingerprint": config.fingerprint,
            "backbone": config.spec.name,
            "onnx_file": out.name,
            "onnx_sha256": sha256_file(tmp),
            "onnx_bytes": tmp.stat().st_size,
            "opset": OPSET,
            "input": {"name": "image", "dtype": "uint8", "layout": "NHWC",
                      "shape": [None, *config.preprocessing.input_size, 3]},
            "output": {"name": "embedding", "dtype": "float32", "shape": [None, config.spec.embedding_size]},
            "preprocessing": config.preprocessing.to_dict(),
            "weights": config.weights.to_dict(),
            "config": config.to_dict(),
            "params": int(model.count_params()),
            "gflops_per_image": count_gflops(tmp),
            "parity": parity,
            "export_seconds": round(seconds, 2),
            "export_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "versions": library_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.replace(tmp, out)
        atomic_write_json(sidecar_path(out), sidecar)
    finally:
        tmp.unlink(missing_ok=True)
    return sidecar


def _child_main(request_file: str) -> int:
    request = read_json(request_file)
    result_file = Path(request["out"]).with_suffix(".result.json")
    try:
        run_export(request)
    except exceptions.XrayfxError as exc:
        atomic_write_json(result_file, {"error": {"type": type(exc).__name__, "message": str(exc)}})
        return 3
    atomic_write_json(result_file, {"ok": True})
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
