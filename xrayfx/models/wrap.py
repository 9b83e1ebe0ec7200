"""Wrap an added ONNX encoder into xrayfx's graph: uint8 NHWC RGB in, float32 (N, D) embedding out.

The wrapper puts the preprocessing the encoder needs in front of its graph —
cast, the mean of the RGB planes for one-channel input, ``(x / 255 - mean) / std``,
the NHWC → NCHW transpose — and after it the pooling of a feature map and a
flatten. Every runtime, the Dask path and the int8 quantiser then run an added
model exactly like a built-in export. The wrapped file is registered in
``CACHE/models/`` with a sidecar, per fingerprint, like :func:`xrayfx.models.export.export_model`
(which hands added backbones here); the sidecar helpers both use are in :mod:`xrayfx.models.config`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from xrayfx.exceptions import IntegrityError, ParityError
from xrayfx.data.preprocessing import Preprocessing
from xrayfx.models.config import OPSET, ExportedModel, commit_export, count_gflops, has_external_data, load_exported
from xrayfx.models.spec import copy_path, mean_std
from xrayfx.util import sha256_file, verify_sha256

PARITY_RTOL = 1e-4  # max |wrapped - reference| must stay below PARITY_RTOL * max |reference|
PARITY_BATCHES = (1, 8)
_FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64"}


def default_opset(model: Any) -> int:
    """The version of the default ONNX operator set a model imports (0 when it imports none)."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def tensor_names(graph: Any) -> set[str]:
    """Every tensor name a graph uses (node inputs and outputs, graph inputs, outputs, initializers)."""
    names = {i.name for i in graph.input} | {o.name for o in graph.output} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


def _free_name(wanted: str, used: set[str]) -> str:
    name, k = wanted, 0
    while name in used:
        k += 1
        name = f"xrayfx_{wanted}" if k == 1 else f"xrayfx_{wanted}_{k}"
    used.add(name)
    return name


def _reduce_mean(helper: Any, opset: int, src: str, dst: str, axes: list[int], keepdims: int, consts: list) -> Any:
    """ReduceMean over ``axes``: an attribute before opset 18, an input from 18 on."""
    from onnx import numpy_helper

    if opset < 18:
        return helper.make_node("ReduceMean", [src], [dst], axes=axes, keepdims=keepdims, name=f"{dst}_node")
    axes_name = f"{dst}_axes"
    consts.append(numpy_helper.from_array(np.asarray(axes, dtype=np.int64), axes_name))
    return helper.make_node("ReduceMean", [src, axes_name], [dst], keepdims=keepdims, name=f"{dst}_node")


