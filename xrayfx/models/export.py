"""Keras → ONNX export, once per model fingerprint, with a parity check.

The exported graph takes ``image``: uint8 NHWC at the backbone's input size and
returns ``embedding``: the pooled float32 features. The cast and the
normalisation live inside the graph, so every runtime is fed uint8 and shares
one code path.

Exports take several GiB of memory that TensorFlow does not give back, so each
runs in a child process (``python -m xrayfx.models.export``), one at a time, under a
lock per ONNX file so that concurrent callers wait for one export instead of racing.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from xrayfx import exceptions
from xrayfx.data.preprocessing import Preprocessing
from xrayfx.exceptions import ExportError, ParityError, WeightsError
# load_exported, count_gflops and OPSET live in config (the wrapper shares them); importable from here as before.
from xrayfx.models.config import (
    OPSET,
    ExportedModel,
    ModelConfig,
    commit_export,
    count_gflops,
    has_external_data,
    load_exported,
)
from xrayfx.models.spec import is_added_spec
from xrayfx.models.wrap import export_added
from xrayfx.util import atomic_write_json, import_keras_quietly, read_json, sha256_file

PARITY_RTOL = 1e-4  # max |onnx - keras| must stay below PARITY_RTOL * max |keras|
PARITY_BATCHES = (1, 8)


def export_model(
    config: ModelConfig,
    cache_dir: str | Path = "cache",
    force: bool = False,
    parity_images: np.ndarray | None = None,
    log=None,
) -> ExportedModel:
    """Export a backbone to ONNX once (in a child process), check parity, register it.

    Returns the existing export when the fingerprint is already registered. The
    export holds a lock of its own (``<stem>.export.lock`` beside the ONNX file):
    a second process asking for the same model waits for the first one's export
    and then uses it, instead of racing it over the same files.
    An added ONNX backbone is wrapped (uint8 input, preprocessing) instead, without TensorFlow.
    """
    if is_added_spec(config.spec):
        return export_added(config, cache_dir, force=force, log=log)
    if not force:
        existing = load_exported(config, cache_dir)
        if existing is not None:
            return existing
    path = config.onnx_path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _export_lock(path, config, log):
        if not force:
            existing = load_exported(config, cache_dir)  # exported by the process we waited for
            if existing is not None:
                return existing
        return _export_in_child(config, cache_dir, path, parity_images, log)


@contextmanager
def _export_lock(path: Path, config: ModelConfig, log=None) -> Iterator[None]:
    """Hold the export lock of one ONNX file, waiting (and saying so) while another process holds it."""
    fd = os.open(path.with_suffix(".export.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            if log:
                log(f"waiting for process {holder}, which is exporting {config.spec.name}…")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the kernel releases it too if we are killed


def _export_in_child(
    config: ModelConfig, cache_dir: str | Path, path: Path, parity_images: np.ndarray | None, log=None
) -> ExportedModel:
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
        [sys.executable, "-m", "xrayfx.models.export", str(request)], env=env, capture_output=True, text=True
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
        sidecar = commit_export(tmp, out, {
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
        }, t0)
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
