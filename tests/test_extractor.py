"""The onnxruntime extractor: provider checks, install checks, file verification."""

from __future__ import annotations

import shutil
from importlib import metadata

import numpy as np
import onnx
import pytest

from xrayfx.exceptions import IntegrityError, RuntimeSetupError, UsageError
from xrayfx.models.config import sidecar_path
from xrayfx.inference.extractor import Extractor, check_onnxruntime_install, providers_for


def test_both_onnxruntime_distributions_installed_is_refused(monkeypatch):
    real = metadata.version

    def fake(name):
        return "1.31.1" if name == "onnxruntime-gpu" else real(name)

    monkeypatch.setattr(metadata, "version", fake)
    with pytest.raises(RuntimeSetupError, match="both onnxruntime .* and onnxruntime-gpu 1.31.1 are installed"):
        check_onnxruntime_install()


def test_cuda_on_a_cpu_only_onnxruntime_is_refused_with_the_swap_command():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(RuntimeSetupError, match="pip uninstall -y onnxruntime && pip install onnxruntime-gpu"):
        providers_for("cuda")
    with pytest.raises(UsageError, match="Unknown --device 'gpu'"):
        providers_for("gpu")
    assert providers_for("auto")[-1] == "CPUExecutionProvider"


def test_silent_cpu_fallback_is_detected(mobilenet_export, monkeypatch):
    import xrayfx.inference.extractor as ex

    monkeypatch.setattr(ex, "providers_for", lambda device: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(RuntimeSetupError, match="but the session runs on CPUExecutionProvider"):
        Extractor(mobilenet_export.path, device="cuda")


def test_changed_onnx_file_is_refused(mobilenet_export, tmp_path):
    copy = tmp_path / mobilenet_export.path.name
    shutil.copy(mobilenet_export.path, copy)
    shutil.copy(sidecar_path(mobilenet_export.path), sidecar_path(copy))
    data = bytearray(copy.read_bytes())
    data[-100] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="has sha256 .* expected"):
        Extractor(copy)


def test_external_data_is_refused(mobilenet_export, tmp_path):
    import json

    from xrayfx.util import sha256_file

    model = onnx.load(str(mobilenet_export.path))
    out = tmp_path / "ext.onnx"
    onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
                    size_threshold=0)
    side = json.loads(sidecar_path(mobilenet_export.path).read_text())
    side["onnx_sha256"] = sha256_file(out)
    sidecar_path(out).write_text(json.dumps(side))
    with pytest.raises(IntegrityError, match="external weight data"):
        Extractor(out)


def test_wrong_input_is_a_clear_error(mobilenet_export):
    ext = Extractor(mobilenet_export.path)
    with pytest.raises(UsageError, match=r"expects uint8 images of shape \(N, 224, 224, 3\)"):
        ext(np.zeros((1, 224, 224, 3), np.float32))