def mean_std_pixels(spec: Any, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) on [0, 255] pixels, float32, one value per input channel."""
    mean, std = mean_std(prep)
    c = prep.channels
    m = np.broadcast_to(np.asarray(mean, dtype=np.float64) * 255.0, (c,)).astype(np.float32)
    s = np.broadcast_to(np.asarray(std, dtype=np.float64) * 255.0, (c,)).astype(np.float32)
    return m, s


def build_wrapper(model: Any, spec: Any, prep: Preprocessing) -> tuple[Any, str, str]:
    """The wrapped ModelProto and its input and output names (``image``/``embedding`` unless taken)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(model)
    g = wrapped.graph
    opset = default_opset(wrapped)
    used = tensor_names(g)
    image, embedding = _free_name("image", used), _free_name("embedding", used)
    n = {k: _free_name(f"xrayfx_{k}", used) for k in ("f", "grey", "mean", "std", "centred", "normed", "raw", "pooled")}
    mean, std = mean_std_pixels(spec, prep)
    consts = [numpy_helper.from_array(mean, n["mean"]), numpy_helper.from_array(std, n["std"])]
    pre = [helper.make_node("Cast", [image], [n["f"]], to=TensorProto.FLOAT, name="xrayfx_cast")]
    x = n["f"]
    if prep.channels == 1:
        pre.append(_reduce_mean(helper, opset, x, n["grey"], [3], 1, consts))
        x = n["grey"]
    normed = spec.input_name if prep.layout == "nhwc" else n["normed"]
    pre += [
        helper.make_node("Sub", [x, n["mean"]], [n["centred"]], name="xrayfx_sub_mean"),
        helper.make_node("Div", [n["centred"], n["std"]], [normed], name="xrayfx_div_std"),
    ]
    if prep.layout == "nchw":
        pre.append(helper.make_node("Transpose", [normed], [spec.input_name], perm=[0, 3, 1, 2], name="xrayfx_nchw"))
    post, y = [], spec.output_name
    out_type = next((o.type.tensor_type.elem_type for o in g.output if o.name == spec.output_name), 1)
    if out_type != TensorProto.FLOAT:
        post.append(helper.make_node("Cast", [y], [n["raw"]], to=TensorProto.FLOAT, name="xrayfx_cast_out"))
        y = n["raw"]
    if spec.pool == "avg":
        post.append(_reduce_mean(helper, opset, y, n["pooled"], [2, 3] if spec.layout == "nchw" else [1, 2], 0, consts))
        y = n["pooled"]
    post.append(helper.make_node("Flatten", [y], [embedding], axis=1, name="xrayfx_flatten"))

    h, w = (int(v) for v in prep.input_size)
    initialisers = {t.name for t in g.initializer}
    kept_inputs = [i for i in g.input if i.name in initialisers]  # IR < 4 lists initializers as inputs
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(pre + nodes + post)
    del g.input[:]
    g.input.extend([helper.make_tensor_value_info(image, TensorProto.UINT8, ["N", h, w, 3]), *kept_inputs])
    del g.output[:]
    size = int(spec.embedding_size) if spec.embedding_size else None
    g.output.extend([helper.make_tensor_value_info(embedding, TensorProto.FLOAT, ["N", size])])
    del g.value_info[:]  # the batch axis may have been fixed at 1; onnxruntime infers the rest again
    g.initializer.extend(consts)
    return wrapped, image, embedding


def ort_errors() -> tuple[type[BaseException], ...]:
    """What onnxruntime raises when it cannot load or run a graph (its classes derive from Exception only)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NotImplemented",
             "RuntimeException")
    return (RuntimeError, ValueError, *(getattr(state, n) for n in names if hasattr(state, n)))


def session_for(model_or_path: Any) -> Any:
    """A CPU fp32 onnxruntime session of a ModelProto or a file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model_or_path if isinstance(model_or_path, (str, Path)) else model_or_path.SerializeToString()
    return ort.InferenceSession(str(source) if isinstance(source, Path) else source, options,
                                providers=["CPUExecutionProvider"])


def reference_input(images: np.ndarray, spec: Any, prep: Preprocessing) -> np.ndarray:
    """What the encoder is fed for uint8 NHWC RGB images, computed in numpy (the parity reference)."""
    x = images.astype(np.float32)
    if prep.channels == 1:
        x = x.mean(axis=3, keepdims=True, dtype=np.float32)
    mean, std = mean_std_pixels(spec, prep)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if prep.layout == "nchw" else x)


def reference_outputs(session: Any, images: np.ndarray, spec: Any, prep: Preprocessing) -> np.ndarray:
    """The encoder's raw output (before pooling) for uint8 images, from the unwrapped graph, image by image.

    One image per call, so a graph whose batch axis is fixed at one serves as reference too.
    """
    x = reference_input(images, spec, prep)
    raw = [session.run([spec.output_name], {spec.input_name: x[i:i + 1]})[0] for i in range(len(x))]
    return np.asarray(np.concatenate(raw), dtype=np.float32)


def pool_and_flatten(raw: np.ndarray, spec: Any) -> np.ndarray:
    """What the wrapper's tail does to the raw output, in numpy."""
    if spec.pool == "avg":
        raw = raw.mean(axis=(2, 3) if spec.layout == "nchw" else (1, 2))
    return raw.reshape(raw.shape[0], -1)


