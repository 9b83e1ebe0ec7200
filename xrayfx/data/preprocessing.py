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

    @staticmethod
    def _resolve(ref: str) -> Callable[..., Any]:
        module_name, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module_name), attr)

    def to_dict(self) -> dict[str, Any]:
        return {
            "normalise": self.normalise,
            "resize": self.resize,
            "input_size": list(self.input_size),
            "option": self.option,
        }

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
