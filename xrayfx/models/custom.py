"""Bring your own backbone: ONNX image encoders added to one cache folder.

``xrayfx models add NAME --onnx FILE --normalisation MODE`` copies the file into
``CACHE/models/added/``, records its sha256, input and output names and shapes
and the preprocessing in ``CACHE/models/added-models.json`` (written atomically),
and refuses what it cannot run safely (see :mod:`xrayfx.models.onnx_checks`).
From then on ``--model NAME`` resolves through :func:`xrayfx.models.registry.get_spec`
with that ``cache_dir``, and :func:`xrayfx.models.wrap.export_added` wraps the
file into xrayfx's uint8-in, embedding-out graph like any built-in export.
:class:`~xrayfx.models.spec.OnnxBackboneSpec` and the reading of the registry file are in
:mod:`xrayfx.models.spec`; this module adds and removes.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from xrayfx.exceptions import BackboneRefusedError, UsageError
from xrayfx.models import onnx_checks
from xrayfx.models.registry import REGISTRY
# The specs and the reading of the registry file live in xrayfx.models.spec (below the registry,
# the exporter and the wrapper); the names not used here are re-exported from their old place.
from xrayfx.models.spec import (  # noqa: F401
    ADDED_DIR,
    ADDED_NORMALISATIONS,
    NORMALISATION_MEAN_STD,
    REGISTRY_FILE,
    SCHEMA,
    OnnxBackboneSpec,
    added_names,
    copy_path,
    is_added_record,
    is_added_spec,
    list_added,
    load_added_spec,
    mean_std,
    models_dir,
    read_registry,
    registry_path,
    spec_from_dict,
)
from xrayfx.util import atomic_write_json, read_json, sha256_file

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_.]*(-[a-z0-9_.]+)*$")
NAME_MAX = 48
RESERVED_NAMES = ("paper", "all", "added")
LAYOUTS = ("nchw", "nhwc")
POOLS = ("none", "avg")


# --------------------------------------------------------------------------------------------
# Writing the registry file of one cache folder (read in xrayfx.models.spec).


def _write_registry(cache_dir: str | Path, models: dict[str, dict[str, Any]]) -> None:
    atomic_write_json(registry_path(cache_dir), {"schema": SCHEMA, "models": models})


# --------------------------------------------------------------------------------------------
# Adding and removing.


def check_name(name: str) -> str:
    """Refuse names that shadow a built-in, are reserved, or are not simple lower-case identifiers."""
    key = name.strip()
    if key.lower() in REGISTRY or any(key.lower().startswith(f"{b}-") for b in REGISTRY):
        raise BackboneRefusedError(
            f"{name!r} would shadow the built-in backbone {key.lower().split('-')[0]!r}; built-in names cannot "
            "be reused. Fix: choose another name, e.g. my-densenet121."
        )
    if key.lower() in RESERVED_NAMES:
        raise BackboneRefusedError(f"{name!r} is reserved ({', '.join(RESERVED_NAMES)}); choose another name")
    if not NAME_PATTERN.match(key) or len(key) > NAME_MAX:
        raise BackboneRefusedError(
            f"bad model name {name!r}: expected lower-case letters, digits, '.', '_' and single '-' between "
            f"parts, starting with a letter, at most {NAME_MAX} characters (e.g. xrv-densenet121-all)"
        )
    return key


def resolve_normalisation(
    mode: str, channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """Check --normalisation against --mean/--std and the channel count; return custom (mean, std) or Nones."""
    if mode not in ADDED_NORMALISATIONS:
        raise UsageError(f"Unknown --normalisation {mode!r}; choose one of: {', '.join(ADDED_NORMALISATIONS)}")
    given = bool(mean) or bool(std)
    if mode != "custom":
        if given:
            raise UsageError(f"--mean/--std go with --normalisation custom, not {mode}; drop them or use custom")
        if len(NORMALISATION_MEAN_STD[mode][0]) not in (1, channels):
            raise UsageError(
                f"--normalisation {mode} has {len(NORMALISATION_MEAN_STD[mode][0])} channel means but the model "
                f"takes {channels} channel(s). Fix: --normalisation custom --mean M --std S with {channels} value(s)"
            )
        return None, None
    if not mean or not std:
        raise UsageError("--normalisation custom needs --mean and --std (on pixels scaled to [0, 1]), e.g. "
                         "--mean 0.5 --std 0.25")
    for what, values in (("--mean", mean), ("--std", std)):
        if len(values) not in (1, channels):
            raise UsageError(f"{what} needs 1 or {channels} value(s) for a {channels}-channel input; got {len(values)}")
    if any(not (s > 0) for s in std):
        raise UsageError(f"--std values must be positive; got {list(std)}")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def add_model(
    name: str,
    onnx: str | Path,
    normalisation: str,
    cache_dir: str | Path = "cache",
    *,
    layout: str | None = None,
    input_size: int | None = None,
    channels: int | None = None,
    output: str | None = None,
    pool: str = "none",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    license: str = "unknown",
    source: str = "",
    log: Callable[[str], None] | None = None,
) -> OnnxBackboneSpec:
    """Copy, inspect and test an ONNX encoder; register it in ``cache_dir`` and return its spec.

    Raises :class:`BackboneRefusedError` (nothing registered, no copy left) when the
    file cannot be run safely. See the module docstring.
    """
    key = check_name(name)
    if key in read_registry(cache_dir):
        raise BackboneRefusedError(
            f"{key!r} is already added to {cache_dir}; names are never silently replaced. "
            f"Fix: `xrayfx models remove {key} --cache-dir {cache_dir}` first, or choose another name."
        )
    if layout is not None and layout not in LAYOUTS:
        raise UsageError(f"Unknown --layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    if pool not in POOLS:
        raise UsageError(f"Unknown --pool {pool!r}; choose one of: {', '.join(POOLS)}")
    src = Path(onnx).expanduser()
    if not src.is_file():
        raise UsageError(f"--onnx {onnx} is not a file; give the path of an .onnx model file")
    sig = onnx_checks.inspect_onnx(src, layout=layout, input_size=input_size, channels=channels, output=output)
    custom_mean, custom_std = resolve_normalisation(normalisation, sig.channels, mean, std)
    sha = sha256_file(src)
    copy = models_dir(cache_dir) / ADDED_DIR / f"{key}-{sha[:12]}.onnx"
    _copy_atomically(src, copy)
    try:
        if sha256_file(copy) != sha:
            raise BackboneRefusedError(f"{src} changed while it was being copied; add it again once it is stable")
        spec = OnnxBackboneSpec(
            name=key, constructor="onnx", embedding_size=0, preprocess_mode=normalisation, dropout=0.5,
            license=license, params=sig.params, gflops=0.0, input_size=sig.input_size, native_size=sig.input_size,
            description=f"added ONNX backbone ({src.name})", onnx_file=copy.name, onnx_sha256=sha,
            input_name=sig.input_name, output_name=sig.output_name, input_shape=sig.input_shape,
            layout=sig.layout, channels=sig.channels, pool=pool, mean=custom_mean, std=custom_std,
            opset=sig.opset, source=source or str(src.resolve()), added=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        size = onnx_checks.run_test_batch(spec, copy, log=log)
        spec = _with_embedding_size(spec, size)
        models = read_registry(cache_dir)
        models[key] = spec.to_dict()
        _write_registry(cache_dir, models)
    except BaseException:
        copy.unlink(missing_ok=True)
        raise
    return spec


def _with_embedding_size(spec: OnnxBackboneSpec, size: int) -> OnnxBackboneSpec:
    d = spec.to_dict()
    d["embedding_size"] = int(size)
    return spec_from_dict(d)


def _copy_atomically(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def remove_model(name: str, cache_dir: str | Path = "cache") -> list[Path]:
    """Unregister an added model; delete its copy and its wrapped exports. Returns the files deleted.

    Embeddings already cached stay (they are keyed by fingerprint and harmless).
    """
    key = name.strip().lower()
    models = read_registry(cache_dir)
    if key not in models:
        if key in REGISTRY:
            raise UsageError(f"{key!r} is a built-in backbone; only added models can be removed")
        raise UsageError(
            f"{name!r} is not added to {cache_dir}; added there: {', '.join(sorted(models)) or 'none'}"
        )
    spec = spec_from_dict(models.pop(key))
    _write_registry(cache_dir, models)
    gone = []
    for path in [copy_path(spec, cache_dir), *_wrapped_exports(key, cache_dir)]:
        if path.is_file():
            path.unlink()
            gone.append(path)
    return gone


def _wrapped_exports(name: str, cache_dir: str | Path) -> list[Path]:
    folder = models_dir(cache_dir)
    if not folder.is_dir():
        return []
    out = []
    for onnx_file in folder.glob(f"{name}-*.onnx"):
        side = onnx_file.with_suffix(".json")
        if side.is_file() and read_json(side).get("backbone") == name:
            out += [onnx_file, side]
    return out
