"""Bias correction for int8 weights: the fix for MobileNet's and EfficientNet-Lite0's int8 embeddings.

Rounding a convolution's weights to int8 changes its output by ``(W_q - W) * x``.
The part of that error that does not average out is its mean, ``(W_q - W) . E[x]``
per output channel; it matters most where the input has a large mean (after a
ReLU6) and the kernel nearly cancels it (the depthwise 3x3 kernels of
MobileNet, their BatchNorm folded in): the output is a small difference of large
terms, and the rounding error of the kernel's sum shifts it by a large amount.
Measured on MobileNet alpha 0.25 with real weights: fake-quantising only the
weights (per output channel, symmetric int8, as onnxruntime does) already brings
the embedding's cosine to fp32 down to 0.941; subtracting each channel's
expected shift from its bias (Nagel et al. 2019, "Data-free quantization",
section 4.2, with the mean taken from the calibration radiographs) brings it
back to 0.9986. The int8 graph keeps the same weights; only the float biases
change, before onnxruntime quantises them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: Symmetric int8 weight range onnxruntime uses ([-127, 127]; with reduce_range [-64, 64]).
_QMAX = {False: 127, True: 64}


def fake_quantize_weights(w: np.ndarray, per_channel: bool = True, reduce_range: bool = False) -> np.ndarray:
    """Round ``w`` to symmetric int8 and back, one scale per output channel (axis 0) or per tensor."""
    qmax = _QMAX[bool(reduce_range)]
    axes = tuple(range(1, w.ndim)) if per_channel else None
    absmax = np.abs(w).max(axis=axes, keepdims=per_channel)
    scale = np.where(absmax > 0, absmax / qmax, 1.0).astype(np.float64)
    return (np.clip(np.rint(w / scale), -qmax, qmax) * scale).astype(np.float32)


def _conv_nodes(model: Any) -> list[Any]:
    inits = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in inits]


def _input_channel_means(
    model: Any, convs: list[Any], images: np.ndarray, input_name: str, batch: int
) -> dict[str, np.ndarray]:
    """Mean of each convolution input per channel (NCHW), over all images and positions."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    names = list(dict.fromkeys(n.input[0] for n in convs))
    for name in names:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    sums = {name: 0.0 for name in names}
    counts = {name: 0 for name in names}
    for start in range(0, len(images), batch):
        for name, out in zip(names, session.run(names, {input_name: images[start:start + batch]})):
            sums[name] = sums[name] + out.astype(np.float64).sum(axis=(0, 2, 3))
            counts[name] += out.shape[0] * out.shape[2] * out.shape[3]
    return {name: np.asarray(sums[name]) / counts[name] for name in names}


def expected_shift(w: np.ndarray, w_q: np.ndarray, x_mean: np.ndarray, group: int) -> np.ndarray:
    """Per output channel, the mean change of a Conv's output when its weights w become w_q."""
    out_channels, in_per_group = w.shape[0], w.shape[1]
    group_of = np.arange(out_channels) // (out_channels // group)
    x_by_out = x_mean.reshape(group, in_per_group)[group_of]  # (out, in_per_group)
    per_input = (w_q - w).astype(np.float64).reshape(out_channels, in_per_group, -1).sum(axis=2)
    return np.sum(per_input * x_by_out, axis=1)


def correct_biases(
    src: Path, dst: Path, images: np.ndarray, input_name: str, batch: int,
    per_channel: bool = True, reduce_range: bool = False,
) -> int:
    """Write ``src`` to ``dst`` with every Conv bias corrected for its weights' int8 rounding.

    The weights stay as they are (onnxruntime rounds them the same way later);
    a Conv without a bias gets one. Returns the number of corrected convolutions.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    convs = _conv_nodes(model)
    means = _input_channel_means(model, convs, images, input_name, batch)
    inits = {t.name: t for t in model.graph.initializer}
    for node in convs:
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        shift = expected_shift(w, fake_quantize_weights(w, per_channel, reduce_range), means[node.input[0]], group)
        if len(node.input) > 2 and node.input[2] in inits:
            bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
            inits[node.input[2]].CopyFrom(numpy_helper.from_array((bias - shift).astype(np.float32), node.input[2]))
        else:
            name = f"{node.input[1]}__bias_corrected"
            model.graph.initializer.append(numpy_helper.from_array((-shift).astype(np.float32), name))
            if len(node.input) > 2:
                node.input[2] = name
            else:
                node.input.append(name)
    onnx.save(model, str(dst))
    return len(convs)
