"""What ``xrayfx models add`` checks before it registers an ONNX file.

It refuses (:class:`~xrayfx.exceptions.BackboneRefusedError`, nothing registered):
files that are not ONNX or fail the ONNX checker; weights stored as external data;
graphs with more than one input, a non-float input or one that is not 4-D; a
layout or channel count it cannot tell or that contradicts ``--layout``/``--channels``;
dynamic spatial sizes without ``--input-size`` (or sizes that contradict it); a
fixed batch size other than one; several outputs without ``--output``, or an
``--output`` the graph lacks; outputs that are still feature maps without
``--pool avg``; and non-finite outputs, or outputs that depend on the rest of the
batch, on a test batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from xrayfx.exceptions import BackboneRefusedError
from xrayfx.models.wrap import (
    build_wrapper,
    default_opset,
    ort_errors,
    reference_outputs,
    session_for,
    synthetic_images,
)
from xrayfx.models.registry import resolve_preprocessing

MIN_OPSET = 7
BATCH_RTOL = 1e-3  # an image's embedding must not depend on the rest of the batch
TEST_BATCH = 4


@dataclass(frozen=True)
class Signature:
    """What an ONNX encoder takes and gives, as xrayfx will feed and read it."""

    input_name: str
    output_name: str
    input_shape: tuple[Any, ...]  # None where dynamic
    layout: str
    channels: int
    input_size: tuple[int, int]
    opset: int
    params: int


def _refuse(path: Path, problem: str, fix: str) -> BackboneRefusedError:
    return BackboneRefusedError(f"{path.name}: {problem}; it was not added. Fix: {fix}")


def _graph_tensors(graph: Any) -> Iterator[Any]:
    """Every tensor stored in a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def load_model(path: Path) -> Any:
    """Load an ONNX file without its external data; refuse what is not a checked, self-contained model."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise _refuse(path, f"is not a readable ONNX model ({exc})", "give an .onnx file") from exc
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _graph_tensors(model.graph)):
        raise _refuse(
            path, "stores weights as external data beside the file",
            "save it as one file, e.g. onnx.save(onnx.load(path), out, save_as_external_data=False) "
            "(models under 2 GiB)",
        )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise _refuse(path, f"fails the ONNX checker: {str(exc).splitlines()[0]}", "re-export the model") from exc
    return model


def _dims(value_info: Any) -> list[int | None] | None:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]


def _the_input(model: Any, path: Path) -> Any:
    initialisers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise _refuse(path, f"has {len(inputs)} inputs ({names}); xrayfx feeds one image tensor",
                      "export the encoder with the image batch as its only input")
    if inputs[0].type.tensor_type.elem_type != 1:
        raise _refuse(path, f"input {inputs[0].name!r} is not float32",
                      "export with a float32 image input; xrayfx casts and normalises in front of it")
    return inputs[0]


def _layout(dims: list[int | None], layout: str | None, path: Path) -> str:
    if layout is not None:
        return layout
    first, last = dims[1] in (1, 3), dims[3] in (1, 3)
    if first and not last:
        return "nchw"
    if last and not first:
        return "nhwc"
    raise _refuse(path, f"input shape {dims} does not tell whether channels come first or last",
                  "pass --layout nchw or --layout nhwc")


def _channels(declared: int | None, channels: int | None, path: Path) -> int:
    if declared is not None and channels is not None and declared != channels:
        raise _refuse(path, f"the graph takes {declared} channel(s), --channels says {channels}",
                      f"drop --channels or pass --channels {declared}")
    got = declared if declared is not None else channels
    if got is None:
        raise _refuse(path, "the channel axis is dynamic", "pass --channels 1 or --channels 3")
    if got not in (1, 3):
        raise _refuse(path, f"the graph takes {got} channels; xrayfx feeds grey (1) or RGB (3)",
                      "export with a 1- or 3-channel image input")
    return got


def _spatial(declared: tuple[int | None, int | None], input_size: int | None, path: Path) -> tuple[int, int]:
    if input_size is not None and input_size < 16:
        raise _refuse(path, f"--input-size {input_size} is too small", "pass the size the encoder was trained at")
    if None not in declared:
        h, w = int(declared[0]), int(declared[1])
        if input_size is not None and (h, w) != (input_size, input_size):
            raise _refuse(path, f"the graph takes {h}x{w} images, --input-size says {input_size}",
                          f"drop --input-size (the graph fixes {h}x{w})")
        return h, w
    if input_size is None:
        raise _refuse(path, f"the image height and width are dynamic ({declared}); xrayfx cannot choose the size",
                      "pass --input-size N (the size the encoder was trained at), or export with a fixed size")
    for d in declared:
        if d is not None and d != input_size:
            raise _refuse(path, f"the graph fixes one side at {d}, --input-size says {input_size}",
                          "pass --input-size matching the graph")
    return input_size, input_size


def _the_output(model: Any, output: str | None, path: Path) -> str:
    names = [o.name for o in model.graph.output]
    if output is not None:
        if output not in names:
            raise _refuse(path, f"has no output {output!r}; its outputs are {', '.join(names)}",
                          "pass one of those to --output")
        chosen = output
    elif len(names) == 1:
        chosen = names[0]
    else:
        raise _refuse(path, f"has {len(names)} outputs ({', '.join(names)})", "pass --output NAME to choose one")
    elem = next(o for o in model.graph.output if o.name == chosen).type.tensor_type.elem_type
    if elem not in (1, 10, 11):
        raise _refuse(path, f"output {chosen!r} is not a float tensor", "choose a float embedding output")
    return chosen


def inspect_onnx(
    path: str | Path,
    layout: str | None = None,
    input_size: int | None = None,
    channels: int | None = None,
    output: str | None = None,
) -> Signature:
    """Read an ONNX encoder's input and output and fix what the options fix; refuse the rest."""
    path = Path(path)
    model = load_model(path)
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise _refuse(path, f"imports ONNX opset {opset or 'none'}", f"export with opset {MIN_OPSET} or newer (17)")
    the_input = _the_input(model, path)
    dims = _dims(the_input)
    if dims is None or len(dims) != 4:
        raise _refuse(path, f"input {the_input.name!r} has shape {dims}; expected 4-D images (N, C, H, W) or "
                      "(N, H, W, C)",
                      "export the encoder with a 4-D image input")
    if dims[0] not in (None, 1):
        raise _refuse(path, f"the batch axis is fixed at {dims[0]}", "export with a dynamic batch axis")
    chosen_layout = _layout(dims, layout, path)
    c_dim, spatial = (dims[1], (dims[2], dims[3])) if chosen_layout == "nchw" else (dims[3], (dims[1], dims[2]))
    n_channels = _channels(c_dim, channels, path)
    size = _spatial(spatial, input_size, path)
    full = (dims[0], n_channels, *size) if chosen_layout == "nchw" else (dims[0], *size, n_channels)
    params = int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))
    return Signature(
        input_name=the_input.name, output_name=_the_output(model, output, path), input_shape=full,
        layout=chosen_layout, channels=n_channels, input_size=size, opset=opset, params=params,
    )


