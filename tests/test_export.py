"""Keras → ONNX export: parity, fingerprints, sidecars, weights resolution."""

from __future__ import annotations

import shutil
import socket

import numpy as np
import onnx
import pytest

from conftest import CXR, MOBILENET_WEIGHTS
from xrayfx.exceptions import ParityError, UsageError, WeightsError
from xrayfx.models.export import (
    PARITY_RTOL,
    build_keras_backbone,
    check_parity,
    export_model,
    keras_embed,
    load_exported,
)
from xrayfx.inference.extractor import Extractor
from xrayfx.models.config import model_config
from xrayfx.models.registry import get_spec
from xrayfx.util import sha256_file

PAPER_BACKBONES = ["inceptionv3", "inceptionresnetv2", "densenet201", "resnet101v2"]


def test_fingerprint_depends_on_weights_seed_preprocessing_and_resize():
    base = model_config("mobilenet", weights="none", seed=0)
    assert base.fingerprint == model_config("mobilenet", weights="none", seed=0).fingerprint
    others = [
        model_config("mobilenet", weights="none", seed=1),
        model_config("mobilenet", weights="none", seed=0, preprocess="paper"),
        model_config("mobilenet", weights="none", seed=0, resize="crop"),
        model_config("densenet201", weights="none", seed=0),
    ]
    assert len({base.fingerprint, *(o.fingerprint for o in others)}) == 5
    assert base.onnx_path("c").name == f"mobilenet-{base.fingerprint[:12]}.onnx"


def test_fingerprint_ignores_descriptive_fields_only():
    import dataclasses

    from xrayfx.models.config import ModelConfig

    base = model_config("mobilenet", weights="none", seed=0)
    relabelled = ModelConfig(dataclasses.replace(base.spec, license="other", description="x", gflops=1.0),
                             base.weights, base.preprocessing)
    assert relabelled.fingerprint == base.fingerprint
    rebuilt = ModelConfig(dataclasses.replace(base.spec, constructor_kwargs=(("alpha", 0.5),)), base.weights,
                          base.preprocessing)
    assert rebuilt.fingerprint != base.fingerprint


def test_registry_gflops_match_the_exported_graph(mobilenet_export):
    counted = mobilenet_export.sidecar["gflops_per_image"]
    assert abs(counted - get_spec("mobilenet").gflops) <= 0.05 * counted


def test_mobilenet_real_weights_onnx_equals_keras_on_radiographs(mobilenet_export, mobilenet_config, shared_rows):
    from xrayfx.data.images import load_image

    paths = [CXR / r["path"] for r in shared_rows[:4]] + [CXR / r["path"] for r in shared_rows[-4:]]
    images = np.stack([load_image(p, mobilenet_config.preprocessing) for p in paths])
    model = build_keras_backbone(mobilenet_config)
    ref = keras_embed(model, images, mobilenet_config.preprocessing)
    got = Extractor(mobilenet_export.path)(images)
    assert got.shape == (8, 256)
    assert np.abs(got - ref).max() <= PARITY_RTOL * np.abs(ref).max()
    assert ref.std(axis=0).mean() > 1e-3, "real weights must give non-degenerate embeddings"
    side = mobilenet_export.sidecar
    assert side["weights"]["sha256"] == sha256_file(MOBILENET_WEIGHTS)
    assert side["onnx_sha256"] == sha256_file(mobilenet_export.path)
    assert side["opset"] == 17 and side["input"]["dtype"] == "uint8"
    assert side["parity"]["batch1"]["max_abs_diff"] <= PARITY_RTOL * side["parity"]["batch1"]["max_abs_keras"]


def test_exported_graph_has_uint8_input_and_dynamic_batch(mobilenet_export):
    model = onnx.load(str(mobilenet_export.path))
    (inp,) = model.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value") and [d.dim_value for d in dims[1:]] == [224, 224, 3]
    assert [o.name for o in model.graph.output] == ["embedding"]
    ext = Extractor(mobilenet_export.path)
    for n in (1, 3, 8):
        assert ext(np.zeros((n, 224, 224, 3), np.uint8)).shape == (n, 256)


