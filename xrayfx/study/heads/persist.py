"""Save and load heads without pickle, with every file's sha256 checked on load.

* :class:`~xrayfx.study.heads.paper.PaperHead` → ``head.keras`` (Keras' zip of JSON
  config + HDF5 weights) and ``head.json`` (parameters, classes, history).
  Loading first checks the archive's config against an allow-list of Keras
  classes, then loads with ``safe_mode=True`` (which refuses Lambda layers and
  other serialised Python code) and without the training configuration.
* Classical heads → ``head.skops`` (the fitted scikit-learn pipeline, written
  by ``skops.io``). Loading walks the file's schema and refuses any type not
  in :data:`ALLOWED_TYPES` — skops' own ``trusted=`` list only *adds* to its
  broad defaults (most of scikit-learn), so xrayfx checks the exact set itself
  and then passes the same list to ``skops.io.load``.

:func:`save_head` returns a JSON-ready record (file names, sha256, class,
parameters, classes) for the run's metadata; :func:`load_head` needs it back
and verifies the hashes before reading anything. Files are written atomically.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from xrayfx.exceptions import IntegrityError, UnsafeModelError, UsageError
from xrayfx.study.heads.base import Head
from xrayfx.study.heads.classical import KNNHead, LinearSVMHead, LogisticRegressionHead, RBFSVMHead, SklearnHead
from xrayfx.study.heads.paper import PaperHead
from xrayfx.util import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    import_keras_quietly,
    sha256_file,
    verify_sha256,
)

KERAS_FILE = "head.keras"
KERAS_META_FILE = "head.json"
SKOPS_FILE = "head.skops"
HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")

#: Every type a saved classical head may contain, as "module.Class". Computed
#: with skops 0.16.0 / scikit-learn 1.9.1 by walking the schemas of every
#: classical head saved with class_weight None, "balanced" and a dict, k-NN with
#: both weightings, float32 and float64 inputs (``skops_types``), then fixed
#: here. The calibrated SVMs need the two private calibration classes;
#: everything else is containers, arrays and the estimators themselves.
#: tests/test_heads.py checks that freshly saved heads stay inside this list.
ALLOWED_TYPES: tuple[str, ...] = (
    "builtins.dict",
    "builtins.int",
    "builtins.list",
    "builtins.str",
    "builtins.tuple",
    "numpy.float64",
    "numpy.ndarray",
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.neighbors._classification.KNeighborsClassifier",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.svm._classes.LinearSVC",
    "sklearn.svm._classes.SVC",
)

#: Keras classes a saved PaperHead's config.json may name (layers, initialisers,
#: regulariser, dtype policy, optimiser of the compile config, the model itself).
ALLOWED_KERAS_CLASSES: frozenset[str] = frozenset(
    {
        "Functional", "InputLayer", "Dropout", "Dense", "BatchNormalization",
        "DTypePolicy", "GlorotUniform", "Zeros", "Ones", "L1L2", "SGD", "__keras_tensor__",
    }
)
_KERAS_MEMBERS = frozenset({"metadata.json", "config.json", "model.weights.h5"})

_CLASSES: dict[str, type[Head]] = {
    cls.__name__: cls
    for cls in (PaperHead, LogisticRegressionHead, LinearSVMHead, RBFSVMHead, KNNHead)
}


# ------------------------------------------------------------------ helpers
def _jsonable(value: Any) -> Any:
    """Parameters and labels as plain JSON values (numpy scalars become Python ones)."""
    if isinstance(value, dict):
        return {(k.item() if isinstance(k, np.generic) else k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _record_base(head: Head, kind: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "class": type(head).__name__,
        "params": _jsonable(head.get_params(deep=False)),
        "classes": _jsonable(head.classes_.tolist()),
        "n_features_in": int(head.n_features_in_),
    }


def write_history_csv(history: list[dict[str, Any]], path: str | Path) -> None:
    """Write a head's per-epoch ``history_`` as CSV (empty cells where a value is None)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(HISTORY_FIELDS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in HISTORY_FIELDS})
    atomic_write_text(path, buf.getvalue())