def _check_raw(raw: np.ndarray, spec: Any, path: Path) -> None:
    if not np.isfinite(raw).all():
        raise _refuse(path, f"output {spec.output_name!r} is not finite (NaN or inf) on a test batch of "
                      "radiograph-like images", "check the export and the --normalisation")
    if spec.pool == "avg" and raw.ndim != 4:
        raise _refuse(path, f"--pool avg pools a 4-D feature map, but output {spec.output_name!r} has shape "
                      f"{raw.shape}", "drop --pool avg")
    if spec.pool == "none" and raw.ndim > 2 and sum(d > 1 for d in raw.shape[1:]) > 1:
        raise _refuse(path, f"output {spec.output_name!r} is a feature map of shape {raw.shape[1:]} per image",
                      "pass --pool avg to average it over height and width, or choose a pooled --output")


def run_test_batch(spec: Any, copy: Path, log: Callable[[str], None] | None = None) -> int:
    """Run the unwrapped and the wrapped graph on a test batch; return the embedding size or refuse."""
    import onnx

    prep = resolve_preprocessing(spec)
    h, w = (int(v) for v in prep.input_size)
    images = synthetic_images(h, w, TEST_BATCH)
    try:
        original = session_for(copy)
        raw = reference_outputs(original, images[:1], spec, prep)
    except ort_errors() as exc:
        raise _refuse(copy, f"onnxruntime cannot run it on one {h}x{w} image ({str(exc).splitlines()[0]})",
                      "check --layout, --channels and --input-size, or re-export the model") from exc
    _check_raw(raw, spec, copy)
    wrapped, in_name, out_name = build_wrapper(onnx.load(str(copy)), spec, prep)
    try:
        session = session_for(wrapped)
        batched = np.asarray(session.run([out_name], {in_name: images})[0], dtype=np.float32)
        single = np.asarray(session.run([out_name], {in_name: images[:1]})[0], dtype=np.float32)
    except ort_errors() as exc:
        raise _refuse(copy, f"it does not run on a batch of {TEST_BATCH} images ({str(exc).splitlines()[0]})",
                      "export with a dynamic batch axis (torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}))"
                      ) from exc
    if not np.isfinite(batched).all():
        raise _refuse(copy, f"its embeddings are not finite on a test batch of {TEST_BATCH}",
                      "check the export and the --normalisation")
    scale = float(np.abs(single).max()) or 1.0
    if batched.ndim != 2 or batched.shape[1] == 0 or float(np.abs(batched[:1] - single).max()) > BATCH_RTOL * scale:
        raise _refuse(copy, "an image's embedding changes with the rest of the batch (or is empty)",
                      "export in inference mode (model.eval(); training=False) with a dynamic batch axis")
    if log:
        log(f"{spec.name}: test batch of {TEST_BATCH} ran; embedding size {batched.shape[1]}")
    return int(batched.shape[1])
