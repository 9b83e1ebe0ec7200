"""ExtractionOptions: one typed object for how images are embedded, shared by extract, Dask and the jitter source."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

import xrayfx.extraction.augment as augment_mod
import xrayfx.extraction.pipeline as pipeline_mod
import xrayfx.study.fit as fit_mod
from xrayfx.exceptions import UsageError
from xrayfx.extraction.augment import JitterSource
from xrayfx.extraction.distributed import extract_missing_distributed
from xrayfx.extraction.options import ExtractionOptions
from xrayfx.extraction.pipeline import extract
from xrayfx.study.fit import fit_head


class Stop(Exception):
    """Raised by a spy once it has seen what it wanted."""


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
        ({"workers": 0}, "--workers must be at least 1, got 0"),
        ({"workers": "2"}, "--workers must be a whole number, got '2'"),
        ({"batch_size": True}, "--batch-size must be a whole number"),
        ({"chunk_rows": 0}, "chunk_rows must be at least 1"),
        ({"runtime": "onnx"}, "Unknown --runtime 'onnx'; choose one of: onnxruntime, openvino"),
        ({"precision": "int4"}, "Unknown --precision 'int4'; choose one of"),
    ],
)
def test_bad_values_fail_when_the_options_are_made(kwargs, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ExtractionOptions(**kwargs)


def test_the_options_are_frozen_and_merged_keywords_go_on_top():
    base = ExtractionOptions(batch_size=8, workers=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.batch_size = 4  # type: ignore[misc]
    merged = ExtractionOptions.merged(base, workers=3)
    assert (merged.batch_size, merged.workers) == (8, 3) and base.workers == 1
    assert ExtractionOptions.merged(None) == ExtractionOptions()
    with pytest.raises(UsageError, match=r"Unknown extraction option\(s\) batchsize; expected some of .*batch_size"):
        ExtractionOptions.merged(base, batchsize=8)


def test_the_three_extraction_paths_take_the_one_options_type_not_loose_parameters():
    loose = {"runtime", "precision", "device", "batch_size", "workers", "keep_degenerate", "model_path", "scheduler"}
    for fn in (extract, extract_missing_distributed, JitterSource.__init__):
        params = inspect.signature(fn).parameters
        assert "options" in params, fn
        assert not loose & set(params), f"{fn.__qualname__} still takes {sorted(loose & set(params))}"
    assert not loose & set(inspect.signature(fit_head).parameters)
    assert "extraction" in inspect.signature(fit_head).parameters


def test_extract_hands_its_options_to_the_in_process_path(
    tiny_folder, mobilenet_config, mobilenet_export, session_cache, monkeypatch
):
    seen = {}

    def spy(todo, extractor, cache, config, opts, on_chunk_done):
        seen["opts"] = opts
        raise Stop

    monkeypatch.setattr(pipeline_mod, "_extract_missing", spy)
    with pytest.raises(Stop):
        extract(data=tiny_folder, config=mobilenet_config, cache_dir=session_cache,
                options=ExtractionOptions(batch_size=3, workers=1, progress=False), keep_degenerate=True)
    opts = seen["opts"]
    assert (opts.batch_size, opts.workers, opts.keep_degenerate, opts.progress) == (3, 1, True, False)


def test_extract_hands_its_options_to_the_dask_path(
    tiny_folder, mobilenet_config, mobilenet_export, session_cache, monkeypatch
):
    seen = {}

    def spy(todo, exported, cache, config, options, *, on_chunk_done=None):
        seen["opts"] = options
        raise Stop

    monkeypatch.setattr(pipeline_mod, "extract_missing_distributed", spy)
    with pytest.raises(Stop):
        extract(data=tiny_folder, config=mobilenet_config, cache_dir=session_cache, scheduler="local:1",
                batch_size=5, progress=False)
    assert (seen["opts"].scheduler, seen["opts"].batch_size) == ("local:1", 5)


def test_the_dask_path_needs_a_scheduler_in_its_options(mobilenet_config):
    with pytest.raises(UsageError, match="needs options.scheduler"):
        extract_missing_distributed([], None, None, mobilenet_config, ExtractionOptions())  # type: ignore[arg-type]


def test_fit_head_batch_size_is_refused_as_ambiguous(tiny_folder, tmp_path):
    with pytest.raises(UsageError, match=r"fit_head\(batch_size=…\) is ambiguous.*--head-batch-size"):
        fit_head(data=tiny_folder, cache_dir=tmp_path, batch_size=8, log=None)


def test_fit_head_gives_extract_and_the_jitter_source_the_same_options(
    small_labelled, mobilenet_config, mobilenet_export, session_cache, monkeypatch
):
    """The options passed to fit_head reach extraction and, with the run's int8 variant if any, the jitters."""
    seen: dict[str, ExtractionOptions] = {}
    real_extract = pipeline_mod.extract

    def spy_extract(**kw):
        seen["extract"] = kw["options"]
        return real_extract(**kw)

    class SpySource(JitterSource):
        def __init__(self, *args, **kw):
            seen["jitter"] = kw["options"]
            super().__init__(*args, **kw)

    monkeypatch.setattr(fit_mod.pipeline, "extract", spy_extract)
    monkeypatch.setattr(fit_mod, "JitterSource", SpySource)
    options = ExtractionOptions(batch_size=4, workers=1, progress=False)
    run = fit_head(data=small_labelled, config=mobilenet_config, cache_dir=session_cache, head="logreg", augment=1,
                   extraction=options, log=None, run_id="extraction-options")
    assert seen["extract"] == options
    assert dataclasses.replace(seen["jitter"], model_path=None) == options
    stats = run.config["augment"]["stats"][0]
    assert stats["n_new"] + stats["n_cached"] > 0


@pytest.fixture
def tiny_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    (folder / "normal").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(folder / "normal" / f"img{k}.png")
    return folder


@pytest.fixture
def small_labelled(tmp_path, shared_rows):
    from conftest import absolute_rows, write_manifest

    rows = ([r for r in shared_rows if r["source"] == "cohen" and r["label"] == "covid"][:40]
            + [r for r in shared_rows if r["source"] == "mooney"][:40])
    return write_manifest(tmp_path / "m.csv", absolute_rows(rows))


def test_jitter_source_progress_is_off_unless_asked(mobilenet_config, mobilenet_export, tmp_path):
    src = JitterSource(mobilenet_export, mobilenet_config, tmp_path, ["a"], ["a.png"], ["x"], n=1)
    assert src.options.progress is False
    src = JitterSource(mobilenet_export, mobilenet_config, tmp_path, ["a"], ["a.png"], ["x"], n=1, progress=True)
    assert src.options.progress is True
    assert augment_mod.ExtractionOptions is ExtractionOptions