def _atomic_keras_save(model: Any, path: Path) -> None:
    """Save a Keras model to ``path`` via a temporary ``.keras`` file and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".keras")
    os.close(fd)
    try:
        model.save(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------- save
def save_head(head: Head, directory: str | Path) -> dict[str, Any]:
    """Write a fitted head into ``directory``; return its record (JSON-ready).

    The record holds ``file`` and ``sha256`` of the model file, ``kind``
    ("paper" or "sklearn"), ``class``, ``params``, ``classes`` and
    ``n_features_in``; for the paper head also ``meta_file`` and
    ``meta_sha256`` of ``head.json`` (which keeps the per-epoch history).
    """
    if not hasattr(head, "classes_"):
        raise UsageError(
            f"Cannot save an unfitted {type(head).__name__}: call fit first, then save_head."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(head, PaperHead):
        record = _record_base(head, "paper")
        path = directory / KERAS_FILE
        _atomic_keras_save(head.model_, path)
        meta_path = directory / KERAS_META_FILE
        atomic_write_json(
            meta_path,
            {
                "class": record["class"],
                "params": record["params"],
                "classes": record["classes"],
                "n_features_in": record["n_features_in"],
                "history": _jsonable(head.history_),
            },
        )
        record.update(
            file=KERAS_FILE, sha256=sha256_file(path),
            meta_file=KERAS_META_FILE, meta_sha256=sha256_file(meta_path),
        )
        return record
    if isinstance(head, SklearnHead):
        import skops.io

        record = _record_base(head, "sklearn")
        path = directory / SKOPS_FILE
        atomic_write_bytes(path, skops.io.dumps(head.model_))
        record.update(file=SKOPS_FILE, sha256=sha256_file(path))
        return record
    raise UsageError(
        f"save_head takes an xrayfx head (PaperHead or a classical head); got {type(head).__name__}."
    )


# --------------------------------------------------------------------- load
def _file_in(directory: Path, record: dict[str, Any], key: str) -> Path:
    name = record.get(key)
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise IntegrityError(
            f"The head record's {key!r} must be a plain file name inside {directory}; got {name!r}. "
            "The run's record is damaged: retrain the head."
        )
    path = directory / name
    if not path.is_file():
        raise IntegrityError(f"Head file {path} is missing; retrain the head to rebuild it.")
    return path


def _check_record(record: dict[str, Any]) -> type[Head]:
    missing = [k for k in ("file", "sha256", "kind", "class", "params", "classes") if k not in record]
    if missing:
        raise IntegrityError(
            f"The head record lacks {', '.join(missing)}; expected the dict save_head returned. "
            "Retrain the head to rebuild it."
        )
    cls = _CLASSES.get(record["class"])
    if cls is None:
        raise IntegrityError(
            f"The head record names class {record['class']!r}; expected one of "
            f"{', '.join(_CLASSES)}. Retrain the head."
        )
    kind = "paper" if cls is PaperHead else "sklearn"
    if record["kind"] != kind:
        raise IntegrityError(
            f"The head record says kind {record['kind']!r} for {cls.__name__}; expected {kind!r}."
        )
    return cls


def _new_head(cls: type[Head], params: Any) -> Head:
    valid = cls._get_param_names()
    if not isinstance(params, dict) or set(params) - set(valid):
        extra = sorted(set(params) - set(valid)) if isinstance(params, dict) else params
        raise IntegrityError(
            f"The head record's params for {cls.__name__} are not its parameters ({extra!r}); "
            f"expected a subset of {', '.join(valid)}. Retrain the head."
        )
    return cls(**params)


def load_head(directory: str | Path, record: dict[str, Any]) -> Head:
    """Load the head that ``save_head`` wrote into ``directory`` and described by ``record``.

    Raises :class:`IntegrityError` if a file's sha256 differs from the record
    (checked before the file is parsed) and :class:`UnsafeModelError` if a file
    holds types or code outside the allow-lists; nothing in such a file is run.
    """
    directory = Path(directory)
    cls = _check_record(record)
    path = _file_in(directory, record, "file")
    verify_sha256(path, record["sha256"], what="head file")
    head = _new_head(cls, record["params"])
    classes = np.asarray(record["classes"])
    if isinstance(head, PaperHead):
        meta_path = _file_in(directory, record, "meta_file")
        verify_sha256(meta_path, record.get("meta_sha256", ""), what="head metadata")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("classes") != record["classes"]:
            raise IntegrityError(
                f"{meta_path} lists classes {meta.get('classes')!r} but the record lists "
                f"{record['classes']!r}; they come from different runs. Retrain the head."
            )
        model = load_keras_model(path)
        head._restore(model, classes, meta.get("history", []))
    else:
        model = load_skops_model(path)
        _check_pipeline(head, model, classes, path)
        head.model_ = model
        head.classes_ = classes
        head.n_features_in_ = int(model.n_features_in_)
        head.history_ = []
    if "n_features_in" in record and int(record["n_features_in"]) != head.n_features_in_:
        raise IntegrityError(
            f"{path} takes {head.n_features_in_} features but the record says "
            f"{record['n_features_in']}; the record and the file do not belong together."
        )
    return head


# ---------------------------------------------------------------- Keras side
def _walk_keras_classes(node: Any, found: list[tuple[str | None, str]]) -> None:
    if isinstance(node, dict):
        if "class_name" in node:
            found.append((node.get("module"), str(node["class_name"])))
        for value in node.values():
            _walk_keras_classes(value, found)
    elif isinstance(node, list):
        for value in node:
            _walk_keras_classes(value, found)


def _zip_json(path: Path, member: str, what: str) -> tuple[set[str], Any]:
    """(member names, parsed JSON member) of a zip archive; IntegrityError if it is not readable."""
    try:
        with zipfile.ZipFile(path) as archive:
            return set(archive.namelist()), json.loads(archive.read(member))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(
            f"{path} is not a readable {what} ({type(e).__name__}: {e}); expected the file "
            "save_head wrote. Retrain the head to rebuild it."
        ) from None


def check_keras_archive(path: str | Path) -> None:
    """Refuse a ``.keras`` file whose config names a class outside :data:`ALLOWED_KERAS_CLASSES`.

    Reads only the archive's JSON; nothing is deserialised or imported.
    """
    path = Path(path)
    members, config = _zip_json(path, "config.json", "Keras archive")
    extra = sorted(members - _KERAS_MEMBERS)
    if extra:
        raise UnsafeModelError(
            f"{path} holds unexpected members {extra!r}; a saved paper head holds only "
            f"{', '.join(sorted(_KERAS_MEMBERS))}. It will not be loaded; retrain the head."
        )
    found: list[tuple[str | None, str]] = []
    _walk_keras_classes(config, found)
    bad = sorted(
        {f"{module}.{name}" if module else name for module, name in found
         if name not in ALLOWED_KERAS_CLASSES or (module is not None and not str(module).startswith("keras"))}
    )
    if bad:
        lam = " (a Lambda layer carries arbitrary Python code)" if any("Lambda" in b for b in bad) else ""
        raise UnsafeModelError(
            f"{path} contains {', '.join(bad)}{lam}; a paper head contains only "
            f"{', '.join(sorted(ALLOWED_KERAS_CLASSES))}. It will not be loaded; retrain the head."
        )


def _forced_safe_mode() -> Any:
    """A context in which Keras deserialises in safe mode whatever the process set globally.

    Keras lets a global ``keras.config.enable_unsafe_deserialization()`` override
    an explicit ``load_model(..., safe_mode=True)`` (verified with Keras 3.15),
    so one careless call anywhere in the process would switch the gate off.
    Keras' own ``SafeModeScope`` pins the flag for the duration of the load; if a
    future Keras moves it, the allow-list check of :func:`check_keras_archive`
    still stands before the load.
    """
    try:
        from keras.src.saving.serialization_lib import SafeModeScope
    except ImportError:
        return contextlib.nullcontext()
    return SafeModeScope(True)


def _keras_safe_load(path: Path) -> Any:
    """``keras.saving.load_model(..., safe_mode=True)``, its refusals as :class:`UnsafeModelError`."""
    keras = import_keras_quietly()

    try:
        with _forced_safe_mode():
            return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (ValueError, TypeError) as e:
        text = str(e)
        first_line = text.splitlines()[0] if text else type(e).__name__
        if "safe_mode" in text or "arbitrary code" in text or "Lambda" in text:
            raise UnsafeModelError(
                f"Keras refused to load {path} in safe mode: it contains a Lambda layer or other "
                "serialised Python code that could run arbitrary code. xrayfx will not load it; "
                f"retrain the head. (Keras: {first_line})"
            ) from None
        raise IntegrityError(
            f"{path} could not be loaded as a Keras head ({type(e).__name__}: {first_line}); "
            "retrain the head to rebuild it."
        ) from None


def load_keras_model(path: str | Path) -> Any:
    """Load a saved paper head's Keras model: allow-list check, then ``safe_mode=True``."""
    path = Path(path)
    check_keras_archive(path)
    return _keras_safe_load(path)


