"""EfficientNet-Lite0 through the same export, parity check, extractor and cache as every backbone.

Golden features come from an independent PyTorch implementation (../shared/golden); the ONNX
model must reproduce them within 1e-4, pinned to onnxruntime fp32.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import GOLDEN_LITE0
from xrayfx.models.export import export_model
from xrayfx.models.config import model_config
from xrayfx.inference.runtimes import make_extractor

GOLDEN = GOLDEN_LITE0 / "reference.npz"


@pytest.fixture(scope="module")
def lite0_export(session_cache):
    if not GOLDEN.exists():
        pytest.skip(f"{GOLDEN} not found")
    return export_model(model_config("efficientnet-lite0", weights="imagenet"), session_cache)


def test_lite0_onnx_reproduces_golden_features(lite0_export):
    ref = np.load(GOLDEN, allow_pickle=False)
    extractor = make_extractor(lite0_export, runtime="onnxruntime", precision="fp32")
    assert extractor.providers == ["CPUExecutionProvider"]
    features = extractor(ref["inputs_uint8"])
    assert features.shape == (9, 1280)
    assert np.abs(features - ref["features"]).max() < 1e-4


def test_lite0_imagenet_weights_come_from_the_installed_package(lite0_export):
    w = lite0_export.sidecar["weights"]
    assert w["kind"] == "imagenet" and w["path"].endswith("efficientnet-lite0-57934424.pth")
    assert lite0_export.sidecar["preprocessing"]["normalise"] == "lite0"
    assert lite0_export.sidecar["output"]["shape"] == [None, 1280]