def synthetic_images(h: int, w: int, n: int = 8) -> np.ndarray:
    """Deterministic uint8 RGB test images: smooth grey ramps plus noise (seed 0)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, None, :, None]
    base = np.broadcast_to(ramp, (n, h, w, 1)) * rng.uniform(0.3, 1.0, size=(n, 1, 1, 1))
    noise = rng.normal(0, 20, size=(n, h, w, 1))
    grey = np.clip(base + noise, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(grey, 3, axis=3))


def check_parity(wrapped_file: Path, copy: Path, spec: Any, prep: Preprocessing) -> dict[str, Any]:
    """Compare the wrapped graph with the unwrapped one fed in numpy at batch 1 and 8; raise on mismatch."""
    h, w = (int(v) for v in prep.input_size)
    images = synthetic_images(h, w, max(PARITY_BATCHES))
    wrapped, original = session_for(wrapped_file), session_for(copy)
    in_name, out_name = wrapped.get_inputs()[0].name, wrapped.get_outputs()[0].name
    report: dict[str, Any] = {"tolerance_relative": PARITY_RTOL, "reference": "the unwrapped ONNX, numpy preprocessing"}
    for batch in PARITY_BATCHES:
        x = images[:batch]
        ref = pool_and_flatten(reference_outputs(original, x, spec, prep), spec)
        got = np.asarray(wrapped.run([out_name], {in_name: x})[0], dtype=np.float32)
        scale = float(np.abs(ref).max())
        diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
        report[f"batch{batch}"] = {"max_abs_diff": diff, "max_abs_keras": scale, "max_abs_reference": scale}
        if not diff <= PARITY_RTOL * scale:
            raise ParityError(
                f"the wrapped graph of {spec.name} disagrees with the added ONNX file at batch {batch}: "
                f"max |wrapped - file| = {diff:.3g} > {PARITY_RTOL:g} x {scale:.3g}; not registered. "
                "Report this with the versions in `xrayfx --version`."
            )
    return report


def export_added(config: Any, cache_dir: str | Path, force: bool = False,
                 log: Callable[[str], None] | None = None) -> Any:
    """Wrap an added model for one preprocessing, check parity, register it beside the built-in exports."""
    import onnx

    if not force:
        existing = load_exported(config, cache_dir)
        if existing is not None:
            return existing
    spec, prep = config.spec, config.preprocessing
    copy = copy_path(spec, cache_dir)
    if not copy.is_file():
        raise IntegrityError(
            f"the ONNX file of the added model {spec.name} ({copy}) is missing from {cache_dir}; add it again: "
            f"`xrayfx models add {spec.name} --onnx FILE … --cache-dir {cache_dir}`"
        )
    verify_sha256(copy, spec.onnx_sha256, what=f"ONNX file of the added model {spec.name}")
    if has_external_data(copy):
        raise IntegrityError(f"{copy} refers to external weight data; xrayfx loads only self-contained ONNX files")
    if log:
        log(f"wrapping the added ONNX model {spec.name} (uint8 input, {prep.normalise} normalisation)…")
    t0 = time.perf_counter()
    wrapped, in_name, out_name = build_wrapper(onnx.load(str(copy)), spec, prep)
    out = config.onnx_path(cache_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        onnx.save(wrapped, str(tmp))
        parity = check_parity(tmp, copy, spec, prep)
        h, w = (int(v) for v in prep.input_size)
        commit_export(tmp, out, {
            "fingerprint": config.fingerprint,
            "backbone": spec.name,
            "added": True,
            "source_onnx": {"file": copy.name, "sha256": spec.onnx_sha256, "opset": spec.opset},
            "onnx_file": out.name,
            "onnx_sha256": sha256_file(tmp),
            "onnx_bytes": tmp.stat().st_size,
            "opset": default_opset(wrapped) or OPSET,
            "input": {"name": in_name, "dtype": "uint8", "layout": "NHWC", "shape": [None, h, w, 3]},
            "output": {"name": out_name, "dtype": "float32", "shape": [None, spec.embedding_size]},
            "preprocessing": prep.to_dict(),
            "weights": config.weights.to_dict(),
            "config": config.to_dict(),
            "params": spec.params,
            "gflops_per_image": count_gflops(tmp) or None,  # 0.0: shapes ONNX inference could not resolve
            "parity": parity,
        }, t0)
    finally:
        tmp.unlink(missing_ok=True)
    exported = load_exported(config, cache_dir)
    if exported is None:
        raise IntegrityError(f"the wrapped model {out} was written but is not registered; rerun")
    return ExportedModel(config=config, path=exported.path, sidecar=exported.sidecar)