# ---------------------------------------------------------------- skops side
def _walk_skops_types(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        if "__class__" in node or "__module__" in node:
            found.add(f"{node.get('__module__')}.{node.get('__class__')}")
        for value in node.values():
            _walk_skops_types(value, found)
    elif isinstance(node, list):
        for value in node:
            _walk_skops_types(value, found)


def skops_types(path: str | Path) -> list[str]:
    """Every type (``module.Class``) the schema of a ``.skops`` file names, sorted."""
    path = Path(path)
    _, schema = _zip_json(path, "schema.json", "skops file")
    found: set[str] = set()
    _walk_skops_types(schema, found)
    return sorted(found)


def load_skops_model(path: str | Path) -> Any:
    """Load a ``.skops`` file only if every type in it is in :data:`ALLOWED_TYPES`."""
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    path = Path(path)
    untrusted = sorted(set(skops_types(path)) - set(ALLOWED_TYPES))
    if untrusted:
        raise UnsafeModelError(
            f"{path} contains types outside xrayfx's allow-list: {', '.join(untrusted)}. "
            "A saved classical head holds only a StandardScaler and one of LogisticRegression, "
            "calibrated LinearSVC/SVC or KNeighborsClassifier in a Pipeline. It will not be "
            "loaded; retrain the head."
        )
    try:
        return skops.io.load(path, trusted=list(ALLOWED_TYPES))
    except UntrustedTypesFoundException as e:
        raise UnsafeModelError(
            f"skops refused {path}: {e}. It will not be loaded; retrain the head."
        ) from None


def _check_pipeline(head: Head, model: Any, classes: np.ndarray, path: Path) -> None:
    """The loaded object must be the pipeline this head class builds, for the recorded classes."""
    from sklearn.pipeline import Pipeline

    expected = head._classifier(None)
    final = model.steps[-1][1] if isinstance(model, Pipeline) and model.steps else None
    ok = final is not None and type(final) is type(expected)
    if ok and hasattr(expected, "estimator"):
        ok = type(getattr(final, "estimator", None)) is type(expected.estimator)
    if not ok:
        got = type(model).__name__ if final is None else f"Pipeline(..., {type(final).__name__})"
        raise IntegrityError(
            f"{path} holds {got}, but the record says {type(head).__name__}, which saves "
            f"Pipeline(StandardScaler, {type(expected).__name__}). Retrain the head."
        )
    if not np.array_equal(np.asarray(model.classes_), np.arange(len(classes))):
        raise IntegrityError(
            f"{path} was trained on {len(model.classes_)} classes but the record lists "
            f"{len(classes)} ({classes.tolist()!r}). Retrain the head."
        )