def test_second_export_reuses_the_registered_file(mobilenet_export, mobilenet_config, session_cache):
    mtime = mobilenet_export.path.stat().st_mtime_ns
    again = export_model(mobilenet_config, session_cache)
    assert again.path == mobilenet_export.path and again.path.stat().st_mtime_ns == mtime


def test_parity_check_refuses_a_wrong_model(mobilenet_config, session_cache, mobilenet_export):
    other = model_config("mobilenet", weights="none", seed=3)
    model = build_keras_backbone(mobilenet_config)
    with pytest.raises(ParityError, match="disagrees with Keras"):
        # the exported file holds the real weights; a random-weight Keras model must not pass as its twin
        check_parity(build_keras_backbone(other), mobilenet_export.path, mobilenet_config, None)
    report = check_parity(model, mobilenet_export.path, mobilenet_config, None)
    assert set(report) >= {"batch1", "batch8"}


def test_imagenet_weights_resolve_offline_from_keras_cache(tmp_path, monkeypatch):
    (tmp_path / "keras" / "models").mkdir(parents=True)
    shutil.copy(MOBILENET_WEIGHTS, tmp_path / "keras" / "models" / get_spec("mobilenet").imagenet_file)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    config = model_config("mobilenet", weights="imagenet")
    exported = export_model(config, tmp_path / "cache")
    assert exported.sidecar["weights"]["kind"] == "imagenet"
    assert exported.sidecar["weights"]["sha256"] == sha256_file(MOBILENET_WEIGHTS)


def test_imagenet_weights_offline_without_cache_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(WeightsError, match="--weights none"):
        model_config("mobilenet", weights="imagenet")


def test_weights_path_must_exist_and_be_a_weight_file(tmp_path):
    with pytest.raises(UsageError, match="neither 'imagenet', 'none' nor an existing file"):
        model_config("mobilenet", weights=str(tmp_path / "missing.h5"))
    bad = tmp_path / "weights.txt"
    bad.write_text("x")
    with pytest.raises(UsageError, match="unexpected suffix"):
        model_config("mobilenet", weights=str(bad))


def test_wrong_weight_file_is_a_clear_error(tmp_path):
    wrong = tmp_path / "wrong.h5"
    wrong.write_bytes(b"not an hdf5 file")
    config = model_config("mobilenet", weights=str(wrong))
    with pytest.raises(WeightsError, match="could not load weights"):
        export_model(config, tmp_path / "cache")
    assert load_exported(config, tmp_path / "cache") is None


@pytest.fixture(scope="session")
def paper_export(session_cache):
    """Export each paper backbone at most once per session, sequentially (big exports take GiBs)."""
    done = {}

    def get(name):
        if name not in done:
            done[name] = export_model(model_config(name, weights="none", seed=0), session_cache)
        return done[name]

    return get


#: ``make test`` exports the smallest paper backbone; the three others (about 3 minutes on 2 cores)
#: run in ``make test-slow``, which CI (``.ci/run``) runs after ``make test``.
FULL_SIZE_EXPORTS = [name if name == "inceptionv3" else pytest.param(name, marks=pytest.mark.slow)
                     for name in PAPER_BACKBONES]


@pytest.mark.parametrize("name", FULL_SIZE_EXPORTS)
def test_paper_backbone_random_init_export_and_parity(name, paper_export):
    exported = paper_export(name)
    side = exported.sidecar
    spec = get_spec(name)
    for batch in ("batch1", "batch8"):
        p = side["parity"][batch]
        assert p["max_abs_diff"] <= PARITY_RTOL * p["max_abs_keras"]
    assert side["output"]["shape"] == [None, spec.embedding_size]
    assert side["weights"]["kind"] == "none" and side["weights"]["seed"] == 0
    assert abs(side["gflops_per_image"] - spec.gflops) <= 0.05 * spec.gflops
    assert side["params"] == spec.params
    out = Extractor(exported.path)(np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8))
    assert out.shape == (2, spec.embedding_size) and np.isfinite(out).all()
