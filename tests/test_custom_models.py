"""Bring your own backbone: ONNX encoders added to a cache (xrayfx.models.custom, .wrap, .onnx_checks).

Tiny graphs built with onnx.helper first (refusals, layout, channels, sizes,
fingerprints, integrity, CLI); then MobileNet exported to plain ONNX with tf2onnx
(no xrayfx exporter), added, and compared with the built-in mobilenet on real
radiographs from ../shared.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import MOBILENET_WEIGHTS, ROOT, run_cli_inprocess
from xrayfx.exceptions import BackboneRefusedError, IntegrityError, UnknownBackboneError, UsageError
from xrayfx.models.config import ModelConfig, model_config
from xrayfx.models.export import export_model
from xrayfx.models.custom import add_model, added_names, copy_path, list_added, load_added_spec, remove_model
from xrayfx.models.wrap import pool_and_flatten, reference_outputs, session_for, synthetic_images
from xrayfx.inference.runtimes import make_extractor

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def tiny_encoder(
    path: Path, *, layout: str = "nchw", channels: int = 1, size: int | None = 32, batch: str | int = "N",
    pooled: bool = False, nan: bool = False, extra_input: bool = False, extra_output: bool = False,
) -> Path:
    """A one-convolution float encoder saved to ``path``; options make it unsafe in one way each."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(8, channels, 3, 3)).astype(np.float32), "w")
    shape = [batch, channels, size, size] if layout == "nchw" else [batch, size, size, channels]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)]
    nodes, x = [], "input"
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", ["input"], ["x_nchw"], perm=[0, 3, 1, 2]))
        x = "x_nchw"
    nodes.append(helper.make_node("Conv", [x, "w"], ["fmap"], pads=[1, 1, 1, 1]))
    out, out_shape = "fmap", [batch, 8, size, size]
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", ["fmap"], ["fmap_nhwc"], perm=[0, 2, 3, 1]))
        out, out_shape = "fmap_nhwc", [batch, size, size, 8]
    if nan:
        nodes.append(helper.make_node("Sqrt", [out], ["root"]))  # negative activations give NaN
        out = "root"
    if pooled:
        nodes += [helper.make_node("GlobalAveragePool", [out], ["gap"]), helper.make_node("Flatten", ["gap"], ["feat"])]
        out, out_shape = "feat", [batch, 8]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("age", TensorProto.FLOAT, [batch, 1]))
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)]
    if extra_output:
        outputs.append(helper.make_tensor_value_info("fmap", TensorProto.FLOAT, [batch, 8, size, size]))
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


# --------------------------------------------------------------------------------------------
# Tiny synthetic encoders.


def test_added_grey_nchw_model_runs_like_its_file(tmp_path, cache):
    src = tiny_encoder(tmp_path / "grey.onnx")
    spec = add_model("tiny-grey", src, "xrv", cache, pool="avg", license="MIT", source="unit test")
    assert (spec.layout, spec.channels, spec.input_size, spec.embedding_size) == ("nchw", 1, (32, 32), 8)
    assert copy_path(spec, cache).read_bytes() == src.read_bytes()
    assert added_names(cache) == ["tiny-grey"]
    config = model_config("tiny-grey", cache_dir=cache)
    prep = config.preprocessing.to_dict()
    assert (prep["channels"], prep["layout"], prep["input_size"], prep["normalise"]) == (1, "nchw", [32, 32], "xrv")
    exported = export_model(config, cache)
    images = synthetic_images(32, 32, 5)
    got = make_extractor(exported)(images)
    ref = pool_and_flatten(reference_outputs(session_for(src), images, spec, config.preprocessing), spec)
    assert got.shape == (5, 8)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_xrv_normalisation_feeds_minus_1024_to_1024(tmp_path, cache):
    spec = add_model("tiny-range", tiny_encoder(tmp_path / "r.onnx"), "xrv", cache, pool="avg")
    from xrayfx.models.wrap import reference_input

    prep = model_config("tiny-range", cache_dir=cache).preprocessing
    x = reference_input(np.stack([np.zeros((32, 32, 3)), np.full((32, 32, 3), 255)]).astype(np.uint8), spec, prep)
    assert x.shape == (2, 1, 32, 32)
    assert float(x[0].min()) == -1024.0 and float(x[1].max()) == 1024.0


