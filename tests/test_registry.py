"""Registry specs and preprocessing resolution."""

from __future__ import annotations

import numpy as np
import pytest

from xrayfx.exceptions import UnknownBackboneError, UsageError
from xrayfx.data.preprocessing import normalise_pixels
from xrayfx.models.registry import REGISTRY, backbone_names, get_spec, resolve_preprocessing

PAPER = {"inceptionv3": (2048, "tf", 0.5), "inceptionresnetv2": (1536, "tf", 0.2),
         "densenet201": (1920, "torch", 0.5), "resnet101v2": (2048, "tf", 0.2)}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_backbones_match_the_paper(name):
    spec = get_spec(name)
    dim, mode, dropout = PAPER[name]
    assert (spec.embedding_size, spec.preprocess_mode, spec.dropout) == (dim, mode, dropout)
    assert spec.paper and spec.input_size == (224, 224)


def test_mobilenet_is_the_small_test_backbone():
    spec = get_spec("mobilenet")
    assert spec.embedding_size == 256 and dict(spec.constructor_kwargs)["alpha"] == 0.25


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(UnknownBackboneError) as err:
        get_spec("inceptonv3")
    msg = str(err.value)
    assert "Unknown backbone 'inceptonv3'" in msg
    for name in backbone_names():
        assert name in msg
    assert err.value.exit_code == 2


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_specs_are_frozen_and_serialisable(name):
    spec = get_spec(name)
    with pytest.raises(Exception):
        spec.embedding_size = 1  # type: ignore[misc]
    d = spec.to_dict()
    assert d["name"] == name and isinstance(d["input_size"], list)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_preprocessing_is_resolved_from_spec_and_options(name):
    spec = get_spec(name)
    assert resolve_preprocessing(spec).normalise == spec.preprocess_mode
    assert resolve_preprocessing(spec, "paper").normalise == "unit"
    assert resolve_preprocessing(spec, resize="crop").resize == "crop"
    with pytest.raises(UsageError):
        resolve_preprocessing(spec, "keras")
    with pytest.raises(UsageError):
        resolve_preprocessing(spec, resize="squash")


def test_normalisations_by_hand():
    x = np.array([[[[0.0, 127.5, 255.0]]]], dtype=np.float32)
    np.testing.assert_allclose(normalise_pixels(x, "tf"), [[[[-1.0, 0.0, 1.0]]]], atol=1e-6)
    np.testing.assert_allclose(normalise_pixels(x, "unit"), [[[[0.0, 0.5, 1.0]]]], atol=1e-6)
    np.testing.assert_allclose(normalise_pixels(x, "lite0"), [[[[-127 / 128, 0.5 / 128, 1.0]]]], atol=1e-6)
    torch = normalise_pixels(x, "torch")
    np.testing.assert_allclose(torch[0, 0, 0, 0], (0 - 0.485) / 0.229, atol=1e-5)
    np.testing.assert_allclose(torch[0, 0, 0, 2], (1 - 0.406) / 0.225, atol=1e-5)
