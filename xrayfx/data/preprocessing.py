"""How pixels become network input: the resolved, recorded preprocessing and the in-graph normalisations."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from xrayfx.exceptions import UsageError

# Normalisations applied inside the exported graph to float32 pixels in [0, 255].
# Keras' own modes: "tf" scales to [-1, 1]; "torch" uses ImageNet mean/std.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
NORMALISATIONS = ("tf", "torch", "lite0", "unit")


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become network input: resolved once, recorded, fingerprinted.

    ``resize`` happens in Python (decode, then resize to ``input_size``) and gives
    uint8 RGB; ``normalise`` happens inside the exported graph, so every runtime is
    fed uint8 and shares one code path.
    """

    normalise: str  # one of NORMALISATIONS
    resize: str  # "stretch" (the paper) or "crop" (centre crop after resizing the shorter side)
    input_size: tuple[int, int]  # (height, width)
    option: str = "imagenet"  # the user-facing --preprocess value it came from
    bit_depth: int | None = None  # --bit-depth: significant bits of 16-bit PNGs (None: sBIT, else 16)
    # Added ONNX backbones only (xrayfx.models.custom); the defaults are the built-ins' input.
    channels: int = 3  # 1: the graph averages the RGB planes into one grey plane
    layout: str = "nhwc"  # "nchw": the graph transposes before the backbone
    mean: tuple[float, ...] | None = None  # normalise="custom": (x / 255 - mean) / std
    std: tuple[float, ...] | None = None

    @staticmethod
    def _resolve(ref: str) -> Callable[..., Any]:
        module_name, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module_name), attr)

    def to_dict(self) -> dict[str, Any]:
        """The record (fingerprinted): optional fields appear only when they differ from the default,
        so existing caches keep their keys."""
        d: dict[str, Any] = {
            "normalise": self.normalise,
            "resize": self.resize,
            "input_size": list(self.input_size),
            "option": self.option,
        }
        if self.bit_depth is not None:
            d["bit_depth"] = self.bit_depth
        if self.channels != 3:
            d["channels"] = self.channels
        if self.layout != "nhwc":
            d["layout"] = self.layout
        if self.mean is not None:
            d["mean"] = list(self.mean)
        if self.std is not None:
            d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        """Rebuild a preprocessing recorded by :meth:`to_dict`."""
        return cls(
            normalise=d["normalise"], resize=d["resize"], input_size=tuple(d["input_size"]), option=d["option"],
            bit_depth=int(d["bit_depth"]) if d.get("bit_depth") is not None else None,
            channels=int(d.get("channels", 3)), layout=str(d.get("layout", "nhwc")),
            mean=tuple(d["mean"]) if d.get("mean") is not None else None,
            std=tuple(d["std"]) if d.get("std") is not None else None,
        )

    def apply(self, pixels: Any) -> Any:
        """Normalise float32 pixels in [0, 255]; works on numpy arrays and TF tensors alike."""
        return normalise_pixels(pixels, self.normalise)


def normalise_pixels(x: Any, mode: str) -> Any:
    """Map float pixels in [0, 255] (NHWC, RGB) to a backbone's input range."""
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        return (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    if mode == "lite0":
        return (x - 127.0) / 128.0
    if mode == "unit":
        return x / 255.0
    raise UsageError(f"Unknown normalisation {mode!r}; expected one of {', '.join(NORMALISATIONS)}")