def test_an_added_name_resolves_only_with_its_cache(tmp_path, cache):
    add_model("tiny-a", tiny_encoder(tmp_path / "a.onnx"), "unit", cache, pool="avg")
    with pytest.raises(UnknownBackboneError, match="tiny-a"):
        model_config("tiny-b", cache_dir=cache)  # the message lists what was added
    with pytest.raises(UnknownBackboneError):
        model_config("tiny-a")
    with pytest.raises(UnknownBackboneError):
        model_config("tiny-a", cache_dir=tmp_path / "other")


def test_recorded_config_rebuilds_without_the_cache(tmp_path, cache):
    add_model("tiny-rec", tiny_encoder(tmp_path / "a.onnx"), "tf", cache, pool="avg")
    config = model_config("tiny-rec", cache_dir=cache)
    again = ModelConfig.from_dict(config.to_dict())
    assert again == config and again.fingerprint == config.fingerprint


def test_fingerprint_covers_the_file_sha256_and_the_input_format(tmp_path, cache):
    add_model("tiny-32", tiny_encoder(tmp_path / "a.onnx", size=None), "unit", cache, pool="avg", input_size=32)
    add_model("tiny-48", tiny_encoder(tmp_path / "a.onnx", size=None), "unit", cache, pool="avg", input_size=48)
    add_model("tiny-rgb", tiny_encoder(tmp_path / "b.onnx", channels=3), "unit", cache, pool="avg")
    configs = [model_config(n, cache_dir=cache) for n in ("tiny-32", "tiny-48", "tiny-rgb")]
    assert configs[1].preprocessing.input_size == (48, 48)
    assert len({c.fingerprint for c in configs}) == 3
    assert model_config("tiny-32", preprocess="paper", cache_dir=cache).fingerprint != configs[0].fingerprint
    assert load_added_spec("tiny-32", cache).onnx_sha256 == load_added_spec("tiny-48", cache).onnx_sha256


def test_builtin_preprocessing_record_is_unchanged():
    config = model_config("mobilenet", weights="none")
    assert set(config.preprocessing.to_dict()) == {"normalise", "resize", "input_size", "option"}


def test_nhwc_rgb_and_custom_mean_std(tmp_path, cache):
    src = tiny_encoder(tmp_path / "rgb.onnx", layout="nhwc", channels=3)
    spec = add_model("tiny-nhwc", src, "custom", cache, pool="avg", mean=[0.4, 0.5, 0.6], std=[0.2])
    assert (spec.layout, spec.channels) == ("nhwc", 3)
    config = model_config("tiny-nhwc", cache_dir=cache)
    assert config.preprocessing.mean == (0.4, 0.5, 0.6) and config.preprocessing.std == (0.2,)
    images = synthetic_images(32, 32, 3)
    images[..., 1] //= 2  # channels differ, so the per-channel mean matters
    got = make_extractor(export_model(config, cache))(images)
    ref = pool_and_flatten(reference_outputs(session_for(src), images, spec, config.preprocessing), spec)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_tampered_copy_is_refused_at_export(tmp_path, cache):
    spec = add_model("tiny-t", tiny_encoder(tmp_path / "a.onnx"), "unit", cache, pool="avg")
    copy = copy_path(spec, cache)
    copy.write_bytes(copy.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="sha256"):
        export_model(model_config("tiny-t", cache_dir=cache), cache)


def test_remove_deletes_the_copy_and_exports(tmp_path, cache):
    spec = add_model("tiny-r", tiny_encoder(tmp_path / "a.onnx"), "unit", cache, pool="avg")
    exported = export_model(model_config("tiny-r", cache_dir=cache), cache)
    gone = remove_model("tiny-r", cache)
    assert set(gone) == {copy_path(spec, cache), exported.path, exported.sidecar_path}
    assert added_names(cache) == [] and not exported.path.exists()
    with pytest.raises(UsageError, match="not added"):
        remove_model("tiny-r", cache)
    with pytest.raises(UsageError, match="built-in"):
        remove_model("mobilenet", cache)


def test_batch_axis_fixed_at_one_is_freed_when_the_graph_allows(tmp_path, cache):
    add_model("tiny-b1", tiny_encoder(tmp_path / "a.onnx", batch=1), "unit", cache, pool="avg")
    got = make_extractor(export_model(model_config("tiny-b1", cache_dir=cache), cache))(synthetic_images(32, 32, 5))
    assert got.shape == (5, 8)


