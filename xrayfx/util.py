"""Small shared helpers: hashing, atomic writes, version records."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from xrayfx.exceptions import IntegrityError

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a bytes object."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of a canonical JSON encoding (sorted keys, no spaces)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode())


def verify_sha256(path: str | Path, expected: str, what: str = "file") -> None:
    """Raise IntegrityError unless the file's sha256 equals ``expected``."""
    got = sha256_file(path)
    if got != expected:
        raise IntegrityError(
            f"{what} {path} has sha256 {got[:16]}…, expected {expected[:16]}… as recorded; "
            "it was changed or corrupted after it was written. Delete it and rerun to rebuild it."
        )


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that readers see either the old or the complete new content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically write UTF-8 text; file names that are not UTF-8 (lone surrogates) keep their original bytes."""
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


_VERSIONED = (
    "xrayfx", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorflow", "keras",
    "tf2onnx", "zarr", "scikit-learn", "imbalanced-learn", "pillow", "skops", "openvino",
)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape xrayfx's numbers, plus Python and platform."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def import_keras_quietly():
    """Import keras (and TensorFlow) with their start-up chatter on stderr silenced.

    TensorFlow 2.21 prints oneDNN and CUDA-probe lines through absl before any log
    level applies; they bury xrayfx's own messages. Only the import is silenced.
    """
    import sys

    if "keras" in sys.modules:
        return sys.modules["keras"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return keras


def jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays converted, NaN and inf as None, tuples as lists."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)
