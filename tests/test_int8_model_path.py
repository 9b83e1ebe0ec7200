"""With two int8 calibrations registered, whoever embeds again for a run uses the run's exact int8 model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from conftest import absolute_rows, seed_cache, write_manifest
from xrayfx.exceptions import IntegrityError, UsageError


@pytest.fixture(scope="module")
def two_calibrations(shared_rows, mobilenet_config, mobilenet_export, tmp_path_factory):
    """A cache holding the session's mobilenet export and two int8 variants (4 radiographs each)."""
    from xrayfx.models.export import load_exported
    from xrayfx.models.quantize import calibration_images, quantize_int8, registered_int8

    root = tmp_path_factory.mktemp("int8-two")
    cache = seed_cache(root / "cache", mobilenet_export)
    exported = load_exported(mobilenet_config, cache)
    rows = absolute_rows([r for r in shared_rows if r["source"] == "cohen"][:3]
                         + [r for r in shared_rows if r["source"] == "mooney"][:3])
    data = write_manifest(root / "six.csv", rows)
    first = write_manifest(root / "cal-a.csv", rows[:4])
    ids, images = calibration_images(first, mobilenet_config.preprocessing, n=4)
    a = quantize_int8(exported, images, ids)
    ids_b, images_b = calibration_images(write_manifest(root / "cal-b.csv", rows[2:]), mobilenet_config.preprocessing,
                                         n=4)
    b = quantize_int8(exported, images_b, ids_b)
    assert len(registered_int8(exported)) == 2
    return SimpleNamespace(cache=cache, exported=exported, data=data, rows=rows, a=a, b=b, first=first)


def test_jitter_source_runs_the_runs_int8_model_with_two_registered(two_calibrations, mobilenet_config):
    from xrayfx.extraction.augment import JitterSource
    from xrayfx.extraction.pipeline import extract

    t = two_calibrations
    run = extract(data=t.data, config=mobilenet_config, cache_dir=t.cache, precision="int8", calibration=t.first,
                  progress=False)
    assert run.model_path == t.a.path and run.cache_path.name.endswith(t.a.cache_precision)
    with JitterSource(t.exported, mobilenet_config, t.cache, run.ids, run.paths, run.labels, n=1, precision="int8",
                      main_group=run.cache_path.name, model_path=run.model_path) as src:
        X, y = src.epoch(0)
    assert X.shape == (6, 256) and np.isfinite(X).all() and len(y) == 6
    with pytest.raises(UsageError, match="exactly one registered int8 variant"):  # what happened before
        with JitterSource(t.exported, mobilenet_config, t.cache, run.ids, run.paths, run.labels, n=1,
                          seed=1, precision="int8", main_group=run.cache_path.name) as src:
            src.epoch(0)


def test_report_and_predict_find_the_runs_int8_model_from_its_cache_group(two_calibrations, mobilenet_config):
    from xrayfx.extraction.pipeline import extract
    from xrayfx.models.quantize import int8_model_of_group, int8_model_of_run
    from xrayfx.inference.runtimes import make_extractor

    t = two_calibrations
    group_b = f"{t.exported.path.stem}-onnxruntime-{t.b.cache_precision}"
    run_config = {"precision": "int8", "cache_group": group_b}  # what a run records
    assert int8_model_of_run(t.exported, run_config) == t.b.path
    assert int8_model_of_run(t.exported, {"precision": "fp32", "cache_group": "x"}) is None
    extractor = make_extractor(t.exported, "onnxruntime", "int8", "cpu",
                               model_path=int8_model_of_run(t.exported, run_config))
    assert extractor.path == t.b.path
    again = extract(data=t.data, config=mobilenet_config, cache_dir=t.cache, precision="int8", model_path=t.b.path,
                    progress=False)
    assert again.cache_path.name == group_b and again.model_path == t.b.path
    with pytest.raises(IntegrityError, match="registered int8 variant"):
        int8_model_of_group(t.exported, f"{t.exported.path.stem}-onnxruntime-int8-0123456789ab")