def test_batch_axis_fixed_at_one_by_a_reshape_is_refused(tmp_path, cache):
    path = tiny_encoder(tmp_path / "a.onnx", batch=1, pooled=True)
    model = onnx.load(str(path))
    shape = numpy_helper.from_array(np.array([1, 8], dtype=np.int64), "fixed_shape")
    model.graph.initializer.append(shape)
    model.graph.node.append(helper.make_node("Reshape", ["feat", "fixed_shape"], ["feat_1"]))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("feat_1", TensorProto.FLOAT, [1, 8]))
    onnx.save(model, str(path))
    with pytest.raises(BackboneRefusedError, match="dynamic batch axis"):
        add_model("tiny-b1r", path, "unit", cache)
    assert added_names(cache) == []


def _external_data(path: Path) -> Path:
    model = onnx.load(str(tiny_encoder(path)))
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
              size_threshold=0)
    return path


REFUSALS = {
    "external data": (lambda p: _external_data(p), {}, "external data"),
    "two inputs": (lambda p: tiny_encoder(p, extra_input=True), {}, "2 inputs"),
    "dynamic spatial dims": (lambda p: tiny_encoder(p, size=None), {}, "dynamic"),
    "NaN output": (lambda p: tiny_encoder(p, nan=True), {}, "not finite"),
    "feature map without --pool": (lambda p: tiny_encoder(p), {"pool": "none"}, "--pool avg"),
    "--pool avg on a pooled output": (lambda p: tiny_encoder(p, pooled=True), {}, "drop --pool avg"),
    "several outputs": (lambda p: tiny_encoder(p, pooled=True, extra_output=True), {"pool": "none"}, "--output"),
    "unknown --output": (lambda p: tiny_encoder(p), {"output": "logits"}, "no output 'logits'"),
    "fixed batch of 4": (lambda p: tiny_encoder(p, batch=4), {}, "batch axis is fixed"),
    "--channels contradicts": (lambda p: tiny_encoder(p), {"channels": 3}, "--channels says 3"),
    "--input-size contradicts": (lambda p: tiny_encoder(p), {"input_size": 64}, "--input-size says 64"),
    "not ONNX": (lambda p: (p.write_bytes(b"not a model"), p)[1], {}, "not a readable ONNX"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_unsafe_models_are_refused_and_leave_nothing(case, tmp_path, cache):
    make, options, message = REFUSALS[case]
    src = make(tmp_path / "model.onnx")
    with pytest.raises(BackboneRefusedError, match=message.replace("(", r"\(")):
        add_model("unsafe", src, "unit", cache, **{"pool": "avg", **options})
    assert added_names(cache) == []
    assert not list((cache / "models" / "added").glob("*.onnx")) if (cache / "models" / "added").exists() else True


@pytest.mark.parametrize("name, message", [
    ("mobilenet", "shadow the built-in"), ("DenseNet201", "shadow the built-in"),
    ("mobilenet-v9", "shadow the built-in"), ("paper", "reserved"), ("My Model", "bad model name"),
    ("../evil", "bad model name"), ("a--b", "bad model name"), ("x" * 60, "bad model name"),
])
def test_bad_or_shadowing_names_are_refused(name, message, tmp_path, cache):
    with pytest.raises(BackboneRefusedError, match=message):
        add_model(name, tiny_encoder(tmp_path / "a.onnx"), "unit", cache, pool="avg")


def test_a_name_is_never_replaced_and_normalisations_are_checked(tmp_path, cache):
    src = tiny_encoder(tmp_path / "a.onnx")
    add_model("tiny-once", src, "unit", cache, pool="avg")
    with pytest.raises(BackboneRefusedError, match="already added"):
        add_model("tiny-once", src, "unit", cache, pool="avg")
    with pytest.raises(UsageError, match="channel means"):
        add_model("tiny-torch", src, "torch", cache, pool="avg")  # ImageNet's 3 means, a 1-channel input
    with pytest.raises(UsageError, match="--mean and --std"):
        add_model("tiny-custom", src, "custom", cache, pool="avg")
    with pytest.raises(UsageError, match="Unknown --normalisation"):
        add_model("tiny-x", src, "caffe", cache, pool="avg")
    with pytest.raises(UsageError, match="--weights"):
        model_config("tiny-once", weights="none", cache_dir=cache)


def test_cli_models_add_list_remove(tmp_path, cache, capsys):
    src = tiny_encoder(tmp_path / "a.onnx")
    code, out, err = run_cli_inprocess(
        ["models", "add", "tiny-cli", "--onnx", str(src), "--normalisation", "xrv", "--pool", "avg",
         "--license", "CC-BY-4.0", "--cache-dir", str(cache)], capsys)
    assert code == 0, err
    assert "added tiny-cli" in out and "8 features" in out
    code, out, _ = run_cli_inprocess(["models", "--cache-dir", str(cache)], capsys)
    assert code == 0 and "mobilenet" in out and "ONNX backbones added to" in out and "tiny-cli" in out
    code, _, err = run_cli_inprocess(
        ["models", "add", "mobilenet", "--onnx", str(src), "--normalisation", "xrv", "--cache-dir", str(cache)], capsys)
    assert code == 2 and "shadow the built-in" in err
    code, out, _ = run_cli_inprocess(["models", "remove", "tiny-cli", "--cache-dir", str(cache)], capsys)
    assert code == 0 and "removed tiny-cli" in out
    assert list_added(cache) == []


# --------------------------------------------------------------------------------------------
# MobileNet exported with tf2onnx directly, against the built-in mobilenet.


@pytest.fixture(scope="session")
def plain_onnx_exports(tmp_path_factory) -> Path:
    """MobileNet α 0.25 as plain float-input ONNX files (NHWC RGB; NCHW grey feature map), one TF process."""
    if not MOBILENET_WEIGHTS.exists():
        pytest.skip(f"{MOBILENET_WEIGHTS} not found")
    out = tmp_path_factory.mktemp("byo-onnx")
    script = ROOT / "tests" / "byo_onnx_export.py"
    proc = subprocess.run([sys.executable, str(script), str(out), str(MOBILENET_WEIGHTS)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _subset(shared_rows, folder: Path, n: int) -> Path:
    from conftest import absolute_rows, write_manifest

    rows: list[dict[str, str]] = []
    for source in ("cohen", "mooney"):
        patients: dict[str, dict[str, str]] = {}
        for r in shared_rows:
            if r["source"] == source and len(patients) < n:
                patients.setdefault(r["patient_id"], r)  # one image per patient: splits need many patients
        rows += patients.values()
    return write_manifest(folder / "subset.csv", absolute_rows(rows))


@pytest.fixture(scope="module")
def radiographs(shared_rows, tmp_path_factory) -> Path:
    """12 real radiographs (6 Cohen COVID-19, 6 Mooney normals)."""
    return _subset(shared_rows, tmp_path_factory.mktemp("byo-data"), 6)


@pytest.fixture(scope="module")
def builtin_embeddings(radiographs, mobilenet_config, mobilenet_export, session_cache):
    from xrayfx.extraction.pipeline import extract

    return extract(data=radiographs, config=mobilenet_config, cache_dir=session_cache, progress=False)


@pytest.mark.parametrize("variant, options", [
    ("mobilenet-nhwc.onnx", {}),
    ("mobilenet-nchw-grey.onnx", {"pool": "avg"}),
])
def test_plain_onnx_mobilenet_equals_the_builtin(variant, options, plain_onnx_exports, builtin_embeddings, tmp_path):
    from xrayfx.extraction.pipeline import extract

    cache = tmp_path / "cache"
    spec = add_model("my-mobilenet", plain_onnx_exports / variant, "tf", cache, **options)
    assert spec.embedding_size == 256
    assert (spec.layout, spec.channels) == (("nchw", 1) if "nchw" in variant else ("nhwc", 3))
    got = extract(data=builtin_embeddings.dataset, model="my-mobilenet", cache_dir=cache, progress=False)
    assert got.ids == builtin_embeddings.ids
    ref = builtin_embeddings.embeddings
    scale = float(np.abs(ref).max())
    assert scale > 1e-3  # real weights, real signal
    assert float(np.abs(got.embeddings - ref).max()) <= 1e-4 * scale


def test_added_model_fits_a_head_and_predicts(plain_onnx_exports, shared_rows, tmp_path):
    from xrayfx.study.fit import fit_head, predict

    cache = tmp_path / "cache"
    data = _subset(shared_rows, tmp_path, 15)
    add_model("my-mobilenet", plain_onnx_exports / "mobilenet-nhwc.onnx", "tf", cache)
    run = fit_head(model="my-mobilenet", data=data, cache_dir=cache, head="logreg", run_id="byo", progress=False,
                   log=None)
    assert run.path.is_dir()
    images = [line.split(",")[0] for line in data.read_text().splitlines()[1:3]]
    result = predict(run.path, images, cache_dir=cache, progress=False, log=None)
    assert len(result.rows) == 2
